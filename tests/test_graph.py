"""The pipeline spec → KServe objects, the local router's semantics, and the graph end to end."""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from tiers import tier
import yaml
from k8s_schema import validate

from posegraph.graph.kserve_objects import render
from posegraph.graph.spec import load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pipeline.yaml"


def posegraph(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "posegraph", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def minimal(**spec):
    return {"metadata": {"name": "p1"},
            "spec": {"stages": {s: {"storageUri": f"s3://b/p1/{s}/"} for s in ("detect", "pose2d", "lift3d")},
                     **spec}}


# ---- spec → KServe objects ---------------------------------------------------------------------

def test_rendered_objects_validate_strictly_against_kserve_crds():
    manifests = render(load_pipeline(EXAMPLE))
    assert [m["kind"] for m in manifests] == ["InferenceService"] * 3 + ["InferenceGraph"]
    for manifest in manifests:
        validate(manifest)


def test_inference_services_carry_the_stage_deployment():
    isvcs = {m["metadata"]["name"]: m for m in render(load_pipeline(EXAMPLE))[:3]}
    assert set(isvcs) == {"demo-detect", "demo-pose2d", "demo-lift3d"}
    model = isvcs["demo-pose2d"]["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["protocolVersion"] == "v1"
    assert model["storageUri"] == "s3://posegraph-models/demo/pose2d/"
    assert model["runtime"] == "posegraph-torchserve-gpu"  # the CUDA image's runtime
    assert isvcs["demo-detect"]["spec"]["predictor"]["model"]["runtime"] == "posegraph-torchserve"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    predictor = isvcs["demo-pose2d"]["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"posegraph.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in predictor["tolerations"]
    assert "nvidia.com/gpu" not in isvcs["demo-detect"]["spec"]["predictor"]["model"]["resources"]["limits"]
    for isvc in isvcs.values():
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        assert isvc["metadata"]["labels"]["posegraph.io/pipeline"] == "demo"


def test_inference_graph_is_a_hard_sequence_of_the_stages():
    graph = render(load_pipeline(EXAMPLE))[3]
    root = graph["spec"]["nodes"]["root"]
    assert root["routerType"] == "Sequence"
    assert [s["name"] for s in root["steps"]] == ["detect", "pose2d", "lift3d"]
    for step in root["steps"]:
        assert step["data"] == "$response" and step["mapPredictionsToInstances"] is True
        assert step["dependency"] == "Hard"
    assert graph["spec"]["routerTimeouts"] == {"serverRead": 120, "serverWrite": 120, "serviceClient": 60}


def test_steps_name_the_model_url_unless_the_model_is_named_like_its_service():
    """KServe calls /v1/models/<InferenceService name>:predict for serviceName steps."""
    steps = render(parse_pipeline(minimal()))[3]["spec"]["nodes"]["root"]["steps"]
    assert steps[0]["serviceUrl"] == "http://p1-detect-predictor.default.svc.cluster.local/v1/models/detect:predict"
    named = minimal()
    named["spec"]["stages"]["detect"]["modelName"] = "p1-detect"
    steps = render(parse_pipeline(named))[3]["spec"]["nodes"]["root"]["steps"]
    assert steps[0] == {**steps[0], "serviceName": "p1-detect"} and "serviceUrl" not in steps[0]


def test_auth_secret_becomes_an_env_var_from_the_secret():
    manifests = render(parse_pipeline(minimal(authSecretRef={"name": "stage-token"})))
    env = manifests[0]["spec"]["predictor"]["model"]["env"]
    assert env == [{"name": "POSEGRAPH_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "stage-token", "key": "token"}}}]
    validate(manifests[0])


@pytest.mark.parametrize(
    "patch,message",
    [
        (lambda d: d["spec"]["stages"].pop("lift3d"), "missing ['lift3d']"),
        (lambda d: d["spec"]["stages"]["detect"].update(storageUrl="x"), "storageUrl"),
        (lambda d: d["metadata"].update(name="My_Pipeline"), "DNS label"),
        (lambda d: d["spec"].update(runtime="triton"), "runtime"),
        (lambda d: d["spec"]["stages"]["detect"].update(minReplicas=3, maxReplicas=1), "maxReplicas"),
    ],
)
def test_bad_specs_fail_with_one_named_line(tmp_path, patch, message):
    data = minimal()
    patch(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    result = posegraph("graph", "render", path)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_graph_render_cli_prints_valid_yaml():
    result = posegraph("graph", "render", EXAMPLE)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert len(docs) == 4
    for doc in docs:
        validate(doc)


# ---- the router's semantics, against small real HTTP services -----------------------------------

class Step(http.server.BaseHTTPRequestHandler):
    """A service that records what it got and answers as told by its server's `behaviour`."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        server = self.server
        server.seen.append({"body": json.loads(body), "headers": dict(self.headers)})
        status, answer, delay = server.behaviour(json.loads(body))
        time.sleep(delay)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def service(behaviour):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Step)
    server.seen, server.behaviour = [], behaviour
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1/models/x:predict"


def append(tag):
    """A step that adds its tag to every document: {"instances": [...]} → {"predictions": [...]}."""
    def behaviour(body):
        if "instances" not in body:
            return 400, {"error": f"{tag}: no instances"}, 0
        return 200, {"predictions": [{**d, "seen": d.get("seen", []) + [tag]} for d in body["instances"]]}, 0
    return behaviour


@pytest.fixture(params=["posegraph", "kserve"])
@tier("servers")
def router(request, kserve_router, tmp_path):
    """Starts a graph router, posegraph's and KServe's own (each test runs with both); `.kind` says
    which, where the two differ on purpose (docs/graph.md, "posegraph's router and KServe's")."""
    from services import free_port

    from posegraph.embedded import start_router

    started = []

    def start(steps, timeouts=None, headers=("Authorization", "X-Request-Id", "X-Trace-.*")):
        spec = {"nodes": {"root": {"routerType": "Sequence", "steps": steps}},
                "routerTimeouts": timeouts or {"serviceClient": 5}}
        port = free_port()
        started.append(start_router(request.param, spec, port, list(headers), log=tmp_path / f"router-{port}.log"))
        return f"http://127.0.0.1:{port}/"

    start.kind = request.param
    yield start
    for proc in started:
        proc.kill()  # KServe's router drains for 30 s on SIGTERM; neither holds state
        proc.wait(10)


def step(name, url, **extra):
    return {"name": name, "serviceUrl": url, "data": "$response", "mapPredictionsToInstances": True,
            "dependency": "Hard", **extra}


def test_sequence_passes_responses_on_as_instances(router):
    (a, url_a), (b, url_b) = service(append("a")), service(append("b"))
    url = router([step("a", url_a), step("b", url_b)])
    response = httpx.post(url, json={"instances": [{"n": 1}, {"n": 2}]})
    assert response.status_code == 200
    assert response.json() == {"predictions": [{"n": 1, "seen": ["a", "b"]}, {"n": 2, "seen": ["a", "b"]}]}
    assert b.seen[0]["body"] == {"instances": [{"n": 1, "seen": ["a"]}, {"n": 2, "seen": ["a"]}]}


def test_without_data_response_a_step_gets_the_graph_input(router):
    (a, url_a), (b, url_b) = service(append("a")), service(append("b"))
    url = router([step("a", url_a), {**step("b", url_b), "data": ""}])
    httpx.post(url, json={"instances": [{"n": 1}]})
    assert b.seen[0]["body"] == {"instances": [{"n": 1}]}


def test_without_mapping_the_next_step_gets_predictions_as_they_are(router):
    (a, url_a), (b, url_b) = service(append("a")), service(append("b"))
    url = router([step("a", url_a), {**step("b", url_b), "mapPredictionsToInstances": False}])
    response = httpx.post(url, json={"instances": [{"n": 1}]})
    assert response.status_code == 400 and response.json() == {"error": "b: no instances"}


def test_hard_dependency_stops_at_a_4xx_and_passes_it_back(router):
    (a, url_a), (c, url_c) = service(lambda body: (422, {"error": "a says no"}, 0)), service(append("c"))
    url = router([step("a", url_a), step("c", url_c)])
    response = httpx.post(url, json={"instances": [{}]})
    assert response.status_code == 422 and response.json() == {"error": "a says no"}
    assert c.seen == [], "a Hard failure ends the sequence"


def test_soft_dependency_goes_on(router):
    (a, url_a), (c, url_c) = service(lambda body: (500, {"error": "a broke"}, 0)), service(lambda body: (200, {"predictions": ["c"]}, 0))
    url = router([{**step("a", url_a), "dependency": "Soft"}, {**step("c", url_c), "mapPredictionsToInstances": False}])
    response = httpx.post(url, json={"instances": [{}]})
    assert response.status_code == 200 and response.json() == {"predictions": ["c"]}
    assert c.seen[0]["body"] == {"error": "a broke"}, "$response is the failed step's body"


def test_unreachable_step_is_a_5xx_at_once(router):
    """posegraph's router: 502 naming the step; KServe's: 500 {"error", "cause"} (docs/graph.md)."""
    from services import free_port

    _, url_a = service(append("a"))
    url = router([step("a", url_a), step("b", f"http://127.0.0.1:{free_port()}/v1/models/b:predict")])
    started = time.monotonic()
    response = httpx.post(url, json={"instances": [{}]})
    assert time.monotonic() - started < 5
    if router.kind == "posegraph":
        assert response.status_code == 502 and response.json()["step"] == "b"
        assert "unreachable" in response.json()["error"]
    else:
        assert response.status_code == 500 and response.json()["error"] == "Failed to process request"
        assert "connection refused" in response.json()["cause"]


def test_slow_step_is_a_5xx_within_the_step_timeout(router):
    """posegraph's router: 504 naming the step; KServe's: 500 with the client's timeout as cause."""
    _, url_slow = service(lambda body: (200, {"predictions": []}, 3.0))
    url = router([step("slow", url_slow)], timeouts={"serviceClient": 1})
    started = time.monotonic()
    response = httpx.post(url, json={"instances": [{}]}, timeout=30)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5
    if router.kind == "posegraph":
        assert response.status_code == 504 and response.json()["step"] == "slow"
    else:
        assert response.status_code == 500 and "Timeout" in response.json()["cause"]


def test_headers_and_request_id_are_propagated(router):
    a, url_a = service(append("a"))
    b, url_b = service(append("b"))
    url = router([step("a", url_a), step("b", url_b)])
    response = httpx.post(url, json={"instances": [{}]}, headers={
        "authorization": "Bearer t0ken", "X-Trace-Span": "s1", "X-Secret-Internal": "no", "X-Request-Id": "req-42"})
    for server in (a, b):
        headers = {k.lower(): v for k, v in server.seen[0]["headers"].items()}
        assert headers["authorization"] == "Bearer t0ken" and headers["x-trace-span"] == "s1"
        assert headers["x-request-id"] == "req-42" and "x-secret-internal" not in headers
    if router.kind == "kserve":  # forwarded as sent, neither echoed nor generated
        assert "x-request-id" not in response.headers
        httpx.post(url, json={"instances": [{}]})
        assert "x-request-id" not in {k.lower() for k in a.seen[1]["headers"]}
        return
    assert response.headers["x-request-id"] == "req-42"
    generated = httpx.post(url, json={"instances": [{}]}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f-]{36}", generated)
    assert {k.lower(): v for k, v in a.seen[1]["headers"].items()}["x-request-id"] == generated


def test_header_patterns_match_like_kserves(router):
    """Unanchored and case-sensitive against the canonical name: "Trace" forwards X-Trace-Span and
    Traceparent; "x-trace" forwards nothing (canonical names are X-Trace-…)."""
    a, url_a = service(append("a"))
    url = router([step("a", url_a)], headers=("Trace", "x-secret"))
    httpx.post(url, json={"instances": [{}]}, headers={"x-trace-span": "s1", "traceparent": "00-1", "x-secret-a": "no"})
    headers = {k.lower(): v for k, v in a.seen[0]["headers"].items()}
    assert headers["x-trace-span"] == "s1" and headers["traceparent"] == "00-1" and "x-secret-a" not in headers


def test_mapping_keeps_only_the_predictions(router):
    """KServe maps a non-empty predictions list to {"instances": …} and drops every other key; an
    empty list is passed on as it is."""
    a, url_a = service(lambda body: (200, {"predictions": body["instances"], "model_name": "a"}, 0))
    b, url_b = service(lambda body: (200, {"predictions": [], "echo": body}, 0))
    c, url_c = service(lambda body: (200, {"got": body}, 0))
    url = router([step("a", url_a), step("b", url_b), step("c", url_c)])
    response = httpx.post(url, json={"instances": [{"n": 1}]})
    assert b.seen[0]["body"] == {"instances": [{"n": 1}]}
    assert c.seen[0]["body"] == {"predictions": [], "echo": {"instances": [{"n": 1}]}}
    assert response.json() == {"got": c.seen[0]["body"]}


def test_router_refuses_graphs_it_cannot_run_like_kserve():
    for spec, message in [
        ({"nodes": {"root": {"routerType": "Ensemble", "steps": []}}}, "Sequence only"),
        ({"nodes": {"root": {"routerType": "Sequence", "steps": [{"name": "a", "serviceName": "x"}]}}}, "serviceUrl"),
        ({"nodes": {"start": {"routerType": "Sequence", "steps": []}}}, "'root'"),
    ]:
        result = subprocess.run([sys.executable, "-m", "posegraph.graph.router", "--graph-json", json.dumps(spec),
                                 "--port", "1"], capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and message in result.stderr


# ---- end to end: `posegraph up`, the client, failures ---------------------------------------------

@pytest.fixture(scope="module")
@tier("servers")
def local_graph(checkpoints):
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph

    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    graph = start_local_graph(default_pipeline(layouts, "torchserve"), layouts)
    yield graph
    graph.stop()


def jpeg_bytes(pixels):
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def test_graph_equals_in_process_pipeline(local_graph, checkpoints, astronaut):
    from posegraph.client import GraphClient
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    data = jpeg_bytes(astronaut)
    with GraphClient(local_graph.endpoint) as client:
        served = client.infer_image(data)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    local = Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load().image(pixels)
    assert len(served.persons) == len(local.persons) > 0
    for a, b in zip(served.persons, local.persons):
        assert np.allclose(a.bbox, b.bbox, atol=1e-3)
        assert np.allclose(a.keypoints2d, b.keypoints2d, atol=1e-3)
        assert np.allclose(a.keypoints3d, b.keypoints3d, atol=1e-4)
    assert set(served.stages) == {"detect", "pose2d", "lift3d"}


def test_call_cli_against_the_graph(local_graph, astronaut, tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg_bytes(astronaut))
    result = posegraph("call", photo, "--endpoint", local_graph.endpoint, "--out", tmp_path / "doc.json",
                       "--overlay", tmp_path / "overlay.jpg")
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "doc.json").read_text())
    assert doc["schema"] == "posegraph/frame/v1" and len(doc["persons"][0]["keypoints3d"]) == 17
    assert "persons" in result.stderr and cv2.imread(str(tmp_path / "overlay.jpg")) is not None
    bad = posegraph("call", tmp_path / "missing.jpg", "--endpoint", local_graph.endpoint)
    assert bad.returncode != 0 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_zero_persons_come_back_unchanged(local_graph):
    blank = {"image": {"data": base64.b64encode(jpeg_bytes(np.full((90, 120, 3), 127, np.uint8))).decode()},
             "persons": [], "client_ref": 7}
    # Straight to pose2d → lift3d: a document that already says "nobody here".
    url = local_graph.servers["pose2d"].predict_url
    response = httpx.post(url, json={"instances": [blank]}).json()["predictions"][0]
    assert response["persons"] == [] and response["client_ref"] == 7


def test_bad_input_comes_back_as_the_stage_4xx(local_graph):
    response = httpx.post(local_graph.endpoint, json={"instances": [{"image": {"data": "bm90IGFuIGltYWdl"}}]})
    assert response.status_code == 400
    assert "not a decodable image" in response.json()["error"]
    response = httpx.post(local_graph.endpoint, content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_metrics_move(local_graph, astronaut):
    from posegraph.client import GraphClient

    def value(text, name, **labels):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(name) and all(f'{k}="{v}"' in l for k, v in labels.items()))

    before = httpx.get(local_graph.endpoint + "metrics").text
    with GraphClient(local_graph.endpoint) as client:
        client.infer_image(jpeg_bytes(astronaut[:256, :256]))
    after = httpx.get(local_graph.endpoint + "metrics").text
    assert value(after, "posegraph_router_requests_total", code="200") == value(before, "posegraph_router_requests_total", code="200") + 1
    for stage in ("detect", "pose2d", "lift3d"):
        assert value(after, "posegraph_router_step_seconds_count", step=stage) == value(
            before, "posegraph_router_step_seconds_count", step=stage) + 1


def test_a_stage_going_down_is_a_clear_error(checkpoints, astronaut, starts_servers):
    """Its own graph: this test kills a stage."""
    from posegraph.client import GraphClient, GraphError
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph

    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    pipeline = default_pipeline(layouts, "kserve")  # the other runtime, so both serve a graph here
    with start_local_graph(pipeline, layouts) as graph:
        with GraphClient(graph.endpoint) as client:
            assert client.infer_image(jpeg_bytes(astronaut)).persons
            graph.servers["pose2d"].stop()
            started = time.monotonic()
            with pytest.raises(GraphError) as info:
                client.infer_image(jpeg_bytes(astronaut))
        assert info.value.status == 502 and info.value.step == "pose2d"
        assert "pose2d" in str(info.value) and time.monotonic() - started < 10
        metrics = httpx.get(graph.endpoint + "metrics").text
        assert 'posegraph_router_step_errors_total{reason="unreachable",step="pose2d"} 1.0' in metrics


@pytest.mark.parametrize("router", ["posegraph", "kserve"])
def test_up_cli_runs_and_stops_cleanly_on_ctrl_c(checkpoints, astronaut, tmp_path, router, kserve_router):
    from services import free_port

    port = free_port()
    # SIGINT as a terminal leaves it: a shell's background job (a `make test &`) starts its children
    # with SIGINT ignored, and Python then installs no KeyboardInterrupt at all; so two full runs of
    # 2026-12-07 saw `up` still running 60 s after the SIGINT below.
    proc = subprocess.Popen([sys.executable, "-m", "posegraph", "up", "--checkpoints", str(checkpoints),
                             "--port", str(port), "--runtime", "kserve", "--router", router],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "graph ready" in line or proc.poll() is not None:
                break
        assert any("graph ready" in l for l in lines), "".join(lines)
        for _ in range(5):  # the server list follows the ready line
            lines.append(proc.stdout.readline())
        photo = tmp_path / "a.jpg"
        photo.write_bytes(jpeg_bytes(astronaut))
        result = posegraph("call", photo, "--endpoint", f"http://127.0.0.1:{port}/")
        assert result.returncode == 0, result.stderr
        children = [int(m) for l in lines for m in re.findall(r"127\.0\.0\.1:(\d+)/v1/models", l)]
        assert len(children) == 3
        said = {"posegraph": "posegraph's graph router", "kserve": "KServe's InferenceGraph router"}[router]
        assert sum(said in l for l in lines) == 2, "".join(lines)  # starting …, and the router's line
    finally:
        proc.send_signal(signal.SIGINT)
        # Read to the end while it stops: unread, a full pipe would hold up its exit (alone it takes
        # about 3 s); what it says shows why, should it not stop.
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("`posegraph up` still ran 60 s after SIGINT:\n" + "".join(lines) + proc.communicate()[0])
    assert proc.returncode == 0, "".join(lines) + rest
    for stage_port in children + [port]:  # nothing is left listening
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{stage_port}/", timeout=2)


def test_up_from_a_spec_with_archives_in_s3(checkpoints, s3, tmp_path, astronaut):
    from posegraph.client import GraphClient
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_pipeline, archives_for_profile, start_local_graph
    from posegraph.serving.archive import push

    s3.create_bucket("pipelines")
    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    old = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        for stage, layout in layouts.items():
            push(layout, f"s3://pipelines/p2/{stage}/")
        spec = tmp_path / "p2.yaml"
        spec.write_text(yaml.safe_dump({
            "apiVersion": "posegraph.io/v1alpha1", "kind": "PosePipeline", "metadata": {"name": "p2"},
            "spec": {"runtime": "kserve",
                     "stages": {s: {"storageUri": f"s3://pipelines/p2/{s}/"} for s in layouts}}}))
        pipeline = load_pipeline(spec)
        with start_local_graph(pipeline, archives_for_pipeline(pipeline)) as graph, GraphClient(graph.endpoint) as c:
            assert len(c.infer_image(jpeg_bytes(astronaut)).persons) > 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_up_with_kserves_router_not_built_says_how_to_build_it(checkpoints, tmp_path):
    result = posegraph("up", "--checkpoints", checkpoints, "--router", "kserve",
                       env={"POSEGRAPH_KSERVE_ROUTER": str(tmp_path / "no-router")}, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "scripts/control-plane.sh build-router" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ---- the GJSON subset of a step's condition (posegraph.graph.gjson) --------------------------------------
@pytest.mark.parametrize("path,body,expected", [
    ("predictions.#(per_track_3d!=~true)", {"predictions": [{}]}, True),            # missing: not true-ish
    ("predictions.#(per_track_3d!=~true)", {"predictions": [{"per_track_3d": True}]}, False),
    ("predictions.#(per_track_3d!=~true)", {"predictions": [{"per_track_3d": True}, {}]}, True),
    ("predictions.#(per_track_3d!=~true)", {"predictions": [{"per_track_3d": "TRUE"}]}, False),  # ParseBool
    ("predictions.#(per_track_3d!=~true)", {"predictions": [{"per_track_3d": 0}]}, True),
    ("predictions.#(per_track_3d!=~true)", {"predictions": []}, False),
    ("predictions.#(per_track_3d!=~true)", {"error": "x"}, False),
    ("predictions.#(x==~false)", {"predictions": [{}]}, True),                    # missing reads as null: false-ish
    ("predictions.#(x==~null)", {"predictions": [{"x": None}]}, True),
    ("predictions.#(x==~*)", {"predictions": [{}]}, False),
    ("predictions.#(x==3)", {"predictions": [{"x": 3}]}, True),
    ("predictions.#(x!=3)", {"predictions": [{}]}, False),                         # no ~: a missing key never matches
    ("predictions.0.persons", {"predictions": [{"persons": []}]}, True),
    ("predictions.1", {"predictions": [{}]}, False),
])
def test_conditions_read_as_gjson_reads_them(path, body, expected):
    from posegraph.graph import gjson

    assert gjson.exists(body, gjson.parse(path)) is expected


@pytest.mark.parametrize("path", ["predictions.#(x>3)", "predictions.#[x==1]#", "a|b", "predictions.#(x==nope)"])
def test_conditions_beyond_the_subset_are_refused_when_the_router_starts(path):
    from posegraph.graph.router import GraphSpecError, check_graph

    spec = {"nodes": {"root": {"routerType": "Sequence", "steps": [
        {"name": "a", "serviceUrl": "http://127.0.0.1:1/"}, {"name": "b", "serviceUrl": "http://127.0.0.1:1/",
                                                              "condition": path}]}}}
    with pytest.raises(GraphSpecError, match="step b"):
        check_graph(spec)
