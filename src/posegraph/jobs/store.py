"""Where job results live: PostgreSQL in a cluster, SQLite on one machine. One interface, two backends.

Schema (migrated by ``posegraph db migrate`` or any job run):

    jobs     one row per job: video, status, counts, timings, error, the resume point and tracker state
    frames   (job_id, frame_index) PK: status ok|failed, error, persons
    persons  (job_id, frame_index, person_index) PK: track_id, score, bbox, keypoints2d, keypoints3d (JSON)
             index (job_id, track_id, frame_index): one track, fast
    tracks   (job_id, track_id) PK: first/last frame, whether it has been lifted

Writes are bulk (``executemany``, pipelined by psycopg 3) and transactional. A batch of frames, its
persons, its tracks and the job's resume point commit together. A killed runner therefore
resumes from the last committed frame, with no duplicate or missing rows, and upserts on the
primary keys make a replay harmless.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import PosegraphError, UsageError
from ..frame import FrameDocument, ImageRef
from ..motion.angles import ANGLES, stored_angle
from ..names import utc_now
from .ranges import Stitcher

SCHEMA = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS jobs (
        job_id        TEXT PRIMARY KEY,
        video_uri     TEXT NOT NULL,
        status        TEXT NOT NULL,
        params        {json} NOT NULL,
        width         INTEGER,
        height        INTEGER,
        fps           {real},
        frames_total  INTEGER,
        frames_done   INTEGER NOT NULL DEFAULT 0,
        frames_failed INTEGER NOT NULL DEFAULT 0,
        persons       INTEGER NOT NULL DEFAULT 0,
        tracks        INTEGER NOT NULL DEFAULT 0,
        last_frame    INTEGER,
        tracker_state {json},
        outputs       {json},
        random_weights BOOLEAN NOT NULL DEFAULT FALSE,
        error         TEXT,
        note          TEXT,
        created_at    {ts} NOT NULL,
        started_at    {ts},
        finished_at   {ts},
        updated_at    {ts} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS frames (
        job_id       TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        frame_index  INTEGER NOT NULL,
        timestamp_s  {real},
        status       TEXT NOT NULL,
        error        TEXT,
        persons      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, frame_index)
    );
    CREATE TABLE IF NOT EXISTS persons (
        job_id        TEXT NOT NULL,
        frame_index   INTEGER NOT NULL,
        person_index  INTEGER NOT NULL,
        track_id      INTEGER,
        score         {real} NOT NULL,
        bbox          {json} NOT NULL,
        keypoints2d   {json},
        keypoints3d   {json},
        PRIMARY KEY (job_id, frame_index, person_index),
        FOREIGN KEY (job_id, frame_index) REFERENCES frames (job_id, frame_index) ON DELETE CASCADE
    );
    CREATE INDEX IF NOT EXISTS persons_by_track ON persons (job_id, track_id, frame_index);
    CREATE TABLE IF NOT EXISTS tracks (
        job_id       TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
        track_id     INTEGER NOT NULL,
        first_frame  INTEGER NOT NULL,
        last_frame   INTEGER NOT NULL,
        lifted       BOOLEAN NOT NULL DEFAULT FALSE,
        error        TEXT,
        PRIMARY KEY (job_id, track_id)
    );
    """,
    # version 2: joint angles per track and frame (posegraph.motion.angles), written with the
    # track's 3D keypoints; degrees, NULL where a bone had no length.
    """
    CREATE TABLE IF NOT EXISTS joint_angles (
        job_id         TEXT NOT NULL,
        track_id       INTEGER NOT NULL,
        frame_index    INTEGER NOT NULL,
        left_knee      {real},
        right_knee     {real},
        left_elbow     {real},
        right_elbow    {real},
        left_hip       {real},
        right_hip      {real},
        left_shoulder  {real},
        right_shoulder {real},
        trunk_lean     {real},
        PRIMARY KEY (job_id, track_id, frame_index),
        FOREIGN KEY (job_id, track_id) REFERENCES tracks (job_id, track_id) ON DELETE CASCADE
    );
    """,
    # version 3: a job split into ranges (posegraph.jobs.ranges). Each range is a job row of its
    # own (parent_job_id set, hidden from job lists) with its own resume point and tracker; the
    # parent records how many ranges it was split into. Merging moves the ranges' rows into the
    # parent and deletes them, in one transaction.
    """
    ALTER TABLE jobs ADD COLUMN parent_job_id TEXT;
    ALTER TABLE jobs ADD COLUMN ranges INTEGER;
    ALTER TABLE jobs ADD COLUMN range_index INTEGER;
    ALTER TABLE jobs ADD COLUMN range_start INTEGER;
    ALTER TABLE jobs ADD COLUMN range_stop INTEGER;
    CREATE INDEX IF NOT EXISTS jobs_by_parent ON jobs (parent_job_id, range_index);
    """,
]


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    json: str
    json_param: str
    real: str
    ts: str
    for_update: str  # locks the rows read until the transaction ends (SQLite: BEGIN IMMEDIATE already does)


SQLITE = Dialect("sqlite", "?", "TEXT", "?", "REAL", "TEXT", "")
POSTGRES = Dialect("postgresql", "%s", "JSONB", "%s::jsonb", "DOUBLE PRECISION", "TIMESTAMPTZ", " FOR UPDATE")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(value: Any) -> Any:
    if value is None or not isinstance(value, (str, bytes)):
        return value  # psycopg already decoded jsonb
    return json.loads(value)


def _job_row(description, row) -> dict[str, Any]:
    """A row of ``SELECT * FROM jobs`` as a dict, its JSON columns decoded."""
    out = dict(zip([c[0] for c in description], row))
    for key in ("params", "tracker_state", "outputs"):
        out[key] = _load(out.get(key))
    return out


def stored_frame_document(frame_index: int, frame: dict[str, Any], *, width: int | None, height: int | None,
                          video_uri: str) -> FrameDocument:
    """A frame read back from the store (``frame_results``) as a frame document. A failed frame has
    no persons and carries its error as an extra field, so exports show the failure."""
    doc = FrameDocument(width=width, height=height, frame_index=frame_index, timestamp_s=frame["timestamp_s"],
                        image=ImageRef(uri=video_uri), persons=frame["persons"] if frame["status"] == "ok" else None)
    if frame["status"] != "ok":
        doc.error = frame["error"]
    return doc


@dataclass
class PersonRow:
    frame_index: int
    person_index: int
    track_id: int | None
    score: float
    bbox: list[float]
    keypoints2d: list[list[float]] | None
    keypoints3d: list[list[float]] | None


@dataclass
class FrameRow:
    frame_index: int
    timestamp_s: float | None
    status: str  # ok | failed
    error: str | None
    persons: int


class ResultsStore:
    """Base: SQL written once; each backend supplies a connection and its dialect."""

    dialect: Dialect

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Any]:  # pragma: no cover - per backend
        raise NotImplementedError
        yield

    def close(self) -> None:  # pragma: no cover - per backend
        pass

    def _sql(self, text: str) -> str:
        d = self.dialect
        text = text.replace("{json}", d.json).replace("{real}", d.real).replace("{ts}", d.ts)
        if d.placeholder != "?":
            text = text.replace("?", d.placeholder)
        return text.replace("{j}", d.json_param)

    def _exec(self, cur, text: str, params: tuple | list = ()) -> Any:
        cur.execute(self._sql(text), params)
        return cur

    # -- schema --------------------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply missing schema versions; returns the versions applied now."""
        applied = []
        with self.transaction() as cur:
            self._exec(cur, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                            "applied_at TEXT NOT NULL)")
            have = {row[0] for row in self._exec(cur, "SELECT version FROM schema_migrations").fetchall()}
            for version, ddl in enumerate(SCHEMA, start=1):
                if version in have:
                    continue
                for statement in self._sql(ddl).split(";"):
                    if statement.strip():
                        cur.execute(statement)
                self._exec(cur, "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                           (version, utc_now()))
                applied.append(version)
        return applied

    # -- jobs ----------------------------------------------------------------------------------------
    def begin_job(self, job_id: str, video_uri: str, params: dict[str, Any], *, ranges: int | None = None
                  ) -> dict[str, Any]:
        """Create the job, or return the existing one to resume. A job id names one video, and a
        job split into ``ranges`` resumes only split the same way (its ranges' rows depend on it)."""
        with self.transaction() as cur:
            row = self._job(cur, job_id, lock=True)
            if row is None:
                now = utc_now()
                self._exec(cur, "INSERT INTO jobs (job_id, video_uri, status, params, ranges, created_at, updated_at) "
                                "VALUES (?, ?, 'queued', {j}, ?, ?, ?)",
                           (job_id, video_uri, _dump(params), ranges, now, now))
                row = self._job(cur, job_id)
            elif row["video_uri"] != video_uri:
                raise UsageError(f"job {job_id} exists for another video ({row['video_uri']}); use a new --job-id")
            elif row["status"] != "succeeded" and (row.get("ranges") or None) != ranges:
                if row["last_frame"] is not None or self._has_ranges(cur, job_id):
                    was = f"split into {row['ranges']} ranges" if row.get("ranges") else "not split"
                    raise UsageError(f"job {job_id} was started {was}; resume it the same way "
                                     f"(--workers {row.get('ranges') or 1}) or use a new --job-id")
                self._exec(cur, "UPDATE jobs SET ranges = ? WHERE job_id = ?", (ranges, job_id))
                row["ranges"] = ranges
            return row

    def _has_ranges(self, cur, job_id: str) -> bool:
        return self._exec(cur, "SELECT COUNT(*) FROM jobs WHERE parent_job_id = ?", (job_id,)).fetchone()[0] > 0

    def _job(self, cur, job_id: str, *, lock: bool = False) -> dict[str, Any] | None:
        cur = self._exec(cur, "SELECT * FROM jobs WHERE job_id = ?" + (self.dialect.for_update if lock else ""),
                         (job_id,))
        row = cur.fetchone()
        return None if row is None else _job_row(cur.description, row)

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            return self._job(cur, job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        json_fields = {"params", "tracker_state", "outputs"}
        sets = ", ".join(f"{k} = {{j}}" if k in json_fields else f"{k} = ?" for k in fields)
        values = [(_dump(v) if k in json_fields else v) for k, v in fields.items()]
        with self.transaction() as cur:
            self._exec(cur, f"UPDATE jobs SET {sets}, updated_at = ? WHERE job_id = ?", (*values, utc_now(), job_id))

    # -- frames ----------------------------------------------------------------------------------------
    def commit_batch(self, job_id: str, frames: list[FrameRow], persons: list[PersonRow],
                     tracks: list[tuple[int, int, int]], *, last_frame: int, tracker_state: Any) -> None:
        """One batch, all or nothing: frames, persons, track extents, counters and the resume point."""
        with self.transaction() as cur:
            cur.executemany(self._sql(
                "INSERT INTO frames (job_id, frame_index, timestamp_s, status, error, persons) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id, frame_index) DO UPDATE SET timestamp_s = excluded.timestamp_s, "
                "status = excluded.status, error = excluded.error, persons = excluded.persons"),
                [(job_id, f.frame_index, f.timestamp_s, f.status, f.error, f.persons) for f in frames])
            cur.executemany(self._sql(
                "INSERT INTO persons (job_id, frame_index, person_index, track_id, score, bbox, keypoints2d, keypoints3d) "
                "VALUES (?, ?, ?, ?, ?, {j}, {j}, {j}) ON CONFLICT (job_id, frame_index, person_index) DO UPDATE SET "
                "track_id = excluded.track_id, score = excluded.score, bbox = excluded.bbox, "
                "keypoints2d = excluded.keypoints2d, keypoints3d = excluded.keypoints3d"),
                [(job_id, p.frame_index, p.person_index, p.track_id, p.score, _dump(p.bbox), _dump(p.keypoints2d),
                  _dump(p.keypoints3d)) for p in persons])
            cur.executemany(self._sql(
                "INSERT INTO tracks (job_id, track_id, first_frame, last_frame) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (job_id, track_id) DO UPDATE SET "
                "first_frame = CASE WHEN excluded.first_frame < tracks.first_frame THEN excluded.first_frame "
                "ELSE tracks.first_frame END, "
                "last_frame = CASE WHEN excluded.last_frame > tracks.last_frame THEN excluded.last_frame "
                "ELSE tracks.last_frame END"),
                [(job_id, t, first, last) for t, first, last in tracks])
            self._set_counts(cur, job_id, last_frame=last_frame, tracker_state=tracker_state)

    def _set_counts(self, cur, job_id: str, *, last_frame: int, tracker_state: Any,
                    random_weights: bool | None = None) -> None:
        """The job's counters recounted from its rows, and its resume point."""
        self._exec(cur, """
            UPDATE jobs SET
                frames_done = (SELECT COUNT(*) FROM frames WHERE job_id = ? AND status = 'ok'),
                frames_failed = (SELECT COUNT(*) FROM frames WHERE job_id = ? AND status = 'failed'),
                persons = (SELECT COUNT(*) FROM persons WHERE job_id = ?),
                tracks = (SELECT COUNT(*) FROM tracks WHERE job_id = ?),
                last_frame = ?, tracker_state = {j}, updated_at = ?
            WHERE job_id = ?""", (job_id, job_id, job_id, job_id, last_frame, _dump(tracker_state), utc_now(), job_id))
        if random_weights:
            self._exec(cur, "UPDATE jobs SET random_weights = TRUE WHERE job_id = ?", (job_id,))

    def unlifted_tracks(self, job_id: str) -> list[int]:
        """Tracks not lifted yet (a failed one stays here, with its error)."""
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT track_id FROM tracks WHERE job_id = ? AND NOT lifted ORDER BY track_id",
                              (job_id,)).fetchall()
        return [r[0] for r in rows]

    def track_frames(self, job_id: str, track_id: int) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT frame_index, person_index, score, bbox, keypoints2d FROM persons "
                                   "WHERE job_id = ? AND track_id = ? ORDER BY frame_index",
                              (job_id, track_id)).fetchall()
        return [{"frame_index": r[0], "person_index": r[1], "score": r[2], "bbox": _load(r[3]),
                 "keypoints2d": _load(r[4])} for r in rows]

    def write_lifted(self, job_id: str, track_id: int, rows: list[tuple[int, int, list]],
                     angles: dict[str, Any] | None = None) -> None:
        """``rows``: (frame_index, person_index, keypoints3d); ``angles``: {name: (T,) degrees} in the
        same frame order. Marks the track lifted, atomically, with its angles."""
        with self.transaction() as cur:
            cur.executemany(self._sql("UPDATE persons SET keypoints3d = {j} WHERE job_id = ? AND frame_index = ? "
                                      "AND person_index = ?"),
                            [(_dump(k3), job_id, f, p) for f, p, k3 in rows])
            if angles is not None:

                self._exec(cur, "DELETE FROM joint_angles WHERE job_id = ? AND track_id = ?", (job_id, track_id))
                cur.executemany(self._sql(
                    f"INSERT INTO joint_angles (job_id, track_id, frame_index, {', '.join(ANGLES)}) "
                    f"VALUES (?, ?, ?, {', '.join('?' for _ in ANGLES)})"),
                    [(job_id, track_id, f, *(stored_angle(angles[a][i]) for a in ANGLES))
                     for i, (f, _, _) in enumerate(rows)])
            self._exec(cur, "UPDATE tracks SET lifted = TRUE, error = NULL WHERE job_id = ? AND track_id = ?",
                       (job_id, track_id))

    def joint_angles(self, job_id: str, track_id: int) -> tuple[list[int], dict[str, list[float | None]]]:
        """One track's frame numbers and its angles per frame (empty when none were stored)."""

        with self.transaction() as cur:
            rows = self._exec(cur, f"SELECT frame_index, {', '.join(ANGLES)} FROM joint_angles "
                                   "WHERE job_id = ? AND track_id = ? ORDER BY frame_index", (job_id, track_id)).fetchall()
        return [r[0] for r in rows], {name: [r[i + 1] for r in rows] for i, name in enumerate(ANGLES)}

    def update_track_error(self, job_id: str, track_id: int, error: str) -> None:
        with self.transaction() as cur:
            self._exec(cur, "UPDATE tracks SET error = ? WHERE job_id = ? AND track_id = ?", (error, job_id, track_id))

    # -- a job split into ranges (posegraph.jobs.ranges) ------------------------------------------------
    def begin_range(self, parent_id: str, range_id: str, plan, video_uri: str, params: dict[str, Any]
                    ) -> dict[str, Any]:
        """The range's own job row (created, or returned to resume): its resume point and tracker."""
        with self.transaction() as cur:
            row = self._job(cur, range_id)
            if row is None:
                now = utc_now()
                self._exec(cur, "INSERT INTO jobs (job_id, video_uri, status, params, parent_job_id, range_index, "
                                "range_start, range_stop, created_at, updated_at) "
                                "VALUES (?, ?, 'queued', {j}, ?, ?, ?, ?, ?, ?)",
                           (range_id, video_uri, _dump(params), parent_id, plan.index, plan.start, plan.stop, now, now))
                row = self._job(cur, range_id)
            elif (row["parent_job_id"], row["range_start"], row["range_stop"]) != (parent_id, plan.start, plan.stop):
                raise UsageError(f"{range_id} exists with frames {row['range_start']}–{row['range_stop']}, "
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
            return done >= (parent["ranges"] or 1)

    def ranges_left(self, parent_id: str) -> list[int]:
        """Range indices (0-based) not ingested yet: never started, or interrupted."""
        with self.transaction() as cur:
            parent = self._job(cur, parent_id)
            done = {r[0] for r in self._exec(cur, "SELECT range_index FROM jobs WHERE parent_job_id = ? AND "
                                                  "status = 'succeeded'", (parent_id,)).fetchall()}
        return [] if parent is None or not parent["ranges"] else [i for i in range(parent["ranges"]) if i not in done]

    def range_progress(self, parent_id: str) -> dict[str, int]:
        """The parent's counts while its ranges run: owned frames only (warmup frames are counted
        by the range that owns them)."""
        with self.transaction() as cur:
            def one(where: str) -> int:
                return self._exec(cur, "SELECT COUNT(*) FROM jobs j JOIN " + where + " x ON x.job_id = j.job_id "
                                       "WHERE j.parent_job_id = ? AND x.frame_index >= j.range_start",
                                  (parent_id,)).fetchone()[0]

            return {"frames_done": one("(SELECT * FROM frames WHERE status = 'ok')"),
                    "frames_failed": one("(SELECT * FROM frames WHERE status = 'failed')"),
                    "persons": one("persons")}

    # Long on purpose: one transaction; split, its steps could be called outside it.
    def merge_ranges(self, parent_id: str) -> dict[str, int]:
        """Every range's owned frames and persons moved into the parent, tracks stitched across the
        boundaries (ranges.Stitcher), the ranges' rows deleted: one transaction, so a merge killed
        half-way leaves the ranges as they were. Returns counts (already merged: {}).

        Rows are read a chunk of frames at a time: memory follows the chunk, not the video."""

        chunk = 512
        with self.transaction() as cur:
            parent = self._job(cur, parent_id, lock=True)
            if parent is None or parent["last_frame"] is not None:
                return {}
            ranges = self._exec(cur, "SELECT job_id, range_index, range_start, range_stop, status, random_weights "
                                     "FROM jobs WHERE parent_job_id = ? ORDER BY range_index", (parent_id,)).fetchall()
            random_weights = any(bool(r[5]) for r in ranges)
            ranges = [r[:5] for r in ranges]
            if len(ranges) != parent["ranges"] or any(r[4] != "succeeded" for r in ranges):
                raise PosegraphError(f"job {parent_id}: not every range is done; cannot merge")
            warmup_frames = {r[0] for job_id, _, start, _, _ in ranges for r in self._exec(
                cur, "SELECT frame_index FROM frames WHERE job_id = ? AND frame_index < ?", (job_id, start)).fetchall()}
            stitch = Stitcher(warmup_frames)
            extents: dict[int, list[int]] = {}
            last = None
            for job_id, _, start, stop, _ in ranges:
                warmup = self._exec(cur, "SELECT frame_index, track_id, bbox FROM persons WHERE job_id = ? AND "
                                         "frame_index < ?", (job_id, start)).fetchall()
                stitch.begin_range([(f, t, _load(b)) for f, t, b in warmup])
                for first in range(start, stop, chunk):
                    past = min(stop, first + chunk)
                    frames = self._exec(cur, "SELECT frame_index, timestamp_s, status, error, persons FROM frames "
                                             "WHERE job_id = ? AND frame_index >= ? AND frame_index < ? "
                                             "ORDER BY frame_index", (job_id, first, past)).fetchall()
                    persons = self._exec(cur, "SELECT frame_index, person_index, track_id, score, bbox, keypoints2d, "
                                              "keypoints3d FROM persons WHERE job_id = ? AND frame_index >= ? AND "
                                              "frame_index < ? ORDER BY frame_index, person_index",
                                         (job_id, first, past)).fetchall()
                    cur.executemany(self._sql("INSERT INTO frames (job_id, frame_index, timestamp_s, status, error, "
                                              "persons) VALUES (?, ?, ?, ?, ?, ?)"),
                                    [(parent_id, *f) for f in frames])
                    rows = []
                    for f, p_index, local, score, bbox, k2, k3 in persons:
                        track = stitch.global_id(local)
                        if track is not None:
                            stitch.remember(f, _load(bbox), track)
                            extent = extents.setdefault(track, [f, f])
                            extent[0], extent[1] = min(extent[0], f), max(extent[1], f)
                        rows.append((parent_id, f, p_index, track, score, _dump(_load(bbox)), _dump(_load(k2)),
                                     _dump(_load(k3))))
                    cur.executemany(self._sql(
                        "INSERT INTO persons (job_id, frame_index, person_index, track_id, score, bbox, keypoints2d, "
                        "keypoints3d) VALUES (?, ?, ?, ?, ?, {j}, {j}, {j})"), rows)
                    if frames:
                        last = frames[-1][0]
            cur.executemany(self._sql("INSERT INTO tracks (job_id, track_id, first_frame, last_frame) "
                                      "VALUES (?, ?, ?, ?)"),
                            [(parent_id, t, a, b) for t, (a, b) in sorted(extents.items())])
            self._exec(cur, "DELETE FROM jobs WHERE parent_job_id = ?", (parent_id,))
            self._set_counts(cur, parent_id, last_frame=-1 if last is None else last, tracker_state=None,
                             random_weights=random_weights)
            return {"ranges": len(ranges), "tracks": len(extents), "continued": stitch.continued}

    def frame_results(self, job_id: str, start: int, stop: int) -> dict[int, dict[str, Any]]:
        """Frames in [start, stop) with their persons, for rendering and export."""
        with self.transaction() as cur:
            frames = self._exec(cur, "SELECT frame_index, timestamp_s, status, error FROM frames WHERE job_id = ? "
                                     "AND frame_index >= ? AND frame_index < ? ORDER BY frame_index",
                                (job_id, start, stop)).fetchall()
            persons = self._exec(cur, "SELECT frame_index, person_index, track_id, score, bbox, keypoints2d, "
                                      "keypoints3d FROM persons WHERE job_id = ? AND frame_index >= ? AND frame_index < ? "
                                      "ORDER BY frame_index, person_index", (job_id, start, stop)).fetchall()
        out = {f[0]: {"frame_index": f[0], "timestamp_s": f[1], "status": f[2], "error": f[3], "persons": []}
               for f in frames}
        for p in persons:
            out[p[0]]["persons"].append({"track_id": p[2], "score": p[3], "bbox": _load(p[4]),
                                         "keypoints2d": _load(p[5]), "keypoints3d": _load(p[6])})
        return out

    # -- reading back (the web UI, exports) ------------------------------------------------------------
    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest jobs first, without their per-frame data."""
        with self.transaction() as cur:
            cur = self._exec(cur, "SELECT * FROM jobs WHERE parent_job_id IS NULL ORDER BY created_at DESC, job_id "
                                  "LIMIT ?", (limit,))
            jobs = [_job_row(cur.description, row) for row in cur.fetchall()]
        for job in jobs:
            job.pop("tracker_state", None)
        return jobs

    def tracks(self, job_id: str) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT t.track_id, t.first_frame, t.last_frame, t.lifted, t.error, "
                                   "(SELECT COUNT(*) FROM persons p WHERE p.job_id = t.job_id AND p.track_id = t.track_id) "
                                   "FROM tracks t WHERE t.job_id = ? ORDER BY t.track_id", (job_id,)).fetchall()
        return [{"track_id": r[0], "first_frame": r[1], "last_frame": r[2], "lifted": bool(r[3]), "error": r[4],
                 "frames": r[5]} for r in rows]

    def track_rows(self, job_id: str, track_id: int) -> list[dict[str, Any]]:
        """One person's rows over the video, with timestamps and both keypoint sets."""
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT p.frame_index, f.timestamp_s, p.person_index, p.score, p.bbox, "
                                   "p.keypoints2d, p.keypoints3d FROM persons p JOIN frames f ON f.job_id = p.job_id "
                                   "AND f.frame_index = p.frame_index WHERE p.job_id = ? AND p.track_id = ? "
                                   "ORDER BY p.frame_index", (job_id, track_id)).fetchall()
        return [{"frame_index": r[0], "timestamp_s": r[1], "person_index": r[2], "score": r[3], "bbox": _load(r[4]),
                 "keypoints2d": _load(r[5]), "keypoints3d": _load(r[6])} for r in rows]

    def counts(self, job_id: str) -> dict[str, int]:
        with self.transaction() as cur:
            def one(sql):
                return self._exec(cur, sql, (job_id,)).fetchone()[0]

            return {
                "frames": one("SELECT COUNT(*) FROM frames WHERE job_id = ?"),
                "persons": one("SELECT COUNT(*) FROM persons WHERE job_id = ?"),
                "tracks": one("SELECT COUNT(*) FROM tracks WHERE job_id = ?"),
                "persons_without_3d": one("SELECT COUNT(*) FROM persons WHERE job_id = ? AND keypoints3d IS NULL"),
            }


class SQLiteStore(ResultsStore):
    dialect = SQLITE

    def __init__(self, dsn: str, path: Path) -> None:
        super().__init__(dsn)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self):
        conn = self._connection()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresStore(ResultsStore):
    """psycopg 3 with a small pool. The password comes from PGPASSWORD / a Secret, never the DSN."""

    dialect = POSTGRES

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        try:
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise UsageError("PostgreSQL results need psycopg: pip install 'posegraph[postgres]'") from None
        self.pool = ConnectionPool(dsn, min_size=1, max_size=4, open=False, kwargs={"autocommit": False})
        try:
            self.pool.open(wait=True, timeout=15)
        except Exception as exc:
            self.pool.close()
            raise PosegraphError(f"cannot connect to {redact(dsn)}: {exc}") from None

    @contextmanager
    def transaction(self):
        with self.pool.connection() as conn:
            with conn.transaction():
                with conn.cursor() as cur:
                    yield cur

    def close(self) -> None:
        self.pool.close()


def redact(dsn: str) -> str:
    parsed = urllib.parse.urlsplit(dsn)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return dsn


def open_store(dsn: str) -> ResultsStore:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``postgresql://user@host:port/db``."""
    if dsn.startswith("sqlite:///"):
        return SQLiteStore(dsn, Path(dsn[len("sqlite:///"):]).expanduser())
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresStore(dsn)
    raise UsageError(f"results DSN {redact(dsn)!r}: use sqlite:///path.db or postgresql://user@host/db")
