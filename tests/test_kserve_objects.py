"""PosePipeline → KServe objects as plain dicts (no kserve SDK): they validate against KServe's own
CRDs (v0.20.0, tests/data/kserve-crds, strictly: an unknown field is an error), keep the key order
the SDK wrote, and the operator imports nothing heavy to make them."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import k8s_schema
import pytest
import yaml

from posegraph.graph.kserve_objects import inference_graph, render, render_yaml, to_dict
from posegraph.graph.spec import parse_pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted([REPO / "examples" / "pipeline.yaml", *(REPO / "operators" / "examples").glob("posepipeline*.yaml")])


def everything() -> dict:
    """A pipeline using every field that reaches a KServe object."""
    data = yaml.safe_load((REPO / "operators" / "examples" / "posepipeline-gpu.yaml").read_text())
    data["metadata"]["namespace"] = "poses"
    data["spec"].update(runtime="kserve", deploymentMode="Knative", authSecretRef={"name": "stage-token"})
    stages = data["spec"]["stages"]
    stages["detect"].update(
        modelName="yolo", runtime="torchserve", minReplicas=0, maxReplicas=5, serviceAccountName="stage",
        env=[{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "pose", "effect": "NoSchedule",
                      "tolerationSeconds": 30}],
        resources={"requests": {"cpu": 2, "memory": "1Gi"}, "limits": {"cpu": "4"}})
    stages["pose2d"].update(gpus=2, modelName="demo-gpu-pose2d", tolerations=[{"key": "nvidia.com/gpu",
                                                                               "operator": "Exists"}])
    stages["lift3d"].update(resources={})
    data["spec"]["graph"] = {"routerTimeouts": {"serverRead": 1, "serverWrite": 2, "serverIdle": 3, "serviceClient": 4},
                             "minReplicas": 0, "maxReplicas": 3}
    return data


def validate(manifest: dict) -> None:
    """Against KServe's CRD schema, strictly (k8s_schema: each CRD's validator built once)."""
    k8s_schema.validate(manifest)


CASES = {path.name: yaml.safe_load(path.read_text()) for path in EXAMPLES} | {"every-field": everything()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate_strictly_against_kserve_crds(case):
    manifests = render(parse_pipeline(copy.deepcopy(CASES[case])))
    assert [m["kind"] for m in manifests] == ["InferenceService"] * 3 + ["InferenceGraph"]
    for manifest in manifests:
        validate(manifest)  # KServe's CRD schema, unknown fields are errors


def test_the_gpu_example_gets_gpus_the_cuda_runtime_and_the_toleration():
    isvcs = render(parse_pipeline(CASES["posepipeline-gpu.yaml"]))[:3]
    for isvc in isvcs[1:]:  # pose2d, lift3d
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["runtime"] == "posegraph-torchserve-gpu"
        assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert predictor["model"]["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert predictor["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert isvcs[0]["spec"]["predictor"]["model"]["runtime"] == "posegraph-torchserve"
    assert "tolerations" not in isvcs[0]["spec"]["predictor"]


# What the kserve SDK serialized for everything(), byte for byte, less predictor.model.name (KServe v0.20's
# webhook refuses it, tests/test_kserve_controller.py): `posegraph graph render` and the
# operator's children did not change when the SDK went.
EVERY_FIELD_DETECT = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  annotations:
    serving.kserve.io/deploymentMode: Knative
  labels:
    app.kubernetes.io/part-of: posegraph
    app.kubernetes.io/managed-by: posegraph
    posegraph.io/pipeline: demo-gpu
    posegraph.io/stage: detect
  name: demo-gpu-detect
  namespace: poses
spec:
  predictor:
    enableServiceLinks: false
    maxReplicas: 5
    minReplicas: 0
    model:
      env:
      - name: A
        value: '1'
      - name: B
        valueFrom:
          secretKeyRef:
            key: k
            name: s
      - name: POSEGRAPH_AUTH_TOKEN
        valueFrom:
          secretKeyRef:
            key: token
            name: stage-token
      modelFormat:
        name: pytorch
      protocolVersion: v1
      resources:
        limits:
          cpu: '4'
        requests:
          cpu: '2'
          memory: 1Gi
      runtime: posegraph-torchserve
      storageUri: s3://posegraph-models/demo-gpu/detect/
    securityContext:
      runAsNonRoot: true
      seccompProfile:
        type: RuntimeDefault
    serviceAccountName: stage
    tolerations:
    - effect: NoSchedule
      key: dedicated
      operator: Equal
      tolerationSeconds: 30
      value: pose
"""

EVERY_FIELD_GRAPH = """\
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  annotations:
    serving.kserve.io/deploymentMode: Knative
  labels:
    app.kubernetes.io/part-of: posegraph
    app.kubernetes.io/managed-by: posegraph
    posegraph.io/pipeline: demo-gpu
  name: demo-gpu
  namespace: poses
spec:
  maxReplicas: 3
  minReplicas: 0
  nodes:
    root:
      routerType: Sequence
      steps:
      - data: $response
        dependency: Hard
        mapPredictionsToInstances: true
        name: detect
        serviceUrl: http://demo-gpu-detect-predictor.poses.svc.cluster.local/v1/models/yolo:predict
      - data: $response
        dependency: Hard
        mapPredictionsToInstances: true
        name: pose2d
        serviceName: demo-gpu-pose2d
      - condition: predictions.#(per_track_3d!=~true)
        data: $response
        dependency: Hard
        mapPredictionsToInstances: true
        name: lift3d
        serviceUrl: http://demo-gpu-lift3d-predictor.poses.svc.cluster.local/v1/models/lift3d:predict
  routerTimeouts:
    serverIdle: 3
    serverRead: 1
    serverWrite: 2
    serviceClient: 4
"""


def test_render_yaml_is_what_the_kserve_sdk_wrote():
    documents = render_yaml(parse_pipeline(everything())).split("---\n")
    assert documents[0] == EVERY_FIELD_DETECT
    assert documents[3] == EVERY_FIELD_GRAPH
    lift3d = yaml.safe_load(documents[2])["spec"]["predictor"]["model"]
    assert lift3d["resources"] == {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}


def test_to_dict_takes_the_plain_objects_as_they_are():
    graph = inference_graph(parse_pipeline(CASES["pipeline.yaml"]))
    assert to_dict(graph) is graph and isinstance(graph, dict)


@pytest.mark.parametrize("field,value", [
    ("tolerations", [{"key": "a", "operater": "Exists"}]),  # a typo: KServe's types refused it too
    ("env", [{"value": "no name"}]),
    ("resources", {"requests": {"cpu": "1"}, "claim": []}),
])
def test_bad_kubernetes_fields_are_spec_errors(field, value):
    from posegraph.errors import UsageError

    data = copy.deepcopy(CASES["posepipeline.yaml"])
    data["spec"]["stages"]["detect"][field] = value
    with pytest.raises(UsageError, match=f"stages.detect.{field}"):
        parse_pipeline(data)


def test_the_operator_imports_no_model_server():
    """The operator's pod needs kopf and the kubernetes client, not KServe's server, FastAPI, gRPC or torch."""
    code = """
import sys, yaml
import posegraph.operator.handlers
from posegraph.operator.resources import pipeline_children
body = yaml.safe_load(open("operators/examples/posepipeline.yaml"))
body["metadata"].update(namespace="poses", uid="0")
pipeline_children(body)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"kserve", "fastapi", "torch", "onnxruntime", "grpc"})
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_validation_would_see_a_field_kserve_does_not_have():
    isvc = render(parse_pipeline(CASES["posepipeline.yaml"]))[0]
    isvc["spec"]["predictor"]["model"]["storageUrl"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageUrl"):
        validate(isvc)


def _scaled(mode: str | None, **detect) -> dict:
    spec = {"stages": {s: {"storageUri": f"s3://m/p/{s}/"} for s in ("detect", "pose2d", "lift3d")}}
    spec["stages"]["detect"].update(detect)
    if mode:
        spec["deploymentMode"] = mode
    return {"metadata": {"name": "p"}, "spec": spec}


@pytest.mark.parametrize("mode,scaling", [
    ("RawDeployment", {"minReplicas": 1, "maxReplicas": 4, "scaleMetric": "cpu", "scaleTarget": 70}),
    ("Serverless", {"minReplicas": 0, "maxReplicas": 8, "scaleMetric": "concurrency", "scaleTarget": 4}),
])
def test_per_stage_autoscaling_is_rendered_as_kserve_reads_it(mode, scaling):
    from posegraph.graph.kserve_objects import inference_service

    isvc = inference_service(parse_pipeline(_scaled(mode, **scaling)), "detect")
    validate(isvc)
    predictor = isvc["spec"]["predictor"]
    assert {k: predictor[k] for k in scaling} == scaling
    pose2d = inference_service(parse_pipeline(_scaled(mode, **scaling)), "pose2d")["spec"]["predictor"]
    assert "scaleMetric" not in pose2d  # per stage: the others keep their defaults


@pytest.mark.parametrize("mode,scaling,message", [
    ("RawDeployment", {"minReplicas": 0}, "scale to zero"),
    (None, {"minReplicas": 0}, "scale to zero"),
    ("Standard", {"scaleMetric": "rps", "scaleTarget": 10}, "needs deploymentMode Serverless"),
    ("Serverless", {"scaleMetric": "cpu"}, "go together"),
])
def test_autoscaling_a_mode_cannot_do_is_a_spec_error(mode, scaling, message):
    from posegraph.errors import PosegraphError

    with pytest.raises((PosegraphError, ValueError), match=message):
        parse_pipeline(_scaled(mode, **scaling))
