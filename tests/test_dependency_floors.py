"""Declared dependency floors match the code: the lowest versions pyproject.toml admits are
installed side by side (pip --target, in front of the venv on PYTHONPATH) and the code that
uses them runs.

Found this way: the UI passes ``max_body_size`` to Starlette, which Starlette has only since
1.6.0; the old floor (``starlette>=0.40``) admitted versions where `posegraph ui` cannot start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.version import Version

from services import free_port

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floor(requirements: list[str], name: str) -> str:
    """``name``'s lowest admitted version, from a ``name>=X`` requirement."""
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(name)}(?:\[[^\]]*\])?>=([0-9][^,;\s]*)(?:,.*)?", requirement.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{name} has no '>=' floor in {requirements}")


def install_floors(target: Path, pins: list[str]) -> dict[str, str]:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-deps", "--target", str(target), *pins], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"cannot install the declared floors {pins}: {result.stderr[-1500:]}")
    return {**os.environ, "PYTHONPATH": str(target)}


def test_the_ui_runs_on_its_declared_minimum_versions(tmp_path, starts_servers):
    ui = PROJECT["optional-dependencies"]["ui"]
    pins = [f"{name}=={floor(ui, name)}" for name in ("starlette", "uvicorn", "python-multipart")]
    env = install_floors(tmp_path / "floors", pins)
    versions = subprocess.run([sys.executable, "-c", "import starlette, uvicorn; print(starlette.__version__, "
                               "uvicorn.__version__)"], capture_output=True, text=True, env=env, check=True)
    assert [Version(v) for v in versions.stdout.split()] == [Version(p.split("==")[1]) for p in pins[:2]], \
        versions.stdout  # the floors are what runs, not the venv's newer ones

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posegraph", "ui", "--port", str(port), "--data",
                             str(tmp_path / "ui"), "--graph", "http://127.0.0.1:9/", "--max-upload-mb", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"`posegraph ui` exited on {pins}: {proc.stdout.read()[-3000:]}"
            try:
                if httpx.get(f"{url}/api/jobs", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the UI did not answer within 60 s"
            time.sleep(0.3)
        assert httpx.get(url + "/", timeout=10).status_code == 200
        # Uploads (python-multipart) and the streaming body limit (Starlette) at their floors.
        too_big = httpx.post(f"{url}/api/photo", files={"file": ("a.jpg", b"\xff" * 2_000_000)}, timeout=30)
        assert too_big.status_code == 413, too_big.text
        not_a_photo = httpx.post(f"{url}/api/photo", files={"file": ("a.jpg", b"text")}, timeout=30)
        assert not_a_photo.status_code == 415 and "JPEG or PNG" in not_a_photo.json()["error"], not_a_photo.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_specs_validate_and_crds_generate_on_the_declared_minimum_pydantic(tmp_path):
    """pydantic's floor, with the pydantic-core it was released with (pip resolves that pair)."""
    version = floor(PROJECT["dependencies"], "pydantic")
    target = tmp_path / "floors"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--target", str(target), f"pydantic=={version}"], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        pytest.fail(f"cannot install pydantic=={version}: {result.stderr[-1500:]}")
    code = """
import pydantic, yaml, sys
from pathlib import Path
from posegraph.graph.spec import parse_pipeline
from posegraph import generate
print(pydantic.VERSION)
for path in sorted(Path("operators/examples").glob("posepipeline*.yaml")):
    parse_pipeline(yaml.safe_load(path.read_text()))
try:
    parse_pipeline({"metadata": {"name": "x"}, "spec": {"stages": {"detect": {}}}})
    sys.exit("an incomplete spec was accepted")
except Exception as exc:
    assert "stages" in str(exc), exc
generate.main(["--root", sys.argv[1]])
"""
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "generated")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert Version(run.stdout.split()[0]) == Version(version)
