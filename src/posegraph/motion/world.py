"""A track in the world: the person moving through space over the floor, as the exports carry it.

lift3d gives each frame root-relative 3D (``keypoints3d``) and the pelvis in camera space
(``root3d``, posegraph.motion.root). Here a track's frames become joint positions in a floor
frame, the WORLD:

* **Axes**: Y up (the floor's normal, posegraph.motion.ground), X the camera's x laid flat on the
  floor, Z = X × Y (towards the camera for a level one). For a level camera this is exactly the
  BVH axes of the in-place export (camera axes turned 180° about x), so nothing changes for a
  person who stands still; for a tilted camera the floor comes out flat.
* **Origin**: on the floor, below the pelvis in the track's first frame.
* **Units**: metres.

Then :func:`solve` turns the world positions into a skeleton of fixed bone lengths and per-joint
rotations (posegraph.motion.bvh) with root motion, or in place, with or without foot locking. The
BVH, glTF and FBX exports and the web UI's 3D view all start from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ground as floor
from .bvh import Solved, check_track, solve_positions
from .root import fit_root, track_path
from .smoothing import SmoothingSettings


@dataclass(frozen=True)
class TrackMotion:
    fps: float
    frame_index: np.ndarray  # (T,)
    world: np.ndarray  # (T, 17, 3) joint positions in the world frame, metres
    to_world: np.ndarray  # (3, 3) camera axes → world axes
    origin: np.ndarray  # (3,) the world's origin in camera space
    ground: floor.Ground  # the floor, in camera space
    contacts: np.ndarray  # (T, 2) bool: left, right ankle on the floor

    def root_path(self) -> np.ndarray:
        return self.world[:, 0]


def world_axes(up: np.ndarray) -> np.ndarray:
    """Rows X, Y, Z of the world in camera axes (module docstring)."""
    x = np.array([1.0, 0.0, 0.0]) - up[0] * up
    x /= np.linalg.norm(x)
    return np.stack([x, up, np.cross(x, up)])


def track_motion(keypoints3d, root3d, fps: float, frame_index=None, *, track: object = None) -> TrackMotion:
    """(T, 17, 3) root-relative 3D and (T, 3) camera-space roots of one track → its TrackMotion."""
    rel = check_track(keypoints3d, track)
    root = np.asarray(root3d, np.float64)
    if root.shape != (len(rel), 3) or not np.isfinite(root).all():
        where = f"track {track}: " if track is not None else ""
        raise NoRootPath(f"{where}the root path must be {len(rel)} finite positions, got shape {root.shape}")
    camera = rel + root[:, None]
    ankles = camera[:, [floor.ANKLES["left"], floor.ANKLES["right"]]]
    ground = floor.fit_ground(ankles, rel[:, 8] - rel[:, 0])  # thorax − pelvis: the body's up
    axes = world_axes(ground.up)
    origin = root[0] - ground.height(root[0]) * ground.up
    world = (camera - origin) @ axes.T
    contacts = floor.detect_contacts(ankles, ground, fps)
    index = np.arange(len(rel)) if frame_index is None else np.asarray(frame_index)
    return TrackMotion(float(fps), index, world, axes, origin, ground, contacts)


class NoRootPath(ValueError):
    """A track whose root path cannot place it on a floor."""


def track_root(keypoints2d, keypoints3d, width: int, height: int, focal_px: float,
               frame_index=None) -> np.ndarray:
    """(T, 3) roots fitted now, as lift3d would have placed them (its default smoothing): stores
    written before it did keep only 2D and 3D."""
    roots = fit_root(np.asarray(keypoints2d, np.float64), np.asarray(keypoints3d, np.float64), focal_px,
                     (width / 2, height / 2))
    return track_path(roots, np.arange(len(roots)) if frame_index is None else frame_index, SmoothingSettings())


def solve(motion: TrackMotion, *, root_motion: bool = True, lock_feet: bool = False,
          track: object = None) -> Solved:
    """The track as a skeleton and its motion (posegraph.motion.bvh.Solved, world axes).
    ``root_motion=False``: in place (the pelvis over the origin, its height kept). ``lock_feet``:
    each foot held during its contacts (posegraph.motion.ground.lock_feet), solved again so that
    the bone lengths stay the skeleton's."""
    solved = solve_positions(motion.world, motion.fps, track=track)
    positions = solved.positions
    if lock_feet:
        # Solved first: the skeleton's fixed bone lengths are what the leg IK keeps. Locked on the
        # floor, with the root moving: in place, the feet then slide with the floor under them.
        positions = floor.lock_feet(positions, motion.contacts)
    if not root_motion:
        positions = positions - positions[:, :1] * np.array([1.0, 0.0, 1.0])
    if lock_feet or not root_motion:
        solved = solve_positions(positions, motion.fps, track=track)
    return solved
