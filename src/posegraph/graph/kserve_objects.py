"""PosePipeline → KServe objects, built with the KServe SDK types.

One InferenceService per stage (model format ``pytorch``, protocol v1, the archive's
``storageUri``, resources, GPU scheduling), and one InferenceGraph whose ``root`` is a Sequence
detect → pose2d → lift3d. Each step uses ``data: $response``, ``mapPredictionsToInstances: true``
and ``dependency: Hard``, and the graph sets router timeouts.

The operator reconciles these same objects. Nothing else writes them, so the cluster and
``posegraph graph render`` cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from .spec import STAGE_NAMES, PosePipeline

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def labels(pipeline: PosePipeline, stage: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/part-of": "posegraph",
        "app.kubernetes.io/managed-by": "posegraph",
        "posegraph.io/pipeline": pipeline.name,
    }
    if stage:
        out["posegraph.io/stage"] = stage
    return out


def _annotations(pipeline: PosePipeline) -> dict[str, str] | None:
    if pipeline.spec.deploymentMode:
        return {"serving.kserve.io/deploymentMode": pipeline.spec.deploymentMode}
    return None


def _resources(stage_spec) -> dict[str, dict[str, str | int]]:
    resources = {k: dict(v) for k, v in stage_spec.resources.items()}
    if stage_spec.gpus:
        # Extended resources must be equal in requests and limits.
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(stage_spec.gpus)
        resources.setdefault("requests", {})[GPU_RESOURCE] = str(stage_spec.gpus)
    return {k: {name: str(q) for name, q in v.items()} for k, v in resources.items()}


def inference_service(pipeline: PosePipeline, stage: str):
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )
    from kubernetes.client import (
        V1EnvVar,
        V1EnvVarSource,
        V1ObjectMeta,
        V1ResourceRequirements,
        V1SecretKeySelector,
        V1Toleration,
    )

    s = pipeline.spec.stages[stage]
    runtime = pipeline.runtime_of(stage)
    env = [V1EnvVar(**_snake(e)) for e in s.env]
    if pipeline.spec.authSecretRef:
        ref = pipeline.spec.authSecretRef
        env.append(V1EnvVar(name="POSEGRAPH_AUTH_TOKEN", value_from=V1EnvVarSource(
            secret_key_ref=V1SecretKeySelector(name=ref.name, key=ref.key))))
    tolerations = [V1Toleration(**_snake(t)) for t in s.tolerations]
    if s.gpus and not any(t.key == GPU_RESOURCE for t in tolerations):
        tolerations.append(V1Toleration(**GPU_TOLERATION))
    resources = _resources(s)
    model = V1beta1ModelSpec(
        name="kserve-container",
        model_format=V1beta1ModelFormat(name="pytorch"),
        protocol_version="v1",
        runtime=pipeline.spec.servingRuntimes.name_for(runtime, s.gpus),
        storage_uri=s.storageUri,
        resources=V1ResourceRequirements(requests=resources.get("requests"), limits=resources.get("limits")),
        env=env or None,
    )
    predictor = V1beta1PredictorSpec(
        model=model,
        min_replicas=s.minReplicas,
        max_replicas=s.maxReplicas,
        node_selector=s.nodeSelector or None,
        tolerations=tolerations or None,
        service_account_name=s.serviceAccountName,
    )
    return V1beta1InferenceService(
        api_version="serving.kserve.io/v1beta1",
        kind="InferenceService",
        metadata=V1ObjectMeta(name=pipeline.isvc_name(stage), namespace=pipeline.metadata.namespace,
                              labels=labels(pipeline, stage), annotations=_annotations(pipeline)),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def step_target(pipeline: PosePipeline, stage: str) -> dict[str, str]:
    """KServe calls ``/v1/models/<InferenceService name>:predict`` for a ``serviceName`` step. When
    the archive serves another model name, the step names the URL itself, so a mismatch cannot
    become a 404 on the first request in the cluster."""
    isvc, model = pipeline.isvc_name(stage), pipeline.model_name(stage)
    if model == isvc:
        return {"service_name": isvc}
    host = f"{isvc}-predictor.{pipeline.namespace}.svc.cluster.local"
    return {"service_url": f"http://{host}/v1/models/{model}:predict"}


def inference_graph(pipeline: PosePipeline):
    from kserve import (
        V1alpha1InferenceGraph,
        V1alpha1InferenceGraphSpec,
        V1alpha1InferenceRouter,
        V1alpha1InferenceStep,
    )
    from kserve.models import V1alpha1InfereceGraphRouterTimeouts
    from kubernetes.client import V1ObjectMeta

    steps = [
        V1alpha1InferenceStep(name=stage, data="$response", map_predictions_to_instances=True, dependency="Hard",
                              **step_target(pipeline, stage))
        for stage in STAGE_NAMES
    ]
    g = pipeline.spec.graph
    t = g.routerTimeouts
    return V1alpha1InferenceGraph(
        api_version="serving.kserve.io/v1alpha1",
        kind="InferenceGraph",
        metadata=V1ObjectMeta(name=pipeline.name, namespace=pipeline.metadata.namespace,
                              labels=labels(pipeline), annotations=_annotations(pipeline)),
        spec=V1alpha1InferenceGraphSpec(
            nodes={"root": V1alpha1InferenceRouter(router_type="Sequence", steps=steps)},
            router_timeouts=V1alpha1InfereceGraphRouterTimeouts(
                server_read=t.serverRead, server_write=t.serverWrite, server_idle=t.serverIdle,
                service_client=t.serviceClient),
            min_replicas=g.minReplicas,
            max_replicas=g.maxReplicas,
        ),
    )


def _snake(d: dict[str, Any]) -> dict[str, Any]:
    """camelCase manifest keys → the kubernetes client's snake_case constructor arguments."""
    import re

    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in d.items()}


def to_dict(obj) -> dict[str, Any]:
    from kserve import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def render(pipeline: PosePipeline) -> list[dict[str, Any]]:
    """The KServe objects of a pipeline as plain manifests (camelCase dicts)."""
    return [to_dict(inference_service(pipeline, s)) for s in STAGE_NAMES] + [to_dict(inference_graph(pipeline))]


def render_yaml(pipeline: PosePipeline) -> str:
    import yaml

    return yaml.safe_dump_all(render(pipeline), sort_keys=False)
