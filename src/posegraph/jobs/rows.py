"""What the results store reads back, typed: one dataclass per kind of row (jobs.store)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .schema import load

# JSON columns of the jobs table, decoded on reading.
_JOB_JSON = ("params", "tracker_state", "outputs")


@dataclass
class JobRow:
    """A row of the jobs table: a job, or one range of a split job (parent_job_id set)."""

    job_id: str
    video_uri: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames_total: int | None = None
    frames_done: int = 0
    frames_failed: int = 0
    persons: int = 0
    tracks: int = 0
    last_frame: int | None = None  # the resume point: the last frame committed
    tracker_state: Any = None
    outputs: dict[str, Any] | None = None
    random_weights: bool = False
    error: str | None = None
    note: str | None = None
    created_at: Any = None
    started_at: Any = None
    finished_at: Any = None
    updated_at: Any = None
    parent_job_id: str | None = None
    ranges: int | None = None
    range_index: int | None = None
    range_start: int | None = None
    range_stop: int | None = None

    @classmethod
    def from_record(cls, description, values) -> "JobRow":
        """A row of ``SELECT * FROM jobs`` (``cursor.description``, the values)."""
        record = dict(zip([c[0] for c in description], values))
        for key in _JOB_JSON:
            record[key] = load(record.get(key))
        known = {f.name for f in fields(cls)}
        row = cls(**{k: v for k, v in record.items() if k in known})
        row.params = row.params or {}
        row.random_weights = bool(row.random_weights)
        return row

    @property
    def frames_seen(self) -> int:
        """Frames through the graph, well or not: what progress counts."""
        return (self.frames_done or 0) + (self.frames_failed or 0)

    @property
    def stride(self) -> int:
        return int(self.params.get("stride") or 1)


@dataclass
class StoredPerson:
    """A person as the store keeps it: its track, box, score and keypoints."""

    track_id: int | None
    score: float
    bbox: list[float]
    keypoints2d: list[list[float]] | None
    keypoints3d: list[list[float]] | None
    landmarks: dict | None = None  # BlazePose's (frame.Landmarks as JSON)
    root3d: list[float] | None = None  # the pelvis in camera space (frame.Person.root3d)
    extras: dict | None = None  # a user's stages' fields on this person (posegraph.stages.user)


def extras_json(model) -> dict | None:
    """The fields a document item carries beyond posegraph's own (a user's stages'), or None."""
    return dict(model.model_extra) or None if model.model_extra else None


def landmarks_json(person) -> dict | None:
    """A frame document person's landmarks as the store keeps them (JSON), or None."""
    return None if person.landmarks is None else person.landmarks.model_dump(mode="json")


@dataclass(kw_only=True)
class PersonRow(StoredPerson):
    """A person to write, in a batch of frames: which frame, which person in it."""

    frame_index: int
    person_index: int


@dataclass
class FrameRow:
    """A frame to write."""

    frame_index: int
    timestamp_s: float | None
    status: str  # ok | failed
    error: str | None
    persons: int


@dataclass
class StoredFrame:
    """A frame read back with its persons (rendering, exports, the UI's 3D view)."""

    frame_index: int
    timestamp_s: float | None
    status: str
    error: str | None
    persons: list[StoredPerson] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TrackRow:
    """A track's extent and state, with how many frames it has."""

    track_id: int
    first_frame: int
    last_frame: int
    lifted: bool
    error: str | None
    frames: int
    results: dict | None = None  # a user's track stages' fields (e.g. the form judge's reps)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrackPoint:
    """One frame of one track: what lifting reads and what a track's CSV, angles and BVH write."""

    frame_index: int
    person_index: int
    score: float
    bbox: list[float]
    keypoints2d: list[list[float]] | None
    keypoints3d: list[list[float]] | None = None
    timestamp_s: float | None = None
    landmarks: dict | None = None
    root3d: list[float] | None = None
    extras: dict | None = None


@dataclass
class JobCounts:
    frames: int
    persons: int
    tracks: int
    persons_without_3d: int


@dataclass
class RangeProgress:
    """A split job's counts while its ranges run (owned frames only)."""

    frames_done: int
    frames_failed: int
    persons: int

    @property
    def frames_seen(self) -> int:
        return self.frames_done + self.frames_failed
