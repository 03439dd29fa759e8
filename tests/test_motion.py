"""Motion capture out of tracks: temporal smoothing (in the lift3d stage, for both video paths),
joint angles, and their place in the results store."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from posegraph.keypoints import H36M17
from posegraph.motion.angles import ANGLES, joint_angles
from posegraph.motion.smoothing import SmoothingSettings, smooth

J = {name: i for i, name in enumerate(H36M17)}


def jerk(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, 2, axis=0)).mean())


# ---- smoothing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["savgol", "one_euro"])
def test_smoothing_removes_jitter_and_keeps_the_signal(method):
    t = np.arange(120)
    truth = np.stack([np.sin(t / 12.0), np.cos(t / 9.0)], -1)[:, None, :] * 0.2  # (T, 1, 2)
    noisy = truth + np.random.default_rng(1).normal(0, 0.01, truth.shape)
    out = smooth(noisy, SmoothingSettings(method=method))
    assert out.shape == noisy.shape
    assert jerk(out) < jerk(noisy) / 2, "jitter at least halved"
    assert np.abs(out - truth).mean() < 0.03


@pytest.mark.parametrize("frames,window,order", [(40, 15, 3), (15, 15, 3), (16, 15, 2), (200, 5, 2), (9, 9, 5),
                                                 (31, 3, 1)])
def test_savgol_in_numpy_is_scipys_savgol_filter_in_interp_mode(frames, window, order):
    """posegraph's own Savitzky–Golay (no scipy in the images) computes what scipy computes,
    inside the track and at both ends."""
    from scipy.signal import savgol_filter

    from posegraph.motion.smoothing import savgol_interp

    x = np.random.default_rng(frames).normal(size=(frames, 17, 3))
    expected = savgol_filter(x, window, order, axis=0, mode="interp")
    assert np.allclose(savgol_interp(x, window, order), expected, rtol=0, atol=1e-9)


def test_smoothing_off_short_tracks_and_bad_settings():
    x = np.random.default_rng(0).normal(size=(5, 17, 3))
    assert np.array_equal(smooth(x, SmoothingSettings(method="off")), x)
    assert np.array_equal(smooth(x[:1], SmoothingSettings()), x[:1])  # one frame: nothing to smooth
    assert smooth(x[:4], SmoothingSettings(window=15)).shape == (4, 17, 3)  # window shrinks to the track
    with pytest.raises(ValueError, match="odd"):
        SmoothingSettings(window=8)
    with pytest.raises(ValueError, match="below"):
        SmoothingSettings(window=5, order=5)
    from posegraph.config import load_profile

    assert load_profile("cpu", ["lift3d.smoothing.method=off"]).lift3d.smoothing.method == "off"  # YAML `off`


def _jittery_track(frames=40):
    from posegraph.frame import TrackDocument, TrackFrame

    rng = np.random.default_rng(3)
    base = rng.uniform(100, 300, size=(17, 2))
    frames_ = []
    for i in range(frames):
        k = base + [2.0 * i, 0] + rng.normal(0, 3.0, size=(17, 2))
        box = [float(k[:, 0].min() - 10), float(k[:, 1].min() - 10), float(k[:, 0].max() + 10),
               float(k[:, 1].max() + 10)]
        frames_.append(TrackFrame(frame_index=i, bbox=box, keypoints2d=np.c_[k, np.ones(17)].tolist()))
    return TrackDocument(track_id=1, width=640, height=480, frames=frames_)


def test_the_lift3d_stage_smooths_tracks_not_single_frames(checkpoints):
    from posegraph.stages import Lift3dStage

    name = "videopose3d-243"
    lifted = {}
    for method in ("off", "savgol"):
        stage = Lift3dStage({"model": name, "smoothing": {"method": method}}).load(
            str(checkpoints / f"{name}.pth"), backend="onnxruntime")
        track = _jittery_track()
        stage.run([track])
        lifted[method] = np.asarray([f.keypoints3d for f in track.frames])
    assert jerk(lifted["savgol"]) < jerk(lifted["off"]) / 2
    assert np.allclose(lifted["savgol"][:, 0], 0)  # still root-relative


def test_served_lift3d_smooths_exactly_as_in_process(checkpoints, starts_servers):
    """One place: the stage server built from the profile's archive gives the in-process numbers."""
    import httpx

    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile
    from posegraph.embedded import start_stage_server
    from posegraph.stages import Lift3dStage

    profile = load_profile("cpu")
    assert profile.lift3d.smoothing.method == "savgol"
    layouts = archives_for_profile(profile, checkpoints)
    server = start_stage_server("lift3d", layouts["lift3d"], runtime="kserve").wait_ready()
    try:
        served = httpx.post(server.predict_url, json={"instances": [_jittery_track().to_json()]}, timeout=60).json()
    finally:
        server.stop()
    stage = Lift3dStage(profile.lift3d).load(str(checkpoints / f"{profile.lift3d.model}.pth"), backend="onnxruntime")
    track = _jittery_track()
    stage.run([track])
    ours = np.asarray([f.keypoints3d for f in track.frames])
    theirs = np.asarray([f["keypoints3d"] for f in served["predictions"][0]["frames"]])
    assert np.abs(ours - theirs).max() < 1e-4


# ---- joint angles --------------------------------------------------------------------------------------

def standing(knee_bend_deg=0.0, arm_raise_deg=0.0, lean_deg=0.0):
    """A skeleton in camera axes (y down): legs straight below the hips, arms down, trunk up;
    the left knee bent, the left arm raised sideways, the trunk leant forward by the given angles."""
    k = np.zeros((17, 3))
    up = np.array([0, -np.cos(np.radians(lean_deg)), np.sin(np.radians(lean_deg))])
    k[J["thorax"]], k[J["spine"]], k[J["neck_base"]], k[J["head"]] = 0.5 * up, 0.25 * up, 0.6 * up, 0.7 * up
    for side, x in (("left", 0.1), ("right", -0.1)):
        k[J[f"{side}_hip"]] = [x, 0, 0]
        k[J[f"{side}_knee"]] = [x, 0.45, 0]
        k[J[f"{side}_foot"]] = [x, 0.9, 0]
        shoulder = k[J["thorax"]] + [2 * x, 0, 0]
        k[J[f"{side}_shoulder"]] = shoulder
        k[J[f"{side}_elbow"]] = shoulder - 0.3 * up
        k[J[f"{side}_wrist"]] = shoulder - 0.55 * up
    b = np.radians(knee_bend_deg)
    k[J["left_foot"]] = k[J["left_knee"]] + 0.45 * np.array([0, np.cos(b), -np.sin(b)])
    a = np.radians(arm_raise_deg)
    down = -up
    k[J["left_elbow"]] = k[J["left_shoulder"]] + 0.3 * (np.cos(a) * down + np.sin(a) * np.array([1, 0, 0]))
    k[J["left_wrist"]] = k[J["left_shoulder"]] + 0.55 * (np.cos(a) * down + np.sin(a) * np.array([1, 0, 0]))
    return k


def test_joint_angles_of_known_poses():
    still = joint_angles(standing())
    assert all(abs(still[a]) < 1e-6 for a in ANGLES)
    posed = joint_angles(np.stack([standing(90, 0, 0), standing(30, 90, 0), standing(0, 170, 20)]))
    assert np.allclose(posed["left_knee"], [90, 30, 0], atol=1e-6)
    assert np.allclose(posed["right_knee"], 0, atol=1e-6)
    assert np.allclose(posed["left_shoulder"], [0, 90, 170], atol=1e-6)
    assert np.allclose(posed["left_elbow"], 0, atol=1e-6)  # a straight arm, wherever it points
    assert np.allclose(posed["trunk_lean"], [0, 0, 20], atol=1e-6)
    assert np.allclose(posed["left_hip"][2], 20, atol=1e-6)  # leaning forward flexes the hips
    collapsed = standing()
    collapsed[J["left_knee"]] = collapsed[J["left_hip"]]  # a bone of no length: no angle, not a number
    assert np.isnan(joint_angles(collapsed)["left_knee"])


def test_the_store_migrates_to_joint_angles_and_keeps_old_jobs(tmp_path):
    """A store made before migration 2 gains the table (and migration 3's range columns); what it
    held is untouched."""
    from posegraph.jobs.store import SCHEMA, SQLITE, open_store

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    ddl = SCHEMA[0].replace("{json}", SQLITE.json).replace("{real}", SQLITE.real).replace("{ts}", SQLITE.ts)
    old.executescript(ddl + "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);"
                      "INSERT INTO schema_migrations VALUES (1, 'then');"
                      "INSERT INTO jobs (job_id, video_uri, status, params, created_at, updated_at) "
                      "VALUES ('old', 'v.mp4', 'succeeded', '{}', 'then', 'then');")
    old.commit()
    old.close()
    store = open_store(f"sqlite:///{path}")
    applied = store.migrate()
    assert applied == list(range(2, len(SCHEMA) + 1)), "every version after 1 (2: joint angles, 3: ranges)"
    assert store.migrate() == []
    assert store.job("old").status == "succeeded"
    assert [job.job_id for job in store.list_jobs()] == ["old"], "an old job is not a range"
    assert store.joint_angles("old", 1) == ([], {a: [] for a in ANGLES})
    store.close()
