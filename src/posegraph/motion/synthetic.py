"""A procedural walk with its ground truth: the motion tests and bench/motion.py measure against it.

A person walks along a circular arc on a flat floor, filmed by a fixed camera of known focal
length, standing back from the walk and tilted down. Everything a lifter and a 2D model would give
is made from the truth (2D keypoints by projection, root-relative 3D in camera axes), with noise
the caller chooses, and the truth is kept: the world joints, the pelvis in camera space, the
floor's normal, and which foot is planted when.

The gait: one cycle per CYCLE_S seconds; each foot stands for STANCE of it (both stand while the
weight passes from one to the other), planted at a footprint on the path, and swings to the next
footprint in a low arc. The pelvis glides along the path at SPEED with a small vertical bob; the
knees follow from the hips and ankles by two-bone IK; the arms swing against the legs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ground import two_bone_ik

CYCLE_S = 1.0
STANCE = 0.6  # of a cycle
SPEED = 1.0  # m/s along the path
PELVIS_HEIGHT = 0.90
ANKLE_HEIGHT = 0.07
HIP_HALF_WIDTH, FOOT_HALF_WIDTH = 0.10, 0.09
THIGH, SHIN = 0.46, 0.45


@dataclass(frozen=True)
class Walk:
    fps: float
    width: int
    height: int
    focal_px: float
    world: np.ndarray  # (T, 17, 3) Human3.6M joints, world axes (Y up, floor y = 0), metres
    camera: np.ndarray  # (T, 17, 3) the same in camera axes (x right, y down, z away)
    keypoints2d: np.ndarray  # (T, 17, 3) COCO-17 projections, pixels, score 1 (noise added)
    keypoints3d: np.ndarray  # (T, 17, 3) root-relative camera-axes 3D (noise added)
    root: np.ndarray  # (T, 3) the true pelvis, camera axes
    up: np.ndarray  # (3,) the floor's normal, camera axes
    contacts: np.ndarray  # (T, 2) bool, true contacts (left, right)


def _path(s: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Point and unit heading on the arc at arc length s: across the view from the left, 4-6 m
    from the camera, bending away from it."""
    angle = s / radius - 0.5
    point = np.stack([radius * np.sin(angle), np.zeros_like(s), 4.0 + radius * (1 - np.cos(angle))], -1)
    heading = np.stack([np.cos(angle), np.zeros_like(s), np.sin(angle)], -1)
    return point, heading


def _left_of(heading: np.ndarray) -> np.ndarray:
    return np.cross(np.array([0.0, 1.0, 0.0]), heading)  # Y up: up × forward points left


def _feet(t: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, 2, 3) ankles (left, right) and (T, 2) contacts."""
    ankles, contacts = np.zeros((len(t), 2, 3)), np.zeros((len(t), 2), bool)
    for foot, (delay, side) in enumerate(((0.0, 1.0), (0.5, -1.0))):
        phase = (t / CYCLE_S - delay) % 1.0
        step = np.floor(t / CYCLE_S - delay)
        stance = phase < STANCE

        def footprint(k):
            s = (k + STANCE / 2 + delay) * CYCLE_S * SPEED  # under the pelvis at mid-stance
            point, heading = _path(np.asarray(s, np.float64), radius)
            return point + side * FOOT_HALF_WIDTH * _left_of(heading) + [0.0, ANKLE_HEIGHT, 0.0]

        here, there = footprint(step), footprint(step + 1)
        swing = np.clip((phase - STANCE) / (1 - STANCE), 0, 1)
        eased = (1 - np.cos(np.pi * swing)) / 2
        ankles[:, foot] = np.where(stance[:, None], here, here + eased[:, None] * (there - here))
        ankles[:, foot, 1] += np.where(stance, 0.0, 0.12 * np.sin(np.pi * swing))
        contacts[:, foot] = stance
    return ankles, contacts


def _skeleton(t: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, 17, 3) world joints and (T, 2) contacts."""
    s = t * SPEED
    pelvis, heading = _path(s, radius)
    pelvis[:, 1] = PELVIS_HEIGHT + 0.02 * np.cos(4 * np.pi * t / CYCLE_S)
    left, up = _left_of(heading), np.array([0.0, 1.0, 0.0])
    ankles, contacts = _feet(t, radius)
    swing = np.sin(2 * np.pi * t / CYCLE_S)  # arms against the legs
    j = np.zeros((len(t), 17, 3))
    j[:, 0] = pelvis
    j[:, 4], j[:, 1] = pelvis + HIP_HALF_WIDTH * left, pelvis - HIP_HALF_WIDTH * left
    j[:, 7] = pelvis + 0.25 * up + 0.02 * heading
    j[:, 8] = pelvis + 0.50 * up + 0.04 * heading
    j[:, 9] = j[:, 8] + 0.10 * up + 0.05 * heading  # the nose, as coco_to_h36m makes it
    j[:, 10] = j[:, 8] + 0.20 * up + 0.02 * heading  # between the eyes
    for side, (shoulder, elbow, wrist), sign in ((left, (11, 12, 13), 1.0), (-left, (14, 15, 16), -1.0)):
        j[:, shoulder] = j[:, 8] + 0.18 * side
        forward = (sign * 0.15 * swing)[:, None] * heading
        j[:, elbow] = j[:, shoulder] - 0.28 * up + forward
        j[:, wrist] = j[:, elbow] - 0.25 * up + 1.6 * forward + 0.05 * heading
    for (hip, knee, ankle), foot in (((4, 5, 6), 0), ((1, 2, 3), 1)):
        for i in range(len(t)):
            bent = j[i, hip] - 0.5 * THIGH * up + 0.2 * heading[i]  # a pole: knees bend forward
            knee_at = j[i, hip] + THIGH * (bent - j[i, hip]) / np.linalg.norm(bent - j[i, hip])
            shin_end = knee_at + SHIN * (ankles[i, foot] - knee_at) / np.linalg.norm(ankles[i, foot] - knee_at)
            j[i, knee], j[i, ankle] = two_bone_ik(j[i, hip], knee_at, shin_end, ankles[i, foot])
    j[:, 0] = (j[:, 1] + j[:, 4]) / 2
    j[:, 8] = (j[:, 11] + j[:, 14]) / 2
    j[:, 7] = (j[:, 0] + j[:, 8]) / 2
    return j, contacts


def _coco(h36m: np.ndarray, left: np.ndarray) -> np.ndarray:
    """COCO-17 points whose coco_to_h36m is the given joints (ears beside the eyes)."""
    c = np.zeros_like(h36m)
    c[..., 0, :] = h36m[..., 9, :]
    c[..., 1, :], c[..., 2, :] = h36m[..., 10, :] + 0.03 * left, h36m[..., 10, :] - 0.03 * left
    c[..., 3, :], c[..., 4, :] = h36m[..., 10, :] + 0.07 * left, h36m[..., 10, :] - 0.07 * left
    c[..., [5, 7, 9, 6, 8, 10, 11, 13, 15, 12, 14, 16], :] = h36m[..., [11, 12, 13, 14, 15, 16, 4, 5, 6, 1, 2, 3], :]
    return c


def camera_pose(tilt_degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """World → camera rotation and the camera's centre: 1.6 m up, 1.5 m in front of the path's
    start, looking along +Z (the path bends away) and tilted down by ``tilt_degrees``."""
    a = np.radians(tilt_degrees)
    forward = np.array([0.0, -np.sin(a), np.cos(a)])
    right = np.array([-1.0, 0.0, 0.0])  # looking along +Z with Y up, +X is on the left
    down = np.cross(forward, right)
    return np.stack([right, down, forward]), np.array([0.0, 1.6, -1.5])


def walk(seconds: float = 8.0, fps: float = 30.0, *, radius: float = 6.0, tilt_degrees: float = 12.0,
         focal_px: float = 1000.0, size: tuple[int, int] = (1280, 720), noise_px: float = 0.0,
         noise_m: float = 0.0, seed: int = 0) -> Walk:
    """The walk, seen by the camera; ``noise_px`` / ``noise_m``: Gaussian noise (σ) added to the
    2D keypoints and the root-relative 3D, independently per joint and frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fps))) / fps
    world, contacts = _skeleton(t, radius)
    rotation, centre = camera_pose(tilt_degrees)
    camera = (world - centre) @ rotation.T
    _, heading = _path(t * SPEED, radius)
    coco = _coco(camera, _left_of(heading) @ rotation.T)
    uv = focal_px * coco[..., :2] / coco[..., 2:3] + np.array(size) / 2
    uv = uv + rng.normal(0.0, noise_px, uv.shape) if noise_px else uv
    keypoints2d = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1)
    rel = camera - camera[:, :1]
    keypoints3d = rel + rng.normal(0.0, noise_m, rel.shape) if noise_m else rel
    keypoints3d[:, 0] = 0.0
    return Walk(fps, size[0], size[1], focal_px, world, camera, keypoints2d, keypoints3d, camera[:, 0].copy(),
                rotation @ np.array([0.0, 1.0, 0.0]), contacts)
