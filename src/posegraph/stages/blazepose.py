"""The blazepose family: Google's BlazePose (MediaPipe Pose) as posegraph's three stages.

    detect  BlazePose's detector (224 × 224, SSD anchors): each person's box and score, and the
            rotated square around the whole body its landmark model crops (``roi``), from the
            detector's hip-centre and body-size points, as MediaPipe's pose graph does.
    pose2d  The full landmark model (256 × 256) on each roi (or, for a box carried from the last
            frame's keypoints, the square around it): 17 COCO keypoints, and all 33 landmarks with
            their metric "world" coordinates in ``landmarks``.
    lift3d  No network: the world landmarks, as Human3.6M-17 root-relative metres (the COCO
            joints through keypoints.coco_to_h36m, as every 2D → 3D path here), smoothed over a
            track like the other lifting models.

Each is the family's preprocess / infer / postprocess behind the same stage contract; which class
a stage gets follows from its model's family (stages.stage_class). MediaPipe's own extras are left
out: the heatmap refinement of the landmarks and the segmentation mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from ..errors import MissingInput
from ..frame import FrameDocument, Landmarks, Person, TrackDocument
from ..keypoints import BLAZEPOSE_TO_COCO, coco_to_h36m
from ..media.imageio import pixels_of
from ..motion.root import place_roots
from ..motion.smoothing import smooth
from .base import Stage
from .detect import PersonDetector
from .lift3d import Lift3dSettings
from .pose2d import Pose2dSettings


def ssd_anchors(size: int, strides: Sequence[int], per_location: int) -> np.ndarray:
    """(N, 2) anchor centres, normalised: consecutive layers of one stride share a grid (MediaPipe's
    SsdAnchorsCalculator with fixed-size anchors), ``per_location`` anchors per layer."""
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        cells = math.ceil(size / strides[i])
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], -1)
        centres.append(np.repeat(grid, per_location * (j - i), axis=0))
        i = j
    return np.concatenate(centres).astype(np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, iou: float):
    """MediaPipe's weighted non-maximum suppression: each kept detection is the score-weighted mean
    of the boxes (and points) that overlap it above ``iou``. [(score, box, points)], best first."""
    order = list(np.argsort(-scores, kind="stable"))
    kept = []
    while order:
        best = order[0]
        rest = np.asarray(order)
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        overlap = inter / np.maximum(area[best] + area[rest] - inter, 1e-12)
        members = rest[overlap > iou]
        weights = scores[members][:, None]
        kept.append((float(scores[best]), (boxes[members] * weights).sum(0) / weights.sum(),
                     (points[members] * weights[:, :, None]).sum(0) / weights.sum()))
        order = [k for k in order if k not in set(members.tolist())]
    return kept


def roi_from_points(hips: np.ndarray, body: np.ndarray, scale: float) -> list[float]:
    """[cx, cy, side, rotation]: centred on the hips, the side twice the hip-to-body-point distance
    times ``scale``, rotated so the body point is straight up (MediaPipe's alignment points)."""
    side = 2.0 * float(np.linalg.norm(body - hips)) * scale
    rotation = math.pi / 2 - math.atan2(-(body[1] - hips[1]), body[0] - hips[0])
    rotation = (rotation + math.pi) % (2 * math.pi) - math.pi
    return [float(hips[0]), float(hips[1]), side, rotation]


def roi_from_box(box: Sequence[float]) -> list[float]:
    """An upright square around a box (a box carried from the last frame's keypoints)."""
    x1, y1, x2, y2 = box
    return [(x1 + x2) / 2, (y1 + y2) / 2, float(max(x2 - x1, y2 - y1)), 0.0]


def roi_affine(roi: Sequence[float], size: int) -> np.ndarray:
    """2 × 3: crop pixels (0..size) → image pixels, for a rotated square roi."""
    cx, cy, side, rotation = roi
    c, s = math.cos(rotation), math.sin(rotation)
    a = np.array([[c, -s], [s, c]]) * (side / size)
    return np.c_[a, np.array([cx, cy]) - a @ np.array([size / 2, size / 2])]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80, 80)))


@dataclass
class LetterboxBatch:
    images: np.ndarray                                       # (B, S, S, 3), [-1, 1]
    placements: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # scale, left, top, w, h


class BlazePoseDetectStage(PersonDetector):
    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        p = self.spec.params
        self.size = int(p["input_size"])
        self.anchors = ssd_anchors(self.size, p["strides"], p["anchors_per_location"])

    def preprocess(self, docs: Sequence[FrameDocument]) -> LetterboxBatch:
        s = self.size
        batch = LetterboxBatch(np.zeros((len(docs), s, s, 3), np.float32))
        for i, doc in enumerate(docs):
            rgb = cv2.cvtColor(pixels_of(doc, stage=self.name), cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            scale = s / max(h, w)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            left, top = (s - nw) // 2, (s - nh) // 2
            resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            batch.images[i, top : top + nh, left : left + nw] = resized.astype(np.float32) / 127.5 - 1.0
            batch.images[i, :top], batch.images[i, top + nh :] = -1.0, -1.0  # black, in [-1, 1]
            batch.images[i, :, :left], batch.images[i, :, left + nw :] = -1.0, -1.0
            batch.placements.append((scale, left, top, w, h))
        return batch

    def infer(self, batch: LetterboxBatch):
        if not len(batch.images):
            return np.zeros((0, len(self.anchors), 12), np.float32), np.zeros((0, len(self.anchors), 1), np.float32)
        raw, logits = self._run_network(batch.images)
        return raw, logits

    def decode(self, raw: np.ndarray, logits: np.ndarray, placement) -> list[Person]:
        """One image's outputs → persons: decoded against the anchors, weighted NMS, out of the
        letterbox into image pixels, the best ``max_persons``."""
        s, p = self.size, self.spec.params
        scores = _sigmoid(logits[:, 0])
        keep = scores > self.settings.score_threshold
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        centres = raw[:, :2] / s + anchors
        half = raw[:, 2:4] / s / 2
        boxes = np.concatenate([centres - half, centres + half], -1)
        points = raw[:, 4 : 4 + 2 * p["num_keypoints"]].reshape(-1, p["num_keypoints"], 2) / s + anchors[:, None]
        iou = self.settings.nms_iou if self.settings.nms_iou is not None else p["nms_iou"]
        scale, left, top, w, h = placement
        persons = []
        for score, _, pts in weighted_nms(boxes, scores, points, iou)[: self.settings.max_persons]:
            pts = (pts * s - [left, top]) / scale
            roi = roi_from_points(pts[0], pts[1], float(self.spec.params.get("roi_scale", 1.25)))
            corners = (roi_affine(roi, 1) @ np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]).T).T
            x1, y1 = np.clip(corners.min(0), 0, [w - 1, h - 1])
            x2, y2 = np.clip(corners.max(0), 1, [w, h])
            if x2 <= x1 or y2 <= y1:
                continue
            persons.append(Person(bbox=[float(x1), float(y1), float(x2), float(y2)], score=score, roi=roi))
        return persons

    def postprocess(self, docs, batch: LetterboxBatch, outputs) -> list[FrameDocument]:
        raw, logits = outputs
        for doc, r, lg, placement in zip(docs, raw, logits, batch.placements):
            doc.persons = self.decode(r, lg, placement)
        return list(docs)


@dataclass
class CropBatch:
    crops: np.ndarray                                   # (P, S, S, 3), [0, 1]
    affines: list[np.ndarray] = field(default_factory=list)  # crop → image, per crop
    rois: list[list[float]] = field(default_factory=list)
    owners: list[tuple[int, int]] = field(default_factory=list)


class BlazePosePose2dStage(Stage):
    name = "pose2d"
    splits_batch = True
    Settings = Pose2dSettings

    def preprocess(self, docs: Sequence[FrameDocument]) -> CropBatch:
        s = int(self.spec.params["input_size"])
        crops, batch = [], CropBatch(np.zeros((0, s, s, 3), np.float32))
        for d, doc in enumerate(docs):
            if doc.persons is None:
                raise MissingInput(self.name, ["persons (run detect first, or give persons with bbox)"])
            if not doc.persons:
                continue
            rgb = cv2.cvtColor(pixels_of(doc, stage=self.name), cv2.COLOR_BGR2RGB)
            for p, person in enumerate(doc.persons):
                roi = person.roi or roi_from_box(person.bbox)
                affine = roi_affine(roi, s)
                crop = cv2.warpAffine(rgb, cv2.invertAffineTransform(affine), (s, s), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                crops.append(crop.astype(np.float32) / 255.0)
                batch.affines.append(affine)
                batch.rois.append(roi)
                batch.owners.append((d, p))
        if crops:
            batch.crops = np.stack(crops)
        return batch

    def infer(self, batch: CropBatch):
        if not batch.owners:
            return None
        landmarks, flag, _segmentation, _heatmap, world = self._run_network(batch.crops)
        return landmarks, flag, world

    def postprocess(self, docs, batch: CropBatch, outputs) -> list[FrameDocument]:
        for doc in docs:  # no stage after this one reads pixels (FrameDocument.keep_image)
            if doc.image is not None and doc.image.data is not None and not doc.keep_image:
                doc.image = None
        if outputs is None:
            return list(docs)
        n = int(self.spec.params["landmarks"])
        landmarks, flags, worlds = outputs
        for (d, p), affine, roi, raw, flag, world in zip(batch.owners, batch.affines, batch.rois, landmarks,
                                                         flags, worlds):
            raw = raw.reshape(-1, 5)[:n]
            xy = raw[:, :2] @ affine[:, :2].T + affine[:, 2]
            z = raw[:, 2] * (roi[2] / float(self.spec.params["input_size"]))
            visibility = _sigmoid(raw[:, 3])
            present = float(flag.ravel()[0])  # the model's "a pose is in this crop", already 0-1
            # world landmarks are in the crop's axes: turned back by the roi's rotation
            c, s = math.cos(roi[3]), math.sin(roi[3])
            w = world.reshape(-1, 3)[:n].astype(np.float64)
            w[:, :2] = w[:, :2] @ np.array([[c, s], [-s, c]])
            person = docs[d].persons[p]
            coco = list(BLAZEPOSE_TO_COCO)
            person.keypoints2d = [[float(x), float(y), float(v * present)]
                                  for (x, y), v in zip(xy[coco], visibility[coco])]
            person.landmarks = Landmarks(image=np.c_[xy, z, visibility].tolist(), world=w.tolist())
        return list(docs)


def world_to_h36m(world: np.ndarray) -> np.ndarray:
    """(..., 33, 3) world landmarks → (..., 17, 3) Human3.6M joints, root-relative metres."""
    h36m = coco_to_h36m(np.asarray(world, np.float64)[..., list(BLAZEPOSE_TO_COCO), :])
    return h36m - h36m[..., :1, :]


class BlazePoseLift3dStage(Stage):
    """3D from the world landmarks pose2d wrote; its catalogue entry names the landmark model, but
    nothing runs here (load keeps no network)."""

    name = "lift3d"
    Settings = Lift3dSettings

    def load(self, checkpoint_uri: str | None = None, device: str = "cpu", **kwargs) -> "BlazePoseLift3dStage":
        return self

    def accepts(self, doc) -> bool:
        if isinstance(doc, FrameDocument):
            return not doc.per_track_3d
        return isinstance(doc, TrackDocument)

    def preprocess(self, docs):
        items = []
        for d, doc in enumerate(docs):
            if isinstance(doc, TrackDocument):
                missing = [f"frames[{i}].landmarks" for i, f in enumerate(doc.frames) if f.landmarks is None]
                if missing:
                    raise MissingInput(self.name, missing[:3] + (["… (lift with a blazepose pose2d)"]))
                wanted = None if doc.lift_frames is None else set(doc.lift_frames)
                items.append((d, None, np.asarray([f.landmarks.world for f in doc.frames]),
                              np.asarray([f.frame_index for f in doc.frames]), wanted))
                continue
            for i, person in enumerate(doc.persons or []):
                if person.landmarks is None:
                    raise MissingInput(self.name, [f"persons[{i}].landmarks (lift with a blazepose pose2d)"])
                items.append((d, i, np.asarray([person.landmarks.world]), None, None))
        return items

    def infer(self, items):
        return [world_to_h36m(world) for _, _, world, _, _ in items]

    def postprocess(self, docs, items, outputs):
        for (d, p, _, frames, wanted), k3 in zip(items, outputs):
            if p is not None:
                docs[d].persons[p].keypoints3d = k3[0].tolist()
                continue
            if wanted is None:
                k3 = smooth(k3, self.settings.smoothing, frames)
            for frame, joints in zip(docs[d].frames, k3):
                if wanted is None or frame.frame_index in wanted:
                    frame.keypoints3d = joints.tolist()
        place_roots(docs, self.settings.smoothing)
        return list(docs)
