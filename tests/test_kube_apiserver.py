"""The chart, the operator and PoseJobs against a real Kubernetes API server (tests/control_plane.py):
it authenticates, authorizes (RBAC), admits (PodSecurity "restricted"), validates, prunes and
defaults as a cluster does, and kube-controller-manager turns Deployments and Jobs into Pods and
collects garbage. What only a real cluster shows (images, kubelet, GPU nodes, IRSA, KServe's own
controller) is listed in docs/operator.md."""

from __future__ import annotations

import os
import signal
import subprocess

import kubernetes
import pytest
import yaml
from control_plane import REPO, OperatorProcess, finish_pod, play_kubelet, secret_data
from services import wait
from k8s_schema import KSERVE_CRDS as KSERVE_CRD_DIR  # KServe's CRDs, vendored for a clean clone

CHART = REPO / "charts" / "posegraph"
KSERVE_CRDS = sorted(KSERVE_CRD_DIR.glob("serving.kserve.io_*.yaml"))
HELMS = {name: REPO / ".tools" / name / "helm" for name in ("helm3", "helm4")}
VALUES = {"default": [], "kind": ["-f", str(CHART / "values-kind.yaml")], "eks": ["-f", str(CHART / "values-eks.yaml")]}
EXAMPLES = REPO / "operators" / "examples"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
KSERVE = "serving.kserve.io"


def helm(control_plane, name: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    binary = HELMS[name]
    if not binary.exists():
        pytest.fail(f"{binary} missing: scripts/install-helm.sh (part of `make test`) installs it")
    result = subprocess.run([str(binary), "--kubeconfig", str(control_plane.kubeconfig), *args],
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args[:3])}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


# ---- the API server is real: it authenticates, authorizes and admits ------------------------------

def test_the_api_server_authenticates_authorizes_and_admits(control_plane, core, tmp_path):
    """What kmock (or nothing at all) cannot do: these fail anywhere but on a real API server."""
    import kubernetes

    anonymous = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                                str(control_plane.dir / "pki" / "ca.crt"), f"{control_plane.server}/api/v1/pods"],
                               capture_output=True, text=True)
    assert anonymous.stdout == "401"
    namespace = control_plane.create_namespace("admission-check", RESTRICTED)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    nobody = kubernetes.client.CoreV1Api(control_plane.api_client(
        control_plane.token_kubeconfig(namespace, "nobody", tmp_path / "nobody")))
    with pytest.raises(kubernetes.client.ApiException) as refused:
        nobody.list_namespaced_secret(namespace)
    assert refused.value.status == 403
    unconfined = {"metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
    with pytest.raises(kubernetes.client.ApiException) as denied:
        core.create_namespaced_pod(namespace, unconfined)
    assert denied.value.status == 403 and "violates PodSecurity" in denied.value.body
    assert "system:serviceaccount:admission-check:nobody" in "".join(
        e["user"]["username"] for e in control_plane.audit() if e.get("responseStatus", {}).get("code") == 403)


# ---- the chart: helm install, read back, pods admitted, upgrade, uninstall --------------------------

@pytest.mark.parametrize("helm_name", sorted(HELMS))
def test_install_without_kserve_fails_with_the_charts_message(control_plane, core, helm_name):
    """Runs before the KServe CRDs are applied (the kserve_crds fixture below)."""
    import kubernetes

    crds = kubernetes.client.ApiextensionsV1Api(control_plane.api_client()).list_custom_resource_definition()
    assert not [c for c in crds.items if c.spec.group == KSERVE], "this test must run before the KServe CRDs exist"
    namespace = f"no-kserve-{helm_name}"
    result = helm(control_plane, helm_name, "install", "posegraph", str(CHART), "-n", namespace, "--create-namespace",
                  check=False)
    assert result.returncode != 0
    assert "posegraph needs KServe" in result.stderr and "kserve-crd" in result.stderr, result.stderr[-2000:]


@pytest.fixture(scope="module")
def kserve_crds(control_plane):
    """KServe's CRDs (tests/data/kserve-crds), as `kubectl apply --server-side` installs them."""
    assert len(KSERVE_CRDS) == 4
    for path in KSERVE_CRDS:
        control_plane.kubectl("apply", "--server-side", "-f", str(path))
    for path in KSERVE_CRDS:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return KSERVE_CRDS


def _is_quantity_path(path: str) -> bool:
    return ".resources." in path and (".requests." in path or ".limits." in path) or path.endswith(".storage")


def assert_kept(sent, stored, path: str = "") -> None:
    """Everything we sent is stored as sent: no field pruned, no value of ours replaced. The server
    may add fields (defaults of what we left out) and drop empty ones (omitempty); nothing else."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), f"{path}: sent a map, stored {stored!r}"
        for key, value in sent.items():
            if value in (None, {}, [], "") and key not in stored:
                continue  # omitempty: an empty value is the absence of one
            assert key in stored, f"{path}.{key}: pruned by the API server (sent {value!r})"
            assert_kept(value, stored[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), f"{path}: sent {sent!r}, stored {stored!r}"
        for i, (a, b) in enumerate(zip(sent, stored)):
            assert_kept(a, b, f"{path}[{i}]")
    elif _is_quantity_path(path):
        from kubernetes.utils import parse_quantity

        assert parse_quantity(sent) == parse_quantity(stored), f"{path}: sent {sent!r}, stored {stored!r}"
    else:
        assert sent == stored, f"{path}: sent {sent!r}, stored {stored!r}"


def manifest_objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def live(dynamic, manifest: dict, namespace: str):
    resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    ns = manifest["metadata"].get("namespace", namespace) if resource.namespaced else None
    return resource.get(name=manifest["metadata"]["name"], namespace=ns).to_dict()


def pods_of(core, namespace: str, workload: dict) -> list:
    """The Pods the controllers made for a Deployment, StatefulSet or Job (by its selector)."""
    if workload["kind"] == "Job":
        selector = f"job-name={workload['metadata']['name']}"
    else:
        selector = ",".join(f"{k}={v}" for k, v in workload["spec"]["selector"]["matchLabels"].items())
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def failed_creates(core, namespace: str) -> list[str]:
    return [f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}"
            for e in core.list_namespaced_event(namespace).items if e.reason == "FailedCreate"]


@pytest.mark.parametrize("values", sorted(VALUES))
@pytest.mark.parametrize("helm_name", sorted(HELMS))
def test_helm_install_upgrade_uninstall(control_plane, core, dynamic, kserve_crds, helm_name, values):
    namespace = control_plane.create_namespace(f"chart-{helm_name}-{values}", RESTRICTED)
    try:
        check_release(control_plane, core, dynamic, helm_name, values, namespace)
    finally:  # the release's cluster-wide objects would block the next install
        helm(control_plane, helm_name, "uninstall", "posegraph", "-n", namespace, check=False)


def check_release(control_plane, core, dynamic, helm_name: str, values: str, namespace: str) -> None:
    with play_kubelet(core, namespace, {"posegraph-s3-buckets"}) as kubelet:
        install = helm(control_plane, helm_name, "install", "posegraph", str(CHART), "-n", namespace, *VALUES[values])
    assert "STATUS: deployed" in install.stdout
    if values == "kind":  # the post-install hook ran: its Pod was admitted and, played by us, finished
        assert kubelet.finished, "the bucket hook's Job made no Pod"
    manifest = manifest_objects(helm(control_plane, helm_name, "get", "manifest", "posegraph", "-n", namespace).stdout)
    assert len(manifest) >= 10
    for sent in manifest:
        stored = live(dynamic, sent, namespace)
        where = f"{sent['kind']}/{sent['metadata']['name']}"
        if sent["kind"] == "Secret":
            assert stored["data"] == secret_data(sent), f"{where}: data"
            sent = {k: v for k, v in sent.items() if k != "stringData"}
        assert_kept(sent, stored, where)

    # kube-controller-manager makes the Pods of every workload, and PodSecurity admits each one.
    workloads = [o for o in manifest if o["kind"] in WORKLOADS]
    assert workloads
    for workload in workloads:
        replicas = workload["spec"].get("replicas", 1) if workload["kind"] != "Job" else 1
        wait(lambda w=workload: len(pods_of(core, namespace, w)) >= replicas or failed_creates(core, namespace),
             what=f"the Pods of {workload['kind']}/{workload['metadata']['name']}")
        assert not failed_creates(core, namespace)
    for pod in core.list_namespaced_pod(namespace).items:
        assert pod.status.phase in ("Pending", "Succeeded"), pod.metadata.name  # no kubelet: Pending

    # An upgrade with a changed value updates the operator in place (same object, next generation).
    before = live(dynamic, {"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "posegraph-operator"}}, namespace)
    with play_kubelet(core, namespace, {"posegraph-s3-buckets"}):
        helm(control_plane, helm_name, "upgrade", "posegraph", str(CHART), "-n", namespace, *VALUES[values],
             "--set", "operator.verbose=true")
    after = live(dynamic, {"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "posegraph-operator"}}, namespace)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert "--verbose" in after["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--verbose" not in before["spec"]["template"]["spec"]["containers"][0]["args"]
    secrets = {o["metadata"]["name"] for o in manifest if o["kind"] == "Secret"}
    for name in secrets:  # generated passwords survive the upgrade
        kept = live(dynamic, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}, namespace)
        assert kept["data"] == secret_data(next(o for o in manifest if o["kind"] == "Secret"
                                                and o["metadata"]["name"] == name)), name

    # Uninstall leaves nothing of the release behind (CRDs aside, by Helm's rule), Pods included.
    helm(control_plane, helm_name, "uninstall", "posegraph", "-n", namespace, "--wait", "--timeout", "120s")
    import kubernetes

    def gone(o):
        try:
            live(dynamic, o, namespace)
            return False
        except kubernetes.dynamic.exceptions.NotFoundError:
            return True

    left = [f"{o['kind']}/{o['metadata']['name']}" for o in manifest if not gone(o)]
    assert not left, f"left behind: {left}"
    wait(lambda: not core.list_namespaced_pod(namespace).items, what=f"the Pods in {namespace} to be collected")
    for kind in ("ReplicaSet", "ControllerRevision"):
        resource = dynamic.resources.get(api_version="apps/v1", kind=kind)
        wait(lambda r=resource: not r.get(namespace=namespace).items, what=f"{kind}s to be collected")
    core.delete_namespace(namespace)


# ---- the operator, authenticated as the chart's own ServiceAccount -----------------------------------

RELEASE_NS = "posegraph"


# What the operator tests leave in RELEASE_NS (group, version, plural), removed after them.
LEFT_BEHIND = [("posegraph.io", "v1alpha1", "posejobs"), ("posegraph.io", "v1alpha1", "posepipelines"),
               (KSERVE, "v1beta1", "inferenceservices"), (KSERVE, "v1alpha1", "inferencegraphs")]


@pytest.fixture(scope="module")
def release(control_plane, core, custom, kserve_crds):
    """The chart with its default values, kept for the operator tests below. Removed after them,
    with what they made: the control plane is shared by the session, so this release's ClusterRoles
    would stop another module's `helm install`, and its InferenceServices would be reconciled by
    KServe's manager in test_kserve_controller, which has no runtime for them (both seen when that
    module ran after this one)."""
    control_plane.create_namespace(RELEASE_NS, RESTRICTED)
    helm(control_plane, "helm4", "install", "posegraph", str(CHART), "-n", RELEASE_NS)
    yield RELEASE_NS
    for group, version, plural in LEFT_BEHIND:
        for item in custom.list_namespaced_custom_object(group, version, RELEASE_NS, plural)["items"]:
            name = item["metadata"]["name"]
            try:  # the garbage collector may delete a child first (its owner went before it)
                # The operator is stopped by now: nobody would remove its finalizers.
                custom.patch_namespaced_custom_object(group, version, RELEASE_NS, plural, name,
                                                      {"metadata": {"finalizers": None}})
                custom.delete_namespaced_custom_object(group, version, RELEASE_NS, plural, name)
            except kubernetes.client.ApiException as gone:
                if gone.status != 404:
                    raise
    wait(lambda: not any(custom.list_namespaced_custom_object(g, v, RELEASE_NS, p)["items"] for g, v, p in LEFT_BEHIND),
         what=f"the operator tests' objects gone from {RELEASE_NS}")
    helm(control_plane, "helm4", "uninstall", "posegraph", "-n", RELEASE_NS, "--wait", "--timeout", "120s")


@pytest.fixture(scope="module")
def operator(control_plane, dynamic, release, tmp_path_factory):
    op = OperatorProcess(control_plane, dynamic, RELEASE_NS, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture(autouse=True)
def no_forbidden_requests(request, control_plane):
    """Any request of the operator (or the runner) that RBAC refused fails the test that caused it."""
    yield
    if "operator" in request.fixturenames:
        op = request.getfixturevalue("operator")
        refused = control_plane.forbidden(op.user)
        refused += control_plane.forbidden(f"system:serviceaccount:{RELEASE_NS}:posegraph-job-runner")
        assert not refused, "requests refused by the chart's RBAC: " + "; ".join(sorted(set(refused)))


def create(custom, example: str, name: str, **spec) -> dict:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    manifest["metadata"] = {"name": name, "namespace": RELEASE_NS}
    manifest["spec"] = {**manifest["spec"], **spec}
    plural = manifest["kind"].lower() + "s"
    return custom.create_namespaced_custom_object("posegraph.io", "v1alpha1", RELEASE_NS, plural, manifest)


def get(custom, plural: str, name: str, group: str = "posegraph.io", version: str = "v1alpha1") -> dict:
    return custom.get_namespaced_custom_object(group, version, RELEASE_NS, plural, name)


def phase(custom, plural: str, name: str, wanted: str):
    status = get(custom, plural, name).get("status") or {}
    return status if status.get("phase") == wanted else None


def children(custom, pipeline: str) -> dict[str, dict]:
    found = {f"{pipeline}-{s}": get(custom, "inferenceservices", f"{pipeline}-{s}", KSERVE, "v1beta1")
             for s in ("detect", "pose2d", "lift3d")}
    found[pipeline] = get(custom, "inferencegraphs", pipeline, KSERVE, "v1alpha1")
    return found


def make_ready(custom, pipeline: str) -> None:
    """What KServe's controller writes once the predictors and the router are up."""
    ready = [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    for stage in ("detect", "pose2d", "lift3d"):
        custom.patch_namespaced_custom_object_status(KSERVE, "v1beta1", RELEASE_NS, "inferenceservices",
                                                     f"{pipeline}-{stage}", {"status": {
                                                         "url": f"http://{pipeline}-{stage}.{RELEASE_NS}.svc.cluster.local",
                                                         "conditions": ready}})
    custom.patch_namespaced_custom_object_status(KSERVE, "v1alpha1", RELEASE_NS, "inferencegraphs", pipeline, {
        "status": {"url": f"http://{pipeline}.{RELEASE_NS}.svc.cluster.local", "conditions": ready}})


def ready_pipeline(custom, name: str) -> dict:
    create(custom, "posepipeline.yaml", name)
    wait(lambda: children(custom, name), what=f"the children of {name}")
    make_ready(custom, name)
    return wait(lambda: phase(custom, "posepipelines", name, "Ready"), what=f"{name} Ready")


def test_a_pipeline_becomes_kserve_objects_the_server_accepts(control_plane, operator, custom):
    body = create(custom, "posepipeline.yaml", "walk")
    made = wait(lambda: children(custom, "walk"), what="three InferenceServices and an InferenceGraph")
    from posegraph.operator.resources import pipeline_children

    for sent in pipeline_children(body):  # what the operator sends, read back as the server stored it
        stored = made[sent["metadata"]["name"]]
        assert_kept({k: v for k, v in sent.items() if k != "status"}, stored, sent["metadata"]["name"])
        assert stored["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        assert [e["user"]["username"] for e in control_plane.creations(
            "inferenceservices" if sent["kind"] == "InferenceService" else "inferencegraphs",
            sent["metadata"]["name"], RELEASE_NS)] == [operator.user]
    status = wait(lambda: phase(custom, "posepipelines", "walk", "Pending"), what="Pending")
    assert status["readyStages"] == "0/3"
    make_ready(custom, "walk")
    status = wait(lambda: phase(custom, "posepipelines", "walk", "Ready"), what="Ready")
    assert status["readyStages"] == "3/3" and status["graphURL"] == f"http://walk.{RELEASE_NS}.svc.cluster.local"


def job_pod(core, job: str):
    pods = core.list_namespaced_pod(RELEASE_NS, label_selector=f"job-name={job}").items
    return pods[0] if pods else None


def test_a_posejob_runs_as_an_admitted_pod_and_follows_its_outcome(control_plane, operator, custom, batch, core,
                                                                    tmp_path):
    ready_pipeline(custom, "p-jobs")
    create(custom, "posejob.yaml", "ok", pipelineRef={"name": "p-jobs"})
    create(custom, "posejob.yaml", "bad-video", pipelineRef={"name": "p-jobs"})
    for name in ("ok", "bad-video"):
        job = wait(lambda n=name: batch.read_namespaced_job(f"posejob-{n}", RELEASE_NS), what=f"Job posejob-{name}")
        assert job.metadata.owner_references[0].name == name
        pod = wait(lambda n=name: job_pod(core, f"posejob-{n}") or failed_creates(core, RELEASE_NS),
                   what=f"the Pod of posejob-{name}")
        assert not failed_creates(core, RELEASE_NS), "PodSecurity refused the runner's pod"
        assert pod.status.phase == "Pending" and pod.spec.service_account_name == "posegraph-job-runner"

    # The runner reports progress with its own ServiceAccount's token (the chart's Role for it).
    from posegraph.jobs.progress import Progress

    runner_config = control_plane.token_kubeconfig(RELEASE_NS, "posegraph-job-runner", tmp_path / "kubeconfig-runner")
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(runner_config)
    try:
        progress = Progress("ok", quiet=True, posejob=f"{RELEASE_NS}/ok")
        progress.start(total=36, done=0, phase="running")
        progress.report(done=36, persons=36, tracks=1, force=True)
    finally:
        os.environ["KUBECONFIG"] = saved or ""
    wait(lambda: get(custom, "posejobs", "ok")["status"].get("frames") == "36/36", what="frames 36/36")

    # Played kubelet: one pod exits 0, the other 3 (bad input: the Job's podFailurePolicy fails it).
    finish_pod(core, RELEASE_NS, job_pod(core, "posejob-ok").metadata.name, 0)
    finish_pod(core, RELEASE_NS, job_pod(core, "posejob-bad-video").metadata.name, 3, container="runner")
    status = wait(lambda: phase(custom, "posejobs", "ok", "Succeeded"), what="Succeeded")
    assert status["completionTime"] and "36 frames" in status["message"]
    status = wait(lambda: phase(custom, "posejobs", "bad-video", "Failed"), what="Failed")
    assert "PodFailurePolicy" in status["message"] and "exit code 3" in status["message"], status["message"]
    assert batch.read_namespaced_job("posejob-bad-video", RELEASE_NS).status.failed == 1  # not retried


def test_a_split_posejob_is_an_indexed_job_with_one_pod_per_range(control_plane, operator, custom, batch, core):
    """spec.parallelism: 3 → an Indexed Job of 3 completions at once, a retry budget per index, and
    the Job controller gives each Pod its index (which the runner reads as JOB_COMPLETION_INDEX).
    The three pods running their ranges and merging: tests/test_node.py, on a real node."""
    ready_pipeline(custom, "p-split")
    create(custom, "posejob.yaml", "split", pipelineRef={"name": "p-split"}, parallelism=3,
           options={"stride": 1, "batch": 4, "render": True})
    job = wait(lambda: batch.read_namespaced_job("posejob-split", RELEASE_NS), what="Job posejob-split")
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism, job.spec.backoff_limit_per_index) \
        == ("Indexed", 3, 3, 2)
    pods = wait(lambda: (lambda found: found if len(found) == 3 else None)(
        core.list_namespaced_pod(RELEASE_NS, label_selector="job-name=posejob-split").items), what="3 Pods")
    index_key = "batch.kubernetes.io/job-completion-index"
    assert sorted(int(p.metadata.annotations[index_key]) for p in pods) == [0, 1, 2]
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.args[container.args.index("--ranges") + 1] == "3"
        index_env = next(e for e in container.env if e.name == "JOB_COMPLETION_INDEX")
        assert index_key in index_env.value_from.field_ref.field_path


def test_a_non_compliant_pod_template_is_refused_and_the_check_sees_it(control_plane, operator, custom, batch, core):
    """The admission check above can fail: the same Job with a root container makes no Pod, and
    the FailedCreate it leaves is what the test looks for."""
    from posegraph.operator.resources import posejob_job

    body = create(custom, "posejob.yaml", "root", pipelineRef={"name": "does-not-exist"})
    job = posejob_job(body, "http://unused")
    job["metadata"]["name"] = "posejob-root-by-hand"
    job["metadata"]["labels"] = {"test": "non-compliant"}
    job["spec"]["template"]["metadata"]["labels"] = {"test": "non-compliant"}
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"runAsUser": 0, "allowPrivilegeEscalation": True}
    batch.create_namespaced_job(RELEASE_NS, job)
    refused = wait(lambda: [m for m in failed_creates(core, RELEASE_NS) if "posejob-root-by-hand" in m],
                   what="FailedCreate")
    assert "violates PodSecurity" in refused[0] and not job_pod(core, "posejob-root-by-hand")
    batch.delete_namespaced_job("posejob-root-by-hand", RELEASE_NS, propagation_policy="Background")


def deleted_by(control_plane, resource: str, name: str) -> list[str]:
    return [e["user"]["username"] for e in control_plane.audit()
            if e.get("verb") == "delete" and e.get("objectRef", {}).get("resource") == resource
            and e["objectRef"].get("name") == name and e.get("responseStatus", {}).get("code") in (200, 202)]


GC = "system:serviceaccount:kube-system:generic-garbage-collector"


def test_deleting_collects_children_through_owner_references(control_plane, operator, custom, batch, core):
    import kubernetes

    ready_pipeline(custom, "p-gone")
    create(custom, "posejob.yaml", "gone", pipelineRef={"name": "p-gone"})
    wait(lambda: job_pod(core, "posejob-gone"), what="the Job's Pod")
    custom.delete_namespaced_custom_object("posegraph.io", "v1alpha1", RELEASE_NS, "posepipelines", "p-gone")
    custom.delete_namespaced_custom_object("posegraph.io", "v1alpha1", RELEASE_NS, "posejobs", "gone")

    def absent(read):
        try:
            read()
            return False
        except kubernetes.client.ApiException as exc:
            return exc.status == 404

    for stage in ("detect", "pose2d", "lift3d"):
        wait(lambda s=stage: absent(lambda: get(custom, "inferenceservices", f"p-gone-{s}", KSERVE, "v1beta1")),
             what=f"p-gone-{stage} collected")
        # The audit event of a delete is written after its response (stage ResponseComplete): wait for it.
        wait(lambda s=stage: deleted_by(control_plane, "inferenceservices", f"p-gone-{s}") == [GC],
             what=f"p-gone-{stage}'s deletion by the garbage collector in the audit log")
        assert deleted_by(control_plane, "inferenceservices", f"p-gone-{stage}") == [GC]
    wait(lambda: absent(lambda: get(custom, "inferencegraphs", "p-gone", KSERVE, "v1alpha1")), what="graph collected")
    wait(lambda: deleted_by(control_plane, "inferencegraphs", "p-gone"), what="the graph's deletion in the audit log")
    assert deleted_by(control_plane, "inferencegraphs", "p-gone") == [GC]
    wait(lambda: absent(lambda: batch.read_namespaced_job("posejob-gone", RELEASE_NS)), what="the Job collected")
    wait(lambda: deleted_by(control_plane, "jobs", "posejob-gone"), what="the Job's deletion in the audit log")
    assert deleted_by(control_plane, "jobs", "posejob-gone") == [GC]
    wait(lambda: not job_pod(core, "posejob-gone"), what="the Job's Pod collected")


def test_restarting_the_operator_mid_reconcile_creates_nothing_twice(control_plane, dynamic, operator, custom, batch):
    """The operator is killed (SIGKILL) while a reconcile is half done: one InferenceService made,
    the next one refused by an admission policy. After the restart everything exists once, as the
    audit log counts creations."""
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": "hold-pose2d"},
              "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
                  "apiGroups": [KSERVE], "apiVersions": ["*"], "operations": ["CREATE"],
                  "resources": ["inferenceservices"]}]},
                  "validations": [{"expression": "object.metadata.name != 'p-restart-pose2d'",
                                   "reason": "Invalid", "message": "held by the test"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "hold-pose2d"},
               "spec": {"policyName": "hold-pose2d", "validationActions": ["Deny"]}}
    policies = dynamic.resources.get(api_version="admissionregistration.k8s.io/v1", kind="ValidatingAdmissionPolicy")
    bindings = dynamic.resources.get(api_version="admissionregistration.k8s.io/v1",
                                     kind="ValidatingAdmissionPolicyBinding")
    policies.create(body=policy)
    bindings.create(body=binding)
    refused = lambda: [e for e in control_plane.audit() if e.get("verb") == "create"  # noqa: E731
                       and e.get("objectRef", {}).get("name") == "p-restart-pose2d"
                       and e.get("responseStatus", {}).get("code") == 422]
    # The policy takes effect once the API server has loaded it: probe with a dry run until refused.
    probe = yaml.safe_load((EXAMPLES / "posepipeline.yaml").read_text())
    from posegraph.operator.resources import pipeline_children

    probe["metadata"] = {"name": "p-restart", "namespace": RELEASE_NS, "uid": "0"}
    held = next(c for c in pipeline_children(probe) if c["metadata"]["name"] == "p-restart-pose2d")

    def policy_active():
        try:
            custom.create_namespaced_custom_object(KSERVE, "v1beta1", RELEASE_NS, "inferenceservices", held,
                                                   dry_run="All")
            return False
        except Exception as exc:  # noqa: BLE001
            return getattr(exc, "status", None) == 422
    wait(policy_active, what="the admission policy to be active")
    try:
        create(custom, "posepipeline.yaml", "p-restart")
        wait(lambda: [e for e in refused() if e["user"]["username"] == operator.user],
             what="the operator's reconcile to be half done")
        operator.stop(signal.SIGKILL)
        made = {e["objectRef"]["name"] for r in ("inferenceservices", "inferencegraphs")
                for e in control_plane.creations(r, namespace=RELEASE_NS) if e["objectRef"]["name"].startswith("p-restart")}
        assert "p-restart-detect" in made and "p-restart-pose2d" not in made, made
    finally:
        bindings.delete(name="hold-pose2d")
        policies.delete(name="hold-pose2d")
    operator.start()
    wait(lambda: children(custom, "p-restart"), timeout=180, what="all children after the restart")
    for resource, name in [*(("inferenceservices", f"p-restart-{s}") for s in ("detect", "pose2d", "lift3d")),
                           ("inferencegraphs", "p-restart")]:
        assert len(control_plane.creations(resource, name, RELEASE_NS)) == 1, f"{name} created more than once"
    # Every PoseJob was resumed too (those of the tests before this one): no Job was made again.
    for job in batch.list_namespaced_job(RELEASE_NS, label_selector="posegraph.io/posejob").items:
        assert len(control_plane.creations("jobs", job.metadata.name, RELEASE_NS)) == 1, job.metadata.name
