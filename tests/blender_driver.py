"""Run INSIDE Blender by tests/test_blender.py: import one file and write what Blender made of it.

    blender -b --factory-startup --python tests/blender_driver.py -- IN.(bvh|glb|fbx) OUT.json [--bvh-scale S]

The file is imported with the importer's defaults (but a BVH's Scale, --bvh-scale, 1 unless
given, and a glTF's shading, FLAT: see below), and for every frame of the armature's action's
range the WORLD-space head of every pose bone (armature matrix_world @ pose_bone.head, in
Blender's axes: Z up, metres) is written to OUT.json with the bone names and parents, the frame
range, the scene's frame rate and, for an FBX, what the file declares (axes, units, rate). It
imports nothing from posegraph: it reports what Blender sees, and the test compares.

Frame rates. A glTF file's animation is in seconds; Blender's glTF importer puts its keys at
seconds × the scene's frame rate (a whole number, 24 in the factory settings), so a 30 fps clip
would land between frames: the rate is set first from the file itself (its animation's key count
over its length), as a person importing it would set the scene's rate. Blender's FBX importer sets
the scene's rate from the file, but keys at seconds × its whole part too (30 for 29.97): where
keys fall between frames, the armature is posed at the keys instead (sample_at).
"""

from __future__ import annotations

import builtins
import json
import math
import struct
import sys
import time

import bpy

# Blender 3.4's BVH importer opens files with mode 'rU', which Python 3.11 refuses ('U' has meant
# nothing since Python 3: universal newlines are the default). Here only, for the import.
_open = builtins.open


def _open_without_u(file, mode="r", *args, **kwargs):
    return _open(file, mode.replace("U", "") if isinstance(mode, str) else mode, *args, **kwargs)


def glb_fps(path: str) -> float | None:
    """The frame rate of a GLB's first animation: (keys − 1) / last key time, or None."""
    with _open(path, "rb") as f:
        magic, _version, _length = struct.unpack("<4sII", f.read(12))
        chunk_length, _chunk_type = struct.unpack("<II", f.read(8))
        document = json.loads(f.read(chunk_length))
    if magic != b"glTF" or not document.get("animations"):
        return None
    accessor = document["accessors"][document["animations"][0]["samplers"][0]["input"]]
    last = accessor["max"][0]
    return (accessor["count"] - 1) / last if last > 0 else None


def fbx_header(path: str) -> dict:
    """What the FBX file itself declares, read with Blender's own FBX parser: GlobalSettings (axes,
    unit scale, frame rate) and each Model's name, type and local rotation and scaling (degrees,
    factors): the axis turn and scale that Unity or Unreal would put on the objects."""
    from io_scene_fbx import parse_fbx

    root, version = parse_fbx.parse(path)

    def child(elem, name):
        return next((e for e in elem.elems if e.id == name), None)

    def properties(elem):
        table = child(elem, b"Properties70") if elem is not None else None
        out = {}
        for p in table.elems if table is not None else ():
            values = [v.decode() if isinstance(v, bytes) else v for v in p.props[4:]]
            out[p.props[0].decode()] = values[0] if len(values) == 1 else values
        return out

    settings = properties(child(root, b"GlobalSettings"))
    models = []
    for elem in child(root, b"Objects").elems:
        if elem.id == b"Model":
            props = properties(elem)
            models.append({"name": elem.props[1].split(b"\x00")[0].decode(), "type": elem.props[2].decode(),
                           "rotation": props.get("Lcl Rotation", [0, 0, 0]),
                           "scaling": props.get("Lcl Scaling", [1, 1, 1])})
    return {"version": version, "settings": {k: v for k, v in settings.items() if not isinstance(v, list)},
            "models": models}


def sample_at(first: int, last: int, keys: list[float]) -> list[float]:
    """Where to pose the armature: every frame of the action's range, or, where the keys do not
    fall on whole frames, at the keys. That is a rate that is not a whole number (29.97 fps):
    Blender's glTF and FBX importers key at seconds × the scene's whole rate (30), so the track's
    frames land between Blender's."""
    whole = list(range(first, last + 1))
    return [float(f) for f in whole] if all(abs(k - round(k)) < 1e-4 for k in keys) else keys


def main(argv: list[str]) -> None:
    source, out = argv[0], argv[1]
    bvh_scale = float(argv[argv.index("--bvh-scale") + 1]) if "--bvh-scale" in argv else 1.0
    scene = bpy.context.scene
    started = time.monotonic()
    kind = source.rsplit(".", 1)[-1].lower()
    if kind == "bvh":
        builtins.open = _open_without_u
        try:
            result = bpy.ops.import_anim.bvh(filepath=source, global_scale=bvh_scale)
        finally:
            builtins.open = _open
    elif kind in ("glb", "gltf"):
        fps = glb_fps(source)
        if fps:
            scene.render.fps, scene.render.fps_base = round(fps), 1.0
        # Shading FLAT, which posegraph's stand-in mesh is: the default, NORMALS, guesses it per
        # polygon with np.bool, which numpy 1.24 (Debian 12's) no longer has; the bones are the same.
        result = bpy.ops.import_scene.gltf(filepath=source, import_shading="FLAT")
    elif kind == "fbx":
        result = bpy.ops.import_scene.fbx(filepath=source)
    else:
        raise SystemExit(f"blender_driver: cannot import {source}")
    assert result == {"FINISHED"}, result
    imported = time.monotonic() - started

    armatures = [o for o in scene.objects if o.type == "ARMATURE"]
    assert len(armatures) == 1, [o.name for o in scene.objects]
    armature = armatures[0]
    action = armature.animation_data.action if armature.animation_data else None
    assert action is not None, f"{armature.name} has no action"
    first, last = (int(round(f)) for f in action.frame_range)
    keys = sorted({round(k.co.x, 6) for curve in action.fcurves for k in curve.keyframe_points})
    bones = [b.name for b in armature.pose.bones]
    heads = []
    for frame in sample_at(first, last, keys):
        whole = math.floor(frame)
        scene.frame_set(whole, subframe=frame - whole)
        world = armature.matrix_world
        heads.append([list(world @ armature.pose.bones[name].head) for name in bones])
    report = {
        "source": source, "armature": armature.name, "action": action.name, "bones": bones,
        "parents": [b.parent.name if b.parent else None for b in armature.pose.bones],
        "frame_range": [first, last], "keys": keys, "sampled": sample_at(first, last, keys),
        "fps": scene.render.fps / scene.render.fps_base,
        "objects": sorted(f"{o.type}:{o.name}" for o in scene.objects),
        "matrix_world": [list(row) for row in armature.matrix_world],
        "heads": heads, "import_seconds": imported,
    }
    if kind == "fbx":
        report["fbx"] = fbx_header(source)
    with _open(out, "w") as f:
        json.dump(report, f)


main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else [])
