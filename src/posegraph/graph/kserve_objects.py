"""PosePipeline → KServe objects, as plain manifests (camelCase dicts).

One InferenceService per stage (model format ``pytorch``, protocol v1, the archive's
``storageUri``, resources, GPU scheduling), and one InferenceGraph whose ``root`` is a Sequence
detect → pose2d → lift3d, then a user's stages (``extraStages``) in order. Each step uses ``data: $response``, ``mapPredictionsToInstances: true``
and ``dependency: Hard``, and the graph sets router timeouts.

The operator reconciles these same objects. Nothing else writes them, so the cluster and
``posegraph graph render`` cannot drift apart.

Plain dicts, not the ``kserve`` SDK's types: importing ``kserve`` loads KServe's model server
(FastAPI, gRPC) into the operator's pod. The keys come in the order the SDK serialized them
(alphabetical, as in KServe's OpenAPI types), so the rendered YAML did not change with the SDK's
removal. tests/test_kserve_objects.py validates them against KServe's CRDs.
"""

from __future__ import annotations

from typing import Any

from ..fetchpolicy import ENV
from ..names import (
    INFERENCEGRAPH_VERSION,
    INFERENCESERVICE_VERSION,
    KSERVE_GROUP,
    LABEL_PIPELINE,
    LABEL_STAGE,
)
from .spec import PosePipeline, StageDeployment

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"effect": "NoSchedule", "key": GPU_RESOURCE, "operator": "Exists"}
# The operator watches the children by this label (posegraph.operator.handlers).
MANAGED = {"app.kubernetes.io/managed-by": "posegraph"}


def labels(pipeline: PosePipeline, stage: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/part-of": "posegraph", **MANAGED, LABEL_PIPELINE: pipeline.name}
    if stage:
        out[LABEL_STAGE] = stage
    return out


def _metadata(pipeline: PosePipeline, name: str, stage: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if pipeline.spec.deploymentMode:
        meta["annotations"] = {f"{KSERVE_GROUP}/deploymentMode": pipeline.spec.deploymentMode}
    meta["labels"] = labels(pipeline, stage)
    meta["name"] = name
    if pipeline.metadata.namespace is not None:
        meta["namespace"] = pipeline.metadata.namespace
    return meta


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that are set (None is absent), in the order given."""
    return {key: value for key, value in fields.items() if value is not None}


def _resources(stage_spec: StageDeployment) -> dict[str, dict[str, str]]:
    resources = {k: dict(v) for k, v in stage_spec.resources.model_dump(exclude_none=True).items()}
    if stage_spec.gpus:
        # Extended resources must be equal in requests and limits.
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(stage_spec.gpus)
        resources.setdefault("requests", {})[GPU_RESOURCE] = str(stage_spec.gpus)
    return {k: {name: str(q) for name, q in resources[k].items()} for k in ("limits", "requests") if k in resources}


def _sorted(value: Any) -> Any:
    """Keys in alphabetical order at every level: how Kubernetes' own types serialize a valueFrom."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value) if value[key] is not None}
    return value


def _env(pipeline: PosePipeline, stage_spec: StageDeployment) -> list[dict[str, Any]]:
    env = [_present(name=e.name, value=e.value, valueFrom=_sorted(e.valueFrom)) for e in stage_spec.env]
    if pipeline.spec.authSecretRef:
        ref = pipeline.spec.authSecretRef
        env.append({"name": "POSEGRAPH_AUTH_TOKEN",
                    "valueFrom": {"secretKeyRef": {"key": ref.key, "name": ref.name}}})
    if pipeline.spec.fetchAllow:

        env.append({"name": ENV, "value": ",".join(pipeline.spec.fetchAllow)})
    return env


def _tolerations(stage_spec: StageDeployment) -> list[dict[str, Any]]:
    tolerations = [_present(effect=t.effect, key=t.key, operator=t.operator, tolerationSeconds=t.tolerationSeconds,
                            value=t.value) for t in stage_spec.tolerations]
    if stage_spec.gpus and not any(t.key == GPU_RESOURCE for t in stage_spec.tolerations):
        tolerations.append(dict(GPU_TOLERATION))
    return tolerations


def inference_service(pipeline: PosePipeline, stage: str) -> dict[str, Any]:
    s = pipeline.deployment(stage)
    runtime = pipeline.runtime_of(stage)
    model = _present(
        env=_env(pipeline, s) or None,
        modelFormat={"name": "pytorch"},
        # No "name": KServe's webhook refuses it in a standard predictor ("the 'name' field is not
        # allowed", v0.20, tests/test_kserve_controller.py); the container is kserve-container anyway.
        protocolVersion="v1",
        resources=_resources(s),
        runtime=pipeline.spec.servingRuntimes.name_for(runtime, s.gpus),
        storageUri=s.storageUri,
    )
    predictor = _present(
        # The pod's own settings (a predictor is a PodSpec too): KServe's storage initializer, an
        # init container with no seccomp profile of its own, makes PodSecurity "restricted" refuse
        # the pod unless the pod sets one (seen on the first real node, KServe v0.20); and no
        # Service environment variables, whose POSEGRAPH_*_PORT=tcp://… would shadow settings.
        enableServiceLinks=False,
        maxReplicas=s.maxReplicas,
        minReplicas=s.minReplicas,
        model=model,
        scaleMetric=s.scaleMetric,
        scaleTarget=s.scaleTarget,
        nodeSelector=dict(s.nodeSelector) or None,
        securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        serviceAccountName=s.serviceAccountName,
        tolerations=_tolerations(s) or None,
    )
    return {
        "apiVersion": f"{KSERVE_GROUP}/{INFERENCESERVICE_VERSION}",
        "kind": "InferenceService",
        "metadata": _metadata(pipeline, pipeline.isvc_name(stage), stage),
        "spec": {"predictor": predictor},
    }


def step_target(pipeline: PosePipeline, stage: str) -> dict[str, str]:
    """KServe calls ``/v1/models/<InferenceService name>:predict`` for a ``serviceName`` step. When
    the archive serves another model name, the step names the URL itself, so a mismatch cannot
    become a 404 on the first request in the cluster."""
    isvc, model = pipeline.isvc_name(stage), pipeline.model_name(stage)
    if model == isvc:
        return {"serviceName": isvc}
    host = f"{isvc}-predictor.{pipeline.namespace}.svc.cluster.local"
    return {"serviceUrl": f"http://{host}/v1/models/{model}:predict"}


# lift3d runs unless every frame of the batch says its 3D comes per track (FrameDocument.per_track_3d,
# set by video jobs): KServe's router ends a Sequence with the previous response when a step's GJSON
# condition does not exist in it. Measured: per-frame lifting was 20-41 of a served job's 70-190 CPU ms
# per frame, thrown away when its tracks are lifted (bench/video.py, 1 and 4 persons, 2026-12-01).
LIFT3D_CONDITION = "predictions.#(per_track_3d!=~true)"


def inference_graph(pipeline: PosePipeline) -> dict[str, Any]:
    # With a user's stages after lift3d the graph must not end there: lift3d passes a video job's
    # frames through untouched instead (Lift3dStage.accepts), at the cost of that round trip.
    ends_early = not pipeline.spec.extraStages
    steps = [{**({"condition": LIFT3D_CONDITION} if stage == "lift3d" and ends_early else {}),  # first: SDK order
              "data": "$response", "dependency": "Hard", "mapPredictionsToInstances": True, "name": stage,
              **step_target(pipeline, stage)} for stage in pipeline.stage_names()]
    g = pipeline.spec.graph
    t = g.routerTimeouts
    return {
        "apiVersion": f"{KSERVE_GROUP}/{INFERENCEGRAPH_VERSION}",
        "kind": "InferenceGraph",
        "metadata": _metadata(pipeline, pipeline.name),
        "spec": _present(
            maxReplicas=g.maxReplicas,
            minReplicas=g.minReplicas,
            nodes={"root": {"routerType": "Sequence", "steps": steps}},
            routerTimeouts=_present(serverIdle=t.serverIdle, serverRead=t.serverRead, serverWrite=t.serverWrite,
                                    serviceClient=t.serviceClient),
        ),
    }


def to_dict(obj: dict[str, Any]) -> dict[str, Any]:
    """The objects are plain manifests already (kept for callers written against the SDK types)."""
    return obj


def render(pipeline: PosePipeline) -> list[dict[str, Any]]:
    """The KServe objects of a pipeline as plain manifests (camelCase dicts)."""
    return [inference_service(pipeline, s) for s in pipeline.stage_names()] + [inference_graph(pipeline)]


def render_yaml(pipeline: PosePipeline) -> str:
    import yaml

    return yaml.safe_dump_all(render(pipeline), sort_keys=False)
