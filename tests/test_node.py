"""posegraph on a real node (scripts/cluster.py, `make cluster`): the chart installed with helm,
its own images running in pods on a kubelet with containerd, KServe's controller making the
stages, CoreDNS resolving Service names, kube-router enforcing the NetworkPolicies. One cluster
for the module; the last test stops it and finds nothing of it left on the machine.

Nothing here is played: pods become Ready because their containers answer their probes, archives
reach /mnt/models through KServe's storage initializer from the in-cluster object store, and
PoseJobs write their frames into the in-cluster PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import cluster as cluster_module  # noqa: E402
from containers import ENGINE_ROOT  # noqa: E402
from control_plane import SCRIPT_ENV  # noqa: E402

NS = cluster_module.NAMESPACE
GRAPH_URL = f"http://{cluster_module.NODE_IP}:30080/"
UI_URL = f"http://{cluster_module.NODE_IP}:30081"
RUNNER_LABELS = {"app.kubernetes.io/part-of": "posegraph", "app.kubernetes.io/component": "job-runner",
                 "posegraph.io/posejob": "node-test-client"}
POSEGRAPH_IMAGE = cluster_module.build_images.images_by_name()["posegraph"].ref


# ---- the machine before and after ----------------------------------------------------------------------

def machine_state(directory: Path | None = None) -> dict:
    """What `up` may change on the machine and `down` must give back."""
    iptables = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.splitlines()
    rules = sorted(line for line in iptables if line.startswith("-A") or (line.startswith(":") and
                   line.split()[0][1:] not in {c for cs in cluster_module.BUILTIN_CHAINS.values() for c in cs}))
    policies = sorted(line.split()[0] + " " + line.split()[1] for line in iptables
                      if line.startswith(":") and line.split()[1] != "ACCEPT")
    state = {
        "links": sorted(os.listdir("/sys/class/net")),
        "iptables rules": rules, "iptables policies": policies,
        # No ipset yet on a fresh machine (the cluster's `up` installs it): then there are no sets.
        "ipsets": sorted(subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split())
        if shutil.which("ipset") else [],
        "sysctls": {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in cluster_module.SYSCTLS},
        "kubepods cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods")),
    }
    if directory is not None:
        text = str(directory)
        state["mounts"] = [line for line in Path("/proc/mounts").read_text().splitlines() if text in line]
        state["processes"] = [p.name for p in Path("/proc").glob("[0-9]*") if text in _cmdline(p)]
    return state


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---- the cluster -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(checkpoints):
    """The cluster, up with the chart and its pipeline Ready (archives of the session's random
    checkpoints); stopped by the last test, or here if it did not run."""
    reuse = os.environ.get("POSEGRAPH_TEST_CLUSTER")
    if reuse:   # your own loop: a cluster of `scripts/cluster.py up --dir DIR`, left running
        cluster = cluster_module.Cluster(Path(reuse), script_env=SCRIPT_ENV, engine_root=ENGINE_ROOT)
        assert cluster.running("kube-apiserver"), f"POSEGRAPH_TEST_CLUSTER={reuse}: no cluster runs there"
        cluster.test_before = None
        yield cluster
        return
    before = machine_state()
    directory = Path(tempfile.mkdtemp(prefix="pgnode-", dir="/tmp"))   # short: socket paths
    cluster = cluster_module.Cluster(directory, script_env=SCRIPT_ENV, engine_root=ENGINE_ROOT)
    started = time.monotonic()
    try:
        cluster.up(checkpoints=checkpoints)
    except cluster_module.ClusterError as exc:
        pytest.fail(f"the node cluster did not come up: {exc}")
    cluster.test_before = before
    print(f"\ncluster up in {time.monotonic() - started:.0f}s: {cluster.state()['timings']}")
    yield cluster
    if cluster.running("kube-apiserver"):
        cluster.down()
    # The cluster's folder (etcd, containerd's images and snapshots: 4.4 GB a run) goes too, once
    # nothing is mounted under it any more: two runs' folders had been left in /tmp.
    mounts = Path("/proc/mounts").read_text()
    if f" {directory.resolve()}/" not in mounts:
        shutil.rmtree(directory, ignore_errors=True)


def kubectl_json(node, *args: str) -> dict:
    return json.loads(node.kubectl(*args, "-o", "json").stdout)


def wait_for(what: str, check, timeout: float = 300, every: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
        time.sleep(every)
    raise AssertionError(f"no {what} after {timeout:.0f}s (last: {last!r})")


def jpeg_doc(pixels) -> dict:
    data = base64.b64encode(cv2.imencode(".jpg", pixels)[1].tobytes()).decode()
    return {"schema": "posegraph/frame/v1", "image": {"data": data, "format": "jpeg"}}


def same_persons(served: list[dict], local: list[dict], atol: float = 1e-4) -> None:
    assert len(served) == len(local) > 0
    for a, b in zip(served, local):
        assert np.allclose(a["bbox"], b["bbox"], atol=atol)
        assert np.allclose(a["keypoints2d"], b["keypoints2d"], atol=atol)
        assert np.allclose(a["keypoints3d"], b["keypoints3d"], atol=atol)


def run_pod(node, name: str, namespace: str, command: list[str], *, labels: dict | None = None,
            files: dict[str, bytes] | None = None, timeout: float = 180) -> tuple[str, str]:
    """A pod of the posegraph image running ``command`` to its end, as the chart's pods run
    (restricted); ``files`` are mounted under /input from a ConfigMap. Its phase and log.
    The command starts after 5 s: kube-router adds a new pod's address to its policies' sets
    within about two seconds, and a connection before that is refused (seen: a client pod's
    first request to the graph)."""
    command = ["sh", "-c", 'sleep 5; exec "$0" "$@"', *command]
    volumes, mounts = [], []
    if files:
        node.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
                    "binaryData": {k: base64.b64encode(v).decode() for k, v in files.items()}})
        volumes = [{"name": "input", "configMap": {"name": name}}]
        mounts = [{"name": "input", "mountPath": "/input"}]
    node.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                                  "labels": labels or {}},
                "spec": {"restartPolicy": "Never", "enableServiceLinks": False,
                         "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "containers": [{"name": "main", "image": POSEGRAPH_IMAGE, "imagePullPolicy": "Never",
                                         "command": command, "volumeMounts": mounts,
                                         "securityContext": {"allowPrivilegeEscalation": False,
                                                             "readOnlyRootFilesystem": True,
                                                             "capabilities": {"drop": ["ALL"]}}}],
                         "volumes": volumes}})
    phase = wait_for(f"pod {name} finished", lambda: kubectl_json(node, "-n", namespace, "get", "pod", name)
                     ["status"].get("phase") in ("Succeeded", "Failed") and
                     kubectl_json(node, "-n", namespace, "get", "pod", name)["status"]["phase"], timeout=timeout)
    log = node.kubectl("-n", namespace, "logs", name, check=False).stdout.decode()
    node.kubectl("-n", namespace, "delete", "pod", name, "--wait=false", check=False)
    if files:
        node.kubectl("-n", namespace, "delete", "configmap", name, check=False)
    return phase, log


def psql(node, query: str) -> list[list[str]]:
    out = node.kubectl("-n", NS, "exec", "deploy/posegraph-postgresql", "--", "psql", "-U", "posegraph", "-d",
                       "posegraph", "-AtF", "|", "-c", query).stdout.decode()
    return [line.split("|") for line in out.splitlines() if line]


def s3(node):
    import boto3
    from botocore.config import Config

    env = node.s3_env()
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def clip_in_store(node):
    """A 32-frame clip of the bundled photo in the in-cluster object store."""
    from posegraph.media.samples import synthetic_clip_frames, write_clip

    path = Path(tempfile.mkdtemp()) / "clip.mp4"
    write_clip(path, synthetic_clip_frames(32))
    s3(node).upload_file(str(path), "posegraph-videos", "test/clip.mp4")
    return "s3://posegraph-videos/test/clip.mp4"


def posejob(node, name: str, video: str, **spec) -> None:
    node.apply({"apiVersion": "posegraph.io/v1alpha1", "kind": "PoseJob", "metadata": {"name": name, "namespace": NS},
                "spec": {"video": video, "pipelineRef": {"name": "demo"},
                         "output": {"prefix": f"s3://posegraph-outputs/{name}/"},
                         "results": {"secretRef": {"name": spec.pop("secret", "posegraph-results")}}, **spec}})


def wait_posejob(node, name: str, phase: str = "Succeeded", timeout: float = 400) -> dict:
    def done():
        body = kubectl_json(node, "-n", NS, "get", "posejob", name)
        status = body.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "Partial") and status["phase"] != phase:
            raise AssertionError(f"PoseJob {name} ended {status['phase']}: {status.get('message')}")
        return body if status.get("phase") == phase else None
    return wait_for(f"PoseJob {name} {phase}", done, timeout=timeout)


def frames_of(node, name: str) -> list[dict]:
    body = s3(node).get_object(Bucket="posegraph-outputs", Key=f"{name}/frames.jsonl")["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


# ---- the release ------------------------------------------------------------------------------------------

def test_the_release_pods_are_ready_and_would_pass_podsecurity_restricted(node):
    pods = kubectl_json(node, "-n", NS, "get", "pods")["items"]
    by_component = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p for p in pods}
    for component in ("operator", "ui", "postgresql", "object-store"):
        pod = by_component.get(component)
        assert pod is not None, f"no {component} pod"
        ready = [c for c in pod["status"].get("conditions", []) if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", f"{component} not Ready: {pod['status']}"
    events = kubectl_json(node, "-n", NS, "get", "events")["items"]
    assert any(e["involvedObject"].get("name") == "posegraph-s3-buckets" and e["reason"] == "Completed"
               for e in events), "the bucket hook Job completed"
    assert {b["Name"] for b in s3(node).list_buckets()["Buckets"]} >= {"posegraph-models", "posegraph-videos",
                                                                        "posegraph-outputs"}
    # Which pods PodSecurity "restricted" would refuse: the API server says, for a dry-run label.
    dry = node.kubectl("label", "--dry-run=server", "--overwrite", "namespace", NS,
                       "pod-security.kubernetes.io/enforce=restricted", check=False)
    warnings = dry.stderr.decode()
    refused = {line.split(":")[1].strip() for line in warnings.splitlines()
               if line.startswith("Warning: ") and ": " in line[9:] and not line.startswith("Warning: existing pods")}
    routers = {p["metadata"]["name"] for p in pods if "serving.kserve.io/inferencegraph" in p["metadata"]["labels"]}
    assert routers and refused == routers, (
        "only KServe's router (no seccomp profile in v0.20) may fall short of restricted: " + warnings)


def test_kubectl_get_shows_pipelines_and_jobs_at_a_glance(node):
    table = node.kubectl("-n", NS, "get", "posepipelines").stdout.decode().splitlines()
    assert table[0].split() == ["NAME", "PHASE", "READY", "RUNTIME", "URL", "AGE"]
    assert table[1].split()[:5] == ["demo", "Ready", "3/3", "kserve", f"http://demo.{NS}.svc.cluster.local"]


# ---- a photo through the graph --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_in_process(checkpoints, astronaut, tmp_path_factory) -> list[dict]:
    """`posegraph run` on the same checkpoints, on the JPEG the requests carry."""
    out = tmp_path_factory.mktemp("run")
    photo = out / "astronaut.jpg"
    photo.write_bytes(base64.b64decode(jpeg_doc(astronaut)["image"]["data"]))
    done = subprocess.run([sys.executable, "-m", "posegraph", "run", str(photo), "--out", str(out / "out"),
                           "--checkpoints", str(checkpoints)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "out" / "frames.jsonl").read_text().splitlines()[0])["persons"]


STAGE_IMAGES = {name: cluster_module.build_images.images_by_name()[f"stage-{name}"].ref
                for name in ("kserve", "torchserve")}


def serving_on(node, runtime: str) -> bool:
    """All three stages served by pods of ``runtime``'s image, Ready, and no other predictor pod left."""
    pods = [p for p in kubectl_json(node, "-n", NS, "get", "pods", "-l", "component=predictor,posegraph.io/pipeline=demo")
            ["items"]]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    ready = all(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
                and not p["metadata"].get("deletionTimestamp") for p in pods)
    pipeline = kubectl_json(node, "-n", NS, "get", "posepipeline", "demo")
    return (len(pods) == 3 and ready and images == {STAGE_IMAGES[runtime]}
            and pipeline["status"].get("phase") == "Ready")


def switch_runtime(node, runtime: str) -> None:
    node.kubectl("-n", NS, "patch", "posepipeline", "demo", "--type", "merge", "-p",
                 json.dumps({"spec": {"runtime": runtime}}))
    wait_for(f"the pipeline served by {runtime}", lambda: serving_on(node, runtime), timeout=600, every=5)


@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_a_photo_through_the_graph_service_equals_posegraph_run(node, astronaut, photo_in_process, runtime):
    """From the host through the graph's node port, and from a pod through its Service name."""
    if not serving_on(node, runtime):
        switch_runtime(node, runtime)
    body = {"instances": [jpeg_doc(astronaut)]}
    response = wait_for("the graph answering", lambda: (lambda r: r if r.status_code == 200 else None)(
        httpx.post(GRAPH_URL, json=body, timeout=120)), timeout=180)
    served = response.json()["predictions"][0]
    assert set(served["stages"]) == {"detect", "pose2d", "lift3d"}
    same_persons(served["persons"], photo_in_process)
    script = ("import json, urllib.request; body = open('/input/body.json', 'rb').read(); "
              f"r = urllib.request.urlopen(urllib.request.Request('http://demo.{NS}.svc.cluster.local/', body, "
              "{'content-type': 'application/json'}), timeout=120); print(r.read().decode())")
    phase, log = run_pod(node, f"graph-client-{runtime}", NS, ["python", "-c", script], labels=RUNNER_LABELS,
                         files={"body.json": json.dumps(body).encode()})
    assert phase == "Succeeded", log
    same_persons(json.loads(log)["predictions"][0]["persons"], photo_in_process)
    if runtime == "torchserve":
        switch_runtime(node, "kserve")   # the rest of the module runs on the default


# ---- video jobs ----------------------------------------------------------------------------------------

def test_a_posejob_runs_in_a_pod_and_writes_postgresql_and_the_object_store(node, clip_in_store):
    posejob(node, "walk", clip_in_store, options={"stride": 1})
    body = wait_posejob(node, "walk")
    status = body["status"]
    assert status["frames"] == "32/32" and set(status["outputs"]) >= {"overlay", "pose3d", "frames", "angles", "motion"}
    rows = psql(node, f"select count(*), count(distinct frame_index) from frames where job_id = '{NS}-walk'")
    assert rows == [["32", "32"]]
    keys = {o["Key"] for o in s3(node).list_objects_v2(Bucket="posegraph-outputs", Prefix="walk/")["Contents"]}
    assert {"walk/overlay.webm", "walk/pose3d.png", "walk/frames.jsonl", "walk/motion/angles.csv"} <= keys
    assert any(k.endswith(".bvh") for k in keys)
    table = node.kubectl("-n", NS, "get", "posejobs").stdout.decode().splitlines()
    assert table[0].split()[:5] == ["NAME", "PHASE", "FRAMES", "PERSONS", "PIPELINE"]
    assert table[1].split()[:3] == ["walk", "Succeeded", "32/32"]


def test_a_posejob_split_over_three_pods_gives_what_one_pod_gives(node, clip_in_store):
    posejob(node, "walk-split", clip_in_store, options={"stride": 1}, parallelism=3)
    pods = wait_for("three runner pods", lambda: (lambda items: items if len(items) >= 3 else None)(
        kubectl_json(node, "-n", NS, "get", "pods", "-l", "posegraph.io/posejob=walk-split")["items"]), timeout=120)
    assert len({p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods}) == 3
    wait_posejob(node, "walk-split")
    whole, split = frames_of(node, "walk"), frames_of(node, "walk-split")
    assert [d["frame_index"] for d in split] == [d["frame_index"] for d in whole] == list(range(32))
    for a, b in zip(split, whole):
        assert len(a["persons"]) == len(b["persons"])
        for pa, pb in zip(a["persons"], b["persons"]):
            assert np.allclose(pa["bbox"], pb["bbox"], atol=1e-4)
            assert np.allclose(pa["keypoints2d"], pb["keypoints2d"], atol=1e-4)
            assert np.allclose(pa["keypoints3d"], pb["keypoints3d"], atol=1e-4)


def _progress(node, name: str) -> int:
    status = kubectl_json(node, "-n", NS, "get", "posejob", name).get("status") or {}
    return int((status.get("progress") or {}).get("frames_done") or 0)


@pytest.fixture(scope="module")
def long_clip(node):
    """A clip long enough to act on a job while it runs (96 frames: ~40 s of graph calls here)."""
    from posegraph.media.samples import synthetic_clip_frames, write_clip

    path = Path(tempfile.mkdtemp()) / "long.mp4"
    write_clip(path, synthetic_clip_frames(96))
    s3(node).upload_file(str(path), "posegraph-videos", "test/long.mp4")
    return "s3://posegraph-videos/test/long.mp4"


def exactly_once(node, name: str, frames: int) -> None:
    rows = psql(node, f"select count(*), count(distinct frame_index), count(*) filter (where status <> 'ok') "
                      f"from frames where job_id = '{NS}-{name}'")
    assert rows == [[str(frames), str(frames), "0"]], rows
    dupes = psql(node, f"select count(*) from (select frame_index, person_index from persons where job_id = "
                       f"'{NS}-{name}' group by 1, 2 having count(*) > 1) d")
    assert dupes == [["0"]]


def test_a_stage_pod_deleted_mid_job_costs_no_frame(node, long_clip):
    posejob(node, "stage-lost", long_clip)
    wait_for("the job under way", lambda: _progress(node, "stage-lost") >= 8, timeout=240, every=1)
    pod = kubectl_json(node, "-n", NS, "get", "pods", "-l", "posegraph.io/stage=pose2d")["items"][0]
    node.kubectl("-n", NS, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    assert _progress(node, "stage-lost") < 96, "the pod went while frames were still to do"
    wait_posejob(node, "stage-lost", timeout=600)
    exactly_once(node, "stage-lost", 96)


def test_a_runner_pod_killed_mid_job_is_retried_and_resumes(node, long_clip):
    posejob(node, "runner-lost", long_clip, backoffLimit=2)
    wait_for("the job under way", lambda: _progress(node, "runner-lost") >= 8, timeout=240, every=1)
    first = kubectl_json(node, "-n", NS, "get", "pods", "-l", "posegraph.io/posejob=runner-lost")["items"][0]
    node.kubectl("-n", NS, "delete", "pod", first["metadata"]["name"], "--grace-period=0", "--force", "--wait=false")
    done_before = _progress(node, "runner-lost")
    assert done_before < 96
    body = wait_posejob(node, "runner-lost", timeout=600)
    pods = kubectl_json(node, "-n", NS, "get", "pods", "-l", "posegraph.io/posejob=runner-lost")["items"]
    assert len(pods) >= 1 and all(p["metadata"]["uid"] != first["metadata"]["uid"] for p in pods)
    assert body["status"]["frames"] == "96/96"
    exactly_once(node, "runner-lost", 96)


def test_a_new_operator_adopts_what_exists_and_creates_nothing_twice(node, clip_in_store):
    def children() -> dict[str, str]:
        found = {}
        for kind in ("inferenceservices", "inferencegraphs", "jobs"):
            for item in kubectl_json(node, "-n", NS, "get", kind)["items"]:
                found[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["uid"]
        return found
    before = children()
    old = kubectl_json(node, "-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=operator")["items"][0]
    node.kubectl("-n", NS, "delete", "pod", old["metadata"]["name"])
    new = wait_for("a new operator Ready", lambda: [p for p in kubectl_json(
        node, "-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=operator")["items"]
        if p["metadata"]["uid"] != old["metadata"]["uid"] and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))], timeout=180)
    time.sleep(10)   # its resume handlers have run over everything that exists
    assert children() == before, "the same objects, none made again"
    assert kubectl_json(node, "-n", NS, "get", "posepipeline", "demo")["status"]["phase"] == "Ready"
    posejob(node, "after-restart", clip_in_store)
    wait_posejob(node, "after-restart")
    log = node.kubectl("-n", NS, "logs", new[0]["metadata"]["name"]).stdout.decode()
    assert "Traceback" not in log


# ---- what a user sees when something is wrong -----------------------------------------------------------

def warning_events(node, kind: str, name: str) -> list[dict]:
    return [e for e in kubectl_json(node, "-n", NS, "get", "events")["items"]
            if e["involvedObject"].get("kind") == kind and e["involvedObject"].get("name") == name
            and e["type"] == "Warning"]


def test_a_missing_secret_is_named_on_the_posejob(node, clip_in_store):
    posejob(node, "no-secret", clip_in_store, secret="no-such-secret")
    # The kubelet's first word can be 'failed to sync secret cache: timed out waiting for the
    # condition' (seen in a CI run: that Warning came first) before 'secret "..." not found'; the
    # operator posts each new cause, so the one that names the Secret follows.
    named = 'secret "no-such-secret" not found'
    try:
        events = wait_for("a Warning on the PoseJob that names the Secret", lambda: [
            e for e in warning_events(node, "PoseJob", "no-secret") if named in e["message"]], timeout=180)
    except AssertionError as exc:
        seen = [(e["reason"], e["message"]) for e in warning_events(node, "PoseJob", "no-secret")]
        raise AssertionError(f"{exc}; the Warnings on it: {seen}") from None
    assert all(e["reason"] == "ConfigError" for e in events)
    assert all(e["reason"] == "ConfigError" for e in warning_events(node, "PoseJob", "no-secret"))
    wait_for("the PoseJob's status message naming the Secret", lambda: named in (
        kubectl_json(node, "-n", NS, "get", "posejob", "no-secret").get("status") or {}).get("message", ""),
        timeout=60)
    node.kubectl("-n", NS, "delete", "posejob", "no-secret")


def broken_pipeline(node, name: str, **spec) -> None:
    # the chart's stage ServiceAccount carries the object store's credentials (without it the
    # storage initializer fails on credentials, whatever the URI)
    small = {"resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
             "serviceAccountName": "posegraph-stage"}
    prefix = spec.pop("prefix", "s3://posegraph-models/demo/")
    node.apply({"apiVersion": "posegraph.io/v1alpha1", "kind": "PosePipeline",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"runtime": "kserve", **spec,
                         "stages": {s: {"storageUri": f"{prefix}{s}/", **small} for s in ("detect", "pose2d", "lift3d")}}})


def test_an_archive_that_is_not_there_is_named_on_the_pipeline(node):
    broken_pipeline(node, "no-archive", prefix="s3://posegraph-models/nothing-here/")
    events = wait_for("a Warning on the PosePipeline", lambda: [
        e for e in warning_events(node, "PosePipeline", "no-archive") if e["reason"] == "StorageInitializerFailed"],
        timeout=240)
    assert "s3://posegraph-models/nothing-here/" in events[0]["message"]
    assert events[0]["message"].startswith("stage ")
    # and it is the URI that failed, not the credentials
    pod = kubectl_json(node, "-n", NS, "get", "pods", "-l", "posegraph.io/pipeline=no-archive,component=predictor")["items"][0]
    # The initializer restarts (CrashLoopBackOff): the instance running now may not have reached its
    # error yet (a CI run of 2026-12-07 read one 1 ms in), so the one before it is read too.
    def logs() -> str:
        return "".join(node.kubectl("-n", NS, "logs", pod["metadata"]["name"], "-c", "storage-initializer", *flag,
                                    check=False).stdout.decode() for flag in ((), ("--previous",)))
    wait_for("'No model found in nothing-here/' in the storage initializer's log",
             lambda: "No model found in nothing-here/" in logs(), timeout=120)
    node.kubectl("-n", NS, "delete", "posepipeline", "no-archive")


def test_an_image_that_cannot_be_pulled_is_named_on_the_pipeline(node):
    runtime = kubectl_json(node, "get", "clusterservingruntime", "posegraph-kserve")
    runtime["metadata"] = {"name": "posegraph-kserve-missing-image"}
    runtime["spec"]["containers"][0]["image"] = "posegraph/posegraph-stage-kserve:no-such-tag"
    runtime["spec"]["containers"][0]["imagePullPolicy"] = "Never"
    node.apply(runtime)
    broken_pipeline(node, "no-image", servingRuntimes={"kserve": "posegraph-kserve-missing-image"})
    events = wait_for("a Warning on the PosePipeline", lambda: [
        e for e in warning_events(node, "PosePipeline", "no-image") if e["reason"] == "ImagePullFailed"], timeout=240)
    assert "posegraph/posegraph-stage-kserve:no-such-tag" in events[0]["message"]
    node.kubectl("-n", NS, "delete", "posepipeline", "no-image")
    node.kubectl("delete", "clusterservingruntime", "posegraph-kserve-missing-image")


# ---- NetworkPolicies, enforced ------------------------------------------------------------------------------

CONNECT = ("import socket, sys\n"
           "for target in sys.argv[1:]:\n"
           "    host, port = target.rsplit(':', 1)\n"
           "    try:\n"
           "        socket.create_connection((host, int(port)), timeout=4).close(); print(target, 'open')\n"
           "    except OSError as e:\n"
           "        print(target, 'closed', e)\n")

# Where each destination listens (every one of them is reached by some source below, so a "closed"
# is the policy's doing, not a port nobody listens on).
DESTINATIONS = {"stage:detect": ("serving.kserve.io/inferenceservice=demo-detect", 8080),
                "stage:lift3d": ("serving.kserve.io/inferenceservice=demo-lift3d", 8080),
                "router": ("serving.kserve.io/inferencegraph=demo", 8080),
                "postgresql": ("app.kubernetes.io/component=postgresql", 5432),
                "object-store": ("app.kubernetes.io/component=object-store", 8333),
                "ui": ("app.kubernetes.io/component=ui", 8088),
                "operator": ("app.kubernetes.io/component=operator", 9101)}


def pod_of(node, selector: str) -> dict:
    pods = [p for p in kubectl_json(node, "-n", NS, "get", "pods", "-l", selector)["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert pods, f"no running pod for {selector}"
    return pods[0]


def probe_results(log: str) -> dict[str, bool]:
    return {line.split()[0]: line.split()[1] == "open" for line in log.splitlines() if line.count(" ") >= 1
            and line.split()[1] in ("open", "closed")}


def test_the_charts_policies_are_enforced_as_the_model_says(node):
    """kube-router enforces the chart's policies on real traffic, and decides each connection as
    tests/test_networkpolicy.py's model of NetworkPolicy semantics does for the kind values: from
    the pods of the release (a stage, the UI, the operator: commands run in them), from pods with
    a runner's labels and a neighbour's in the release namespace, and from a pod of another
    namespace, to each server of the release on its port."""
    import test_networkpolicy as model

    expected_cluster = model.cluster("kind")
    targets = {}
    for role, (selector, port) in DESTINATIONS.items():
        targets[role] = f"{pod_of(node, selector)['status']['podIP']}:{port}"
    seen: dict[tuple[str, str], bool] = {}

    def record(source: str, log: str) -> None:
        results = probe_results(log)
        for role, target in targets.items():
            if role == source:
                continue   # a pod reaching its own address never leaves its network namespace
            assert target in results, f"{source} did not probe {role}: {log}"
            seen[(source, role)] = results[target]

    # The release's own pods (the router's image has no shell; it is a destination only).
    for source, selector in (("stage:detect", DESTINATIONS["stage:detect"][0]), ("ui", DESTINATIONS["ui"][0]),
                             ("operator", DESTINATIONS["operator"][0])):
        name = pod_of(node, selector)["metadata"]["name"]
        container = ["-c", "kserve-container"] if source.startswith("stage:") else []
        done = node.kubectl("-n", NS, "exec", name, *container, "--", "python", "-c", CONNECT, *targets.values(),
                            check=False)
        assert done.returncode == 0, done.stderr.decode()
        record(source, done.stdout.decode())
    # Pods made for the probe, with the model's labels (a fake Job uid: no controller adopts them).
    node.kubectl("create", "namespace", "elsewhere", check=False)
    node.kubectl("label", "--overwrite", "namespace", "elsewhere", "pod-security.kubernetes.io/enforce=restricted")
    probe = ["python", "-c", CONNECT, *targets.values()]
    for source, namespace in (("runner", NS), ("neighbour", NS), ("stranger", "elsewhere")):
        labels = expected_cluster.pod(source, namespace).labels
        phase, log = run_pod(node, f"probe-{source}", namespace, probe, labels=labels)
        assert phase == "Succeeded", log
        record(source, log)
    node.kubectl("delete", "namespace", "elsewhere", "--wait=false")

    differ = []
    for (source, role), opened in sorted(seen.items()):
        namespace = "elsewhere" if source == "stranger" else NS
        want = expected_cluster.allows(expected_cluster.pod(source, namespace), expected_cluster.pod(role),
                                       DESTINATIONS[role][1])
        if opened != want:
            differ.append(f"{source} -> {role}:{DESTINATIONS[role][1]}: {'open' if opened else 'refused'}, "
                          f"the model says {'allowed' if want else 'refused'}")
    assert not differ, "\n".join(differ)
    # What matters most, said plainly: another namespace reaches no stage and no database.
    for role in ("stage:detect", "stage:lift3d", "postgresql", "object-store", "router"):
        assert seen[("stranger", role)] is False, role
    for role in ("stage:detect", "router", "postgresql", "object-store"):
        assert seen[("runner", role)] is True, role
    print(f"\n{len(seen)} connections probed, {sum(seen.values())} open, all as the model says")


# ---- the web UI in a browser ----------------------------------------------------------------------------

def test_the_ui_pod_serves_its_page_and_a_photo_gets_a_skeleton(node, astronaut, artifacts, tmp_path):
    import shutil

    from playwright.sync_api import sync_playwright

    password = base64.b64decode(kubectl_json(node, "-n", NS, "get", "secret", "posegraph-ui-auth")["data"]["password"]
                                ).decode()
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), astronaut)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no chromium: `make test` installs Debian's"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--use-angle=swiftshader"])
        context = browser.new_context(http_credentials={"username": "posegraph", "password": password},
                                      viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(UI_URL + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.set_input_files("#photo-file", str(photo))
        with page.expect_response("**/api/photo", timeout=120_000) as response:
            page.click("#photo-form button")
        assert response.value.status == 200
        page.wait_for_selector("#photo-canvas[data-persons]", timeout=60_000)
        assert int(page.get_attribute("#photo-canvas", "data-persons")) == len(response.value.json()["persons"]) > 0
        page.wait_for_selector("#photo-3d canvas")
        page.screenshot(path=str(artifacts / "node-ui-photo.png"), full_page=True)
        browser.close()
    assert not errors, errors


# ---- and down ----------------------------------------------------------------------------------------------

def test_cluster_down_leaves_nothing_behind(node):
    if node.test_before is None:
        pytest.skip("POSEGRAPH_TEST_CLUSTER: the cluster is yours, it stays up")
    timings = node.state()["timings"]
    started = time.monotonic()
    node.down()
    print(f"\nup: {timings}; down: {time.monotonic() - started:.0f}s")
    after = machine_state(node.dir)
    before = node.test_before
    assert after["processes"] == [] and after["mounts"] == []
    for key in ("links", "iptables rules", "iptables policies", "ipsets", "sysctls", "kubepods cgroups"):
        assert after[key] == before[key], f"{key}: {before[key]} before, {after[key]} after"
