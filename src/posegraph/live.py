"""``posegraph live SOURCE``: poses from a camera, a network stream or a video file as it plays.

    source ─▶ reader thread (keeps the newest frame only) ─▶ detect (every N-th frame) + pose2d
          ─▶ tracker ─▶ lift3d, frame by frame ─▶ frame documents (JSON Lines) + frames/s, latency

A slow consumer drops frames rather than queueing them, so the latency stays bounded by one
frame's processing. SOURCE is a camera index (``0``), ``rtsp://…`` or ``http(s)://…`` (OpenCV's
FFmpeg reader), or a video file, played at its own frame rate as if it were a camera. The stages
run in this process, or through a graph (``--graph URL`` or ``local``), one frame a request.

3D is lifted frame by frame, each person alone (lift3d's frame path: no look-ahead, no lag); the
temporal models' whole-track lifting stays with ``posegraph run`` and jobs.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInput
from .frame import FrameDocument
from .media.samples import astronaut_bgr
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
        fps = capture.get(5)  # cv2.CAP_PROP_FPS
        self.period = 1.0 / fps if kind == "file" and fps and fps > 0 else 0.0
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


def warm_up(inner, lift: Callable[[list], list] | None = None) -> None:
    """One frame with a person (the bundled photo) through every network before the source opens:
    a network's first call allocates (onnxruntime) or loads (a graph's servers), and that second
    would otherwise be the first frame's latency."""
    (result,) = inner([Frame(0, 0.0, astronaut_bgr())], [None])
    if lift is not None and result.doc is not None:
        lift([result.doc])


def in_process_step(pipeline, every: int) -> tuple[Callable[[Frame], FrameResult], Callable[[list], list]]:
    """(detect + pose2d for one frame, lift3d for documents), with the stages in this process."""
    tracking = pipeline.profile.tracking
    inner, lift = InProcessFrames(pipeline.stages), pipeline.stages["lift3d"].run
    warm_up(inner, lift)
    detect = DetectEvery.for_settings(inner, every, tracking)
    return detect.next, lift


def graph_step(infer: Callable[[list], list], every: int, tracking,
               image_format: str = "jpeg") -> Callable[[Frame], FrameResult]:
    """detect + pose2d + lift3d for one frame through a graph (it lifts each frame as it is)."""
    inner = GraphFrames(infer, retries=0, image_format=image_format, per_track_3d=False)
    warm_up(inner)
    detect = DetectEvery.for_settings(inner, every, tracking)
    return detect.next


# Long on purpose: the live loop, start to stop, in the order a reader follows a frame.
def run_live(source: str, step: Callable[[Frame], FrameResult], lift: Callable[[list], list] | None, tracker, *,
             seconds: float | None = None, out: Path | None = None,
             on_doc: Callable[[FrameDocument], None] | None = None) -> LiveStats:
    """Frames from ``source`` through ``step`` (and ``lift`` when the step does not lift) until the
    source ends, ``seconds`` pass or Ctrl-C; each document to ``out``/frames.jsonl and ``on_doc``."""
    capture, kind = open_capture(source)
    reader = NewestFrame(capture, kind).start()
    stats = LiveStats()
    with ExitStack() as stack:
        stack.callback(reader.stop)
        sink = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(open(out / "frames.jsonl", "w"))
        started = time.monotonic()
        try:
            while seconds is None or time.monotonic() - started < seconds:
                got = reader.take(timeout=0.5)
                if got is None:
                    if reader.ended:
                        break
                    continue
                frame = Frame(got.index, round(got.at - started, 4), got.pixels)
                result = step(frame)
                if result.doc is None:
                    stats.failed += 1
                    continue
                doc = result.doc
                doc.width, doc.height = int(got.pixels.shape[1]), int(got.pixels.shape[0])
                tracker.update(doc)
                if lift is not None:
                    doc = lift([doc])[0]
                stats.latencies_ms.append((time.monotonic() - got.at) * 1000)
                stats.processed += 1
                stats.detected += "detect" in doc.stages
                if sink is not None:
                    sink.write(json.dumps(doc.to_json()) + "\n")
                    sink.flush()
                if on_doc is not None:
                    on_doc(doc)
        except KeyboardInterrupt:
            pass
        stats.seconds = time.monotonic() - started
    stats.captured, stats.dropped = reader.captured, reader.dropped
    return stats
