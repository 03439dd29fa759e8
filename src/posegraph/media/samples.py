"""Bundled sample inputs: a real photo that ships inside scikit-image, and clips made from it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def astronaut_bgr() -> np.ndarray:
    """Eileen Collins, NASA portrait (public domain), 512×512, from ``skimage.data``."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def write_astronaut(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), astronaut_bgr())
    return path


def synthetic_clip_frames(n_frames: int = 48, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """The photo panning and zooming slowly across a wider grey canvas: the person moves, so
    tracking and temporal lifting have something to follow."""
    width, height = size
    photo = astronaut_bgr()
    frames = []
    for i in range(n_frames):
        t = i / max(1, n_frames - 1)
        scale = 0.8 + 0.15 * np.sin(np.pi * t)
        side = int(round(512 * scale))
        person = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
        canvas = np.full((height, width, 3), 96, np.uint8)
        x = int(round((width - side) * t))
        y = max(0, (height - side) // 2)
        visible_h = min(side, height - y)
        canvas[y : y + visible_h, x : x + side] = person[:visible_h, : min(side, width - x)]
        frames.append(canvas)
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 12.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():  # pragma: no cover - OpenCV build without a video backend
        raise RuntimeError(f"OpenCV cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path
