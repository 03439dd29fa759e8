"""Where a person is: the pelvis in camera space, from the 2D keypoints and the lifted 3D.

The lifted 3D is root-relative (the pelvis at the origin), so on its own a person who walks across
the room walks on the spot. The 2D keypoints say where the body is in the image, and its size
there says how far away it is. Under a pinhole camera (focal length f pixels, principal point
(cx, cy) at the image centre) a joint at camera-space position X_j + T projects to

    u_j = cx + f·(X_j,x + T_x) / (X_j,z + T_z),   v_j = cy + f·(X_j,y + T_y) / (X_j,z + T_z)

which, multiplied out with a_j = (u_j − cx)/f and b_j = (v_j − cy)/f, is LINEAR in the unknown
translation T:

    T_x − a_j·T_z = a_j·X_j,z − X_j,x,      T_y − b_j·T_z = b_j·X_j,z − X_j,y

Every joint seen gives two rows; T is their least-squares solution, each row weighted by the 2D
keypoint's score (the same linear fit VideoPose3D's ``camera`` utilities use to put a root-relative
pose into the camera frame). T is the pelvis: X is relative to it. Its error grows with depth: a
1-pixel error in a body 300 px tall, 3 m away, moves T_z by ~1 cm (bench/motion.py measures the
whole path against ground truth).

**Focal length.** What the user gives (``--focal-px``, or ``--fov`` degrees across the image
width), else what the video's metadata says (a 35 mm-equivalent focal length, as phones write it),
else the DEFAULT: the image diagonal in pixels (a 53° diagonal field of view), the default
WHAM and TRAM use for unknown cameras. A wrong focal length scales depth (and the walked distance
along the view axis) by the same factor; positions across the view barely change.
"""

from __future__ import annotations

import math

import numpy as np

from ..frame import TrackDocument
from ..keypoints import coco_to_h36m
from .smoothing import smooth

# A 35 mm film frame's diagonal, mm: a 35 mm-equivalent focal length f35 is f35/43.27 of the
# image's diagonal in pixels.
FILM_DIAGONAL_MM = math.hypot(36.0, 24.0)
# Below this total 2D score the fit has nothing to stand on: no root for that person.
MIN_SCORE = 1e-3


def default_focal_px(width: int, height: int) -> float:
    """The documented default: the image diagonal in pixels (53.1° diagonal field of view)."""
    return float(math.hypot(width, height))


def focal_from_fov(fov_degrees: float, width: int) -> float:
    """Focal length in pixels from the horizontal field of view (degrees across the image width)."""
    if not 1.0 <= fov_degrees <= 179.0:
        raise ValueError(f"field of view must be between 1 and 179 degrees, got {fov_degrees}")
    return float(width / 2 / math.tan(math.radians(fov_degrees) / 2))


def focal_from_35mm(f35_mm: float, width: int, height: int) -> float:
    """Focal length in pixels from a 35 mm-equivalent focal length (diagonal-matched, as EXIF's
    FocalLengthIn35mmFilm and Apple's camera metadata define it)."""
    return float(f35_mm * math.hypot(width, height) / FILM_DIAGONAL_MM)


def fit_root(keypoints2d: np.ndarray, keypoints3d: np.ndarray, focal_px: float,
             centre: tuple[float, float]) -> np.ndarray:
    """(…, 17, 3) COCO 2D keypoints (x, y, score in pixels) and (…, 17, 3) root-relative Human3.6M
    3D (metres, camera axes) → (…, 3): the pelvis in camera space, metres. NaN where the 2D has no
    score to fit on."""
    k2 = coco_to_h36m(np.asarray(keypoints2d, np.float64))
    k3 = np.asarray(keypoints3d, np.float64)
    lead = k3.shape[:-2]
    k2, k3 = k2.reshape(-1, 17, k2.shape[-1]), k3.reshape(-1, 17, 3)
    out = np.full((len(k3), 3), np.nan)
    for i, (p2, p3) in enumerate(zip(k2, k3)):
        out[i] = _fit_one(p2, p3, focal_px, centre)
    return out.reshape(*lead, 3)


def _fit_one(p2: np.ndarray, p3: np.ndarray, focal_px: float, centre: tuple[float, float]) -> np.ndarray:
    w = np.clip(p2[:, 2], 0.0, None) if p2.shape[1] > 2 else np.ones(len(p2))
    if w.sum() < MIN_SCORE or not (np.isfinite(p2).all() and np.isfinite(p3).all()):
        return np.full(3, np.nan)
    a = (p2[:, 0] - centre[0]) / focal_px
    b = (p2[:, 1] - centre[1]) / focal_px
    zeros, ones = np.zeros_like(a), np.ones_like(a)
    rows = np.concatenate([np.stack([ones, zeros, -a], 1), np.stack([zeros, ones, -b], 1)])
    rhs = np.concatenate([a * p3[:, 2] - p3[:, 0], b * p3[:, 2] - p3[:, 1]])
    sw = np.sqrt(np.concatenate([w, w]))
    solution, *_ = np.linalg.lstsq(rows * sw[:, None], rhs * sw, rcond=None)
    return solution


def project(points: np.ndarray, focal_px: float, centre: tuple[float, float]) -> np.ndarray:
    """(…, 3) camera-space points → (…, 2) pixels (the pinhole model fit_root inverts)."""
    p = np.asarray(points, np.float64)
    return focal_px * p[..., :2] / p[..., 2:3] + np.asarray(centre)


def document_focal(doc) -> float:
    """A frame or track document's focal length: its ``camera``, else the default."""
    camera = getattr(doc, "camera", None)
    return float(camera.focal_px) if camera is not None else default_focal_px(doc.width, doc.height)


def place_roots(docs, smoothing=None) -> None:
    """lift3d's last step: ``root3d`` for every person (frame documents) or frame (track
    documents) that has 2D and 3D keypoints. A whole track's path is smoothed like its 3D
    (``smoothing``, posegraph.motion.smoothing); frames the fit has no 2D for take the path's
    nearest neighbours' values, so a track's path has no holes."""
    for doc in docs:
        if doc.width is None or doc.height is None:
            continue
        focal, centre = document_focal(doc), (doc.width / 2, doc.height / 2)
        if not isinstance(doc, TrackDocument):
            for person in doc.persons or []:
                if person.keypoints2d is not None and person.keypoints3d is not None:
                    root = fit_root(person.keypoints2d, person.keypoints3d, focal, centre)
                    person.root3d = root.tolist() if np.isfinite(root).all() else None
            continue
        frames = [f for f in doc.frames if f.keypoints3d is not None]
        if not frames:
            continue
        roots = fit_root([f.keypoints2d for f in frames], [f.keypoints3d for f in frames], focal, centre)
        roots = track_path(roots, [f.frame_index for f in frames], None if doc.lift_frames else smoothing)
        if np.isfinite(roots).all():
            for frame, root in zip(frames, roots):
                frame.root3d = root.tolist()


def track_path(roots: np.ndarray, frame_index, smoothing=None) -> np.ndarray:
    """(T, 3) fitted roots of one track → its path: frames without a fit take their neighbours'
    values, then the path is smoothed (``smoothing``; None: not). All NaN stays NaN."""
    index = np.asarray(frame_index, np.float64)
    known = np.isfinite(roots).all(axis=1)
    if not known.any():
        return roots
    if not known.all():
        roots = np.stack([np.interp(index, index[known], roots[known, k]) for k in range(3)], axis=1)
    return roots if smoothing is None else smooth(roots, smoothing, index)
