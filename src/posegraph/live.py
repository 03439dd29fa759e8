"""``posegraph live SOURCE``: poses from a camera, a network stream or a video file as it plays.

    source ─▶ reader thread (keeps the newest frame only) ─▶ detect (every N-th frame) + pose2d
          ─▶ tracker ─▶ lift3d online (each person as part of their track so far)
          ─▶ frame documents (JSON Lines) + frames/s, latency

A slow consumer drops frames rather than queueing them, so the latency stays bounded by one
frame's processing. SOURCE is a camera index (``0``), ``rtsp://…`` or ``http(s)://…`` (OpenCV's
FFmpeg reader), or a video file, played at its own frame rate as if it were a camera. The stages
run in this process, or through a graph (``--graph URL`` or ``local``), one frame a request.

3D comes from the temporal model as the frames come (OnlineLift): each person's recent 2D goes to
lift3d as a track asking for one frame, ``live.lift_delay`` frames back (0: the newest, causal).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInput
from .frame import FrameDocument, TrackDocument, TrackFrame
from .media.samples import astronaut_bgr
from .models.zoo import ModelSpec, get_model
from .videopass import DetectEvery, Frame, FrameResult, GraphFrames, InProcessFrames

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def open_capture(source: str):
    """(cv2.VideoCapture, kind): kind is camera, stream or file. BadInput in one line when it
    cannot be opened."""
    import cv2

    if source.isdigit():
        capture, kind = cv2.VideoCapture(int(source)), "camera"
    elif source.startswith(STREAM_SCHEMES):
        capture, kind = cv2.VideoCapture(source, cv2.CAP_FFMPEG), "stream"
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInput(f"{source}: not a camera index, an rtsp:// or http(s):// stream, or a video file")
        capture, kind = cv2.VideoCapture(str(path)), "file"
    if not capture.isOpened():
        capture.release()
        raise BadInput(f"cannot open {source} (OpenCV could not read it: is the {kind} there?)")
    return capture, kind


@dataclass
class Captured:
    index: int        # the frame's number in the source, counting every frame read
    at: float         # time.monotonic() when it was read
    pixels: np.ndarray


class NewestFrame:
    """Reads the source in a thread of its own and keeps only the newest frame: a frame replaced
    before it was taken is dropped. A file is read at its own frame rate, as a camera would give it."""

    def __init__(self, capture, kind: str) -> None:
        self.capture, self.kind = capture, kind
        fps = capture.get(5)  # cv2.CAP_PROP_FPS; 0 when the source does not say
        self.fps = float(fps) if fps and 0 < fps <= 1000 else None
        self.period = 1.0 / fps if kind == "file" and self.fps else 0.0
        self.captured = self.dropped = 0
        self.ended = False
        self._newest: Captured | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="live-reader", daemon=True)

    def start(self) -> "NewestFrame":
        self._thread.start()
        return self

    def _read(self) -> None:
        started, index = time.monotonic(), 0
        while not self._stop.is_set():
            if self.period:  # a file plays at its own rate
                delay = started + index * self.period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            ok, pixels = self.capture.read()
            if not ok:
                break
            with self._cond:
                if self._newest is not None:
                    self.dropped += 1
                self._newest = Captured(index, time.monotonic(), pixels)
                self.captured += 1
                self._cond.notify()
            index += 1
        with self._cond:
            self.ended = True
            self._cond.notify()

    def take(self, timeout: float) -> Captured | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None when the source has
        ended (or nothing came in time)."""
        with self._cond:
            self._cond.wait_for(lambda: self._newest is not None or self.ended, timeout=timeout)
            frame, self._newest = self._newest, None
            return frame

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.capture.release()


@dataclass
class LiveStats:
    seconds: float = 0.0
    captured: int = 0
    processed: int = 0
    dropped: int = 0
    failed: int = 0
    detected: int = 0
    source_fps: float | None = None  # what the source says it gives (None: it does not say)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return {
            "fps": round(self.processed / self.seconds, 2) if self.seconds else 0.0,
            "dropped_fraction": round(self.dropped / self.captured, 4) if self.captured else 0.0,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
            "frames_captured": self.captured, "frames_processed": self.processed,
            "frames_dropped": self.dropped, "frames_failed": self.failed,
            "frames_detected": self.detected, "seconds": round(self.seconds, 2),
        }


def context_frames(spec: ModelSpec, delay: int) -> int:
    """Frames of a track's 2D that decide the 3D of the frame ``delay`` frames before its newest:
    VideoPose3D sees 121 frames either side of a frame (243), so that frame, the 121 before it and
    the ``delay`` after; MotionBERT lifts a clip of up to 243 frames as a whole, so the last 243."""
    seq_len = int(spec.params["seq_len"])
    if spec.family == "videopose3d":
        return min(seq_len, (seq_len - 1) // 2 + delay + 1)
    return max(seq_len, delay + 1)  # MotionBERT's clip; BlazePose's 1 (each frame its own 3D)


class OnlineLift:
    """lift3d as the frames come. Each person's 2D is kept per track (``context`` frames); a frame
    is lifted once ``delay`` more have come, each of its persons as a track document of their
    recent frames asking for that one frame (``lift_frames``): the temporal model sees the past and
    ``delay`` frames of future, and its edge padding repeats the newest frame for the rest. One
    request a frame for all its persons; ``lift`` is lift3d in this process or a graph."""

    def __init__(self, lift: Callable[[list], list], spec: ModelSpec, delay: int = 0) -> None:
        self.lift, self.delay = lift, delay
        self.context = context_frames(spec, delay)
        self.tracks: dict[int, deque[TrackFrame]] = {}
        self.pending: deque[FrameDocument] = deque()

    def push(self, doc: FrameDocument) -> list[FrameDocument]:
        """Takes a tracked frame; returns the frames whose 3D is ready (the one ``delay`` back)."""
        for person in doc.persons or []:
            if person.track_id is not None and person.keypoints2d is not None:
                self.tracks.setdefault(person.track_id, deque(maxlen=self.context)).append(TrackFrame(
                    frame_index=doc.frame_index, bbox=person.bbox, score=person.score,
                    keypoints2d=person.keypoints2d, landmarks=person.landmarks))
        # a track not seen for a whole context decides nothing any more
        for track_id in [t for t, h in self.tracks.items() if doc.frame_index - h[-1].frame_index > self.context]:
            del self.tracks[track_id]
        self.pending.append(doc)
        ready = []
        while len(self.pending) > self.delay:
            ready.append(self._lift(self.pending.popleft()))
        return ready

    def flush(self) -> list[FrameDocument]:
        """The frames still waiting for their look-ahead, when the source stops."""
        ready = [self._lift(doc) for doc in self.pending]
        self.pending.clear()
        return ready

    def _lift(self, doc: FrameDocument) -> FrameDocument:
        asks = []
        for person in doc.persons or []:
            history = self.tracks.get(person.track_id) if person.track_id is not None else None
            if history is None or person.keypoints2d is None:
                continue
            frames = [f for f in history if f.frame_index <= doc.frame_index + self.delay]
            asks.append((person, TrackDocument(track_id=person.track_id, width=doc.width, height=doc.height,
                                               frames=frames, lift_frames=[doc.frame_index])))
        if not asks:
            return doc
        lifted = self.lift([track for _, track in asks])
        for (person, _), track in zip(asks, lifted):
            (frame,) = [f for f in track.frames if f.frame_index == doc.frame_index]
            person.keypoints3d, person.root3d = frame.keypoints3d, frame.root3d
        if "lift3d" in lifted[0].stages:
            doc.stages["lift3d"] = lifted[0].stages["lift3d"]
        return doc


def warm_up(inner, lift: Callable[[list], list] | None = None) -> None:
    """One frame with a person (the bundled photo) through every network before the source opens:
    a network's first call allocates (onnxruntime) or loads (a graph's servers), and that second
    would otherwise be the first frame's latency."""
    (result,) = inner([Frame(0, 0.0, astronaut_bgr())], [None])
    doc = result.doc
    if lift is not None and doc is not None and doc.persons:
        person = doc.persons[0]
        frame = TrackFrame(frame_index=0, bbox=person.bbox, keypoints2d=person.keypoints2d, landmarks=person.landmarks)
        lift([TrackDocument(track_id=0, width=doc.width, height=doc.height, frames=[frame], lift_frames=[0])])


def in_process_step(pipeline, every: int) -> tuple[Callable[[Frame], FrameResult], OnlineLift]:
    """(detect + pose2d for one frame, online lift3d), with the stages in this process."""
    profile = pipeline.profile
    inner, lift = InProcessFrames(pipeline.stages), pipeline.stages["lift3d"].run
    warm_up(inner, lift)
    detect = DetectEvery.for_settings(inner, every, profile.tracking)
    return detect.next, OnlineLift(lift, pipeline.stages["lift3d"].spec, profile.live.lift_delay)


def graph_step(infer: Callable[[list], list], profile, image_format: str = "jpeg",
               ) -> tuple[Callable[[Frame], FrameResult], OnlineLift]:
    """The same through a graph: frames end after pose2d (per_track_3d), tracks go to lift3d."""
    inner = GraphFrames(infer, retries=0, image_format=image_format, per_track_3d=True)
    warm_up(inner, infer)
    detect = DetectEvery.for_settings(inner, profile.tracking.detect_every, profile.tracking)
    return detect.next, OnlineLift(infer, get_model(profile.lift3d.model), profile.live.lift_delay)


# Long on purpose: the live loop, start to stop, in the order a reader follows a frame.
def run_live(source: str, step: Callable[[Frame], FrameResult], lift: OnlineLift, tracker, *,
             seconds: float | None = None, out: Path | None = None,
             on_doc: Callable[[FrameDocument], None] | None = None) -> LiveStats:
    """Frames from ``source`` through ``step``, the tracker and ``lift`` until the source ends,
    ``seconds`` pass or Ctrl-C; each document to ``out``/frames.jsonl and ``on_doc``. A frame's
    latency runs from its capture to its document, its look-ahead wait included."""
    capture, kind = open_capture(source)
    reader = NewestFrame(capture, kind).start()
    stats = LiveStats()
    captured_at: dict[int, float] = {}
    with ExitStack() as stack:
        stack.callback(reader.stop)
        sink = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(out / "frames.jsonl", "w"))

        def emit(docs: list[FrameDocument]) -> None:
            for doc in docs:
                stats.latencies_ms.append((time.monotonic() - captured_at.pop(doc.frame_index)) * 1000)
                stats.processed += 1
                stats.detected += "detect" in doc.stages
                if sink is not None:
                    sink.write(json.dumps(doc.to_json()) + "\n")
                    sink.flush()
                if on_doc is not None:
                    on_doc(doc)

        started = time.monotonic()
        try:
            while seconds is None or time.monotonic() - started < seconds:
                got = reader.take(timeout=0.5)
                if got is None:
                    if reader.ended:
                        break
                    continue
                result = step(Frame(got.index, round(got.at - started, 4), got.pixels))
                if result.doc is None:
                    stats.failed += 1
                    continue
                doc = result.doc
                doc.width, doc.height = int(got.pixels.shape[1]), int(got.pixels.shape[0])
                tracker.update(doc)
                captured_at[doc.frame_index] = got.at
                emit(lift.push(doc))
            emit(lift.flush())
        except KeyboardInterrupt:
            pass
        stats.seconds = time.monotonic() - started
    stats.captured, stats.dropped = reader.captured, reader.dropped
    stats.source_fps = reader.fps
    return stats
