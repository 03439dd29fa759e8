"""The video pass's sink for a job (videopass.Sink): what a run hands to the results store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..frame import Camera, FrameDocument, TrackDocument, TrackFrame
from ..motion.angles import joint_angles
from ..tracking import Tracker
from ..videopass import FrameResult, random_weights_in
from .rows import FrameRow, PersonRow, TrackPoint, extras_json, landmarks_json

if TYPE_CHECKING:
    from .runner import JobRunner

log = logging.getLogger(__name__)


def batch_rows(frames: Iterable[tuple[int, float | None, FrameDocument | None, str | None]]):
    """(frame rows, person rows, (track, first frame, last frame) per track) of a batch of frames,
    each given as (index, timestamp, its document or None when it failed, the error)."""
    frame_rows, persons, extents = [], [], {}
    for index, timestamp, doc, error in frames:
        if doc is None:
            frame_rows.append(FrameRow(index, timestamp, "failed", error, 0))
            continue
        frame_rows.append(FrameRow(index, timestamp, "ok", None, len(doc.persons or [])))
        for p_index, person in enumerate(doc.persons or []):
            persons.append(PersonRow(person.track_id, person.score, person.bbox, person.keypoints2d,
                                     person.keypoints3d, landmarks_json(person), person.root3d,
                                     extras_json(person), frame_index=index, person_index=p_index))
            first, last = extents.get(person.track_id, (index, index))
            extents[person.track_id] = (min(first, index), max(last, index))
    return frame_rows, persons, [(k, a, b) for k, (a, b) in extents.items()]


def track_document(track_id: int, width: int, height: int, rows: list[TrackPoint],
                   camera: Camera | None = None, fps: float | None = None) -> TrackDocument:
    """A stored track's rows as the document lift3d takes."""
    return TrackDocument(track_id=track_id, width=width, height=height, camera=camera, fps=fps, frames=[
        TrackFrame(frame_index=r.frame_index, bbox=r.bbox, score=r.score, keypoints2d=r.keypoints2d,
                   landmarks=r.landmarks)
        for r in rows])


def write_lifted_track(store, job_id: str, rows: list[TrackPoint], lifted: TrackDocument) -> None:
    """A lifted track's 3D and root path into the rows it was read from, with its joint angles and
    what a user's track stages added (its frames' fields and its own)."""
    angles = joint_angles(np.asarray([f.keypoints3d for f in lifted.frames]))
    store.write_lifted(job_id, lifted.track_id, [
        (r.frame_index, r.person_index, f.keypoints3d, f.root3d, extras_json(f)) for r, f in zip(rows, lifted.frames)],
        angles, results=extras_json(lifted))


class StoreSink:
    """The video pass's sink for a job: each batch of frames, persons, track extents and the
    tracker's state committed in one transaction (the resume point); finished tracks read back
    from the store for lifting, their 3D poses and joint angles written to it."""

    def __init__(self, runner: JobRunner, width: int, height: int, *, job_id: str | None = None,
                 lift: bool = True, camera: Camera | None = None, fps: float | None = None) -> None:
        """``job_id``: a range's row (default: the runner's job); ``lift=False``: a range's tracks
        wait for the merge, to be lifted whole."""
        self.runner, self.store, self.job_id = runner, runner.store, job_id or runner.job_id
        self.width, self.height, self.lift, self.camera, self.fps = width, height, lift, camera, fps
        self._rows: dict[int, list[TrackPoint]] = {}

    def add(self, results: list[FrameResult], tracker: Tracker) -> None:
        frames, persons, extents = batch_rows((r.frame.index, r.frame.timestamp_s, r.doc, r.error) for r in results)
        if not self.runner.random_weights and random_weights_in(r.doc for r in results if r.doc is not None):
            self.runner.random_weights = True
            self.store.update_job(self.job_id, random_weights=True)
        self.store.commit_batch(self.job_id, frames, persons, extents, last_frame=results[-1].frame.index,
                                tracker_state=tracker.state())
        if self.job_id != self.runner.job_id:  # a range: the job's progress is every range's
            totals = self.store.range_progress(self.runner.job_id)
            self.runner.progress.report(done=totals.frames_seen, persons=totals.persons, failed=totals.frames_failed)
            return
        row = self.store.job(self.job_id)
        self.runner.progress.report(done=row.frames_seen, persons=row.persons, tracks=row.tracks,
                                    failed=row.frames_failed)

    def finished_tracks(self, live: set[int]) -> list[TrackDocument]:
        if not self.lift:
            return []
        tracks = []
        for track_id in self.store.unlifted_tracks(self.job_id):
            if track_id in live:
                continue
            rows = self.store.track_frames(self.job_id, track_id)
            if not rows:
                continue
            self._rows[track_id] = rows
            tracks.append(track_document(track_id, self.width, self.height, rows, self.camera, self.fps))
        return tracks

    def lifted(self, tracks: list[TrackDocument]) -> None:
        for doc in tracks:
            write_lifted_track(self.store, self.job_id, self._rows.pop(doc.track_id), doc)

    def lift_failed(self, tracks: list[TrackDocument], error: str) -> None:
        # Recorded, and tried again after the next batch (a graph that recovers lifts it then).
        for doc in tracks:
            log.error("track %d could not be lifted: %s", doc.track_id, error)
            self.store.update_track_error(self.job_id, doc.track_id, error)
            self._rows.pop(doc.track_id, None)
