"""The pipeline spec: one YAML document describing a served pipeline.

It is a ``PosePipeline`` manifest (``apiVersion: posegraph.io/v1alpha1``), the same object the
operator reconciles, so a file that works with ``posegraph up``/``graph render`` works with
``kubectl apply`` too::

    apiVersion: posegraph.io/v1alpha1
    kind: PosePipeline
    metadata: {name: demo, namespace: poses}
    spec:
      runtime: torchserve
      stages:
        detect: {storageUri: s3://models/demo/detect/}
        pose2d: {storageUri: s3://models/demo/pose2d/, gpus: 1}
        lift3d: {storageUri: s3://models/demo/lift3d/}
      extraStages:                       # a user's stages, after the built-in ones, in order
      - {name: form-judge, storageUri: s3://models/demo/form-judge/}
      graph:
        routerTimeouts: {serviceClient: 60}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UsageError
from ..fetchpolicy import FetchPolicy
from ..names import (
    API_GROUP_VERSION,
    POSEPIPELINE_DEGRADED,
    POSEPIPELINE_INVALID,
    POSEPIPELINE_PENDING,
    POSEPIPELINE_READY,
    RUNTIMES,
    STAGES,
    inference_service_name,
)

STAGE_NAMES = STAGES
API_VERSION = API_GROUP_VERSION
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
Runtime = Literal[RUNTIMES]  # type: ignore[valid-type]  # Literal of the shared tuple: one list of runtimes
# A Kubernetes quantity: "500m", "2Gi" or a plain number (the CRD says x-kubernetes-int-or-string).
Quantity = str | int
# The CRDs are generated from these models (posegraph.operator.crds): field descriptions, enums,
# bounds and required fields are what `kubectl explain` shows and what the API server enforces.


class Strict(BaseModel):
    # A typo must be an error: the Kubernetes API server would drop an unknown field silently.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretKeyRef(Strict):
    name: str
    key: str = "token"


class Resources(Strict):
    """Compute resources of a container: quantities per resource name (cpu, memory, …)."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class Toleration(Strict):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    tolerationSeconds: int | None = Field(None, json_schema_extra={"format": "int64"})


class EnvVar(Strict):
    """A container environment variable (core/v1 EnvVar): a value, or valueFrom a Secret, ConfigMap or field."""

    name: str
    value: str | None = None
    valueFrom: dict[str, Any] | None = None


def _default_stage_resources() -> Resources:
    return Resources(requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "4Gi"})


class StageDeployment(Strict):
    storageUri: str = Field(..., min_length=1, description="archive layout (posegraph models push), e.g. "
                                                          "s3://bucket/prefix/detect/, a path, file://")
    modelName: str | None = Field(None, description="model name inside the archive (default the stage name)")
    runtime: Runtime | None = Field(None, description="overrides spec.runtime")
    minReplicas: int = Field(1, ge=0, description="0: scale to zero when idle (Serverless/Knative mode only)")
    maxReplicas: int = Field(1, ge=1)
    scaleMetric: Literal["cpu", "memory", "concurrency", "rps"] | None = Field(
        None, description="what KServe's autoscaler follows between min and max replicas (concurrency/rps: "
                          "Serverless only; cpu/memory: an HPA in Standard/RawDeployment mode)")
    scaleTarget: int | None = Field(None, ge=1, description="the scaleMetric's target per replica (cpu/memory: "
                                                            "percent utilisation; concurrency: requests in flight)")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per replica (adds the GPU toleration)")
    resources: Resources = Field(default_factory=_default_stage_resources,
                                 description="requests and limits of the model server")
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    serviceAccountName: str | None = None

    @model_validator(mode="after")
    def _replicas(self):
        if self.maxReplicas < self.minReplicas:
            raise ValueError("maxReplicas must be ≥ minReplicas")
        if (self.scaleMetric is None) != (self.scaleTarget is None):
            raise ValueError("scaleMetric and scaleTarget go together")
        return self


class ExtraStage(StageDeployment):
    """A user's stage (posegraph.stages.user; its archive from ``posegraph models archive --stage-dir``),
    served like the built-in ones, run after them in the order listed."""

    name: str = Field(..., description="the stage's name (its archive's and its InferenceService's suffix): a DNS "
                                       "label, not detect, pose2d or lift3d")

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        if not _DNS_LABEL.match(value) or len(value) > 40:
            raise ValueError("must be a DNS label (lowercase letters, digits, '-') of at most 40 characters")
        if value in STAGE_NAMES:
            raise ValueError(f"{value!r} is a built-in stage: configure it under stages")
        return value


class RouterTimeouts(Strict):
    """KServe's InferenceGraph routerTimeouts, in seconds. ``serviceClient`` bounds each step call."""

    serverRead: int | None = Field(None, ge=1)
    serverWrite: int | None = Field(None, ge=1)
    serverIdle: int | None = Field(None, ge=1)
    serviceClient: int | None = Field(60, ge=1)


class GraphSettings(Strict):
    routerTimeouts: RouterTimeouts = Field(RouterTimeouts(), description="seconds; serviceClient bounds each step call")
    minReplicas: int = Field(1, ge=0)
    maxReplicas: int = Field(1, ge=1)
    # Headers the *local* router forwards to every step (regular expressions). In a cluster the
    # same list lives in KServe's inferenceservice-config ConfigMap (router headers propagate).
    headersToPropagate: list[str] = Field(default_factory=lambda: ["Authorization", "X-Request-Id", "Traceparent"])


class ServingRuntimes(Strict):
    """(Cluster)ServingRuntime names per runtime; the chart installs these four. A stage with
    ``gpus`` gets the GPU variant (the CUDA image), the others the CPU image."""

    torchserve: str = "posegraph-torchserve"
    kserve: str = "posegraph-kserve"
    torchserveGPU: str = "posegraph-torchserve-gpu"
    kserveGPU: str = "posegraph-kserve-gpu"

    def name_for(self, runtime: str, gpus: int) -> str:
        return getattr(self, f"{runtime}GPU" if gpus else runtime)


def _three_stages_schema(schema: dict[str, Any]) -> None:
    # In the CRD, stages is an object with exactly the three stages (the validator below, locally).
    stage = schema.pop("additionalProperties")
    schema["properties"] = {name: stage for name in STAGE_NAMES}
    schema["required"] = list(STAGE_NAMES)


class PipelineSpec(Strict):
    runtime: Runtime = Field("torchserve", description="stage server runtime (KServe ServingRuntime), unless a "
                                                       "stage overrides it")
    servingRuntimes: ServingRuntimes = Field(ServingRuntimes(), description="(Cluster)ServingRuntime name per "
                                             "runtime; stages with gpus use the GPU ones")
    # KServe >= 0.16 names: Standard (plain Deployments) and Knative; RawDeployment and Serverless
    # are their older names, still accepted by KServe (and by KServe releases before the rename).
    deploymentMode: Literal["RawDeployment", "Serverless", "Standard", "Knative"] | None = None
    authSecretRef: SecretKeyRef | None = Field(None, description="bearer token the stage servers require "
                                                                 "(POSEGRAPH_AUTH_TOKEN)")
    fetchAllow: list[str] = Field(default_factory=list, description=(
        "sources a request's image.uri may name (s3://bucket/prefix/, https://host[/path]); empty: the stage "
        "servers read inline image data only. Set as POSEGRAPH_FETCH_ALLOW on every stage (docs/serving.md)"))
    stages: dict[str, StageDeployment] = Field(..., json_schema_extra=_three_stages_schema)
    extraStages: list[ExtraStage] = Field(default_factory=list, description=(
        "a user's stages (posegraph models archive --stage-dir), each its own InferenceService, run after the "
        "built-in stages in this order (docs/write-a-stage.md)"))
    graph: GraphSettings = GraphSettings()

    @field_validator("fetchAllow")
    @classmethod
    def _fetch_sources(cls, value):
        FetchPolicy.parse(" ".join(value), origin="spec.fetchAllow")  # a bad entry fails the spec, not a pod
        return value

    @model_validator(mode="after")
    def _autoscaling_fits_the_mode(self):
        # Knative scales on requests and to zero; Standard/RawDeployment mode has an HPA on cpu or
        # memory and keeps at least one replica (KServe's docs, v0.20).
        knative = self.deploymentMode in ("Serverless", "Knative")
        for name, stage in [*(self.stages or {}).items(), *((e.name, e) for e in self.extraStages)]:
            if stage.minReplicas == 0 and not knative:
                raise ValueError(f"stages.{name}.minReplicas 0 (scale to zero) needs deploymentMode Serverless "
                                 "(Knative)")
            if stage.scaleMetric in ("concurrency", "rps") and not knative:
                raise ValueError(f"stages.{name}.scaleMetric {stage.scaleMetric} needs deploymentMode Serverless "
                                 "(Knative); Standard/RawDeployment scales on cpu or memory")
        return self

    @field_validator("extraStages")
    @classmethod
    def _distinct(cls, value):
        names = [e.name for e in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stage {twice[0]!r} is listed twice")
        return value

    @field_validator("stages")
    @classmethod
    def _three_stages(cls, value):
        if set(value) != set(STAGE_NAMES):
            missing = [s for s in STAGE_NAMES if s not in value]
            extra = [s for s in value if s not in STAGE_NAMES]
            raise ValueError(f"stages must be exactly {', '.join(STAGE_NAMES)}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        return {name: value[name] for name in STAGE_NAMES}


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns(cls, value):
        # Stage services are named <name>-<stage>; KServe adds "-predictor": keep it a DNS label.
        if not _DNS_LABEL.match(value) or len(value) > 40:
            raise ValueError("name must be a DNS label (lowercase letters, digits, '-') of at most 40 characters")
        return value


class PosePipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apiVersion: Literal[API_VERSION] = API_VERSION  # type: ignore[valid-type]
    kind: Literal["PosePipeline"] = "PosePipeline"
    metadata: Metadata
    spec: PipelineSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    def isvc_name(self, stage: str) -> str:
        return inference_service_name(self.name, stage)

    def stage_names(self) -> tuple[str, ...]:
        """Every stage in graph order: the built-in ones, then the user's (extraStages)."""
        return (*STAGE_NAMES, *(e.name for e in self.spec.extraStages))

    def deployment(self, stage: str) -> StageDeployment:
        if stage in self.spec.stages:
            return self.spec.stages[stage]
        for extra in self.spec.extraStages:
            if extra.name == stage:
                return extra
        raise KeyError(stage)

    def model_name(self, stage: str) -> str:
        return self.deployment(stage).modelName or stage

    def runtime_of(self, stage: str) -> str:
        return self.deployment(stage).runtime or self.spec.runtime


# ---- status: written by the operator; a model only to generate the CRD's status schema ----------------

class StageStatus(BaseModel):
    inferenceService: str | None = None
    ready: bool | None = None
    reason: str | None = None
    message: str | None = None
    url: str | None = None


class Condition(BaseModel):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


_PIPELINE_PHASES = (POSEPIPELINE_PENDING, POSEPIPELINE_READY, POSEPIPELINE_DEGRADED, POSEPIPELINE_INVALID)


class PipelineStatus(BaseModel):
    # Open: kopf and kubectl may add fields the operator does not know.
    model_config = ConfigDict(extra="allow")

    phase: str | None = Field(None, description=", ".join(_PIPELINE_PHASES[:-1]) + f" or {_PIPELINE_PHASES[-1]}")
    message: str | None = None
    observedGeneration: int | None = Field(None, json_schema_extra={"format": "int64"})
    readyStages: str | None = None
    graphURL: str | None = None
    stages: dict[str, StageStatus] | None = None
    conditions: list[Condition] | None = None


def _first_error(exc: ValidationError, where: str) -> UsageError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return UsageError(f"{where}: {loc}: {first['msg']}")


def parse_pipeline(data: dict[str, Any], where: str = "pipeline") -> PosePipeline:
    try:
        return PosePipeline.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where) from None


def load_pipeline(path: Path) -> PosePipeline:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"pipeline spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a PosePipeline mapping")
    return parse_pipeline(data, str(path))
