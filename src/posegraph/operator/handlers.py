"""kopf handlers: PosePipeline → KServe objects; PoseJob → a batch/v1 Job; statuses from children.

Each handler is small and idempotent: it derives the desired objects from the resource, applies
them (create or bring up to date), and reports. Restarting the operator at any point converges
without duplicates: names are derived, and creation is "get, else create".
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..errors import UsageError
from ..graph.kserve_objects import MANAGED
from ..names import (
    API_GROUP,
    API_VERSION,
    INFERENCEGRAPH_VERSION,
    INFERENCEGRAPHS,
    INFERENCESERVICE_VERSION,
    INFERENCESERVICES,
    KSERVE_GROUP,
    LABEL_PIPELINE,
    LABEL_POSEJOB,
    LABEL_STAGE,
    POSEJOB_FAILED,
    POSEJOB_PENDING,
    POSEJOB_TERMINAL,
    POSEJOBS,
    POSEPIPELINE_INVALID,
    POSEPIPELINE_READY,
    POSEPIPELINES,
    inference_service_name,
    utc_now,
)
from . import metrics
from .kube import Kube
from .resources import (
    InvalidPoseJob,
    frames_column,
    job_name,
    pipeline_children,
    pipeline_status,
    stage_names_of,
    pod_problem,
    posejob_job,
    posejob_status_from_job,
    validate_posejob,
)

log = logging.getLogger(__name__)
GROUP, VERSION = API_GROUP, API_VERSION

kube = Kube()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, $KUBECONFIG (read now, not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kubernetes Events: only the explicit kopf.warn() calls below (what a user must act on), not
    # every log line (kopf's default since 1.45: settings.posting.loggers is False).
    settings.persistence.finalizer = f"{API_GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    metrics.serve()


# ---- PosePipeline ----------------------------------------------------------------------------------

def _children_state(namespace: str, name: str, stages: tuple[str, ...]) -> tuple[dict[str, dict | None], dict | None]:
    isvcs = {stage: kube.get_custom(KSERVE_GROUP, INFERENCESERVICE_VERSION, namespace, INFERENCESERVICES,
                                    inference_service_name(name, stage))
             for stage in stages}
    graph = kube.get_custom(KSERVE_GROUP, INFERENCEGRAPH_VERSION, namespace, INFERENCEGRAPHS, name)
    return isvcs, graph


# A failed API call (an admission webhook not up yet, a conflict) is retried after RETRY_S, not
# after kopf's default 60 s: applying the children is idempotent, so retrying early is safe, and a
# user watching `kubectl get posepipelines` should not wait a minute for a transient error.
RETRY_S = 10


@kopf.on.resume(GROUP, VERSION, POSEPIPELINES, backoff=RETRY_S)
@kopf.on.create(GROUP, VERSION, POSEPIPELINES, backoff=RETRY_S)
@kopf.on.update(GROUP, VERSION, POSEPIPELINES, field="spec", backoff=RETRY_S)
def reconcile_pipeline(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, logger: logging.Logger,
                       **_: Any) -> None:
    metrics.reconciled("PosePipeline")
    try:
        children = pipeline_children(dict(body))
    except UsageError as exc:  # an invalid spec: say so in status; retrying cannot help
        metrics.failed("PosePipeline")
        patch.status.update(phase=POSEPIPELINE_INVALID, message=str(exc), observedGeneration=meta.get("generation"))
        logger.warning("invalid PosePipeline: %s", exc)
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    for child in children:
        kube.apply_custom(child)
    isvcs, graph = _children_state(meta["namespace"], meta["name"], stage_names_of(dict(body)))
    patch.status.update(pipeline_status(dict(body), isvcs, graph))


@kopf.on.event(KSERVE_GROUP, INFERENCESERVICE_VERSION, INFERENCESERVICES, labels=MANAGED)
@kopf.on.event(KSERVE_GROUP, INFERENCEGRAPH_VERSION, INFERENCEGRAPHS, labels=MANAGED)
def child_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A child's status moved: recompute its pipeline's status."""
    if type is None:  # the initial listing: resume handlers cover it
        return
    labels = body.get("metadata", {}).get("labels", {})
    namespace, name = body["metadata"].get("namespace"), labels.get(LABEL_PIPELINE)
    if not name or not namespace:
        return
    pipeline = kube.get_custom(GROUP, VERSION, namespace, POSEPIPELINES, name)
    if pipeline is None or pipeline["metadata"].get("deletionTimestamp"):
        return
    isvcs, graph = _children_state(namespace, name, stage_names_of(pipeline))
    status = pipeline_status(pipeline, isvcs, graph)
    current = pipeline.get("status") or {}
    if any(current.get(k) != v for k, v in status.items()):
        kube.patch_status(GROUP, VERSION, namespace, POSEPIPELINES, name, status)


# No delete handler: the children carry the pipeline's ownerReference, so deleting a PosePipeline
# lets kube-controller-manager's garbage collector remove them (tests/test_kube_apiserver.py reads
# in the audit log that it is the collector that deletes them). Without a delete handler kopf puts
# no finalizer on the pipeline, so its deletion never waits for the operator to be running.


# ---- PoseJob ---------------------------------------------------------------------------------------

def _set_posejob_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    kube.patch_status(GROUP, VERSION, namespace, POSEJOBS, name, status)
    if "phase" in status:
        metrics.posejob_phase(namespace, name, status["phase"])


@kopf.on.resume(GROUP, VERSION, POSEJOBS, backoff=RETRY_S)
@kopf.on.create(GROUP, VERSION, POSEJOBS, backoff=RETRY_S)
def start_posejob(body: kopf.Body, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status,
                  logger: logging.Logger, **_: Any) -> None:
    metrics.reconciled("PoseJob")
    namespace, name = meta["namespace"], meta["name"]
    if status.get("phase") in POSEJOB_TERMINAL:
        return  # finished: nothing to start (an operator restart must not re-run it)
    try:
        job_spec = validate_posejob(dict(spec))
    except InvalidPoseJob as exc:
        metrics.failed("PoseJob")
        _set_posejob_status(namespace, name, {"phase": POSEJOB_FAILED, "message": str(exc)})
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        return
    pipeline_name = job_spec.pipelineRef.name
    pipeline = kube.get_custom(GROUP, VERSION, namespace, POSEPIPELINES, pipeline_name)
    if pipeline is None:
        _set_posejob_status(namespace, name, {"phase": POSEJOB_PENDING, "message":
                                              f"PosePipeline {pipeline_name} not found in {namespace}; waiting for it"})
        raise kopf.TemporaryError(f"PosePipeline {pipeline_name} not found", delay=30)
    pipeline_phase = (pipeline.get("status") or {}).get("phase")
    graph_url = (pipeline.get("status") or {}).get("graphURL")
    if pipeline_phase != POSEPIPELINE_READY or not graph_url:
        _set_posejob_status(namespace, name, {"phase": POSEJOB_PENDING, "message":
                                              f"waiting for PosePipeline {pipeline_name} to be Ready "
                                              f"(now {pipeline_phase or 'unknown'})"})
        raise kopf.TemporaryError(f"PosePipeline {pipeline_name} not ready", delay=15)
    # Once the Job exists, job_changed alone writes the phase (from the Job's own events), so this
    # handler never overwrites a newer Running/Failed with its Pending: it writes before creating.
    common = {"jobName": job_name(name), "graphURL": graph_url, "observedGeneration": meta.get("generation"),
              "startTime": status.get("startTime") or utc_now()}
    if kube.get_job(namespace, job_name(name)) is not None:
        _set_posejob_status(namespace, name, common)
        logger.info("found job %s for %s", job_name(name), name)
        return
    _set_posejob_status(namespace, name, {**common, "phase": POSEJOB_PENDING,
                                          "message": "job created, waiting for its pod"})
    created = kube.create_job(posejob_job(dict(body), graph_url))
    logger.info("%s job %s for %s", "created" if created else "found", job_name(name), name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_POSEJOB: kopf.PRESENT})
def job_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """The Job moved (started, succeeded, failed): mirror it into the PoseJob."""
    if type == "DELETED":
        return
    namespace = body["metadata"].get("namespace")
    name = body["metadata"].get("labels", {}).get(LABEL_POSEJOB)
    posejob = kube.get_custom(GROUP, VERSION, namespace, POSEJOBS, name)
    if posejob is None:
        return
    current = posejob.get("status") or {}
    if current.get("phase") in POSEJOB_TERMINAL:
        return
    progress = current.get("progress") or {}
    status = posejob_status_from_job(dict(body), progress)
    if status["phase"] in POSEJOB_TERMINAL:
        status.setdefault("completionTime", utc_now())
        if progress.get("outputs"):
            status["outputs"] = progress["outputs"]
        if status["phase"] == POSEJOB_FAILED:
            metrics.failed("PoseJob")
            kopf.warn(posejob, reason="JobFailed", message=status["message"])
    if any(current.get(k) != v for k, v in status.items()):
        _set_posejob_status(namespace, name, status)


@kopf.on.event(GROUP, VERSION, POSEJOBS)
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
        kube.patch_status(GROUP, VERSION, meta["namespace"], POSEJOBS, meta["name"], update)


# ---- pods that cannot start ----------------------------------------------------------------------

# The problem last reported for each pod (by uid), so a pod stuck in a back-off reports once, not at
# every status update; forgotten when the pod goes.
_reported: dict[str, tuple[str, str]] = {}


@kopf.on.event("", "v1", "pods", labels={LABEL_PIPELINE: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={LABEL_POSEJOB: kopf.PRESENT})
def pod_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A stage's or a runner's pod cannot start (an image, a Secret, the archive): a Warning Event
    on its PosePipeline or PoseJob that names the cause, and the PoseJob's status message."""
    meta = body.get("metadata", {})
    uid = meta.get("uid", "")
    if type == "DELETED":
        _reported.pop(uid, None)
        return
    problem = pod_problem(dict(body))
    if problem is None or _reported.get(uid) == problem:
        return
    _reported[uid] = problem
    reason, message = problem
    labels, namespace = meta.get("labels", {}), meta.get("namespace")
    if labels.get(LABEL_POSEJOB):
        owner = kube.get_custom(GROUP, VERSION, namespace, POSEJOBS, labels[LABEL_POSEJOB])
        if owner is not None and (owner.get("status") or {}).get("phase") not in POSEJOB_TERMINAL:
            _set_posejob_status(namespace, labels[LABEL_POSEJOB], {"message": message})
    else:
        owner = kube.get_custom(GROUP, VERSION, namespace, POSEPIPELINES, labels[LABEL_PIPELINE])
        message = f"stage {labels.get(LABEL_STAGE, '?')}: {message}"
    if owner is not None:
        kopf.warn(owner, reason=reason, message=message)
