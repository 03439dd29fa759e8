"""form_judge: repetitions of an exercise and how well each was done, from a person's 3D track.

A posegraph stage written the way any user writes one (docs/write-a-stage.md): a class on
posegraph's stage contract (posegraph.stages.user.UserStage), nothing else of posegraph's.
It works on whole tracks: it needs the motion before and after each moment to find where a
repetition starts and ends.

1. **Joint angles** per frame from the Human3.6M 3D keypoints (camera axes, y down): knee and elbow
   flexion, trunk lean from vertical.
2. **The exercise**: given (``exercise: squat | pushup | lunge``) or detected: a trunk nearer
   horizontal than vertical over the track is a push-up; knees that bend unequally (one leg
   forward, one back) a lunge; else a squat.
3. **The signal** that goes down and up once per repetition: mean knee flexion (squat), mean
   elbow flexion (push-up), the more bent knee (lunge); lightly smoothed.
4. **Repetitions by hysteresis**: a rep is the signal rising above ``enter`` and falling back below
   ``leave`` (fractions of the signal's range over the track above its resting level, so the same
   settings fit a deep and a shallow mover), which counts a rep once however the signal wobbles
   between the two. Its **boundaries**: each phase (down, then up) is fitted as rest, a
   minimum-jerk movement (Flash & Hogan 1985: the smooth profile of a human point-to-point movement)
   and a plateau, by least squares over where it starts and ends; the rep starts where the down
   phase does, ends where the up phase does, its bottom between. A threshold crossing is late by a
   tenth of the rep and moves by frames with the noise; the fit uses every sample.
5. **Per repetition**: depth (peak of the signal, degrees), tempo (seconds down, seconds up),
   left–right symmetry (mean |left − right| of the exercise's joint), trunk lean (its peak), and
   feedback: one line per rule that failed, against thresholds in the settings.

How this differs from Ultralytics' AIGym (``solutions.AIGym``): AIGym counts from one 2D angle
(three keypoints chosen by the user) with two fixed angle thresholds ("up"/"down" degrees), per
frame as it comes, and reports a count and the current stage. Here the angles are 3D (not foreshortened
by where the camera stands), the thresholds adapt to the mover's range, the whole track is at hand, so
each repetition gets exact boundaries (onset extrapolation, not threshold-crossing times),
tempo, symmetry and lean, and per-rule feedback; and the exercise can be detected. AIGym works
live on a 2D model alone; this needs a lifted track and runs when the track ends.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from posegraph.stages.user import UserStage

# Human3.6M joint indices (posegraph.keypoints.H36M17's order; repeated here: the contract is the
# documents, not posegraph's modules).
PELVIS, R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, SPINE, THORAX = 0, 1, 2, 3, 4, 5, 6, 7, 8
L_SHOULDER, L_ELBOW, L_WRIST, R_SHOULDER, R_ELBOW, R_WRIST = 11, 12, 13, 14, 15, 16
UP = np.array([0.0, -1.0, 0.0])  # camera axes: y points down
EXERCISES = ("squat", "pushup", "lunge")


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 1e-9, n, np.nan)


def flexion(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Degrees the limb a→b→c bends at b: 0 straight, 90 a right angle."""
    cos = np.sum(_unit(b - a) * _unit(c - b), axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def angles(k3: np.ndarray) -> dict[str, np.ndarray]:
    """(T, 17, 3) → per-frame angles in degrees."""
    trunk = _unit(k3[:, THORAX] - k3[:, PELVIS])
    return {
        "left_knee": flexion(k3[:, L_HIP], k3[:, L_KNEE], k3[:, L_ANKLE]),
        "right_knee": flexion(k3[:, R_HIP], k3[:, R_KNEE], k3[:, R_ANKLE]),
        "left_elbow": flexion(k3[:, L_SHOULDER], k3[:, L_ELBOW], k3[:, L_WRIST]),
        "right_elbow": flexion(k3[:, R_SHOULDER], k3[:, R_ELBOW], k3[:, R_WRIST]),
        "trunk_lean": np.degrees(np.arccos(np.clip(trunk @ UP, -1.0, 1.0))),
        "stance": stance(k3),
    }


def stance(k3: np.ndarray) -> np.ndarray:
    """How far one foot is ahead of the other, in leg lengths: along the floor, across the hips'
    line (a lunge splits the feet front and back, a squat keeps them side by side)."""
    flat = np.array([1.0, 0.0, 1.0])  # camera axes: drop y, the vertical of a level camera
    across = _unit((k3[:, L_HIP] - k3[:, R_HIP]) * flat)
    ahead = _unit(np.cross(across, UP))
    split = np.abs(np.sum((k3[:, L_ANKLE] - k3[:, R_ANKLE]) * flat * ahead, axis=-1))
    leg = np.linalg.norm(k3[:, L_HIP] - k3[:, L_KNEE], axis=-1) + np.linalg.norm(k3[:, L_KNEE] - k3[:, L_ANKLE], axis=-1)
    return split / leg


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average (edges replicated): removes jitter without moving the onsets."""
    if window <= 1 or len(x) < window:
        return x.copy()
    pad = window // 2
    padded = np.concatenate([np.full(pad, x[0]), x, np.full(pad, x[-1])])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


class Rules(UserStage.Settings):
    """Thresholds of the feedback, per exercise (degrees, seconds)."""

    min_depth: float = Field(..., description="the signal's peak must reach this (degrees)")
    max_asymmetry: float | None = Field(None, description="mean |left − right| above this: uneven")
    max_trunk_lean: float | None = Field(None, description="trunk lean peak above this (from vertical)")
    min_down_s: float = Field(0.8, description="a faster descent is not controlled")


DEFAULT_RULES = {
    "squat": Rules(min_depth=90.0, max_asymmetry=12.0, max_trunk_lean=45.0),
    "pushup": Rules(min_depth=75.0, max_asymmetry=12.0),
    "lunge": Rules(min_depth=80.0, max_trunk_lean=25.0),
}


class FormJudge(UserStage):
    name = "form-judge"
    documents = "track"
    reads = ("frames.keypoints3d", "frames.frame_index")
    writes = ("exercise", "reps")

    class Settings(UserStage.Settings):
        exercise: Literal["auto", "squat", "pushup", "lunge"] = "auto"
        fps: float = Field(30.0, gt=0, description="frames per second, when the track does not say (its fps)")
        enter: float = Field(0.5, gt=0, lt=1, description="a rep starts above this fraction of the range")
        leave: float = Field(0.25, gt=0, lt=1, description="… and ends below this one (hysteresis)")
        min_range_deg: float = Field(25.0, gt=0, description="a signal moving less is no exercise: no reps")
        smooth_frames: int = Field(5, ge=1, description="moving-average window of the signal")
        rules: dict[str, Rules] = Field(default_factory=lambda: dict(DEFAULT_RULES))

    def preprocess(self, docs):
        return [(np.asarray([f.keypoints3d for f in d.frames], np.float64),
                 np.asarray([f.frame_index for f in d.frames]),
                 float(d.fps or self.settings.fps))
                for d in docs]

    def infer(self, batch):
        return [self.judge(k3, frames, fps) for k3, frames, fps in batch]

    def postprocess(self, docs, batch, outputs):
        for doc, (exercise, reps) in zip(docs, outputs):
            doc.exercise = exercise
            doc.reps = reps

    # -- the judging, on numbers only (tested on synthetic tracks) -------------------------------------
    def exercise_of(self, a: dict[str, np.ndarray]) -> str:
        if self.settings.exercise != "auto":
            return self.settings.exercise
        if np.median(a["trunk_lean"]) > 50.0:
            return "pushup"
        if np.median(a["stance"]) > 0.5:
            return "lunge"
        return "squat"

    @staticmethod
    def signal(exercise: str, a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rep signal and the exercise's left and right joints."""
        if exercise == "pushup":
            left, right = a["left_elbow"], a["right_elbow"]
            return (left + right) / 2, left, right
        left, right = a["left_knee"], a["right_knee"]
        return (np.maximum(left, right) if exercise == "lunge" else (left + right) / 2), left, right

    def judge(self, k3: np.ndarray, frames: np.ndarray, fps: float) -> tuple[str, list[dict]]:
        a = angles(k3)
        exercise = self.exercise_of(a)
        raw, left, right = self.signal(exercise, a)
        s = smooth(raw, self.settings.smooth_frames)
        rest = float(np.percentile(s, 5))
        span = float(np.percentile(s, 95)) - rest
        if span < self.settings.min_range_deg:
            return exercise, []
        reps = []
        for start, bottom, end in self.segments(s, rest, span):
            reps.append(self.measure(len(reps) + 1, exercise, start, bottom, end, frames, fps, s, left, right,
                                     a["trunk_lean"]))
        return exercise, reps

    def segments(self, s: np.ndarray, rest: float, span: float) -> list[tuple[float, float, float]]:
        """(start, bottom, end) of each rep: hysteresis between enter and leave, then each phase fitted."""
        enter, leave = rest + self.settings.enter * span, rest + self.settings.leave * span
        found, inside, first = [], False, 0
        for t, value in enumerate(s):
            if not inside and value > enter:
                inside, first = True, t
            elif inside and value < leave:
                inside = False
                found.append((first, t))
        # Each rep's fits stay between the pauses around it: the middle of the rest between two reps
        # (the lowest point, when they follow without a rest).
        cuts = [0] + [_between(s, found[k][1], found[k + 1][0], rest + 0.1 * span)
                      for k in range(len(found) - 1)] + [len(s)]
        reps = []
        for k, (first, last) in enumerate(found):
            before, after = cuts[k], cuts[k + 1]
            peak = first + int(np.argmax(s[first:last]))
            start, bottom = fit_phase(s[before: peak + 1])
            end, bottom_up = fit_phase(s[peak: after][::-1])
            reps.append((before + start, (before + bottom + after - 1 - bottom_up) / 2, after - 1 - end))
        return reps

    def measure(self, index, exercise, start, bottom, end, frames, fps, s, left, right, lean) -> dict:
        lo, hi = int(np.floor(start)), int(np.ceil(end)) + 1
        rules = self.settings.rules.get(exercise, DEFAULT_RULES[exercise])
        rep = {
            "index": index,
            "start_frame": _frame_at(frames, start), "bottom_frame": _frame_at(frames, bottom),
            "end_frame": _frame_at(frames, end),
            "depth_deg": round(float(s[lo:hi].max()), 1),
            "down_s": round((bottom - start) / fps, 2), "up_s": round((end - bottom) / fps, 2),
            "symmetry_deg": round(float(np.mean(np.abs(left[lo:hi] - right[lo:hi]))), 1),
            "trunk_lean_deg": round(float(np.max(lean[lo:hi])), 1),
        }
        feedback = []
        if rep["depth_deg"] < rules.min_depth:
            feedback.append(f"depth: {rep['depth_deg']:.0f}° < {rules.min_depth:.0f}°, go deeper")
        if rules.max_asymmetry is not None and rep["symmetry_deg"] > rules.max_asymmetry:
            feedback.append(f"symmetry: left and right differ by {rep['symmetry_deg']:.0f}° "
                            f"(> {rules.max_asymmetry:.0f}°)")
        if rules.max_trunk_lean is not None and rep["trunk_lean_deg"] > rules.max_trunk_lean:
            feedback.append(f"trunk lean: {rep['trunk_lean_deg']:.0f}° (> {rules.max_trunk_lean:.0f}°), "
                            "keep the chest up")
        if rep["down_s"] < rules.min_down_s:
            feedback.append(f"tempo: down in {rep['down_s']:.2f} s (< {rules.min_down_s:.1f} s), control the descent")
        rep["feedback"] = feedback
        rep["ok"] = not feedback
        return rep


def minimum_jerk(tau: np.ndarray) -> np.ndarray:
    """The minimum-jerk profile from 0 to 1 over tau in [0, 1] (Flash & Hogan, 1985): how a smooth
    human point-to-point movement goes, zero velocity and acceleration at both ends."""
    tau = np.clip(tau, 0.0, 1.0)
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def fit_phase(y: np.ndarray, step: float = 0.25) -> tuple[float, float]:
    """(t0, t1) of the movement in ``y``: at rest, then rising to its top at the end, fitted as rest,
    then a minimum-jerk rise from t0 to t1 (least squares: t0 and t1 on a grid of
    ``step`` frames, the two levels solved for each pair). Every sample votes, so noise that moves
    a single threshold crossing by frames moves t0 by a fraction of one."""
    t = np.arange(len(y), dtype=np.float64)
    lo, hi = float(np.min(y)), float(np.max(y))
    rise = np.flatnonzero(y > lo + 0.5 * (hi - lo))
    middle = float(rise[0]) if len(rise) else len(y) / 2
    starts = np.arange(0.0, middle, step)
    # y ends at the top of the movement as sampled; where the profile reaches it may lie a little
    # past the last sample (the true top between two frames, or one shifted by noise).
    ends = np.arange(middle + step, len(y) + 2.0, step)
    if not len(starts) or not len(ends):
        return 0.0, float(len(y) - 1)
    t0, t1 = np.meshgrid(starts, ends, indexing="ij")
    m = minimum_jerk((t[None, None, :] - t0[..., None]) / (t1 - t0)[..., None])  # (S, E, N)
    # y ≈ a·(1 − m) + b·m: the 2×2 normal equations per (t0, t1)
    u, v = 1 - m, m
    suu, svv, suv = (u * u).sum(-1), (v * v).sum(-1), (u * v).sum(-1)
    suy, svy = (u * y).sum(-1), (v * y).sum(-1)
    det = suu * svv - suv**2
    a = (svv * suy - suv * svy) / np.where(det > 1e-12, det, np.nan)
    b = (suu * svy - suv * suy) / np.where(det > 1e-12, det, np.nan)
    sse = ((a[..., None] * u + b[..., None] * v - y) ** 2).sum(-1)
    sse = np.where(np.isfinite(sse) & (b > a), sse, np.inf)
    i, k = np.unravel_index(int(np.argmin(sse)), sse.shape)
    return float(t0[i, k]), float(t1[i, k])


def _between(s: np.ndarray, a: int, b: int, low: float) -> int:
    """Where to cut between a rep ending at ``a`` and the next starting at ``b``: the middle of the
    samples at rest (below ``low``) between them, else the lowest point."""
    resting = a + np.flatnonzero(s[a:b] < low)
    if len(resting):
        return int((resting[0] + resting[-1]) // 2)
    return a + int(np.argmin(s[a:b]))


def _last_crossing(s: np.ndarray, level: float) -> float | None:
    """The last index (interpolated) where ``s`` goes from ≤ level to > level."""
    below = np.flatnonzero(s[:-1] <= level)
    below = below[s[below + 1] > level]
    if not len(below):
        return 0.0 if s[0] > level else None
    i = int(below[-1])
    return i + (level - s[i]) / (s[i + 1] - s[i])


def _frame_at(frames: np.ndarray, position: float) -> float:
    """The frame number at a fractional position in the track (frames may have gaps)."""
    return round(float(np.interp(position, np.arange(len(frames)), frames)), 1)
