"""Following persons across video frames, so each person's 2D poses form a track to lift.

Greedy IoU matching (MMPoseInferencer's approach) against each live track's last
box, or OKS on keypoints when asked; a track survives ``max_gap`` frames without a
match so a single missed detection does not split it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .frame import FrameDocument, TrackDocument, TrackFrame

# COCO keypoint sigmas (pycocotools), for OKS.
_COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def oks_matrix(kp_a: np.ndarray, kp_b: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    """Object keypoint similarity between (N, 17, ≥2) and (M, 17, ≥2), scaled by the areas of ``b``."""
    if len(kp_a) == 0 or len(kp_b) == 0:
        return np.zeros((len(kp_a), len(kp_b)))
    d2 = ((kp_a[:, None, :, :2] - kp_b[None, :, :, :2]) ** 2).sum(-1)
    var = (2 * _COCO_SIGMAS) ** 2
    e = d2 / var / (np.maximum(area_b, 1e-9)[None, :, None] + np.spacing(1)) / 2
    return np.exp(-e).mean(-1)


def box_from_keypoints(keypoints, width: int, height: int, *, min_score: float,
                       expand: float = 1.25) -> list[float] | None:
    """Where to look for a person in the next frame, from this frame's keypoints (17 × [x, y,
    score]): the extent of the keypoints scoring at least ``min_score``, grown by ``expand`` about
    its centre (rtmlib's and MMDeploy's PoseTracker grow it by 1.25), clipped to the image. None
    when fewer than three keypoints are that sure, or the mean score of all is below it: the
    person is lost, and the detector is needed."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 3)
    sure = kp[kp[:, 2] >= min_score]
    if len(sure) < 3 or kp[:, 2].mean() < min_score:
        return None
    (x1, y1), (x2, y2) = sure[:, :2].min(0), sure[:, :2].max(0)
    cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * expand / 2, (y2 - y1) * expand / 2
    box = [max(cx - half_w, 0.0), max(cy - half_h, 0.0),
           min(cx + half_w, float(width)), min(cy + half_h, float(height))]
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    return [float(v) for v in box]


@dataclass
class _Track:
    track_id: int
    last_step: int
    bbox: np.ndarray
    keypoints: np.ndarray | None


@dataclass
class Tracker:
    """Call :meth:`update` once per processed frame, in order. Gaps count processed frames, so
    ``--stride`` does not change how long a track may miss its person."""

    threshold: float = 0.3
    use_oks: bool = False
    max_gap: int = 2
    next_id: int = 0
    step: int = 0
    live: list[_Track] = field(default_factory=list)

    def live_ids(self) -> set[int]:
        return {t.track_id for t in self.live}

    def state(self) -> dict:
        """Everything needed to continue exactly where this tracker is (a resumed job relies on it)."""
        return {
            "next_id": self.next_id,
            "step": self.step,
            "live": [{"track_id": t.track_id, "last_step": t.last_step, "bbox": t.bbox.tolist(),
                      "keypoints": None if t.keypoints is None else t.keypoints.tolist()} for t in self.live],
        }

    @classmethod
    def for_settings(cls, tracking, state: dict | None = None) -> "Tracker":
        """The tracker a profile's ``tracking`` settings describe (config.TrackingSettings), from
        ``state`` when there is one."""
        return cls.from_state(state, threshold=tracking.threshold, use_oks=tracking.method == "oks",
                              max_gap=tracking.max_gap)

    @classmethod
    def from_state(cls, state: dict | None, **settings) -> "Tracker":
        tracker = cls(**settings)
        if state:
            tracker.next_id, tracker.step = state["next_id"], state["step"]
            tracker.live = [_Track(t["track_id"], t["last_step"], np.asarray(t["bbox"], np.float64),
                                   None if t["keypoints"] is None else np.asarray(t["keypoints"]))
                            for t in state["live"]]
        return tracker

    def update(self, doc: FrameDocument) -> None:
        """Give every person in ``doc`` a ``track_id`` (new or continued)."""
        self.step += 1
        step = self.step
        self.live = [t for t in self.live if step - t.last_step <= self.max_gap + 1]
        persons = doc.persons or []
        boxes = np.asarray([p.bbox for p in persons], np.float64).reshape(-1, 4)
        if self.use_oks and persons and all(p.keypoints2d for p in persons) and self.live:
            kps = np.asarray([p.keypoints2d for p in persons])
            prev = np.asarray([t.keypoints if t.keypoints is not None else np.zeros((17, 3)) for t in self.live])
            prev_boxes = np.asarray([t.bbox for t in self.live])
            areas = (prev_boxes[:, 2] - prev_boxes[:, 0]) * (prev_boxes[:, 3] - prev_boxes[:, 1])
            similarity = oks_matrix(kps, prev, areas)
        else:
            similarity = iou_matrix(boxes, np.asarray([t.bbox for t in self.live]).reshape(-1, 4))
        assigned: dict[int, _Track] = {}
        if similarity.size:
            sim = similarity.copy()
            while True:
                i, j = np.unravel_index(np.argmax(sim), sim.shape)
                if sim[i, j] <= self.threshold:
                    break
                assigned[i] = self.live[j]
                sim[i, :] = -1
                sim[:, j] = -1
        for i, person in enumerate(persons):
            track = assigned.get(i)
            if track is None:
                track = _Track(self.next_id, step, boxes[i], None)
                self.next_id += 1
                self.live.append(track)
            track.last_step, track.bbox = step, boxes[i]
            track.keypoints = np.asarray(person.keypoints2d) if person.keypoints2d else None
            person.track_id = track.track_id


def tracks_from_frames(docs: list[FrameDocument]) -> list[TrackDocument]:
    """Group tracked persons into track documents (frames in order), for lift3d."""
    by_id: dict[int, list[TrackFrame]] = {}
    size: dict[int, tuple[int, int]] = {}
    for doc in docs:
        for person in doc.persons or []:
            if person.track_id is None or person.keypoints2d is None:
                continue
            by_id.setdefault(person.track_id, []).append(
                TrackFrame(frame_index=doc.frame_index or 0, bbox=person.bbox, score=person.score,
                           keypoints2d=person.keypoints2d, landmarks=person.landmarks)
            )
            size[person.track_id] = (doc.width, doc.height)
    return [
        TrackDocument(track_id=tid, width=size[tid][0], height=size[tid][1], frames=frames)
        for tid, frames in sorted(by_id.items())
    ]


def apply_tracks(docs: list[FrameDocument], tracks: list[TrackDocument]) -> None:
    """Copy each track's lifted ``keypoints3d`` back onto the persons of the frame documents."""
    lifted = {(t.track_id, f.frame_index): f.keypoints3d for t in tracks for f in t.frames}
    for doc in docs:
        for person in doc.persons or []:
            k3 = lifted.get((person.track_id, doc.frame_index or 0))
            if k3 is not None:
                person.keypoints3d = k3
