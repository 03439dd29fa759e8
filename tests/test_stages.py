"""Stage behaviour that needs no OpenMMLab reference: contracts, errors, batching, tracks, weights."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from posegraph.errors import BadInput, FetchError, MissingInput
from posegraph.frame import FrameDocument, Person, TrackDocument, TrackFrame
from posegraph.media.imageio import image_ref
from posegraph.stages import DetectStage, Lift3dStage, Pose2dStage


@pytest.fixture(scope="module")
def stages(checkpoints):
    return {
        "detect": DetectStage({"model": "rtmdet-nano-person", "max_persons": 5}).load(
            str(checkpoints / "rtmdet-nano-person.pth")),
        "pose2d": Pose2dStage({"model": "rtmpose-t"}).load(str(checkpoints / "rtmpose-t.pth")),
        "lift3d": Lift3dStage({"model": "videopose3d-243"}).load(str(checkpoints / "videopose3d-243.pth")),
    }


def chain(stages, docs):
    for name in ("detect", "pose2d", "lift3d"):
        docs = stages[name].run(docs)
    return docs


def test_each_stage_adds_only_its_own_fields(stages, astronaut):
    doc = FrameDocument(image=image_ref(astronaut, "png"), client_tag="keep-me")
    stages["detect"].run([doc])
    assert doc.persons and all(p.keypoints2d is None and p.keypoints3d is None for p in doc.persons)
    boxes = [p.bbox for p in doc.persons]
    stages["pose2d"].run([doc])
    assert [p.bbox for p in doc.persons] == boxes
    assert all(len(p.keypoints2d) == 17 and p.keypoints3d is None for p in doc.persons)
    k2 = [p.keypoints2d for p in doc.persons]
    stages["lift3d"].run([doc])
    assert [p.keypoints2d for p in doc.persons] == k2
    for person in doc.persons:
        k3 = np.asarray(person.keypoints3d)
        assert k3.shape == (17, 3) and np.isfinite(k3).all()
        assert np.allclose(k3[0], 0.0), "root-relative: the pelvis is the origin"
    out = doc.to_json()
    assert out["client_tag"] == "keep-me"
    assert set(out["stages"]) == {"detect", "pose2d", "lift3d"}
    assert out["width"] == 512 and out["height"] == 512


@pytest.mark.parametrize("keep", [None, True])
def test_pose2d_drops_inline_image_bytes_unless_the_client_keeps_them(stages, astronaut, tmp_path, keep):
    """Nothing after pose2d reads pixels: the inline image (here 300 kB of base64) does not travel
    on through lift3d and back, unless the document asks (keep_image). A uri is kept."""
    import cv2

    inline = FrameDocument(image=image_ref(astronaut, "png"), keep_image=keep)
    nobody = FrameDocument(image=image_ref(np.full((64, 64, 3), 96, np.uint8), "png"), persons=[], keep_image=keep)
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), astronaut)
    by_uri = FrameDocument(image={"uri": path.as_uri()})
    sent = len(json.dumps(inline.to_json()))
    for doc in stages["pose2d"].run(stages["detect"].run([inline])) + stages["pose2d"].run([nobody]):
        assert (doc.image is not None) == bool(keep), doc.to_json().keys()
    assert inline.persons and all(p.keypoints2d for p in inline.persons)
    if not keep:
        assert len(json.dumps(inline.to_json())) < sent / 20
    stages["pose2d"].run(stages["detect"].run([by_uri]))  # in process: the CLI's policy reads files
    assert by_uri.image.uri == path.as_uri()


def test_zero_persons_pass_through_pose2d_and_lift3d(stages, astronaut):
    detect = DetectStage({"model": "rtmdet-nano-person", "score_threshold": 1.0}).load(
        stages["detect"].network.source)
    doc = detect.run([FrameDocument.from_pixels(astronaut)])[0]
    assert doc.persons == []
    before = doc.to_json()
    stages["pose2d"].run([doc])
    stages["lift3d"].run([doc])
    after = doc.to_json()
    after_stages = after.pop("stages")
    before.pop("stages")
    assert after == before, "a document with nobody in it comes back unchanged"
    assert {"pose2d", "lift3d"} <= set(after_stages)


def test_stage_given_document_without_its_inputs_names_what_is_missing(stages, astronaut):
    with pytest.raises(MissingInput, match="image"):
        stages["detect"].run([FrameDocument(width=4, height=4)])
    with pytest.raises(MissingInput, match="persons"):
        stages["pose2d"].run([FrameDocument.from_pixels(astronaut)])
    doc = FrameDocument(width=512, height=512, persons=[Person(bbox=[0, 0, 9, 9], score=1.0)])
    with pytest.raises(MissingInput, match=r"persons\[0\]\.keypoints2d"):
        stages["lift3d"].run([doc])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height (no pixel data needed to read the size)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize(
    "image,message",
    [
        ({"data": "not base64 at all!"}, "not valid base64"),
        ({"data": base64.b64encode(b"hello, I am text").decode()}, "not a decodable image"),
        ({"data": base64.b64encode(_png_header_only(30000, 30000)).decode()}, "above the"),
        ({"uri": "file:///nonexistent/photo.jpg"}, "no such file"),
    ],
)
def test_bad_images_are_rejected_with_a_message(stages, image, message):
    with pytest.raises(BadInput, match=message):
        stages["detect"].run([FrameDocument(image=image)])


def test_truncated_jpeg_is_rejected(stages, astronaut):
    data = cv2.imencode(".jpg", astronaut)[1].tobytes()
    doc = FrameDocument(image={"data": base64.b64encode(data[: len(data) // 3]).decode()})
    with pytest.raises(BadInput):
        stages["detect"].run([doc])


def test_declared_size_must_match_the_pixels(stages, astronaut):
    doc = FrameDocument(image=image_ref(astronaut, "png"), width=100, height=100)
    with pytest.raises(BadInput, match="100×100"):
        stages["detect"].run([doc])


def test_image_by_uri_equals_inline_image(stages, astronaut, tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), astronaut)
    by_uri = stages["detect"].run([FrameDocument(image={"uri": path.as_uri()})])[0]
    inline = stages["detect"].run([FrameDocument(image=image_ref(astronaut, "png"))])[0]
    assert [p.bbox for p in by_uri.persons] == [p.bbox for p in inline.persons]


def test_a_batch_gives_what_each_document_gives_alone(stages, astronaut, clip_frames):
    images = [astronaut, clip_frames[2], clip_frames[9]]
    batch = chain(stages, [FrameDocument.from_pixels(im) for im in images])
    for im, together in zip(images, batch):
        alone = chain(stages, [FrameDocument.from_pixels(im)])[0]
        assert len(alone.persons) == len(together.persons)
        for a, b in zip(alone.persons, together.persons):
            assert np.abs(np.subtract(a.bbox, b.bbox)).max() < 1e-2
            assert np.abs(np.subtract(a.keypoints3d, b.keypoints3d)).max() < 1e-3


def test_split_batch_gives_what_one_run_gives_and_bounds_concurrent_runs(stages, checkpoints, astronaut,
                                                                          clip_frames):
    """What stage servers do (serving.runtime): each batch cut into parts, one single-threaded run
    each, shared by every request. The same numbers as one run over the batch, and however many
    requests come at once, never more runs than threads."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    split = {
        "detect": DetectStage({"model": "rtmdet-nano-person", "max_persons": 5}).load(
            str(checkpoints / "rtmdet-nano-person.pth"), threads=2, split_batch=True),
        "pose2d": Pose2dStage({"model": "rtmpose-t"}).load(str(checkpoints / "rtmpose-t.pth"), threads=2,
                                                           split_batch=True),
        "lift3d": Lift3dStage({"model": "videopose3d-243"}).load(str(checkpoints / "videopose3d-243.pth"),
                                                                 threads=2, split_batch=True),
    }
    assert split["detect"].network.pool is not None and split["pose2d"].network.pool is not None
    assert split["lift3d"].network.pool is None, "a few long tracks are not split: their operators use the threads"
    images = [astronaut, *clip_frames[:5]]
    whole = chain(stages, [FrameDocument.from_pixels(im) for im in images])
    parts = chain(split, [FrameDocument.from_pixels(im) for im in images])
    assert sum(len(d.persons) for d in whole) > len(images), "several crops a batch, so pose2d's batch is split"
    for a_doc, b_doc in zip(whole, parts):
        assert len(a_doc.persons) == len(b_doc.persons)
        for a, b in zip(a_doc.persons, b_doc.persons):
            assert np.abs(np.subtract(a.bbox, b.bbox)).max() < 1e-4
            assert np.abs(np.subtract(a.keypoints2d, b.keypoints2d)).max() < 1e-4
            assert np.abs(np.subtract(a.keypoints3d, b.keypoints3d)).max() < 1e-4

    network = split["pose2d"].network
    running, most, lock = 0, 0, threading.Lock()
    run = network._run

    def counted(*inputs):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return run(*inputs)
        finally:
            with lock:
                running -= 1

    network._run = counted
    detected = split["detect"].run([FrameDocument.from_pixels(im) for im in images])
    one_crop = detected[0].model_copy(deep=True)
    one_crop.persons = one_crop.persons[:1]

    def request(i: int):  # half of them a batch of several crops, half a single crop (not split)
        docs = [d.model_copy(deep=True) for d in detected] if i % 2 else [one_crop.model_copy(deep=True)]
        return split["pose2d"].run(docs)

    with ThreadPoolExecutor(8) as requests:
        list(requests.map(request, range(16)))
    assert most == 2, f"{most} runs at once on a 2-thread network"


def test_a_crop_is_the_same_however_busy_the_process_is(stages, astronaut):
    """Stage servers cut crops for concurrent requests side by side. OpenCV 5.1's warpAffine gave
    rows off by one grey level when its threads were busy with another call, so a split job's pose
    scores were up to 9.4e-3 off the unsplit job's; a loaded stage keeps OpenCV on one thread."""
    from concurrent.futures import ThreadPoolExecutor

    assert cv2.getNumThreads() == 1, "a loaded stage leaves OpenCV on one thread"
    rng = np.random.default_rng(3)
    corners = rng.uniform([-80, -80], [astronaut.shape[1], astronaut.shape[0]], (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 300, (300, 2))], axis=1)
    doc = FrameDocument.from_pixels(astronaut)
    doc.persons = [Person(bbox=[float(v) for v in box], score=0.9) for box in boxes]
    pose2d = stages["pose2d"]
    alone = pose2d.preprocess([doc]).crops
    with ThreadPoolExecutor(3) as callers:  # 12 passes, three cutting at once
        together = list(callers.map(lambda _: pose2d.preprocess([doc]).crops, range(12)))
    differing = [int((crops != alone).any(axis=(1, 2, 3)).sum()) for crops in together]
    assert differing == [0] * 12, f"crops differing from the same crops cut alone, per pass of 300: {differing}"


def _track(frames: int, seed: int = 0) -> TrackDocument:
    rng = np.random.default_rng(seed)
    base = rng.uniform(100, 400, (17, 2))
    kps = base + np.cumsum(rng.normal(0, 2, (frames, 17, 2)), 0)
    return TrackDocument(track_id=1, width=640, height=480, frames=[
        TrackFrame(frame_index=i, bbox=[*(k.min(0) - 5), *(k.max(0) + 5)], keypoints2d=np.c_[k, np.ones(17)].tolist())
        for i, k in enumerate(kps)
    ])


def test_track_lifting_equals_lifting_each_window(stages, checkpoints):
    """One pass of the dilated network over a track == the strided network on each frame's
    243-frame window with replicated edges (VideoPose3D's two layouts)."""
    import torch

    from posegraph.models.checkpoints import load_state_dict
    from posegraph.models.engine import build_torch_module
    from posegraph.models.zoo import get_model

    track = _track(9)
    # The two layouts compute the same network: compare them unsmoothed (smoothing: test_motion.py).
    lift = Lift3dStage({"model": "videopose3d-243", "smoothing": {"method": "off"}}).load(
        str(checkpoints / "videopose3d-243.pth"))
    seq = lift.normalise(np.asarray([f.keypoints2d for f in track.frames]),
                         np.asarray([f.bbox for f in track.frames]), track.width, track.height)
    lift.run([track])
    strided = build_torch_module(get_model("videopose3d-243"),
                                 load_state_dict(str(checkpoints / "videopose3d-243.pth")).state_dict)
    for t, frame in enumerate(track.frames):
        idx = np.clip(np.arange(t - 121, t + 122), 0, len(seq) - 1)
        with torch.no_grad():
            raw = strided(torch.from_numpy(seq[idx][None]))[0, 0].numpy()
        assert np.abs(np.asarray(frame.keypoints3d) - (raw - raw[:1])).max() < 1e-4


def test_short_tracks_windowed_equal_long_layout(stages):
    """Short tracks (and single frames) go window by window through the strided export; the
    dilated export computes the same for them, only slower."""
    lift = stages["lift3d"]
    assert lift.window_network is not None
    track = _track(5, seed=7)
    windowed = np.asarray([f.keypoints3d for f in lift.run([track.model_copy(deep=True)])[0].frames])
    saved, lift.window_network = lift.window_network, None
    try:
        whole = np.asarray([f.keypoints3d for f in lift.run([track.model_copy(deep=True)])[0].frames])
    finally:
        lift.window_network = saved
    assert windowed.shape == (5, 17, 3)
    assert np.abs(windowed - whole).max() < 1e-4


@pytest.mark.parametrize("model,window_layout", [("videopose3d-243", True), ("videopose3d-243", False),
                                                 ("motionbert", False)])
def test_lift_frames_lifts_those_frames_as_the_whole_track_would(checkpoints, model, window_layout):
    """A track with lift_frames (what `posegraph live` sends): those frames get the 3D that lifting
    the whole track gives them (unsmoothed: the 3D smoothing needs every frame), and no other."""
    stage = Lift3dStage({"model": model, "smoothing": {"method": "off"}}).load(str(checkpoints / f"{model}.pth"))
    if not window_layout:
        stage.window_network = None
    track = _track(130, seed=5)
    whole = np.asarray([f.keypoints3d for f in stage.run([track.model_copy(deep=True)])[0].frames])
    asked = track.model_copy(deep=True, update={"lift_frames": [0, 64, 129]})
    partial = stage.run([asked])[0]
    got = {f.frame_index: f.keypoints3d for f in partial.frames if f.keypoints3d is not None}
    assert sorted(got) == [0, 64, 129]
    for i, k3 in got.items():
        assert np.abs(np.asarray(k3) - whole[i]).max() < 1e-4, i


def test_lift_frames_must_be_frames_of_the_track():
    with pytest.raises(ValueError, match="does not hold"):
        TrackDocument.model_validate({**_track(3).to_json(), "lift_frames": [7]})


@pytest.mark.parametrize("model,frames", [("videopose3d-243", 300), ("motionbert", 250)])
def test_long_tracks_are_lifted_whole(checkpoints, model, frames):
    stage = Lift3dStage({"model": model}).load(str(checkpoints / f"{model}.pth"))
    track = stage.run([_track(frames, seed=2)])[0]
    k3 = np.asarray([f.keypoints3d for f in track.frames])
    assert k3.shape == (frames, 17, 3) and np.isfinite(k3).all()
    assert np.allclose(k3[:, 0], 0.0)
    # Not a constant: consecutive frames differ (each frame got its own output).
    assert np.abs(np.diff(k3, axis=0)).max() > 0


def test_random_weights_are_announced_once_and_marked_on_documents(checkpoints, astronaut, capsys, caplog):
    from posegraph.models import checkpoints as ck

    ck._warned.discard("rtmpose-s")
    stage = Pose2dStage({"model": "rtmpose-s"}).load(str(checkpoints / "rtmpose-s.pth"))
    Pose2dStage({"model": "rtmpose-s"}).load(str(checkpoints / "rtmpose-s.pth"))
    said = capsys.readouterr().err + caplog.text
    assert said.count("RANDOM WEIGHTS: rtmpose-s") == 1
    doc = FrameDocument.from_pixels(astronaut, persons=[Person(bbox=[100, 50, 400, 500], score=1)])
    stage.run([doc])
    assert doc.to_json()["stages"]["pose2d"]["random_weights"] is True


def test_wrong_model_for_a_stage_is_refused():
    with pytest.raises(Exception, match="not a detect model"):
        DetectStage({"model": "rtmpose-m"})


def test_checkpoint_that_does_not_fit_the_model_is_refused(checkpoints):
    from posegraph.errors import PosegraphError

    with pytest.raises(PosegraphError, match="does not fit rtmpose-m"):
        Pose2dStage({"model": "rtmpose-m"}).load(str(checkpoints / "rtmpose-t.pth"), backend="torch")


# ---- checkpoints from URIs: file://, s3:// (a real S3 server), http(s):// (a real HTTP server) ----

def _detect_boxes(uri, image):
    stage = DetectStage({"model": "rtmdet-nano-person"}).load(uri)
    return [p.bbox for p in stage.run([FrameDocument.from_pixels(image)])[0].persons]


def test_checkpoint_from_file_s3_and_http_uris(checkpoints, astronaut, s3_env, tmp_path):
    from services import http_file_server

    local = checkpoints / "rtmdet-nano-person.pth"
    expected = _detect_boxes(str(local), astronaut)
    assert _detect_boxes(local.as_uri(), astronaut) == expected

    s3_env.create_bucket("models")
    s3_env.client().upload_file(str(local), "models", "zoo/rtmdet-nano-person.pth")
    assert _detect_boxes("s3://models/zoo/rtmdet-nano-person.pth", astronaut) == expected

    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(local, served / "det.pth")
    with http_file_server(served) as base:
        assert _detect_boxes(f"{base}/det.pth", astronaut) == expected


def test_checkpoint_over_https_with_a_trusted_and_an_untrusted_certificate(checkpoints, astronaut, tmp_path,
                                                                           monkeypatch, starts_servers):
    from services import https_file_server

    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(checkpoints / "rtmdet-nano-person.pth", served / "det.pth")
    expected = _detect_boxes(str(checkpoints / "rtmdet-nano-person.pth"), astronaut)
    with https_file_server(served, tmp_path / "tls") as (base, ca_file):
        with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            DetectStage().load(f"{base}/det.pth")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        assert _detect_boxes(f"{base}/det.pth", astronaut) == expected


def test_unreadable_checkpoint_uris_fail_clearly(s3_env, checkpoints, monkeypatch):
    from services import http_file_server

    s3_env.create_bucket("private")
    s3_env.client().upload_file(str(checkpoints / "rtmdet-nano-person.pth"), "private", "det.pth")
    with pytest.raises(FetchError, match="NoSuchKey|Not Found|404"):
        DetectStage().load("s3://private/missing/nothing.pth")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(FetchError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId|Forbidden|403"):
        DetectStage().load("s3://private/det.pth")
    with http_file_server(Path("/nonexistent-dir-for-404")) as base:
        with pytest.raises(FetchError, match="404"):
            DetectStage().load(f"{base}/none.pth")


def test_onnx_models_serve_without_torch_or_openmmlab(checkpoints, astronaut, tmp_path, starts_servers):
    """An exported .onnx (what model archives carry) runs with torch and mm* unimportable."""
    from posegraph.models.engine import load_network
    from posegraph.models.zoo import get_model

    load_network(get_model("rtmdet-nano-person"), str(checkpoints / "rtmdet-nano-person.pth"))
    from posegraph.models.engine import export_fingerprint
    from posegraph.uri import cache_dir

    exported = sorted(cache_dir("onnx").glob(f"rtmdet-nano-person-*-{export_fingerprint()}.onnx"))[0]
    onnx_path = tmp_path / "detect.onnx"
    shutil.copy(exported, onnx_path)
    image_path = tmp_path / "a.png"
    cv2.imwrite(str(image_path), astronaut)
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in {{'torch', 'mmcv', 'mmdet', 'mmpose', 'mmengine'}}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        from posegraph import fetchpolicy
        fetchpolicy.install(fetchpolicy.FetchPolicy.command_line())  # a library reads its own files
        from posegraph.stages import DetectStage
        from posegraph.frame import FrameDocument
        doc = FrameDocument(image={{'uri': {image_path.as_uri()!r}}})
        stage = DetectStage({{'model': 'rtmdet-nano-person'}}).load({str(onnx_path)!r})
        print(len(stage.run([doc])[0].persons))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(_detect_boxes(str(checkpoints / "rtmdet-nano-person.pth"), astronaut))
