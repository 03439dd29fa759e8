"""Model archives served by real TorchServe (Java) and KServe's Python model server, on loopback."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from tiers import tier
import yaml

from posegraph.embedded import start_stage_server

STAGES = ("detect", "pose2d", "lift3d")


def posegraph(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "posegraph", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def archives(tmp_path_factory, checkpoints) -> Path:
    root = tmp_path_factory.mktemp("archives")
    for stage in STAGES:
        done = posegraph("models", "archive", "--stage", stage, "--out", root / stage, "--checkpoints", checkpoints,
                         "--batch-size", "8", "--max-batch-delay", "200")
        assert done.returncode == 0, done.stderr
    return root


def _servers(archives, runtime):
    servers = {stage: start_stage_server(stage, archives / stage, runtime=runtime) for stage in STAGES}
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
@tier("servers")
def torchserve(archives):
    yield from _servers(archives, "torchserve")


@pytest.fixture(scope="module")
@tier("servers")
def kserve(archives):
    yield from _servers(archives, "kserve")


@pytest.fixture(params=["torchserve", "kserve"])
@tier("servers")
def servers(request):
    return request.getfixturevalue(request.param)


def jpeg_doc(pixels, **extra):
    data = base64.b64encode(cv2.imencode(".jpg", pixels)[1].tobytes()).decode()
    return {"schema": "posegraph/frame/v1", "image": {"data": data, "format": "jpeg"}, **extra}


def predict(server, instances, **kwargs):
    return httpx.post(server.predict_url, json={"instances": instances}, timeout=120, **kwargs)


def chain(servers, instances):
    """detect → pose2d → lift3d by hand: each response's predictions become the next instances."""
    for stage in STAGES:
        response = predict(servers[stage], instances)
        assert response.status_code == 200, response.text
        instances = response.json()["predictions"]
    return instances


# ---- the archive -----------------------------------------------------------------------------

def test_archive_layout_is_what_kserve_expects(archives):
    for stage in STAGES:
        layout = archives / stage
        props = dict(line.split("=", 1) for line in (layout / "config" / "config.properties").read_text().splitlines())
        assert props["inference_address"] == "http://0.0.0.0:8080"  # KServe routes to 8080
        assert props["metrics_address"].endswith(":8082")  # the stock runtime's prometheus port
        assert props["disable_token_authorization"] == "true"  # explicit: see archive.config_properties
        assert props["enable_model_api"] == "false"
        assert props["management_address"].startswith("http://127.0.0.1")
        snapshot = json.loads(props["model_snapshot"])
        assert snapshot["models"][stage]["1.0"]["batchSize"] == 8
        with zipfile.ZipFile(layout / "model-store" / f"{stage}.mar") as mar:
            names = set(mar.namelist())
            manifest = yaml.safe_load(mar.read("stage.yaml"))
            mar_manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        assert {f"{stage}.onnx", "stage.yaml", "posegraph_handler.py", "MAR-INF/MANIFEST.json"} <= names
        assert mar_manifest["model"]["handler"] == "posegraph_handler.py"
        assert manifest["stage"] == stage and manifest["random_weights"] is True
        assert not any(n.endswith(".pth") for n in names), "archives carry the export, not the checkpoint"
    with zipfile.ZipFile(archives / "lift3d" / "model-store" / "lift3d.mar") as mar:
        assert "lift3d.window.onnx" in mar.namelist()


def test_push_uploads_the_layout_and_it_serves_from_a_download(archives, s3, tmp_path):
    s3.create_bucket("models")
    done = posegraph("models", "push", archives / "detect", "s3://models/pipelines/demo/detect/", env=s3.env())
    assert done.returncode == 0, done.stderr
    client = s3.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix="pipelines/demo/detect/")["Contents"])
    assert keys == ["pipelines/demo/detect/config/config.properties", "pipelines/demo/detect/config/metrics.yaml",
                    "pipelines/demo/detect/model-store/detect.mar"]
    # What KServe's storage initializer does with storageUri: copy the prefix to /mnt/models.
    for key in keys:
        dest = tmp_path / "mnt" / key.split("detect/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("models", key, str(dest))
    server = start_stage_server("detect", tmp_path / "mnt", runtime="kserve").wait_ready()
    try:
        assert predict(server, [{"width": 8, "height": 8, "persons": []}]).status_code == 400  # no image
    finally:
        server.stop()
    bad = posegraph("models", "push", archives / "detect", "s3://models/x/",
                    env={**s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert bad.returncode != 0 and "SignatureDoesNotMatch" in bad.stderr and "Traceback" not in bad.stderr
    not_a_layout = posegraph("models", "push", tmp_path, "s3://models/x/", env=s3.env())
    assert not_a_layout.returncode != 0 and "not an archive layout" in not_a_layout.stderr


# ---- both runtimes: correctness ------------------------------------------------------------------

def test_served_chain_equals_in_process_pipeline(servers, checkpoints, astronaut):
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    served = chain(servers, [jpeg_doc(astronaut, client_ref="kept")])[0]
    assert served["client_ref"] == "kept"
    assert set(served["stages"]) == set(STAGES)
    # In process, on the same JPEG-decoded pixels.
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg_doc(astronaut)["image"]["data"]), np.uint8),
                          cv2.IMREAD_COLOR)
    local = Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load().image(pixels).to_json()
    assert len(served["persons"]) == len(local["persons"]) > 0
    for a, b in zip(served["persons"], local["persons"]):
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert np.allclose(a["keypoints2d"], b["keypoints2d"], atol=1e-3)
        assert np.allclose(a["keypoints3d"], b["keypoints3d"], atol=1e-4)


def test_track_documents_are_lifted_by_the_served_stage(servers, checkpoints):
    from posegraph.frame import TrackDocument
    from posegraph.stages import Lift3dStage

    rng = np.random.default_rng(3)
    kps = rng.uniform(100, 400, (17, 2)) + np.cumsum(rng.normal(0, 2, (30, 17, 2)), 0)
    track = {"schema": "posegraph/track/v1", "track_id": 4, "width": 640, "height": 480,
             "frames": [{"frame_index": i, "bbox": [*(k.min(0) - 5), *(k.max(0) + 5)],
                         "keypoints2d": np.c_[k, np.ones(17)].tolist()} for i, k in enumerate(kps)]}
    served = predict(servers["lift3d"], [track]).json()["predictions"][0]
    local = Lift3dStage().load(str(checkpoints / "videopose3d-243.pth")).run([TrackDocument.model_validate(track)])[0]
    assert np.allclose([f["keypoints3d"] for f in served["frames"]], [f.keypoints3d for f in local.frames], atol=1e-4)


def test_zero_persons_pass_through_served_stages(servers):
    blank = jpeg_doc(np.full((120, 160, 3), 127, np.uint8), persons=[])
    for stage in ("pose2d", "lift3d"):
        response = predict(servers[stage], [blank])
        assert response.status_code == 200
        assert response.json()["predictions"][0]["persons"] == []


BAD_REQUESTS = {
    "not json": dict(content=b"{this is not json", headers={"content-type": "application/json"}),
    "no instances": dict(json={"inputs": []}),
    "instances not a list": dict(json={"instances": {"a": 1}}),
    "undecodable image": dict(json={"instances": [{"image": {"data": base64.b64encode(b"not a jpeg").decode()}}]}),
    "bad document": dict(json={"instances": [{"persons": [{"bbox": [1, 2], "score": 1}]}]}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_and_the_server_keeps_serving(servers, case, astronaut):
    response = httpx.post(servers["detect"].predict_url, timeout=60, **BAD_REQUESTS[case])
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"], "the 4xx carries a message"
    assert predict(servers["detect"], [jpeg_doc(astronaut[:200, :200])]).status_code == 200


def test_a_document_missing_the_stage_inputs_is_named(servers, astronaut):
    response = predict(servers["pose2d"], [jpeg_doc(astronaut)])  # no persons: detect did not run
    assert response.status_code == 400
    assert "pose2d" in response.json()["error"] and "persons" in response.json()["error"]
    response = predict(servers["lift3d"], [{"width": 10, "height": 10,
                                             "persons": [{"bbox": [0, 0, 5, 5], "score": 1}]}])
    assert response.status_code == 400 and "persons[0].keypoints2d" in response.json()["error"]


def test_oversized_payloads_are_refused(servers):
    big = b'{"instances": ["' + b"x" * (40 << 20) + b'"]}'
    response = httpx.post(servers["detect"].predict_url, content=big, headers={"content-type": "application/json"},
                          timeout=120)
    assert response.status_code == 413


# ---- TorchServe: server-side batching ---------------------------------------------------------

def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_torchserve_batches_concurrent_requests_and_answers_each_correctly(torchserve, astronaut):
    server = torchserve["detect"]
    images = [astronaut, astronaut[:, ::-1].copy(), astronaut[64:448, 32:480].copy(), astronaut[::2, ::2].copy()] * 4
    expected = [predict(server, [jpeg_doc(im)]).json()["predictions"][0]["persons"] for im in images[:4]]
    before = httpx.get(server.metrics_url).text
    with cf.ThreadPoolExecutor(len(images)) as pool:
        responses = list(pool.map(lambda im: predict(server, [jpeg_doc(im)]), images))
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):  # nobody got somebody else's answer
        assert response.json()["predictions"][0]["persons"] == expected[i % 4]
    after = httpx.get(server.metrics_url).text
    calls = _metric(after, "PosegraphBatchRequests_count") - _metric(before, "PosegraphBatchRequests_count")
    answered = _metric(after, "PosegraphBatchRequests_sum") - _metric(before, "PosegraphBatchRequests_sum")
    assert answered == len(images) and calls < len(images), f"{answered} requests in {calls} handler calls"
    assert _metric(after, "ts_inference_requests_total") - _metric(before, "ts_inference_requests_total") >= len(images)
    assert _metric(after, "PosegraphPersonsPerFrame_count") > _metric(before, "PosegraphPersonsPerFrame_count")


def test_a_bad_request_in_a_batch_does_not_fail_the_good_ones(torchserve, astronaut):
    server = torchserve["detect"]
    good = {"instances": [jpeg_doc(astronaut)]}
    bad = {"instances": [{"image": {"data": "bm90IGFuIGltYWdl"}}]}
    bodies = [good, bad] * 6
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: httpx.post(server.predict_url, json=b, timeout=120), bodies))
    assert [r.status_code for r in responses] == [200, 400] * 6


# ---- metrics, auth, v2 -------------------------------------------------------------------------

def test_kserve_runtime_exports_stage_metrics(kserve, astronaut):
    server = kserve["detect"]
    before = httpx.get(server.metrics_url).text
    predict(server, [jpeg_doc(astronaut)])
    predict(server, [{"image": {"data": "bm9wZQ=="}}])
    after = httpx.get(server.metrics_url).text
    for code in ("200", "400"):
        assert (_metric(after, "posegraph_requests_total", stage="detect", code=code)
                - _metric(before, "posegraph_requests_total", stage="detect", code=code)) == 1
    assert _metric(after, "posegraph_request_seconds_count", stage="detect") > _metric(
        before, "posegraph_request_seconds_count", stage="detect")


def test_kserve_v2_protocol_carries_documents(kserve, astronaut):
    doc = jpeg_doc(astronaut)
    body = {"inputs": [{"name": "instances", "shape": [1], "datatype": "BYTES", "data": [json.dumps(doc)]}]}
    response = httpx.post(f"{kserve['detect'].url}/v2/models/detect/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["name"] == "predictions" and out["datatype"] == "BYTES"
    v1 = predict(kserve["detect"], [doc]).json()["predictions"][0]
    assert json.loads(out["data"][0])["persons"] == v1["persons"]


def test_stage_servers_split_batches_over_the_threads_they_are_given(archives, tmp_path, monkeypatch):
    """Both runtimes load stages through serving.runtime.load_stage: detect and pose2d cut each batch
    over $POSEGRAPH_THREADS single-threaded runs (the CPU limit, set by the operator), lift3d keeps
    its threads inside each operator; a value that is not a thread count is refused by name."""
    from posegraph import fetchpolicy
    from posegraph.errors import UsageError
    from posegraph.serving.archive import find_mar, unpack
    from posegraph.serving.runtime import load_stage

    # load_stage installs a server's fetch policy in this process: the command line's comes back after
    monkeypatch.setattr(fetchpolicy, "_current", fetchpolicy.current())
    unpacked = {stage: unpack(find_mar(archives / stage), tmp_path / stage) for stage in STAGES}
    monkeypatch.setenv("POSEGRAPH_THREADS", "3")
    loaded = {stage: load_stage(archive) for stage, archive in unpacked.items()}
    assert loaded["detect"].network.parts == loaded["pose2d"].network.parts == 3
    assert loaded["detect"].network.session.get_session_options().intra_op_num_threads == 1
    assert loaded["lift3d"].network.pool is None
    assert loaded["lift3d"].network.session.get_session_options().intra_op_num_threads == 3
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("POSEGRAPH_THREADS", bad)
        with pytest.raises(UsageError, match="POSEGRAPH_THREADS"):
            load_stage(unpacked["detect"])


@pytest.mark.parametrize("runtime", ["torchserve", "kserve"])
def test_bearer_token_when_configured(runtime, archives, astronaut, starts_servers):
    server = start_stage_server("detect", archives / "detect", runtime=runtime,
                                env={"POSEGRAPH_AUTH_TOKEN": "s3cret-token"}).wait_ready()
    try:
        doc = [jpeg_doc(astronaut[:128, :128])]
        assert predict(server, doc).status_code == 401
        assert predict(server, doc, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert predict(server, doc, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    finally:
        server.stop()


def test_kserve_runtime_serves_without_torch_or_openmmlab(archives, tmp_path, astronaut, starts_servers):
    """The KServe image needs neither PyTorch nor mm*: run the server with them unimportable."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'torchvision', 'mmcv', 'mmdet', 'mmpose', 'mmengine'}:\n"
        "            raise ImportError('blocked for this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    server = start_stage_server("pose2d", archives / "pose2d", runtime="kserve",
                                env={"PYTHONPATH": str(blocker)}).wait_ready()
    try:
        doc = jpeg_doc(astronaut, persons=[{"bbox": [100, 50, 400, 500], "score": 1.0}])
        response = predict(server, [doc])
        assert response.status_code == 200
        assert len(response.json()["predictions"][0]["persons"][0]["keypoints2d"]) == 17
        assert re.search(r"blocked for this test", server.log_tail(200)) is None
    finally:
        server.stop()


def test_a_cuda_onnxruntime_without_a_visible_gpu_serves_on_the_cpu_and_says_so(monkeypatch, caplog, tmp_path):
    """What the CUDA images do on a node without a GPU (tests/test_images.py runs one): the CUDA
    provider is compiled in, but no /dev/nvidia* is there, so the stage runs on the CPU, saying why."""
    import onnxruntime

    from posegraph.serving import runtime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.delenv("POSEGRAPH_DEVICE", raising=False)
    monkeypatch.setattr(runtime, "visible_gpus", lambda: [])
    with caplog.at_level("WARNING"):
        assert runtime.pick_device(0) == "cpu"
    assert "no NVIDIA GPU is visible" in caplog.text
    monkeypatch.setattr(runtime, "visible_gpus", lambda: ["/dev/nvidia0"])
    assert runtime.pick_device(1) == "cuda:1"
    monkeypatch.setenv("POSEGRAPH_DEVICE", "cpu")
    assert runtime.pick_device(0) == "cpu"
    monkeypatch.undo()
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert runtime.visible_gpus() == []
