"""The model catalogue: every network posegraph can run, with its architecture,
pre/post-processing constants and the official OpenMMLab checkpoint URL.

Values are read off the configs shipped in mmdet 3.3 / mmpose 1.3.2 (named in
``mm_config``); the fidelity tests build those configs and compare outputs.
Which entry a deployment uses is configuration (``profiles/*.yaml``), not code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

ZOO_HOST = "https://download.openmmlab.com"
# RTMDet's feature levels (mmdet ``MlvlPointGenerator`` strides), shared by the network and decoding.
RTMDET_STRIDES = (8, 16, 32)
_MMPOSE = f"{ZOO_HOST}/mmpose"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stage: str  # detect | pose2d | lift3d
    family: str  # rtmdet | rtmpose | videopose3d | motionbert
    arch: dict[str, Any]
    url: str
    mm_config: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def download_url(self) -> str:
        """The official URL, or the same path under ``$POSEGRAPH_ZOO_MIRROR`` (an internal mirror)."""
        mirror = os.environ.get("POSEGRAPH_ZOO_MIRROR")
        if mirror and self.url.startswith(ZOO_HOST):
            return mirror.rstrip("/") + self.url[len(ZOO_HOST):]
        return self.url


_DET_NORM = dict(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), to_rgb=False, pad_value=114)
_POSE_NORM = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), to_rgb=True)


def _rtmdet(name, url, cfg, *, input_size, arch, score_thr=0.05, nms_iou=0.6, max_per_img=100, nms_pre=1000):
    params = dict(_DET_NORM, input_size=input_size, score_thr=score_thr, nms_iou=nms_iou,
                  max_per_img=max_per_img, nms_pre=nms_pre)
    # The strides are the catalogue's fact (the detect stage decodes with them, without torch); the
    # network is given them rather than importing the catalogue (nets know nothing above them).
    return ModelSpec(name, "detect", "rtmdet", {**arch, "strides": RTMDET_STRIDES}, url, cfg, params)


def _rtmpose(variant, deepen, widen, url):
    return ModelSpec(
        f"rtmpose-{variant}",
        "pose2d",
        "rtmpose",
        dict(deepen_factor=deepen, widen_factor=widen, input_size=(192, 256), simcc_split_ratio=2.0),
        url,
        f"configs/body_2d_keypoint/rtmpose/coco/rtmpose-{variant}_8xb256-420e_coco-256x192.py",
        dict(_POSE_NORM, input_size=(192, 256), simcc_split_ratio=2.0, bbox_padding=1.25,
             # COCO left/right pairs, for flip test.
             flip_indices=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)),
    )


_H36M_FLIP = (0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13)
# Human3.6M dataset statistics mmpose uses to normalise 2D poses before lifting.
_H36M_STATS = dict(bbox_center=(528.0, 427.0), bbox_scale=400.0)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _rtmdet(
            "rtmdet-nano-person",
            f"{_MMPOSE}/v1/projects/rtmpose/rtmdet_nano_8xb32-100e_coco-obj365-person-05d8511e.pth",
            "demo/mmdetection_cfg/rtmdet_nano_320-8xb32_coco-person.py",
            input_size=320,
            arch=dict(deepen_factor=0.33, widen_factor=0.25, neck_in_channels=[64, 128, 256],
                      neck_out_channels=64, num_csp_blocks=1, use_depthwise=True, share_conv=False,
                      exp_on_reg=False),
        ),
        _rtmdet(
            "rtmdet-m-person",
            f"{_MMPOSE}/v1/projects/rtmposev1/rtmdet_m_8xb32-100e_coco-obj365-person-235e8209.pth",
            "demo/mmdetection_cfg/rtmdet_m_640-8xb32_coco-person.py",
            input_size=640,
            arch=dict(deepen_factor=0.67, widen_factor=0.75, neck_in_channels=[192, 384, 768],
                      neck_out_channels=192, num_csp_blocks=2, use_depthwise=False, share_conv=True,
                      exp_on_reg=True),
        ),
        _rtmpose("t", 0.167, 0.375,
                 f"{_MMPOSE}/v1/projects/rtmposev1/rtmpose-tiny_simcc-aic-coco_pt-aic-coco_420e-256x192-cfc8f33d_20230126.pth"),
        _rtmpose("s", 0.33, 0.5,
                 f"{_MMPOSE}/v1/projects/rtmposev1/rtmpose-s_simcc-aic-coco_pt-aic-coco_420e-256x192-fcb2599b_20230126.pth"),
        _rtmpose("m", 0.67, 0.75,
                 f"{_MMPOSE}/v1/projects/rtmposev1/rtmpose-m_simcc-aic-coco_pt-aic-coco_420e-256x192-63eb25f7_20230126.pth"),
        _rtmpose("l", 1.0, 1.0,
                 f"{_MMPOSE}/v1/projects/rtmposev1/rtmpose-l_simcc-aic-coco_pt-aic-coco_420e-256x192-f016ffe0_20230126.pth"),
        ModelSpec(
            "videopose3d-243",
            "lift3d",
            "videopose3d",
            dict(kernel_sizes=(3, 3, 3, 3, 3)),
            f"{_MMPOSE}/body3d/videopose/videopose_h36m_243frames_fullconv_supervised_cpn_ft-88f5abbb_20210527.pth",
            "configs/body_3d_keypoint/video_pose_lift/h36m/video-pose-lift_tcn-243frm-supv-cpn-ft_8xb128-200e_h36m.py",
            dict(_H36M_STATS, seq_len=243, flip_indices=_H36M_FLIP),
        ),
        ModelSpec(
            "motionbert",
            "lift3d",
            "motionbert",
            dict(feat_size=512, depth=5, num_heads=8, mlp_ratio=2, seq_len=243),
            f"{_MMPOSE}/v1/body_3d_keypoint/pose_lift/h36m/motionbert_ft_h36m-d80af323_20230531.pth",
            "configs/body_3d_keypoint/motionbert/h36m/motionbert_dstformer-ft-243frm_8xb32-120e_h36m.py",
            dict(_H36M_STATS, seq_len=243, flip_indices=_H36M_FLIP, flip_test=True),
        ),
    ]
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UsageError(f"unknown model {name!r}; known models: {known}") from None


def build_network(spec: ModelSpec, **overrides):
    """Instantiate the (untrained) torch network for ``spec``. Needs torch."""
    # lazy: the networks import torch, which the serving images do not have
    from .nets import build

    return build(spec.family, {**spec.arch, **overrides})
