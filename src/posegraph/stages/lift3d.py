"""lift3d: 2D → 3D lifting on Human3.6M-17 joints (VideoPose3D or MotionBERT).

Input: frame documents (each person lifted from that one frame, as for a still
image) or track documents (one person over T frames, lifted as a sequence, as
the video path needs). Output: ``keypoints3d`` in metres, root-relative.

Reproduces mmpose's lifting path (``Pose3DInferencer``): COCO → H36M conversion,
the 2D normalisation by each box and the H36M dataset statistics, the image-size
normalisation of the codec, edge-replicated temporal windows, and decoding.
VideoPose3D runs in its dilated layout: a whole track in one pass (see models/nets/videopose3d.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import MissingInput
from ..frame import FrameDocument, TrackDocument
from ..keypoints import coco_to_h36m
from ..models.engine import load_network
from ..motion.root import place_roots
from ..motion.smoothing import SmoothingSettings, smooth
from ..uri import local_path
from .base import Stage, StageSettings


class Lift3dSettings(StageSettings):
    model: str = "videopose3d-243"
    # Map each person to the scale/position of H36M training images before lifting (mmpose default).
    normalize_2d: bool = True
    # MotionBERT's configs test with flip averaging; None: the model's default.
    flip_test: bool | None = None
    batch_size: int = 64
    # Temporal smoothing of each track: of the 2D it lifts from and of the 3D it returns
    # (posegraph.motion.smoothing; a single frame is never smoothed).
    smoothing: SmoothingSettings = SmoothingSettings()


@dataclass
class LiftBatch:
    sequences: list[np.ndarray] = field(default_factory=list)  # each (T, 17, 2), codec-normalised
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (w, h) per sequence
    owners: list[tuple[int, int | None]] = field(default_factory=list)  # (doc, person) or (doc, None)
    frame_index: list[np.ndarray | None] = field(default_factory=list)  # a track's frame numbers, else None
    # positions in the sequence to lift (a track's lift_frames); None: all
    only: list[np.ndarray | None] = field(default_factory=list)


class Lift3dStage(Stage):
    name = "lift3d"
    Settings = Lift3dSettings

    # VideoPose3D: tracks up to this many frames are lifted window by window (strided layout),
    # longer ones in one pass (dilated). Measured crossover ~7 frames (docs/models.md).
    WINDOWED_MAX_FRAMES = 8

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        p = self.spec.params
        self.seq_len = int(p["seq_len"])
        self.flip_indices = np.asarray(p["flip_indices"])
        flip = self.settings.flip_test
        self.flip_test = p.get("flip_test", False) if flip is None else flip
        self.window_network = None

    def accepts(self, doc) -> bool:
        if isinstance(doc, FrameDocument):
            return not doc.per_track_3d  # its tracks are lifted whole later: one frame alone is wasted work
        return isinstance(doc, TrackDocument)

    def _load_extra(self, uri: str, **kwargs) -> None:
        if self.spec.family != "videopose3d":
            return

        if uri.endswith(".onnx"):
            # An archive may carry the window layout beside the sequence one; without it,
            # every track uses the sequence layout (same numbers, slower for single frames).
            window = uri[: -len(".onnx")] + ".window.onnx"

            path = local_path(window)
            if path is None or not path.is_file():
                return
            uri = window
        self.window_network = load_network(self.spec, uri, variant="window", **kwargs)

    # -- preprocessing ---------------------------------------------------------------------------
    def normalise(self, keypoints2d: np.ndarray, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """(T, 17, ≥2) COCO image pixels + (T, 4) boxes → (T, 17, 2) H36M, codec-normalised."""
        kp = coco_to_h36m(np.asarray(keypoints2d, np.float64)[..., :2])
        if self.settings.normalize_2d:
            p = self.spec.params
            boxes = np.asarray(boxes, np.float64)
            center = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
            scale = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None, None]
            kp = (kp - center) / scale * p["bbox_scale"] + np.asarray(p["bbox_center"])
        # The codec: image centre at 0, x in [-1, 1] across the image width.
        return ((kp - [width / 2, height / 2]) / (width / 2)).astype(np.float32)

    def preprocess(self, docs: Sequence[FrameDocument | TrackDocument]) -> LiftBatch:
        batch = LiftBatch()
        for d, doc in enumerate(docs):
            if isinstance(doc, TrackDocument):
                kp = np.asarray([f.keypoints2d for f in doc.frames])
                boxes = np.asarray([f.bbox for f in doc.frames])
                frames = np.asarray([f.frame_index for f in doc.frames])
                # Smoothed in the codec's units (x in [-1, 1] across the image), which are on the
                # scale of the 3D output's metres: one set of 1€ parameters fits both.
                sequence = smooth(self.normalise(kp, boxes, doc.width, doc.height), self.settings.smoothing, frames)
                batch.sequences.append(sequence.astype(np.float32))
                batch.image_sizes.append((doc.width, doc.height))
                batch.owners.append((d, None))
                batch.frame_index.append(frames)
                batch.only.append(None if doc.lift_frames is None else
                                  np.flatnonzero(np.isin(frames, doc.lift_frames)))
                continue
            if doc.persons is None:
                raise MissingInput(self.name, ["persons (run detect and pose2d first)"])
            lacking = [f"persons[{i}].keypoints2d" for i, p in enumerate(doc.persons) if p.keypoints2d is None]
            if lacking:
                raise MissingInput(self.name, lacking[:3] + (["…"] if len(lacking) > 3 else []))
            if doc.persons and (doc.width is None or doc.height is None):
                raise MissingInput(self.name, ["width", "height"])
            for i, person in enumerate(doc.persons):
                seq = self.normalise(np.asarray([person.keypoints2d]), np.asarray([person.bbox]), doc.width,
                                     doc.height)
                batch.sequences.append(seq)
                batch.image_sizes.append((doc.width, doc.height))
                batch.owners.append((d, i))
                batch.frame_index.append(None)
                batch.only.append(None)
        return batch

    # -- inference -------------------------------------------------------------------------------
    def infer(self, batch: LiftBatch) -> list[np.ndarray]:
        if not batch.sequences:
            return []
        if self.spec.family == "videopose3d":
            return self._infer_tcn(batch.sequences, batch.only)
        return self._infer_motionbert(batch.sequences)

    def _infer_tcn(self, sequences: list[np.ndarray], only: list[np.ndarray | None]) -> list[np.ndarray]:
        """Each output frame t sees frames t-121 … t+121 of its sequence, edges replicated (mmpose's
        padding). Short sequences (single frames above all) and a track's few ``lift_frames`` go
        window by window through the strided layout, all in one batch (those outputs only); each
        long one goes through the dilated layout in one pass. Measured for a live frame: one window
        6 ms, the dilated pass over its 122 frames of context 106 ms."""
        half = (self.seq_len - 1) // 2
        outputs: list[np.ndarray | None] = [None] * len(sequences)
        windows, owners = [], []
        for i, (seq, wanted) in enumerate(zip(sequences, only)):
            padded = np.concatenate([np.repeat(seq[:1], half, 0), seq, np.repeat(seq[-1:], half, 0)])
            if wanted is not None:
                windows.extend(padded[t : t + self.seq_len] for t in wanted)
                owners.append((i, len(wanted)))
            elif self.window_network is not None and len(seq) <= self.WINDOWED_MAX_FRAMES:
                windows.extend(padded[t : t + self.seq_len] for t in range(len(seq)))
                owners.append((i, len(seq)))
            else:
                (out,) = self._run_network(padded[None])
                outputs[i] = out[0]
        if windows:  # (W, 1, 17, 3); without the window layout, the dilated one over 243 frames gives 1
            (out,) = self._run_network(np.stack(windows), network=self.window_network)
            start = 0
            for i, n in owners:
                outputs[i] = out[start : start + n, 0]
                start += n
        return outputs

    def _motionbert_pass(self, clips: np.ndarray) -> np.ndarray:
        """clips: (B, T, 17, 2) → (B, T, 17, 3), with flip averaging when enabled."""
        visible = np.ones(clips.shape[:-1] + (1,), np.float32)  # mmpose's inferencer passes visibility 1
        x = np.concatenate([clips, visible], -1)
        (out,) = self._run_network(x)
        if self.flip_test:
            flipped = x[:, :, self.flip_indices].copy()
            flipped[..., 0] *= -1
            (out_f,) = self._run_network(flipped)
            out_f = out_f[:, :, self.flip_indices].copy()
            out_f[..., 0] *= -1
            out = (out + out_f) * 0.5
        return out

    def _infer_motionbert(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """MotionBERT maps a clip of T ≤ 243 frames to T outputs; longer tracks go in 243-frame
        clips. Clips of equal length share a batch (single frames are all length 1)."""
        pieces: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        for i, seq in enumerate(sequences):
            for start in range(0, len(seq), self.seq_len):
                clip = seq[start : start + self.seq_len]
                pieces.setdefault(len(clip), []).append((i, start, clip))
        outputs = [np.zeros((len(s), 17, 3), np.float32) for s in sequences]
        for items in pieces.values():
            result = self._motionbert_pass(np.stack([clip for _, _, clip in items]))
            for (i, start, clip), out in zip(items, result):
                outputs[i][start : start + len(clip)] = out
        return outputs

    # -- postprocessing --------------------------------------------------------------------------
    def to_metres(self, raw: np.ndarray, width: int) -> np.ndarray:
        """Network output → metres, root-relative (each model's mmpose decoder)."""
        if self.spec.family == "motionbert":
            # MotionBERTLabel.decode (rootrel): the root joint is *set* to zero (the network's other
            # joints are already root-relative), normalised units × w/2 → pixel-like units, × the
            # codec's depth factor (4 without camera intrinsics), mm → m.
            raw = raw.copy()
            raw[:, 0] = 0.0
            return raw * (width / 2) * 4.0 / 1000.0
        # VideoPose3D predicts root-relative poses; subtracting its (near-zero) root makes it exact.
        return raw - raw[:, :1]

    def postprocess(self, docs, batch: LiftBatch, outputs: list[np.ndarray]):
        for (d, p), (width, _), frames, wanted, raw in zip(batch.owners, batch.image_sizes, batch.frame_index,
                                                           batch.only, outputs):
            metres = self.to_metres(np.asarray(raw, np.float64), width)
            if wanted is not None:
                # Only these frames were lifted: the 3D smoothing, which needs the 3D of the frames
                # around them, is left out (their 2D was smoothed as a track's is).
                if self.spec.family != "videopose3d":
                    metres = metres[wanted]
                for position, k3 in zip(wanted, metres):
                    docs[d].frames[position].keypoints3d = k3.tolist()
            elif p is None:
                metres = smooth(metres, self.settings.smoothing, frames)
                for frame, k3 in zip(docs[d].frames, metres):
                    frame.keypoints3d = k3.tolist()
            else:
                docs[d].persons[p].keypoints3d = metres[0].tolist()
        place_roots(docs, self.settings.smoothing)
        return list(docs)
