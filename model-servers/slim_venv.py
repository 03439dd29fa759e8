"""Trim a virtualenv that an image copies as it is (run last in the stage that builds it).

    python slim_venv.py [--drop DIST,...] [--check-import MODULE,...]

Removes what a served image never runs; what each item saved is in docs/images.md:
- the test suites that packages ship inside themselves (pandas alone ~25 MB), type stubs and C
  headers, which only type checkers and compilers read, and onnxruntime's example models;
- botocore's models of AWS services posegraph never calls: it talks to S3, and to STS, SSO and
  SSO-OIDC when credentials come from an IAM role or an SSO profile (28 MB of 32);
- symbol tables of the shared libraries (`strip --strip-unneeded`, when binutils is there: the
  build stage has it, the image does not): about 7 % of the libraries' bytes, no code;
- pip itself, and setuptools and wheel unless an installed package requires them: the images
  install nothing at run time;
- with --drop, distributions a package declares but the image never imports (each named where it
  is dropped, with the reason); --check-import then imports the image's entry modules, so a
  dropped distribution that is needed fails the build instead of a pod.
tests/test_images.py fails on any test suite, cache, weight or compiler found in an image.
"""

import argparse
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

BOTOCORE_SERVICES = {"s3", "sts", "sso", "sso-oidc"}

parser = argparse.ArgumentParser()
parser.add_argument("--drop", default="", help="comma-separated distributions to uninstall")
parser.add_argument("--check-import", default="", help="comma-separated modules that must still import")
args = parser.parse_args()
site = Path(sysconfig.get_paths()["purelib"])
before = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())


def pip_uninstall(names: list[str]) -> None:
    if names:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *names], check=True)


def installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def required_by(name: str) -> list[str]:
    users = []
    for dist in metadata.distributions():
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            if re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-") == name:
                users.append(dist.metadata["Name"])
    return users


pip_uninstall([name for name in args.drop.split(",") if name])

for tests in sorted(site.glob("*/**/tests"), key=lambda p: len(p.parts), reverse=True):
    if tests.is_dir():
        shutil.rmtree(tests, ignore_errors=True)
for stub in [*site.rglob("*.pyi"), *site.rglob("*.h")]:   # type stubs and C headers: read by tools only
    stub.unlink()
# onnxruntime's documentation examples ship three toy models: no weights in an image but the archive's.
shutil.rmtree(site / "onnxruntime" / "datasets", ignore_errors=True)

data = site / "botocore" / "data"
if data.is_dir():
    for service in data.iterdir():
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            shutil.rmtree(service)

def loadable(path: Path) -> bool:
    """Whether each PT_LOAD segment of a 64-bit ELF file keeps offset ≡ address (mod alignment).
    strip breaks that in libraries that auditwheel rewrote with patchelf (numpy's OpenBLAS was
    seen: "ELF load command address/offset not page-aligned"); those are kept as they were."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        kind, _, offset, address, _, _, _, align = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if kind == 1 and align > 1 and offset % align != address % align:
            return False
    return True


if shutil.which("strip"):
    for library in site.rglob("*.so*"):
        if not library.is_file() or library.is_symlink() or not loadable(library):
            continue
        stripped = library.with_name(library.name + ".stripped")
        subprocess.run(["strip", "--strip-unneeded", "-o", str(stripped), str(library)], check=True)
        if loadable(stripped) and stripped.stat().st_size < library.stat().st_size:
            shutil.copymode(library, stripped)
            stripped.replace(library)
        else:
            stripped.unlink()

installers = [name for name in ("setuptools", "wheel") if installed(name) and not required_by(name)]
for module in filter(None, args.check_import.split(",")):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
pip_uninstall([*installers, "pip"])
shutil.rmtree(Path.home() / ".cache", ignore_errors=True)
after = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
print(f"slim_venv: {site} {before / 1e6:.0f} → {after / 1e6:.0f} MB (dropped: {args.drop or 'nothing'}; "
      f"without test suites, unused botocore models, symbol tables, pip{''.join(', ' + n for n in installers)})")
