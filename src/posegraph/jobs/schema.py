"""The results store's tables, version by version, and the two SQL dialects it is written in.

    jobs     one row per job: video, status, counts, timings, error, the resume point and tracker state
    frames   (job_id, frame_index) PK: status ok|failed, error, persons
    persons  (job_id, frame_index, person_index) PK: track_id, score, bbox, keypoints2d, keypoints3d,
             landmarks (JSON; BlazePose's 33, version 4), root3d (the pelvis in camera space, version 5),
             extras (a user's stages' fields, version 6)
             index (job_id, track_id, frame_index): one track, fast
    tracks   (job_id, track_id) PK: first/last frame, whether it has been lifted, results (a user's
             track stages' fields, version 6)
    joint_angles (job_id, track_id, frame_index) PK: degrees per angle (version 2)

A migration is a new entry at the end of SCHEMA, never an edit of one applied already
(``posegraph db migrate`` or any job run applies the missing ones).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
    # version 4: BlazePose's 33 landmarks and their world coordinates per person (frame.Landmarks),
    # which its lift3d reads when a track is lifted from the store.
    """
    ALTER TABLE persons ADD COLUMN landmarks {json};
    """,
    # version 5: where the person is, the pelvis in camera space (frame.Person.root3d, lift3d's
    # posegraph.motion.root), written with the track's 3D. Rows from before have none: the exports
    # fit it then from the stored 2D and 3D (posegraph.motion.world.track_root).
    """
    ALTER TABLE persons ADD COLUMN root3d {json};
    """,
    # version 6: what a user's stages (posegraph.stages.user) add: a person's or a track frame's own
    # fields (persons.extras) and a whole track's (tracks.results, e.g. the form judge's reps).
    """
    ALTER TABLE persons ADD COLUMN extras {json};
    ALTER TABLE tracks ADD COLUMN results {json};
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


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def load(value: Any) -> Any:
    if value is None or not isinstance(value, (str, bytes)):
        return value  # psycopg already decoded jsonb
    return json.loads(value)


