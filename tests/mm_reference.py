"""The OpenMMLab reference side of the fidelity tests.

posegraph itself never imports mmcv/mmdet/mmpose. The tests build the real
models from the configs shipped inside the mmdet/mmpose packages and run their
own inference APIs next to ours.

mmcv: we install ``mmcv-lite`` (pure Python, seconds) instead of compiling full
mmcv (~30 min on 2 cores). mmdet/mmpose import ``mmcv._ext`` at module import
time for many ops, but this pipeline only *calls* ``nms``. ``install_mmcv_ext``
registers a stand-in ``mmcv._ext`` whose ``nms`` is torchvision's (an
independent implementation of the same greedy NMS, so the fidelity test does
not compare our NMS with itself); every other op raises if it is ever called.
See docs/models.md for the measurement behind this choice.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
import warnings
from pathlib import Path


class _MmcvExtStandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing_op(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is not provided by the mmcv-lite stand-in")

        missing_op.__name__ = name
        return missing_op

    @staticmethod
    def nms(boxes, scores, iou_threshold: float, offset: int = 0):
        import torchvision

        assert offset == 0, "mmdet 3.x calls nms with offset=0"
        return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def install_mmcv_ext() -> None:
    if "mmcv._ext" not in sys.modules:
        module = _MmcvExtStandIn("mmcv._ext")
        # mmengine probes for compiled mmcv with pkgutil.find_loader, which needs a spec.
        module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", loader=None)
        sys.modules["mmcv._ext"] = module


def mm_available() -> str | None:
    """None if the reference stack imports, else the reason (printed by the skip)."""
    try:
        install_mmcv_ext()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mmdet.apis  # noqa: F401
            import mmpose.apis  # noqa: F401
    except Exception as exc:  # pragma: no cover - reported as a visible skip
        return f"{type(exc).__name__}: {exc}"
    return None


def _package_dir(name: str) -> Path:
    module = __import__(name)
    return Path(os.path.dirname(module.__file__))


def mmpose_config(relative: str) -> str:
    return str(_package_dir("mmpose") / ".mim" / relative)


DETECTOR_CONFIGS = {
    "rtmdet-nano-person": "demo/mmdetection_cfg/rtmdet_nano_320-8xb32_coco-person.py",
    "rtmdet-m-person": "demo/mmdetection_cfg/rtmdet_m_640-8xb32_coco-person.py",
}
POSE_CONFIGS = {
    f"rtmpose-{v}": f"configs/body_2d_keypoint/rtmpose/coco/rtmpose-{v}_8xb256-420e_coco-256x192.py"
    for v in ("t", "s", "m", "l")
}
LIFTER_CONFIGS = {
    "videopose3d-243": "configs/body_3d_keypoint/video_pose_lift/h36m/"
    "video-pose-lift_tcn-243frm-supv-cpn-ft_8xb128-200e_h36m.py",
    "motionbert": "configs/body_3d_keypoint/motionbert/h36m/motionbert_dstformer-ft-243frm_8xb32-120e_h36m.py",
}


def config_for(model_name: str) -> str:
    for table in (DETECTOR_CONFIGS, POSE_CONFIGS, LIFTER_CONFIGS):
        if model_name in table:
            return mmpose_config(table[model_name])
    raise KeyError(model_name)


def init_reference_model(model_name: str, checkpoint: str):
    """Build the mm model from its shipped config and load ``checkpoint`` (CPU)."""
    install_mmcv_ext()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model_name in DETECTOR_CONFIGS:
            from mmdet.apis import init_detector

            return init_detector(config_for(model_name), checkpoint, device="cpu")
        from mmpose.apis import init_model

        return init_model(config_for(model_name), checkpoint, device="cpu")


# Importing this module is what a fidelity test does first: make mmdet/mmpose importable.
install_mmcv_ext()


# ---- the reference chain: mmdet/mmpose's own inference APIs, used as mmpose's demos use them ----

def reference_detect(model, image, score_threshold: float = 0.3, nms_iou: float | None = 0.3):
    """``inference_detector``, then mmpose's top-down filter (score > thr, its NMS)."""
    import numpy as np
    from mmdet.apis import inference_detector
    from mmengine.registry import init_default_scope
    from mmpose.evaluation.functional import nms

    # As mmpose's top-down demo does: the detector's pipeline lives in mmdet's registry scope.
    init_default_scope(model.cfg.get("default_scope", "mmdet"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = inference_detector(model, image).pred_instances.cpu().numpy()
    dets = np.concatenate([pred.bboxes, pred.scores[:, None]], axis=1)
    dets = dets[np.logical_and(pred.labels == 0, pred.scores > score_threshold)]
    if nms_iou is not None and len(dets):
        dets = dets[nms(dets, nms_iou)]
    return dets[:, :4], dets[:, 4]


def reference_pose2d(model, image, boxes, flip_test: bool):
    import numpy as np
    from mmpose.apis import inference_topdown

    model.test_cfg["flip_test"] = flip_test
    if len(boxes) == 0:
        return np.zeros((0, 17, 2)), np.zeros((0, 17))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = inference_topdown(model, image, np.asarray(boxes, np.float32), bbox_format="xyxy")
    keypoints = np.stack([s.pred_instances.keypoints[0] for s in samples])
    scores = np.stack([s.pred_instances.keypoint_scores[0] for s in samples])
    return keypoints, scores


def reference_lift_track(model, keypoints2d, boxes, width: int, height: int):
    """Lift one person's T frames the way mmpose's lifting inferencer path does: COCO→H36M, per frame a
    window from ``extract_pose_sequence`` (edges replicated), ``inference_pose_lifter_model`` with
    the dataset-statistics normalisation and the image size. Returns (T, 17, 3) in metres."""
    import numpy as np
    from mmengine.structures import InstanceData
    from mmpose.apis import convert_keypoint_definition, extract_pose_sequence, inference_pose_lifter_model
    from mmpose.structures import PoseDataSample

    frames = []
    for kp, box in zip(keypoints2d, boxes):
        sample = PoseDataSample()
        inst = InstanceData()
        inst.keypoints = convert_keypoint_definition(np.asarray(kp, np.float32)[None, :, :2], "coco", "h36m")
        inst.keypoint_scores = np.ones((1, 17), np.float32)
        inst.bboxes = np.asarray(box, np.float32)[None]
        sample.pred_instances = inst
        sample.gt_instances = InstanceData()
        sample.track_id = 0
        frames.append([sample])
    dataset = model.cfg.test_dataloader.dataset
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(len(frames)):
            window = extract_pose_sequence(frames, t, causal=dataset.get("causal", False),
                                           seq_len=dataset.get("seq_len", 1), step=dataset.get("seq_step", 1))
            result = inference_pose_lifter_model(model, window, image_size=(width, height), norm_pose_2d=True)
            out.append(np.squeeze(result[0].pred_instances.keypoints))
    return np.stack(out)
