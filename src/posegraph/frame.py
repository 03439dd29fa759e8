"""The frame document: the one contract every stage, runtime, graph, job and the operator speak.

A frame document describes one image (or one video frame) and the persons found
in it. Stages never replace a document: each reads the fields it needs and adds
its own (detect → ``persons[*].bbox/score``, pose2d → ``persons[*].keypoints2d``,
lift3d → ``persons[*].keypoints3d``), and records itself under ``stages``.
Unknown fields are kept, so a client may attach its own metadata and get it back.

A track document carries T frames of one person; lift3d lifts the whole track
at once (temporal models need the sequence), which is what the video path uses.

Over KServe's v1 protocol a batch is ``{"instances": [doc, ...]}`` in and
``{"predictions": [doc, ...]}`` out. JSON Schemas: ``docs/schemas/``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .errors import BadInput
from .keypoints import COCO17, H36M17  # noqa: F401 - the joint names are part of the frame contract

FRAME_SCHEMA = "posegraph/frame/v1"
TRACK_SCHEMA = "posegraph/track/v1"


def _check_bbox(value: list[float]) -> list[float]:
    if len(value) != 4 or not np.isfinite(np.asarray(value, dtype=np.float64)).all():
        raise ValueError("bbox must be 4 finite numbers: x1, y1, x2, y2")
    if not (value[2] > value[0] and value[3] > value[1]):
        raise ValueError("bbox must have x2 > x1 and y2 > y1")
    return value


def _keypoints_checker(name: str):
    def check(value: list[list[float]]) -> list[list[float]]:
        if len(value) != 17 or any(len(p) != 3 for p in value):
            raise ValueError(f"{name} must be 17 points of 3 numbers each")
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ValueError(f"{name} must be finite numbers")
        return value

    return check


BBox = Annotated[list[float], AfterValidator(_check_bbox), Field(description="x1, y1, x2, y2 in image pixels")]
# [x, y, score] per joint in image pixels, COCO-17 order.
Keypoints2D = Annotated[
    list[list[float]],
    AfterValidator(_keypoints_checker("keypoints2d")),
    Field(description=f"17 × [x, y, score], image pixels, COCO order: {', '.join(COCO17)}"),
]
# [x, y, z] per joint in metres, camera axes (x right, y down, z away), root-relative, Human3.6M-17 order.
Keypoints3D = Annotated[
    list[list[float]],
    AfterValidator(_keypoints_checker("keypoints3d")),
    Field(description=f"17 × [x, y, z], metres, root-relative, Human3.6M order: {', '.join(H36M17)}"),
]


class _Open(BaseModel):
    # Keep fields we do not know: stages add only their own and pass the rest through.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ImageRef(_Open):
    """The pixels: inline (base64 JPEG/PNG) or by reference (s3://, https://, file://)."""

    data: str | None = Field(None, description="base64-encoded JPEG or PNG bytes")
    uri: str | None = Field(None, description="s3://, https:// or file:// location of a JPEG/PNG")
    format: Literal["jpeg", "png"] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.data is None) == (self.uri is None):
            raise ValueError("image needs exactly one of 'data' (base64) or 'uri'")
        return self


class StageRecord(_Open):
    """What ran: lets a client see the model and, loudly, whether its weights were random."""

    model: str
    random_weights: bool = False
    ms: float | None = Field(None, description="stage time for this document's batch, milliseconds")


class Landmarks(_Open):
    """BlazePose's 33 landmarks (pose2d with a blazepose model), beyond the 17 COCO keypoints."""

    image: list[list[float]] = Field(..., min_length=33, max_length=33, description=(
        "33 × [x, y, z, visibility]: image pixels, z on the scale of x (MediaPipe's), visibility 0-1"))
    world: list[list[float]] = Field(..., min_length=33, max_length=33, description=(
        "33 × [x, y, z]: metres, centred between the hips, camera axes (x right, y down, z away)"))


def _check_root(value: list[float]) -> list[float]:
    if len(value) != 3 or not np.isfinite(np.asarray(value, dtype=np.float64)).all():
        raise ValueError("root3d must be 3 finite numbers: x, y, z")
    return value


# Where the pelvis is: [x, y, z] metres in camera axes (lift3d, posegraph.motion.root).
Root3D = Annotated[list[float], AfterValidator(_check_root), Field(description=(
    "the pelvis in camera space: x, y, z metres (camera axes: x right, y down, z away), fitted from "
    "the 2D keypoints and the root-relative 3D under a pinhole camera (see camera)"))]


class Camera(_Open):
    """What lift3d needs to know of the camera to place a person in space."""

    focal_px: float = Field(..., gt=0, description=(
        "focal length in pixels (principal point: the image centre). Absent: the image diagonal, "
        "a 53° diagonal field of view (posegraph.motion.root)"))


Roi = Annotated[list[float], Field(min_length=4, max_length=4, description=(
    "a rotated square around the whole body: centre x, y and side in image pixels, rotation in radians"))]


class Person(_Open):
    bbox: BBox
    score: float = Field(..., description="detection score")
    track_id: int | None = None
    roi: Roi | None = Field(None, description="BlazePose's detector: where its pose2d crops (else from bbox)")
    keypoints2d: Keypoints2D | None = None
    landmarks: Landmarks | None = None
    keypoints3d: Keypoints3D | None = None
    root3d: Root3D | None = None


class FrameDocument(_Open):
    schema_: Literal["posegraph/frame/v1"] = Field(FRAME_SCHEMA, alias="schema")
    image: ImageRef | None = None
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)
    frame_index: int | None = Field(None, ge=0)
    timestamp_s: float | None = None
    persons: list[Person] | None = Field(None, description="absent: not detected yet; []: nobody found")
    camera: Camera | None = None
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    keep_image: bool | None = Field(None, description=(
        "true: the inline image comes back in the answer. By default pose2d, the last stage that reads "
        "the pixels, drops inline image bytes, so they do not travel on through lift3d and back "
        "(an image.uri, a few bytes, is kept)"))
    per_track_3d: bool | None = Field(None, description=(
        "true: this frame's 3D comes from lifting its persons' whole tracks (a video job does that), "
        "so lift3d leaves it alone and the graph ends after pose2d (its lift3d step's condition)"))

    # Decoded BGR pixels, kept in-process so stages do not decode twice. Never serialised.
    _pixels: np.ndarray | None = PrivateAttr(default=None)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, **fields: Any) -> "FrameDocument":
        doc = cls(width=int(pixels.shape[1]), height=int(pixels.shape[0]), **fields)
        doc._pixels = pixels
        return doc

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class TrackFrame(_Open):
    frame_index: int = Field(..., ge=0)
    bbox: BBox
    score: float | None = None
    keypoints2d: Keypoints2D
    landmarks: Landmarks | None = None
    keypoints3d: Keypoints3D | None = None
    root3d: Root3D | None = None


class TrackDocument(_Open):
    """T consecutive frames of one person, for lift3d."""

    schema_: Literal["posegraph/track/v1"] = Field(TRACK_SCHEMA, alias="schema")
    track_id: int
    width: int = Field(..., gt=0)
    height: int = Field(..., gt=0)
    frames: list[TrackFrame] = Field(..., min_length=1)
    camera: Camera | None = None
    fps: float | None = Field(None, gt=0, description=(
        "frames per second of frame_index (a video's rate over the job's stride): what a whole-track "
        "stage measures time by"))
    lift_frames: list[int] | None = Field(None, max_length=16, description=(
        "frame_index values of the frames to lift; the others are context, the 2D a temporal model "
        "sees around them. Absent: every frame. `posegraph live` sends a track's recent frames and "
        "asks for one, so a frame costs one window of the model instead of the whole track"))
    stages: dict[str, StageRecord] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lift_frames_are_frames(self) -> "TrackDocument":
        if self.lift_frames is not None:
            have = {f.frame_index for f in self.frames}
            strangers = [i for i in self.lift_frames if i not in have]
            if strangers:
                raise ValueError(f"lift_frames names frames the track does not hold: {strangers[:3]}")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Document = FrameDocument | TrackDocument


# How deep a client's own fields may nest. They are kept and sent back, and pydantic refuses to
# serialise past 255 levels: a field nested 300 deep passed validation, ran the stage, then failed
# the whole batch with a 500 (tests/test_hostile.py). A document's own fields nest 3 levels.
MAX_EXTRA_DEPTH = 32


def _nested_deeper(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _too_deep_extra(doc: Document) -> str | None:
    """The first client field nested deeper than MAX_EXTRA_DEPTH. Only the extras are walked: the
    known fields have fixed shapes, and walking a 243-frame track whole took as long as validating it."""
    parts: list[tuple[str, BaseModel]] = [("", doc), *((f"stages.{k}.", v) for k, v in doc.stages.items())]
    if isinstance(doc, FrameDocument):
        parts += [("image.", doc.image)] if doc.image is not None else []
        parts += [(f"persons.{i}.", p) for i, p in enumerate(doc.persons or ())]
    else:
        parts += [(f"frames.{i}.", f) for i, f in enumerate(doc.frames)]
    for prefix, model in parts:
        for key, value in (model.model_extra or {}).items():
            if isinstance(value, (dict, list)) and _nested_deeper(value, MAX_EXTRA_DEPTH):
                return prefix + key
    return None


def parse_document(payload: Any, *, where: str = "document") -> Document:
    """Validate one JSON object as a frame or track document (by its ``schema`` field)."""
    from pydantic import ValidationError

    if not isinstance(payload, dict):
        raise BadInput(f"{where} must be a JSON object, got {type(payload).__name__}")
    kind = payload.get("schema", FRAME_SCHEMA)
    # Not a string (a list or an object) was a TypeError from the lookup below, a 500.
    model = {FRAME_SCHEMA: FrameDocument, TRACK_SCHEMA: TrackDocument}.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadInput(f"{where}: unknown schema {kind!r}; expected {FRAME_SCHEMA!r} or {TRACK_SCHEMA!r}")
    try:
        doc = model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise BadInput(f"{where}: {loc}: {first['msg']}{more}") from None
    deep = _too_deep_extra(doc)
    if deep is not None:
        raise BadInput(f"{where}: {deep} is nested more than {MAX_EXTRA_DEPTH} levels deep")
    return doc


def json_schemas() -> dict[str, dict]:
    return {
        "frame-document.schema.json": FrameDocument.model_json_schema(by_alias=True),
        "track-document.schema.json": TrackDocument.model_json_schema(by_alias=True),
    }
