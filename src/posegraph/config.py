"""Deployment profiles: which model each stage runs, on what, with which knobs (``profiles/*.yaml``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UsageError
from .stages import DetectSettings, Lift3dSettings, Pose2dSettings


class TrackingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["iou", "oks"] = "iou"  # match boxes (IoU) or keypoints (OKS) to the previous frames
    threshold: float = 0.3  # a match needs similarity above this
    max_gap: int = 2  # frames a person may be missed before their track ends
    # The detector on every N-th frame only; between, each person's box comes from their last
    # keypoints (tracking.box_from_keypoints). 1: on every frame (the default; the batched path).
    detect_every: int = Field(1, ge=1)
    # A person whose keypoints score below this (mean, or fewer than 3 joints) is lost: the
    # detector runs on the next frame whatever N says.
    redetect_below: float = Field(0.3, ge=0.0, le=1.0)
    box_expand: float = Field(1.25, gt=1.0, le=3.0)  # the keypoints' extent grown by this, as the peers do


class LiveSettings(BaseModel):
    """``posegraph live`` and the UI's live view."""
    model_config = ConfigDict(extra="forbid")

    # Frames of look-ahead the temporal lifting model gets: a frame's 3D leaves this many frames
    # after it came (at 30 frames/s, 33 ms each). 0: causal, the future is the present repeated.
    # Chosen by bench/live.py's lag-against-error table (docs/live.md).
    lift_delay: int = Field(0, ge=0, le=60)


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = "cpu"
    backend: str = "onnxruntime"
    threads: int | None = None
    detect: DetectSettings = DetectSettings()
    pose2d: Pose2dSettings = Pose2dSettings()
    lift3d: Lift3dSettings = Lift3dSettings()
    tracking: TrackingSettings = TrackingSettings()
    live: LiveSettings = LiveSettings()

    def stage_settings(self, stage: str):
        return getattr(self, stage)


def builtin_profiles() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("posegraph.profiles").iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise UsageError(f"profile file {path} does not exist")
        return yaml.safe_load(path.read_text()) or {}, str(path)
    if name_or_path not in builtin_profiles():
        raise UsageError(f"unknown profile {name_or_path!r}; built in: {', '.join(builtin_profiles())} "
                         "(or give a path to a .yaml file)")
    text = resources.files("posegraph.profiles").joinpath(f"{name_or_path}.yaml").read_text()
    return yaml.safe_load(text) or {}, name_or_path


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``detect.score_threshold=0.1`` → data["detect"]["score_threshold"] = 0.1 (value parsed as YAML)."""
    if "=" not in assignment:
        raise UsageError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_profile(name_or_path: str = "cpu", overrides: list[str] | None = None) -> Profile:
    data, label = _read(name_or_path)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"profile {label}: {loc}: {first['msg']}") from None
