"""BVH (Biovision Hierarchy) export of a track's 3D keypoints, for Blender and other animation tools.

posegraph's 3D keypoints are Human3.6M-17 (``posegraph.keypoints``), in metres, root-relative
(pelvis at the origin), in camera axes: x right, y down, z away from the camera. BVH wants a
skeleton of fixed bone lengths posed by per-joint rotations, so a track is *solved* into one:

* **Axes.** BVH (and Blender's importer, by default) is Y up, right-handed. Camera axes become
  BVH axes by a 180° rotation about X: (x, y, z) → (x, −y, −z). A proper rotation, not a
  mirror, so left stays left. A person facing the camera then faces +Z, their left is +X.
* **Rest pose** (what OFFSETs describe): a T-pose facing +Z, in BVH axes: legs straight down
  (−Y), spine, neck and head straight up (+Y), arms out sideways, the left arm along +X, the right
  along −X. Each bone's length is its MEDIAN over the track: one fixed skeleton, robust to the
  per-frame length jitter of lifted 3D.
* **Root.** ``solve_positions`` takes joints already placed on a floor (posegraph.motion.world:
  the root travels with the person, or stays in place) and the root follows the pelvis;
  ``solve_track`` takes root-relative 3D alone and keeps the motion *in place*: the pelvis never
  leaves x = z = 0, lifted by the median height of the pelvis above the lower ankle of each frame,
  so that the ankles stand near y = 0 rather than the pelvis sitting on the floor.
* **Rotations.** Per frame and joint, a LOCAL rotation (relative to the parent's rotated frame):
  a joint with one child gets the shortest-arc rotation taking its rest bone direction onto the
  observed one (exact); the pelvis (right hip, left hip, spine) and the thorax (neck, both
  shoulders) get the best-fit (Kabsch/SVD) rotation over their children's directions, since one
  rotation cannot in general match several bones whose angles differ from the rest pose's; the
  residual there is the only direction error of the export. Bone lengths are the medians, so
  joint positions differ from the input where a frame's lengths do.
* **Channels.** The root has ``Xposition Yposition Zposition Zrotation Xrotation Yrotation``,
  every other joint with children ``Zrotation Xrotation Yrotation`` (BVH composes channels in
  listed order, so R = Rz·Rx·Ry, intrinsic ZXY, the usual mocap order). End joints (ankles,
  wrists, head) are JOINTs, so that they keep their names, with ``CHANNELS 0``: a rotation there
  would only turn the End Site, which carries no keypoint. Their End Site, which the format needs
  to close a chain, continues the last bone by a fixed 5 cm: it only gives importers a visible tail.
* **Units.** Centimetres by default (``scale=100``), as most BVH files are.

Into Blender: File → Import → Motion Capture (.bvh), with Forward −Z and Up Y (the importer's
defaults: BVH's Y-up axes, so the person stands upright and faces Blender's front view), and
Scale 0.01 to get metres from the default centimetres (or write with ``scale=1.0`` and import at 1).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..keypoints import H36M17, H36M_PARENTS

# Camera axes → BVH axes: 180° about X (y down → Y up, z away → Z towards the camera).
CAMERA_TO_BVH = np.diag([1.0, -1.0, -1.0])
_X, _Y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
# Rest (T-pose) direction of the bone from each joint's parent to the joint, in BVH axes, by
# Human3.6M index (not by name: the order is the format, names are only labels).
REST_DIRECTIONS = np.array([
    (0, 0, 0),                                # 0 pelvis (root: no bone)
    -_X, -_Y, -_Y,                            # 1-3 right hip, knee, ankle
    _X, -_Y, -_Y,                             # 4-6 left hip, knee, ankle
    _Y, _Y, _Y, _Y,                           # 7-10 spine, thorax, neck, head
    _X, _X, _X,                               # 11-13 left shoulder, elbow, wrist
    -_X, -_X, -_X,                            # 14-16 right shoulder, elbow, wrist
])  # fmt: skip
ANKLES = (3, 6)
END_SITE_LENGTH = 0.05  # metres: the End Sites' length (a visible tail only, no data)
CHANNEL_ORDER = "ZXY"  # rotation channels, in file order: R = Rz·Rx·Ry
_DECIMALS = 6  # cm and degrees: ~1e-8 m per value, far inside the 1 mm round-trip budget
_CHILDREN = tuple(tuple(c for c, p in enumerate(H36M_PARENTS) if p == j) for j in range(len(H36M17)))


class TrackTooShort(ValueError):
    """A track BVH export cannot use: fewer than 2 frames, or a frame without finite 3D keypoints."""


@dataclass(frozen=True)
class Solved:
    """A track as a BVH skeleton and motion, in BVH axes (Y up) and metres."""

    fps: float
    offsets: np.ndarray  # (J, 3): each joint's rest offset from its parent (root: zeros)
    end_sites: dict[int, np.ndarray]  # end joint → its End Site's offset (3,)
    root_positions: np.ndarray  # (T, 3): the pelvis, per frame
    rotations: np.ndarray  # (T, J, 3, 3): LOCAL rotation of each joint (identity at end joints)
    euler_zxy: np.ndarray  # (T, J, 3): the same in degrees, (z, x, y) with R = Rz·Rx·Ry
    positions: np.ndarray  # (T, J, 3): joint positions by forward kinematics of this solution
    names: tuple[str, ...] = H36M17
    parents: tuple[int, ...] = H36M_PARENTS

    @property
    def frames(self) -> int:
        return len(self.root_positions)


def _unit(v: np.ndarray) -> np.ndarray:
    """``v`` normalised; a zero-length vector (coincident keypoints) stays zero, i.e. no evidence."""
    n = np.linalg.norm(v)
    return v / n if n > 1e-9 else np.zeros(3)


def _shortest_arc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit ``a`` onto unit ``b`` (identity if ``b`` is zero)."""
    k, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-8:  # opposite: any half-turn about an axis perpendicular to a
        axis = _unit(np.cross(a, np.eye(3)[np.argmin(np.abs(a))]))
        return 2 * np.outer(axis, axis) - np.eye(3)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + kx + kx @ kx / (1 + c)  # Rodrigues with sin, cos taken from |k| and c


def _kabsch(rest: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The rotation R minimising Σ|R·rest_i − seen_i|² (rows are unit directions)."""
    u, _, vt = np.linalg.svd(rest.T @ seen)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0  # a rotation, never a reflection
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def _euler_zxy(r: np.ndarray) -> np.ndarray:
    """Degrees (z, x, y) with r = Rz(z)·Rx(x)·Ry(y). Row 3 of that product is
    (−cos x·sin y, sin x, cos x·cos y), giving x and y; the middle column starts
    (−sin z·cos x, cos z·cos x), giving z."""
    x = np.arctan2(r[2, 1], np.hypot(r[2, 0], r[2, 2]))
    if np.hypot(r[2, 0], r[2, 2]) > 1e-9:
        z, y = np.arctan2(-r[0, 1], r[1, 1]), np.arctan2(-r[2, 0], r[2, 2])
    else:  # gimbal lock (x = ±90°): z and y turn about the same axis; put it all in z
        z, y = np.arctan2(r[1, 0], r[0, 0]), 0.0
    return np.degrees([z, x, y])


def check_track(keypoints3d, track) -> np.ndarray:
    where = f"track {track}: " if track is not None else ""
    if not isinstance(keypoints3d, np.ndarray):  # a list of frames, None where a frame has no 3D
        keypoints3d = [np.full((17, 3), np.nan) if f is None else f for f in keypoints3d]
    kp = np.asarray(keypoints3d, dtype=float)
    if kp.ndim != 3 or kp.shape[1:] != (len(H36M17), 3):
        raise ValueError(f"{where}keypoints3d must be (frames, 17, 3), got {kp.shape}")
    if len(kp) < 2:
        raise TrackTooShort(f"{where}{len(kp)} frame(s); BVH export needs at least 2")
    bad = ~np.isfinite(kp).all(axis=2)
    if bad.any():
        t = int(np.argmax(bad.any(axis=1)))
        joints = ", ".join(H36M17[j] for j in np.flatnonzero(bad[t]))
        raise TrackTooShort(f"{where}frame {t} of {len(kp)} has missing or non-finite 3D keypoints "
                            f"({joints}); BVH export needs every frame")
    return kp


def forward_kinematics(offsets: np.ndarray, root_positions: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """(T, J, 3) joint positions: each joint at its parent plus the parent's global rotation times
    its offset (joints are in parent-before-child order, as H36M17 is)."""
    frames, joints = rotations.shape[:2]
    glob = np.empty_like(rotations)
    pos = np.empty((frames, joints, 3))
    for j, p in enumerate(H36M_PARENTS):
        if p < 0:
            glob[:, j], pos[:, j] = rotations[:, j], root_positions
        else:
            glob[:, j] = glob[:, p] @ rotations[:, j]
            pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
    return pos


def _solve_rotations(pts: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]:
    """(T, J, 3) joint positions in BVH axes → offsets (median bone lengths along the rest
    directions), End Sites and (T, J, 3, 3) local rotations (see the module docstring)."""
    names, parents = H36M17, H36M_PARENTS
    frames, joints = len(pts), len(names)
    offsets = np.zeros((joints, 3))
    for j in range(1, joints):
        length = np.median(np.linalg.norm(pts[:, j] - pts[:, parents[j]], axis=1))
        offsets[j] = length * REST_DIRECTIONS[j]
    rest = np.array([_unit(o) for o in offsets])
    end_sites = {j: END_SITE_LENGTH * rest[j] for j in range(joints) if not _CHILDREN[j]}

    rotations = np.tile(np.eye(3), (frames, joints, 1, 1))
    for t in range(frames):
        glob = [np.eye(3)] * joints
        for j in range(joints):  # parents come first, so glob[parent] is ready
            parent_glob = glob[parents[j]] if parents[j] >= 0 else np.eye(3)
            kids = _CHILDREN[j]
            # Observed child directions, seen from the parent's rotated frame.
            seen = np.array([parent_glob.T @ _unit(pts[t, c] - pts[t, j]) for c in kids]).reshape(-1, 3)
            if len(kids) == 1:
                rotations[t, j] = _shortest_arc(rest[kids[0]], seen[0])
            elif len(kids) > 1:
                rotations[t, j] = _kabsch(rest[list(kids)], seen)
            glob[j] = parent_glob @ rotations[t, j]
    return offsets, end_sites, rotations


def _solved(fps, offsets, end_sites, root_positions, rotations) -> Solved:
    euler = np.array([[_euler_zxy(r) for r in frame] for frame in rotations])
    positions = forward_kinematics(offsets, root_positions, rotations)
    return Solved(float(fps), offsets, end_sites, root_positions, rotations, euler, positions)


def _check_fps(fps: float) -> None:
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def solve_track(keypoints3d: np.ndarray, fps: float, *, track: object = None) -> Solved:
    """Solve a (T, 17, 3) track of root-relative posegraph 3D keypoints into a BVH skeleton and
    motion in place (see the module docstring). ``track`` only names the track in error messages."""
    kp = check_track(keypoints3d, track)
    _check_fps(fps)
    pts = kp @ CAMERA_TO_BVH.T
    offsets, end_sites, rotations = _solve_rotations(pts)
    # In place (root-relative input), lifted by the median height of the pelvis above the lower
    # ankle, measured on this solution's own skeleton (median lengths, fitted hips), so that the
    # exported ankles stand near y = 0.
    frames = len(pts)
    at_origin = forward_kinematics(offsets, np.zeros((frames, 3)), rotations)
    height = -np.median(at_origin[:, list(ANKLES), 1].min(axis=1))
    return _solved(fps, offsets, end_sites, np.tile([0.0, height, 0.0], (frames, 1)), rotations)


def solve_positions(positions: np.ndarray, fps: float, *, track: object = None) -> Solved:
    """Solve (T, 17, 3) joint positions already in BVH axes (Y up, metres, the floor at y = 0 when
    posegraph.motion.world placed them), root motion included: the root follows the pelvis."""
    pts = check_track(positions, track)
    _check_fps(fps)
    offsets, end_sites, rotations = _solve_rotations(pts)
    return _solved(fps, offsets, end_sites, pts[:, 0].copy(), rotations)


def _bvh_text(solved: Solved, scale: float) -> str:
    # Rounded first and + 0.0, so that no value prints as "-0.000000".
    fmt = lambda x: f"{round(x, _DECIMALS) + 0.0:.{_DECIMALS}f}"  # noqa: E731
    vec = lambda v: " ".join(fmt(x * scale) for x in v)  # noqa: E731
    lines, order = ["HIERARCHY"], []

    def joint(j: int, depth: int) -> None:
        pad = "  " * depth
        kids = [c for c, p in enumerate(solved.parents) if p == j]
        lines.append(f"{pad}{'ROOT' if j == 0 else 'JOINT'} {solved.names[j]}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {vec(solved.offsets[j])}")
        rot = " ".join(f"{a}rotation" for a in CHANNEL_ORDER)
        if j == 0:
            lines.append(f"{pad}  CHANNELS 6 Xposition Yposition Zposition {rot}")
        elif kids:
            lines.append(f"{pad}  CHANNELS 3 {rot}")
        else:
            lines.append(f"{pad}  CHANNELS 0")
        if kids:
            order.append(j)  # MOTION columns follow the hierarchy as written
        for c in kids:
            joint(c, depth + 1)
        if not kids:
            end = vec(solved.end_sites[j])
            lines.extend([f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {end}", pad + "  }"])
        lines.append(pad + "}")

    joint(0, 0)
    lines += ["MOTION", f"Frames: {solved.frames}", f"Frame Time: {1.0 / solved.fps:.9f}"]
    for t in range(solved.frames):
        angles = [" ".join(fmt(a) for a in solved.euler_zxy[t, j]) for j in order]
        lines.append(" ".join([vec(solved.root_positions[t]), *angles]))
    return "\n".join(lines) + "\n"


def write_bvh(solved: Solved, path_or_file: str | os.PathLike | IO[str], *, scale: float = 100.0) -> None:
    """Write ``solved`` as BVH; lengths × ``scale`` (100: centimetres; Blender's importer has a
    matching Scale option, 0.01). The text is built first and a path is written through a temporary
    file renamed into place, so an error never leaves half a file."""
    text = _bvh_text(solved, scale)
    if hasattr(path_or_file, "write"):  # an open text file: one write, nothing to rename
        path_or_file.write(text)
        return
    path = Path(path_or_file)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_track_bvh(keypoints3d: np.ndarray, fps: float, path: str | os.PathLike, *,
                     scale: float = 100.0, track: object = None) -> Solved:
    """Solve a track and write it to ``path`` as BVH; returns the solution."""
    solved = solve_track(keypoints3d, fps, track=track)
    write_bvh(solved, path, scale=scale)
    return solved
