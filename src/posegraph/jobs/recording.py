"""``posegraph live --record``: a live session kept in a results store as a job is.

Frames and persons are committed as they come (every ``commit_every`` frames, one transaction
each, with the tracker's state), so a session cut short keeps what it had. When it stops, each
track is lifted whole, as a job lifts it (the temporal model with the whole track: better 3D than
the live view's online lifting), with its joint angles; then the job is ``succeeded``, or
``partial`` when a track could not be lifted. ``posegraph job status``, ``posegraph export`` and the
UI read it like any job; its video URI is the source (a camera as ``camera:N``).
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from ..errors import UsageError
from ..frame import FrameDocument
from ..live import STREAM_SCHEMES
from ..names import FAILED, PARTIAL, RUNNING, SUCCEEDED, utc_now
from ..tracking import Tracker
from ..videopass import random_weights_in
from .sink import batch_rows, track_document, write_lifted_track
from .store import ResultsStore

log = logging.getLogger(__name__)


def new_live_job_id() -> str:
    return time.strftime("live-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def source_uri(source: str) -> str:
    """What the job records as its video: a camera as camera:N, a stream without its password."""
    if source.isdigit():
        return f"camera:{source}"
    if source.startswith(STREAM_SCHEMES):
        parts = urlsplit(source)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        return source
    return str(Path(source).resolve())


class LiveRecording:
    def __init__(self, store: ResultsStore, job_id: str, source: str, params: dict[str, Any],
                 commit_every: int = 15) -> None:
        self.store, self.job_id, self.commit_every = store, job_id, commit_every
        store.migrate()
        if store.job(job_id) is not None:
            raise UsageError(f"job {job_id} is already in this results store: record to a new --job-id")
        store.begin_job(job_id, source_uri(source), {"source": "live", **params})
        store.update_job(job_id, status=RUNNING, started_at=utc_now())
        self._docs: list[FrameDocument] = []
        self._tracker: Tracker | None = None
        self.random_weights = False
        self.size: tuple[int, int] | None = None

    def add(self, doc: FrameDocument, tracker: Tracker) -> None:
        self._docs.append(doc)
        self._tracker = tracker
        self.size = self.size or (doc.width, doc.height)
        if len(self._docs) >= self.commit_every:
            self._commit()

    def _commit(self) -> None:
        if not self._docs:
            return
        frames, persons, extents = batch_rows((d.frame_index, d.timestamp_s, d, None) for d in self._docs)
        self.random_weights = self.random_weights or random_weights_in(self._docs)
        self.store.commit_batch(self.job_id, frames, persons, extents, last_frame=self._docs[-1].frame_index,
                                tracker_state=self._tracker.state() if self._tracker else None)
        self._docs = []

    def finish(self, lift: Callable[[list], list], *, captured: int, fps: float | None) -> dict[str, Any]:
        """Commits what is left, lifts every track whole, and closes the job; its summary."""
        self._commit()
        width, height = self.size or (None, None)
        self.store.update_job(self.job_id, width=width, height=height, fps=fps, frames_total=captured,
                              random_weights=self.random_weights)
        failed = 0
        for track_id in self.store.unlifted_tracks(self.job_id):
            rows = self.store.track_frames(self.job_id, track_id)
            try:
                (lifted,) = lift([track_document(track_id, width, height, rows)])
            except Exception as exc:  # noqa: BLE001 - recorded on the track; the others go on
                log.error("track %d could not be lifted: %s", track_id, exc)
                self.store.update_track_error(self.job_id, track_id, str(exc))
                failed += 1
                continue
            write_lifted_track(self.store, self.job_id, rows, lifted)
        note = f"{failed} tracks could not be lifted (recorded in tracks.error)" if failed else None
        status = PARTIAL if failed else SUCCEEDED
        self.store.update_job(self.job_id, status=status, note=note, finished_at=utc_now())
        row = self.store.job(self.job_id)
        return {"job_id": self.job_id, "status": status, "frames_done": row.frames_done, "tracks": row.tracks}

    def fail(self, error: str) -> None:
        self._commit()
        self.store.update_job(self.job_id, status=FAILED, error=error, finished_at=utc_now())
