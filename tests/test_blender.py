"""The motion exports in Blender, the tool they are made for: a synthetic walk (root motion, feet
locked or not) written as BVH and GLB, and converted to FBX by posegraph.motion.blender, each
imported by Blender's own importer (Debian's Blender 3.4, headless), and what Blender poses compared
with the solution: joint positions, joint angles, the distance walked, planted feet, bone names.

tests/blender_driver.py runs inside Blender, one launch per file (launched side by side), and
writes each pose bone's world-space head per frame. Blender is Z up: a Y-up file (BVH, glTF, and
the FBX posegraph writes) comes in as (x, y, z) → (x, −z, y), which test_blender_axes measures
rather than assumes. Joints are compared by position, never by bone roll: each importer orients its
bones its own way (BVH along the offsets, glTF by a heuristic, FBX as written), but a bone's head
is its joint wherever the bone points.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tiers import missing, tier

from posegraph.errors import UsageError
from posegraph.keypoints import H36M17, H36M_PARENTS
from posegraph.motion import synthetic, world
from posegraph.motion.angles import ANGLES, joint_angles
from posegraph.motion.blender import BlenderMissing, find_blender, glb_to_fbx
from posegraph.motion.bvh import write_bvh
from posegraph.motion.ground import ANKLES, HIPS, KNEES
from posegraph.motion.gltf import write_glb
from posegraph.motion.rigs import joint_names

DRIVER = Path(__file__).with_name("blender_driver.py")
# Blender's axes from BVH/glTF's (Y up, −Z forward, the importers' defaults): x → x, y → z, z → −y.
TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
CONTACT_SIDES = ("left", "right")  # the columns of TrackMotion.contacts
MM = 1e-3
NTSC = 30000 / 1001


def to_blender(points: np.ndarray) -> np.ndarray:
    return points @ TO_BLENDER.T


def blender_to_camera(points: np.ndarray) -> np.ndarray:
    """Blender's axes → posegraph's camera axes (x right, y down), which joint_angles' trunk lean
    assumes: back to Y up, then the half-turn about x of posegraph.motion.bvh."""
    return points @ TO_BLENDER * np.array([1.0, -1.0, -1.0])


# ---- the walk, the files, and Blender's view of each ---------------------------------------------------

@pytest.fixture(scope="module")
def walk():
    w = synthetic.walk(4.0, noise_px=2, noise_m=0.015)
    motion = world.track_motion(w.keypoints3d, w.root, w.fps)
    ntsc = synthetic.walk(2.0, fps=NTSC, noise_px=2, noise_m=0.015)  # video's 29.97 fps: not a whole number
    return {"motion": motion, "locked": world.solve(motion, lock_feet=True),
            "free": world.solve(motion, lock_feet=False),
            "ntsc": world.solve(world.track_motion(ntsc.keypoints3d, ntsc.root, ntsc.fps), lock_feet=True)}


@pytest.fixture(scope="module")
@tier("blender")
def blender() -> str:
    """Blender, able to import glTF: Debian's package does not depend on python3-numpy, which the
    glTF importer imports (scripts/install-blender.sh installs both)."""
    try:
        found = find_blender()
    except BlenderMissing as e:
        missing(f"{e} (`make test` runs scripts/install-blender.sh)")
    probe = subprocess.run([found, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
                            "--python-expr", "import numpy"], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=120)
    if probe.returncode != 0:
        missing(f"{found}'s Python cannot import numpy, which its glTF importer needs: apt-get install "
                "python3-numpy (`make test` runs scripts/install-blender.sh)")
    return found


def drive(blender: str, source: Path, *options: str) -> dict:
    """One Blender launch: tests/blender_driver.py imports ``source``; its report, with the seconds
    the launch took."""
    out = source.with_suffix(source.suffix + ".json")
    started = time.monotonic()
    run = subprocess.run([blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1",
                          "--python", str(DRIVER), "--", str(source), str(out), *options],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=300)
    assert run.returncode == 0 and out.is_file(), (f"Blender could not import {source.name} (exit {run.returncode}):\n"
                                                   f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    report = json.loads(out.read_text())
    report["seconds"] = time.monotonic() - started
    return report


@pytest.fixture(scope="module")
def imported(blender, walk, tmp_path_factory) -> dict[str, dict]:
    """Each file as Blender imports it, by name. BVH: centimetres (write_bvh's default, what posegraph
    writes) at the importer's Scale 0.01, as posegraph.motion.bvh tells users to import it; the mixamo
    BVH in metres (scale=1) at the importer's defaults throughout. FBX: the GLB through glb_to_fbx."""
    directory = tmp_path_factory.mktemp("blender")
    locked, free = walk["locked"], walk["free"]
    mixamo = dataclasses.replace(locked, names=joint_names("mixamo"))  # write_bvh names joints from .names
    write_bvh(locked, directory / "locked.bvh")
    write_bvh(free, directory / "free.bvh")
    write_bvh(mixamo, directory / "mixamo.bvh", scale=1.0)
    write_glb(locked, directory / "locked.glb")
    write_glb(free, directory / "free.glb")
    write_glb(locked, directory / "mixamo.glb", rig="mixamo")
    write_glb(walk["ntsc"], directory / "ntsc.glb")
    cm = ("--bvh-scale", "0.01")
    jobs = {"bvh": ("locked.bvh", cm), "bvh_free": ("free.bvh", cm), "bvh_mixamo": ("mixamo.bvh", ()),
            "glb": ("locked.glb", ()), "glb_free": ("free.glb", ()), "glb_mixamo": ("mixamo.glb", ())}

    def fbx(glb: str) -> dict:
        started = time.monotonic()
        converted = glb_to_fbx(directory / glb, directory / glb.replace(".glb", ".fbx"))
        report = drive(blender, converted)
        report["convert_seconds"] = time.monotonic() - started - report["seconds"]
        return report

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {"fbx": pool.submit(fbx, "locked.glb"), "fbx_ntsc": pool.submit(fbx, "ntsc.glb")}
        futures |= {name: pool.submit(drive, blender, directory / file, *options)
                    for name, (file, options) in jobs.items()}
        reports = {name: future.result() for name, future in futures.items()}
    each = ", ".join(f"{name} {r['seconds']:.1f} s" for name, r in reports.items())
    print(f"\n{len(reports)} imports and 2 conversions, Blender launched side by side, in "
          f"{time.monotonic() - started:.1f} s: {each}; glb_to_fbx {reports['fbx']['convert_seconds']:.1f} s")
    return reports


SOLUTION = {"bvh": "locked", "bvh_free": "free", "bvh_mixamo": "locked", "glb": "locked", "glb_free": "free",
            "glb_mixamo": "locked", "fbx": "locked", "fbx_ntsc": "ntsc"}
RIG = {"bvh_mixamo": "mixamo", "glb_mixamo": "mixamo"}


def heads(report: dict, name: str) -> np.ndarray:
    """(T, 17, 3) Blender's joint positions, in posegraph's joint order (bones found by the rig's names)."""
    names = joint_names(RIG.get(name, "posegraph"))
    index = [report["bones"].index(n) for n in names]
    return np.asarray(report["heads"], np.float64)[:, index]


def expected(walk, name: str) -> np.ndarray:
    return to_blender(walk[SOLUTION[name]].positions)


def joint_error(walk, imported, name: str) -> np.ndarray:
    got, want = heads(imported[name], name), expected(walk, name)
    assert got.shape == want.shape, f"{name}: Blender posed {got.shape[0]} frames, the solution has {want.shape[0]}"
    return np.linalg.norm(got - want, axis=-1)


# ---- axes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bvh", "glb", "fbx"])
def test_blender_axes(walk, imported, name):
    """Blender turns the Y-up files to its Z up as (x, y, z) → (x, −z, y): the linear map that best
    takes the solution's joints onto Blender's, fitted over every frame, is that turn, the armature
    object is not transformed, and the person stands upright in Blender (head above the ankles)."""
    got = heads(imported[name], name).reshape(-1, 3)
    ours = walk[SOLUTION[name]].positions.reshape(-1, 3)
    fitted = np.linalg.lstsq(ours, got, rcond=None)[0].T
    print(f"{name}: Blender ≈ M · file, M = {np.round(fitted, 6).tolist()}")
    np.testing.assert_allclose(fitted, TO_BLENDER, atol=1e-4)
    np.testing.assert_allclose(imported[name]["matrix_world"], np.eye(4), atol=1e-6)
    posed = heads(imported[name], name)
    height = posed[:, H36M17.index("head"), 2] - posed[:, [ANKLES["left"], ANKLES["right"]], 2].max(axis=1)
    assert height.min() > 1.0, f"{name}: the head is only {height.min():.2f} m above the ankles"


# ---- BVH and GLB: positions, angles, the path, planted feet ---------------------------------------------

@pytest.mark.parametrize("name", ["bvh", "bvh_free", "glb", "glb_free"])
def test_joint_positions_within_1mm(walk, imported, name):
    error = joint_error(walk, imported, name)
    worst = np.unravel_index(np.argmax(error), error.shape)
    print(f"{name}: max joint error {error.max() / MM:.4f} mm (frame {worst[0]}, {H36M17[worst[1]]}), "
          f"mean {error.mean() / MM:.4f} mm, {error.shape[0]} frames")
    assert error.max() < 1 * MM


@pytest.mark.parametrize("name", ["bvh", "glb"])
def test_joint_angles_within_half_a_degree(walk, imported, name):
    """Knees, elbows, hips, shoulders and trunk lean from Blender's joints, as from the solution's."""
    ours = joint_angles(walk[SOLUTION[name]].positions * np.array([1.0, -1.0, -1.0]))  # to camera axes
    theirs = joint_angles(blender_to_camera(heads(imported[name], name)))
    errors = {a: float(np.nanmax(np.abs(theirs[a] - ours[a]))) for a in ANGLES}
    print(f"{name}: max angle error {max(errors.values()):.5f}° ({max(errors, key=errors.get)})")
    for angle in ANGLES:
        assert np.isfinite(theirs[angle]).all(), angle
        assert np.ptp(ours[angle]) > 1.0 or angle == "trunk_lean", f"{angle} hardly moves: a weak check"
        assert errors[angle] < 0.5, f"{name}: {angle} differs by {errors[angle]:.3f}°"


def path_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=-1).sum())


@pytest.mark.parametrize("name", ["bvh", "glb", "fbx"])
def test_root_walks_the_same_path(walk, imported, name):
    """The root moves through Blender's floor plane (x, y) as through the solution's (x, z): the
    same horizontal distance walked, the same start and end."""
    root = heads(imported[name], name)[:, 0]
    ours = walk[SOLUTION[name]].root_positions
    walked, ours_walked = path_length(root[:, :2]), path_length(ours[:, [0, 2]])
    print(f"{name}: walked {walked:.4f} m in Blender, {ours_walked:.4f} m in the solution")
    assert ours_walked > 3.0  # 4 s of walking: a path worth comparing
    assert walked == pytest.approx(ours_walked, abs=1 * MM)
    np.testing.assert_allclose(root[[0, -1]], to_blender(ours[[0, -1]]), atol=1 * MM)


def contact_steps(posed: np.ndarray, contacts: np.ndarray) -> tuple[np.ndarray, int]:
    """Per foot and consecutive pair of contact frames, how far the ankle moves (m), leaving out the
    pairs where that leg is straight (within 1 mm of its full length) in either frame: there the
    lock lay beyond the leg's reach, and two-bone IK stops the ankle short of it (ground.two_bone_ik);
    the second value counts them."""
    steps, straight = [], 0
    for column, side in enumerate(CONTACT_SIDES):
        hip, knee, ankle = posed[:, HIPS[side]], posed[:, KNEES[side]], posed[:, ANKLES[side]]
        slack = (np.linalg.norm(knee - hip, axis=-1) + np.linalg.norm(ankle - knee, axis=-1)
                 - np.linalg.norm(ankle - hip, axis=-1))
        pairs = contacts[1:, column] & contacts[:-1, column]
        reach = (slack[1:] > 1 * MM) & (slack[:-1] > 1 * MM)
        straight += int((pairs & ~reach).sum())
        steps.append(np.linalg.norm(np.diff(ankle, axis=0), axis=-1)[pairs & reach])
    return np.concatenate(steps), straight


@pytest.mark.parametrize("fmt", ["bvh", "glb"])
def test_planted_feet_stay_put_with_locking(walk, imported, fmt):
    """In Blender, an ankle in contact moves < 1 mm a frame with foot locking on, and much more
    without it (the lifter's noise, which locking removes)."""
    contacts = walk["motion"].contacts
    assert contacts.sum() > 30, "too few contact frames to measure"
    locked, straight = contact_steps(heads(imported[fmt], fmt), contacts)
    free, _ = contact_steps(heads(imported[f"{fmt}_free"], f"{fmt}_free"), contacts)
    print(f"{fmt}: contact ankles move per frame: locked max {locked.max() / MM:.6f} mm, median "
          f"{np.median(locked) / MM:.6f} mm over {len(locked)} pairs ({straight} left out: leg straight); "
          f"free max {free.max() / MM:.2f} mm, median {np.median(free) / MM:.2f} mm")
    assert straight <= 0.05 * (len(locked) + straight)
    assert locked.max() < 1 * MM
    assert np.median(free) > 10 * MM  # ten times the locked bound, at least: locking is what holds them
    assert np.median(free) > 100 * np.median(locked)


# ---- FBX --------------------------------------------------------------------------------------------------

def test_fbx_joint_positions_within_2mm(walk, imported):
    error = joint_error(walk, imported, "fbx")
    worst = np.unravel_index(np.argmax(error), error.shape)
    print(f"fbx: max joint error {error.max() / MM:.4f} mm (frame {worst[0]}, {H36M17[worst[1]]}), "
          f"mean {error.mean() / MM:.4f} mm")
    assert error.max() < 2 * MM


def test_fbx_keeps_a_rate_that_is_not_a_whole_number(walk, imported):
    """29.97 fps: the FBX declares it (Blender's importer makes the scene 30/1.001), and the
    joints are where the track's frames put them, at the FBX's key times (Blender's importer keys
    at seconds × 30, between its whole frames: blender_driver.sample_at)."""
    report = imported["fbx_ntsc"]
    assert report["fbx"]["settings"]["CustomFrameRate"] == pytest.approx(NTSC)
    assert report["fps"] == pytest.approx(NTSC, rel=1e-6)
    error = joint_error(walk, imported, "fbx_ntsc")
    print(f"fbx at {NTSC:.5f} fps: max joint error {error.max() / MM:.4f} mm over {error.shape[0]} frames")
    assert error.max() < 2 * MM


def test_fbx_declares_y_up_metres_and_the_frame_rate(walk, imported):
    """What Unity and Unreal read from the file: Y up, front +Z, X right-handed beside them; one unit
    is a metre (UnitScaleFactor 100 cm), so no object carries a ×100 scale; the track's rate, which
    Blender's FBX importer takes as the scene's; no leaf bones (17 bones, the joints)."""
    report = imported["fbx"]
    settings = report["fbx"]["settings"]
    print(f"fbx: {settings}")
    assert (settings["UpAxis"], settings["UpAxisSign"]) == (1, 1)
    assert (settings["FrontAxis"], settings["FrontAxisSign"]) == (2, 1)
    assert (settings["CoordAxis"], settings["CoordAxisSign"]) == (0, 1)
    assert settings["UnitScaleFactor"] == pytest.approx(100.0)
    assert settings["CustomFrameRate"] == pytest.approx(walk["locked"].fps)
    assert report["fps"] == pytest.approx(walk["locked"].fps)
    for model in report["fbx"]["models"]:
        np.testing.assert_allclose(model["scaling"], 1.0, atol=1e-5, err_msg=model["name"])
    assert sorted(report["bones"]) == sorted(H36M17)
    first, last = report["frame_range"]
    assert last - first + 1 == walk["locked"].frames


# ---- bone names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bvh", "glb", "fbx", "bvh_mixamo", "glb_mixamo"])
def test_rig_names_reach_blenders_bones(walk, imported, name):
    """Every bone is named from the rig and parented as the skeleton is, and the bone a name is on
    poses where that joint is (so a name is on the right joint, not just present)."""
    report, names = imported[name], joint_names(RIG.get(name, "posegraph"))
    assert sorted(report["bones"]) == sorted(names)
    parents = dict(zip(report["bones"], report["parents"]))
    assert {n: parents[n] for n in names} == {n: names[p] if p >= 0 else None for n, p in zip(names, H36M_PARENTS)}
    assert joint_error(walk, imported, name).max() < 2 * MM


# ---- failures ---------------------------------------------------------------------------------------------

def test_find_blender_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("POSEGRAPH_BLENDER", str(tmp_path / "no-blender-here"))
    with pytest.raises(BlenderMissing) as raised:
        find_blender()
    message = str(raised.value)
    print(message)
    assert isinstance(raised.value, UsageError) and "\n" not in message
    assert str(tmp_path / "no-blender-here") in message and "apt-get install blender" in message
    monkeypatch.delenv("POSEGRAPH_BLENDER")
    monkeypatch.setenv("PATH", str(tmp_path))  # no blender on it
    with pytest.raises(BlenderMissing, match="no blender on PATH.*POSEGRAPH_BLENDER"):
        find_blender()
    fake = tmp_path / "my-blender"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("POSEGRAPH_BLENDER", str(fake))
    assert find_blender() == str(fake)


def test_glb_to_fbx_refuses_a_file_that_is_not_glb(walk, tmp_path):
    """Refused before Blender starts; no FBX is written, an old one is left as it was, and nothing
    is left beside it."""
    bvh = tmp_path / "walk.bvh"
    write_bvh(walk["locked"], bvh)
    with pytest.raises(UsageError, match="is not a GLB file"):
        glb_to_fbx(bvh, tmp_path / "walk.fbx")
    assert not (tmp_path / "walk.fbx").exists()
    (tmp_path / "old.fbx").write_bytes(b"an older export")
    with pytest.raises(UsageError):
        glb_to_fbx(bvh, tmp_path / "old.fbx")
    assert (tmp_path / "old.fbx").read_bytes() == b"an older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.fbx", "walk.bvh"]


def test_blenders_failure_is_one_usage_error(blender, walk, tmp_path, capfd):
    """A GLB that Blender's importer rejects (cut short): UsageError quoting Blender's reason, no
    FBX, no temporary file, and nothing of Blender's output on the terminal."""
    glb = tmp_path / "walk.glb"
    write_glb(walk["locked"], glb)
    glb.write_bytes(glb.read_bytes()[:-1000])
    with pytest.raises(UsageError) as raised:
        glb_to_fbx(glb, tmp_path / "walk.fbx")
    message = str(raised.value)
    print(message)
    assert "\n" not in message and "Bad GLB" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.glb"]
    out, err = capfd.readouterr()
    assert "Blender" not in out.replace(message, "") and err == ""


def test_glb_to_fbx_is_quiet_and_replaces_atomically(blender, walk, tmp_path, capfd):
    glb, fbx = tmp_path / "walk.glb", tmp_path / "walk.fbx"
    write_glb(walk["locked"], glb)
    fbx.write_bytes(b"an older export")
    assert glb_to_fbx(glb, fbx) == fbx
    assert fbx.read_bytes().startswith(b"Kaydara FBX Binary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.fbx", "walk.glb"]
    assert capfd.readouterr() == ("", "")
