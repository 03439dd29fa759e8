"""glTF 2.0 (binary, .glb) export of a solved skeleton animation, for Blender, three.js and game engines.

A track solved into a skeleton and motion (``posegraph.motion.bvh.Solved``) becomes one self-contained
GLB file: a skinned armature, a mesh that shows it, and one animation.

* **Axes and units.** glTF's are the solution's own: metres, Y up, right-handed, and a model's front
  faces +Z, which is where the person faces; their left is +X. Nothing is converted, so joint
  positions in the file are ``Solved.positions`` to float32 precision.
* **Armature.** One node per joint, named from a rig (``posegraph.motion.rigs``: posegraph's
  Human3.6M names, or Mixamo's for retargeting), nested as ``Solved.parents``. At rest a joint's
  node has its T-pose offset as translation and no rotation, so the bind pose is the solution's
  T-pose; the root joint rests at the first frame's root position, so that the bind pose stands
  where the animation starts. The joints hang under one untransformed ``Armature`` node (the
  layout Blender's own exporter writes: armature object, then bones); the skin's ``skeleton`` is
  the root joint.
* **Bind matrices.** The rest pose has no rotation, so each joint's rest global transform is a
  translation to its rest position and the inverse bind matrix the opposite translation.
* **Mesh.** glTF has no bones to draw, only meshes, so an armature alone is invisible in most
  viewers. The file carries one stand-in mesh: per bone a tapered box from the parent joint (wide
  end) to the child joint, and a small cube on each end joint (ankles, wrists, head). Each vertex
  is rigidly bound (weight 1) to one joint: a bone's box to its parent joint, whose rotation is the
  one that moves the bone, an end cube to its own joint. Flat normals, one plain material. Per the
  specification a skinned mesh's node is not transformed (its joints place it), so it sits at the
  scene root.
* **Animation.** One, named after the track, sampled at every frame (time ``t / fps`` seconds)
  with LINEAR interpolation: a ``translation`` channel on the root joint (``root_positions``,
  root motion included) and a ``rotation`` channel on every joint with children, and on any end
  joint whose rotation is not the identity (the solver leaves end joints at the identity: a turn
  there moves no keypoint). Rotations are unit quaternions (x, y, z, w), made sign-continuous
  from frame to frame: q and −q are the same rotation, but a player interpolating between q and a
  neighbour's −q would take the long way round, a spin of nearly a full turn between two frames.
* **Extras.** A JSON-able dict (foot contacts, say, for the web UI) goes into the scene's
  ``extras``, where glTF keeps application data.

Everything is checked and built in memory before anything is written; a path is written through a
temporary file renamed into place, as BVH export does.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .bvh import Solved
from .rigs import joint_names

GENERATOR = "posegraph"
_ORTHONORMAL_TOLERANCE = 1e-6  # a rotation matrix further off than this is refused, not converted
_CUBE_HALF = 0.025  # metres: half the side of the cube on each end joint
_COLOUR = [0.72, 0.76, 0.82, 1.0]  # a light blue-grey: visible on the dark and the light backgrounds

# glTF's constants.
_FLOAT, _UNSIGNED_BYTE, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5121, 5123, 5125
_COMPONENT = {np.dtype("<f4"): _FLOAT, np.dtype("u1"): _UNSIGNED_BYTE,
              np.dtype("<u2"): _UNSIGNED_SHORT, np.dtype("<u4"): _UNSIGNED_INT}
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963  # bufferView targets: vertex data, indices
_GLB_MAGIC, _GLB_VERSION = b"glTF", 2
_CHUNK_JSON, _CHUNK_BIN = 0x4E4F534A, 0x004E4942


# --- checks ------------------------------------------------------------------------------------------

def _check(solved: Solved, names: tuple[str, ...]) -> None:
    """ValueError, naming what is wrong and where, for a solution the file could not hold faithfully."""
    joints, parents = len(solved.parents), solved.parents
    if len(names) != joints:
        raise ValueError(f"the rig names {len(names)} joints, the solution has {joints}")
    if any(p >= j for j, p in enumerate(parents)):  # rest positions are accumulated in this order
        raise ValueError(f"joints must come after their parents, got parents {parents}")
    if not (np.isfinite(solved.fps) and solved.fps > 0):
        raise ValueError(f"fps must be a positive number, got {solved.fps!r}")
    frames = len(solved.root_positions)
    if frames < 1:
        raise ValueError("the solution has no frames")
    for field, shape in (("offsets", (joints, 3)), ("root_positions", (frames, 3)),
                         ("rotations", (frames, joints, 3, 3))):
        if np.shape(getattr(solved, field)) != shape:
            raise ValueError(f"{field} must be {shape}, got {np.shape(getattr(solved, field))}")
    if not np.isfinite(solved.offsets).all():
        j = int(np.argmax(~np.isfinite(solved.offsets).all(axis=1)))
        raise ValueError(f"offsets: joint {names[j]} has a non-finite offset")
    if not np.isfinite(solved.root_positions).all():
        t = int(np.argmax(~np.isfinite(solved.root_positions).all(axis=1)))
        raise ValueError(f"root_positions: frame {t} of {frames} has a non-finite root position")
    rot = solved.rotations
    finite = np.isfinite(rot).all(axis=(2, 3))
    if not finite.all():
        raise ValueError(f"rotations: {_frame_joint(~finite, names)} has a non-finite rotation")
    off = np.abs(np.swapaxes(rot, -1, -2) @ rot - np.eye(3)).max(axis=(2, 3))
    bad = (off > _ORTHONORMAL_TOLERANCE) | (np.linalg.det(rot) <= 0)
    if bad.any():
        raise ValueError(f"rotations: {_frame_joint(bad, names)} is not a rotation matrix")


def _frame_joint(bad: np.ndarray, names: tuple[str, ...]) -> str:
    """The first True of a (frames, joints) mask, in words."""
    t, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return f"frame {t} of {len(bad)}, joint {names[j]},"


# --- the binary buffer -------------------------------------------------------------------------------

class _Buffer:
    """The file's one binary buffer, built as accessors are added: each array gets its own tightly
    packed bufferView starting on a 4-byte boundary (glTF's alignment rule for every component type)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def add(self, array: np.ndarray, kind: str, *, target: int | None = None, bounds: bool = False) -> int:
        """Append ``array`` (one element per row, little-endian) as an accessor of type ``kind``
        ("SCALAR", "VEC3", "VEC4", "MAT4"); ``bounds`` adds min and max, computed from the stored
        values so that they match them exactly (the validator compares). Returns its index."""
        data = np.ascontiguousarray(array)
        raw = data.tobytes()
        view = {"buffer": 0, "byteOffset": self.size, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        padding = b"\0" * (-len(raw) % 4)
        self.parts += [raw, padding]
        self.size += len(raw) + len(padding)
        accessor = {"bufferView": len(self.views) - 1, "componentType": _COMPONENT[data.dtype],
                    "count": len(data), "type": kind}
        if bounds:
            rows = data.reshape(len(data), -1)
            accessor["min"], accessor["max"] = rows.min(axis=0).tolist(), rows.max(axis=0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def _glb(document: dict, binary: bytes) -> bytes:
    """The GLB container: a 12-byte header, then a JSON chunk padded with spaces and a BIN chunk
    padded with zeros, each to 4 bytes (the specification's padding characters)."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    length = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", _GLB_MAGIC, _GLB_VERSION, length),
                     struct.pack("<II", len(text), _CHUNK_JSON), text,
                     struct.pack("<II", len(binary), _CHUNK_BIN), binary])


# --- rotations as quaternions ------------------------------------------------------------------------

def quaternions(rotations: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices → (..., 4) unit quaternions (x, y, z, w), glTF's order.
    Shepperd's method: the quaternion is read off through its largest component, whose square root
    is far from zero, so it is accurate for every rotation (the trace form alone fails near a
    half-turn)."""
    m = rotations.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # 4·(w², x², y², z²), one column each; the largest picks the formula.
    squares = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=1)
    largest = np.argmax(squares, axis=1)
    s = 2 * np.sqrt(np.maximum(squares[np.arange(len(m)), largest], 1e-300))  # s = 4·|largest component|
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]  # 4w·(x, y, z)
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]  # 4xy, 4xz, 4yz
    candidates = np.stack([
        np.stack([d21, d02, d10, s * s / 4], axis=1),  # through w
        np.stack([s * s / 4, s01, s02, d21], axis=1),  # through x
        np.stack([s01, s * s / 4, s12, d02], axis=1),  # through y
        np.stack([s02, s12, s * s / 4, d10], axis=1),  # through z
    ])  # fmt: skip
    q = candidates[largest, np.arange(len(m))] / s[:, None]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.reshape(*rotations.shape[:-2], 4)


def sign_continuous(q: np.ndarray) -> np.ndarray:
    """(T, ..., 4) quaternions with signs chosen so that each is in the same hemisphere as the frame
    before (dot ≥ 0), the first frame's with w ≥ 0. Flipping frame t flips what frame t+1 is compared
    with, so the sign of frame t is the running product of the raw neighbours' dot-product signs."""
    first = np.where(q[:1, ..., 3:] < 0, -1.0, 1.0)
    steps = np.where(np.sum(q[1:] * q[:-1], axis=-1, keepdims=True) < 0, -1.0, 1.0)
    signs = np.cumprod(np.concatenate([first, steps]), axis=0)
    return q * signs


# --- the document's parts ----------------------------------------------------------------------------

def rest_positions(solved: Solved) -> np.ndarray:
    """(J, 3) each joint's rest (bind) position: the root at the first frame's root position, every
    other joint its parent's plus its offset (no rotation at rest)."""
    rest = np.zeros((len(solved.parents), 3))
    for j, p in enumerate(solved.parents):
        rest[j] = solved.root_positions[0] if p < 0 else rest[p] + solved.offsets[j]
    return rest


def _joint_nodes(solved: Solved, names: tuple[str, ...]) -> list[dict[str, Any]]:
    nodes = []
    for j, p in enumerate(solved.parents):
        translation = solved.root_positions[0] if p < 0 else solved.offsets[j]
        node = {"name": names[j], "translation": [float(x) for x in translation], "rotation": [0.0, 0.0, 0.0, 1.0]}
        children = [c for c, q in enumerate(solved.parents) if q == j]
        if children:
            node["children"] = children
        nodes.append(node)
    return nodes


def _inverse_bind_matrices(rest: np.ndarray) -> np.ndarray:
    """(J, 4, 4): the inverse of each rest global transform, a pure translation (module docstring)."""
    matrices = np.tile(np.eye(4), (len(rest), 1, 1))
    matrices[:, :3, 3] = -rest
    return matrices


def _perpendicular(d: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to unit ``d``: crossed with the axis ``d`` is least aligned with."""
    u = np.cross(d, np.eye(3)[np.argmin(np.abs(d))])
    return u / np.linalg.norm(u)


def _frustum(a: np.ndarray, b: np.ndarray, half_a: float, half_b: float) -> np.ndarray:
    """(8, 3) corners of a square-sectioned box from ``a`` to ``b``, half-widths ``half_a`` at ``a``
    and ``half_b`` at ``b``: four around ``a``, then the same four around ``b``."""
    d = (b - a) / np.linalg.norm(b - a)
    u = _perpendicular(d)
    v = np.cross(d, u)
    ring = np.array([u + v, v - u, -u - v, u - v])  # in turn around d
    return np.concatenate([a + half_a * ring, b + half_b * ring])


# The six quads of a hexahedron whose corners are two rings of four (as _frustum returns them).
_QUADS = ((0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7))


def _hexahedron(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat-shaded triangles of a convex hexahedron: (24, 3) positions (four per face, so each face
    has its own normal) and (24, 3) unit normals, counter-clockwise seen from outside. Each quad's
    winding is checked against the centre rather than tabulated: the faces then point outwards
    whatever the corners' handedness."""
    centre = corners.mean(axis=0)
    positions, normals = [], []
    for quad in _QUADS:
        face = corners[list(quad)]
        normal = np.cross(face[2] - face[0], face[3] - face[1])  # diagonals: exact for a planar quad
        if np.dot(normal, face.mean(axis=0) - centre) < 0:
            face, normal = face[::-1], -normal
        positions.append(face)
        normals.append(np.tile(normal / np.linalg.norm(normal), (4, 1)))
    return np.concatenate(positions), np.concatenate(normals)


def _bone_half_width(length: float) -> float:
    """Half the width of a bone's box at its parent end: a tenth of its length, 1 to 4 cm."""
    return float(np.clip(0.1 * length, 0.01, 0.04))


def _mesh_geometry(solved: Solved, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stand-in mesh in the bind pose: (V, 3) positions, (V, 3) normals and (V,) the joint each
    vertex is bound to (module docstring)."""
    pieces = []  # (positions, normals, joint)
    for j, p in enumerate(solved.parents):
        length = float(np.linalg.norm(rest[j] - rest[p])) if p >= 0 else 0.0
        if length > 1e-6:  # a zero-length bone (coincident keypoints) would be a degenerate box
            half = _bone_half_width(length)
            pieces.append((*_hexahedron(_frustum(rest[p], rest[j], half, half / 2)), p))
        if j not in solved.parents:  # an end joint: a cube centred on it
            down = rest[j] - np.array([0.0, _CUBE_HALF, 0.0])
            pieces.append((*_hexahedron(_frustum(down, down + [0.0, 2 * _CUBE_HALF, 0.0], _CUBE_HALF, _CUBE_HALF)), j))
    positions = np.concatenate([piece[0] for piece in pieces])
    normals = np.concatenate([piece[1] for piece in pieces])
    bound = np.concatenate([np.full(len(piece[0]), piece[2]) for piece in pieces])
    return positions, normals, bound


def _mesh(buffer: _Buffer, solved: Solved, rest: np.ndarray) -> dict[str, Any]:
    positions, normals, bound = _mesh_geometry(solved, rest)
    quads = len(positions) // 4
    triangles = (np.arange(quads)[:, None] * 4 + np.array([0, 1, 2, 0, 2, 3])).ravel()
    index_type = "<u2" if len(positions) <= 65535 else "<u4"
    joints = np.zeros((len(positions), 4), dtype="u1")  # 17 joints: one byte each is enough
    joints[:, 0] = bound
    weights = np.zeros((len(positions), 4), dtype="<f4")
    weights[:, 0] = 1.0  # rigid: the three unused slots point at joint 0 with weight 0, as allowed
    attributes = {
        "POSITION": buffer.add(positions.astype("<f4"), "VEC3", target=_ARRAY_BUFFER, bounds=True),
        "NORMAL": buffer.add(normals.astype("<f4"), "VEC3", target=_ARRAY_BUFFER),
        "JOINTS_0": buffer.add(joints, "VEC4", target=_ARRAY_BUFFER),
        "WEIGHTS_0": buffer.add(weights, "VEC4", target=_ARRAY_BUFFER),
    }
    indices = buffer.add(triangles.astype(index_type), "SCALAR", target=_ELEMENT_ARRAY_BUFFER)
    return {"name": "bones", "primitives": [{"attributes": attributes, "indices": indices, "material": 0}]}


def _animated_joints(solved: Solved) -> list[int]:
    """Joints with a rotation channel: those with children, and any other that turns at all."""
    identity = np.all(np.abs(solved.rotations - np.eye(3)) < 1e-12, axis=(0, 2, 3))
    return [j for j in range(len(solved.parents)) if j in solved.parents or not identity[j]]


def _animation(buffer: _Buffer, solved: Solved, name: str) -> dict[str, Any]:
    frames = len(solved.root_positions)
    times = buffer.add((np.arange(frames) / solved.fps).astype("<f4"), "SCALAR", bounds=True)
    samplers = [{"input": times, "output": buffer.add(solved.root_positions.astype("<f4"), "VEC3"),
                 "interpolation": "LINEAR"}]
    root = solved.parents.index(-1)
    channels = [{"sampler": 0, "target": {"node": root, "path": "translation"}}]
    animated = _animated_joints(solved)
    rotations = sign_continuous(quaternions(solved.rotations[:, animated]))  # (T, len(animated), 4)
    for k, j in enumerate(animated):
        output = buffer.add(rotations[:, k].astype("<f4"), "VEC4")
        samplers.append({"input": times, "output": output, "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": j, "path": "rotation"}})
    return {"name": name, "samplers": samplers, "channels": channels}


def _document(solved: Solved, names: tuple[str, ...], extras: dict | None, name: str, buffer: _Buffer) -> dict:
    rest = rest_positions(solved)
    nodes = _joint_nodes(solved, names)
    roots = [j for j, p in enumerate(solved.parents) if p < 0]
    armature, mesh_node = len(nodes), len(nodes) + 1
    nodes.append({"name": "Armature", "children": roots})
    nodes.append({"name": "bones", "mesh": 0, "skin": 0})
    scene: dict[str, Any] = {"name": name, "nodes": [armature, mesh_node]}
    if extras is not None:
        scene["extras"] = dict(extras)
    column_major = _inverse_bind_matrices(rest).transpose(0, 2, 1)  # glTF stores matrices column by column
    skin = {"name": "Armature", "joints": list(range(len(names))), "skeleton": roots[0],
            "inverseBindMatrices": buffer.add(column_major.astype("<f4"), "MAT4")}
    mesh = _mesh(buffer, solved, rest)
    animation = _animation(buffer, solved, name)
    material = {"name": "bone", "pbrMetallicRoughness": {"baseColorFactor": _COLOUR, "metallicFactor": 0.0,
                                                         "roughnessFactor": 0.8}}
    return {"asset": {"version": "2.0", "generator": GENERATOR}, "scene": 0, "scenes": [scene], "nodes": nodes,
            "skins": [skin], "meshes": [mesh], "materials": [material], "animations": [animation],
            "accessors": buffer.accessors, "bufferViews": buffer.views, "buffers": [{"byteLength": buffer.size}]}


# --- entry points ------------------------------------------------------------------------------------

def glb_bytes(solved: Solved, *, rig: str = "posegraph", extras: dict | None = None, name: str = "posegraph") -> bytes:
    """``solved`` as a GLB file's bytes (see the module docstring): joints named from ``rig``
    (``posegraph.motion.rigs``; UsageError if unknown), the animation and scene named ``name``,
    ``extras`` (JSON-able) in the scene's extras. ValueError for a solution with non-finite values or
    matrices that are not rotations, or extras with NaN or infinity (JSON has neither); TypeError
    for extras JSON cannot hold at all."""
    names = joint_names(rig)
    _check(solved, names)
    buffer = _Buffer()
    document = _document(solved, names, extras, name, buffer)
    return _glb(document, buffer.bytes())


def write_glb(solved: Solved, path: str | os.PathLike, *, rig: str = "posegraph", extras: dict | None = None,
              name: str = "posegraph") -> None:
    """Write ``solved`` to ``path`` as GLB (arguments as :func:`glb_bytes`). The bytes are built
    first and written through a temporary file renamed into place, so an error never leaves half a
    file, nor replaces an old one."""
    data = glb_bytes(solved, rig=rig, extras=extras, name=name)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
