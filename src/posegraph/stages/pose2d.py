"""pose2d: RTMPose top-down. Frame document with ``persons[*].bbox`` → ``persons[*].keypoints2d`` (COCO-17).

Reproduces mmpose's ``inference_topdown``: bbox → centre/scale (padding 1.25,
aspect ratio fixed to the input), affine crop, SimCC argmax decoding, optional
flip test, and the mapping back to image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..errors import MissingInput
from ..frame import FrameDocument
from ..media.imageio import network_input, pixels_of
from .base import Stage, StageSettings


class Pose2dSettings(StageSettings):
    model: str = "rtmpose-m"
    # mmpose's configs test with flip on: two forward passes per person for a small accuracy gain.
    flip_test: bool = False
    batch_size: int = 32


def box_to_center_scale(box: np.ndarray, padding: float, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    box = np.asarray(box, np.float32)
    center = (box[2:] + box[:2]) * 0.5
    w, h = (box[2:] - box[:2]) * padding
    # Grow the shorter side so the crop has the network's aspect ratio (w / h).
    scale = np.array([w, w / aspect_ratio] if w > h * aspect_ratio else [h * aspect_ratio, h], np.float32)
    return center.astype(np.float32), scale


def warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Affine map from the box (centre, scale) to the crop, as mmpose's ``get_warp_matrix`` (rot=0)."""
    dst_w, dst_h = output_size
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([scale[0] * -0.5, 0.0])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = np.array([dst_w * 0.5, dst_h * 0.5]) + np.array([dst_w * -0.5, 0.0])
    # The third point: the first two rotated by 90° about the second, fixing the aspect ratio.
    for pts in (src, dst):
        direction = pts[0] - pts[1]
        pts[2] = pts[1] + np.r_[-direction[1], direction[0]]
    return cv2.getAffineTransform(src, dst)


def simcc_maximum(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, Wx), (N, K, Wy) → locations (N, K, 2) in SimCC bins, scores (N, K).
    A keypoint whose best logit is ≤ 0 gets location -1 (mmpose's convention)."""
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1))
    locs[scores <= 0.0] = -1
    return locs, scores


@dataclass
class Pose2dBatch:
    crops: np.ndarray  # (P, 3, h, w)
    centers: np.ndarray  # (P, 2)
    scales: np.ndarray  # (P, 2)
    owners: list[tuple[int, int]]  # (document index, person index) per crop


class Pose2dStage(Stage):
    name = "pose2d"
    splits_batch = True
    Settings = Pose2dSettings

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        p = self.spec.params
        self.input_size = tuple(p["input_size"])  # (w, h)
        self.flip_indices = np.asarray(p["flip_indices"])

    def preprocess(self, docs: Sequence[FrameDocument]) -> Pose2dBatch:
        w, h = self.input_size
        crops, centers, scales, owners = [], [], [], []
        for d, doc in enumerate(docs):
            if doc.persons is None:
                raise MissingInput(self.name, ["persons (run detect first, or give persons with bbox)"])
            if not doc.persons:
                continue  # nobody in this frame: the document passes through unchanged
            img = pixels_of(doc, stage=self.name)
            for p, person in enumerate(doc.persons):
                center, scale = box_to_center_scale(np.asarray(person.bbox), self.spec.params["bbox_padding"], w / h)
                crop = cv2.warpAffine(img, warp_matrix(center, scale, (w, h)), (w, h), flags=cv2.INTER_LINEAR)
                crops.append(network_input(crop, self.spec.params))
                centers.append(center)
                scales.append(scale)
                owners.append((d, p))
        if not crops:
            empty = np.zeros((0, 2), np.float32)
            return Pose2dBatch(np.zeros((0, 3, h, w), np.float32), empty, empty, [])
        return Pose2dBatch(np.stack(crops), np.stack(centers), np.stack(scales), owners)

    def infer(self, batch: Pose2dBatch) -> tuple[np.ndarray, np.ndarray]:
        if not batch.owners:
            return np.zeros((0, 17, 0), np.float32), np.zeros((0, 17, 0), np.float32)
        simcc_x, simcc_y = self._run_network(batch.crops)
        if self.settings.flip_test:
            flip_x, flip_y = self._run_network(np.ascontiguousarray(batch.crops[..., ::-1]))
            # Mirror back: swap left/right joints and reverse the x bins.
            simcc_x = (simcc_x + flip_x[:, self.flip_indices, ::-1]) * 0.5
            simcc_y = (simcc_y + flip_y[:, self.flip_indices]) * 0.5
        return simcc_x, simcc_y

    def postprocess(self, docs, batch: Pose2dBatch, outputs) -> list[FrameDocument]:
        for doc in docs:  # no stage after this one reads pixels (FrameDocument.keep_image)
            if doc.image is not None and doc.image.data is not None and not doc.keep_image:
                doc.image = None
        if not batch.owners:
            return list(docs)
        simcc_x, simcc_y = outputs
        locs, scores = simcc_maximum(simcc_x, simcc_y)
        locs /= self.spec.params["simcc_split_ratio"]
        size = np.asarray(self.input_size, np.float32)
        # Crop pixels → image pixels (mmpose's TopdownPoseEstimator.add_pred_to_datasample).
        keypoints = locs / size * batch.scales[:, None] + batch.centers[:, None] - 0.5 * batch.scales[:, None]
        for (d, p), kp, sc in zip(batch.owners, keypoints, scores):
            docs[d].persons[p].keypoints2d = [[float(x), float(y), float(s)] for (x, y), s in zip(kp, sc)]
        return list(docs)
