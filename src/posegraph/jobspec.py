"""The PoseJob spec: one video → 3D poses in the results store, run by the operator as a batch/v1 Job.

The operator validates PoseJobs with these models, and the PoseJob CRD's schema is generated from
them (``posegraph.operator.crds``), so what the API server accepts and what the operator runs are
one list of fields. Light on purpose: pydantic and posegraph's names only (the operator's pod has
no torch, no KServe).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .graph.spec import Resources, Strict
from .jobs.options import FRAME_FORMATS, VIDEO_FORMATS, JobOptions
from .names import (
    POSEJOB_FAILED,
    POSEJOB_PARTIAL,
    POSEJOB_PENDING,
    POSEJOB_RUNNING,
    POSEJOB_SUCCEEDED,
)
from .uri import is_remote_video_uri

DEFAULT_RUNNER_SERVICE_ACCOUNT = "posegraph-job-runner"
# Each runner pod holds up to 4 PostgreSQL connections (jobs.store.PostgresStore's pool): 16 pods
# stay at 64 of PostgreSQL's default max_connections of 100, leaving room for the UI and others.
MAX_POSEJOB_PARALLELISM = 16


class InvalidPoseJob(ValueError):
    pass


class PipelineRef(Strict):
    name: str = Field(..., description="a PosePipeline in this namespace")


class Output(Strict):
    prefix: str = Field(..., description="where overlay.webm, pose3d.png and frames.jsonl go (s3://bucket/prefix/)")

    @field_validator("prefix")
    @classmethod
    def _s3(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise PydanticCustomError("posejob_output", "outputs go to an s3:// prefix")
        return value


class ResultsSecretRef(Strict):
    name: str
    dsnKey: str = "dsn"
    passwordKey: str = "password"


class Results(Strict):
    secretRef: ResultsSecretRef = Field(
        ..., description="a Secret with the results DSN and the database password (never in the spec)")


_RUNNER = JobOptions(video="")  # the runner's defaults (posegraph job run), stated once there


class Options(Strict):
    """The runner's options a PoseJob may set (posegraph.jobs.options: the same names, snake_case)."""
    stride: int = Field(_RUNNER.stride, ge=1)
    batch: int = Field(_RUNNER.batch, ge=1)
    maxFrames: int | None = Field(_RUNNER.max_frames, ge=1)
    render: bool = _RUNNER.render
    videoFormat: Literal[VIDEO_FORMATS] = _RUNNER.video_format
    inFlight: int = Field(_RUNNER.in_flight, ge=1, le=16, description="graph requests at once")
    frameFormat: Literal[FRAME_FORMATS] = Field(
        _RUNNER.frame_format, description="how frames travel to the graph: jpeg, or png (lossless, ~10x the bytes)")
    detectEvery: int | None = Field(_RUNNER.detect_every, ge=1, le=100, description=(
        "the detector on every N-th frame only; between, boxes come from the last keypoints "
        "(default: the runner's profile, every frame)"))
    focalPx: float | None = Field(_RUNNER.focal_px, ge=1, le=100000, description=(
        "the camera's focal length in pixels, for where each person is in space (default: the video's "
        "metadata, else the image diagonal); or fov"))
    fov: float | None = Field(_RUNNER.fov, ge=1, le=179, description=(
        "the camera's horizontal field of view in degrees (instead of focalPx)"))

    @model_validator(mode="after")
    def _one_focal_length(self) -> "Options":
        if self.focalPx is not None and self.fov is not None:
            raise ValueError("focalPx and fov both give the focal length: use one")
        return self


class PoseJobSpec(Strict):
    video: str = Field(..., min_length=1, description="the video, s3://bucket/key or https://…")
    pipelineRef: PipelineRef
    output: Output
    results: Results
    options: Options = Options()
    resources: Resources | None = None
    parallelism: int = Field(1, ge=1, le=MAX_POSEJOB_PARALLELISM, description=(
        "pods working on the video at once, each on one contiguous range of frames (an Indexed Job); "
        "tracks are stitched across the ranges and lifted whole by the pod that finishes last"))
    backoffLimit: int = Field(2, ge=0, description="retries of a failed pod (of each range's pod when split)")
    ttlSecondsAfterFinished: int = Field(86400, ge=0)
    activeDeadlineSeconds: int | None = Field(None, ge=1)
    serviceAccountName: str | None = Field(None, description="identity for S3 (IRSA) and for reporting progress; "
                                                             f"default {DEFAULT_RUNNER_SERVICE_ACCOUNT}")

    @field_validator("video")
    @classmethod
    def _readable(cls, value: str) -> str:
        if not is_remote_video_uri(value):  # the one check the UI makes too
            raise PydanticCustomError("posejob_video", "a PoseJob reads videos from s3:// or https:// URIs")
        return value


# The checks whose message names the value (the others name the field only).
_QUOTE_INPUT = {"posejob_video", "posejob_output"}


def parse_posejob(spec: dict[str, Any]) -> PoseJobSpec:
    """The spec as a model, or InvalidPoseJob naming the first problem (``spec.<field>: why``)."""
    try:
        return PoseJobSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(["spec", *map(str, first["loc"])])
        if first["type"] in _QUOTE_INPUT:
            where += f" {first['input']!r}"
        raise InvalidPoseJob(f"{where}: {first['msg']}") from None


# ---- status: written by the operator and the runner; a model only to generate the CRD's schema ---------

_PHASES = (POSEJOB_PENDING, POSEJOB_RUNNING, POSEJOB_SUCCEEDED, POSEJOB_PARTIAL, POSEJOB_FAILED)


class PoseJobStatus(BaseModel):
    # Open: kopf and kubectl may add fields the operator does not know.
    model_config = ConfigDict(extra="allow")

    phase: str | None = Field(None, description=", ".join(_PHASES[:-1]) + f" or {_PHASES[-1]}")
    message: str | None = None
    observedGeneration: int | None = Field(None, json_schema_extra={"format": "int64"})
    jobName: str | None = None
    graphURL: str | None = None
    frames: str | None = None
    startTime: str | None = None
    completionTime: str | None = None
    outputs: dict[str, str] | None = None
    progress: dict[str, Any] | None = Field(None, description="written by the runner while it works")
