"""The stage server images, checked without a Docker engine (none runs here): what the
Dockerfiles promise about users, bases, layers and weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SERVERS = Path(__file__).resolve().parents[1] / "model-servers"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


def stages_of(text: str) -> dict[str, list[str]]:
    stages, current = {}, None
    for line in text.splitlines():
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = []
        elif current:
            stages[current].append(line)
    return stages


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_images_run_as_non_root_and_carry_no_weights(name):
    text = (SERVERS / name).read_text()
    stages = stages_of(text)
    for target in ("kserve", "torchserve"):
        assert target in stages, f"{name} lacks the {target} target"
        body = "\n".join(stages[target])
        assert "USER 1000" in body
    for line in text.splitlines():
        if line.startswith("COPY"):
            assert not re.search(r"\.(pth|onnx|mar|pt)\b", line), f"weights copied into an image: {line}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name):
    for arg in re.findall(r"ARG \w+_IMAGE=(\S+)", (SERVERS / name).read_text()):
        repo, _, tag = arg.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base {arg}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_before_code(name):
    """Code changes must not invalidate the dependency layers."""
    stages = stages_of((SERVERS / name).read_text())
    for target in ("kserve", "torchserve"):
        body = stages[target]
        copy_src = next(i for i, line in enumerate(body) if line.startswith("COPY src"))
        assert not any("pip install -r" in line for line in body[copy_src:])
        assert any("pip install -r" in line for line in stages[f"{target}-deps"])


@pytest.mark.parametrize("req", ["requirements-kserve.txt", "requirements-torchserve.txt"])
def test_requirements_are_pinned_and_have_no_openmmlab(req):
    lines = [line.strip() for line in (SERVERS / req).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all("==" in line for line in lines), "every package pinned"
    assert not any(line.lower().startswith(("mmcv", "mmdet", "mmpose", "mmengine")) for line in lines)
    if req == "requirements-kserve.txt":
        assert not any(line.startswith(("torch", "torchvision")) for line in lines), "the KServe image has no torch"
