"""Pictures of results: 2D skeletons over the image/video, and 3D skeleton plots."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..frame import FrameDocument
from ..keypoints import COCO_LEFT, COCO_SKELETON, H36M_LEFT, H36M_SKELETON
from . import charts

# Distinct BGR colours per track (tab10).
_PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
            (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]
KEYPOINT_MIN_SCORE = 0.3


def colour(track_id: int | None, index: int) -> tuple[int, int, int]:
    return _PALETTE[(track_id if track_id is not None else index) % len(_PALETTE)]


def draw_overlay(pixels: np.ndarray, doc: FrameDocument, *, random_weights: bool = False) -> np.ndarray:
    """Boxes, track ids and COCO skeletons drawn on a copy of ``pixels``."""
    out = pixels.copy()
    scale = max(1, round(max(out.shape[:2]) / 640))
    for i, person in enumerate(doc.persons or []):
        c = colour(person.track_id, i)
        x1, y1, x2, y2 = (int(round(v)) for v in person.bbox)
        cv2.rectangle(out, (x1, y1), (x2, y2), c, scale)
        label = f"#{person.track_id} {person.score:.2f}" if person.track_id is not None else f"{person.score:.2f}"
        cv2.putText(out, label, (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, c, scale,
                    cv2.LINE_AA)
        if person.keypoints2d:
            kp = np.asarray(person.keypoints2d)
            for a, b in COCO_SKELETON:
                if kp[a, 2] > KEYPOINT_MIN_SCORE and kp[b, 2] > KEYPOINT_MIN_SCORE:
                    side = (255, 160, 60) if a in COCO_LEFT and b in COCO_LEFT else c
                    cv2.line(out, (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1])), side, 2 * scale,
                             cv2.LINE_AA)
            for x, y, s in kp:
                if s > KEYPOINT_MIN_SCORE:
                    cv2.circle(out, (int(x), int(y)), 2 * scale + 1, (255, 255, 255), -1, cv2.LINE_AA)
    if random_weights:
        # The picture says it too: nobody should mistake noise for a result.
        text = "RANDOM WEIGHTS - results are noise"
        cv2.rectangle(out, (0, 0), (min(out.shape[1], 330 * scale), 22 * scale), (0, 0, 160), -1)
        cv2.putText(out, text, (6, 16 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (255, 255, 255), scale,
                    cv2.LINE_AA)
    return out


def _display_axes(k3: np.ndarray) -> np.ndarray:
    """Camera axes (x right, y down, z away) → plot axes (x right, y away, z up)."""
    return np.stack([k3[:, 0], k3[:, 2], -k3[:, 1]], axis=1)


def plot_3d(poses: list[tuple[str, np.ndarray]], path: Path, *, title: str = "", random_weights: bool = False) -> Path:
    """One 3D panel per (label, 17×3 H36M pose), up to four in a row. Each panel is scaled to its
    own pose."""
    n = max(1, len(poses))
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    panel_w, panel_h = 360, 380
    img = charts.canvas(max(700, panel_w * cols), panel_h * rows + 40)
    x_offset = (img.shape[1] - panel_w * cols) // 2
    for i, (label, k3) in enumerate(poses):
        box = (x_offset + (i % cols) * panel_w, 40 + (i // cols) * panel_h, panel_w, panel_h)
        charts.skeleton_panel(img, box, _display_axes(np.asarray(k3, np.float64)), H36M_SKELETON, set(H36M_LEFT),
                              title=label)
    if not poses:
        charts.text(img, "no person found", img.shape[1] // 2, img.shape[0] // 2, scale=0.6, align="centre")
    charts.heading(img, title, random_weights)
    return charts.save_png(img, path)


def poses_for_plot(docs: list[FrameDocument], max_panels: int = 4, *, by_track: bool | None = None
                   ) -> list[tuple[str, np.ndarray]]:
    """Pick what to show: for one frame, its persons; for a video, snapshots of the longest track."""
    if by_track is None:
        by_track = len(docs) > 1
    if not by_track:
        return [
            (f"person {i}" + (f" (#{p.track_id})" if p.track_id is not None else ""), np.asarray(p.keypoints3d))
            for i, p in enumerate(docs[0].persons or [])
            if p.keypoints3d
        ][:max_panels]
    by_track: dict[int, list[tuple[int, list]]] = {}
    for doc in docs:
        for p in doc.persons or []:
            if p.keypoints3d and p.track_id is not None:
                by_track.setdefault(p.track_id, []).append((doc.frame_index or 0, p.keypoints3d))
    if not by_track:
        return []
    tid, frames = max(by_track.items(), key=lambda kv: len(kv[1]))
    picks = np.unique(np.linspace(0, len(frames) - 1, min(max_panels, len(frames))).round().astype(int))
    return [(f"track #{tid}, frame {frames[i][0]}", np.asarray(frames[i][1])) for i in picks]
