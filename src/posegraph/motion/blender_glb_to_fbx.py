"""Run INSIDE Blender (3.x or newer) by posegraph.motion.blender.glb_to_fbx, never imported by posegraph:

    blender -b --factory-startup --python-exit-code 1 --python blender_glb_to_fbx.py -- IN.glb OUT.fbx

Imports a GLB that posegraph.motion.gltf wrote (glTF importer, io_scene_gltf2) into an empty scene
and exports it as FBX (io_scene_fbx): the armature, the mesh skinned to it, and the animation baked
at every frame. The caller renames OUT.fbx into place; an error is one line starting with ``PREFIX``
and a non-zero exit.

Choices, for Unity and Unreal as much as for Blender:

* **Frame rate.** glTF keeps animation times in seconds, and Blender's glTF importer keys them at
  seconds × the scene's integer rate (24 in the factory settings). The GLB's own rate is read from
  its animation (keys − 1 over the last key's time) and made the scene's before importing, so every
  key lands on a whole frame and the FBX declares the track's rate (29.97 becomes 30/1.001, keys
  rescaled onto whole frames).
* **Axes.** The FBX is Y up, −Z forward (``axis_up="Y"``, ``axis_forward="-Z"``): the axes
  Unity, Unreal's importer, Maya and MotionBuilder expect of an FBX and declare in its
  GlobalSettings, so the person stands upright there and faces the front, as in the GLB (whose
  axes are these). Blender converts to its own Z up on import and back on export.
  ``bake_space_transform`` (Blender's experimental "Apply Transform") stays off: Blender documents it
  as broken with armatures and animation; the armature object carries the axis turn instead.
* **Units.** ``apply_scale_options="FBX_SCALE_ALL"``: Blender's metres go into the FBX's unit
  scale (UnitScaleFactor 100: one unit is a metre), not into a ×100 scale on every object, so
  Unity imports the armature at scale 1 and Unreal converts metres to its centimetres.
* **Skeleton.** ``add_leaf_bones=False``: no extra "_end" bone per chain (the end joints are bones
  already); the primary/secondary bone axes stay Y/X, Blender's, which its FBX importer expects.
* **Animation.** ``bake_anim`` with every bone keyed at every frame (``bake_anim_step=1``) and no
  curve simplification (``bake_anim_simplify_factor=0``, default 1 drops keys it judges redundant):
  the FBX holds each frame of the track as the GLB does. Only the armature's action (no NLA strips,
  not every action in the file), one take, over the action's frame range.
* **Shading.** The GLB's stand-in mesh is flat-shaded, so it is imported ``FLAT``; the importer's
  default guesses per polygon with ``np.bool``, which numpy 1.24 (Debian 12's) removed.
"""

from __future__ import annotations

import json
import struct
import sys

import bpy

PREFIX = "posegraph-glb-to-fbx:"


def fail(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)
    sys.exit(1)


def glb_fps(path: str) -> float | None:
    """The frame rate of the GLB's first animation, or None (not a GLB, or no animation)."""
    with open(path, "rb") as f:
        header = f.read(20)
        if len(header) < 20:
            return None
        magic, _version, _length, chunk_length, chunk_type = struct.unpack("<4sIIII", header)
        if magic != b"glTF" or chunk_type != 0x4E4F534A:  # "JSON"
            return None
        document = json.loads(f.read(chunk_length))
    animations = document.get("animations") or []
    if not animations:
        return None
    accessor = document["accessors"][animations[0]["samplers"][0]["input"]]
    count, last = accessor["count"], accessor["max"][0]
    return (count - 1) / last if count > 1 and last > 0 else None


def main(glb: str, fbx: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)  # no default cube, camera or light
    scene = bpy.context.scene
    try:
        fps = glb_fps(glb)
    except (OSError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        fail(f"{glb} is not a GLB file posegraph can read: {e}")
    if fps is None:
        fail(f"{glb} is not a GLB file with an animation")
    scene.render.fps, scene.render.fps_base = max(1, round(fps)), 1.0

    try:
        result = bpy.ops.import_scene.gltf(filepath=glb, import_shading="FLAT")
    except RuntimeError as e:  # the importer's own error report
        fail(f"Blender's glTF importer failed on {glb}: {str(e).strip().splitlines()[-1]}")
    if result != {"FINISHED"}:
        fail(f"Blender's glTF importer did not finish on {glb}: {sorted(result)}")

    armatures = [o for o in scene.objects if o.type == "ARMATURE"]
    if len(armatures) != 1:
        fail(f"{glb} holds {len(armatures)} armatures, expected 1")
    armature = armatures[0]
    action = armature.animation_data.action if armature.animation_data else None
    if action is None:
        fail(f"{glb}'s armature has no animation")

    retime(scene, action, fps)
    first, last = (int(round(f)) for f in action.frame_range)
    scene.frame_start, scene.frame_end = first, last
    scene.frame_set(first)
    export(fbx)


def retime(scene, action, fps: float) -> None:
    """Keys imported at seconds × the scene's whole rate, moved to seconds × ``fps`` (whole frames)
    for a rate that is not a whole number (29.97), which the scene then declares exactly."""
    ratio = fps / scene.render.fps
    if abs(ratio - 1) > 1e-9:
        for curve in action.fcurves:
            for key in curve.keyframe_points:
                for point in (key.co, key.handle_left, key.handle_right):
                    point.x *= ratio
        scene.render.fps_base = scene.render.fps / fps


def export(fbx: str) -> None:
    """The scene's armature and mesh as FBX, with the options the module docstring explains."""
    result = bpy.ops.export_scene.fbx(
        filepath=fbx,
        check_existing=False,
        object_types={"ARMATURE", "MESH"},
        axis_forward="-Z",
        axis_up="Y",
        apply_unit_scale=True,
        apply_scale_options="FBX_SCALE_ALL",
        bake_space_transform=False,
        add_leaf_bones=False,
        primary_bone_axis="Y",
        secondary_bone_axis="X",
        use_armature_deform_only=False,
        bake_anim=True,
        bake_anim_use_all_bones=True,
        bake_anim_use_nla_strips=False,
        bake_anim_use_all_actions=False,
        bake_anim_force_startend_keying=True,
        bake_anim_step=1.0,
        bake_anim_simplify_factor=0.0,
        use_metadata=True,
    )
    if result != {"FINISHED"}:
        fail(f"Blender's FBX exporter did not finish: {sorted(result)}")


if __name__ == "__main__":
    arguments = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if len(arguments) != 2:
        fail("usage: blender -b --python blender_glb_to_fbx.py -- IN.glb OUT.fbx")
    main(*arguments)
