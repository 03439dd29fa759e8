"""What the operator makes from custom resources: pure functions, no API calls (tested directly).

* PosePipeline → the KServe objects (``posegraph.graph.kserve_objects``: the same code as
  ``posegraph graph render``), owned by the pipeline;
* children's conditions → the pipeline's status;
* PoseJob (+ the pipeline's graph URL) → a ``batch/v1`` Job running ``posegraph job run``;
* the Job's conditions and the runner's progress → the PoseJob's status.
"""

from __future__ import annotations

import os
from typing import Any

from ..graph.kserve_objects import render
from ..graph.spec import STAGE_NAMES, PosePipeline, parse_pipeline
from ..jobs.options import JobOptions
from ..jobspec import (  # noqa: F401 - InvalidPoseJob is re-exported (handlers, tests)
    DEFAULT_RUNNER_SERVICE_ACCOUNT,
    InvalidPoseJob,
    PoseJobSpec,
    parse_posejob,
)
from ..names import (
    API_GROUP,
    API_GROUP_VERSION,
    API_VERSION,
    LABEL_POSEJOB,
    PARTIAL,
    PORTS,
    POSEJOB_FAILED,
    POSEJOB_PARTIAL,
    POSEJOB_PENDING,
    POSEJOB_RUNNING,
    POSEJOB_SUCCEEDED,
    POSEPIPELINE_DEGRADED,
    POSEPIPELINE_PENDING,
    POSEPIPELINE_READY,
    inference_service_name,
    posejob_kubernetes_job_name,
    posejob_store_id,  # noqa: F401 - re-exported: the UI's launcher imports it from here
)

GROUP, VERSION = API_GROUP, API_VERSION
# Set by the chart on the operator's Deployment (docs/operator.md, "Configuration").
JOB_IMAGE = os.environ.get("POSEGRAPH_JOB_IMAGE", "ghcr.io/posegraph/posegraph:0.1.0")
RUNNER_SERVICE_ACCOUNT = os.environ.get("POSEGRAPH_JOB_SERVICE_ACCOUNT", DEFAULT_RUNNER_SERVICE_ACCOUNT)
# A Secret whose keys become the runner's environment (e.g. AWS_ENDPOINT_URL and keys for an
# in-cluster object store on kind). Optional: on EKS, IRSA needs none.
RUNNER_ENV_SECRET = os.environ.get("POSEGRAPH_JOB_ENV_FROM", "")
# The runner's exit codes that retrying cannot fix: 2 usage, 3 bad input, 5 finished with failures.
NON_RETRIABLE_EXIT_CODES = [2, 3, 5]
# The Job's defaults when a PoseJob names no resources.
RUNNER_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", API_GROUP_VERSION), "kind": body["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def pipeline_from_body(body: dict[str, Any]) -> PosePipeline:
    meta = body["metadata"]
    return parse_pipeline({"apiVersion": API_GROUP_VERSION, "kind": "PosePipeline",
                           "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
                           "spec": body.get("spec") or {}}, where=f"PosePipeline {meta['name']}")


def pipeline_children(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The InferenceServices and the InferenceGraph of a PosePipeline, adopted by it."""
    owner = owner_reference(body)
    children = render(pipeline_from_body(body))
    for child in children:
        child["metadata"]["ownerReferences"] = [owner]
    return children


# Reasons of a stage that is on its way, not broken: KServe v0.20 says MinimumReplicasUnavailable
# while a predictor's Pods start
# (tests/test_kserve_controller.py); "" and Pending before any condition.
STARTING_REASONS = ("Pending", "NotCreated", "", "MinimumReplicasUnavailable")


def _ready(conditions: list[dict[str, Any]] | None) -> tuple[bool, str, str]:
    for condition in conditions or []:
        if condition.get("type") == "Ready":
            return (condition.get("status") == "True", condition.get("reason") or "",
                    condition.get("message") or "")
    return False, "Pending", "no Ready condition yet"


def stage_names_of(body: dict[str, Any]) -> tuple[str, ...]:
    """The stages a PosePipeline object names, built-in then extraStages, read leniently (a status
    is written even for a spec the operator refuses)."""
    extras = (body.get("spec") or {}).get("extraStages") or []
    return (*STAGE_NAMES, *(e["name"] for e in extras if isinstance(e, dict) and isinstance(e.get("name"), str)))


def pipeline_status(body: dict[str, Any], isvcs: dict[str, dict | None], graph: dict | None) -> dict[str, Any]:
    """The pipeline's status from its children (None: not created yet)."""
    name = body["metadata"]["name"]
    stages = {}
    names = stage_names_of(body)
    for stage in names:
        child = isvcs.get(stage)
        isvc_name = inference_service_name(name, stage)
        if child is None:
            stages[stage] = {"inferenceService": isvc_name, "ready": False, "reason": "NotCreated", "message": ""}
            continue
        ready, reason, message = _ready((child.get("status") or {}).get("conditions"))
        stages[stage] = {"inferenceService": isvc_name, "ready": ready, "reason": reason, "message": message[:500]}
        url = (child.get("status") or {}).get("url")
        if url:
            stages[stage]["url"] = url
    graph_ready, graph_reason, graph_message = _ready(((graph or {}).get("status") or {}).get("conditions"))
    ready_count = sum(1 for s in stages.values() if s["ready"])
    url = ((graph or {}).get("status") or {}).get("url")
    if ready_count == len(names) and graph_ready:
        phase, message = POSEPIPELINE_READY, f"graph ready at {url}" if url else "graph ready"
    else:
        waiting = [s for s, v in stages.items() if not v["ready"]] + ([] if graph_ready else ["graph"])
        phase = POSEPIPELINE_DEGRADED if any(v["reason"] not in STARTING_REASONS
                                             for v in stages.values() if not v["ready"]) else POSEPIPELINE_PENDING
        message = f"waiting for {', '.join(waiting)}" + (f": {graph_message}" if graph_message and not graph_ready
                                                          and graph_reason != "Pending" else "")
    status = {"phase": phase, "message": message, "stages": stages,
              "readyStages": f"{ready_count}/{len(names)}",
              "observedGeneration": body["metadata"].get("generation")}
    if url:
        status["graphURL"] = url
    return status


# ---- PoseJob -------------------------------------------------------------------------------------

def job_name(posejob_name: str) -> str:
    return posejob_kubernetes_job_name(posejob_name)


def validate_posejob(spec: dict[str, Any]) -> PoseJobSpec:
    """The spec as the model (posegraph.jobspec), or InvalidPoseJob saying what is wrong."""
    return parse_posejob(dict(spec))


# Long on purpose: the Job manifest as one literal, as kubectl would show it.
def posejob_job(body: dict[str, Any], graph_url: str, *, image: str = JOB_IMAGE) -> dict[str, Any]:
    """The batch/v1 Job that runs one PoseJob. The database password comes from the Secret."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    spec = validate_posejob(body["spec"])
    options, secret = spec.options, spec.results.secretRef
    # The database DSN comes from the Secret, expanded by the kubelet: never in the Job's manifest.
    args = JobOptions(
        video=spec.video, graph=graph_url, results="$(POSEGRAPH_RESULTS)", output=spec.output.prefix,
        stride=options.stride, batch=options.batch, max_frames=options.maxFrames, render=options.render,
        video_format=options.videoFormat, in_flight=options.inFlight, frame_format=options.frameFormat,
        detect_every=options.detectEvery, focal_px=options.focalPx, fov=options.fov,
        job_id=posejob_store_id(namespace, name), report_posejob=f"{namespace}/{name}", metrics_port=PORTS["runnerMetrics"],
        # Each pod's range is $JOB_COMPLETION_INDEX, set by the Indexed Job.
        ranges=spec.parallelism, quiet=True).argv()
    resources = (spec.resources.model_dump(exclude_none=True) if spec.resources else None) or RUNNER_RESOURCES
    labels = {"app.kubernetes.io/part-of": "posegraph", "app.kubernetes.io/component": "job-runner",
              LABEL_POSEJOB: name}
    container = {
        "name": "runner",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [
            {"name": "POSEGRAPH_RESULTS", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.dsnKey}}},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.passwordKey,
                                                                   "optional": True}}},
            {"name": "POSEGRAPH_METRICS_HOST", "value": "0.0.0.0"},
            {"name": "POSEGRAPH_CACHE", "value": "/tmp/posegraph"},
        ],
        **({"envFrom": [{"secretRef": {"name": RUNNER_ENV_SECRET, "optional": True}}]} if RUNNER_ENV_SECRET else {}),
        "ports": [{"name": "metrics", "containerPort": PORTS["runnerMetrics"]}],
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    job_spec = {
        **_completions(spec),
        "ttlSecondsAfterFinished": spec.ttlSecondsAfterFinished,
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
            "containerName": "runner", "operator": "In", "values": NON_RETRIABLE_EXIT_CODES}}]},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "restartPolicy": "Never",
                # No Service environment variables (POSEGRAPH_*_PORT=tcp://… from the chart's Services
                # collide with posegraph's own settings: they crashed the operator on a real node).
                "enableServiceLinks": False,
                "serviceAccountName": spec.serviceAccountName or RUNNER_SERVICE_ACCOUNT,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [container],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    }
    if spec.activeDeadlineSeconds:
        job_spec["activeDeadlineSeconds"] = spec.activeDeadlineSeconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(body)]},
        "spec": job_spec,
    }


def _completions(spec) -> dict[str, Any]:
    """One pod, or an Indexed Job of ``parallelism`` pods, one range each, all at once; a range's pod
    is retried on its own (backoffLimitPerIndex), so one flaky pod does not use up the others' retries."""
    if spec.parallelism == 1:
        return {"backoffLimit": spec.backoffLimit}
    return {"completionMode": "Indexed", "completions": spec.parallelism, "parallelism": spec.parallelism,
            "backoffLimitPerIndex": spec.backoffLimit}


def posejob_status_from_job(job: dict[str, Any], progress: dict[str, Any] | None) -> dict[str, Any]:
    """Phase and message from the Job's conditions, refined by what the runner reported."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    runner_phase = (progress or {}).get("phase")
    if "Complete" in conditions:
        p = progress or {}
        summary = ", ".join(f"{p[k]} {label if p[k] != 1 else label[:-1]}"
                            for k, label in (("frames_done", "frames"), ("persons", "persons"), ("tracks", "tracks"))
                            if p.get(k) is not None)
        done = {"phase": POSEJOB_SUCCEEDED, "message": f"done: {summary}" if summary else "done"}
        if status.get("completionTime"):
            done["completionTime"] = status["completionTime"]
        return done
    if "Failed" in conditions:
        condition = conditions["Failed"]
        if runner_phase == PARTIAL:
            return {"phase": POSEJOB_PARTIAL, "message": "finished with failures recorded in the results store: "
                                                   + ((progress or {}).get("error") or "see the job's note")}
        reason = condition.get("reason") or "Failed"
        detail = (progress or {}).get("error") or condition.get("message") or ""
        return {"phase": POSEJOB_FAILED, "message": f"{reason}: {detail}".strip(": ")}
    if status.get("active"):
        ranges = ((job.get("spec") or {}).get("completions") or 1) if (job.get("spec") or {}).get(
            "completionMode") == "Indexed" else 1
        if ranges > 1:
            return {"phase": POSEJOB_RUNNING, "message": f"runner {runner_phase or 'starting'}: "
                                                         f"{status.get('succeeded') or 0} of {ranges} ranges done, "
                                                         f"{status['active']} running"}
        return {"phase": POSEJOB_RUNNING, "message": f"runner {runner_phase or 'starting'}"}
    return {"phase": POSEJOB_PENDING, "message": "job created, waiting for its pod"}


def frames_column(progress: dict[str, Any] | None) -> str | None:
    if not progress:
        return None
    done, total = progress.get("frames_done"), progress.get("frames_total")
    if done is None:
        return None
    return f"{done}/{total}" if total else str(done)


# ---- pods that cannot start -----------------------------------------------------------------------------

# Waiting reasons a container does not leave by itself, as the Event reason the operator posts.
_STUCK = {"ErrImagePull": "ImagePullFailed", "ImagePullBackOff": "ImagePullFailed",
          "ErrImageNeverPull": "ImagePullFailed", "InvalidImageName": "ImagePullFailed",
          "CreateContainerConfigError": "ConfigError", "CreateContainerError": "ConfigError"}
STORAGE_INITIALIZER = "storage-initializer"   # the init container KServe adds to copy storageUri


def pod_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """Why a stage's or a runner's pod cannot get going, as (Event reason, one-line message), or
    None: an image the node cannot get, a Secret or ConfigMap that does not exist, KServe's storage
    initializer failing to copy the archive. What a user would otherwise dig out of three
    `kubectl describe` outputs (the pod's, its ReplicaSet's, its InferenceService's)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    declared = {c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}
    for state in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        name = state.get("name", "?")
        waiting = (state.get("state") or {}).get("waiting") or {}
        kind = _STUCK.get(waiting.get("reason", ""))
        if kind == "ImagePullFailed":
            image = (declared.get(name) or {}).get("image") or state.get("image")
            return kind, (f"container {name}: image {image} cannot be pulled ({waiting['reason']}); "
                          "load it into the node or push it where the node can pull it")
        if kind == "ConfigError":
            return kind, f"container {name} cannot start: {waiting.get('message') or waiting['reason']}"
        if name == STORAGE_INITIALIZER:
            ended = (state.get("state") or {}).get("terminated") or (state.get("lastState") or {}).get("terminated") or {}
            if ended.get("exitCode") not in (None, 0):
                args = (declared.get(name) or {}).get("args") or ["?"]
                # Its log says which of the two (seen on a node: "No model found in <prefix>" or
                # "Unable to locate credentials" from a PosePipeline without serviceAccountName).
                pod_name = (pod.get("metadata") or {}).get("name", "?")
                return "StorageInitializerFailed", (
                    f"KServe's storage initializer could not copy {args[0]} (exit {ended['exitCode']}): is the "
                    "archive there (posegraph models push), and does the stage's serviceAccountName carry the "
                    f"store's credentials? kubectl logs {pod_name} -c {name}")
    return None
