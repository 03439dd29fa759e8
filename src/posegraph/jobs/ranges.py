"""One video job split into contiguous frame ranges (``posegraph job run --workers N``, a PoseJob
with ``spec.parallelism: N``): which frames each range owns, and how tracks are stitched across
the boundaries once every range is in the store.

    frames:   0 ─────────── a₁ ─────────── a₂ ─────────── T
    range 0:  [owned      )
    range 1:        [warmup)[owned        )
    range 2:                       [warmup)[owned        )

Each range runs detect + pose2d and its own tracker from its warmup start, and stores only
what it read (its own job row: resume point, tracker state, local track ids). Warmup frames
are read by two ranges: the one that owns them, and the next, whose tracker needs a history to
give the same tracks the unsplit run gives. A track alive at a boundary was seen within
``max_gap`` + 1 frames of it, so a warmup of ``2·(max_gap + 1)`` frames lets the fresh tracker
see every such track and forget every one the unsplit tracker had already dropped; the default
(``DEFAULT_OVERLAP``) is larger still. Stitching matches each range's local tracks, in its
warmup frames, to the tracks the owning range found on the same detections (same frame, box
overlap), latest frame first; a local track matched to none is a new track. Track ids are then
numbered by first appearance, as the unsplit tracker numbers them, and whole tracks are lifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..tracking import iou_matrix

# Sampled frames each range reads before the first frame it owns. Tracking's max_gap is 2
# (profiles): 2·(max_gap + 1) = 6 is the least that converges; 8 leaves a margin for a person
# lost and found again right at the boundary. Costs 8 extra frames of detect + pose2d per range.
DEFAULT_OVERLAP = 8
# A warmup person is the owner's person when their boxes overlap this much (the same frame through
# the same stages gives the same box, so in practice the IoU is 1.0).
SAME_PERSON_IOU = 0.5


@dataclass(frozen=True)
class FrameRange:
    index: int   # 0-based
    count: int
    start: int   # first frame index owned
    stop: int    # first frame index past the owned ones
    warmup: int  # first frame index read (start less the overlap, never before 0)
    stop_position: int  # sampled frames from 0 to ``stop``: the reader's max_frames

    @property
    def empty(self) -> bool:
        return self.stop <= self.start

    def describe(self) -> str:
        return f"range {self.index + 1}/{self.count} (frames {self.start}–{self.stop - 1}, reading from {self.warmup})"


def plan_ranges(total: int, *, stride: int, count: int, overlap: int = DEFAULT_OVERLAP) -> list[FrameRange]:
    """``count`` contiguous ranges over ``total`` sampled frames (every ``stride``-th), as even as
    integers allow. Frame indices are the video's, so ranges and the unsplit job store the same rows."""
    if count < 1 or total < 0 or overlap < 0:
        raise ValueError("ranges: count ≥ 1, total ≥ 0, overlap ≥ 0")
    ranges = []
    for index in range(count):
        first, past = index * total // count, (index + 1) * total // count
        ranges.append(FrameRange(index=index, count=count, start=first * stride, stop=past * stride,
                                 warmup=max(0, first - overlap) * stride if index else 0, stop_position=past))
    return ranges


def range_job_id(parent: str, index: int, count: int) -> str:
    return f"{parent}.range-{index + 1}-of-{count}"


class Stitcher:
    """Global track ids for the ranges, taken in order. ``remember`` the owned persons of every
    frame a later range reads as warmup; ``begin_range`` with that range's warmup persons maps
    its local ids; ``global_id`` names each local id of the range's owned persons."""

    def __init__(self, warmup_frames: set[int]) -> None:
        self.warmup_frames = warmup_frames
        self.owned: dict[int, list[tuple[list[float], int]]] = {}  # frame → [(bbox, global id)]
        self.next_id = 0
        self.local: dict[int, int] = {}
        self.continued = 0  # local tracks matched to a track of an earlier range, over all ranges

    def remember(self, frame_index: int, bbox: list[float], global_id: int) -> None:
        if frame_index in self.warmup_frames:
            self.owned.setdefault(frame_index, []).append((bbox, global_id))

    def begin_range(self, warmup: Sequence[tuple[int, int, list[float]]]) -> None:
        """``warmup``: (frame index, local track id, bbox) of the range's warmup persons."""
        import numpy as np  # here, not at the top: the CLI reads DEFAULT_OVERLAP and starts fast

        self.local = {}
        taken: set[int] = set()
        for frame_index, local_id, bbox in sorted(warmup, key=lambda p: -p[0]):
            if local_id in self.local or local_id is None:
                continue
            candidates = [(b, g) for b, g in self.owned.get(frame_index, []) if g not in taken]
            if not candidates:
                continue
            overlaps = iou_matrix(np.asarray([bbox], np.float64), np.asarray([b for b, _ in candidates], np.float64))[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= SAME_PERSON_IOU:
                self.local[local_id] = candidates[best][1]
                taken.add(candidates[best][1])
                self.continued += 1

    def global_id(self, local_id: int | None) -> int | None:
        if local_id is None:
            return None
        if local_id not in self.local:
            self.local[local_id] = self.next_id
            self.next_id += 1
        return self.local[local_id]
