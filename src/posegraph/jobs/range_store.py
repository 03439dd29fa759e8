"""The rows of a job split into ranges (posegraph.jobs.ranges): each range a job row of its own,
hidden from lists, until the last one done merges them all into the parent in one transaction."""

from __future__ import annotations

from typing import Any

from ..errors import PosegraphError, UsageError
from ..names import utc_now
from .ranges import Stitcher
from .rows import JobRow, RangeProgress
from .schema import dump, load


class RangeStore:
    """Part of ResultsStore (jobs.store), which gives it the connection (``transaction``, ``_exec``,
    ``_sql``) and the job rows (``_job``, ``_set_counts``)."""

    def begin_range(self, parent_id: str, range_id: str, plan, video_uri: str, params: dict[str, Any]
                    ) -> JobRow:
        """The range's own job row (created, or returned to resume): its resume point and tracker."""
        with self.transaction() as cur:
            row = self._job(cur, range_id)
            if row is None:
                now = utc_now()
                self._exec(cur, "INSERT INTO jobs (job_id, video_uri, status, params, parent_job_id, range_index, "
                                "range_start, range_stop, created_at, updated_at) "
                                "VALUES (?, ?, 'queued', {j}, ?, ?, ?, ?, ?, ?)",
                           (range_id, video_uri, dump(params), parent_id, plan.index, plan.start, plan.stop, now, now))
                row = self._job(cur, range_id)
            elif (row.parent_job_id, row.range_start, row.range_stop) != (parent_id, plan.start, plan.stop):
                raise UsageError(f"{range_id} exists with frames {row.range_start}–{row.range_stop}, "
                                 f"not {plan.start}–{plan.stop}: resume with the options it was started with")
            return row

    def complete_range(self, parent_id: str, range_id: str) -> bool:
        """Mark the range ingested; True when it was the last of the parent's ranges to be. The
        parent's row is locked first, so of ranges finishing at once exactly one sees all done."""
        with self.transaction() as cur:
            parent = self._job(cur, parent_id, lock=True)
            self._exec(cur, "UPDATE jobs SET status = 'succeeded', finished_at = ?, updated_at = ? WHERE job_id = ?",
                       (utc_now(), utc_now(), range_id))
            done = self._exec(cur, "SELECT COUNT(*) FROM jobs WHERE parent_job_id = ? AND status = 'succeeded'",
                              (parent_id,)).fetchone()[0]
            return done >= (parent.ranges or 1)

    def ranges_left(self, parent_id: str) -> list[int]:
        """Range indices (0-based) not ingested yet: never started, or interrupted."""
        with self.transaction() as cur:
            parent = self._job(cur, parent_id)
            done = {r[0] for r in self._exec(cur, "SELECT range_index FROM jobs WHERE parent_job_id = ? AND "
                                                  "status = 'succeeded'", (parent_id,)).fetchall()}
        return [] if parent is None or not parent.ranges else [i for i in range(parent.ranges) if i not in done]

    def range_progress(self, parent_id: str) -> RangeProgress:
        """The parent's counts while its ranges run: owned frames only (warmup frames are counted
        by the range that owns them)."""
        with self.transaction() as cur:
            def one(where: str) -> int:
                return self._exec(cur, "SELECT COUNT(*) FROM jobs j JOIN " + where + " x ON x.job_id = j.job_id "
                                       "WHERE j.parent_job_id = ? AND x.frame_index >= j.range_start",
                                  (parent_id,)).fetchone()[0]

            return RangeProgress(frames_done=one("(SELECT * FROM frames WHERE status = 'ok')"),
                                 frames_failed=one("(SELECT * FROM frames WHERE status = 'failed')"),
                                 persons=one("persons"))

    # Long on purpose: one transaction; split, its steps could be called outside it.
    def merge_ranges(self, parent_id: str) -> dict[str, int]:
        """Every range's owned frames and persons moved into the parent, tracks stitched across the
        boundaries (ranges.Stitcher), the ranges' rows deleted: one transaction, so a merge killed
        half-way leaves the ranges as they were. Returns counts (already merged: {}).

        Rows are read a chunk of frames at a time: memory follows the chunk, not the video."""

        chunk = 512
        with self.transaction() as cur:
            parent = self._job(cur, parent_id, lock=True)
            if parent is None or parent.last_frame is not None:
                return {}
            ranges = self._exec(cur, "SELECT job_id, range_index, range_start, range_stop, status, random_weights "
                                     "FROM jobs WHERE parent_job_id = ? ORDER BY range_index", (parent_id,)).fetchall()
            random_weights = any(bool(r[5]) for r in ranges)
            ranges = [r[:5] for r in ranges]
            if len(ranges) != parent.ranges or any(r[4] != "succeeded" for r in ranges):
                raise PosegraphError(f"job {parent_id}: not every range is done; cannot merge")
            warmup_frames = {r[0] for job_id, _, start, _, _ in ranges for r in self._exec(
                cur, "SELECT frame_index FROM frames WHERE job_id = ? AND frame_index < ?", (job_id, start)).fetchall()}
            stitch = Stitcher(warmup_frames)
            extents: dict[int, list[int]] = {}
            last = None
            for job_id, _, start, stop, _ in ranges:
                warmup = self._exec(cur, "SELECT frame_index, track_id, bbox FROM persons WHERE job_id = ? AND "
                                         "frame_index < ?", (job_id, start)).fetchall()
                stitch.begin_range([(f, t, load(b)) for f, t, b in warmup])
                for first in range(start, stop, chunk):
                    past = min(stop, first + chunk)
                    frames = self._exec(cur, "SELECT frame_index, timestamp_s, status, error, persons FROM frames "
                                             "WHERE job_id = ? AND frame_index >= ? AND frame_index < ? "
                                             "ORDER BY frame_index", (job_id, first, past)).fetchall()
                    persons = self._exec(cur, "SELECT frame_index, person_index, track_id, score, bbox, keypoints2d, "
                                              "keypoints3d, landmarks, root3d, extras FROM persons WHERE job_id = ? "
                                              "AND frame_index >= ? AND frame_index < ? ORDER BY frame_index, person_index",
                                         (job_id, first, past)).fetchall()
                    cur.executemany(self._sql("INSERT INTO frames (job_id, frame_index, timestamp_s, status, error, "
                                              "persons) VALUES (?, ?, ?, ?, ?, ?)"),
                                    [(parent_id, *f) for f in frames])
                    rows = []
                    for f, p_index, local, score, bbox, k2, k3, marks, root, extras in persons:
                        track = stitch.global_id(local)
                        if track is not None:
                            stitch.remember(f, load(bbox), track)
                            extent = extents.setdefault(track, [f, f])
                            extent[0], extent[1] = min(extent[0], f), max(extent[1], f)
                        rows.append((parent_id, f, p_index, track, score, dump(load(bbox)), dump(load(k2)),
                                     dump(load(k3)), dump(load(marks)), dump(load(root)), dump(load(extras))))
                    cur.executemany(self._sql(
                        "INSERT INTO persons (job_id, frame_index, person_index, track_id, score, bbox, keypoints2d, "
                        "keypoints3d, landmarks, root3d, extras) VALUES (?, ?, ?, ?, ?, {j}, {j}, {j}, {j}, {j}, {j})"),
                        rows)
                    if frames:
                        last = frames[-1][0]
            cur.executemany(self._sql("INSERT INTO tracks (job_id, track_id, first_frame, last_frame) "
                                      "VALUES (?, ?, ?, ?)"),
                            [(parent_id, t, a, b) for t, (a, b) in sorted(extents.items())])
            self._exec(cur, "DELETE FROM jobs WHERE parent_job_id = ?", (parent_id,))
            self._set_counts(cur, parent_id, last_frame=-1 if last is None else last, tracker_state=None,
                             random_weights=random_weights)
            return {"ranges": len(ranges), "tracks": len(extents), "continued": stitch.continued}
