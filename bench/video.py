"""Frames per second on one clip: mmpose's MMPoseInferencer (pose3d) in process, posegraph's
in-process pipeline, and a posegraph job through the local graph, side by side.

    python bench/video.py [--frames 24] [--bbox-thr 0.8] [--checkpoints DIR] [--in-flight 1,2] [--workers 2,4]
                          [--repeat 3] [--max-persons N] [--skip-mmpose]

The same random checkpoints everywhere (weights do not change the cost) and the same person
threshold (``--bbox-thr``: random weights find dozens of junk boxes at mmpose's default 0.3, and
the comparison should be about the pipeline, not about how many junk crops it estimates). Needs
the reference stack that `make test` installs (mmdet/mmpose on mmcv-lite).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) since the process started or since reset_peak()."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int | str = "self") -> None:
    try:  # "5" resets the peak RSS counter (proc(5), clear_refs)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class Meter:
    """CPU seconds and peak memory of a set of processes over one measured run."""

    def __init__(self, pids: dict[str, int | str], *, workers: bool = False) -> None:
        """``workers``: also the processes this one starts during the run and waits for
        (`--workers`' range processes, gone by the end): CPU from getrusage, peak memory sampled
        from /proc while they run (getrusage's maxrss counts the forked parent's memory too)."""
        import threading

        self.pids, self.workers = pids, workers
        for pid in pids.values():
            reset_peak(pid)
        self.cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        self.children0 = self._children_cpu()
        self.worker_peak = 0.0
        self._stop = threading.Event()
        if workers:
            known = {int(p) for p in pids.values() if p != "self"}
            self._sampler = threading.Thread(target=self._sample, args=(known,), daemon=True)
            self._sampler.start()
        self.t0 = time.perf_counter()

    def _sample(self, known: set[int]) -> None:
        me = os.getpid()
        while not self._stop.wait(0.2):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in known:
                    continue
                try:
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                        self.worker_peak = max(self.worker_peak, peak_mb(entry.name))
                except (OSError, ValueError):
                    continue

    @staticmethod
    def _children_cpu() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def done(self, frames: int) -> dict:
        seconds = time.perf_counter() - self.t0
        self._stop.set()
        cpu = {name: cpu_s(pid) - self.cpu0[name] for name, pid in self.pids.items()}
        peaks = {name: round(peak_mb(pid)) for name, pid in self.pids.items()}
        if self.workers:
            cpu["workers"] = self._children_cpu() - self.children0
            peaks["largest worker"] = round(self.worker_peak)
        return {"fps": frames / seconds, "cpu_s_per_frame": sum(cpu.values()) / frames, "peak_mb": peaks,
                "cpu_ms_per_frame_by_process": {name: round(1000 * c / frames, 1) for name, c in cpu.items()}}


def mmpose_row(args, models, checkpoints, clip, rows) -> None:
    sys.path.insert(0, str(TESTS))
    import mm_reference  # noqa: F401  (mmcv-lite's stand-in _ext)
    from mmpose.apis import MMPoseInferencer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inferencer = MMPoseInferencer(
            pose2d=mm_reference.config_for(models["pose2d"]), pose2d_weights=str(checkpoints / f"{models['pose2d']}.pth"),
            det_model=mm_reference.config_for(models["detect"]), det_weights=str(checkpoints / f"{models['detect']}.pth"),
            det_cat_ids=[0], pose3d=mm_reference.config_for(models["lift3d"]),
            pose3d_weights=str(checkpoints / f"{models['lift3d']}.pth"), device="cpu")
        meter = Meter({"bench": "self"})
        frames = sum(1 for _ in inferencer(str(clip), bbox_thr=args.bbox_thr, show=False))
        rows["(a) mmpose MMPoseInferencer(pose3d), in process"] = meter.done(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--bbox-thr", type=float, default=0.8)
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--in-flight", default="1,2", help="graph requests at once for (c), comma-separated")
    parser.add_argument("--max-persons", type=int, default=None,
                        help="persons per frame for (b) and (c) (detect.max_persons; default: all above --bbox-thr)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a profile override for (b) and (c), e.g. threads=1 (repeatable)")
    parser.add_argument("--skip-mmpose", action="store_true", help="leave out (a); ratios are then against (b)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="(b) and (c) measured this many times, taking turns; the median is reported")
    parser.add_argument("--workers", default="2", help="(c) split over N processes (job run --workers), "
                                                       "comma-separated; 1 in flight each")
    args = parser.parse_args()

    from posegraph.models.checkpoints import write_random
    from posegraph.config import load_profile
    from posegraph.media.samples import synthetic_clip_frames, write_clip
    from posegraph.models.zoo import get_model

    import onnxruntime as ort

    overrides = [f"detect.score_threshold={args.bbox_thr}",
                 f"detect.max_persons={args.max_persons if args.max_persons else 'null'}", *args.set]
    if "CUDAExecutionProvider" in ort.get_available_providers():  # onnxruntime-gpu and a GPU: run there
        overrides.append("device=cuda:0")
    profile = load_profile("cpu", overrides)
    work = Path(tempfile.mkdtemp(prefix="posegraph-bench-video-"))
    checkpoints = args.checkpoints or work
    models = {s: profile.stage_settings(s).model for s in ("detect", "pose2d", "lift3d")}
    for model in models.values():
        if not (checkpoints / f"{model}.pth").is_file():
            write_random(get_model(model), checkpoints / f"{model}.pth")
    clip = write_clip(work / "clip.mp4", synthetic_clip_frames(args.frames))
    rows = {}

    # (a) mmpose's own inferencer, in process.
    if not args.skip_mmpose:
        mmpose_row(args, models, checkpoints, clip, rows)

    # (b) posegraph's in-process pipeline and (c) a job through the local graph (KServe runtime, SQLite,
    # rendering and motion exports off: (b) does neither): once with the cpu profile (no flip test),
    # once doing mmpose's work (RTMPose flip test on, as its configs and so MMPoseInferencer do).
    from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph
    from posegraph.jobs.options import JobOptions
    from posegraph.jobs.runner import JobRunner
    from posegraph.pipeline import Pipeline
    from posegraph.media.video import VideoReader

    def median(runs: list[dict]) -> dict:
        """The run with the median frames/s (its other numbers with it), and every run's frames/s."""
        row = sorted(runs, key=lambda r: r["fps"])[len(runs) // 2]
        return {**row, "fps_runs": [r["fps"] for r in runs]}

    def job(graph, job_id: str, **kw) -> dict:
        options = JobOptions(video=str(clip), results=f"sqlite:///{work / 'r.db'}", output=str(work / "out"),
                             graph=graph.endpoint, lift3d=graph.servers["lift3d"].predict_url,
                             render=False, motion=False, job_id=job_id, quiet=True, **kw)
        return JobRunner(options).run()

    persons = 0
    for flip in (False, True):
        variant = load_profile("cpu", overrides + [f"pose2d.flip_test={str(flip).lower()}"])
        label = "flip test on, as mmpose" if flip else "cpu profile"
        pipeline = Pipeline(variant, checkpoint_dir=checkpoints).load()
        with VideoReader(clip) as reader:  # a first pass warms onnxruntime up (its arenas, first-run setup)
            pipeline.video(reader)
        layouts = archives_for_profile(variant, checkpoints)
        with start_local_graph(default_pipeline(layouts, "kserve"), layouts) as graph:
            job(graph, f"bench-{flip}-warmup")  # the stage servers warmed up as (b) is
            pids = {"runner": "self", "router": graph.router.pid,
                    **{stage: server.process.pid for stage, server in graph.servers.items()}}
            runs: dict[str, list[dict]] = {}
            # (b) and (c) take turns, --repeat times: this machine's speed drifts by 10-20 % from one
            # minute to the next, and a ratio of two runs minutes apart measures that drift.
            for rep in range(args.repeat):
                with VideoReader(clip) as reader:
                    meter = Meter({"bench": "self"})
                    docs = pipeline.video(reader)
                    row = meter.done(len(docs))
                # Per stage, from each document's stage records (lift3d's is the whole video's, once).
                # A stage's record holds its batch's time (pipeline.video: 8 frames a batch): one per batch.
                row["ms_per_frame"] = {name: round(sum((docs[i].stages[name].ms or 0)
                                                       for i in range(0, len(docs), 8)) / len(docs), 1)
                                       for name in ("detect", "pose2d")}
                row["ms_per_frame"]["lift3d"] = round((docs[0].stages["lift3d"].ms or 0) / len(docs), 1)
                row["providers"] = sorted({st.network.session.get_providers()[0] if hasattr(st.network, "session")
                                           else st.network.backend for st in pipeline.stages.values()})
                runs.setdefault(f"(b) posegraph in-process pipeline, {label}", []).append(row)
                persons = sum(len(d.persons or []) for d in docs) / len(docs)
                for in_flight in map(int, args.in_flight.split(",")):
                    meter = Meter(pids)
                    summary = job(graph, f"bench-{flip}-{in_flight}-{rep}", in_flight=in_flight)
                    runs.setdefault(f"(c) posegraph job through the local graph, {label}, {in_flight} in flight",
                                    []).append(meter.done(summary["frames_done"]))
            for workers in (int(w) for w in args.workers.split(",") if w.strip() and int(w) > 1):
                meter = Meter(pids, workers=True)
                summary = job(graph, f"bench-{flip}-workers-{workers}", workers=workers)
                runs[f"(c) posegraph job through the local graph, {label}, {workers} workers"] = [
                    meter.done(summary["frames_done"])]
            rows.update({name: median(r) for name, r in runs.items()})

    base_name = "(b) posegraph in-process pipeline, cpu profile" if args.skip_mmpose else \
        "(a) mmpose MMPoseInferencer(pose3d), in process"
    base = rows[base_name]["fps"]
    print(f"\n{args.frames}-frame 640×480 clip, person threshold {args.bbox_thr} ({persons:.1f} persons/frame); "
          f"onnxruntime providers here: {', '.join(ort.get_available_providers())}")
    for name, row in rows.items():
        extra = f"   stages ms/frame {row['ms_per_frame']}  ran on {row['providers']}" if "ms_per_frame" in row else ""
        print(f"  {name:78s} {row['fps']:6.2f} frames/s   {row['fps'] / base:4.2f}× {base_name[:3]}   "
              f"{row['cpu_s_per_frame']:.2f} CPU s/frame   peak MB {row['peak_mb']}{extra}")
        if name.startswith("(c)"):  # the target: served against in-process, same flip setting
            label = "flip test on, as mmpose" if "flip test on" in name else "cpu profile"
            same = rows[f"(b) posegraph in-process pipeline, {label}"]
            row["vs_in_process"] = round(row["fps"] / same["fps"], 3)
            print(f"  {'':78s} {row['vs_in_process']:.2f}× (b) with the same flip setting; "
                  f"frames/s of each run {row['fps_runs']} against {same['fps_runs']}")
        if len(row["cpu_ms_per_frame_by_process"]) > 1:
            print(f"  {'':78s} CPU ms/frame by process {row['cpu_ms_per_frame_by_process']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
