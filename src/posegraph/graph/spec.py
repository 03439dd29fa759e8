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

STAGE_NAMES = ("detect", "pose2d", "lift3d")
API_VERSION = "posegraph.io/v1alpha1"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _Strict(BaseModel):
    # A typo must be an error: the Kubernetes API server would drop an unknown field silently.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SecretKeyRef(_Strict):
    name: str
    key: str = "token"


class StageDeployment(_Strict):
    storageUri: str = Field(..., description="where the archive layout lives: s3://…/<stage>/, a path, file://")
    modelName: str | None = Field(None, description="model name inside the archive (default: the stage name)")
    runtime: Literal["torchserve", "kserve"] | None = Field(None, description="overrides spec.runtime")
    minReplicas: int = Field(1, ge=0)
    maxReplicas: int = Field(1, ge=1)
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per replica; adds the GPU toleration")
    resources: dict[str, dict[str, str | int]] = Field(
        default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}})
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)
    serviceAccountName: str | None = None

    @field_validator("resources")
    @classmethod
    def _resources(cls, value):
        unknown = set(value) - {"requests", "limits", "claims"}
        if unknown:
            raise ValueError(f"resources may have requests/limits, not {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _replicas(self):
        if self.maxReplicas < self.minReplicas:
            raise ValueError("maxReplicas must be ≥ minReplicas")
        return self


class RouterTimeouts(_Strict):
    """KServe's InferenceGraph routerTimeouts, in seconds. ``serviceClient`` bounds each step call."""

    serverRead: int | None = Field(None, ge=1)
    serverWrite: int | None = Field(None, ge=1)
    serverIdle: int | None = Field(None, ge=1)
    serviceClient: int | None = Field(60, ge=1)


class GraphSettings(_Strict):
    routerTimeouts: RouterTimeouts = RouterTimeouts()
    minReplicas: int = Field(1, ge=0)
    maxReplicas: int = Field(1, ge=1)
    # Headers the *local* router forwards to every step (regular expressions). In a cluster the
    # same list lives in KServe's inferenceservice-config ConfigMap (router headers propagate).
    headersToPropagate: list[str] = Field(default_factory=lambda: ["Authorization", "X-Request-Id", "Traceparent"])


class ServingRuntimes(_Strict):
    """(Cluster)ServingRuntime names per runtime; the chart installs these four. A stage with
    ``gpus`` gets the GPU variant (the CUDA image), the others the CPU image."""

    torchserve: str = "posegraph-torchserve"
    kserve: str = "posegraph-kserve"
    torchserveGPU: str = "posegraph-torchserve-gpu"
    kserveGPU: str = "posegraph-kserve-gpu"

    def name_for(self, runtime: str, gpus: int) -> str:
        return getattr(self, f"{runtime}GPU" if gpus else runtime)


class PipelineSpec(_Strict):
    runtime: Literal["torchserve", "kserve"] = "torchserve"
    servingRuntimes: ServingRuntimes = ServingRuntimes()
    # KServe >= 0.16 names: Standard (plain Deployments) and Knative; RawDeployment and Serverless
    # are their older names, still accepted by KServe (and by KServe releases before the rename).
    deploymentMode: Literal["RawDeployment", "Serverless", "Standard", "Knative"] | None = None
    authSecretRef: SecretKeyRef | None = Field(None, description="bearer token for the stage servers")
    stages: dict[str, StageDeployment]
    graph: GraphSettings = GraphSettings()

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

    apiVersion: Literal["posegraph.io/v1alpha1"] = API_VERSION
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
        return f"{self.name}-{stage}"

    def model_name(self, stage: str) -> str:
        return self.spec.stages[stage].modelName or stage

    def runtime_of(self, stage: str) -> str:
        return self.spec.stages[stage].runtime or self.spec.runtime


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
