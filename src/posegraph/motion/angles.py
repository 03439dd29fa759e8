"""Joint angles from Human3.6M-17 3D keypoints, in degrees: the numbers a coach or a physio reads.

All are angles between two bone directions, so they do not depend on where the camera stands,
except trunk lean, which needs "up": posegraph's 3D is in camera axes (y down), so up is −y, which
holds for a camera held level (a tilted camera tilts the lean by the same angle).

| angle | 0° means | 90° means |
|---|---|---|
| knee / elbow flexion | straight limb | a right angle at the joint |
| hip flexion | thigh along the trunk (standing) | thigh at a right angle to the trunk (sitting) |
| shoulder elevation | upper arm along the trunk (arm down) | arm horizontal; 180° overhead |
| trunk lean | pelvis → thorax vertical | trunk horizontal |
"""

from __future__ import annotations

import numpy as np

from ..keypoints import H36M17
from ..media import charts

J = {name: i for i, name in enumerate(H36M17)}
UP = np.array([0.0, -1.0, 0.0])  # camera axes: y points down

# The angles, in the order of the CSV's and the results store's columns.
ANGLES = (
    "left_knee", "right_knee", "left_elbow", "right_elbow", "left_hip", "right_hip",
    "left_shoulder", "right_shoulder", "trunk_lean",
)  # fmt: skip


def stored_angle(value) -> float | None:
    """An angle as the store and the CSV keep it: degrees to 3 decimals, NaN (no bone) as None."""
    value = float(value)
    return None if value != value else round(value, 3)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 1e-9, n, np.nan)


def _between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = np.clip((_unit(a) * _unit(b)).sum(-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def joint_angles(keypoints3d: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 17, 3) or (17, 3) keypoints → {angle name: (T,) or () degrees}; NaN where a bone has no
    length."""
    k = np.asarray(keypoints3d, np.float64)

    def bone(a: str, b: str) -> np.ndarray:
        return k[..., J[b], :] - k[..., J[a], :]

    trunk_down = bone("thorax", "root")
    out = {}
    for side in ("left", "right"):
        # Flexion: 0 when the distal bone continues the proximal one.
        out[f"{side}_knee"] = _between(bone(f"{side}_hip", f"{side}_knee"), bone(f"{side}_knee", f"{side}_foot"))
        out[f"{side}_elbow"] = _between(bone(f"{side}_shoulder", f"{side}_elbow"),
                                        bone(f"{side}_elbow", f"{side}_wrist"))
        out[f"{side}_hip"] = _between(trunk_down, bone(f"{side}_hip", f"{side}_knee"))
        out[f"{side}_shoulder"] = _between(trunk_down, bone(f"{side}_shoulder", f"{side}_elbow"))
    out["trunk_lean"] = _between(bone("root", "thorax"), np.broadcast_to(UP, trunk_down.shape))
    return {name: out[name] for name in ANGLES}


def plot_track_angles(frame_index: list[int], angles: dict[str, np.ndarray], path, *, title: str = "",
                      seen: set[int] | None = None, random_weights: bool = False):
    """Angles over time for one track; frames in the track's span where it was not seen are shaded."""

    frames = np.asarray(frame_index)
    groups = (("knee and elbow flexion", ("left_knee", "right_knee", "left_elbow", "right_elbow")),
              ("hip flexion and shoulder elevation", ("left_hip", "right_hip", "left_shoulder", "right_shoulder")),
              ("trunk lean from vertical", ("trunk_lean",)))
    seen = set(frames.tolist()) if seen is None else seen
    missing = [f for f in range(int(frames.min()), int(frames.max()) + 1) if f not in seen] if len(frames) else []
    img = charts.canvas(900, 750)
    for row, (label, names) in enumerate(groups):
        series = [charts.Series(name.replace("_", " "), frames, np.asarray(angles[name], np.float64),
                                dashed=name.startswith("right")) for name in names]
        last = row == len(groups) - 1
        charts.line_panel(img, (0, 40 + row * 235, 900, 235), series, title=label, ylabel="degrees",
                          xlabel=("frame" + ("  (grey: not seen)" if missing else "")) if last else "",
                          shaded=missing, integer_x=True)  # frames are whole numbers
    charts.heading(img, title, random_weights)
    return charts.save_png(img, path)