"""Frames per second of the in-process detect + pose2d pass with the detector on every N-th frame
(`posegraph run --detect-every N`), side by side in one run: N = 1 (today's batched path) is the
baseline of each row.

    python bench/detect_every.py [--frames 48] [--every 1,5,10] [--persons 1,4] [--repeat 3]
                                 [--checkpoints DIR] [--json PATH]

RTMDet-nano + RTMPose-m, flip test off (the cpu profile), on the bundled clip (the photo panning
across the frame). Random checkpoints (weights do not change the cost of a network call); the
number of persons is fixed with detect.max_persons and the detector's threshold at 0, so every row
estimates exactly that many persons a frame. With random weights a carried box follows noisy
keypoints and persons are re-detected when their keypoints score low: the fraction of frames the
detector ran on is reported beside the speed, so a row says what it measured. Decoding is left
out (frames are decoded once, before the clock starts), lifting too (the same for every N).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def measure(stages, tracking, frames, every: int, in_flight: int) -> tuple[float, float]:
    """(frames/s, fraction of frames the detector ran on) of one video pass over ``frames``, as
    `posegraph run` makes it (batches of batch_for(N, 8), ``in_flight`` of them at once); lifting
    left out (a pass-through), the same for every N."""
    from posegraph.tracking import Tracker
    from posegraph.videopass import DetectEvery, InProcessFrames, MemorySink, batch_for, detect_every, run_video

    run = detect_every(InProcessFrames(stages), every, tracking)
    sink = MemorySink()
    started = time.perf_counter()
    run_video(frames, run, lambda tracks: tracks, sink, Tracker(), batch_frames=batch_for(every, 8),
              in_flight=in_flight)
    seconds = time.perf_counter() - started
    done = len(sink.docs)
    detected = run.detected if isinstance(run, DetectEvery) else done
    return done / seconds, detected / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--every", default="1,5,10")
    parser.add_argument("--persons", default="1,4")
    parser.add_argument("--repeat", type=int, default=3, help="each row this many times, taking turns; the median")
    parser.add_argument("--in-flight", default="1,2",
                        help="batches at once for N > 1, comma-separated (N = 1: one, as `run` before N existed)")
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from posegraph.config import load_profile
    from posegraph.media.samples import synthetic_clip_frames
    from posegraph.models.checkpoints import ensure_checkpoints
    from posegraph.pipeline import Pipeline
    from posegraph.videopass import Frame

    checkpoints = args.checkpoints or Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    everies = [int(n) for n in args.every.split(",") if int(n) > 1]
    frames = [Frame(i, i / 30, pixels) for i, pixels in enumerate(synthetic_clip_frames(args.frames))]
    rows = {}
    for persons in (int(p) for p in args.persons.split(",")):
        profile = load_profile("cpu", [f"detect.max_persons={persons}", "detect.score_threshold=0",
                                       "pose2d.flip_test=false"])
        ensure_checkpoints(profile, checkpoints)
        pipeline = Pipeline(profile, checkpoint_dir=checkpoints).load()
        measure(pipeline.stages, profile.tracking, frames[:8], 1, 1)  # warm-up: first calls allocate
        variants = [(1, 1)] + [(n, f) for n in everies if n > 1 for f in map(int, args.in_flight.split(","))]
        runs: dict[tuple[int, int], list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.repeat):
            for n, flight in variants:  # taking turns, so a slow moment of the machine hits every row alike
                runs[(n, flight)].append(measure(pipeline.stages, profile.tracking, frames, n, flight))
        base = statistics.median(fps for fps, _ in runs[(1, 1)])
        for n, flight in variants:
            fps = statistics.median(f for f, _ in runs[(n, flight)])
            rows[f"{persons} person{'s' if persons > 1 else ''}, N = {n}, {flight} in flight"] = {
                "fps": round(fps, 2), "x N=1": round(fps / base, 2),
                "detector_on": round(statistics.median(d for _, d in runs[(n, flight)]), 2)}
    width = max(map(len, rows))
    print(f"{'':{width}}  frames/s  ratio  detector on")
    for name, row in rows.items():
        print(f"{name:{width}}  {row['fps']:8.2f}  {row['x N=1']:5.2f}  {row['detector_on']:.0%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
