"""Keypoint layouts (COCO-17 for 2D, Human3.6M-17 for 3D) and the conversion between them."""

from __future__ import annotations

import numpy as np

# Limbs to draw, as index pairs.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
H36M_SKELETON = (
    (0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10),
    (8, 11), (11, 12), (12, 13), (8, 14), (14, 15), (15, 16),
)  # fmt: skip
# Joint names, in keypoints2d (COCO-17) and keypoints3d (Human3.6M-17) order.
COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
H36M17 = (
    "root", "right_hip", "right_knee", "right_foot", "left_hip", "left_knee", "left_foot",
    "spine", "thorax", "neck_base", "head",
    "left_shoulder", "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)  # fmt: skip
# Each Human3.6M joint's parent: the skeleton as a tree rooted at the pelvis ("root"), which BVH
# export and joint angles walk.
H36M_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
# Left side of the body (drawn in one colour, the right in another).
H36M_LEFT = {4, 5, 6, 11, 12, 13}
COCO_LEFT = {1, 3, 5, 7, 9, 11, 13, 15}


# BlazePose's 33 landmarks (MediaPipe Pose), and where each COCO-17 joint is among them.
BLAZEPOSE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky",
    "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)  # fmt: skip
BLAZEPOSE_TO_COCO = tuple(BLAZEPOSE33.index(name) for name in COCO17)


def coco_to_h36m(keypoints: np.ndarray) -> np.ndarray:
    """(..., 17, C) COCO → (..., 17, C) Human3.6M, as mmpose's ``convert_keypoint_definition``:
    pelvis = mid-hips, thorax = mid-shoulders, spine = mid pelvis–thorax, head = mid-eyes,
    neck base = nose, limbs reordered."""
    kp = np.asarray(keypoints)
    out = np.zeros_like(kp)
    out[..., 0, :] = (kp[..., 11, :] + kp[..., 12, :]) / 2
    out[..., 8, :] = (kp[..., 5, :] + kp[..., 6, :]) / 2
    out[..., 7, :] = (out[..., 0, :] + out[..., 8, :]) / 2
    out[..., 10, :] = (kp[..., 1, :] + kp[..., 2, :]) / 2
    out[..., [1, 2, 3, 4, 5, 6, 9, 11, 12, 13, 14, 15, 16], :] = kp[
        ..., [12, 14, 16, 11, 13, 15, 0, 5, 7, 9, 6, 8, 10], :
    ]
    return out
