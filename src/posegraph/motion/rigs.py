"""Joint names of common rigs for posegraph's Human3.6M-17 skeleton, in one place.

Every rig lists the same 17 joints in posegraph's order (``posegraph.keypoints.H36M17``): the order
is the skeleton, a rig only renames it, so that an exported armature's bones carry the names an
animation tool expects to retarget by.

* ``posegraph``: Human3.6M's own names, as posegraph stores them.
* ``mixamo``: Adobe Mixamo's bone names (``mixamorig:`` prefix), which Blender add-ons, Unity and
  Unreal retargeting presets know. Two mappings are not the obvious ones. Human3.6M's "shoulder" is
  the arm's ball joint (where the upper arm turns), which Mixamo calls ``LeftArm``/``RightArm``:
  Mixamo's ``LeftShoulder`` is the clavicle, a bone Human3.6M has no joint for. And Human3.6M's
  thorax is where the arms and the neck branch off the spine, as Mixamo's ``Spine2`` (the top of
  its three spine bones) is; Human3.6M's spine (mid-back) is Mixamo's ``Spine``, its ``Spine1`` has
  no Human3.6M joint. Mixamo's foot is the ankle, its hand the wrist, as Human3.6M's are.
"""

from __future__ import annotations

from ..errors import UsageError
from ..keypoints import H36M17

# Mixamo's bone for each Human3.6M joint, by posegraph's name (see the module docstring).
_MIXAMO = {
    "root": "Hips",
    "right_hip": "RightUpLeg", "right_knee": "RightLeg", "right_foot": "RightFoot",
    "left_hip": "LeftUpLeg", "left_knee": "LeftLeg", "left_foot": "LeftFoot",
    "spine": "Spine", "thorax": "Spine2", "neck_base": "Neck", "head": "Head",
    "left_shoulder": "LeftArm", "left_elbow": "LeftForeArm", "left_wrist": "LeftHand",
    "right_shoulder": "RightArm", "right_elbow": "RightForeArm", "right_wrist": "RightHand",
}  # fmt: skip

RIGS: dict[str, tuple[str, ...]] = {
    "posegraph": H36M17,
    "mixamo": tuple(f"mixamorig:{_MIXAMO[name]}" for name in H36M17),  # in H36M17's order
}
RIG_CHOICES = tuple(RIGS)


def joint_names(rig: str) -> tuple[str, ...]:
    """The 17 joint names of ``rig``, in posegraph's joint order; UsageError for an unknown rig."""
    try:
        return RIGS[rig]
    except KeyError:
        raise UsageError(f"unknown rig {rig!r}: choose one of {', '.join(RIG_CHOICES)}") from None
