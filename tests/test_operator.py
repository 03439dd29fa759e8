"""The operator's fast unit tests, against kmock's Kubernetes API emulator, with real kopf, the real
kubernetes client and a kubeconfig that points at the emulator. tests/test_kube_apiserver.py and
tests/test_node.py run it against a real API server and node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tiers import loopback
import services
import yaml
from k8s_schema import validate

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "operators" / "crds"
EXAMPLES = REPO / "operators" / "examples"
NS = "poses"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---- the CRDs and the examples, without a cluster --------------------------------------------------

def test_crds_and_rbac_are_valid_kubernetes_objects():
    files = [*CRDS.glob("*.yaml"), *(REPO / "operators" / "rbac").glob("*.yaml")]
    for version in ("1.29.0", "1.31.0"):
        result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict",
                                 *map(str, files)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (result.stdout + result.stderr).count("passed") == 2 + 6


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate_against_their_crds(example):
    manifest = load(EXAMPLES / example)
    if manifest["kind"] == "Secret":
        result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", "1.31.0", "--strict",
                                 str(EXAMPLES / example)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
        return
    crd = CRDS / f"{manifest['kind'].lower()}s.posegraph.io.yaml"
    validate(manifest, str(crd), "v1alpha1")
    if manifest["kind"] == "PosePipeline":
        from posegraph.operator.resources import pipeline_children

        children = pipeline_children({**manifest, "metadata": {**manifest["metadata"], "namespace": NS,
                                                               "uid": str(uuid.uuid4())}})
        for child in children:
            validate(child)
    else:
        from posegraph.operator.resources import validate_posejob

        validate_posejob(manifest["spec"])


def test_crd_schema_and_the_spec_model_agree():
    """The PosePipeline CRD and posegraph's spec model must list the same fields: a field only in
    the CRD would be ignored; one only in the model would be pruned by the API server."""
    from posegraph.graph.spec import GraphSettings, PipelineSpec, RouterTimeouts, ServingRuntimes, StageDeployment

    schema = load(CRDS / "posepipelines.posegraph.io.yaml")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert set(spec) == set(PipelineSpec.model_fields)
    assert set(spec["stages"]["properties"]["detect"]["properties"]) == set(StageDeployment.model_fields)
    assert set(spec["graph"]["properties"]) == set(GraphSettings.model_fields)
    runtimes = spec["servingRuntimes"]["properties"]
    assert {k: v["default"] for k, v in runtimes.items()} == ServingRuntimes().model_dump()
    assert set(spec["graph"]["properties"]["routerTimeouts"]["properties"]) == set(RouterTimeouts.model_fields)
    with pytest.raises(Exception):
        validate({**load(EXAMPLES / "posepipeline.yaml"), "spec": {**load(EXAMPLES / "posepipeline.yaml")["spec"],
                                                                    "runtim": "kserve"}},
                 str(CRDS / "posepipelines.posegraph.io.yaml"), "v1alpha1")


@pytest.mark.parametrize("change,message", [
    ({"video": "file:///home/me/walk.mp4"},
     "spec.video 'file:///home/me/walk.mp4': a PoseJob reads videos from s3:// or https:// URIs"),
    ({"output": {"prefix": "/tmp/out/"}}, "spec.output.prefix '/tmp/out/': outputs go to an s3:// prefix"),
    ({"pipelineRef": None}, "spec.pipelineRef:"),
    ({"options": {"stride": 0}}, "spec.options.stride:"),
    ({"options": {"videoFormat": "avi"}}, "spec.options.videoFormat:"),
    ({"vidio": "s3://b/walk.mp4"}, "spec.vidio:"),  # a typo is an error, not a field the API server drops
])
def test_posejob_specs_are_checked_by_their_model(change, message):
    """posegraph.jobspec validates PoseJobs (and the CRD is generated from it): the first problem, named."""
    from posegraph.operator.resources import InvalidPoseJob, validate_posejob

    spec = {**load(EXAMPLES / "posejob.yaml")["spec"], **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(InvalidPoseJob) as raised:
        validate_posejob(spec)
    assert str(raised.value).startswith(message), str(raised.value)


def test_job_manifest_is_a_valid_batch_job_with_the_password_from_the_secret(tmp_path):
    from posegraph.operator.resources import posejob_job

    body = {**load(EXAMPLES / "posejob.yaml")}
    body["metadata"] = {**body["metadata"], "namespace": NS, "uid": str(uuid.uuid4())}
    job = posejob_job(body, "http://demo.poses.svc.cluster.local")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", "1.31.0", "--strict", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "posegraph-results", "key": "password",
                                                              "optional": True}
    assert "value" not in env["PGPASSWORD"] and "password" not in str(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "envFrom" not in job["spec"]["template"]["spec"]["containers"][0]


def test_a_posejob_with_parallelism_is_an_indexed_job_of_one_range_per_pod(tmp_path):
    from posegraph.operator.resources import posejob_job, posejob_status_from_job

    body = {**load(EXAMPLES / "posejob.yaml")}
    body["metadata"] = {**body["metadata"], "namespace": NS, "uid": str(uuid.uuid4())}
    one = posejob_job(body, "http://demo")
    assert "completionMode" not in one["spec"] and one["spec"]["backoffLimit"] == 2
    assert "--ranges" not in one["spec"]["template"]["spec"]["containers"][0]["args"]
    body["spec"] = {**body["spec"], "parallelism": 4}
    job = posejob_job(body, "http://demo")
    assert {k: job["spec"][k] for k in ("completionMode", "completions", "parallelism", "backoffLimitPerIndex")} == {
        "completionMode": "Indexed", "completions": 4, "parallelism": 4, "backoffLimitPerIndex": 2}
    assert "backoffLimit" not in job["spec"]  # per index instead: one pod's failures do not spend the others'
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--ranges") + 1] == "4" and "--range-index" not in args  # $JOB_COMPLETION_INDEX
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", "1.31.0", "--strict", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    running = posejob_status_from_job({**job, "status": {"active": 3, "succeeded": 1}}, {"phase": "running"})
    assert running["message"] == "runner running: 1 of 4 ranges done, 3 running"
    body["spec"]["parallelism"] = 17
    from posegraph.operator.resources import InvalidPoseJob, validate_posejob

    with pytest.raises(InvalidPoseJob, match="spec.parallelism"):
        validate_posejob(body["spec"])


def test_the_chart_can_give_runners_an_environment_secret(monkeypatch):
    """On kind the chart names the object store's Secret (POSEGRAPH_JOB_ENV_FROM) for every runner."""
    from posegraph.operator import resources

    monkeypatch.setattr(resources, "RUNNER_ENV_SECRET", "posegraph-s3")
    body = {**load(EXAMPLES / "posejob.yaml")}
    body["metadata"] = {**body["metadata"], "namespace": NS, "uid": str(uuid.uuid4())}
    container = resources.posejob_job(body, "http://demo")["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "posegraph-s3", "optional": True}}]


# ---- the operator, running ------------------------------------------------------------------------

@pytest.fixture(scope="module")
@loopback
def cluster(tmp_path_factory):
    from kmock_cluster import KMockCluster

    c = KMockCluster(tmp_path_factory.mktemp("kmock"))
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(c.kubeconfig)
    import kubernetes

    # The test's own client is a separate identity from the operator (KUBECONFIG), so the RBAC
    # test below sees only the operator's requests.
    kubernetes.config.load_kube_config(config_file=str(c.kubeconfig_for("test-client")))
    c.api = kubernetes.client.CustomObjectsApi()
    c.batch = kubernetes.client.BatchV1Api()
    yield c
    c.stop()
    if saved is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = saved


def start_operator():
    from kopf.testing import KopfRunner

    runner = KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "posegraph.operator.handlers"])
    runner.__enter__()
    time.sleep(1.0)
    return runner


@pytest.fixture(scope="module")
def operator(cluster):
    runner = start_operator()
    holder = {"runner": runner}
    yield holder
    holder["runner"].__exit__(None, None, None)


def wait(predicate, timeout=90.0, what="condition"):
    """Each poll is a request to the same emulated API the operator uses. The generous timeout is
    for a loaded 2-core CI machine (a fresh-clone run once took over 20 s to reach a pipeline's
    graph, before kmock_cluster stopped kmock's requests from slowing with the number served)."""
    return services.wait(predicate, timeout, what, interval=0.25)


def apply(cluster, path_or_manifest, name=None, **spec_updates):
    manifest = load(path_or_manifest) if isinstance(path_or_manifest, Path) else dict(path_or_manifest)
    # What an API server adds on create (kmock does not): uid and resourceVersion.
    manifest["metadata"] = {**manifest["metadata"], "namespace": NS, "uid": str(uuid.uuid4()), "resourceVersion": "1"}
    if name:
        manifest["metadata"]["name"] = name
    manifest["spec"] = {**manifest["spec"], **spec_updates}
    plural = manifest["kind"].lower() + "s"
    cluster.api.create_namespaced_custom_object("posegraph.io", "v1alpha1", NS, plural, manifest)
    return manifest


def get(cluster, plural, name, group="posegraph.io", version="v1alpha1"):
    return cluster.api.get_namespaced_custom_object(group, version, NS, plural, name)


def make_ready(cluster, pipeline: str):
    for stage in ("detect", "pose2d", "lift3d"):
        cluster.api.patch_namespaced_custom_object_status(
            "serving.kserve.io", "v1beta1", NS, "inferenceservices", f"{pipeline}-{stage}",
            {"status": {"url": f"http://{pipeline}-{stage}.{NS}.example.com",
                        "conditions": [{"type": "Ready", "status": "True"}]}})
    cluster.api.patch_namespaced_custom_object_status(
        "serving.kserve.io", "v1alpha1", NS, "inferencegraphs", pipeline,
        {"status": {"url": f"http://{pipeline}.{NS}.svc.cluster.local",
                    "conditions": [{"type": "Ready", "status": "True"}]}})


def test_pipeline_becomes_kserve_objects_and_its_status_follows_them(cluster, operator):
    body = apply(cluster, EXAMPLES / "posepipeline.yaml", name="p1")
    isvcs = {s: wait(lambda s=s: get(cluster, "inferenceservices", f"p1-{s}", "serving.kserve.io", "v1beta1"),
                     what=f"p1-{s}") for s in ("detect", "pose2d", "lift3d")}
    graph = wait(lambda: get(cluster, "inferencegraphs", "p1", "serving.kserve.io", "v1alpha1"), what="graph")
    for child in [*isvcs.values(), graph]:
        clean = {k: v for k, v in child.items() if k != "status"}
        clean["metadata"] = {k: v for k, v in child["metadata"].items()
                             if k in {"name", "namespace", "labels", "annotations", "ownerReferences"}}
        validate(clean)
        owner = child["metadata"]["ownerReferences"][0]
        assert owner["uid"] == body["metadata"]["uid"] and owner["kind"] == "PosePipeline" and owner["controller"]
    assert isvcs["detect"]["spec"]["predictor"]["model"]["storageUri"] == "s3://posegraph-models/demo/detect/"
    status = wait(lambda: (get(cluster, "posepipelines", "p1").get("status") or {}).get("phase") and
                  get(cluster, "posepipelines", "p1")["status"], what="a status")
    assert status["phase"] == "Pending" and status["readyStages"] == "0/3"

    make_ready(cluster, "p1")
    status = wait(lambda: get(cluster, "posepipelines", "p1")["status"]["phase"] == "Ready"
                  and get(cluster, "posepipelines", "p1")["status"], what="Ready")
    assert status["readyStages"] == "3/3" and status["graphURL"] == f"http://p1.{NS}.svc.cluster.local"
    assert status["stages"]["pose2d"]["ready"] is True

    # A stage going unready shows.
    cluster.api.patch_namespaced_custom_object_status(
        "serving.kserve.io", "v1beta1", NS, "inferenceservices", "p1-pose2d",
        {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "CrashLoopBackOff",
                                    "message": "predictor restarted 5 times"}]}})
    status = wait(lambda: get(cluster, "posepipelines", "p1")["status"]["phase"] == "Degraded"
                  and get(cluster, "posepipelines", "p1")["status"], what="Degraded")
    assert status["stages"]["pose2d"]["reason"] == "CrashLoopBackOff" and status["readyStages"] == "2/3"


def test_spec_changes_roll_through(cluster, operator):
    apply(cluster, EXAMPLES / "posepipeline.yaml", name="p2")
    wait(lambda: get(cluster, "inferenceservices", "p2-detect", "serving.kserve.io", "v1beta1"))
    pipeline = get(cluster, "posepipelines", "p2")
    stages = pipeline["spec"]["stages"]
    stages["detect"] = {**stages["detect"], "storageUri": "s3://posegraph-models/v2/detect/", "maxReplicas": 3}
    cluster.api.patch_namespaced_custom_object("posegraph.io", "v1alpha1", NS, "posepipelines", "p2",
                                               {"spec": {"stages": stages, "graph": {"routerTimeouts": {
                                                   "serviceClient": 90}}}})
    isvc = wait(lambda: (lambda i: i["spec"]["predictor"]["model"]["storageUri"].startswith("s3://posegraph-models/v2")
                         and i)(get(cluster, "inferenceservices", "p2-detect", "serving.kserve.io", "v1beta1")),
                what="the new storageUri")
    assert isvc["spec"]["predictor"]["maxReplicas"] == 3
    graph = wait(lambda: (lambda g: g["spec"].get("routerTimeouts", {}).get("serviceClient") == 90 and g)(
        get(cluster, "inferencegraphs", "p2", "serving.kserve.io", "v1alpha1")), what="the new router timeout")
    assert "p2-detect" in str(graph["spec"]["nodes"]["root"]["steps"][0])
    assert not cluster.requests("POST", "inferenceservices", "p2-pose2d")[1:], "updated in place, not re-created"


def test_invalid_pipeline_gets_a_status_message(cluster, operator):
    bad = load(EXAMPLES / "posepipeline.yaml")
    bad["spec"]["stages"].pop("lift3d")
    apply(cluster, bad, name="p-bad")
    status = wait(lambda: (get(cluster, "posepipelines", "p-bad").get("status") or {}).get("phase") == "Invalid"
                  and get(cluster, "posepipelines", "p-bad")["status"], what="Invalid")
    assert "lift3d" in status["message"]
    assert not cluster.requests("POST", "inferenceservices", "p-bad-detect"), "nothing was created"


def test_posejob_runs_a_job_and_mirrors_its_outcome(cluster, operator):
    apply(cluster, EXAMPLES / "posepipeline.yaml", name="p3")
    wait(lambda: get(cluster, "inferencegraphs", "p3", "serving.kserve.io", "v1alpha1"))
    make_ready(cluster, "p3")
    wait(lambda: get(cluster, "posepipelines", "p3")["status"]["phase"] == "Ready")

    apply(cluster, EXAMPLES / "posejob.yaml", name="walk-ok", pipelineRef={"name": "p3"},
          resources={"limits": {"cpu": "3", "memory": "3Gi"}})
    job = wait(lambda: cluster.batch.read_namespaced_job("posejob-walk-ok", NS), what="the Job")
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.image.startswith("ghcr.io/posegraph/posegraph:")
    args = container.args
    assert args[:2] == ["job", "run"] and args[args.index("--graph") + 1] == f"http://p3.{NS}.svc.cluster.local"
    assert args[args.index("--results") + 1] == "$(POSEGRAPH_RESULTS)"
    assert args[args.index("--video") + 1] == "s3://posegraph-videos/walk.mp4"
    assert args[args.index("--report-posejob") + 1] == f"{NS}/walk-ok"
    env = {e.name: e for e in container.env}
    assert env["POSEGRAPH_RESULTS"].value_from.secret_key_ref.name == "posegraph-results"
    assert env["PGPASSWORD"].value_from.secret_key_ref.key == "password" and env["PGPASSWORD"].value is None
    assert container.resources.limits == {"cpu": "3", "memory": "3Gi"}
    assert job.spec.backoff_limit == 2 and job.spec.ttl_seconds_after_finished == 86400
    assert pod.service_account_name == "posegraph-job-runner" and pod.restart_policy == "Never"
    assert job.metadata.owner_references[0].name == "walk-ok"

    # The runner reports progress into the PoseJob (as `--report-posejob` does).
    from posegraph.jobs.progress import Progress

    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_for("job-runner"))  # the runner pod's identity
    progress = Progress("walk", quiet=True, posejob=f"{NS}/walk-ok")
    progress.start(total=36, done=0, phase="running")
    progress.report(done=12, persons=40, tracks=3, force=True)
    status = wait(lambda: get(cluster, "posejobs", "walk-ok")["status"].get("frames") == "12/36"
                  and get(cluster, "posejobs", "walk-ok")["status"], what="frames 12/36")
    assert status["progress"]["persons"] == 40

    cluster.batch.patch_namespaced_job_status("posejob-walk-ok", NS, {"status": {"active": 1}})
    wait(lambda: get(cluster, "posejobs", "walk-ok")["status"]["phase"] == "Running", what="Running")
    progress.report(done=36, persons=120, tracks=3, force=True,
                    outputs={"overlay": "s3://posegraph-outputs/walk/overlay.webm"})
    cluster.batch.patch_namespaced_job_status("posejob-walk-ok", NS, {"status": {
        "active": 0, "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    status = wait(lambda: get(cluster, "posejobs", "walk-ok")["status"]["phase"] == "Succeeded"
                  and get(cluster, "posejobs", "walk-ok")["status"], what="Succeeded")
    assert status["outputs"]["overlay"] == "s3://posegraph-outputs/walk/overlay.webm"
    assert status["frames"] == "36/36" and status["completionTime"]


@pytest.mark.parametrize("runner_phase,expected", [("failed", "Failed"), ("partial", "Partial")])
def test_failed_jobs_say_why(cluster, operator, runner_phase, expected):
    apply(cluster, EXAMPLES / "posepipeline.yaml", name=f"p-{runner_phase}")
    wait(lambda: get(cluster, "inferencegraphs", f"p-{runner_phase}", "serving.kserve.io", "v1alpha1"))
    make_ready(cluster, f"p-{runner_phase}")
    wait(lambda: get(cluster, "posepipelines", f"p-{runner_phase}")["status"]["phase"] == "Ready")
    name = f"walk-{runner_phase}"
    apply(cluster, EXAMPLES / "posejob.yaml", name=name, pipelineRef={"name": f"p-{runner_phase}"})
    wait(lambda: cluster.batch.read_namespaced_job(f"posejob-{name}", NS))
    cluster.api.patch_namespaced_custom_object_status("posegraph.io", "v1alpha1", NS, "posejobs", name, {
        "status": {"progress": {"phase": runner_phase, "error": "cannot read s3://posegraph-videos/walk.mp4: NoSuchKey"}}})
    time.sleep(0.3)
    cluster.batch.patch_namespaced_job_status(f"posejob-{name}", NS, {"status": {"active": 0, "failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 3"}]}})
    status = wait(lambda: get(cluster, "posejobs", name)["status"]["phase"] == expected
                  and get(cluster, "posejobs", name)["status"], what=expected)
    if expected == "Failed":
        assert "PodFailurePolicy" in status["message"] and "NoSuchKey" in status["message"]


def test_posejob_with_a_missing_pipeline_or_a_bad_uri(cluster, operator):
    apply(cluster, EXAMPLES / "posejob.yaml", name="orphan", pipelineRef={"name": "does-not-exist"})
    status = wait(lambda: (get(cluster, "posejobs", "orphan").get("status") or {}).get("phase") == "Pending"
                  and get(cluster, "posejobs", "orphan")["status"], what="Pending")
    assert "does-not-exist not found" in status["message"]
    apply(cluster, EXAMPLES / "posejob.yaml", name="local-file", video="file:///home/me/walk.mp4")
    status = wait(lambda: (get(cluster, "posejobs", "local-file").get("status") or {}).get("phase") == "Failed"
                  and get(cluster, "posejobs", "local-file")["status"], what="Failed")
    assert "s3:// or https://" in status["message"]
    assert not cluster.requests("POST", "jobs", "posejob-local-file")


def test_deleting_a_pipeline_is_not_held_by_the_operator(cluster, operator):
    """The children go with their pipeline through its ownerReference (the garbage collector:
    tests/test_kube_apiserver.py shows it on a real API server; kmock has none). The operator
    neither deletes them itself nor holds the pipeline with a finalizer."""
    apply(cluster, EXAMPLES / "posepipeline.yaml", name="p5")
    wait(lambda: get(cluster, "inferencegraphs", "p5", "serving.kserve.io", "v1alpha1"))
    assert not get(cluster, "posepipelines", "p5")["metadata"].get("finalizers")
    cluster.api.delete_namespaced_custom_object("posegraph.io", "v1alpha1", NS, "posepipelines", "p5")
    import kubernetes

    def gone():
        try:
            get(cluster, "posepipelines", "p5")
            return False
        except kubernetes.client.ApiException as exc:
            return exc.status == 404

    wait(gone, what="the pipeline to be gone")
    time.sleep(1)  # give a (wrong) delete handler the time to act
    assert not cluster.requests("DELETE", "inferenceservices") and not cluster.requests("DELETE", "inferencegraphs")


def test_operator_metrics_count(cluster, operator):
    from prometheus_client import REGISTRY

    reconciles = REGISTRY.get_sample_value("posegraph_operator_reconciles_total", {"kind": "PosePipeline"})
    errors = REGISTRY.get_sample_value("posegraph_operator_errors_total", {"kind": "PosePipeline"})
    succeeded = REGISTRY.get_sample_value("posegraph_operator_posejobs", {"phase": "Succeeded"})
    assert reconciles and reconciles >= 5
    assert errors and errors >= 1  # the invalid pipeline
    assert succeeded == 1
    cluster.api.delete_namespaced_custom_object("posegraph.io", "v1alpha1", NS, "posejobs", "walk-ok")
    wait(lambda: REGISTRY.get_sample_value("posegraph_operator_posejobs", {"phase": "Succeeded"}) == 0,
         what="the deleted PoseJob to leave the gauge")



def _granted(path: Path, kind: str) -> set[tuple[str, str, str]]:
    role = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_grants_exactly_what_the_operator_and_the_runner_used(cluster, operator):
    """Runs last in this module: by now the operator has done everything the tests above ask of it.
    Every request it made must be granted, and every grant must have been used (no more)."""
    operator_used = cluster.verbs_used_by("operator")
    operator_granted = _granted(REPO / "operators/rbac/operator.yaml", "ClusterRole")
    assert operator_used - operator_granted == set(), "requests the ClusterRole does not allow"
    assert operator_granted - operator_used == set(), "grants the operator never used"
    runner_used = cluster.verbs_used_by("job-runner")
    runner_granted = _granted(REPO / "operators/rbac/job-runner.yaml", "Role")
    assert runner_used == runner_granted == {("posegraph.io", "posejobs/status", "patch")}


# ---- pods that cannot start -------------------------------------------------------------------------

def _pod(*, init=(), containers=(), init_status=(), status=()):
    return {"spec": {"initContainers": list(init), "containers": list(containers)},
            "status": {"initContainerStatuses": list(init_status), "containerStatuses": list(status)}}


# Last of the operator's tests: the restarted operator resumes every object left, a storm of
# requests that the tests after it would wait behind.
def test_restarting_the_operator_creates_nothing_twice(cluster, operator):
    apply(cluster, EXAMPLES / "posepipeline.yaml", name="p4")
    wait(lambda: get(cluster, "inferencegraphs", "p4", "serving.kserve.io", "v1alpha1"))
    before = {p: len(cluster.requests("POST", p)) for p in ("inferenceservices", "inferencegraphs", "jobs")}
    operator["runner"].__exit__(None, None, None)
    operator["runner"] = start_operator()  # resumes every object it finds
    time.sleep(3)
    after = {p: len(cluster.requests("POST", p)) for p in ("inferenceservices", "inferencegraphs", "jobs")}
    assert after == before
    assert get(cluster, "posepipelines", "p4")["status"]["readyStages"] == "0/3"


def test_pod_problem_names_images_secrets_and_the_archive():
    from posegraph.operator.resources import pod_problem

    running = _pod(containers=[{"name": "kserve-container", "image": "a:1"}],
                   status=[{"name": "kserve-container", "state": {"running": {}}}])
    assert pod_problem(running) is None
    assert pod_problem({}) is None
    pull = _pod(containers=[{"name": "kserve-container", "image": "posegraph/x:nope"}],
                status=[{"name": "kserve-container", "state": {"waiting": {"reason": "ErrImageNeverPull"}}}])
    reason, message = pod_problem(pull)
    assert reason == "ImagePullFailed" and "posegraph/x:nope" in message and "ErrImageNeverPull" in message
    secret = _pod(containers=[{"name": "runner"}], status=[{"name": "runner", "state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "results" not found'}}}])
    assert pod_problem(secret) == ("ConfigError", 'container runner cannot start: secret "results" not found')
    storage = _pod(init=[{"name": "storage-initializer", "args": ["s3://models/none/detect/", "/mnt/models"]}],
                   init_status=[{"name": "storage-initializer", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                 "lastState": {"terminated": {"exitCode": 1}}}])
    storage["metadata"] = {"name": "pose-detect-predictor-5d9c-x2"}
    reason, message = pod_problem(storage)
    assert reason == "StorageInitializerFailed" and "s3://models/none/detect/" in message and "exit 1" in message
    assert "serviceAccountName" in message and message.endswith(
        "kubectl logs pose-detect-predictor-5d9c-x2 -c storage-initializer")
    copied = _pod(init=[{"name": "storage-initializer", "args": ["s3://m/d/", "/mnt/models"]}],
                  init_status=[{"name": "storage-initializer", "state": {"terminated": {"exitCode": 0}}}])
    assert pod_problem(copied) is None
