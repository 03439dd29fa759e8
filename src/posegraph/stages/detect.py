"""detect: RTMDet person detector. Frame document → ``persons[*].bbox, score``.

Pre/post-processing reproduces mmdet's test pipeline and ``RTMDetHead.predict``
(keep-ratio resize, pad with 114, per-level top-k, distance decoding, NMS), then
mmpose's top-down filtering (score threshold and a second NMS between persons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..errors import MissingInput
from ..frame import FrameDocument, Person
from ..media.imageio import network_input, pixels_of
from ..models.zoo import RTMDET_STRIDES as STRIDES
from .base import Stage, StageSettings


class DetectSettings(StageSettings):
    model: str = "rtmdet-nano-person"
    score_threshold: float = 0.3  # persons scoring above this are kept (mmpose's bbox_thr)
    nms_iou: float | None = 0.3  # second NMS between persons (mmpose's nms_thr); None: off
    max_persons: int | None = None  # keep the N best-scoring persons; None: all


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, pixel_offset: float = 0.0) -> np.ndarray:
    """Greedy NMS. Returns kept indices, best score first. A box is suppressed when its IoU with a
    kept box is above the threshold. ``pixel_offset=1`` is the legacy "+1" area convention mmpose's
    top-down NMS uses; mmdet uses 0."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + pixel_offset) * (y2 - y1 + pixel_offset)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + pixel_offset)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + pixel_offset)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def grid_priors(size: int) -> list[np.ndarray]:
    """Per level, the (x, y) pixel position of every prior (mmdet ``MlvlPointGenerator``, offset 0)."""
    levels = []
    for stride in STRIDES:
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32), indexing="ij")
        levels.append(np.stack([xs.ravel() * stride, ys.ravel() * stride], axis=1))
    return levels


@dataclass
class DetectBatch:
    images: np.ndarray  # (B, 3, S, S) normalised
    scale_factors: list[tuple[float, float]]  # (w_scale, h_scale) per image


class PersonDetector(Stage):
    """What every detect stage shares, whatever its network (RTMDet here, BlazePose's in
    stages/blazepose.py): which frames it works on, and a passed-through frame's image check."""

    name = "detect"
    splits_batch = True
    Settings = DetectSettings

    def accepts(self, doc) -> bool:
        """Frames whose persons are not known yet. A frame that comes with persons (boxes from the
        previous frame's keypoints: --detect-every) passes through untouched, in one process and
        behind either router, so its detection costs nothing."""
        return isinstance(doc, FrameDocument) and doc.persons is None

    def run(self, docs):
        # A frame passed through still needs its image (pose2d crops it): said here, at the graph's
        # first step, as for any other frame.
        for doc in docs:
            if isinstance(doc, FrameDocument) and doc.persons is not None and doc.image is None \
                    and doc._pixels is None:
                raise MissingInput(self.name, ["image (base64 'data' or 'uri')"])
        return super().run(docs)


class DetectStage(PersonDetector):
    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        p = self.spec.params
        self.size = int(p["input_size"])
        self.priors = grid_priors(self.size)

    def preprocess(self, docs: Sequence[FrameDocument]) -> DetectBatch:
        s = self.size
        images = np.empty((len(docs), 3, s, s), np.float32)
        factors = []
        for i, doc in enumerate(docs):
            img = pixels_of(doc, stage=self.name)
            h, w = img.shape[:2]
            scale = min(s / max(h, w), s / min(h, w))  # mmcv.imrescale, keep_ratio
            new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
            resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            padded = np.full((s, s, 3), self.spec.params["pad_value"], np.uint8)
            padded[:new_h, :new_w] = resized
            images[i] = network_input(padded, self.spec.params)
            factors.append((new_w / w, new_h / h))
        return DetectBatch(images, factors)

    def infer(self, batch: DetectBatch) -> tuple[np.ndarray, np.ndarray]:
        if len(batch.images) == 0:
            return np.zeros((0, 0, 1), np.float32), np.zeros((0, 0, 4), np.float32)
        scores, distances = self._run_network(batch.images)
        return scores, distances

    def decode(self, scores: np.ndarray, distances: np.ndarray, scale_factor: tuple[float, float]):
        """One image's raw outputs → (boxes in original pixels, scores), as mmdet's RTMDet head."""
        p = self.spec.params
        cand_scores, cand_dist, cand_priors = [], [], []
        start = 0
        for priors in self.priors:
            n = len(priors)
            level_scores = scores[start : start + n]
            flat = level_scores.reshape(-1)
            valid = np.nonzero(flat > p["score_thr"])[0]
            order = np.argsort(-flat[valid], kind="stable")[: p["nms_pre"]]
            idx = valid[order]
            prior_idx = idx // level_scores.shape[1]  # one class (person): label is always 0
            cand_scores.append(flat[idx])
            cand_dist.append(distances[start : start + n][prior_idx])
            cand_priors.append(priors[prior_idx])
            start += n
        sc = np.concatenate(cand_scores)
        d = np.concatenate(cand_dist)
        pr = np.concatenate(cand_priors)
        boxes = np.stack([pr[:, 0] - d[:, 0], pr[:, 1] - d[:, 1], pr[:, 0] + d[:, 2], pr[:, 1] + d[:, 3]], 1)
        boxes = np.clip(boxes, 0, self.size)  # the padded input is the image shape mmdet clamps to
        boxes = boxes / np.asarray([*scale_factor, *scale_factor], np.float32)
        wh_ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        boxes, sc = boxes[wh_ok], sc[wh_ok]
        if len(sc):
            keep = nms(boxes, sc, p["nms_iou"])[: p["max_per_img"]]
            boxes, sc = boxes[keep], sc[keep]
        return boxes.astype(np.float32), sc.astype(np.float32)

    def select_persons(self, boxes: np.ndarray, scores: np.ndarray):
        """mmpose's top-down filter: score above threshold, then NMS between persons."""
        st = self.settings
        keep = scores > st.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        if st.nms_iou is not None and len(scores):
            order = nms(boxes, scores, st.nms_iou, pixel_offset=1.0)
            boxes, scores = boxes[order], scores[order]
        if st.max_persons is not None:
            boxes, scores = boxes[: st.max_persons], scores[: st.max_persons]
        return boxes, scores

    def postprocess(self, docs, batch: DetectBatch, outputs) -> list[FrameDocument]:
        scores, distances = outputs
        for i, doc in enumerate(docs):
            boxes, sc = self.decode(scores[i], distances[i], batch.scale_factors[i])
            boxes, sc = self.select_persons(boxes, sc)
            doc.persons = [Person(bbox=[float(v) for v in b], score=float(s)) for b, s in zip(boxes, sc)]
        return list(docs)
