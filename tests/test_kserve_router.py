"""KServe's own InferenceGraph router (cmd/router, built by scripts/control-plane.sh) in front of
posegraph's real stage servers, with both runtimes, and posegraph's router on the same servers
for parity. The graph spec is exactly what posegraph renders for the InferenceGraph, with each
step's serviceName replaced by the local server's URL (as KServe's controller resolves it)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import pytest
from tiers import tier

REPO = Path(__file__).resolve().parents[1]
TOKEN = "graph-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# routerTimeouts.serviceClient of the test graph: a hung stage costs this long. Not less: the batch
# below (8 frames, ~10 random-weight persons each: ~80 pose2d crops, ~2 s of the two cores, and the
# first batch that large also grows onnxruntime's arena) once took over 4 s in a full run (2026-12-07).
SERVICE_CLIENT_S = 10


def jpeg_b64(pixels) -> str:
    return base64.b64encode(cv2.imencode(".jpg", pixels)[1].tobytes()).decode()


def test_the_script_builds_the_release_posegraph_pins():
    from posegraph.embedded import KSERVE_VERSION

    script = (REPO / "scripts" / "control-plane.sh").read_text()
    assert f'KSERVE_VERSION="${{POSEGRAPH_KSERVE_VERSION:-{KSERVE_VERSION}}}"' in script
    crds = (REPO / "tests" / "data" / "kserve-crds" / "README.md").read_text()
    assert "v0.20.0" in crds  # the CRDs validated against are that release's (or later on main)


def test_the_router_binary_differs_from_kserves_only_in_its_listen_address(kserve_router):
    patch = (kserve_router.parent / "router.patch").read_text()
    changed = [line for line in patch.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()]
    removed = [line for line in changed if line.startswith("-")]
    assert removed == ['-\t\tAddr:         ":" + strconv.Itoa(constants.RouterPort),']
    added = "\n".join(line[1:] for line in changed if line.startswith("+"))
    assert "posegraphListenAddr()" in added and 'os.Getenv("POSEGRAPH_ROUTER_LISTEN")' in added
    assert len(changed) <= 10


@pytest.fixture(scope="module", params=["kserve", "torchserve"])
@tier("servers")
def graphs(request, checkpoints, kserve_router):
    """Three token-protected stage servers of one runtime behind KServe's router, and posegraph's
    router started on the same servers with the same spec."""
    from services import both_routers

    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile
    from posegraph.graph.spec import parse_pipeline

    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    pipeline = parse_pipeline({"metadata": {"name": "parity"}, "spec": {
        "runtime": request.param, "stages": {s: {"storageUri": str(p)} for s, p in layouts.items()},
        "graph": {"routerTimeouts": {"serviceClient": SERVICE_CLIENT_S}}}})
    with both_routers(pipeline, layouts, env={"POSEGRAPH_AUTH_TOKEN": TOKEN}) as graph:
        yield graph


def same_documents(answers: dict[str, httpx.Response]) -> bool:
    """The two routers' answers hold the same documents: every field equal but each stage's
    wall-clock `ms`, which differs from one request to the next."""
    def untimed(value):
        if isinstance(value, dict):
            return {k: untimed(v) for k, v in value.items() if k != "ms"}
        if isinstance(value, list):
            return [untimed(v) for v in value]
        return value

    kserve, ours = (untimed(answers[name].json()) for name in ("kserve", "posegraph"))
    assert kserve == ours
    return True


def through_both(graphs, body, headers=AUTH, **kwargs) -> dict[str, httpx.Response]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {name: httpx.post(url, content=content, headers={"content-type": "application/json", **headers},
                             timeout=120, **kwargs)
            for name, url in graphs.routers.items()}


def test_the_rendered_graph_is_what_kserves_router_runs(graphs):
    """Sequence, $response, mapPredictionsToInstances, Hard and routerTimeouts as rendered."""
    root = graphs.graph_spec["nodes"]["root"]
    assert root["routerType"] == "Sequence" and [s["name"] for s in root["steps"]] == ["detect", "pose2d", "lift3d"]
    for step in root["steps"]:
        assert step["data"] == "$response" and step["mapPredictionsToInstances"] is True
        assert step["dependency"] == "Hard" and step["serviceUrl"].endswith(f"/v1/models/{step['name']}:predict")
    assert graphs.graph_spec["routerTimeouts"]["serviceClient"] == SERVICE_CLIENT_S
    assert graphs.router_kind == "kserve" and os.access(Path(graphs.router.args[0]), os.X_OK)


def test_a_photo_a_batch_and_a_track_come_back_lifted_and_equal(graphs, astronaut, clip_frames):
    photo = {"instances": [{"image": {"data": jpeg_b64(astronaut)}}]}
    answers = through_both(graphs, photo)
    assert {n: r.status_code for n, r in answers.items()} == {"kserve": 200, "posegraph": 200}
    doc = answers["kserve"].json()["predictions"][0]
    assert doc["persons"] and all(len(p["keypoints3d"]) == 17 for p in doc["persons"])
    assert same_documents(answers)

    batch = {"instances": [{"image": {"data": jpeg_b64(f)}, "frame_index": i} for i, f in enumerate(clip_frames[:8])]}
    answers = through_both(graphs, batch)
    assert answers["kserve"].status_code == 200 and "predictions" in answers["kserve"].json(), answers["kserve"].text[:500]
    predictions = answers["kserve"].json()["predictions"]
    assert [p["frame_index"] for p in predictions] == list(range(8))
    assert all(p["persons"] and len(p["persons"][0]["keypoints3d"]) == 17 for p in predictions)
    assert same_documents(answers)

    person = doc["persons"][0]
    track = {"schema": "posegraph/track/v1", "track_id": 3, "width": astronaut.shape[1], "height": astronaut.shape[0],
             "frames": [{"frame_index": i, "bbox": person["bbox"], "score": person["score"],
                         "keypoints2d": person["keypoints2d"]} for i in range(5)]}
    answers = through_both(graphs, {"instances": [track]})
    lifted = answers["kserve"].json()["predictions"][0]
    assert lifted["track_id"] == 3 and all(len(f["keypoints3d"]) == 17 for f in lifted["frames"])
    assert same_documents(answers)


def _lift3d_requests(graphs) -> list[str]:
    """lift3d's request counters, as its server exports them (either runtime's names)."""
    text = httpx.get(graphs.servers["lift3d"].metrics_url, timeout=10).text
    return sorted(line for line in text.splitlines()
                  if not line.startswith("#") and "posegraph" in line.lower() and "request" in line.lower())


def test_video_frames_end_after_pose2d_through_both_routers(graphs, clip_frames):
    """A video job's frames say their 3D comes per track (per_track_3d): the rendered lift3d step's
    condition ends the sequence after pose2d in KServe's router and in posegraph's, so lift3d is
    not called at all; a batch with one frame that does not say so goes through lift3d, which
    lifts only that frame."""
    from posegraph.graph.kserve_objects import LIFT3D_CONDITION

    assert graphs.graph_spec["nodes"]["root"]["steps"][2]["condition"] == LIFT3D_CONDITION
    frames = [{"image": {"data": jpeg_b64(f)}, "frame_index": i, "per_track_3d": True}
              for i, f in enumerate(clip_frames[:4])]
    before = _lift3d_requests(graphs)
    answers = through_both(graphs, {"instances": frames})
    assert {n: r.status_code for n, r in answers.items()} == {"kserve": 200, "posegraph": 200}, answers["kserve"].text
    assert _lift3d_requests(graphs) == before, "lift3d was called for frames lifted per track"
    for doc in answers["kserve"].json()["predictions"]:
        assert set(doc["stages"]) == {"detect", "pose2d"} and "image" not in doc
        assert doc["persons"] and all(p.get("keypoints2d") and "keypoints3d" not in p for p in doc["persons"])
    assert same_documents(answers)

    mixed = frames[:3] + [{"image": {"data": jpeg_b64(clip_frames[3])}, "frame_index": 3}]
    answers = through_both(graphs, {"instances": mixed})
    assert _lift3d_requests(graphs) != before, "lift3d was not called for a frame that wants its 3D"
    docs = answers["kserve"].json()["predictions"]
    assert [("lift3d" in d["stages"]) for d in docs] == [False, False, False, True]
    assert all(len(p["keypoints3d"]) == 17 for p in docs[3]["persons"])
    assert same_documents(answers)


@pytest.mark.parametrize("body,status,mentions", [
    ({"instances": [{"image": {"data": base64.b64encode(b"not an image").decode()}}]}, 400, "not a decodable image"),
    (b"{not json", 400, ""),  # the runtime's own words (KServe: "Unrecognized request format: …")
    ({"instances": [{"width": 10, "height": 10}]}, 400, "image"),
])
def test_bad_input_is_the_stages_4xx_through_both_routers(graphs, body, status, mentions):
    answers = through_both(graphs, body)
    for name, response in answers.items():
        assert response.status_code == status, (name, response.text)
        assert mentions in response.json()["error"], (name, response.text)
    assert answers["kserve"].json() == answers["posegraph"].json()  # the stage's own body, byte for byte


def test_authorization_reaches_the_token_protected_stages(graphs, astronaut):
    photo = {"instances": [{"image": {"data": jpeg_b64(astronaut[:200, :200])}}]}
    without = through_both(graphs, photo, headers={})
    wrong = through_both(graphs, photo, headers={"authorization": "Bearer wrong"})
    for answers in (without, wrong):
        assert {n: r.status_code for n, r in answers.items()} == {"kserve": 401, "posegraph": 401}
    assert through_both(graphs, photo)["kserve"].status_code == 200


def test_a_stopped_stage_is_a_5xx_within_the_router_timeout_and_the_runner_retries(graphs, astronaut, clip_path,
                                                                                   tmp_path):
    """Runs last for each runtime: pose2d is frozen (SIGSTOP: it accepts, never answers), then
    thawed. Both routers answer 5xx within serviceClient. The job runner retries each failing
    batch with backoff, then frame by frame, records the frames it could not get through with the
    router's message and ends `partial` (docs/jobs.md); once the stage is back, a job succeeds."""
    photo = {"instances": [{"image": {"data": jpeg_b64(astronaut[:200, :200])}}]}
    pose2d = graphs.servers["pose2d"].process
    results = f"sqlite:///{tmp_path / 'jobs.db'}"

    def job(job_id, *extra):
        run = [sys.executable, "-m", "posegraph", "job", "run", "--video", str(clip_path), "--graph",
               graphs.routers["kserve"], "--results", results, "--output", str(tmp_path / job_id), "--job-id", job_id,
               "--max-frames", "2", "--batch", "2", "--no-render", *extra]
        env = {**os.environ, "POSEGRAPH_AUTH_TOKEN": TOKEN, "POSEGRAPH_RETRY_BASE_S": "0.2"}
        return subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)

    os.killpg(pose2d.pid, signal.SIGSTOP)
    try:
        for name, url in graphs.routers.items():
            started = time.monotonic()
            response = httpx.post(url, json=photo, headers=AUTH, timeout=60)
            elapsed = time.monotonic() - started
            assert response.status_code >= 500, (name, response.text)
            assert SERVICE_CLIENT_S - 0.5 < elapsed < SERVICE_CLIENT_S + 5, (name, elapsed)
            if name == "kserve":
                assert "Timeout" in response.json()["cause"]
        frozen = job("frozen", "--retries", "1")
    finally:
        os.killpg(pose2d.pid, signal.SIGCONT)
    assert frozen.returncode != 0
    assert "retrying" in frozen.stderr and "answered 500" in frozen.stderr, frozen.stderr[-3000:]
    from posegraph.jobs.store import open_store

    store = open_store(results)
    row = store.job("frozen")
    assert row.status == "partial" and row.frames_failed == 2, row
    thawed = job("thawed")
    assert thawed.returncode == 0, thawed.stderr[-3000:]
    assert store.job("thawed").status == "succeeded"
    store.close()
