"""The names every layer shares, each written once: stages, API groups, resources, labels, phases.

Stages, the graph, jobs, the operator, the chart's generated files and the UI import these; a
name typed out anywhere else is a second copy that can drift (docs/architecture.md).
"""

from __future__ import annotations

from datetime import datetime, timezone

# The pipeline, in graph order. A stage's name is also its archive's and its InferenceService's suffix.
STAGES = ("detect", "pose2d", "lift3d")

# The model servers a stage can run under (KServe's Python runtime is the default; TorchServe is in
# limited maintenance and KServe is dropping its runtime: docs/serving.md).
RUNTIMES = ("torchserve", "kserve")

# posegraph's own API (the CRDs under operators/crds/, generated from posegraph.graph.spec).
API_GROUP = "posegraph.io"
API_VERSION = "v1alpha1"
API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
POSEPIPELINES = "posepipelines"
POSEJOBS = "posejobs"

# KServe's API, as the operator and `posegraph graph render` write it.
KSERVE_GROUP = "serving.kserve.io"
INFERENCESERVICE_VERSION = "v1beta1"
INFERENCEGRAPH_VERSION = "v1alpha1"
INFERENCESERVICES = "inferenceservices"
INFERENCEGRAPHS = "inferencegraphs"

# Labels on everything the operator creates.
LABEL_PIPELINE = f"{API_GROUP}/pipeline"
LABEL_STAGE = f"{API_GROUP}/stage"
LABEL_POSEJOB = f"{API_GROUP}/posejob"


def inference_service_name(pipeline: str, stage: str) -> str:
    """A stage's InferenceService: ``<pipeline>-<stage>`` (a graph step's serviceName)."""
    return f"{pipeline}-{stage}"


def posejob_kubernetes_job_name(posejob: str) -> str:
    """The batch/v1 Job a PoseJob runs in (63 characters at most, a DNS label)."""
    return f"posejob-{posejob}"[:63].rstrip("-")


def posejob_store_id(namespace: str, name: str) -> str:
    """The results store's job id for a PoseJob (the runner's --job-id): unique across namespaces."""
    return f"{namespace}-{name}"


# A video job's status in the results store (and the runner's progress phase).
# "partial": finished, with failures recorded (frames or tracks).
QUEUED, RUNNING, SUCCEEDED, PARTIAL, FAILED, INTERRUPTED = (
    "queued", "running", "succeeded", "partial", "failed", "interrupted")
JOB_FINISHED = (SUCCEEDED, PARTIAL, FAILED)

# A PoseJob's status.phase (the Kubernetes object), and the ones after which nothing changes.
POSEJOB_PENDING, POSEJOB_RUNNING, POSEJOB_SUCCEEDED, POSEJOB_PARTIAL, POSEJOB_FAILED = (
    "Pending", "Running", "Succeeded", "Partial", "Failed")
POSEJOB_TERMINAL = (POSEJOB_SUCCEEDED, POSEJOB_PARTIAL, POSEJOB_FAILED)

# A PosePipeline's status.phase: children being made, all Ready, a child failing, a spec refused.
POSEPIPELINE_PENDING, POSEPIPELINE_READY, POSEPIPELINE_DEGRADED, POSEPIPELINE_INVALID = (
    "Pending", "Ready", "Degraded", "Invalid")


def utc_now() -> str:
    """A time stamp as the store, the operator and the runner write it (UTC, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# Largest request body a stage server or posegraph's graph router reads (POSEGRAPH_MAX_REQUEST_BYTES
# overrides it): a 4K JPEG frame document is ~2 MB of base64; TorchServe's own default is 6.5 MB.
# Here, not in serving.protocol, because the router (posegraph.graph) may not import serving.
MAX_REQUEST_BYTES_DEFAULT = 32 << 20


# Inference threads of a stage server (serving.runtime). The chart's ServingRuntimes set it from the
# container's CPU limit (templates/stages/servingruntimes.yaml, checked by test_kserve_controller):
# onnxruntime would otherwise start one thread per core of the node, and a pod limited to 2 of 64
# cores spends its CPU quota in a few milliseconds and then waits.
THREADS_ENV = "POSEGRAPH_THREADS"

# A video job's failing graph call is retried after 1, 2, 4, … 32 s: a minute in all, long enough
# for a deleted stage pod to be replaced on a node (storage initializer and server start, 10-20 s on
# the local node, tests/test_node.py); a 4xx is an answer and is never retried.
JOB_GRAPH_RETRIES = 6

# The ports of posegraph's pods, once: the operator's Jobs and the chart's Deployments, Services and
# NetworkPolicies (templates/_ports.tpl, generated from this by `make generate`) use these.
# stage and router: KServe's (its Python server and its router listen on 8080 in the pod);
# stageMetrics: TorchServe's metrics API (serving/archive.py's config.properties); the rest are
# posegraph's choices (runnerMetrics a Prometheus exporter's usual 9100) or the servers' defaults.
PORTS = {
    "stage": 8080,
    "stageMetrics": 8082,
    "router": 8080,
    "runnerMetrics": 9100,
    "ui": 8088,
    "objectStore": 8333,
    "postgresql": 5432,
}
