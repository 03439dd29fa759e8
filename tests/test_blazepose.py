"""BlazePose (issue 29): real pose weights from the mediapipe wheel on PyPI, converted from TFLite to
ONNX by posegraph (models/tflite.py) and checked against Google's own TFLite runtime (ai-edge-litert)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest

MODELS = {"blazepose-detector": (224, 224), "blazepose-full": (256, 256)}


def _litert(path, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def _converted(path, x: np.ndarray) -> dict[str, np.ndarray]:
    from posegraph.models.engine import load_network
    from posegraph.models.zoo import get_model

    network = load_network(get_model(path.stem), str(path))
    names = [o.name for o in network.session.get_outputs()]
    return dict(zip(names, network(x)))


@pytest.mark.parametrize("model", MODELS)
def test_the_onnx_conversion_computes_what_tflite_computes(blazepose_weights, model, astronaut):
    """Every output, on noise and on a real photo, within 5e-4 of the output's own range: the same
    network (fp16 weights densified and widened once, at conversion); what is left is float32
    summed in another order over ~100 layers (the largest seen: 1.1e-4, the segmentation logits)."""
    import cv2

    path = blazepose_weights / f"{model}.tflite"
    h, w = MODELS[model]
    photo = cv2.resize(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB), (w, h)).astype(np.float32)
    inputs = {"noise": np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32),
              "photo": (photo / 127.5 - 1.0)[None] if model == "blazepose-detector" else (photo / 255.0)[None]}
    for what, x in inputs.items():
        expected, got = _litert(path, x), _converted(path, x)
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape, name
            scale = max(float(np.abs(value).max()), 1e-3)
            assert np.abs(got[name] - value).max() <= 5e-4 * scale, (what, name)


def test_the_conversion_takes_a_batch(blazepose_weights):
    path = blazepose_weights / "blazepose-full.tflite"
    x = np.random.default_rng(1).random((3, 256, 256, 3), dtype=np.float32)
    batched = _converted(path, x)
    for i in range(3):
        alone = _converted(path, x[i : i + 1])
        for name in batched:
            np.testing.assert_allclose(batched[name][i : i + 1], alone[name], rtol=1e-4, atol=1e-4)


def test_an_operator_the_converter_does_not_know_is_named(tmp_path, blazepose_weights, monkeypatch):
    from posegraph.models import tflite

    monkeypatch.setattr(tflite, "_builtin_names", lambda: {})  # every operator unknown
    with pytest.raises(tflite.ConversionError, match="TFLite operator \\? is not converted"):
        tflite.convert(blazepose_weights / "blazepose-detector.tflite")


def test_fetched_weights_carry_their_licence_and_where_they_came_from(blazepose_weights):
    from posegraph.models.zoo import get_model

    for model in MODELS:
        spec = get_model(model)
        path = blazepose_weights / f"{model}.tflite"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.wheel.sha256
        assert "Apache License" in (blazepose_weights / f"{model}.tflite.LICENSE").read_text()
        facts = json.loads((blazepose_weights / f"{model}.tflite.json").read_text())
        assert facts["source"] == spec.wheel.wheel_url and facts["licence"] == "Apache-2.0"


def test_a_wheel_is_taken_apart_only_when_its_hashes_match(blazepose_weights, tmp_path, starts_servers):
    """The fetch path against a real HTTP server holding a wheel: its member is taken out and
    checked; a wheel whose bytes are not the pinned ones is refused and not kept."""
    from posegraph.errors import FetchError
    from posegraph.models.checkpoints import fetch_from_wheel
    from posegraph.models.zoo import get_model

    spec = get_model("blazepose-detector")
    served = tmp_path / "served"
    served.mkdir()
    wheel = served / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(blazepose_weights / "blazepose-detector.tflite", spec.wheel.member)
        archive.writestr(spec.wheel.licence_member, "Apache License, Version 2.0")
    with starts_servers.http_file_server(served) as url:
        good = dataclasses.replace(spec, wheel=dataclasses.replace(
            spec.wheel, wheel_url=f"{url}/fake.whl", wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()))
        dest = fetch_from_wheel(good, tmp_path / "out" / "blazepose-detector.tflite", progress=False)
        assert dest.read_bytes() == (blazepose_weights / "blazepose-detector.tflite").read_bytes()
        shutil.rmtree(tmp_path / "out")
        tampered = dataclasses.replace(spec, wheel=dataclasses.replace(good.wheel, wheel_url=f"{url}/fake.whl?v=2",
                                                                        wheel_sha256="0" * 64))
        with pytest.raises(FetchError, match="does not match its pinned sha256"):
            fetch_from_wheel(tampered, tmp_path / "out" / "blazepose-detector.tflite", progress=False)
        assert not (tmp_path / "out" / "blazepose-detector.tflite").exists()


def test_blazepose_has_no_random_weights(tmp_path):
    from posegraph.errors import UsageError
    from posegraph.models.checkpoints import write_random
    from posegraph.models.zoo import get_model

    with pytest.raises(UsageError, match="no random form"):
        write_random(get_model("blazepose-full"), tmp_path / "x.tflite")


# ---- real people: the first assertions random weights could not pass ------------------------------

# Human proportions the world landmarks must fall in (metres; adults are about 0.30-0.45 across
# the shoulders, 0.25-0.35 shoulder to elbow, 0.35-0.50 hip to knee and knee to ankle). The bounds
# are wider because BlazePose's metric scale is its own estimate from one image: measured here,
# the astronaut's shoulders 0.31 and thigh 0.30, the cameraman's 0.29 and 0.26.
BONES = {  # Human3.6M joint pairs → (low, high) metres
    "shoulders": ((11, 14), (0.2, 0.55)),
    "left upper arm": ((11, 12), (0.1, 0.45)),
    "right upper arm": ((14, 15), (0.1, 0.45)),
    "left thigh": ((4, 5), (0.2, 0.6)),
    "right thigh": ((1, 2), (0.2, 0.6)),
    "left shin": ((5, 6), (0.2, 0.6)),
    "right shin": ((2, 3), (0.2, 0.6)),
    "hips": ((1, 4), (0.1, 0.45)),
}


@pytest.fixture(scope="module")
def blazepose(blazepose_weights):
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline

    return Pipeline(load_profile("real-offline"), checkpoint_dir=blazepose_weights).load()


def _photos():
    import cv2
    import skimage.data as data

    return {"astronaut": cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR),
            "camera": cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR),
            "coffee": cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR)}


def _poses(pipeline, pixels):
    from posegraph.frame import FrameDocument

    doc = FrameDocument.from_pixels(pixels)
    for stage in ("detect", "pose2d", "lift3d"):
        doc = pipeline.stages[stage].run([doc])[0]
    return doc


@pytest.mark.parametrize("photo,people", [("astronaut", 1), ("camera", 1), ("coffee", 0)])
def test_exactly_the_real_persons_are_found(blazepose, photo, people):
    doc = _poses(blazepose, _photos()[photo])
    assert len(doc.persons) == people
    assert all(not r.random_weights for r in doc.stages.values())


@pytest.mark.parametrize("photo", ["astronaut", "camera"])
def test_keypoints_are_where_a_person_is(blazepose, photo):
    (person,) = _poses(blazepose, _photos()[photo]).persons
    k = np.asarray(person.keypoints2d)
    nose, shoulders, hips = k[0, 1], k[[5, 6], 1].mean(), k[[11, 12], 1].mean()
    knees, ankles = k[[13, 14], 1].mean(), k[[15, 16], 1].mean()
    assert nose < shoulders < hips < knees < ankles, "top to bottom: nose, shoulders, hips, knees, ankles"
    x1, y1, x2, y2 = person.bbox
    sure = k[k[:, 2] > 0.5]
    assert len(sure) >= 5 and (sure[:, 0] >= x1).all() and (sure[:, 0] <= x2).all() and (sure[:, 1] >= y1).all()
    assert len(person.landmarks.image) == len(person.landmarks.world) == 33


def test_left_and_right_are_the_persons_own(blazepose):
    """The astronaut faces the camera: her left shoulder, eye and ear are on the image's right."""
    k = np.asarray(_poses(blazepose, _photos()["astronaut"]).persons[0].keypoints2d)
    for left, right in ((1, 2), (3, 4), (5, 6)):  # eyes, ears, shoulders (COCO)
        assert k[left, 0] > k[right, 0]


@pytest.mark.parametrize("photo", ["astronaut", "camera"])
def test_the_3d_skeleton_has_human_bone_lengths(blazepose, photo):
    k3 = np.asarray(_poses(blazepose, _photos()[photo]).persons[0].keypoints3d)
    assert np.allclose(k3[0], 0), "root-relative"
    for name, ((a, b), (low, high)) in BONES.items():
        assert low <= np.linalg.norm(k3[a] - k3[b]) <= high, name
    assert k3[10, 1] < k3[8, 1] < k3[0, 1] < k3[2, 1] < k3[3, 1], "head above thorax above pelvis above knee and foot"


def test_the_tracker_keeps_one_person_across_a_panned_clip_and_its_bvh_is_human(blazepose, tmp_path):
    from posegraph.media.samples import synthetic_clip_frames, write_clip
    from posegraph.motion.bvh import solve_track
    from posegraph.pipeline import run_input

    clip = write_clip(tmp_path / "pan.mp4", synthetic_clip_frames(24))
    result = run_input(blazepose, str(clip), tmp_path / "out", show_progress=False)
    docs = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    ids = {p["track_id"] for d in docs for p in d.get("persons") or []}
    assert len(ids) == 1 and sum(bool(d.get("persons")) for d in docs) >= 22, "one person, one track"
    assert not result.random_weights
    track = np.asarray([d["persons"][0]["keypoints3d"] for d in docs if d.get("persons")])
    lengths = np.linalg.norm(solve_track(track, 30.0).offsets, axis=1)  # each joint's offset from its parent
    # The clip shows her head and shoulders: the arms are seen, the legs are the model's guess
    # (a thigh of 0.18 m here), so the seen bones are checked.
    for name in ("left upper arm", "right upper arm"):
        (_, child), (low, high) = BONES[name]
        assert low <= lengths[child] <= high, name


# ---- served like the others: both runtimes, the graph, a video job ---------------------------------

@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_served_through_the_graph_on_both_runtimes(blazepose_weights, astronaut, runtime, starts_servers):
    from posegraph.client import GraphClient
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile, default_pipeline, start_local_graph

    layouts = archives_for_profile(load_profile("real-offline"), blazepose_weights)
    with start_local_graph(default_pipeline(layouts, runtime), layouts) as graph, \
            GraphClient(graph.endpoint) as client:
        doc = client.infer_image(astronaut)
    (person,) = doc.persons
    assert len(person.landmarks.world) == 33 and len(person.keypoints3d) == 17
    assert {k: v.model for k, v in doc.stages.items()} == {
        "detect": "blazepose-detector", "pose2d": "blazepose-full", "lift3d": "blazepose-world"}
    assert not any(r.random_weights for r in doc.stages.values())


def test_a_video_job_lifts_blazepose_tracks_from_the_store(blazepose_weights, clip_path, tmp_path, starts_servers):
    """The job stores each person's landmarks (schema 4) and lifts its tracks from them."""
    from posegraph.config import load_profile
    from posegraph.embedded import start_embedded_graph
    from posegraph.jobs.options import JobOptions
    from posegraph.jobs.runner import JobRunner
    from posegraph.jobs.store import open_store

    results = f"sqlite:///{tmp_path / 'results.db'}"
    with start_embedded_graph(load_profile("real-offline"), blazepose_weights) as graph:
        summary = JobRunner(JobOptions(video=str(clip_path), results=results, output=str(tmp_path / "out") + "/",
                                       graph=graph.endpoint, lift3d=graph.servers["lift3d"].predict_url,
                                       job_id="bp", profile="real-offline")).run()
    assert summary["status"] == "succeeded" and summary["tracks"] >= 1
    store = open_store(results)
    (track, *_) = sorted(store.tracks("bp"), key=lambda t: -t.frames)
    rows = store.track_rows("bp", track.track_id)
    assert all(r.keypoints3d is not None for r in rows)
    assert store.frame_results("bp", 0, 1)[0].persons[0].landmarks["world"], "landmarks kept per person"
    k3 = np.asarray([r.keypoints3d for r in rows])
    assert 0.1 <= np.median(np.linalg.norm(k3[:, 11] - k3[:, 12], axis=1)) <= 0.45, "a human upper arm"


def test_the_demo_falls_back_to_blazepose_when_the_zoo_is_out_of_reach(blazepose_weights, tmp_path, starts_servers):
    import subprocess
    import sys

    ckpts = tmp_path / "ckpts"
    shutil.copytree(blazepose_weights, ckpts)  # the wheel's files, as `models fetch` left them
    done = subprocess.run([sys.executable, "-m", "posegraph", "demo", "--out", tmp_path / "demo", "--frames", "8",
                           "--checkpoints", ckpts], capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "POSEGRAPH_ZOO_MIRROR": "http://127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    assert "cannot download the OpenMMLab checkpoints" in done.stdout
    assert "using BlazePose instead" in done.stdout and "RANDOM" not in done.stdout
    doc = json.loads((tmp_path / "demo" / "photo" / "frame.json").read_text())
    assert doc["stages"]["pose2d"]["model"] == "blazepose-full" and len(doc["persons"]) == 1
    assert "job demo-clip: succeeded" in done.stdout


def test_live_runs_blazepose_frame_by_frame(blazepose_weights, clip_frames, tmp_path):
    """posegraph live with the real-offline profile: each frame's 3D is its own (no window)."""
    import subprocess
    import sys

    import cv2

    clip = tmp_path / "slow.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 8, (640, 480))
    for frame in clip_frames:
        writer.write(frame)
    writer.release()
    done = subprocess.run([sys.executable, "-m", "posegraph", "live", str(clip), "--profile", "real-offline",
                           "--checkpoints", str(blazepose_weights), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    persons = [p for d in docs for p in d.get("persons") or []]
    assert persons and all(p["keypoints3d"] and len(p["landmarks"]["world"]) == 33 for p in persons)
    assert len({p["track_id"] for p in persons}) == 1
