"""`posegraph live`, measured: latency and drops on a 30 frames/s source, and the online lifting's
look-ahead against its error.

    python bench/live.py [--seconds 12] [--every 1,5] [--pose2d rtmpose-m,rtmpose-s] [--graph]
                         [--lag-frames 300] [--delays 0,1,2,5,10,20] [--skip latency|lag]
                         [--checkpoints DIR] [--json PATH]

latency  A 30 frames/s clip (the bundled photo panning, one person: detect.max_persons=1 and the
         detector's threshold at 0, so every frame has exactly one; RTMDet-nano and each --pose2d
         model, flip test off, as the cpu profile) played as a camera through
         run_live, as `posegraph live` runs it: in this process, and with --graph through the local
         graph (three stage servers and the router on loopback). Per row: frames/s, the fraction of
         captured frames dropped, latency from capture to the frame's document p50/p95. Rows in
         turns, one after another in one run; the first seconds of each row are warm-up and left
         out by run_live's own warm_up (the bundled photo through every network first).
lag      The online lifting (live.OnlineLift) against lifting each whole track (what a job does),
         on the same synthetic 2D tracks: a standing person's 17 COCO keypoints swaying (sums of
         0.2-1.5 Hz sinusoids, 5-25 px) and walking across the frame, with 1.5 px of jitter, at
         30 frames/s. For each look-ahead D: the mean and p95 distance per joint (mm) between the
         two 3Ds (and the mean as a fraction of the poses' size: mean joint distance from the root), the
         lag it costs (D frames), and the lifting's time per frame. Also the frame
         alone (each frame lifted by itself, no track). Random weights give the lifting network's
         sensitivity to what it cannot see, not the official model's: rerun with --checkpoints
         holding the official checkpoints for those numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

# A standing person facing the camera, COCO-17 order, pixels (about 330 px tall).
STANDING = np.array([
    [320, 100], [330, 90], [310, 90], [342, 96], [298, 96],        # nose, eyes, ears
    [360, 150], [280, 150], [375, 210], [265, 210], [380, 265], [260, 265],  # shoulders, elbows, wrists
    [345, 270], [295, 270], [350, 350], [290, 350], [352, 430], [288, 430],  # hips, knees, ankles
], float)


def synthetic_tracks(n_tracks: int, frames: int, rng: np.random.Generator):
    """Tracked frame documents: each person sways and walks across the frame."""
    from posegraph.frame import FrameDocument, Person

    t = np.arange(frames) / 30
    people = []
    for p in range(n_tracks):
        freqs, amps = rng.uniform(0.2, 1.5, (17, 2, 3)), rng.uniform(5, 25, (17, 2, 3))
        phases = rng.uniform(0, 2 * np.pi, (17, 2, 3))
        sway = (amps * np.sin(2 * np.pi * freqs * t[:, None, None, None] + phases)).sum(-1)
        walk = np.stack([rng.uniform(-60, 60) * t, 10 * np.sin(2 * np.pi * 0.5 * t)], -1)[:, None]
        people.append(STANDING + sway + walk + rng.normal(0, 1.5, (frames, 17, 2)) + [p * 40 - 40, 0])
    docs = []
    for i in range(frames):
        persons = [Person(bbox=[*(k[i].min(0) - 10), *(k[i].max(0) + 10)], score=0.9, track_id=p,
                          keypoints2d=np.c_[k[i], np.full(17, 0.9)].tolist()) for p, k in enumerate(people)]
        docs.append(FrameDocument(width=640, height=480, frame_index=i, persons=persons))
    return docs


def whole_track_3d(stage, docs) -> dict[int, np.ndarray]:
    """track id → (T, 17, 3): each track lifted whole, as a job lifts it."""
    from posegraph.frame import TrackDocument, TrackFrame

    out = {}
    for p in range(len(docs[0].persons)):
        track = TrackDocument(track_id=p, width=640, height=480, frames=[
            TrackFrame(frame_index=d.frame_index, bbox=d.persons[p].bbox, keypoints2d=d.persons[p].keypoints2d)
            for d in docs])
        out[p] = np.asarray([f.keypoints3d for f in stage.run([track])[0].frames])
    return out


def lag_rows(stage, docs, delays: list[int]) -> dict[str, dict]:
    from posegraph.live import OnlineLift

    reference = whole_track_3d(stage, docs)
    # the size of the poses (mean joint distance from the root, mm): errors relative to it compare
    # across weights, whose 3D may be of any scale (random weights: metres off)
    size = float(np.mean([np.linalg.norm(ref, axis=-1).mean() for ref in reference.values()]) * 1000)

    def distances(lifted) -> np.ndarray:
        return np.concatenate([np.linalg.norm(np.asarray([d.persons[p].keypoints3d for d in lifted]) - ref, axis=-1)
                               .ravel() for p, ref in reference.items()]) * 1000

    rows = {}
    started = time.perf_counter()
    alone = stage.run([d.model_copy(deep=True) for d in docs])
    per_frame = (time.perf_counter() - started) / len(docs) * 1000
    mm = distances(alone)
    rows["each frame alone"] = {"lag_frames": 0, "mean_mm": round(float(mm.mean()), 1),
                                "of_pose_size": round(float(mm.mean()) / size, 3),
                                "p95_mm": round(float(np.percentile(mm, 95)), 1), "ms_per_frame": round(per_frame, 1)}
    for delay in delays:
        online = OnlineLift(stage.run, stage.spec, delay)
        lifted, started = [], time.perf_counter()
        for doc in docs:
            lifted += online.push(doc.model_copy(deep=True))
        lifted += online.flush()
        per_frame = (time.perf_counter() - started) / len(docs) * 1000
        mm = distances(lifted)
        rows[f"online, look-ahead {delay}"] = {"lag_frames": delay, "mean_mm": round(float(mm.mean()), 1),
                                              "of_pose_size": round(float(mm.mean()) / size, 3),
                                              "p95_mm": round(float(np.percentile(mm, 95)), 1),
                                              "ms_per_frame": round(per_frame, 1)}
    return rows


def latency_row(source: Path, step, lift, profile, seconds: float) -> dict:
    from posegraph.live import run_live
    from posegraph.tracking import Tracker

    stats = run_live(str(source), step, lift, Tracker.for_settings(profile.tracking), seconds=seconds)
    s = stats.summary()
    return {k: s[k] for k in ("fps", "dropped_fraction", "latency_ms_p50", "latency_ms_p95", "frames_captured",
                              "frames_processed")}


def write_source(path: Path, seconds: float) -> Path:
    """A 30 frames/s MJPEG AVI of the bundled clip, looped to ``seconds``."""
    import cv2

    from posegraph.media.samples import synthetic_clip_frames

    frames = synthetic_clip_frames(48)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (frames[0].shape[1], frames[0].shape[0]))
    for i in range(int(seconds * 30) + 30):
        k = i % (2 * len(frames) - 2)  # back and forth, so the person never jumps
        writer.write(frames[k if k < len(frames) else 2 * len(frames) - 2 - k])
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="each latency row runs this long")
    parser.add_argument("--every", default="1,5", help="detect every N, comma-separated (latency rows)")
    parser.add_argument("--graph", action="store_true", help="latency through the local graph too")
    parser.add_argument("--pose2d", default="rtmpose-m,rtmpose-s", help="pose2d models (latency rows)")
    parser.add_argument("--lag-frames", type=int, default=300)
    parser.add_argument("--delays", default="0,1,2,5,10,20")
    parser.add_argument("--skip", choices=["latency", "lag"], default=None)
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from contextlib import ExitStack

    from posegraph.client import GraphClient
    from posegraph.config import load_profile
    from posegraph.embedded import start_embedded_graph
    from posegraph.live import graph_step, in_process_step
    from posegraph.models.checkpoints import ensure_checkpoints
    from posegraph.pipeline import Pipeline

    checkpoints = args.checkpoints or Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    results: dict[str, dict] = {}
    if args.skip != "lag":
        profile = load_profile("cpu")
        ensure_checkpoints(profile, checkpoints)
        stage = Pipeline(profile, checkpoint_dir=checkpoints).load().stages["lift3d"]
        results["lag"] = lag_rows(stage, synthetic_tracks(2, args.lag_frames, np.random.default_rng(0)),
                                  [int(d) for d in args.delays.split(",")])
        print(f"{'lifting':28}  look-ahead  mean mm  of pose size  p95 mm  ms/frame")
        for name, row in results["lag"].items():
            print(f"{name:28}  {row['lag_frames']:10}  {row['mean_mm']:7.1f}  {row['of_pose_size']:12.0%}  "
                  f"{row['p95_mm']:6.1f}  {row['ms_per_frame']:8.1f}")
    if args.skip != "latency":
        source = write_source(Path(tempfile.mkdtemp(prefix="bench-live-")) / "source.avi", args.seconds)
        rows = results.setdefault("latency", {})
        for model in args.pose2d.split(","):
            for every in (int(n) for n in args.every.split(",")):
                profile = load_profile("cpu", ["detect.max_persons=1", "detect.score_threshold=0", f"pose2d.model={model}",
                                               "pose2d.flip_test=false", f"tracking.detect_every={every}"])
                ensure_checkpoints(profile, checkpoints)
                step, lift = in_process_step(Pipeline(profile, checkpoint_dir=checkpoints).load(), every)
                rows[f"{model}, in process, N = {every}"] = latency_row(source, step, lift, profile, args.seconds)
                if args.graph:
                    with ExitStack() as stack:
                        graph = stack.enter_context(start_embedded_graph(profile, checkpoints))
                        client = stack.enter_context(GraphClient(graph.endpoint))
                        step, lift = graph_step(client.infer, profile)
                        rows[f"{model}, local graph, N = {every}"] = latency_row(source, step, lift, profile,
                                                                                 args.seconds)
        width = max(map(len, rows))
        print(f"\n{'live, 30 frames/s source':{width}}  frames/s  dropped  p50 ms  p95 ms")
        for name, row in rows.items():
            print(f"{name:{width}}  {row['fps']:8.1f}  {row['dropped_fraction']:7.0%}  {row['latency_ms_p50']:6.0f}  "
                  f"{row['latency_ms_p95']:6.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
