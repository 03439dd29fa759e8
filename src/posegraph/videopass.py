"""One pass over a video, whoever runs it: ``posegraph run`` (in-process stages, documents kept
in memory), ``posegraph job run`` (a graph endpoint, a results store; the UI starts those) and
the benchmarks.

    frames ─▶ batches ─▶ detect + pose2d ─▶ tracker ─▶ sink (memory, or the results store)
                                                        └─▶ finished tracks ─▶ lift ─▶ sink

What varies is given, not re-written: where frames come from (``video_frames``), what runs
detect + pose2d on a batch (``InProcessFrames`` or ``GraphFrames``), what lifts tracks
(``InProcessLift`` or ``GraphLift``) and where documents go (a ``Sink``). A track is lifted as
soon as the tracker has let it go, so memory stays flat and a job's store holds 3D poses while
the video is still being read; a track's content is final then, so when it is lifted does not
change its result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from .client import GraphError
from .errors import PosegraphError
from .frame import FrameDocument, Person, StageRecord, TrackDocument
from .media.imageio import image_ref
from .tracking import Tracker, apply_tracks, box_from_keypoints, tracks_from_frames

log = logging.getLogger(__name__)


@dataclass
class Frame:
    index: int
    timestamp_s: float
    pixels: np.ndarray


@dataclass
class FrameResult:
    """One frame after detect + pose2d: its document, or why it failed (the frame is recorded
    as failed and the video goes on)."""

    frame: Frame
    doc: FrameDocument | None
    error: str | None = None


class StepFailed(PosegraphError):
    """A batch could not be computed (after retries): the pass records it and goes on."""


def video_frames(reader, *, stride: int = 1, max_frames: int | None = None, start: int = 0) -> Iterator[Frame]:
    """Every ``stride``-th decoded frame from ``start``, with its time stamp in the video."""
    fps = reader.info.fps
    for index, pixels in reader.frames(stride=stride, max_frames=max_frames, start=start):
        yield Frame(index, round(index / fps, 4), pixels)


# -- detect + pose2d ------------------------------------------------------------------------------------
class DetectAndPose(Protocol):
    def __call__(self, frames: list[Frame], persons: list | None = None) -> list[FrameResult]:
        """``persons``: per frame, the persons already known, or None to detect them."""


class InProcessFrames:
    """The detect and pose2d stages in this process, on the decoded pixels."""

    def __init__(self, stages: dict) -> None:
        self.detect, self.pose2d = stages["detect"], stages["pose2d"]

    def __call__(self, frames: list[Frame], persons: list | None = None) -> list[FrameResult]:
        """``persons``: per frame, the persons already known (their boxes), or None to detect
        them; detect passes a document that has persons through."""
        known = persons or [None] * len(frames)
        docs = [FrameDocument.from_pixels(f.pixels, frame_index=f.index, timestamp_s=f.timestamp_s, persons=p)
                for f, p in zip(frames, known)]
        docs = self.pose2d.run(self.detect.run(docs))
        for doc in docs:
            doc._pixels = None  # the frame is not kept with its document: memory stays flat
        return [FrameResult(f, doc) for f, doc in zip(frames, docs)]


class DetectEvery:
    """detect + pose2d with the detector on every ``every``-th frame only: between, each person's
    box comes from their keypoints in the frame before (tracking.box_from_keypoints), as rtmlib's
    and MMDeploy's PoseTracker do. ``inner`` is what runs detect + pose2d (InProcessFrames, or
    GraphFrames through a graph): a frame sent with persons already on it passes the detect stage
    untouched, in this process or behind either router.

    Each call detects on the frames at offsets 0, N, 2N, … of its batch, and also on the frame after
    anyone was lost (keypoints scoring under ``redetect_below``), after a frame with nobody in it,
    and after a frame that failed. So the frames from one scheduled detection to the next form a
    chain that depends on nothing before it: the chains of a batch go in lockstep (their k-th
    frames in one call of ``inner``, so pose2d still gets a batch), and batches depend on nothing
    but their own frames, so the video pass can keep two in flight (one's detection beside the
    other's pose estimation). Give it whole chains (batch_for): then the detector runs on every
    N-th frame of the stream. A frame whose boxes were carried has no ``stages.detect`` record,
    and each person keeps the score the detector gave them. Measured on this 2-core machine, one
    person (bench/detect_every.py, docs/live.md): one chain at a time gave 1.32x the frames/s of
    N = 1 at N = 5; chains in lockstep 1.48x; and two batches in flight 1.62x."""

    def __init__(self, inner: "DetectAndPose", every: int, *, redetect_below: float = 0.3,
                 box_expand: float = 1.25) -> None:
        if every < 1:
            raise PosegraphError(f"detect every {every} frames: N must be ≥ 1")
        self.inner, self.every, self.redetect_below, self.box_expand = inner, every, redetect_below, box_expand
        self.detected = 0  # frames the detector ran on (what a benchmark and a test count)
        self._lock = threading.Lock()
        self._position, self._last = 0, None  # a stream's (next): frames seen, the last one's persons

    @classmethod
    def for_settings(cls, inner: "DetectAndPose", every: int, tracking) -> "DetectEvery":
        """With a profile's ``tracking`` thresholds (config.TrackingSettings)."""
        return cls(inner, every, redetect_below=tracking.redetect_below, box_expand=tracking.box_expand)

    def _carry(self, persons: list[Person] | None, frame: Frame) -> list[Person] | None:
        """Persons for ``frame`` from the frame before's, or None: the detector must run."""
        if not persons:
            return None
        width, height = int(frame.pixels.shape[1]), int(frame.pixels.shape[0])
        carried = []
        for person in persons:
            box = None if person.keypoints2d is None else box_from_keypoints(
                person.keypoints2d, width, height, min_score=self.redetect_below, expand=self.box_expand)
            if box is None:
                return None  # someone is lost: look again
            carried.append(Person(bbox=box, score=person.score))
        return carried

    def __call__(self, frames: list[Frame]) -> list[FrameResult]:
        chains = [frames[start:start + self.every] for start in range(0, len(frames), self.every)]
        last: list[list[Person] | None] = [None] * len(chains)  # each chain's persons in its latest frame
        done: list[list[FrameResult]] = [[] for _ in chains]
        for step in range(max(map(len, chains), default=0)):
            going = [c for c, chain in enumerate(chains) if step < len(chain)]
            results = self.inner([chains[c][step] for c in going],
                                 [self._carry(last[c], chains[c][step]) for c in going])
            for c, result in zip(going, results):
                done[c].append(result)
                last[c] = None if result.doc is None else list(result.doc.persons or [])
        ordered = [result for chain in done for result in chain]
        with self._lock:
            self.detected += sum(1 for r in ordered if r.doc is not None and "detect" in r.doc.stages)
        return ordered


    def next(self, frame: Frame) -> FrameResult:
        """One frame of a stream, as it comes (posegraph live): the same rules, the schedule
        counting the frames given here, one call of ``inner`` a frame."""
        carried = self._carry(self._last, frame) if self._position % self.every else None
        (result,) = self.inner([frame], [carried])
        self._position += 1
        self._last = None if result.doc is None else list(result.doc.persons or [])
        if result.doc is not None and "detect" in result.doc.stages:
            with self._lock:
                self.detected += 1
        return result


# Chains a DetectEvery batch holds, so pose2d gets batches of this many frames (one person: 35 ms a
# frame at batch 1, 30 ms at batch 8 on this 2-core machine). 4 was not tuned further; more chains
# also mean a longer wait for a batch's first result.
CHAINS_PER_BATCH = 4


def batch_for(every: int, batch_frames: int) -> int:
    """Frames per batch for DetectEvery: CHAINS_PER_BATCH whole chains, or ``batch_frames`` for N = 1."""
    return batch_frames if every == 1 else max(batch_frames, CHAINS_PER_BATCH * every)


def in_process_frames(stages: dict, tracking) -> "InProcessFrames | DetectEvery":
    """What runs detect + pose2d here for a profile's ``tracking`` settings: every frame detected
    in batches (N = 1: exactly the path before detect-every existed), or DetectEvery."""
    return detect_every(InProcessFrames(stages), tracking.detect_every, tracking)


def detect_every(inner: "DetectAndPose", every: int, tracking) -> "DetectAndPose":
    """``inner`` as it is for N = 1 (every frame detected, in batches: the path before N existed),
    else DetectEvery over it with the profile's ``tracking`` thresholds."""
    if every == 1:
        return inner
    return DetectEvery.for_settings(inner, every, tracking)


def with_retries(call: Callable[[list], list], retries: int) -> Callable[[list], list]:
    """``call`` retried with backoff on network errors and 5xx; a 4xx is an answer, not retried.
    The first wait is $POSEGRAPH_RETRY_BASE_S (1 s), doubled each time."""

    def retrying(docs: list) -> list:
        delay = float(os.environ.get("POSEGRAPH_RETRY_BASE_S", "1"))
        for attempt in range(retries + 1):
            try:
                return call(docs)
            except GraphError as exc:
                if (exc.status is not None and exc.status < 500) or attempt == retries:
                    raise StepFailed(str(exc)) from exc
                log.warning("graph call failed (%s); retrying in %.0fs", exc, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    return retrying


class GraphFrames:
    """Frames through a graph endpoint (detect → pose2d → lift3d per frame), sent as encoded
    images: JPEG by default (a tenth of PNG's bytes), PNG when the pixels must arrive unchanged.
    A batch that keeps failing is retried frame by frame, so one bad frame costs only itself."""

    def __init__(self, infer: Callable[[list], list], *, retries: int = 3, image_format: str = "jpeg",
                 per_track_3d: bool = True) -> None:
        if image_format not in {"jpeg", "png"}:
            raise PosegraphError(f"frame format {image_format!r}: jpeg or png")
        self.infer = with_retries(infer, retries)
        self.image_format = image_format
        self.per_track_3d = per_track_3d  # False: the graph lifts each frame as it is

    def _document(self, frame: Frame, persons: list | None) -> FrameDocument:
        # per_track_3d: the graph ends after pose2d; tracks are lifted whole (GraphLift). persons:
        # boxes already known (detect passes the document through).
        return FrameDocument(image=image_ref(frame.pixels, self.image_format, quality=90),
                             width=int(frame.pixels.shape[1]), height=int(frame.pixels.shape[0]),
                             frame_index=frame.index, timestamp_s=frame.timestamp_s,
                             per_track_3d=True if self.per_track_3d else None,
                             persons=persons)

    def __call__(self, frames: list[Frame], persons: list | None = None) -> list[FrameResult]:
        known = persons or [None] * len(frames)
        try:
            docs = self.infer([self._document(f, p) for f, p in zip(frames, known)])
        except StepFailed as exc:
            if len(frames) == 1:
                return [FrameResult(frames[0], None, str(exc))]
            log.warning("a batch of %d frames failed (%s); trying them one by one", len(frames), exc)
            return [result for f, p in zip(frames, known) for result in self([f], [p])]
        for doc in docs:
            doc.image = None  # pose2d dropped it; a graph that does not is not kept waiting on it here
        return [FrameResult(f, doc) for f, doc in zip(frames, docs)]


# -- lifting --------------------------------------------------------------------------------------------
class Lift(Protocol):
    def __call__(self, tracks: list[TrackDocument]) -> list[TrackDocument]: ...


class InProcessLift:
    def __init__(self, stage, then: Callable[[list], list] | None = None) -> None:
        """``then``: what runs on the lifted tracks next (a user's track stages)."""
        self.stage, self.then = stage, then

    def __call__(self, tracks: list[TrackDocument]) -> list[TrackDocument]:
        lifted = self.stage.run(tracks)
        return self.then(lifted) if self.then else lifted


class GraphLift:
    """Track documents through a lift3d endpoint (or a graph, which passes them on to lift3d)."""

    def __init__(self, infer: Callable[[list], list], *, retries: int = 3) -> None:
        self.infer = with_retries(infer, retries)

    def __call__(self, tracks: list[TrackDocument]) -> list[TrackDocument]:
        return self.infer(tracks)


# -- sinks ----------------------------------------------------------------------------------------------
class Sink(Protocol):
    def add(self, results: list[FrameResult], tracker: Tracker) -> None:
        """A batch of frames, tracked."""

    def finished_tracks(self, live: set[int]) -> list[TrackDocument]:
        """Tracks not lifted yet, except the ``live`` ones (the tracker may still extend them)."""

    def lifted(self, tracks: list[TrackDocument]) -> None: ...

    def lift_failed(self, tracks: list[TrackDocument], error: str) -> None: ...


def random_weights_in(docs: Iterable[FrameDocument | TrackDocument]) -> bool:
    return any(record.random_weights for doc in docs for record in (doc.stages or {}).values())


class MemorySink:
    """Frame documents kept in memory, in order (``posegraph run``, tests, benchmarks);
    ``on_frame(doc, pixels)`` sees each frame once, e.g. to draw the overlay video."""

    def __init__(self, on_frame: Callable[[FrameDocument, np.ndarray], None] | None = None) -> None:
        self.docs: list[FrameDocument] = []
        self.failed: list[FrameResult] = []
        self.tracks: list[dict] = []  # each lifted track's own fields (a user's track stages'), by id
        self.on_frame = on_frame
        self._lifted: set[int] = set()
        self.random_weights = False

    def add(self, results: list[FrameResult], tracker: Tracker) -> None:
        for result in results:
            if result.doc is None:
                self.failed.append(result)
                continue
            self.random_weights = self.random_weights or random_weights_in([result.doc])
            if self.on_frame:
                self.on_frame(result.doc, result.frame.pixels)
            self.docs.append(result.doc)

    def finished_tracks(self, live: set[int]) -> list[TrackDocument]:
        done = {p.track_id for d in self.docs for p in d.persons or []} - live - self._lifted
        tracks = [t for t in tracks_from_frames(self.docs) if t.track_id in done]
        self._lifted.update(t.track_id for t in tracks)  # failed or lifted, a track is tried once here
        return tracks

    def lifted(self, tracks: list[TrackDocument]) -> None:
        apply_tracks(self.docs, tracks)
        self.tracks += [{"track_id": t.track_id, **t.model_extra,
                         "stages": {k: v.model_dump(exclude_none=True) for k, v in t.stages.items()}}
                        for t in tracks if t.model_extra]

    def lift_failed(self, tracks: list[TrackDocument], error: str) -> None:
        raise StepFailed(f"tracks {[t.track_id for t in tracks]} could not be lifted: {error}")

    def stamp_lift(self, model: str, random_weights: bool, ms: float) -> None:
        """Every frame's lift3d record: the model and the time all tracks took."""
        record = StageRecord(model=model, random_weights=random_weights, ms=round(ms, 2))
        for doc in self.docs:
            doc.stages["lift3d"] = record


# -- the pass -------------------------------------------------------------------------------------------
def lift_tracks(tracks: Sequence[TrackDocument], lift: Lift, sink: Sink, *, lift_batch: int = 8) -> float:
    """``tracks`` through ``lift``, ``lift_batch`` a request, each result (or failure) to ``sink``.
    Returns the seconds spent lifting."""
    spent = 0.0
    for start in range(0, len(tracks), lift_batch):
        chunk = list(tracks[start : start + lift_batch])
        started = time.perf_counter()
        try:
            done = lift(chunk)
        except StepFailed as exc:
            sink.lift_failed(chunk, str(exc))
            continue
        finally:
            spent += time.perf_counter() - started
        sink.lifted(done)
    return spent


# Long on purpose: the one video loop (mmpose's inferencers' shape): its order is its contract.
def run_video(frames: Iterable[Frame], detect_and_pose: DetectAndPose, lift: Lift, sink: Sink, tracker: Tracker,
              *, batch_frames: int = 8, lift_batch: int = 8, in_flight: int = 1,
              progress: Callable[[int], None] | None = None) -> float:
    """Every frame through ``detect_and_pose`` (``batch_frames`` at a time) and the tracker into
    ``sink``; each track lifted once the tracker has let it go (``lift_batch`` tracks a request),
    the rest when the video ends. Returns the seconds spent lifting.

    ``in_flight`` > 1 keeps that many batches in ``detect_and_pose`` at once (threads: a graph
    request waits on the network, onnxruntime releases the GIL), so decoding, encoding and lifting
    overlap with inference. Results are still taken in frame order, so tracking, the sink and
    lifting see exactly what one batch at a time gives."""
    if in_flight < 1:
        raise PosegraphError("in_flight must be ≥ 1")
    lift_s = 0.0

    def lift_finished(live: set[int]) -> None:
        nonlocal lift_s
        lift_s += lift_tracks(sink.finished_tracks(live), lift, sink, lift_batch=lift_batch)

    def take(results: list[FrameResult]) -> None:
        for result in results:
            if result.doc is not None:
                result.doc.width = result.doc.width or int(result.frame.pixels.shape[1])
                result.doc.height = result.doc.height or int(result.frame.pixels.shape[0])
                tracker.update(result.doc)
        sink.add(results, tracker)
        if progress:
            progress(len(results))
        lift_finished(tracker.live_ids())

    pending: list[Frame] = []
    if in_flight == 1:
        for frame in frames:
            pending.append(frame)
            if len(pending) >= batch_frames:
                take(detect_and_pose(pending))
                pending = []
        if pending:
            take(detect_and_pose(pending))
    else:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="videopass") as pool:
            queue: deque = deque()
            try:
                for frame in frames:
                    pending.append(frame)
                    if len(pending) >= batch_frames:
                        queue.append(pool.submit(detect_and_pose, pending))
                        pending = []
                        if len(queue) >= in_flight:
                            take(queue.popleft().result())  # the oldest first: frame order is kept
                if pending:
                    queue.append(pool.submit(detect_and_pose, pending))
                while queue:
                    take(queue.popleft().result())
            finally:
                for future in queue:  # interrupted: what is not taken is not committed, and resumes
                    future.cancel()
    lift_finished(set())  # the video has ended: every track is finished
    return lift_s
