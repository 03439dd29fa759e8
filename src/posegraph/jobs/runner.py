"""``posegraph job run``: a video → 3D poses in a results store, a rendered video and a plot.

What a PoseJob's Kubernetes Job runs, and, with ``--graph local --results sqlite:///…
--output file://…``, what one machine runs with no cluster.

    decode (OpenCV) ─▶ batches of frame documents ─▶ graph endpoint (detect → pose2d → lift3d)
        ─▶ tracker ─▶ commit (frames, persons, tracks, resume point: one transaction)
        ─▶ finished tracks ─▶ lift3d as track documents ─▶ keypoints3d written back
    then: render the overlay video and the 3D plot from the store, export frames.jsonl, upload.

Resumable: run it again with the same job id and it continues after the last committed frame.
The tracker state is committed with every batch, so track ids continue. Rendering and export are
re-done from the store, so the outputs are complete whatever was interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .. import processes
from ..client import GraphClient
from ..config import load_profile
from ..errors import BadInput, PosegraphError, UsageError
from ..frame import Camera
from ..media.camera_tags import focal_35mm
from ..media.video import VideoReader
from ..motion.root import focal_from_35mm, focal_from_fov
from ..names import FAILED, INTERRUPTED, PARTIAL, RUNNING, SUCCEEDED, utc_now
from ..tracking import Tracker
from ..uri import fetch_to_cache
from ..videopass import (
    DetectAndPose,
    GraphFrames,
    GraphLift,
    batch_for,
    detect_every,
    lift_tracks,
    run_video,
    video_frames,
)
from .options import TOKEN_ENV, JobOptions
from .outputs import motion_outputs, render_outputs
from .progress import Progress
from .ranges import FrameRange, plan_ranges, range_job_id
from .rows import JobRow
from .sink import StoreSink
from .store import ResultsStore, open_store

log = logging.getLogger(__name__)


def camera_for(options: JobOptions, video: Path, info) -> Camera | None:
    """The camera lift3d places persons with: --focal-px, else --fov, else the video's metadata,
    else None (lift3d's default, posegraph.motion.root)."""
    if options.focal_px is not None:
        return Camera(focal_px=options.focal_px)
    if options.fov is not None:
        return Camera(focal_px=focal_from_fov(options.fov, info.width))
    f35 = focal_35mm(video)
    if f35 is not None:
        log.info("%s: focal length %.1f mm (35 mm equivalent) from its metadata", video.name, f35)
        return Camera(focal_px=focal_from_35mm(f35, info.width, info.height))
    return None


class JobRunner:
    def __init__(self, options: JobOptions,
                 local_graph: Callable[[ExitStack], tuple[str, str]] | None = None) -> None:
        """``local_graph``: what starts the graph when ``options.graph`` is "local" (the caller's:
        posegraph.embedded.graph_on_demand for the CLI), given this run's stack."""
        options.validate()
        self.local_graph = local_graph
        self.o = options
        self.job_id = options.resolved_job_id()
        self.store: ResultsStore | None = None
        self.progress: Progress | None = None
        self.random_weights = False
        self.split = max(options.workers, options.ranges)  # ranges the job is split into; 1: not split
        self._clients_made: tuple | None = None
        self.camera: Camera | None = None  # the video's, once it is open (camera_for)

    # -- the graph ---------------------------------------------------------------------------------------
    def _graph(self, stack: ExitStack) -> tuple[str, str | None]:
        """(graph endpoint, lift3d URL or None). ``local``: the caller's ``local_graph`` starts it
        (``posegraph job run`` gives embedded.graph_on_demand), once, when first needed."""
        if self.o.graph != "local":
            return self.o.graph, self.o.lift3d
        if self.local_graph is None:
            raise UsageError("--graph local: this caller starts no local graph; give JobRunner "
                             "local_graph=posegraph.embedded.graph_on_demand(profile, checkpoints), or a graph URL")
        endpoint, lift3d_url = self.local_graph(stack)
        return endpoint, self.o.lift3d or lift3d_url

    def _clients(self, stack: ExitStack) -> tuple[GraphClient, GraphClient]:
        """(graph client, lift3d client), made once per run."""
        if self._clients_made is None:
            endpoint, lift3d_url = self._graph(stack)
            client = stack.enter_context(GraphClient(endpoint, token=self.o.token))
            lift = stack.enter_context(GraphClient(lift3d_url, token=self.o.token)) if lift3d_url else client
            self._clients_made = (client, lift)
        return self._clients_made

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o = self.o
        self.store = open_store(o.results)
        self.store.migrate()
        params = {k: v for k, v in asdict(o).items() if k in {"graph", "stride", "batch", "max_frames", "output",
                                                               "render", "motion", "video_format", "focal_px",
                                                               "fov"}}
        job = self.store.begin_job(self.job_id, o.video, params, ranges=self.split if self.split > 1 else None)
        self.progress = Progress(self.job_id, quiet=o.quiet, progress_file=o.progress_file,
                                 metrics_port=o.metrics_port, posejob=o.report_posejob)
        if job.status == SUCCEEDED:
            self.progress.close()
            return self._summary(already_done=True)
        self.random_weights = job.random_weights
        self.store.update_job(self.job_id, status=RUNNING, started_at=job.started_at or utc_now(), error=None)
        try:
            with ExitStack() as stack:
                if self.split > 1 and o.workers > 1:
                    return self._coordinate(stack, job)
                if self.split > 1:
                    return self._run_range(stack, job)
                return self._run(stack, job)
        except KeyboardInterrupt:
            self.store.update_job(self.job_id, status=INTERRUPTED)
            self.progress.report(phase=INTERRUPTED, force=True)
            raise
        except PosegraphError as exc:
            self.store.update_job(self.job_id, status=FAILED, error=str(exc), finished_at=utc_now())
            self.progress.report(phase=FAILED, error=str(exc), force=True)
            raise
        except Exception as exc:
            message = f"internal error: {type(exc).__name__}: {exc}"
            self.store.update_job(self.job_id, status=FAILED, error=message, finished_at=utc_now())
            self.progress.report(phase=FAILED, error=message, force=True)
            raise
        finally:
            self.progress.close()
            self.store.close()

    def _run(self, stack: ExitStack, job: JobRow) -> dict[str, Any]:
        local = fetch_to_cache(self.o.video)
        reader = stack.enter_context(VideoReader(local))
        self.camera = camera_for(self.o, local, reader.info)
        self._ingest(stack, reader, job)
        return self._finish(local, reader)

    def _total(self, info) -> int | None:
        """Sampled frames the job covers, when the video says how many frames it has."""
        total = -(-info.frame_count // self.o.stride) if info.frame_count else None
        if total and self.o.max_frames:
            total = min(total, self.o.max_frames)
        return total

    def _tracker(self, state: dict | None) -> Tracker:
        return Tracker.for_settings(load_profile(self.o.profile).tracking, state)

    def _frames(self, client) -> tuple[DetectAndPose, int, int]:
        """What sends frames through the graph, how many batches may be in flight, and how many
        frames a batch holds: with --detect-every N > 1 a batch is whole chains (videopass.DetectEvery:
        a frame's boxes wait on the frame before, a batch on nothing)."""
        o, tracking = self.o, load_profile(self.o.profile).tracking
        every = o.detect_every or tracking.detect_every
        frames = detect_every(GraphFrames(client.infer, retries=o.retries, image_format=o.frame_format), every,
                              tracking)
        return frames, o.in_flight, batch_for(every, o.batch)

    def _ingest(self, stack: ExitStack, reader: VideoReader, job: JobRow) -> None:
        """The video pass from the resume point: frames through the graph into the store, each
        finished track lifted as it ends (posegraph.videopass)."""
        o, info = self.o, reader.info
        total = self._total(info)
        self.store.update_job(self.job_id, width=info.width, height=info.height, fps=info.fps, frames_total=total)
        client, lift_client = self._clients(stack)
        resume_from = (job.last_frame + 1) if job.last_frame is not None else 0
        self.progress.start(total=total, done=job.frames_seen,
                            phase=RUNNING)
        sink = StoreSink(self, info.width, info.height, camera=self.camera, fps=info.fps / self.o.stride)
        frames, in_flight, batch = self._frames(client)
        run_video(video_frames(reader, stride=o.stride, max_frames=o.max_frames, start=resume_from), frames,
                  GraphLift(lift_client.infer, retries=o.retries), sink, self._tracker(job.tracker_state),
                  batch_frames=batch, lift_batch=o.batch, in_flight=in_flight)

    # -- a job split into ranges -------------------------------------------------------------------------
    def _plan(self, info) -> list[FrameRange]:
        total = self._total(info)
        if not total:
            raise BadInput(f"{Path(self.o.video).name}: its frame count is unknown, so it cannot be split into "
                           "ranges; run it with one worker")
        self.store.update_job(self.job_id, width=info.width, height=info.height, fps=info.fps, frames_total=total)
        return plan_ranges(total, stride=self.o.stride, count=self.split, overlap=self.o.overlap)

    def _range_index(self) -> int:
        index = self.o.range_index
        if index is None:
            value = os.environ.get("JOB_COMPLETION_INDEX")
            if value is None or not value.isdigit():
                raise BadInput(f"--ranges {self.split}: which range? pass --range-index K (0–{self.split - 1}) "
                               "or run it in an Indexed Job ($JOB_COMPLETION_INDEX)")
            index = int(value)
        if not 0 <= index < self.split:
            raise BadInput(f"--range-index {index}: the job has ranges 0–{self.split - 1}")
        return index

    def _run_range(self, stack: ExitStack, job: JobRow) -> dict[str, Any]:
        """One range (an Indexed Job's pod, or a process of ``--workers``); the last range to be
        done merges the ranges, lifts whole tracks and renders."""
        index = self._range_index()
        local = fetch_to_cache(self.o.video)
        reader = stack.enter_context(VideoReader(local))
        self.camera = camera_for(self.o, local, reader.info)
        plan = self._plan(reader.info)[index]
        if job.last_frame is None:  # not merged yet
            range_id = range_job_id(self.job_id, index, self.split)
            row = self.store.begin_range(self.job_id, range_id, plan, self.o.video, {"range": plan.describe()})
            if row.status != SUCCEEDED and not plan.empty:
                self._ingest_range(stack, reader, plan, range_id, row)
            if not self.store.complete_range(self.job_id, range_id) or self.o.range_only:
                summary = self._summary()
                summary["range_done"] = plan.describe()
                return summary
            self._merge()
        self._lift_merged(stack, reader.info)
        return self._finish(local, reader)

    def _ingest_range(self, stack: ExitStack, reader: VideoReader, plan: FrameRange, range_id: str,
                      row: JobRow) -> None:
        o, info = self.o, reader.info
        client, _ = self._clients(stack)
        resume_from = (row.last_frame + 1) if row.last_frame is not None else plan.warmup
        totals = self.store.range_progress(self.job_id)
        self.progress.start(total=self.store.job(self.job_id).frames_total, done=totals.frames_seen, phase=RUNNING)
        self.store.update_job(range_id, status=RUNNING, started_at=row.started_at or utc_now(),
                              width=info.width, height=info.height, fps=info.fps)
        sink = StoreSink(self, info.width, info.height, job_id=range_id, lift=False, camera=self.camera)
        frames, in_flight, batch = self._frames(client)
        run_video(video_frames(reader, stride=o.stride, max_frames=plan.stop_position, start=resume_from), frames,
                  GraphLift(client.infer, retries=o.retries), sink, self._tracker(row.tracker_state),
                  batch_frames=batch, lift_batch=o.batch, in_flight=in_flight)

    def _merge(self) -> None:
        self.progress.report(phase="merging", force=True)
        merged = self.store.merge_ranges(self.job_id)
        self.random_weights = self.store.job(self.job_id).random_weights
        if merged:
            log.info("job %s: %d ranges merged, %d tracks (%d continued across a boundary)", self.job_id,
                     merged["ranges"], merged["tracks"], merged["continued"])

    def _lift_merged(self, stack: ExitStack, info) -> None:
        """Whole tracks of the merged job through lift3d (those not lifted yet: a resumed job lifts the rest)."""
        _, lift_client = self._clients(stack)
        self.progress.report(phase="lifting", force=True)
        sink = StoreSink(self, info.width, info.height, camera=self.camera, fps=info.fps / self.o.stride)
        lift_tracks(sink.finished_tracks(set()), GraphLift(lift_client.infer, retries=self.o.retries), sink,
                    lift_batch=self.o.batch)

    def _coordinate(self, stack: ExitStack, job: JobRow) -> dict[str, Any]:
        """``--workers N``: the ranges as N processes of ``posegraph job run`` on one graph (started
        here once when it is the local one), their progress added up; then merge, lift, render."""

        o = self.o
        local = fetch_to_cache(o.video)
        reader = stack.enter_context(VideoReader(local))
        self.camera = camera_for(self.o, local, reader.info)
        plans = self._plan(reader.info)
        left = self.store.ranges_left(self.job_id) if job.last_frame is None else []
        if left:
            endpoint, lift3d_url = self._graph(stack)
            self.o.graph, self.o.lift3d = endpoint, lift3d_url
            logs = Path(tempfile.mkdtemp(prefix=f"posegraph-{self.job_id}-ranges-"))
            stack.callback(shutil.rmtree, logs, ignore_errors=True)
            workers = {}
            env = {**os.environ, **({TOKEN_ENV: self.o.token} if self.o.token else {})}
            try:
                for index in left:
                    workers[index] = processes.spawn([sys.executable, "-m", "posegraph",
                                                      *self._range_options(index).argv()],
                                                     log=logs / f"range-{index}.log", env=env)
                totals = self.store.range_progress(self.job_id)
                self.progress.start(total=self.store.job(self.job_id).frames_total, done=totals.frames_seen,
                                    phase=RUNNING)
                while any(w.poll() is None for w in workers.values()):
                    time.sleep(0.5)
                    totals = self.store.range_progress(self.job_id)
                    self.progress.report(done=totals.frames_seen, persons=totals.persons, failed=totals.frames_failed)
            finally:
                processes.stop(list(workers.values()))
            failed = {i: w.returncode for i, w in workers.items() if w.returncode != 0}
            if failed:
                index, code = min(failed.items())
                lines = (logs / f"range-{index}.log").read_text(errors="replace").strip().splitlines()
                raise PosegraphError(f"{plans[index].describe()} failed (exit {code}"
                                     f"{': ' + lines[-1] if lines else ''}); the ranges done are kept: run the same "
                                     "command again to resume")
            self._merge()
        self._lift_merged(stack, reader.info)
        return self._finish(local, reader)

    def _range_options(self, index: int) -> JobOptions:
        """What the process of range ``index`` runs: this job's options, on this job's graph (started
        once, here), for that range only."""
        return dataclasses.replace(self.o, job_id=self.job_id, workers=1, ranges=self.split, range_index=index,
                                   range_only=True, quiet=True, progress_file=None, metrics_port=None,
                                   report_posejob=None)

    def _finish(self, local: Path, reader: VideoReader) -> dict[str, Any]:
        """Outputs rebuilt from the store (whatever was interrupted before), then the job's status."""
        info = reader.info
        outputs = {}
        if self.o.render:
            self.progress.report(phase="rendering", force=True)
            outputs = render_outputs(self.store, self.job_id, self.o, local, info, random_weights=self.random_weights)
        motion, motion_notes = motion_outputs(self.store, self.job_id, self.o.output) if self.o.motion else ({}, [])
        outputs.update(motion)
        row = self.store.job(self.job_id)
        counts = self.store.counts(self.job_id)
        notes = []
        if reader.truncated:
            notes.append(f"the video ended early: decoding stopped before its {info.frame_count} frames")
        if row.frames_failed:
            notes.append(f"{row.frames_failed} frames failed in the graph (recorded in frames.error)")
        unlifted = len(self.store.unlifted_tracks(self.job_id))
        if unlifted:
            notes.append(f"{unlifted} tracks could not be lifted (recorded in tracks.error)")
        if counts.persons == 0:
            notes.append("no person was found in the video")
        notes.extend(motion_notes)
        status = PARTIAL if (row.frames_failed or unlifted) else SUCCEEDED
        self.store.update_job(self.job_id, status=status, outputs=outputs, note="; ".join(notes) or None,
                              finished_at=utc_now())
        self.progress.report(phase=status, force=True, outputs=outputs)
        return self._summary()

    def _summary(self, already_done: bool = False) -> dict[str, Any]:
        store = self.store if self.store is not None else open_store(self.o.results)
        row = store.job(self.job_id)
        summary = {k: getattr(row, k) for k in ("job_id", "status", "frames_total", "frames_done", "frames_failed",
                                                "persons", "tracks", "outputs", "note", "error")}
        summary["already_done"] = already_done
        return summary
