"""Temporal smoothing of one track's keypoints (T frames × J joints × C coordinates).

Two filters, chosen in the profile (``lift3d.smoothing``), and applied by the lift3d stage to each
track it lifts: to the 2D keypoints it lifts from, and to the 3D it returns. So the in-process and
the served video paths smooth in the same place, with the same settings (the archive carries them).

* ``savgol`` — Savitzky–Golay: a least-squares polynomial over a centred window. Zero-phase, so it
  adds no lag; it needs the whole track, which posegraph has (tracks are lifted whole).
* ``one_euro`` — the 1€ filter (Casiez et al., CHI 2012): causal, adaptive low-pass whose cutoff
  rises with speed. For live use; on a finished track it lags where motion is slow.

The default (``savgol``, window 15, order 3) was chosen by ``bench/smoothing.py``: on a synthetic
track with known ground truth and 10 mm of jitter it had the lowest error (8.7 mm RMS against 17.3
unsmoothed), left 11.7× less jitter, and added no lag; the best 1€ settings left 5× less jitter
but lagged 2–3 frames and erred by 65–80 mm (the table is in docs/motion.md).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

METHODS = ("off", "savgol", "one_euro")


class SmoothingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["off", "savgol", "one_euro"] = "savgol"
    # Savitzky–Golay: window in frames (odd) and polynomial order. Tracks shorter than the window
    # use the longest odd window they have; tracks of ≤ order frames are left as they are.
    window: int = Field(15, ge=3)
    order: int = Field(3, ge=1, le=5)
    # 1€ filter, in cycles per frame (× fps for Hz: 0.04 ≈ 1.2 Hz at 30 fps), and its speed gain.
    min_cutoff: float = Field(0.04, gt=0)
    beta: float = Field(0.5, ge=0)
    d_cutoff: float = Field(0.04, gt=0)

    @field_validator("method", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        # YAML reads a bare `off` (in a profile, or `--set lift3d.smoothing.method=off`) as false.
        return "off" if value is False else value

    @model_validator(mode="after")
    def _window_fits(self) -> "SmoothingSettings":
        if self.window % 2 == 0:
            raise ValueError(f"smoothing.window must be odd, not {self.window}")
        if self.order >= self.window:
            raise ValueError(f"smoothing.order ({self.order}) must be below smoothing.window ({self.window})")
        return self


def smooth(values: np.ndarray, settings: SmoothingSettings, frame_index: np.ndarray | None = None) -> np.ndarray:
    """(T, ...) values of consecutive observations of one track → the same shape, smoothed.
    ``frame_index`` (T,) gives their frame numbers (gaps where the track was not seen); the 1€
    filter uses it as time, Savitzky–Golay treats the observations as evenly spaced (gaps are at
    most the tracker's ``max_gap`` frames)."""
    values = np.asarray(values, np.float64)
    if settings.method == "off" or len(values) < 2:
        return values.copy()
    if settings.method == "savgol":
        return _savgol(values, settings.window, settings.order)
    t = np.arange(len(values), dtype=np.float64) if frame_index is None else np.asarray(frame_index, np.float64)
    return _one_euro(values, t, settings.min_cutoff, settings.beta, settings.d_cutoff)


def _savgol(values: np.ndarray, window: int, order: int) -> np.ndarray:
    n = len(values)
    window = min(window, n if n % 2 else n - 1)
    if window <= order:
        return values.copy()
    return savgol_interp(values, window, order)


def savgol_interp(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky–Golay along axis 0 with scipy's ``mode="interp"`` (``savgol_filter`` computes the
    same, to rounding: tests/test_motion.py compares them), in numpy alone so that neither the
    images nor an install carry scipy (113 MB) for this one filter.

    Inside, each sample becomes the centre value of the least-squares polynomial of ``order``
    over the ``window`` samples around it: a fixed weighted sum. At the ends the polynomial fitted
    to the first (last) window gives the first (last) half-window, instead of padding with
    invented samples: the ends of a track are not pulled towards a mirror image."""
    values = np.asarray(values, np.float64)
    n, half = len(values), window // 2
    flat = values.reshape(n, -1)
    positions = np.arange(window, dtype=np.float64)
    vandermonde = np.vander(positions - half, order + 1, increasing=True)      # (window, order+1)
    weights = np.linalg.pinv(vandermonde)[0]                                   # centre value of the fit
    out = np.empty_like(flat)
    out[half:n - half] = np.einsum("w,twc->tc", weights,
                                   np.lib.stride_tricks.sliding_window_view(flat, window, axis=0).transpose(0, 2, 1))
    edge = np.vander(positions, order + 1, increasing=True)
    for start, lo, hi in ((0, 0, half), (n - window, window - half, window)):
        coefficients = np.linalg.lstsq(edge, flat[start:start + window], rcond=None)[0]  # a polynomial per column
        out[start + lo:start + hi] = edge[lo:hi] @ coefficients
    return out.reshape(values.shape)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def _one_euro(values: np.ndarray, t: np.ndarray, min_cutoff: float, beta: float, d_cutoff: float) -> np.ndarray:
    out = np.empty_like(values)
    out[0] = values[0]
    derivative = np.zeros_like(values[0])
    for i in range(1, len(values)):
        dt = max(float(t[i] - t[i - 1]), 1e-6)
        raw_derivative = (values[i] - out[i - 1]) / dt
        a_d = _alpha(d_cutoff, dt)
        derivative = a_d * raw_derivative + (1 - a_d) * derivative
        cutoff = min_cutoff + beta * np.abs(derivative)
        a = _alpha(cutoff, dt)
        out[i] = a * values[i] + (1 - a) * out[i - 1]
    return out
