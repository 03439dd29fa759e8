"""Pure-PyTorch definitions of the OpenMMLab networks posegraph serves.

No mmcv/mmdet/mmpose at run time: these modules load the official checkpoints
(same parameter names and shapes) and are proven equal to the mm
implementations by ``tests/test_fidelity.py``.
"""

from __future__ import annotations

from typing import Any


def build(family: str, arch: dict[str, Any]):
    if family == "rtmdet":
        # lazy: each network's module imports torch; serving images have none
        from .rtmdet import RTMDet

        return RTMDet(**arch)
    if family == "rtmpose":
        # lazy: each network's module imports torch; serving images have none
        from .rtmpose import RTMPose

        return RTMPose(**arch)
    if family == "videopose3d":
        # lazy: each network's module imports torch; serving images have none
        from .videopose3d import VideoPose3D

        return VideoPose3D(**arch)
    if family == "motionbert":
        # lazy: each network's module imports torch; serving images have none
        from .motionbert import MotionBERT

        return MotionBERT(**arch)
    raise ValueError(f"unknown network family {family!r}")
