"""form_judge's tests, as a user keeps them beside their stage: `pytest examples/form_judge`.

Synthetic tracks (synthetic_exercise.py) with known repetitions go through the stage the way
posegraph runs it (loaded from this directory by posegraph.stages.user.load_user_stage, on track
documents); noise is added per joint and frame, then smoothed as posegraph's lift3d smooths every
track it lifts (Savitzky-Golay, 15 frames, order 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic_exercise as synthetic

from posegraph.frame import TrackDocument, TrackFrame
from posegraph.motion.smoothing import SmoothingSettings, smooth
from posegraph.stages.user import load_user_stage

HERE = Path(__file__).parent
MAKERS = {"squat": synthetic.squat, "pushup": synthetic.pushup, "lunge": synthetic.lunge}


def plan(reps: int, seed: int):
    """Reps of varied tempo (down 0.8-1.6 s, up 0.6-1.4 s) and depth, with 0.3-1 s pauses."""
    rng = np.random.default_rng(seed)
    return ([(rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.0)) for _ in range(reps)],
            list(rng.uniform(0.3, 1.0, reps + 1)))


def document(exercise: synthetic.Exercise) -> TrackDocument:
    k3 = smooth(exercise.keypoints3d, SmoothingSettings())
    k3 = k3 - k3[:, :1]
    frames = [TrackFrame(frame_index=i, bbox=[0, 0, 10, 10], keypoints2d=[[0.0, 0.0, 1.0]] * 17,
                         keypoints3d=p.tolist()) for i, p in enumerate(k3)]
    return TrackDocument(track_id=1, width=640, height=480, frames=frames, fps=exercise.fps)


@pytest.fixture(scope="module")
def judge():
    return load_user_stage(HERE)


def judged(judge, exercise):
    (doc,) = judge.run([document(exercise)])
    return doc


@pytest.mark.parametrize("kind", MAKERS)
@pytest.mark.parametrize("noise_m, within", [(0.0, 2.0), (0.005, 2.0), (0.020, 5.0)])
def test_reps_are_counted_exactly_and_bounded_within_frames(judge, kind, noise_m, within):
    for seed in range(3):
        reps, pauses = plan(5, seed)
        exercise = MAKERS[kind](reps, pauses, noise_m=noise_m, seed=seed + 10)
        doc = judged(judge, exercise)
        assert doc.exercise == kind, "detected"
        assert len(doc.reps) == len(exercise.reps), f"seed {seed}: {len(doc.reps)} reps, truth {len(exercise.reps)}"
        for found, (start, bottom, end) in zip(doc.reps, exercise.reps):
            assert abs(found["start_frame"] - start) <= within, (found, start)
            assert abs(found["end_frame"] - end) <= within, (found, end)
            assert found["start_frame"] < found["bottom_frame"] < found["end_frame"]


def test_tempo_depth_and_feedback_follow_the_motion(judge):
    slow_deep = synthetic.squat([(1.5, 1.0, 1.0)] * 3, [0.5] * 4, depth_deg=110.0)
    fast_shallow = synthetic.squat([(0.5, 0.6, 0.55)] * 3, [0.5] * 4, depth_deg=110.0)
    good, bad = judged(judge, slow_deep), judged(judge, fast_shallow)
    for rep in good.reps:
        assert rep["down_s"] == pytest.approx(1.5, abs=0.07) and rep["up_s"] == pytest.approx(1.0, abs=0.07)
        assert rep["depth_deg"] == pytest.approx(115.0, abs=3.0) and rep["ok"], rep
    for rep in bad.reps:
        assert rep["depth_deg"] < 90 and rep["down_s"] < 0.8 and not rep["ok"]
        assert any(f.startswith("depth:") for f in rep["feedback"])
        assert any(f.startswith("tempo:") for f in rep["feedback"])


def test_symmetry_and_trunk_lean_rules(judge):
    uneven = judged(judge, synthetic.squat([(1.2, 1.0, 1.0)] * 2, [0.5] * 3, asymmetry=0.3))
    leaning = judged(judge, synthetic.squat([(1.2, 1.0, 1.0)] * 2, [0.5] * 3, lean_per_deg=0.6))
    assert all(rep["symmetry_deg"] > 12 and any(f.startswith("symmetry:") for f in rep["feedback"])
               for rep in uneven.reps)
    assert all(rep["trunk_lean_deg"] > 45 and any(f.startswith("trunk lean:") for f in rep["feedback"])
               for rep in leaning.reps)


def test_no_exercise_no_reps_and_a_chosen_exercise_is_kept(tmp_path):
    still = synthetic.squat([(1.0, 1.0, 0.05)] * 3, [0.5] * 4)  # knees bend 5°: no exercise
    judge = load_user_stage(HERE, {"exercise": "lunge"})
    doc = judged(judge, still)
    assert doc.exercise == "lunge" and doc.reps == []
