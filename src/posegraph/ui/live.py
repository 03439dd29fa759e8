"""The UI's live view: the browser's camera over a WebSocket, poses back frame by frame.

    page: getUserMedia → canvas → JPEG ──ws──▶ LiveSession: detect (every N-th frame) + pose2d
          through the graph, tracker, online lift3d (posegraph.live) ──ws──▶ {"ready": [...]}
          → the 2D skeleton over the video, the 3D view, frames/s and latency

One frame in flight per socket: the page sends the next frame when the answer to the last one
has come, so a slow graph gives fewer frames a second, never a queue. Each answer lists the frames
whose 3D is ready (the one ``live.lift_delay`` frames back; none while the look-ahead fills).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..client import GraphClient, GraphError
from ..config import Profile
from ..errors import BadInput
from ..frame import FrameDocument
from ..live import OnlineLift
from ..media.imageio import decode_image
from ..models.zoo import get_model
from ..tracking import Tracker
from ..videopass import DetectEvery, Frame, GraphFrames

log = logging.getLogger(__name__)

# A camera frame as the page sends it is a 640×480 JPEG of 30-80 kB; a frame of 2 MB is no camera.
MAX_FRAME_BYTES = 2_000_000
# Each live socket keeps the graph busy on its own; more than this at once is refused, saying so.
MAX_SESSIONS = 4
# WebSocket close codes (RFC 6455 §7.4.1): a policy violation, and "try again later".
POLICY, BUSY = 1008, 1013


def compact(doc: FrameDocument) -> dict[str, Any]:
    """What the page draws of a frame (the job view's compact form, plus the timings)."""
    stages = doc.stages or {}
    return {"i": doc.frame_index, "w": doc.width, "h": doc.height, "detected": "detect" in stages,
            "ms": {name: record.ms for name, record in stages.items()},
            "random_weights": any(r.random_weights for r in stages.values()),
            "p": [{"track": p.track_id, "box": p.bbox, "score": p.score, "k2": p.keypoints2d, "k3": p.keypoints3d}
                  for p in doc.persons or []]}


class LiveSession:
    """One socket's frames through the graph, in order (its own tracker and tracks)."""

    def __init__(self, graph: str, token: str | None, profile: Profile, detect_every: int) -> None:
        self.client = GraphClient(graph, token=token)
        frames = GraphFrames(self.client.infer, retries=0, per_track_3d=True)
        self.detect = DetectEvery.for_settings(frames, detect_every, profile.tracking)
        self.tracker = Tracker.for_settings(profile.tracking)
        self.lift = OnlineLift(self.client.infer, get_model(profile.lift3d.model), profile.live.lift_delay)
        self.index, self.started = 0, time.monotonic()

    def frame(self, data: bytes) -> dict[str, Any]:
        """The answer to one frame. Frames are numbered as they come, failed ones too, as the page
        numbers what it sends."""
        index = self.index
        self.index += 1
        try:
            pixels = decode_image(data, what=f"frame {index}")
        except BadInput as exc:
            return {"received": index, "error": str(exc), "ready": []}
        result = self.detect.next(Frame(index, round(time.monotonic() - self.started, 4), pixels))
        if result.doc is None:
            return {"received": index, "error": f"frame {index}: {result.error}", "ready": []}
        doc = result.doc
        doc.width, doc.height = int(pixels.shape[1]), int(pixels.shape[0])
        self.tracker.update(doc)
        return {"received": index, "ready": [compact(d) for d in self.lift.push(doc)]}

    def close(self) -> None:
        self.client.close()


class Sessions:
    """How many live sockets are open (MAX_SESSIONS at most)."""

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit, self.open = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.open >= self.limit:
                return False
            self.open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


def _detect_every(websocket: WebSocket) -> int | str:
    """?detect_every=N (1-100; default 5: the live view's point is keeping up), or why not."""
    raw = websocket.query_params.get("detect_every", "5")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        return f"detect_every must be a whole number between 1 and 100, not {raw!r}"
    return int(raw)


async def live_socket(websocket: WebSocket) -> None:
    from starlette.concurrency import run_in_threadpool

    ui = websocket.app.state.ui
    await websocket.accept()
    every = _detect_every(websocket)
    if isinstance(every, str):
        await websocket.send_json({"error": every})
        await websocket.close(POLICY, every[:120])
        return
    if not ui.live_sessions.take():
        message = f"{ui.live_sessions.limit} live views are open already: close one, or try again later"
        await websocket.send_json({"error": message})
        await websocket.close(BUSY, message[:120])
        return
    session = None
    try:
        session = await run_in_threadpool(LiveSession, ui.graph, ui.graph_token, ui.profile, every)
        await websocket.send_json({"ready": [], "detect_every": every, "lift_delay": ui.profile.live.lift_delay})
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is None:  # not a frame: not numbered
                reply = {"error": "send each frame as one binary message of JPEG or PNG bytes", "ready": []}
            elif len(data) > MAX_FRAME_BYTES:
                session.index += 1
                reply = {"received": session.index - 1, "error": f"a frame of {len(data) / 1e6:.1f} MB; the limit "
                                                                  f"is {MAX_FRAME_BYTES / 1e6:.0f} MB", "ready": []}
            else:
                try:
                    reply = await run_in_threadpool(session.frame, data)
                except GraphError as exc:
                    reply = {"error": f"the graph answered: {exc}", "ready": []}
            await websocket.send_json(reply)
    except WebSocketDisconnect:
        pass
    finally:
        ui.live_sessions.give_back()
        if session is not None:
            await run_in_threadpool(session.close)
