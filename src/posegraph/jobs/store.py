"""Where job results live: PostgreSQL in a cluster, SQLite on one machine. One interface, two backends.

The tables are in jobs/schema.py, the rows read back in jobs/rows.py, the rows of a job split
into ranges in jobs/range_store.py.

Writes are bulk (``executemany``, pipelined by psycopg 3) and transactional. A batch of frames, its
persons, its tracks and the job's resume point commit together. A killed runner therefore
resumes from the last committed frame, with no duplicate or missing rows, and upserts on the
primary keys make a replay harmless.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import PosegraphError, UsageError
from ..frame import FrameDocument, ImageRef
from ..motion.angles import ANGLES, stored_angle
from ..names import utc_now
from .range_store import RangeStore
from .rows import FrameRow, JobCounts, JobRow, PersonRow, StoredFrame, StoredPerson, TrackPoint, TrackRow
from .schema import POSTGRES, SCHEMA, SQLITE, Dialect, dump, load

__all__ = ["FrameRow", "JobRow", "PersonRow", "PostgresStore", "ResultsStore", "SCHEMA", "SQLITE", "SQLiteStore",
           "open_store", "redact", "stored_frame_document"]

def stored_frame_document(frame: StoredFrame, *, width: int | None, height: int | None,
                          video_uri: str) -> FrameDocument:
    """A frame read back from the store (``frame_results``) as a frame document. A failed frame has
    no persons and carries its error as an extra field, so exports show the failure."""
    # A user's stages' fields go back where they were written: onto the person.
    persons = [{**{k: v for k, v in vars(p).items() if k != "extras"}, **(p.extras or {})}
               for p in frame.persons] if frame.ok else None
    doc = FrameDocument(width=width, height=height, frame_index=frame.frame_index, timestamp_s=frame.timestamp_s,
                        image=ImageRef(uri=video_uri), persons=persons)
    if not frame.ok:
        doc.error = frame.error
    return doc


class ResultsStore(RangeStore):
    """Base: SQL written once; each backend supplies a connection and its dialect. A job split
    into ranges has its rows from RangeStore."""

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
                  ) -> JobRow:
        """Create the job, or return the existing one to resume. A job id names one video, and a
        job split into ``ranges`` resumes only split the same way (its ranges' rows depend on it)."""
        with self.transaction() as cur:
            row = self._job(cur, job_id, lock=True)
            if row is None:
                now = utc_now()
                self._exec(cur, "INSERT INTO jobs (job_id, video_uri, status, params, ranges, created_at, updated_at) "
                                "VALUES (?, ?, 'queued', {j}, ?, ?, ?)",
                           (job_id, video_uri, dump(params), ranges, now, now))
                row = self._job(cur, job_id)
            elif row.video_uri != video_uri:
                raise UsageError(f"job {job_id} exists for another video ({row.video_uri}); use a new --job-id")
            elif row.status != "succeeded" and (row.ranges or None) != ranges:
                if row.last_frame is not None or self._has_ranges(cur, job_id):
                    was = f"split into {row.ranges} ranges" if row.ranges else "not split"
                    raise UsageError(f"job {job_id} was started {was}; resume it the same way "
                                     f"(--workers {row.ranges or 1}) or use a new --job-id")
                self._exec(cur, "UPDATE jobs SET ranges = ? WHERE job_id = ?", (ranges, job_id))
                row.ranges = ranges
            return row

    def _has_ranges(self, cur, job_id: str) -> bool:
        return self._exec(cur, "SELECT COUNT(*) FROM jobs WHERE parent_job_id = ?", (job_id,)).fetchone()[0] > 0

    def _job(self, cur, job_id: str, *, lock: bool = False) -> JobRow | None:
        cur = self._exec(cur, "SELECT * FROM jobs WHERE job_id = ?" + (self.dialect.for_update if lock else ""),
                         (job_id,))
        row = cur.fetchone()
        return None if row is None else JobRow.from_record(cur.description, row)

    def job(self, job_id: str) -> JobRow | None:
        with self.transaction() as cur:
            return self._job(cur, job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        json_fields = {"params", "tracker_state", "outputs"}
        sets = ", ".join(f"{k} = {{j}}" if k in json_fields else f"{k} = ?" for k in fields)
        values = [(dump(v) if k in json_fields else v) for k, v in fields.items()]
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
                "INSERT INTO persons (job_id, frame_index, person_index, track_id, score, bbox, keypoints2d, keypoints3d, "
                "landmarks, root3d, extras) VALUES (?, ?, ?, ?, ?, {j}, {j}, {j}, {j}, {j}, {j}) "
                "ON CONFLICT (job_id, frame_index, person_index) "
                "DO UPDATE SET track_id = excluded.track_id, score = excluded.score, bbox = excluded.bbox, "
                "keypoints2d = excluded.keypoints2d, keypoints3d = excluded.keypoints3d, landmarks = excluded.landmarks, "
                "root3d = excluded.root3d, extras = excluded.extras"),
                [(job_id, p.frame_index, p.person_index, p.track_id, p.score, dump(p.bbox), dump(p.keypoints2d),
                  dump(p.keypoints3d), dump(p.landmarks), dump(p.root3d), dump(p.extras)) for p in persons])
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
            WHERE job_id = ?""", (job_id, job_id, job_id, job_id, last_frame, dump(tracker_state), utc_now(), job_id))
        if random_weights:
            self._exec(cur, "UPDATE jobs SET random_weights = TRUE WHERE job_id = ?", (job_id,))

    def unlifted_tracks(self, job_id: str) -> list[int]:
        """Tracks not lifted yet (a failed one stays here, with its error)."""
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT track_id FROM tracks WHERE job_id = ? AND NOT lifted ORDER BY track_id",
                              (job_id,)).fetchall()
        return [r[0] for r in rows]

    def track_frames(self, job_id: str, track_id: int) -> list[TrackPoint]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT frame_index, person_index, score, bbox, keypoints2d, landmarks FROM persons "
                                   "WHERE job_id = ? AND track_id = ? ORDER BY frame_index",
                              (job_id, track_id)).fetchall()
        return [TrackPoint(r[0], r[1], r[2], load(r[3]), load(r[4]), landmarks=load(r[5])) for r in rows]

    def write_lifted(self, job_id: str, track_id: int, rows: list[tuple], angles: dict[str, Any] | None = None,
                     results: dict | None = None) -> None:
        """``rows``: (frame_index, person_index, keypoints3d, root3d[, extras]); ``angles``: {name:
        (T,) degrees} in the same frame order; ``results``: the track's own fields a user's track
        stages wrote. Marks the track lifted, atomically, with its angles."""
        with self.transaction() as cur:
            added = {(f, p): extra[0] for f, p, _, _, *extra in rows if extra and extra[0]}
            merged = {}
            if added:  # a track stage's fields join what frame stages wrote on the same persons
                held = self._exec(cur, "SELECT frame_index, person_index, extras FROM persons WHERE job_id = ? "
                                       "AND track_id = ?", (job_id, track_id)).fetchall()
                merged = {(f, p): {**(load(e) or {}), **added[(f, p)]} for f, p, e in held if (f, p) in added}
            cur.executemany(self._sql("UPDATE persons SET keypoints3d = {j}, root3d = {j}, "
                                      "extras = COALESCE({j}, extras) WHERE job_id = ? AND frame_index = ? "
                                      "AND person_index = ?"),
                            [(dump(k3), dump(root), dump(merged.get((f, p))), job_id, f, p)
                             for f, p, k3, root, *_ in rows])
            self._exec(cur, self._sql("UPDATE tracks SET results = {j} WHERE job_id = ? AND track_id = ?"),
                       (dump(results), job_id, track_id))
            if angles is not None:

                self._exec(cur, "DELETE FROM joint_angles WHERE job_id = ? AND track_id = ?", (job_id, track_id))
                cur.executemany(self._sql(
                    f"INSERT INTO joint_angles (job_id, track_id, frame_index, {', '.join(ANGLES)}) "
                    f"VALUES (?, ?, ?, {', '.join('?' for _ in ANGLES)})"),
                    [(job_id, track_id, f, *(stored_angle(angles[a][i]) for a in ANGLES))
                     for i, (f, *_) in enumerate(rows)])
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

    def frame_results(self, job_id: str, start: int, stop: int) -> dict[int, StoredFrame]:
        """Frames in [start, stop) with their persons, for rendering and export."""
        with self.transaction() as cur:
            frames = self._exec(cur, "SELECT frame_index, timestamp_s, status, error FROM frames WHERE job_id = ? "
                                     "AND frame_index >= ? AND frame_index < ? ORDER BY frame_index",
                                (job_id, start, stop)).fetchall()
            persons = self._exec(cur, "SELECT frame_index, person_index, track_id, score, bbox, keypoints2d, "
                                      "keypoints3d, landmarks, root3d, extras FROM persons WHERE job_id = ? "
                                      "AND frame_index >= ? AND frame_index < ? ORDER BY frame_index, person_index",
                                 (job_id, start, stop)).fetchall()
        out = {f[0]: StoredFrame(*f) for f in frames}
        for p in persons:
            out[p[0]].persons.append(StoredPerson(p[2], p[3], load(p[4]), load(p[5]), load(p[6]), load(p[7]),
                                                  load(p[8]), load(p[9])))
        return out

    # -- reading back (the web UI, exports) ------------------------------------------------------------
    def list_jobs(self, limit: int = 100) -> list[JobRow]:
        """The newest jobs first, without their per-frame data."""
        with self.transaction() as cur:
            cur = self._exec(cur, "SELECT * FROM jobs WHERE parent_job_id IS NULL ORDER BY created_at DESC, job_id "
                                  "LIMIT ?", (limit,))
            return [JobRow.from_record(cur.description, row) for row in cur.fetchall()]

    def tracks(self, job_id: str) -> list[TrackRow]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT t.track_id, t.first_frame, t.last_frame, t.lifted, t.error, "
                                   "(SELECT COUNT(*) FROM persons p WHERE p.job_id = t.job_id AND p.track_id = t.track_id), "
                                   "t.results FROM tracks t WHERE t.job_id = ? ORDER BY t.track_id", (job_id,)).fetchall()
        return [TrackRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], load(r[6])) for r in rows]

    def track_rows(self, job_id: str, track_id: int) -> list[TrackPoint]:
        """One person's rows over the video, with timestamps and both keypoint sets."""
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT p.frame_index, f.timestamp_s, p.person_index, p.score, p.bbox, "
                                   "p.keypoints2d, p.keypoints3d, p.root3d, p.extras FROM persons p JOIN frames f "
                                   "ON f.job_id = p.job_id AND f.frame_index = p.frame_index "
                                   "WHERE p.job_id = ? AND p.track_id = ? ORDER BY p.frame_index",
                              (job_id, track_id)).fetchall()
        return [TrackPoint(r[0], r[2], r[3], load(r[4]), load(r[5]), load(r[6]), timestamp_s=r[1], root3d=load(r[7]),
                           extras=load(r[8])) for r in rows]

    def counts(self, job_id: str) -> JobCounts:
        with self.transaction() as cur:
            def one(sql):
                return self._exec(cur, sql, (job_id,)).fetchone()[0]

            return JobCounts(
                frames=one("SELECT COUNT(*) FROM frames WHERE job_id = ?"),
                persons=one("SELECT COUNT(*) FROM persons WHERE job_id = ?"),
                tracks=one("SELECT COUNT(*) FROM tracks WHERE job_id = ?"),
                persons_without_3d=one("SELECT COUNT(*) FROM persons WHERE job_id = ? AND keypoints3d IS NULL"),
            )


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
