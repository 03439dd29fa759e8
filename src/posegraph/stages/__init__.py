"""The three pipeline stages. Each is preprocess → infer → postprocess over frame documents."""

from __future__ import annotations

from .base import Stage, StageSettings
from .detect import DetectSettings, DetectStage
from .lift3d import Lift3dSettings, Lift3dStage
from .pose2d import Pose2dSettings, Pose2dStage

# A stage's name (posegraph.names.STAGES, in graph order) → its class.
STAGE_CLASSES: dict[str, type[Stage]] = {
    "detect": DetectStage,
    "pose2d": Pose2dStage,
    "lift3d": Lift3dStage,
}

__all__ = [
    "STAGE_CLASSES",
    "Stage",
    "StageSettings",
    "DetectStage",
    "DetectSettings",
    "Pose2dStage",
    "Pose2dSettings",
    "Lift3dStage",
    "Lift3dSettings",
]
