"""Fidelity: our stages compute what mmdet/mmpose compute.

Each model is built from the config shipped in the mmdet/mmpose packages and loaded
with the same checkpoint as ours (random weights written by `posegraph models init
--random`). Then mmdet/mmpose's own inference APIs and our stages run on the same
real photo (skimage's astronaut) and a synthetic clip made from it.
Tolerances: boxes and 2D keypoints ≤ 0.5 px, 3D keypoints ≤ 1 mm.
"""

from __future__ import annotations

import numpy as np
import pytest

from posegraph.frame import FrameDocument, Person, TrackDocument, TrackFrame
from posegraph.stages import DetectStage, Lift3dStage, Pose2dStage
from posegraph.models.zoo import MODELS

# The catalogue's OpenMMLab models, which the reference stack builds (BlazePose: test_blazepose.py).
OPENMMLAB = sorted(name for name, spec in MODELS.items() if spec.wheel is None)

BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture(scope="module")
def reference_models(mm, checkpoints):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = mm.init_reference_model(name, str(checkpoints / f"{name}.pth"))
        return cache[name]

    return get


def images(astronaut, clip_frames):
    return {
        "astronaut": astronaut,
        "astronaut-cropped-non-square": astronaut[40:500, 60:400],
        "clip-frame-3": clip_frames[3],
        "clip-frame-12": clip_frames[12],
    }


def assert_boxes_match(ours_boxes, ours_scores, ref_boxes, ref_scores, what):
    assert len(ours_boxes) == len(ref_boxes), f"{what}: {len(ours_boxes)} boxes, mmdet {len(ref_boxes)}"
    if len(ref_boxes) == 0:
        return
    # Same set of boxes; the order of (near-)equal scores may legitimately differ.
    distance = np.abs(ours_boxes[:, None, :] - ref_boxes[None, :, :]).max(-1)
    nearest = distance.argmin(0)
    worst = distance[nearest, np.arange(len(ref_boxes))].max()
    assert worst <= 0.5, f"{what}: a box differs by {worst:.3f} px"
    assert len(set(nearest.tolist())) == len(ref_boxes), f"{what}: boxes matched twice"
    assert np.abs(ours_scores[nearest] - ref_scores).max() < 1e-3


def assert_keypoints_match(ours, ref_xy, ref_scores, what):
    """2D keypoints within 0.5 px. The one allowed exception is a SimCC argmax tie: two bins whose
    logits differ by less than float32 noise (batch size and kernels change the last bits). A tie
    moves the keypoint but not its score (the best logit), so: a moved keypoint must keep its score,
    and ties must stay rare (random weights make ~1 per few thousand keypoints)."""
    ours = np.asarray(ours)
    moved = np.abs(ours[..., :2] - ref_xy).max(-1) > 0.5
    same_score = np.abs(ours[..., 2] - ref_scores) <= 1e-3
    assert same_score.all(), f"{what}: keypoint scores differ by {np.abs(ours[..., 2] - ref_scores).max()}"
    assert moved.sum() <= max(1, 0.005 * moved.size), f"{what}: {moved.sum()} of {moved.size} keypoints moved"


# ---- the networks themselves ------------------------------------------------------------------

def _ref_forward(name, model, x):
    import torch

    family = MODELS[name].family
    with torch.no_grad():
        if family == "rtmdet":
            cls, reg = model.bbox_head(model.neck(model.backbone(x)))
            flat = lambda ts: torch.cat([t.flatten(2).transpose(1, 2) for t in ts], 1)  # noqa: E731
            return [flat(cls).sigmoid(), flat(reg)]
        if family == "rtmpose":
            return list(model.head(model.backbone(x)))
        if family == "videopose3d":  # mmpose's strided layout: (B, 34, 243) → (B, 17, 3)
            b = x.shape[0]
            feats = model.backbone(x.permute(0, 2, 3, 1).reshape(b, 34, -1))
            return [model.head(feats)[:, None]]
        return [model.head(model.backbone(x))]


def _example_input(name, rng):
    import torch

    family = MODELS[name].family
    p = MODELS[name].params
    if family == "rtmdet":
        shape = (2, 3, p["input_size"], p["input_size"])
    elif family == "rtmpose":
        shape = (3, 3, p["input_size"][1], p["input_size"][0])
    elif family == "videopose3d":
        shape = (2, 243, 17, 2)
    else:
        shape = (2, 27, 17, 3)  # a clip: exercises the temporal attention
    return torch.from_numpy(rng.normal(0, 0.5, shape).astype(np.float32))


@pytest.mark.parametrize("name", OPENMMLAB)
def test_network_equals_mm_network(name, reference_models, checkpoints):
    """Same checkpoint, same input tensor → same raw outputs, for every catalogue model."""
    import torch

    from posegraph.models.checkpoints import load_state_dict
    from posegraph.models.engine import build_torch_module, export_spec

    reference = reference_models(name)
    loaded = load_state_dict(str(checkpoints / f"{name}.pth"))
    # mm's loader only warns on missing keys: check the checkpoint fills its model completely.
    ref_state = reference.state_dict()
    assert set(ref_state) == set(loaded.state_dict), "checkpoint keys differ from mm's model"
    for key, value in ref_state.items():
        assert torch.equal(value, loaded.state_dict[key]), key
    ours = build_torch_module(MODELS[name], loaded.state_dict, **export_spec(MODELS[name]).arch_overrides)
    x = _example_input(name, np.random.default_rng(1))
    expected = _ref_forward(name, reference, x)
    with torch.no_grad():
        got = ours(x)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        scale = max(1.0, float(e.abs().max()))
        assert float((g - e).abs().max()) <= 1e-4 * scale, f"max diff {(g - e).abs().max()} (scale {scale})"


@pytest.mark.parametrize("name", OPENMMLAB)
def test_onnx_export_equals_torch(name, checkpoints):
    """The served ONNX model computes the torch network's function (dynamic batch/length)."""
    from posegraph.models.engine import load_network

    spec = MODELS[name]
    uri = str(checkpoints / f"{name}.pth")
    onnx_network = load_network(spec, uri, backend="onnxruntime")
    torch_network = load_network(spec, uri, backend="torch")
    rng = np.random.default_rng(2)
    x = _example_input(name, rng).numpy()
    if spec.family == "videopose3d":
        x = rng.normal(0, 0.5, (2, 300, 17, 2)).astype(np.float32)  # a longer track: 58 output frames
    for a, b in zip(onnx_network(x), torch_network(x)):
        assert a.shape == b.shape
        # float32 kernels differ (fused conv+BN, other summation orders): measured ≤ 4.2e-4 on the
        # deepest network (rtmdet-m, 640²); the end-to-end tests bound what reaches users.
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())


# ---- the stages against mmdet/mmpose inference APIs --------------------------------------------

@pytest.mark.parametrize(
    "name,backend",
    [
        ("rtmdet-nano-person", "torch"),
        ("rtmdet-nano-person", "onnxruntime"),  # the CPU profile, as served
        # rtmdet-m is the GPU profile's detector, run by torch on CUDA. Under onnxruntime its float32
        # noise (≤ 4e-4 on scores, see test_onnx_export_equals_torch) flips ~1 of the ~90 overlapping
        # junk boxes random weights produce at the score/NMS thresholds: not compared box for box.
        ("rtmdet-m-person", "torch"),
    ],
)
def test_detect_equals_inference_detector(name, backend, reference_models, checkpoints, mm, astronaut,
                                          clip_frames):
    reference = reference_models(name)
    stage = DetectStage({"model": name}).load(str(checkpoints / f"{name}.pth"), backend=backend)
    for label, image in images(astronaut, clip_frames).items():
        ref_boxes, ref_scores = mm.reference_detect(reference, image)
        doc = stage.run([FrameDocument.from_pixels(image)])[0]
        boxes = np.asarray([p.bbox for p in doc.persons]).reshape(-1, 4)
        scores = np.asarray([p.score for p in doc.persons])
        assert len(ref_boxes) > 0, f"{label}: the reference found nobody; the comparison would be empty"
        assert_boxes_match(boxes, scores, ref_boxes, ref_scores, f"{name}/{backend}/{label}")


def test_detect_raw_head_equals_mmdet_without_thresholds(reference_models, checkpoints, mm, astronaut):
    """All 100 boxes of mmdet's own post-processing (no posegraph filtering on top)."""
    name = "rtmdet-nano-person"
    reference = reference_models(name)
    stage = DetectStage({"model": name, "score_threshold": 0.0, "nms_iou": None}).load(
        str(checkpoints / f"{name}.pth"), backend="torch")
    image = astronaut[:, 64:480]
    ref_boxes, ref_scores = mm.reference_detect(reference, image, score_threshold=0.0, nms_iou=None)
    doc = stage.run([FrameDocument.from_pixels(image)])[0]
    boxes = np.asarray([p.bbox for p in doc.persons])
    assert len(ref_boxes) == 100  # mmdet's max_per_img for this config
    assert_boxes_match(boxes, np.asarray([p.score for p in doc.persons]), ref_boxes, ref_scores, "raw head")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip_test", [False, True])
@pytest.mark.parametrize("name", ["rtmpose-t", "rtmpose-m"])
def test_pose2d_equals_inference_topdown(name, flip_test, backend, reference_models, checkpoints, mm, astronaut,
                                         clip_frames):
    reference = reference_models(name)
    stage = Pose2dStage({"model": name, "flip_test": flip_test}).load(str(checkpoints / f"{name}.pth"),
                                                                       backend=backend)
    boxes = [[150.0, 20.0, 400.0, 500.0], [10.5, 10.25, 200.0, 300.0], [300.0, 100.0, 330.0, 420.0]]
    for label, image in images(astronaut, clip_frames).items():
        ref_kp, ref_scores = mm.reference_pose2d(reference, image, boxes, flip_test)
        doc = FrameDocument.from_pixels(image, persons=[Person(bbox=b, score=1.0) for b in boxes])
        stage.run([doc])
        ours = np.asarray([p.keypoints2d for p in doc.persons])
        assert np.abs(ours[..., :2] - ref_kp).max() <= 0.5, f"{label}: 2D keypoints differ"
        assert np.abs(ours[..., 2] - ref_scores).max() <= 1e-3


def _track(seed=0, frames=30, width=640, height=480):
    rng = np.random.default_rng(seed)
    base = rng.uniform([200, 100], [400, 400], (17, 2))
    kps = base + np.cumsum(rng.normal(0, 2, (frames, 17, 2)), 0)
    boxes = np.concatenate([kps.min(1) - 10, kps.max(1) + 10], 1)
    return kps.astype(np.float32), boxes.astype(np.float32), width, height


@pytest.mark.parametrize("backend", BACKENDS)
def test_videopose3d_track_equals_mmpose_windows(backend, reference_models, checkpoints, mm):
    """A 30-frame track: mmpose lifts it window by window (243 frames, edges replicated); we lift the
    whole track in one pass of the dilated network. Same numbers."""
    name = "videopose3d-243"
    kps, boxes, w, h = _track()
    expected = mm.reference_lift_track(reference_models(name), kps, boxes, w, h)
    expected = expected - expected[:, :1]  # posegraph's contract: exactly root-relative
    # mmpose does not smooth: compare the lifting itself (posegraph's smoothing is tested in test_motion.py).
    stage = Lift3dStage({"model": name, "smoothing": {"method": "off"}}).load(str(checkpoints / f"{name}.pth"),
                                                                              backend=backend)
    track = TrackDocument(track_id=3, width=w, height=h, frames=[
        TrackFrame(frame_index=i, bbox=b.tolist(), keypoints2d=np.c_[k, np.ones(17)].tolist())
        for i, (k, b) in enumerate(zip(kps, boxes))
    ])
    stage.run([track])
    ours = np.asarray([f.keypoints3d for f in track.frames])
    assert np.abs(ours - expected).max() * 1000 <= 1.0, "3D keypoints differ by more than 1 mm"


@pytest.mark.parametrize("name", ["videopose3d-243", "motionbert"])
def test_single_frame_lift_equals_mmpose(name, reference_models, checkpoints, mm):
    kps, boxes, w, h = _track(seed=4, frames=3)
    stage = Lift3dStage({"model": name}).load(str(checkpoints / f"{name}.pth"), backend="onnxruntime")
    reference = reference_models(name)
    for k, b in zip(kps, boxes):
        expected = mm.reference_lift_track(reference, k[None], b[None], w, h)[0]
        expected = expected - expected[:1]
        doc = FrameDocument(width=w, height=h, persons=[Person(bbox=b.tolist(), score=0.9,
                                                               keypoints2d=np.c_[k, np.ones(17)].tolist())])
        stage.run([doc])
        ours = np.asarray(doc.persons[0].keypoints3d)
        assert np.abs(ours - expected).max() * 1000 <= 1.0


# ---- the whole chain, as served (onnxruntime), on the photo and on the clip -------------------

@pytest.mark.parametrize(
    "backend,overrides",
    [
        ("onnxruntime", []),  # the CPU profile exactly as `posegraph run` uses it (≤ 10 persons a frame)
        # Many more persons (random weights find ~100 a frame): crops span several pose2d batches.
        ("torch", ["detect.max_persons=40"]),
    ],
)
def test_pipeline_on_photo_and_clip_equals_mm_chain(backend, overrides, reference_models, checkpoints, mm,
                                                     astronaut, clip_path):
    """The whole chain, stage by stage: our boxes must match mmdet's; mmpose's top-down then runs on
    *our* boxes and must give our 2D keypoints; mmpose's lifter runs on *our* 2D keypoints and must
    give our 3D. Feeding each reference stage our upstream output keeps the comparison exact: random
    weights amplify differences chaotically (measured: a 3e-5 px box difference moved a keypoint
    score by 0.16), which trained weights do not, and which would test the weights, not the code."""
    from posegraph.config import load_profile
    from posegraph.pipeline import Pipeline
    from posegraph.tracking import tracks_from_frames

    # mmpose's chain does not smooth tracks: posegraph's smoothing is off here (test_motion.py tests it).
    profile = load_profile("cpu", [f"backend={backend}", "lift3d.smoothing.method=off", *overrides])
    pipeline = Pipeline(profile, checkpoint_dir=checkpoints).load()
    det, pose, lift = (reference_models(profile.stage_settings(s).model) for s in ("detect", "pose2d", "lift3d"))
    width_height = lambda image: (image.shape[1], image.shape[0])  # noqa: E731

    def check_frame(doc, image, what):
        boxes, scores = mm.reference_detect(det, image)
        boxes, scores = boxes[: profile.detect.max_persons], scores[: profile.detect.max_persons]
        ours_boxes = np.asarray([p.bbox for p in doc.persons]).reshape(-1, 4)
        assert len(boxes) > 0, f"{what}: nobody found, the comparison would be empty"
        assert_boxes_match(ours_boxes, np.asarray([p.score for p in doc.persons]), boxes, scores, what)
        kp, kp_scores = mm.reference_pose2d(pose, image, ours_boxes, flip_test=profile.pose2d.flip_test)
        assert_keypoints_match([p.keypoints2d for p in doc.persons], kp, kp_scores, what)

    # The photo: detect → 2D → single-frame 3D.
    doc = pipeline.image(astronaut)
    check_frame(doc, astronaut, "photo")
    for person in doc.persons[:10]:  # mmpose lifts one person per call: keep the test quick
        expected = mm.reference_lift_track(lift, [person.keypoints2d], [person.bbox], *width_height(astronaut))[0]
        got = np.asarray(person.keypoints3d)
        assert np.abs(got - (expected - expected[:1])).max() * 1000 <= 1.0

    # The clip, through the real video path: decode, detect + 2D per frame, track, lift each track.
    import cv2

    from posegraph.media.video import VideoReader

    with VideoReader(clip_path) as reader:
        docs = pipeline.video(reader, max_frames=8)
    capture = cv2.VideoCapture(str(clip_path))
    for d in docs:
        ok, frame = capture.read()
        assert ok
        check_frame(d, frame, f"clip frame {d.frame_index}")
    capture.release()
    tracks = tracks_from_frames(docs)
    longest = sorted(tracks, key=lambda t: -len(t.frames))[:3]
    assert len(longest[0].frames) >= 2, "the synthetic clip should give at least one multi-frame track"
    lifted = {(p.track_id, d.frame_index): p.keypoints3d for d in docs for p in d.persons}
    for track in longest:
        kp = np.asarray([f.keypoints2d for f in track.frames])
        bx = np.asarray([f.bbox for f in track.frames])
        expected = mm.reference_lift_track(lift, kp, bx, track.width, track.height)
        got = np.asarray([lifted[(track.track_id, f.frame_index)] for f in track.frames])
        assert np.abs(got - (expected - expected[:, :1])).max() * 1000 <= 1.0
