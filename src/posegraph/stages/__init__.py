"""The three pipeline stages. Each is preprocess → infer → postprocess over frame documents."""

from __future__ import annotations

from ..models.zoo import get_model
from .base import Stage, StageSettings
from .blazepose import BlazePoseDetectStage, BlazePoseLift3dStage, BlazePosePose2dStage
from .detect import DetectSettings, DetectStage
from .lift3d import Lift3dSettings, Lift3dStage
from .pose2d import Pose2dSettings, Pose2dStage

# A stage's name (posegraph.names.STAGES, in graph order) → its class, for the OpenMMLab models.
STAGE_CLASSES: dict[str, type[Stage]] = {
    "detect": DetectStage,
    "pose2d": Pose2dStage,
    "lift3d": Lift3dStage,
}
# Model families with stages of their own: (stage, family) → class.
FAMILY_STAGES: dict[tuple[str, str], type[Stage]] = {
    ("detect", "blazepose"): BlazePoseDetectStage,
    ("pose2d", "blazepose"): BlazePosePose2dStage,
    ("lift3d", "blazepose"): BlazePoseLift3dStage,
}


def make_stage(name: str, settings: StageSettings | dict | None) -> Stage:
    """The stage ``name`` for its settings' model: the class of the model's family."""
    cls = STAGE_CLASSES[name]
    if not isinstance(settings, StageSettings):
        settings = cls.Settings.model_validate(settings or {})
    return FAMILY_STAGES.get((name, get_model(settings.model).family), cls)(settings)

__all__ = [
    "STAGE_CLASSES",
    "FAMILY_STAGES",
    "make_stage",
    "Stage",
    "StageSettings",
    "DetectStage",
    "DetectSettings",
    "Pose2dStage",
    "Pose2dSettings",
    "Lift3dStage",
    "Lift3dSettings",
]
