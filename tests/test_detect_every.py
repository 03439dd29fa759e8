"""The detector on every N-th frame only (`--detect-every N`, the profile's tracking.detect_every):
between detections each person's box comes from their keypoints in the frame before.

The box propagation is checked through the real code path (videopass.DetectEvery, the real pose2d
stage's crop, decoding and mapping back to the image, the real video pass and tracker) with a pose
network double whose keypoints are known, and a detector double that counts its calls. N = 1 is
checked against the batched path on the real (random-weight) networks.
"""

from __future__ import annotations

import numpy as np
import pytest

from posegraph.config import TrackingSettings
from posegraph.frame import Person, StageRecord
from posegraph.models.engine import Network
from posegraph.stages import Pose2dStage
from posegraph.tracking import Tracker, box_from_keypoints
from posegraph.videopass import DetectEvery, Frame, InProcessFrames, MemorySink, batch_for, in_process_frames, run_video

# Where the double puts each of the 17 keypoints, as a fraction of the pose network's crop: a
# standing figure in the crop's middle.
SHAPE = np.array([[.50, .15], [.47, .12], [.53, .12], [.44, .13], [.56, .13], [.40, .28], [.60, .28],
                  [.36, .42], [.64, .42], [.34, .55], [.66, .55], [.44, .58], [.56, .58], [.43, .72],
                  [.57, .72], [.42, .86], [.58, .86]])


class KnownKeypoints(Network):
    """pose2d's network double: SimCC logits that peak where SHAPE says, with ``score`` there (the
    decoded keypoint score), zero elsewhere; ``scores`` may give one per call, in order."""

    backend, random_init, source = "double", False, "test double"

    def __init__(self, input_size: tuple[int, int], split: float, scores: list[float]) -> None:
        self.width, self.height = (int(v * split) for v in input_size)
        self.scores = list(scores)
        self.calls = 0
        self.batches: list[int] = []  # crops per call

    def __call__(self, crops: np.ndarray) -> list[np.ndarray]:
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        self.batches.append(len(crops))
        x = np.zeros((len(crops), 17, self.width), np.float32)
        y = np.zeros((len(crops), 17, self.height), np.float32)
        for k, (fx, fy) in enumerate(SHAPE):
            x[:, k, int(fx * self.width)] = score
            y[:, k, int(fy * self.height)] = score
        return [x, y]


class CountingDetector:
    """detect's double: the same box for the one person on every frame it runs on."""

    name = "detect"

    def __init__(self, box: list[float]) -> None:
        self.box, self.frames = box, []

    def run(self, docs):
        for doc in docs:
            if doc.persons is not None:  # as the real stage: persons known, nothing to detect
                continue
            self.frames.append(doc.frame_index)
            doc.persons = [Person(bbox=list(self.box), score=0.9)]
            doc.stages["detect"] = StageRecord(model="double")
        return docs


def frames(n: int, size=(480, 640)) -> list[Frame]:
    return [Frame(i, i / 30, np.full((*size, 3), 40 + i, np.uint8)) for i in range(n)]


def stages_with(scores: list[float], box=(200.0, 100.0, 320.0, 400.0)):
    pose2d = Pose2dStage({"model": "rtmpose-t"})
    p = pose2d.spec.params
    pose2d.network = KnownKeypoints(p["input_size"], p["simcc_split_ratio"], scores)
    return {"detect": CountingDetector(list(box)), "pose2d": pose2d}


def test_box_from_keypoints_is_their_extent_grown_about_its_centre_and_clipped():
    kp = [[100, 50, .9], [140, 50, .9], [120, 250, .9]]
    kp += [[120, 150, .9]] * 14
    assert box_from_keypoints(kp, 640, 480, min_score=.3) == pytest.approx([95, 25, 145, 275])
    assert box_from_keypoints(kp, 640, 480, min_score=.3, expand=1.0) == pytest.approx([100, 50, 140, 250])
    assert box_from_keypoints(kp, 130, 260, min_score=.3) == pytest.approx([95, 25, 130, 260])  # clipped
    unsure = [[x, y, .1] for x, y, _ in kp]
    assert box_from_keypoints(unsure, 640, 480, min_score=.3) is None, "lost: the detector must look"
    two_sure = [[100, 50, .9], [140, 50, .9]] + [[120, 150, .29]] * 15  # mean .36
    assert box_from_keypoints(two_sure, 640, 480, min_score=.3) is None  # fewer than three sure joints
    assert box_from_keypoints([[10, 10, .9]] * 17, 640, 480, min_score=.3) is None  # a point is no box


def test_between_detections_each_box_comes_from_the_keypoints_before_it():
    stages = stages_with([0.9])
    every = DetectEvery(InProcessFrames(stages), 4, redetect_below=0.3, box_expand=1.25)
    sink = MemorySink()
    run_video(frames(10), every, lambda tracks: tracks, sink, Tracker(), batch_frames=batch_for(4, 3))
    docs = sink.docs
    assert sorted(stages["detect"].frames) == [0, 4, 8], "the detector on every 4th frame"
    assert every.detected == 3
    for before, doc in zip(docs, docs[1:]):
        (person,) = doc.persons
        if doc.frame_index % 4 == 0:
            assert person.bbox == stages["detect"].box and "detect" in doc.stages
            continue
        expected = box_from_keypoints(before.persons[0].keypoints2d, 640, 480, min_score=0.3, expand=1.25)
        assert person.bbox == pytest.approx(expected), f"frame {doc.frame_index}"
        assert "detect" not in doc.stages and person.score == 0.9  # the detector's score, carried
    # the known shape comes back at the carried box: the crop and its inverse hold
    kp = np.asarray(docs[1].persons[0].keypoints2d)
    assert kp[:, 2] == pytest.approx(0.9)
    assert len({p.track_id for d in docs for p in d.persons}) == 1, "one person, one track"


def test_the_chains_of_a_batch_go_in_lockstep_and_batches_of_whole_chains_change_nothing():
    """Frames from one scheduled detection to the next depend on nothing before: a batch's chains
    go through pose2d together (their k-th frames in one call), a batch starts with the detector,
    and cutting the stream into batches of whole chains, run one or two at a time, changes no
    document."""
    by_batch = {}
    for batch, in_flight in ((5, 1), (20, 1), (10, 2)):
        stages = stages_with([0.9])
        sink = MemorySink()
        run_video(frames(20), DetectEvery(InProcessFrames(stages), 5), lambda tracks: tracks, sink, Tracker(),
                  batch_frames=batch, in_flight=in_flight)
        docs = [doc.to_json() for doc in sink.docs]
        for doc in docs:
            for record in doc["stages"].values():
                record.pop("ms", None)
        by_batch[batch] = (docs, stages["pose2d"].network.batches, sorted(stages["detect"].frames))
    assert by_batch[5][0] == by_batch[20][0] == by_batch[10][0]
    assert by_batch[20][1] == [4] * 5, "four chains of five frames: five pose2d calls of four frames"
    assert by_batch[5][2] == by_batch[20][2] == by_batch[10][2] == [0, 5, 10, 15]
    # a batch that is not whole chains starts with the detector all the same
    stages = stages_with([0.9])
    every = DetectEvery(InProcessFrames(stages), 5)
    every(frames(3))
    every(frames(3))
    assert stages["detect"].frames == [0, 0] and every.detected == 2


def test_a_person_whose_keypoints_are_unsure_is_looked_for_again():
    # sure, sure, then unsure on the 3rd frame: the 4th is detected although N is 10
    stages = stages_with([0.9, 0.9, 0.1, 0.9, 0.9, 0.9])
    every = DetectEvery(InProcessFrames(stages), 10, redetect_below=0.3)
    every(frames(6))
    assert stages["detect"].frames == [0, 3]


def test_n_is_a_profile_value_checked_there():
    with pytest.raises(ValueError):
        TrackingSettings(detect_every=0)
    assert isinstance(in_process_frames({"detect": None, "pose2d": None}, TrackingSettings()), InProcessFrames)
    assert isinstance(in_process_frames(stages_with([0.9]), TrackingSettings(detect_every=5)), DetectEvery)


def test_every_frame_detected_one_at_a_time_gives_the_batched_results(checkpoints):
    """N = 1 runs today's batched path (in_process_frames); DetectEvery's own loop at N = 1 gives the
    same documents, on the real networks (random weights: many persons, all detected)."""
    from posegraph.config import load_profile
    from posegraph.media.samples import synthetic_clip_frames
    from posegraph.pipeline import Pipeline

    stages = Pipeline(load_profile("cpu"), checkpoint_dir=checkpoints).load().stages
    clip = [Frame(i, i / 12, pixels) for i, pixels in enumerate(synthetic_clip_frames(6))]
    batched = [r.doc.to_json() for r in InProcessFrames(stages)(clip)]
    one_by_one = [r.doc.to_json() for r in DetectEvery(InProcessFrames(stages), 1)(clip)]
    for a, b in zip(batched, one_by_one):
        for doc in (a, b):
            for record in doc["stages"].values():
                record.pop("ms")
        assert a == b

