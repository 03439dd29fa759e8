"""Synthetic 3D tracks of squats, push-ups and lunges with known repetitions, for form_judge's tests.

Each repetition moves a driving parameter from rest to its peak and back (down in ``down_s``, up in
``up_s``), each half a minimum-jerk movement (Flash & Hogan 1985: how people move smoothly from
one posture to another), with pauses at rest between reps. The skeleton (Human3.6M-17, metres) is posed from that
parameter; the truth is each rep's start, bottom and end frame. Points are in posegraph's camera
axes (x right, y down, z away from the camera), the person facing the camera, 3 m away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHIN, THIGH, TRUNK = 0.43, 0.45, 0.50
UPPER_ARM, FOREARM = 0.29, 0.26


@dataclass
class Exercise:
    keypoints3d: np.ndarray  # (T, 17, 3)
    reps: list[tuple[float, float, float]]  # (start, bottom, end) frames, exact
    fps: float


def drive(reps: list[tuple[float, float, float]], pauses: list[float], fps: float,
          rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A 0 → depth → 0 parameter per frame, reps given as (down_s, up_s, depth 0-1), each after a
    pause (seconds); returns the parameter and each rep's (start, bottom, end) in frames."""
    t_total = sum(pauses) + sum(d + u for d, u, _ in reps) + pauses[-1]
    t = np.arange(int(np.ceil(t_total * fps))) / fps
    value = np.zeros_like(t)
    truth, clock = [], 0.0
    for (down, up, depth), pause in zip(reps, pauses):
        start = clock + pause
        bottom, end = start + down, start + down + up
        going = (t >= start) & (t < bottom)
        value[going] = depth * _minimum_jerk((t[going] - start) / down)
        coming = (t >= bottom) & (t < end)
        value[coming] = depth * (1 - _minimum_jerk((t[coming] - bottom) / up))
        truth.append((start * fps, bottom * fps, end * fps))
        clock = end
    return value, truth


def _minimum_jerk(tau: np.ndarray) -> np.ndarray:
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def _to_camera(local: np.ndarray) -> np.ndarray:
    """Local (x: the person's left, y up, z forward, feet on y = 0) → camera axes, facing the camera
    3 m away: the person's left is the image's right (+x), up is −y, forward is −z."""
    out = np.empty_like(local)
    out[..., 0], out[..., 1], out[..., 2] = local[..., 0], -local[..., 1] + 0.9, 3.0 - local[..., 2]
    return out


def _upper_body(j: np.ndarray, lean: np.ndarray, arms_forward: bool) -> None:
    """Spine, thorax, head and arms over the hips already in ``j`` (local axes)."""
    j[:, 0] = (j[:, 1] + j[:, 4]) / 2
    trunk = np.stack([np.zeros_like(lean), np.cos(lean), np.sin(lean)], -1)
    j[:, 8] = j[:, 0] + TRUNK * trunk
    j[:, 7] = (j[:, 0] + j[:, 8]) / 2
    j[:, 9] = j[:, 8] + 0.10 * trunk + [0, 0, 0.06]
    j[:, 10] = j[:, 8] + 0.22 * trunk
    for side, (s, e, w) in ((1.0, (11, 12, 13)), (-1.0, (14, 15, 16))):
        j[:, s] = j[:, 8] + [side * 0.18, 0, 0]
        reach = np.array([0, 0, 1.0]) if arms_forward else -trunk
        j[:, e] = j[:, s] + UPPER_ARM * reach
        j[:, w] = j[:, e] + FOREARM * reach


def squat(reps, pauses, fps=30.0, *, depth_deg=110.0, asymmetry=0.0, lean_per_deg=0.35, noise_m=0.0, seed=0):
    rng = np.random.default_rng(seed)
    value, truth = drive(reps, pauses, fps, rng)
    kappa = np.radians(5.0 + depth_deg * value)  # a little bend at rest
    j = np.zeros((len(value), 17, 3))
    for side, (hip, knee, ankle), k in ((1.0, (4, 5, 6), kappa), (-1.0, (1, 2, 3), kappa * (1 + asymmetry))):
        alpha = 0.45 * k  # the shin tilts forward, the thigh back
        beta = k - alpha
        j[:, ankle] = [side * 0.12, 0.08, 0.0]
        j[:, knee] = j[:, ankle] + SHIN * np.stack([np.zeros_like(k), np.cos(alpha), np.sin(alpha)], -1)
        j[:, hip] = j[:, knee] + THIGH * np.stack([np.zeros_like(k), np.cos(beta), -np.sin(beta)], -1)
        j[:, hip, 0] = side * 0.1
    _upper_body(j, np.radians(lean_per_deg * np.degrees(kappa)), arms_forward=True)
    return _finish(j, truth, fps, noise_m, rng)


def pushup(reps, pauses, fps=30.0, *, depth_deg=90.0, noise_m=0.0, seed=0):
    rng = np.random.default_rng(seed)
    value, truth = drive(reps, pauses, fps, rng)
    eps = np.radians(8.0 + depth_deg * value)  # elbow flexion
    shoulder_height = FOREARM + UPPER_ARM * np.cos(eps)
    j = np.zeros((len(value), 17, 3))
    feet = np.array([0.0, 0.05, -1.45])
    for side, (s, e, w) in ((1.0, (11, 12, 13)), (-1.0, (14, 15, 16))):
        j[:, w] = [side * 0.22, 0.0, 0.0]
        j[:, e] = j[:, w] + [0, FOREARM, 0]
        j[:, s] = j[:, e] + UPPER_ARM * np.stack([np.zeros_like(eps), np.cos(eps), np.sin(eps)], -1)
        j[:, s, 0] = side * 0.18
    thorax = (j[:, 11] + j[:, 14]) / 2
    j[:, 8] = thorax
    along = _unit(thorax - feet)
    j[:, 0] = thorax - TRUNK * along
    j[:, 7] = (j[:, 0] + j[:, 8]) / 2
    for side, (hip, knee, ankle) in ((1.0, (4, 5, 6)), (-1.0, (1, 2, 3))):
        j[:, hip] = j[:, 0] + [side * 0.1, 0, 0]
        j[:, ankle] = feet + [side * 0.1, 0, 0]
        j[:, knee] = j[:, hip] + THIGH * _unit(j[:, ankle] - j[:, hip])
        j[:, ankle] = j[:, knee] + SHIN * _unit(j[:, ankle] - j[:, hip])
    j[:, 9] = thorax + 0.12 * along + [0, -0.04, 0]
    j[:, 10] = thorax + 0.24 * along
    del shoulder_height
    return _finish(j, truth, fps, noise_m, rng)


def lunge(reps, pauses, fps=30.0, *, depth_deg=85.0, noise_m=0.0, seed=0):
    """Both knees bend together (about as far: a lunge's bottom has both near a right angle), the
    front foot planted, the back leg hanging behind the hip."""
    rng = np.random.default_rng(seed)
    value, truth = drive(reps, pauses, fps, rng)
    kappa = np.radians(8.0 + depth_deg * value)
    zero = np.zeros_like(kappa)
    j = np.zeros((len(value), 17, 3))
    # The front leg from its planted foot up: the shin leans forward, the thigh back.
    alpha = 0.35 * kappa
    j[:, 6] = [0.12, 0.08, 0.40]
    j[:, 5] = j[:, 6] + SHIN * np.stack([zero, np.cos(alpha), np.sin(alpha)], -1)
    j[:, 4] = j[:, 5] + THIGH * np.stack([zero, np.cos(kappa - alpha), -np.sin(kappa - alpha)], -1)
    j[:, 4, 0] = 0.1
    # The back leg from its hip down: the thigh points down and back, the shin bends behind it.
    j[:, 1] = j[:, 4] - [0.2, 0.0, 0.0]
    gamma = np.radians(25.0) + 0.2 * kappa
    j[:, 2] = j[:, 1] + THIGH * np.stack([zero, -np.cos(gamma), -np.sin(gamma)], -1)
    j[:, 3] = j[:, 2] + SHIN * np.stack([zero, -np.cos(gamma + 0.95 * kappa), -np.sin(gamma + 0.95 * kappa)], -1)
    _upper_body(j, np.radians(4.0 + 3.0 * value), arms_forward=False)
    return _finish(j, truth, fps, noise_m, rng)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _finish(local: np.ndarray, truth, fps: float, noise_m: float, rng) -> Exercise:
    camera = _to_camera(local)
    if noise_m:
        camera = camera + rng.normal(0.0, noise_m, camera.shape)
    camera = camera - camera[:, :1]  # root-relative, as lift3d gives it
    return Exercise(camera, truth, fps)
