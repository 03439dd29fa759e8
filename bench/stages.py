"""Per-stage latency: onnxruntime (what posegraph serves) against eager PyTorch (the baseline), on
the same checkpoints and inputs, side by side; plus VideoPose3D's two layouts.

    python bench/stages.py [--checkpoints DIR] [--repeat 20] [--threads 2] [--json out.json]

Checkpoints default to random ones written into a temporary directory (latency does not depend on
the weights' values). Reports median milliseconds and the ratio baseline / posegraph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from posegraph.models.checkpoints import write_random
from posegraph.frame import FrameDocument, Person
from posegraph.media.samples import astronaut_bgr, synthetic_clip_frames
from posegraph.stages import DetectStage, Lift3dStage, Pose2dStage
from posegraph.models.zoo import get_model


def median_ms(fn, repeat: int) -> float:
    fn()  # warm-up (first call allocates)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    directory = args.checkpoints or Path(tempfile.mkdtemp(prefix="posegraph-bench-"))
    models = ["rtmdet-nano-person", "rtmdet-m-person", "rtmpose-t", "rtmpose-m", "videopose3d-243"]
    for name in models:
        path = directory / f"{name}.pth"
        if not path.is_file():
            write_random(get_model(name), path)

    photo = astronaut_bgr()
    persons = [Person(bbox=[150.0, 20.0, 400.0, 500.0], score=1.0)]
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 400, (17, 2))

    def track(frames):
        from posegraph.frame import TrackDocument, TrackFrame

        kps = base + np.cumsum(rng.normal(0, 2, (frames, 17, 2)), 0)
        return TrackDocument(track_id=0, width=640, height=480, frames=[
            TrackFrame(frame_index=i, bbox=[*(k.min(0) - 5), *(k.max(0) + 5)], keypoints2d=np.c_[k, np.ones(17)].tolist())
            for i, k in enumerate(kps)])

    cases = []
    for name in models:
        spec = get_model(name)
        for backend in ("torch", "onnxruntime"):
            if spec.stage == "detect":
                stage = DetectStage({"model": name}).load(str(directory / f"{name}.pth"), backend=backend,
                                                          threads=args.threads)
                work = lambda s=stage: s.run([FrameDocument.from_pixels(photo)])  # noqa: E731
                what = "1 photo"
            elif spec.stage == "pose2d":
                stage = Pose2dStage({"model": name}).load(str(directory / f"{name}.pth"), backend=backend,
                                                          threads=args.threads)
                work = lambda s=stage: s.run([FrameDocument.from_pixels(photo, persons=persons)])  # noqa: E731
                what = "1 person"
            else:
                stage = Lift3dStage({"model": name}).load(str(directory / f"{name}.pth"), backend=backend,
                                                          threads=args.threads)
                work = lambda s=stage: s.run([track(1)])  # noqa: E731
                what = "1 frame"
            cases.append((name, what, backend, median_ms(work, args.repeat)))

    lift = Lift3dStage({"model": "videopose3d-243"}).load(str(directory / "videopose3d-243.pth"),
                                                         threads=args.threads)
    layouts = []
    for frames in (1, 8, 64, 300):
        t = track(frames)
        windowed_ms = median_ms(lambda: lift._infer_tcn([lift.preprocess([t]).sequences[0]]), max(3, args.repeat // 4))
        saved, lift.window_network = lift.window_network, None
        whole_ms = median_ms(lambda: lift._infer_tcn([lift.preprocess([t]).sequences[0]]), max(3, args.repeat // 4))
        lift.window_network = saved
        layouts.append((frames, windowed_ms if frames <= lift.WINDOWED_MAX_FRAMES else None, whole_ms))

    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    pipeline = Pipeline(load_profile("cpu", ["detect.max_persons=1"]), checkpoint_dir=directory)
    for stage_name in ("detect", "pose2d", "lift3d"):
        settings = pipeline.stages[stage_name].settings
        settings.checkpoint = str(directory / f"{pipeline.stages[stage_name].spec.name}.pth")
    pipeline.load()
    frames = synthetic_clip_frames(24)
    started = time.perf_counter()
    pipeline.detect_and_pose([FrameDocument.from_pixels(f, frame_index=i) for i, f in enumerate(frames)])
    fps = len(frames) / (time.perf_counter() - started)

    print(f"{'model':20s} {'input':9s} {'torch ms':>9s} {'onnxrt ms':>9s} {'speed-up':>8s}")
    rows = {}
    for name, what, backend, ms in cases:
        rows.setdefault((name, what), {})[backend] = ms
    for (name, what), r in rows.items():
        print(f"{name:20s} {what:9s} {r['torch']:9.1f} {r['onnxruntime']:9.1f} {r['torch'] / r['onnxruntime']:7.2f}×")
    print("\nVideoPose3D-243 layouts (onnxruntime): frames, windowed ms, one-pass ms")
    for frames, windowed, whole in layouts:
        w = f"{windowed:9.1f}" if windowed is not None else "        -"
        print(f"  {frames:5d} {w} {whole:9.1f}")
    print(f"\ndetect + pose2d (cpu profile, 1 person), 24 frames: {fps:.1f} frames/s")
    if args.json:
        args.json.write_text(json.dumps({"stages": [dict(zip(("model", "input", "backend", "ms"), c)) for c in cases],
                                         "layouts": layouts, "frames_per_s": fps}, indent=2))


if __name__ == "__main__":
    main()
