"""The floor under a track, the feet's contacts with it, and foot locking.

For a static camera the floor is one plane in camera space, and a walking person's feet touch it
again and again: the plane is fitted to the LOWER ankle of each frame (the one on the floor, or
nearer it) over the whole track, robustly (iteratively reweighted least squares with Tukey's
biweight, so frames where both feet are off the ground, or the lifter erred, weigh nothing).

* **Up** is the plane's normal, turned to point away from the floor. A person who stands still,
  or walks along one straight line, does not fix a plane: their ankles fill a spot or a line.
  Then up is the body's own up (the median direction pelvis → thorax over the track, when it is
  within 45° of the camera's up: a person standing or walking), made perpendicular to the line
  where there is one, which also takes out the forward lean of a walk; failing that, the camera's
  up (−y, a camera held level). Measured on the synthetic walk under a camera tilted 12°: along
  2-3 s of it (ankles on a line), the camera's up left the floor 11.5-11.7° off and contacts at
  F1 0.87-0.95; the body's, 0.1-0.4° off and F1 0.93-0.96. The spread that counts as a plane:
  MIN_SPREAD across both directions of it.
* **Floor height**: the plane through the ankles at contact, lowered by ANKLE_HEIGHT, since the
  H36M "foot" joint is the ankle, which stands above the sole.
* **Contacts**, per frame and foot: the ankle within CONTACT_HEIGHT of its standing height and
  moving slower than CONTACT_SPEED across the floor; runs shorter than MIN_CONTACT_FRAMES are
  dropped (a foot passing low through its swing is no step). The thresholds come from
  bench/motion.py (docs/motion.md): on a synthetic walk with lifting noise they gave the best
  agreement with the true contacts.
* **Foot locking** (optional, in the exports): while a foot is in contact it stays at the
  contact's median position, and the leg follows by two-bone inverse
  kinematics (hip fixed, knee in the leg's own plane, thigh and shin lengths kept); over
  BLEND_FRAMES frames either side the target eases between the lock and the foot's own path, so
  nothing jumps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANKLES = {"left": 6, "right": 3}  # Human3.6M indices of the ankles ("left_foot", "right_foot")
HIPS = {"left": 4, "right": 1}
KNEES = {"left": 5, "right": 2}
CAMERA_UP = np.array([0.0, -1.0, 0.0])  # camera axes: y points down
ANKLE_HEIGHT = 0.07  # m: ankle joint above the sole (≈ 0.039 × stature, 1.75 m; Winter's tables)
MIN_SPREAD = 0.3  # m: ankles spread at least this far across two directions fix a plane
CONTACT_HEIGHT = 0.05  # m above the ankle's standing height (bench/motion.py)
CONTACT_SPEED = 1.2  # m/s across the floor (bench/motion.py)
MIN_CONTACT_FRAMES = 3
BLEND_FRAMES = 4


@dataclass(frozen=True)
class Ground:
    """The floor in camera space: ``up`` (3,) unit, pointing away from the floor; ``level`` the
    value of up·p for a point p on the floor."""

    up: np.ndarray
    level: float
    fitted: str  # "plane" (ankles spread over an area), "line", "body" or "camera" (module docstring)

    def height(self, points: np.ndarray) -> np.ndarray:
        """Height above the floor (m) of (…, 3) camera-space points."""
        return np.asarray(points) @ self.up - self.level


def _tukey_plane(points: np.ndarray, normal: np.ndarray, iterations: int = 10) -> tuple[np.ndarray, float]:
    """Robust plane n·p = c through points, starting from ``normal``."""
    weights = np.ones(len(points))
    c = float(np.median(points @ normal))
    for _ in range(iterations):
        centre = (weights[:, None] * points).sum(0) / weights.sum()
        centred = points - centre
        _, _, vt = np.linalg.svd(centred * np.sqrt(weights)[:, None], full_matrices=False)
        normal = vt[-1] if vt[-1] @ normal >= 0 else -vt[-1]
        c = float(centre @ normal)
        residual = points @ normal - c
        scale = max(1.4826 * float(np.median(np.abs(residual))), 0.01)
        u = residual / (4.685 * scale)
        weights = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0) + 1e-9
    return normal, c


def body_prior(trunk: np.ndarray | None) -> np.ndarray:
    """The up that a plane-less track falls back on (module docstring): the body's, else the camera's."""
    if trunk is None or not len(trunk):
        return CAMERA_UP
    unit = trunk / np.maximum(np.linalg.norm(trunk, axis=-1, keepdims=True), 1e-9)
    upright = unit[unit @ CAMERA_UP > np.cos(np.radians(45))]
    if not len(upright):
        return CAMERA_UP
    median = np.median(upright, axis=0)
    return median / np.linalg.norm(median)


def fit_ground(ankles: np.ndarray, trunk: np.ndarray | None = None) -> Ground:
    """(T, 2, 3) camera-space ankles (left, right) of a track → its Ground; ``trunk`` (T, 3), the
    pelvis → thorax vectors, gives the body's up for a track whose ankles do not fix a plane."""
    ankles = np.asarray(ankles, np.float64)
    prior = body_prior(None if trunk is None else np.asarray(trunk, np.float64))
    up = CAMERA_UP
    for _ in range(2):  # which foot is lower depends on up: pick, fit, pick again
        lower = ankles[np.arange(len(ankles)), np.argmin(ankles @ up, axis=1)]
        spread = np.linalg.svd(lower - np.median(lower, axis=0), compute_uv=False) / np.sqrt(max(len(lower), 1))
        axes = np.linalg.svd(lower - np.median(lower, axis=0), full_matrices=False)[2]
        if len(lower) >= 3 and spread.size >= 2 and 2 * spread[1] >= MIN_SPREAD:
            normal, c = _tukey_plane(lower, up)
            up, fitted = normal, "plane"
        elif len(lower) >= 2 and spread.size >= 1 and 2 * spread[0] >= MIN_SPREAD:
            line = axes[0]
            up = prior - (prior @ line) * line
            up, fitted = up / np.linalg.norm(up), "line"
        else:
            up, fitted = prior, "body" if prior is not CAMERA_UP else "camera"
    standing = _standing_level(lower @ up)
    return Ground(up, standing - ANKLE_HEIGHT, fitted)


def _standing_level(heights: np.ndarray) -> float:
    """The ankles' height when on the floor: the low quartile of the lower ankle's height, which
    the swing of a walk (a foot in the air half the time at most) does not reach."""
    return float(np.percentile(heights, 25))


def detect_contacts(ankles: np.ndarray, ground: Ground, fps: float, *, max_height: float = CONTACT_HEIGHT,
                    max_speed: float = CONTACT_SPEED) -> np.ndarray:
    """(T, 2, 3) camera-space ankles → (T, 2) bool contacts (left, right)."""
    ankles = np.asarray(ankles, np.float64)
    height = ground.height(ankles) - ANKLE_HEIGHT  # 0 for an ankle standing on the floor
    along = ankles - (ankles @ ground.up)[..., None] * ground.up  # positions in the floor's plane
    speed = np.zeros(height.shape)
    if len(ankles) > 1:
        speed = np.linalg.norm(np.gradient(along, axis=0), axis=-1) * fps
    contact = (height < max_height) & (speed < max_speed)
    for foot in range(contact.shape[1]):
        contact[:, foot] = drop_short_runs(contact[:, foot], MIN_CONTACT_FRAMES)
    return contact


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    padded = np.concatenate([[False], np.asarray(flags, bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def drop_short_runs(flags: np.ndarray, shortest: int) -> np.ndarray:
    out = np.asarray(flags, bool).copy()
    for start, stop in runs(out):
        if stop - start < shortest:
            out[start:stop] = False
    return out


def lock_targets(ankle: np.ndarray, contact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) one ankle's path and (T,) its contacts → (T, 3) where it should be and (T,) whether
    that differs from its path (during a contact and BLEND_FRAMES either side)."""
    target, moved = ankle.copy(), np.zeros(len(ankle), bool)
    for start, stop in runs(contact):
        lock = np.median(ankle[start:stop], axis=0)
        target[start:stop], moved[start:stop] = lock, True
        for k in range(1, BLEND_FRAMES + 1):
            share = 1 - k / (BLEND_FRAMES + 1)  # how much of the lock is left k frames away
            for t in (start - k, stop - 1 + k):
                if 0 <= t < len(ankle) and not contact[t]:
                    target[t] = share * lock + (1 - share) * target[t]
                    moved[t] = True
    return target, moved


def two_bone_ik(hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray,
                target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (knee, ankle) for one leg reaching ``target`` from a fixed ``hip``, with the thigh and
    shin lengths of (hip, knee, ankle) kept and the knee bending in the plane it bent in before.
    An unreachable target gets the nearest reachable point on the way to it."""
    thigh, shin = np.linalg.norm(knee - hip), np.linalg.norm(ankle - knee)
    reach = target - hip
    distance = float(np.linalg.norm(reach))
    if distance < 1e-9 or thigh < 1e-9 or shin < 1e-9:
        return knee, ankle
    direction = reach / distance
    distance = float(np.clip(distance, abs(thigh - shin) + 1e-6, thigh + shin - 1e-6))
    pole = (knee - hip) - ((knee - hip) @ direction) * direction
    if np.linalg.norm(pole) < 1e-9:  # a straight leg: bend the knee forward of the line, any way
        pole = np.cross(direction, np.eye(3)[np.argmin(np.abs(direction))])
    pole /= np.linalg.norm(pole)
    along = (thigh**2 - shin**2 + distance**2) / (2 * distance)
    new_knee = hip + along * direction + np.sqrt(max(thigh**2 - along**2, 0.0)) * pole
    return new_knee, hip + distance * direction


def lock_feet(positions: np.ndarray, contacts: np.ndarray) -> np.ndarray:
    """(T, 17, 3) joint positions (bone lengths fixed, e.g. a solved skeleton's) and (T, 2)
    contacts (left, right) → the positions with each foot held during its contacts."""
    out = np.array(positions, np.float64, copy=True)
    for foot, side in enumerate(("left", "right")):
        hip, knee, ankle = HIPS[side], KNEES[side], ANKLES[side]
        target, moved = lock_targets(out[:, ankle], contacts[:, foot])
        for t in np.flatnonzero(moved):
            out[t, knee], out[t, ankle] = two_bone_ik(out[t, hip], out[t, knee], out[t, ankle], target[t])
    return out


def foot_skate(positions: np.ndarray, contacts: np.ndarray, up: np.ndarray) -> float:
    """Mean distance (m) a foot moves across the floor from one frame to the next while in contact
    in both: the usual foot-skate measure (lower is better, 0 for a planted foot)."""
    steps = []
    for foot, side in enumerate(("left", "right")):
        ankle = positions[:, ANKLES[side]]
        move = np.diff(ankle, axis=0)
        move = move - (move @ up)[:, None] * up
        both = contacts[1:, foot] & contacts[:-1, foot]
        steps.extend(np.linalg.norm(move[both], axis=1))
    return float(np.mean(steps)) if steps else 0.0
