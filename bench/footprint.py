"""What serving exported models saves: installed size and start time of a stage server, with
exported ONNX (what posegraph ships) against serving the checkpoint with the OpenMMLab stack.

    python bench/footprint.py [--checkpoints DIR]

Sizes are the installed files of each package set, as pip laid them out in this environment
(a proxy for the image layer each set needs; the base OS and Java add the same on every side).
Start times are from process start to "ready", three runs, median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from posegraph.models.checkpoints import write_random
from posegraph.config import load_profile
from posegraph.serving.archive import build_archive
from posegraph.embedded import start_stage_server
from posegraph.models.zoo import get_model

SETS = {
    "kserve runtime, ONNX (posegraph image)": [
        "numpy", "opencv-python-headless", "onnxruntime", "pydantic", "PyYAML", "boto3", "pillow", "kserve",
        "prometheus-client"],
    "torchserve runtime, ONNX (+ torch: TorchServe's worker imports it)": [
        "numpy", "opencv-python-headless", "onnxruntime", "pydantic", "PyYAML", "boto3", "pillow", "torchserve",
        "prometheus-client", "torch"],
    "checkpoint + OpenMMLab at serve time": [
        "numpy", "opencv-python-headless", "pydantic", "PyYAML", "boto3", "pillow", "kserve", "prometheus-client",
        "torch", "torchvision", "mmcv-lite", "mmdet", "mmpose", "mmengine", "scipy", "pycocotools", "xtcocotools",
        "shapely", "matplotlib"],
}


def closure(names: list[str]) -> set[str]:
    """The packages and everything they require, as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            dep = req.split(";")[0].split("[")[0]
            for sep in "<>=!~ (":
                dep = dep.split(sep)[0]
            if dep.strip():
                todo.append(dep.strip())
    return seen


def installed_mb(packages: set[str]) -> float:
    total = 0
    for name in packages:
        dist = metadata.distribution(name)
        for f in dist.files or []:
            path = Path(dist.locate_file(f))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def start_seconds(make, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        stop = make()
        times.append(time.perf_counter() - started)
        stop()
    return statistics.median(times)


MM_START = """
import sys, time
sys.path.insert(0, {tests!r})
import mm_reference
model = mm_reference.init_reference_model({model!r}, {checkpoint!r})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path)
    args = parser.parse_args()

    print("installed size of what a stage server needs:")
    for label, names in SETS.items():
        packages = closure(names)
        print(f"  {installed_mb(packages):7.0f} MB  {label}  ({len(packages)} packages)")

    profile = load_profile("cpu")
    work = Path(tempfile.mkdtemp(prefix="posegraph-footprint-"))
    checkpoints = args.checkpoints or work
    print("\nstart → ready (median of 3):")
    for stage in ("detect", "pose2d", "lift3d"):
        model = profile.stage_settings(stage).model
        checkpoint = checkpoints / f"{model}.pth"
        if not checkpoint.is_file():
            write_random(get_model(model), checkpoint)
        layout = work / stage
        build_archive(stage, str(checkpoint), layout, settings=profile.stage_settings(stage))
        row = [f"  {stage:7s}"]
        for runtime in ("kserve", "torchserve"):
            def make(runtime=runtime):
                server = start_stage_server(stage, layout, runtime=runtime).wait_ready()
                return server.stop
            row.append(f"{runtime} + ONNX {start_seconds(make):5.1f} s")
        script = MM_START.format(tests=str(Path(__file__).resolve().parents[1] / "tests"), model=model,
                                 checkpoint=str(checkpoint))
        mm = start_seconds(lambda: (subprocess.run([sys.executable, "-c", script], check=True,
                                                    capture_output=True), lambda: None)[1])
        row.append(f"mm* import + init_model (no server) {mm:5.1f} s")
        print("   ".join(row), flush=True)


if __name__ == "__main__":
    main()
