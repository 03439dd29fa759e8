"""Root motion, the floor, contacts and foot locking (posegraph.motion.root / ground / world), on a
synthetic walk with its ground truth (posegraph.motion.synthetic); the numbers bench/motion.py
tabulates in docs/motion.md."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from posegraph.frame import Camera, FrameDocument, Person, TrackDocument, TrackFrame, parse_document
from posegraph.motion import ground as floor
from posegraph.motion import synthetic, world
from posegraph.motion.root import (default_focal_px, fit_root, focal_from_35mm, focal_from_fov, place_roots,
                                   project)
from posegraph.motion.smoothing import SmoothingSettings

UP = np.array([0.0, 1.0, 0.0])  # world up


@pytest.fixture(scope="module")
def clean():
    return synthetic.walk(6.0)


@pytest.fixture(scope="module")
def noisy():
    return synthetic.walk(6.0, noise_px=2.0, noise_m=0.015, seed=3)


def lifted(walk, focal=None, smoothing=SmoothingSettings()) -> TrackDocument:
    frames = [TrackFrame(frame_index=i, bbox=[*k2[:, :2].min(0), *k2[:, :2].max(0)], score=1.0,
                         keypoints2d=k2.tolist(), keypoints3d=k3.tolist())
              for i, (k2, k3) in enumerate(zip(walk.keypoints2d, walk.keypoints3d))]
    doc = TrackDocument(track_id=1, width=walk.width, height=walk.height, frames=frames,
                        camera=Camera(focal_px=focal or walk.focal_px))
    place_roots([doc], smoothing)
    return doc


def roots(doc: TrackDocument) -> np.ndarray:
    return np.asarray([f.root3d for f in doc.frames])


# ---- the root -------------------------------------------------------------------------------------

def test_the_pinhole_fit_finds_where_the_person_is(clean):
    root = fit_root(clean.keypoints2d, clean.keypoints3d, clean.focal_px, (clean.width / 2, clean.height / 2))
    error = np.linalg.norm(root - clean.root, axis=1)
    # Not exact only because the 2D pelvis is the midpoint of the projected hips, not the
    # projection of their midpoint (and the same for the thorax and spine).
    assert error.max() < 0.01, error.max()
    walked = np.linalg.norm(np.diff(clean.root, axis=0), axis=1).sum()
    assert walked > 5.0  # it travels: 6 s at 1 m/s
    reprojected = project(root + clean.keypoints3d[:, 1], clean.focal_px, (clean.width / 2, clean.height / 2))
    assert np.abs(reprojected - clean.keypoints2d[:, 12, :2]).max() < 2.0  # right hip, pixels


def test_a_wrong_focal_length_scales_depth_not_direction(clean):
    centre = (clean.width / 2, clean.height / 2)
    right = fit_root(clean.keypoints2d, clean.keypoints3d, clean.focal_px, centre)
    longer = fit_root(clean.keypoints2d, clean.keypoints3d, 2 * clean.focal_px, centre)
    ratio = longer[:, 2] / right[:, 2]
    assert np.allclose(ratio, 2.0, atol=0.05), ratio
    # Sideways and up-down, where the person is stays put: x/z halves as z doubles.
    assert np.abs(longer[:, :2] - right[:, :2]).max() < 0.1  # at 5-7 m: within 10 cm


def test_focal_lengths_from_what_users_and_cameras_give():
    assert focal_from_fov(90.0, 1000) == pytest.approx(500.0)
    assert default_focal_px(1280, 720) == pytest.approx(np.hypot(1280, 720))
    # 35 mm equivalent: a 43.27 mm-diagonal frame; 26 mm on a 1920×1080 video ≈ 1324 px
    assert focal_from_35mm(26.0, 1920, 1080) == pytest.approx(26 * np.hypot(1920, 1080) / np.hypot(36, 24))
    with pytest.raises(ValueError, match="between 1 and 179"):
        focal_from_fov(0.0, 640)


def test_lift3d_places_a_tracks_path_smoothed_and_without_holes(noisy):
    doc = lifted(noisy)
    raw = lifted(noisy, smoothing=SmoothingSettings(method="off"))
    truth = noisy.root
    err_smooth = np.linalg.norm(roots(doc) - truth, axis=1).mean()
    err_raw = np.linalg.norm(roots(raw) - truth, axis=1).mean()
    assert err_smooth < err_raw < 0.2, (err_smooth, err_raw)
    # A frame whose 2D scores are all zero has nothing to fit: it takes its neighbours' path.
    frames = [f.model_copy(deep=True) for f in doc.frames[:30]]
    frames[10].keypoints2d = [[x, y, 0.0] for x, y, _ in frames[10].keypoints2d]
    gap = TrackDocument(track_id=1, width=noisy.width, height=noisy.height, frames=frames,
                        camera=Camera(focal_px=noisy.focal_px))
    place_roots([gap], SmoothingSettings(method="off"))
    r = roots(gap)
    assert np.allclose(r[10], (r[9] + r[11]) / 2), "interpolated between its neighbours"


def test_a_frame_documents_persons_get_a_root_and_the_field_is_validated(clean):
    k2, k3 = clean.keypoints2d[5], clean.keypoints3d[5]
    doc = FrameDocument(width=clean.width, height=clean.height, camera=Camera(focal_px=clean.focal_px), persons=[
        Person(bbox=[0, 0, 10, 10], score=0.9, keypoints2d=k2.tolist(), keypoints3d=k3.tolist()),
        Person(bbox=[0, 0, 10, 10], score=0.9, keypoints2d=k2.tolist())])
    place_roots([doc])
    assert np.linalg.norm(np.asarray(doc.persons[0].root3d) - clean.root[5]) < 0.01
    assert doc.persons[1].root3d is None, "no 3D, no root"
    # Without a camera, the default focal length (the image diagonal) places the person farther.
    doc.camera = None
    place_roots([doc])
    assert doc.persons[0].root3d[2] > clean.root[5][2] * 1.3
    body = doc.to_json()
    body["persons"][0]["root3d"] = [1.0, "x", 2.0]
    with pytest.raises(Exception, match="root3d"):
        parse_document(body)
    body["persons"][0]["root3d"] = [1.0, 2.0]
    with pytest.raises(Exception, match="root3d"):
        parse_document(body)
    assert parse_document({**doc.to_json(), "camera": {"focal_px": 800}}).camera.focal_px == 800
    with pytest.raises(Exception, match="camera.focal_px"):
        parse_document({**doc.to_json(), "camera": {"focal_px": -1}})


# ---- the floor and the feet -------------------------------------------------------------------------

def test_the_floor_is_found_under_a_tilted_camera(noisy):
    doc = lifted(noisy)
    motion = world.track_motion(noisy.keypoints3d, roots(doc), noisy.fps)
    assert motion.ground.fitted == "plane"
    tilt = np.degrees(np.arccos(motion.ground.up @ noisy.up))
    assert tilt < 1.0, tilt
    level = np.degrees(np.arccos(floor.CAMERA_UP @ noisy.up))
    assert level > 10, "the camera is tilted 12°: assuming a level one would be wrong by that much"
    # On the floor: the planted ankles stand at the ankle's height above it.
    planted = motion.world[:, [floor.ANKLES["left"], floor.ANKLES["right"]], 1][noisy.contacts]
    assert abs(np.median(planted) - floor.ANKLE_HEIGHT) < 0.03


def test_standing_still_or_walking_a_line_does_not_fix_a_plane():
    still = np.tile([[[-0.1, 1.5, 4.0], [0.1, 1.5, 4.0]]], (60, 1, 1)) + np.random.default_rng(0).normal(0, 0.005, (60, 2, 3))
    assert floor.fit_ground(still).fitted == "camera"
    t = np.linspace(0, 3, 90)[:, None]
    line = np.stack([np.hstack([t - 0.1, 1.5 + 0.1 * t, 4 + t]), np.hstack([t + 0.1, 1.5 + 0.1 * t, 4 + t])], 1)
    g = floor.fit_ground(line)
    direction = np.array([1.0, 0.1, 1.0]) / np.linalg.norm([1.0, 0.1, 1.0])
    assert g.fitted == "line" and abs(g.up @ direction) < 1e-9 and g.up[1] < -0.9


def test_a_short_walk_along_a_line_under_a_tilted_camera_gets_the_floor_from_the_body():
    """Ankles on a line do not fix a plane: the body's up (its trunk, perpendicular to the line)
    does, where the camera's up would leave the floor tilted by the camera's 12°."""
    short = synthetic.walk(2.5, noise_px=2.0, noise_m=0.015, seed=5)
    motion = world.track_motion(short.keypoints3d, short.root, short.fps)
    assert motion.ground.fitted == "line"
    assert np.degrees(np.arccos(np.clip(motion.ground.up @ short.up, -1, 1))) < 1.0
    camera_only = floor.fit_ground(short.camera[:, [floor.ANKLES["left"], floor.ANKLES["right"]]])
    assert np.degrees(np.arccos(np.clip(camera_only.up @ short.up, -1, 1))) > 10.0, "without the body's up"
    f1 = 2 * (motion.contacts & short.contacts).sum() / (motion.contacts.sum() + short.contacts.sum())
    assert f1 > 0.9, f1


def test_contacts_are_found_where_the_feet_are_planted(noisy):
    motion = world.track_motion(noisy.keypoints3d, roots(lifted(noisy)), noisy.fps)
    found, truth = motion.contacts, noisy.contacts
    f1 = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert f1 > 0.9, f1
    for foot in range(2):
        assert all(stop - start >= floor.MIN_CONTACT_FRAMES for start, stop in floor.runs(found[:, foot]))


def test_foot_locking_stops_the_skate_and_keeps_the_bones(noisy):
    motion = world.track_motion(noisy.keypoints3d, roots(lifted(noisy)), noisy.fps)
    free = world.solve(motion)
    locked = world.solve(motion, lock_feet=True)
    skate_free = floor.foot_skate(free.positions, noisy.contacts, UP)
    skate_locked = floor.foot_skate(locked.positions, noisy.contacts, UP)
    assert skate_locked < 0.5 * skate_free, (skate_locked, skate_free)
    # Inside a detected contact the foot does not move at all.
    # (Not exactly 0: where a lock is out of the leg's reach, the foot stops as near it as it can.)
    assert floor.foot_skate(locked.positions, motion.contacts, UP) < 5e-4
    for parent, child in ((1, 2), (2, 3), (4, 5), (5, 6)):
        length = np.linalg.norm(locked.positions[:, child] - locked.positions[:, parent], axis=1)
        assert np.ptp(length) < 1e-9, "a fixed skeleton"
        assert length[0] == pytest.approx(np.linalg.norm(free.offsets[child]), abs=1e-9), "the same skeleton"
    # The rest of the body is where it was.
    assert np.abs(locked.positions[:, 7:] - free.positions[:, 7:]).max() < 1e-9


def test_two_bone_ik_reaches_and_clamps():
    hip, knee, ankle = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.55, 0.05]), np.array([0.0, 0.1, 0.0])
    target = np.array([0.2, 0.2, 0.1])
    k, a = floor.two_bone_ik(hip, knee, ankle, target)
    assert np.allclose(a, target)
    assert np.linalg.norm(k - hip) == pytest.approx(np.linalg.norm(knee - hip))
    assert np.linalg.norm(a - k) == pytest.approx(np.linalg.norm(ankle - knee))
    far = np.array([0.0, -2.0, 0.0])
    k, a = floor.two_bone_ik(hip, knee, ankle, far)
    reach = np.linalg.norm(knee - hip) + np.linalg.norm(ankle - knee)
    assert np.linalg.norm(a - hip) == pytest.approx(reach, abs=1e-5) and a[1] < hip[1]


# ---- the world and the solve ---------------------------------------------------------------------------

def test_root_motion_follows_the_path_and_in_place_stays(clean):
    motion = world.track_motion(clean.keypoints3d, clean.root, clean.fps)
    travelling = world.solve(motion)
    true_path = clean.world[:, 0, [0, 2]]
    path = travelling.root_positions[:, [0, 2]]
    walked, true_walked = (np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in (path, true_path))
    assert walked == pytest.approx(true_walked, rel=0.02)
    # The same path up to where the world's origin and axes are (the origin: below the first pelvis).
    assert np.allclose(np.linalg.norm(path - path[0], axis=1), np.linalg.norm(true_path - true_path[0], axis=1),
                       atol=0.02)
    assert abs(np.median(travelling.root_positions[:, 1]) - synthetic.PELVIS_HEIGHT) < 0.03
    in_place = world.solve(motion, root_motion=False)
    assert np.abs(in_place.root_positions[:, [0, 2]]).max() < 1e-9
    assert np.allclose(in_place.root_positions[:, 1], travelling.root_positions[:, 1])


def test_a_track_without_a_path_is_refused_in_one_line(clean):
    with pytest.raises(world.NoRootPath, match="track 4: the root path must be"):
        world.track_motion(clean.keypoints3d, clean.root[:-1], clean.fps, track=4)


# ---- the camera's metadata --------------------------------------------------------------------------

def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _tagged_mp4(items: dict[str, str], full_box_meta: bool) -> bytes:
    keys = _box(b"keys", b"\0\0\0\0" + struct.pack(">I", len(items))
                + b"".join(_box(b"mdta", k.encode()) for k in items))
    ilst = _box(b"ilst", b"".join(_box(struct.pack(">I", i + 1), _box(b"data", b"\0\0\0\1\0\0\0\0" + v.encode()))
                                  for i, v in enumerate(items.values())))
    meta = _box(b"meta", (b"\0\0\0\0" if full_box_meta else b"") + _box(b"hdlr", b"\0" * 24) + keys + ilst)
    return _box(b"ftyp", b"isom\0\0\2\0isom") + _box(b"mdat", b"\0" * 100) + _box(b"moov", _box(b"mvhd", b"\0" * 100)
                                                                                  + meta)


@pytest.mark.parametrize("full_box_meta", [False, True])
def test_the_focal_length_a_phone_wrote_into_the_video(tmp_path, full_box_meta):
    from posegraph.media.camera_tags import focal_35mm

    path = tmp_path / "phone.mov"
    path.write_bytes(_tagged_mp4({"com.apple.quicktime.make": "Apple",
                                  "com.apple.quicktime.camera.focal_length.35mm_equivalent": "26"}, full_box_meta))
    assert focal_35mm(path) == 26.0
    path.write_bytes(_tagged_mp4({"com.apple.quicktime.camera.focal_length.35mm_equivalent": "wide"}, full_box_meta))
    assert focal_35mm(path) is None
    path.write_bytes(b"\0\0\0\x10ftypisom" + b"\xff" * 64)  # a box that claims more than the file has
    assert focal_35mm(path) is None


# ---- exports from a results store ---------------------------------------------------------------------

def _stored_walk(tmp_path, walk, *, with_roots: bool) -> str:
    """A finished job holding the walk as one lifted track, as the job runner leaves it (with
    ``with_roots=False``: as a store from before version 5 holds it, 3D without a path)."""
    from posegraph.jobs.rows import FrameRow, PersonRow
    from posegraph.jobs.store import open_store

    dsn = f"sqlite:///{tmp_path / 'walk.db'}"
    store = open_store(dsn)
    store.migrate()
    store.begin_job("walk", "walk.mp4", {"focal_px": walk.focal_px})
    store.update_job("walk", width=walk.width, height=walk.height, fps=walk.fps)
    frames = [FrameRow(i, i / walk.fps, "ok", None, 1) for i in range(len(walk.keypoints2d))]
    persons = [PersonRow(1, 0.9, [*k2[:, :2].min(0), *k2[:, :2].max(0)], k2.tolist(), None, frame_index=i,
                         person_index=0) for i, k2 in enumerate(walk.keypoints2d)]
    store.commit_batch("walk", frames, persons, [(1, 0, len(frames) - 1)], last_frame=len(frames) - 1,
                       tracker_state=None)
    rows = [(i, 0, k3.tolist(), walk.root[i].tolist() if with_roots else None)
            for i, k3 in enumerate(walk.keypoints3d)]
    store.write_lifted("walk", 1, rows)
    store.update_job("walk", status="succeeded")
    store.close()
    return dsn


@pytest.mark.parametrize("with_roots", [True, False], ids=["version-5", "stored-before-roots"])
def test_export_bvh_travels_in_place_locked_and_with_mixamo_names(tmp_path, noisy, with_roots):
    from bvh_reference import bvh_fk, parse_bvh

    from posegraph.jobs.export import MotionOptions, export_job
    from posegraph.jobs.store import open_store

    store = open_store(_stored_walk(tmp_path, noisy, with_roots=with_roots))
    try:
        paths = {}
        for name, options in {"travel": MotionOptions(), "in-place": MotionOptions(root_motion=False),
                              "locked": MotionOptions(lock_feet=True), "mixamo": MotionOptions(rig="mixamo")}.items():
            (paths[name],) = export_job(store, "walk", "bvh", tmp_path / name, motion=options).files
    finally:
        store.close()
    parsed = {name: parse_bvh(path.read_text()) for name, path in paths.items()}
    travel = bvh_fk(parsed["travel"]) / 100  # centimetres
    walked = np.linalg.norm(np.diff(travel[:, 0, [0, 2]], axis=0), axis=1).sum()
    true_walked = np.linalg.norm(np.diff(noisy.world[:, 0, [0, 2]], axis=0), axis=1).sum()
    assert walked == pytest.approx(true_walked, rel=0.03), "the root travels as far as the person walked"
    assert np.abs(bvh_fk(parsed["in-place"])[:, 0, [0, 2]]).max() < 1e-3
    locked = bvh_fk(parsed["locked"]) / 100
    assert floor.foot_skate(locked, noisy.contacts, UP) < 0.5 * floor.foot_skate(travel, noisy.contacts, UP)
    names = [j["name"] for j in parsed["mixamo"]["joints"]]
    assert names[0] == "mixamorig:Hips" and "mixamorig:LeftFoot" in names
    assert np.allclose(bvh_fk(parsed["mixamo"]), bvh_fk(parsed["travel"]), atol=1e-4), "only the names differ"


def test_export_refuses_an_unknown_rig_in_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "posegraph", "export", "--results", f"sqlite:///{tmp_path}/x.db",
                           "--job-id", "j", "--format", "glb", "--rig", "unreal", "--out", tmp_path / "o"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--rig" in done.stderr and "unreal" in done.stderr
    assert not (tmp_path / "o").exists()
