"""BlazePose (the real-offline profile) against RTMDet-nano + RTMPose-m (the cpu profile), side by
side in one run, and BlazePose's networks under onnxruntime (converted by posegraph) against Google's
TFLite runtime (ai-edge-litert).

    python bench/blazepose.py --blazepose DIR [--checkpoints DIR] [--frames 48] [--repeat 3] [--json PATH]

pipeline   frames/s of detect + pose2d + lift3d frame by frame on the bundled clip (one person),
           in this process, decoding outside the clock; and each stage's ms a frame. The cpu profile
           runs on random checkpoints (a network's speed does not depend on its weights), with
           detect.max_persons=1 so both estimate one person.
networks   ms per call of each BlazePose network at batch 1, two threads, onnxruntime on the
           converted model against ai-edge-litert (XNNPACK) on the TFLite file. Rows in turns, the
           median of --repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def pipeline_fps(pipeline, frames) -> tuple[float, dict[str, float]]:
    from posegraph.frame import FrameDocument

    ms: dict[str, list[float]] = {"detect": [], "pose2d": [], "lift3d": []}
    started = time.perf_counter()
    for pixels in frames:
        doc = FrameDocument.from_pixels(pixels)
        for stage in ("detect", "pose2d", "lift3d"):
            doc = pipeline.stages[stage].run([doc])[0]
            ms[stage].append(doc.stages[stage].ms)
    return len(frames) / (time.perf_counter() - started), {k: statistics.median(v) for k, v in ms.items()}


def network_ms(call, x, n: int = 20) -> float:
    call(x)
    started = time.perf_counter()
    for _ in range(n):
        call(x)
    return (time.perf_counter() - started) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blazepose", type=Path, required=True, help="`posegraph models fetch --profile real-offline --dir DIR`")
    parser.add_argument("--checkpoints", type=Path, help="the cpu profile's checkpoints (default: random ones)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from ai_edge_litert.interpreter import Interpreter

    from posegraph.config import load_profile
    from posegraph.media.samples import synthetic_clip_frames
    from posegraph.models.checkpoints import ensure_checkpoints
    from posegraph.models.engine import load_network
    from posegraph.models.zoo import get_model
    from posegraph.pipeline import Pipeline

    frames = synthetic_clip_frames(args.frames)
    checkpoints = args.checkpoints or Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    cpu = load_profile("cpu", ["detect.max_persons=1", "pose2d.flip_test=false"])
    ensure_checkpoints(cpu, checkpoints)
    pipelines = {"RTMDet-nano + RTMPose-m + VideoPose3D (cpu)": Pipeline(cpu, checkpoint_dir=checkpoints).load(),
                 "BlazePose (real-offline)": Pipeline(load_profile("real-offline"), checkpoint_dir=args.blazepose).load()}
    runs: dict[str, list] = {name: [] for name in pipelines}
    for pipeline in pipelines.values():
        pipeline_fps(pipeline, frames[:4])  # first calls allocate
    for _ in range(args.repeat):
        for name, pipeline in pipelines.items():  # in turns
            runs[name].append(pipeline_fps(pipeline, frames))
    results = {"pipeline": {}, "networks": {}}
    print(f"{'pipeline, one frame at a time, 1 person':46}  frames/s  detect ms  pose2d ms  lift3d ms")
    for name, got in runs.items():
        fps = statistics.median(f for f, _ in got)
        ms = {k: statistics.median(m[k] for _, m in got) for k in ("detect", "pose2d", "lift3d")}
        results["pipeline"][name] = {"fps": round(fps, 2), **{f"{k}_ms": round(v, 1) for k, v in ms.items()}}
        print(f"{name:46}  {fps:8.1f}  {ms['detect']:9.1f}  {ms['pose2d']:9.1f}  {ms['lift3d']:9.1f}")

    print(f"\n{'network, batch 1, 2 threads':28}  onnxruntime (converted) ms  TFLite runtime ms")
    for model, size in (("blazepose-detector", 224), ("blazepose-full", 256)):
        path = args.blazepose / f"{model}.tflite"
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        ort = load_network(get_model(model), str(path), threads=2)
        interpreter = Interpreter(model_path=str(path), num_threads=2)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]

        def litert(x, interpreter=interpreter, index=index):
            interpreter.set_tensor(index, x)
            interpreter.invoke()

        ort_ms, lite_ms = [], []
        for _ in range(args.repeat):
            ort_ms.append(network_ms(ort, x))
            lite_ms.append(network_ms(litert, x))
        row = {"onnxruntime_ms": round(statistics.median(ort_ms), 1), "litert_ms": round(statistics.median(lite_ms), 1)}
        results["networks"][model] = row
        print(f"{model:28}  {row['onnxruntime_ms']:26.1f}  {row['litert_ms']:17.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
