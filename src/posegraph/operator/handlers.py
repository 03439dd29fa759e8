"""kopf handlers: PosePipeline → KServe objects; PoseJob → a batch/v1 Job; statuses from children.

Each handler is small and idempotent: it derives the desired objects from the resource, applies
them (create or bring up to date), and reports. Restarting the operator at any point converges
without duplicates: names are derived, and creation is "get, else create".
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import kopf

from ..errors import UsageError
from ..graph.spec import STAGE_NAMES
from . import metrics
from .kube import Kube
from .resources import (
    GROUP,
    VERSION,
    InvalidPoseJob,
    frames_column,
    job_name,
    pipeline_children,
    pipeline_status,
    posejob_job,
    posejob_status_from_job,
    validate_posejob,
)

log = logging.getLogger(__name__)
KSERVE = "serving.kserve.io"
MANAGED = {"app.kubernetes.io/managed-by": "posegraph"}

kube = Kube()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, $KUBECONFIG (read now, not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kubernetes Events: only the explicit kopf.warn() calls below (what a user must act on), not
    # every log line (kopf's default since 1.45: settings.posting.loggers is False).
    settings.persistence.finalizer = "posegraph.io/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="posegraph.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="posegraph.io")
    metrics.serve()


# ---- PosePipeline ----------------------------------------------------------------------------------

def _children_state(namespace: str, name: str) -> tuple[dict[str, dict | None], dict | None]:
    isvcs = {stage: kube.get_custom(KSERVE, "v1beta1", namespace, "inferenceservices", f"{name}-{stage}")
             for stage in STAGE_NAMES}
    graph = kube.get_custom(KSERVE, "v1alpha1", namespace, "inferencegraphs", name)
    return isvcs, graph


# A failed API call (an admission webhook not up yet, a conflict) is retried after RETRY_S, not
# after kopf's default 60 s: applying the children is idempotent, so retrying early is safe, and a
# user watching `kubectl get posepipelines` should not wait a minute for a transient error.
RETRY_S = 10


@kopf.on.resume(GROUP, VERSION, "posepipelines", backoff=RETRY_S)
@kopf.on.create(GROUP, VERSION, "posepipelines", backoff=RETRY_S)
@kopf.on.update(GROUP, VERSION, "posepipelines", field="spec", backoff=RETRY_S)
def reconcile_pipeline(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, logger: logging.Logger,
                       **_: Any) -> None:
    metrics.reconciled("PosePipeline")
    try:
        children = pipeline_children(dict(body))
    except UsageError as exc:  # an invalid spec: say so in status; retrying cannot help
        metrics.failed("PosePipeline")
        patch.status.update(phase="Invalid", message=str(exc), observedGeneration=meta.get("generation"))
        logger.warning("invalid PosePipeline: %s", exc)
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    for child in children:
        kube.apply_custom(child)
    isvcs, graph = _children_state(meta["namespace"], meta["name"])
    patch.status.update(pipeline_status(dict(body), isvcs, graph))


@kopf.on.event(KSERVE, "v1beta1", "inferenceservices", labels=MANAGED)
@kopf.on.event(KSERVE, "v1alpha1", "inferencegraphs", labels=MANAGED)
def child_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A child's status moved: recompute its pipeline's status."""
    if type is None:  # the initial listing: resume handlers cover it
        return
    labels = body.get("metadata", {}).get("labels", {})
    namespace, name = body["metadata"].get("namespace"), labels.get("posegraph.io/pipeline")
    if not name or not namespace:
        return
    pipeline = kube.get_custom(GROUP, VERSION, namespace, "posepipelines", name)
    if pipeline is None or pipeline["metadata"].get("deletionTimestamp"):
        return
    isvcs, graph = _children_state(namespace, name)
    status = pipeline_status(pipeline, isvcs, graph)
    current = pipeline.get("status") or {}
    if any(current.get(k) != v for k, v in status.items()):
        kube.patch_status(GROUP, VERSION, namespace, "posepipelines", name, status)


# No delete handler: the children carry the pipeline's ownerReference, so deleting a PosePipeline
# lets kube-controller-manager's garbage collector remove them (tests/test_kube_apiserver.py reads
# in the audit log that it is the collector that deletes them). Without a delete handler kopf puts
# no finalizer on the pipeline, so its deletion never waits for the operator to be running.


# ---- PoseJob ---------------------------------------------------------------------------------------

def _set_posejob_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    kube.patch_status(GROUP, VERSION, namespace, "posejobs", name, status)
    if "phase" in status:
        metrics.posejob_phase(namespace, name, status["phase"])


@kopf.on.resume(GROUP, VERSION, "posejobs", backoff=RETRY_S)
@kopf.on.create(GROUP, VERSION, "posejobs", backoff=RETRY_S)
def start_posejob(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
                  logger: logging.Logger, **_: Any) -> None:
    metrics.reconciled("PoseJob")
    namespace, name = meta["namespace"], meta["name"]
    if status.get("phase") in {"Succeeded", "Failed", "Partial"}:
        return  # finished: nothing to start (an operator restart must not re-run it)
    try:
        validate_posejob(dict(spec))
    except InvalidPoseJob as exc:
        metrics.failed("PoseJob")
        _set_posejob_status(namespace, name, {"phase": "Failed", "message": str(exc)})
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    pipeline_name = spec["pipelineRef"]["name"]
    pipeline = kube.get_custom(GROUP, VERSION, namespace, "posepipelines", pipeline_name)
    if pipeline is None:
        _set_posejob_status(namespace, name, {"phase": "Pending", "message":
                                              f"PosePipeline {pipeline_name} not found in {namespace}; waiting for it"})
        raise kopf.TemporaryError(f"PosePipeline {pipeline_name} not found", delay=30)
    pipeline_phase = (pipeline.get("status") or {}).get("phase")
    graph_url = (pipeline.get("status") or {}).get("graphURL")
    if pipeline_phase != "Ready" or not graph_url:
        _set_posejob_status(namespace, name, {"phase": "Pending", "message":
                                              f"waiting for PosePipeline {pipeline_name} to be Ready "
                                              f"(now {pipeline_phase or 'unknown'})"})
        raise kopf.TemporaryError(f"PosePipeline {pipeline_name} not ready", delay=15)
    # Once the Job exists, job_changed alone writes the phase (from the Job's own events), so this
    # handler never overwrites a newer Running/Failed with its Pending: it writes before creating.
    common = {"jobName": job_name(name), "graphURL": graph_url, "observedGeneration": meta.get("generation"),
              "startTime": status.get("startTime") or _now()}
    if kube.get_job(namespace, job_name(name)) is not None:
        _set_posejob_status(namespace, name, common)
        logger.info("found job %s for %s", job_name(name), name)
        return
    _set_posejob_status(namespace, name, {**common, "phase": "Pending", "message": "job created, waiting for its pod"})
    created = kube.create_job(posejob_job(dict(body), graph_url))
    logger.info("%s job %s for %s", "created" if created else "found", job_name(name), name)


@kopf.on.event("batch", "v1", "jobs", labels={"posegraph.io/posejob": kopf.PRESENT})
def job_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """The Job moved (started, succeeded, failed): mirror it into the PoseJob."""
    if type == "DELETED":
        return
    namespace = body["metadata"].get("namespace")
    name = body["metadata"].get("labels", {}).get("posegraph.io/posejob")
    posejob = kube.get_custom(GROUP, VERSION, namespace, "posejobs", name)
    if posejob is None:
        return
    current = posejob.get("status") or {}
    if current.get("phase") in {"Succeeded", "Failed", "Partial"}:
        return
    progress = current.get("progress") or {}
    status = posejob_status_from_job(dict(body), progress)
    if status["phase"] in {"Succeeded", "Failed", "Partial"}:
        status.setdefault("completionTime", _now())
        if progress.get("outputs"):
            status["outputs"] = progress["outputs"]
        if status["phase"] == "Failed":
            metrics.failed("PoseJob")
            kopf.warn(posejob, reason="JobFailed", message=status["message"])
    if any(current.get(k) != v for k, v in status.items()):
        _set_posejob_status(namespace, name, status)


@kopf.on.event(GROUP, VERSION, "posejobs")
def progress_reported(body: kopf.Body, type: str | None, **_: Any) -> None:
    """The runner wrote status.progress: derive the printer columns from it. (A deleted PoseJob's
    Job goes with it: Kubernetes collects it through its ownerReference.)"""
    if type == "DELETED":
        metrics.forget_posejob(body["metadata"].get("namespace"), body["metadata"].get("name"))
        return
    if type is None:
        return
    status = body.get("status") or {}
    progress = status.get("progress")
    frames = frames_column(progress)
    update = {}
    if frames and status.get("frames") != frames:
        update["frames"] = frames
    if progress and progress.get("outputs") and status.get("outputs") != progress["outputs"]:
        update["outputs"] = progress["outputs"]
    if update:
        meta = body["metadata"]
        kube.patch_status(GROUP, VERSION, meta["namespace"], "posejobs", meta["name"], update)
