"""Charts drawn with OpenCV, which posegraph already uses for images and video: 3D skeleton panels
(``pose3d.png``) and line charts (the joint-angle plots).

matplotlib drew these two PNGs before. With fontTools, kiwisolver and its other dependencies it was
69 MB of the posegraph image (docs/images.md), the image that renders them for PoseJobs, and it
took the image over its size target. These charts show what those did: an orthographic 3D view
from the same angle (12° up, 70° round), the pose scaled to its own cube over a floor grid with its
spacing written, bones coloured by side; line charts with "nice" ticks, a grid, a legend, dashed
lines for the right side and shaded gaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (120, 120, 120)
LIGHT = (225, 225, 225)
WARNING = (40, 40, 170)            # dark red (BGR), for the random-weights heading
# matplotlib's tab10 in BGR: blue, orange, green, red, purple (the order its line charts used).
SERIES = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Hershey fonts are ASCII: the few other characters posegraph's titles use, spelled in ASCII.
_ASCII = str.maketrans({"—": "-", "–": "-", "×": "x", "…": "...", "°": " deg", "’": "'"})


def canvas(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def text(img: np.ndarray, s: str, x: int, y: int, *, scale: float = 0.45, colour=BLACK, align: str = "left",
         thickness: int = 1) -> int:
    """Write ``s`` with its baseline at y; ``align`` left, centre or right of x. Returns its width."""
    s = s.translate(_ASCII).encode("ascii", "replace").decode()
    (w, _), _ = cv2.getTextSize(s, FONT, scale, thickness)
    x0 = {"left": x, "centre": x - w // 2, "right": x - w}[align]
    cv2.putText(img, s, (int(x0), int(y)), FONT, scale, colour, thickness, cv2.LINE_AA)
    return w


def heading(img: np.ndarray, title: str, random_weights: bool) -> None:
    """The figure's title, centred on top; with random weights it says so, in red."""
    s = title + ("  -  RANDOM WEIGHTS: noise, not a result" if random_weights else "")
    text(img, s, img.shape[1] // 2, 24, scale=0.55, colour=WARNING if random_weights else BLACK, align="centre")


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> np.ndarray:
    """Round tick values (steps of 1, 2 or 5 × 10^k) covering [lo, hi], about ``count`` of them."""
    if not np.isfinite(lo) or not np.isfinite(hi):
        return np.array([0.0])
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    return np.arange(math.floor(lo / step) * step, hi + step * 0.5, step)


def save_png(img: np.ndarray, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path


# ---- line charts -----------------------------------------------------------------------------------

@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    dashed: bool = False


def _dashed(img: np.ndarray, points: np.ndarray, colour, thickness: int, dash: float = 7.0, gap: float = 4.0) -> None:
    """A polyline drawn in dashes of ``dash`` pixels along its length."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        length, done = math.hypot(x1 - x0, y1 - y0), 0.0
        while done < length:
            step = min(left, length - done)
            if on:
                a, b = done / length, (done + step) / length
                cv2.line(img, (round(x0 + (x1 - x0) * a), round(y0 + (y1 - y0) * a)),
                         (round(x0 + (x1 - x0) * b), round(y0 + (y1 - y0) * b)), colour, thickness, cv2.LINE_AA)
            done += step
            left -= step
            if left <= 0:
                on, left = not on, (dash if not on else gap)


def line_panel(img: np.ndarray, box: tuple[int, int, int, int], series: list[Series], *, title: str = "",
               ylabel: str = "", xlabel: str = "", shaded: list[float] = (), integer_x: bool = False) -> None:
    """A line chart in ``box`` (x, y, width, height): axes, ticks, grid, legend, ``shaded`` x
    positions as one-unit grey bands."""
    bx, by, bw, bh = box
    left, right, top, bottom = bx + 58, bx + bw - 12, by + 26, by + bh - (40 if xlabel else 24)
    xs = np.concatenate([s.x for s in series]) if series else np.array([0.0, 1.0])
    ys = np.concatenate([s.y for s in series]) if series else np.array([0.0, 1.0])
    ys = ys[np.isfinite(ys)] if np.isfinite(ys).any() else np.array([0.0, 1.0])
    xticks = nice_ticks(float(xs.min()), float(xs.max()), 8, integer=integer_x)
    span = float(ys.max() - ys.min())
    yticks = nice_ticks(float(ys.min()), float(ys.max()) + 0.2 * span, 5)  # headroom for the legend
    x0, x1 = float(min(xs.min(), xticks[0])), float(max(xs.max(), xticks[-1]))
    y0, y1 = float(yticks[0]), float(yticks[-1])
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x):
        return left + (np.asarray(x, np.float64) - x0) / (x1 - x0) * (right - left)

    def py(y):
        return bottom - (np.asarray(y, np.float64) - y0) / (y1 - y0) * (bottom - top)

    for f in shaded:
        cv2.rectangle(img, (int(px(f - 0.5)), top), (int(px(f + 0.5)), bottom), LIGHT, -1)
    for t in xticks:
        cv2.line(img, (int(px(t)), top), (int(px(t)), bottom), (240, 240, 240), 1)
        text(img, f"{t:g}", int(px(t)), bottom + 15, scale=0.38, colour=GREY, align="centre")
    for t in yticks:
        cv2.line(img, (left, int(py(t))), (right, int(py(t))), (240, 240, 240), 1)
        text(img, f"{t:g}", left - 6, int(py(t)) + 4, scale=0.38, colour=GREY, align="right")
    cv2.rectangle(img, (left, top), (right, bottom), GREY, 1)
    for i, s in enumerate(series):
        keep = np.isfinite(s.y)
        points = np.stack([px(s.x[keep]), py(s.y[keep])], 1)
        if len(points) > 1:
            if s.dashed:
                _dashed(img, points, SERIES[i % len(SERIES)], 2)
            else:
                cv2.polylines(img, [np.round(points).astype(np.int32)], False, SERIES[i % len(SERIES)], 2, cv2.LINE_AA)
    # the legend, in a box along the top right, in the series' order
    if series:
        cv2.rectangle(img, (right - 150 * len(series) - 8, top + 4), (right - 4, top + 22), WHITE, -1)
        cv2.rectangle(img, (right - 150 * len(series) - 8, top + 4), (right - 4, top + 22), LIGHT, 1)
    for i, s in enumerate(series):
        colour = SERIES[i % len(SERIES)]
        lx = right - 150 * (len(series) - i)
        ly = top + 18
        if s.dashed:
            _dashed(img, np.array([[lx, ly - 4], [lx + 22, ly - 4]], np.float64), colour, 2)
        else:
            cv2.line(img, (lx, ly - 4), (lx + 22, ly - 4), colour, 2, cv2.LINE_AA)
        text(img, s.label, lx + 27, ly, scale=0.38)
    text(img, title, (left + right) // 2, by + 18, scale=0.45, align="centre")
    if xlabel:
        text(img, xlabel, (left + right) // 2, bottom + 33, scale=0.42, align="centre")
    if ylabel:
        label = canvas(bottom - top, 18)
        text(label, ylabel, (bottom - top) // 2, 13, scale=0.42, align="centre")
        img[top:bottom, bx + 4:bx + 22] = np.minimum(img[top:bottom, bx + 4:bx + 22], np.rot90(label))


# ---- 3D skeletons ----------------------------------------------------------------------------------

def skeleton_panel(img: np.ndarray, box: tuple[int, int, int, int], points: np.ndarray,
                   bones: list[tuple[int, int]], left_joints: set[int], *, title: str = "",
                   elevation: float = 12.0, azimuth: float = -70.0) -> None:
    """One pose (J × 3: x right, y away, z up, metres) in ``box``, seen orthographically from
    ``elevation``/``azimuth`` degrees (matplotlib's view_init), scaled to the cube around it."""
    bx, by, bw, bh = box
    p = np.asarray(points, np.float64)
    centre = (p.max(0) + p.min(0)) / 2
    radius = max(float(np.ptp(p, axis=0).max()) / 2, 1e-3)
    e, a = math.radians(elevation), math.radians(azimuth)
    right = np.array([-math.sin(a), math.cos(a), 0.0])
    up = np.array([-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e)])
    towards_viewer = np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    size = min(bw, bh - 30) / (2 * radius * 1.75)   # the cube's projection fits the panel
    mid = np.array([bx + bw / 2, by + 30 + (bh - 30) / 2])

    def project(q):
        q = np.asarray(q, np.float64) - centre
        return np.stack([mid[0] + q @ right * size, mid[1] - q @ up * size], -1)

    # the floor (at the cube's bottom) as a grid of round spacing, and the cube's vertical edges
    spacing = float(nice_ticks(0, 2 * radius, 4)[1])
    ticks = np.arange(math.ceil((centre[0] - radius) / spacing), math.floor((centre[0] + radius) / spacing) + 1)
    depth_ticks = np.arange(math.ceil((centre[1] - radius) / spacing),
                            math.floor((centre[1] + radius) / spacing) + 1)
    floor = centre[2] - radius
    for t in ticks * spacing:
        a_, b_ = project([[t, centre[1] - radius, floor], [t, centre[1] + radius, floor]])
        cv2.line(img, tuple(np.round(a_).astype(int)), tuple(np.round(b_).astype(int)), LIGHT, 1, cv2.LINE_AA)
    for t in depth_ticks * spacing:
        a_, b_ = project([[centre[0] - radius, t, floor], [centre[0] + radius, t, floor]])
        cv2.line(img, tuple(np.round(a_).astype(int)), tuple(np.round(b_).astype(int)), LIGHT, 1, cv2.LINE_AA)
    for cx in (-1, 1):
        for cy in (-1, 1):
            a_, b_ = project([[centre[0] + cx * radius, centre[1] + cy * radius, floor],
                              [centre[0] + cx * radius, centre[1] + cy * radius, floor + 2 * radius]])
            cv2.line(img, tuple(np.round(a_).astype(int)), tuple(np.round(b_).astype(int)), LIGHT, 1, cv2.LINE_AA)
    # bones from the farthest to the nearest, so near ones are drawn over far ones
    flat = project(p)
    depth = (p - centre) @ towards_viewer
    for i, j in sorted(bones, key=lambda b: depth[list(b)].mean()):
        colour = SERIES[1] if (i in left_joints or j in left_joints) else SERIES[0]
        cv2.line(img, tuple(np.round(flat[i]).astype(int)), tuple(np.round(flat[j]).astype(int)), colour, 3,
                 cv2.LINE_AA)
    for q in flat:
        cv2.circle(img, tuple(np.round(q).astype(int)), 3, BLACK, -1, cv2.LINE_AA)
    text(img, title, bx + bw // 2, by + 20, scale=0.42, align="centre")
    text(img, f"grid {spacing:g} m   x right, depth away, up", bx + bw // 2, by + bh - 6, scale=0.34, colour=GREY,
         align="centre")
