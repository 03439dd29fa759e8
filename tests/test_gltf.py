"""glTF export: a synthetic track with root motion (a walk round a circle), written as GLB, read back
by an independent reader written here from the glTF 2.0 specification (not the exporter's code), posed
by forward kinematics from its nodes and animation samples, and checked by the Khronos glTF validator."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from containers import REAL_CACHE, REPO
from posegraph.errors import UsageError
from posegraph.keypoints import H36M17, H36M_PARENTS
from posegraph.motion.bvh import forward_kinematics, solve_track
from posegraph.motion.gltf import glb_bytes, quaternions, write_glb
from posegraph.motion.rigs import RIG_CHOICES, RIGS, joint_names
from test_bvh import FPS, rotation, synthetic_track
from tiers import missing

TURN = 350.0  # degrees the walker turns over the track: past the half-turn where a quaternion's w changes sign
RADIUS = 1.5  # metres: the circle walked
EXTRAS = {"foot_contacts": {"left": [[0, 12], [30, 42]], "right": [[15, 27]]}, "track": 3}


# --- a solved track that walks ----------------------------------------------------------------------

def walking(solved):
    """``solved`` turned about +Y by up to TURN degrees while its root walks round a circle of
    RADIUS, facing where it goes (rest facing +Z), the pelvis bobbing 2 cm: real root motion."""
    frames = solved.frames
    theta = np.radians(TURN) * np.arange(frames) / (frames - 1)
    yaw = np.array([rotation((0, 1, 0), np.degrees(a)) for a in theta])
    rotations = solved.rotations.copy()
    rotations[:, 0] = yaw @ rotations[:, 0]
    height = solved.root_positions[:, 1] + 0.02 * np.sin(4 * theta)
    root = np.stack([RADIUS * (1 - np.cos(theta)), height, RADIUS * np.sin(theta)], axis=1)
    return dataclasses.replace(solved, root_positions=root, rotations=rotations,
                               positions=forward_kinematics(solved.offsets, root, rotations))


@pytest.fixture(scope="module")
def solved():
    return walking(solve_track(synthetic_track(), FPS))


@pytest.fixture(scope="module")
def written(solved, tmp_path_factory):
    path = tmp_path_factory.mktemp("gltf") / "track.glb"
    write_glb(solved, path, extras=EXTRAS, name="track 3")
    return path


@pytest.fixture(scope="module")
def glb(written):
    return read_glb(written.read_bytes())


# --- an independent GLB reader ----------------------------------------------------------------------

JSON_CHUNK, BIN_CHUNK = 0x4E4F534A, 0x004E4942
COMPONENTS = {5120: "i1", 5121: "u1", 5122: "<i2", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
WIDTHS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


@dataclasses.dataclass
class Glb:
    doc: dict
    binary: bytes

    def accessor(self, index: int) -> np.ndarray:
        """The accessor's elements, (count, width) ((count, 4, 4) for MAT4, read column-major)."""
        acc = self.doc["accessors"][index]
        view = self.doc["bufferViews"][acc["bufferView"]]
        dtype, width = np.dtype(COMPONENTS[acc["componentType"]]), WIDTHS[acc["type"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        stride = view.get("byteStride", dtype.itemsize * width)
        assert start % dtype.itemsize == 0, "accessor not aligned to its component size"
        end = start + (acc["count"] - 1) * stride + dtype.itemsize * width
        assert end <= view.get("byteOffset", 0) + view["byteLength"] <= len(self.binary)
        out = np.ndarray((acc["count"], width), dtype, buffer=self.binary, offset=start,
                         strides=(stride, dtype.itemsize)).copy()
        return out.reshape(-1, 4, 4).transpose(0, 2, 1) if acc["type"] == "MAT4" else out

    def node_index(self, name: str) -> int:
        return [n.get("name") for n in self.doc["nodes"]].index(name)


def read_glb(data: bytes) -> Glb:
    """Header (magic, version 2, total length), then a JSON chunk and a BIN chunk, 4-byte aligned."""
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunks, offset = [], 12
    while offset < length:
        size, kind = struct.unpack_from("<II", data, offset)
        assert size % 4 == 0 and offset + 8 + size <= length
        chunks.append((kind, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    assert [kind for kind, _ in chunks] == [JSON_CHUNK, BIN_CHUNK]
    doc = json.loads(chunks[0][1].decode("utf-8"))
    assert doc["buffers"] == [{"byteLength": doc["buffers"][0]["byteLength"]}]  # the GLB's own: no uri
    assert doc["buffers"][0]["byteLength"] <= len(chunks[1][1]) < doc["buffers"][0]["byteLength"] + 4
    return Glb(doc, chunks[1][1])


def glb_file(doc: dict, binary: bytes) -> bytes:
    """The container again (for a deliberately broken copy the validator must refuse)."""
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    return (struct.pack("<4sII", b"glTF", 2, 28 + len(text) + len(binary)) + struct.pack("<II", len(text), JSON_CHUNK)
            + text + struct.pack("<II", len(binary), BIN_CHUNK) + binary)


def quaternion_matrix(q) -> np.ndarray:
    """Unit quaternion (x, y, z, w) → rotation matrix (the glTF specification's order)."""
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def local_matrix(node: dict, pose: dict) -> np.ndarray:
    """T · R · S of a node, ``pose`` (path → value) overriding its rest values, as an animation does."""
    if "matrix" in node:
        return np.array(node["matrix"], float).reshape(4, 4).T
    m = np.eye(4)
    m[:3, :3] = quaternion_matrix(pose.get("rotation", node.get("rotation", (0, 0, 0, 1))))
    m[:3, :3] = m[:3, :3] * np.asarray(pose.get("scale", node.get("scale", (1, 1, 1))), float)
    m[:3, 3] = pose.get("translation", node.get("translation", (0, 0, 0)))
    return m


def world_matrices(doc: dict, poses: dict[int, dict] | None = None) -> dict[int, np.ndarray]:
    """Every node's global transform, walking the default scene's trees from their roots."""
    poses, world = poses or {}, {}

    def visit(index: int, parent: np.ndarray) -> None:
        world[index] = parent @ local_matrix(doc["nodes"][index], poses.get(index, {}))
        for child in doc["nodes"][index].get("children", []):
            visit(child, world[index])

    for root in doc["scenes"][doc.get("scene", 0)]["nodes"]:
        visit(root, np.eye(4))
    return world


def animation_poses(glb: Glb) -> tuple[np.ndarray, list[dict[int, dict]]]:
    """The animation's sample times and, per sample, node → {path: value}."""
    (animation,) = glb.doc["animations"]
    times, per_node = None, {}
    for channel in animation["channels"]:
        sampler = animation["samplers"][channel["sampler"]]
        t = glb.accessor(sampler["input"])[:, 0]
        assert times is None or np.array_equal(times, t)
        times = t
        per_node.setdefault(channel["target"]["node"], {})[channel["target"]["path"]] = glb.accessor(sampler["output"])
    poses = [{node: {path: values[k] for path, values in paths.items()} for node, paths in per_node.items()}
             for k in range(len(times))]
    return times, poses


def segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from ``point`` to the segment from ``a`` to ``b`` (a point where they coincide)."""
    ab = b - a
    along = np.clip(np.dot(point - a, ab) / np.dot(ab, ab), 0, 1) if np.dot(ab, ab) > 0 else 0.0
    return float(np.linalg.norm(point - (a + along * ab)))


def skin_joint_positions(glb: Glb) -> np.ndarray:
    """(T, J, 3): each skin joint's global position at each animation sample."""
    (skin,) = glb.doc["skins"]
    _, poses = animation_poses(glb)
    return np.array([[world_matrices(glb.doc, pose)[j][:3, 3] for j in skin["joints"]] for pose in poses])


# --- tests -----------------------------------------------------------------------------------------

def test_the_walk_really_moves_and_turns(solved):
    """The fixture's premise: the root travels and turns past a half-turn, where unit quaternions
    taken one frame at a time change sign (so sign continuity below is tested, not vacuous)."""
    travelled = np.linalg.norm(np.diff(solved.root_positions, axis=0), axis=1).sum()
    assert travelled > 5  # metres: round most of a 1.5 m circle
    raw = quaternions(solved.rotations[:, 0])
    assert (np.sum(raw[1:] * raw[:-1], axis=1) < 0).any(), "the per-frame conversion never flips here"


def test_asset_scene_skin_and_animation_layout(glb, solved):
    doc = glb.doc
    assert doc["asset"] == {"version": "2.0", "generator": "posegraph"}
    scene = doc["scenes"][doc["scene"]]
    assert scene["extras"] == EXTRAS
    (skin,), (animation,) = doc["skins"], doc["animations"]
    assert animation["name"] == "track 3"
    names = [doc["nodes"][j]["name"] for j in skin["joints"]]
    assert names == list(H36M17)
    parent_of = {c: p for p, node in enumerate(doc["nodes"]) for c in node.get("children", [])}
    assert [skin["joints"].index(parent_of[j]) if parent_of[j] in skin["joints"] else -1
            for j in skin["joints"]] == list(H36M_PARENTS)
    root = skin["joints"][0]
    assert skin["skeleton"] == root
    # The skinned mesh node: at the scene root, untransformed (the specification's rule).
    (mesh_node,) = [i for i, n in enumerate(doc["nodes"]) if "skin" in n]
    assert mesh_node in scene["nodes"] and mesh_node not in parent_of
    assert not {"translation", "rotation", "scale", "matrix"} & set(doc["nodes"][mesh_node])
    # Rest pose: offsets, no rotation; the root where the walk starts.
    for k, j in enumerate(skin["joints"]):
        node = doc["nodes"][j]
        expected = solved.root_positions[0] if k == 0 else solved.offsets[k]
        assert np.allclose(node["translation"], expected, atol=1e-12)
        assert node.get("rotation", [0, 0, 0, 1]) == [0, 0, 0, 1]
    # Animation: every frame at t / fps, LINEAR; the root translates, every joint with children turns.
    times = glb.accessor(animation["samplers"][0]["input"])[:, 0]
    assert np.allclose(times, np.arange(solved.frames) / FPS, atol=1e-6) and (np.diff(times) > 0).all()
    input_accessor = doc["accessors"][animation["samplers"][0]["input"]]
    assert (input_accessor["min"], input_accessor["max"]) == ([float(times[0])], [float(times[-1])])
    assert {s["interpolation"] for s in animation["samplers"]} == {"LINEAR"}
    targets = {(c["target"]["node"], c["target"]["path"]) for c in animation["channels"]}
    with_children = {skin["joints"][j] for j in set(H36M_PARENTS) if j >= 0}
    assert (root, "translation") in targets
    assert with_children <= {node for node, path in targets if path == "rotation"}


def test_quaternions_are_unit_and_sign_continuous(glb):
    (animation,) = glb.doc["animations"]
    rotations = [glb.accessor(animation["samplers"][c["sampler"]]["output"])
                 for c in animation["channels"] if c["target"]["path"] == "rotation"]
    assert rotations
    for q in rotations:
        assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
        # LINEAR rotation is slerp between neighbours: a negative dot would spin the long way round.
        assert (np.sum(q[1:] * q[:-1], axis=1) > 0).all()


def test_forward_kinematics_of_the_file_reproduces_the_positions(glb, solved):
    fk = skin_joint_positions(glb)
    err = np.linalg.norm(fk - solved.positions, axis=-1).max()
    print(f"glTF round trip: max joint position error {err * 1e6:.3f} µm over {solved.frames} frames")
    assert err < 1e-5
    assert np.linalg.norm(fk[-1, 0] - fk[0, 0]) > 0.2  # root motion survives (a near-full circle)


def test_inverse_bind_matrices_undo_the_rest_pose(glb):
    (skin,) = glb.doc["skins"]
    inverse_bind = glb.accessor(skin["inverseBindMatrices"])
    rest = world_matrices(glb.doc)  # no animation: the nodes' own transforms
    products = np.array([ibm @ rest[j] for ibm, j in zip(inverse_bind, skin["joints"], strict=True)])
    assert len(products) == len(H36M17)
    assert np.abs(products - np.eye(4)).max() < 1e-6


def test_mesh_is_rigidly_bound_along_the_bones(glb, solved):
    """Each vertex is bound with weight 1 to one joint, lies near that joint's bones (to its children,
    or the joint itself at an end) in the bind pose, and stays at the same distance from them posed:
    the mesh moves with the skeleton."""
    doc = glb.doc
    (mesh,), (skin,) = doc["meshes"], doc["skins"]
    (primitive,) = mesh["primitives"]
    attributes = primitive["attributes"]
    positions = glb.accessor(attributes["POSITION"]).astype(float)
    weights, joints = glb.accessor(attributes["WEIGHTS_0"]), glb.accessor(attributes["JOINTS_0"])
    normals = glb.accessor(attributes["NORMAL"])
    indices = glb.accessor(primitive["indices"])[:, 0]
    assert len(indices) % 3 == 0 and indices.max() < len(positions)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)
    assert np.array_equal(weights, np.tile([1, 0, 0, 0], (len(positions), 1)))
    bound = joints[:, 0].astype(int)
    assert set(bound) == set(range(len(H36M17)))  # every joint shows: bones from it, or its end cube
    inverse_bind = glb.accessor(skin["inverseBindMatrices"])
    _, poses = animation_poses(glb)

    def distance_to_bones(points: np.ndarray, joint_positions: np.ndarray) -> np.ndarray:
        """Each point's distance to the nearest bone from its bound joint (the joint, at an end)."""
        out = np.empty(len(points))
        for v, (point, j) in enumerate(zip(points, bound)):
            a = joint_positions[j]
            ends = [joint_positions[c] for c, p in enumerate(H36M_PARENTS) if p == j] or [a]
            out[v] = min(segment_distance(point, a, b) for b in ends)
        return out

    rest_joints = np.array([world_matrices(doc)[j][:3, 3] for j in skin["joints"]])
    at_rest = distance_to_bones(positions, rest_joints)
    assert at_rest.max() < 0.06  # inside a box at most 4 cm half-wide, or a 2.5 cm cube's corner
    homogeneous = np.c_[positions, np.ones(len(positions))]
    for t in (0, len(poses) // 3, len(poses) - 1):
        world = world_matrices(doc, poses[t])
        joint_world = np.array([world[j] for j in skin["joints"]])
        skinned = np.einsum("vij,vj->vi", joint_world[bound] @ inverse_bind[bound], homogeneous)[:, :3]
        posed = distance_to_bones(skinned, joint_world[:, :3, 3])
        assert np.abs(posed - at_rest).max() < 1e-5


# --- the Khronos validator ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def gltf_validator() -> Path:
    """The npm package's folder, installed (once, into the real cache: cached across sessions) by
    scripts/install-gltf-validator.sh; a skip saying why where node or npm is missing."""
    env = {**os.environ, "POSEGRAPH_CACHE": str(REAL_CACHE)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "install-gltf-validator.sh")], capture_output=True,
                          text=True, timeout=300, env=env)
    folder = done.stdout.strip()
    if done.returncode != 0 or not folder or not (Path(folder) / "package.json").is_file():
        reason = f"no Khronos glTF validator (scripts/install-gltf-validator.sh: {done.stderr.strip()[-300:]})"
        print(reason)
        missing(reason)
    return Path(folder)


def validate(validator: Path, path: Path) -> dict:
    done = subprocess.run(["node", str(REPO / "scripts" / "gltf-validate.mjs"), str(validator), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("rig", RIG_CHOICES)
def test_khronos_validator_finds_no_issue(gltf_validator, solved, tmp_path, rig):
    path = tmp_path / f"{rig}.glb"
    write_glb(solved, path, rig=rig, extras=EXTRAS)
    report = validate(gltf_validator, path)
    issues = report["issues"]
    print(f"{report['validatorVersion']} on {rig}: {issues['numErrors']} errors, {issues['numWarnings']} "
          f"warnings, {issues['numInfos']} infos, {issues['numHints']} hints; {issues['messages']}")
    assert report["info"]["hasSkins"] and report["info"]["animationCount"] == 1
    # Nothing at all: no error, no warning, not even an info or a hint.
    assert (issues["numErrors"], issues["numWarnings"], issues["numInfos"], issues["numHints"]) == (0, 0, 0, 0)


def test_khronos_validator_refuses_a_broken_copy(gltf_validator, written, tmp_path):
    """The check above can fail: the same file with a wrong POSITION max is an error."""
    glb = read_glb(written.read_bytes())
    position = glb.doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
    glb.doc["accessors"][position]["max"][1] += 0.5
    broken = tmp_path / "broken.glb"
    broken.write_bytes(glb_file(glb.doc, glb.binary))
    issues = validate(gltf_validator, broken)["issues"]
    assert issues["numErrors"] >= 1
    assert "ACCESSOR_MAX_MISMATCH" in {m["code"] for m in issues["messages"]}


# --- rigs and failures --------------------------------------------------------------------------------

def test_mixamo_names_are_the_nodes_and_an_unknown_rig_is_a_usage_error(solved):
    assert RIG_CHOICES == ("posegraph", "mixamo") and RIGS["posegraph"] == H36M17
    mixamo = joint_names("mixamo")
    assert len(mixamo) == len(set(mixamo)) == len(H36M17)
    assert all(name.startswith("mixamorig:") for name in mixamo)
    by_h36m = dict(zip(H36M17, mixamo, strict=True))
    # The two mappings that are not the obvious ones (rigs.py says why).
    assert by_h36m["left_shoulder"] == "mixamorig:LeftArm" and by_h36m["thorax"] == "mixamorig:Spine2"
    assert by_h36m["root"] == "mixamorig:Hips" and by_h36m["right_wrist"] == "mixamorig:RightHand"
    glb = read_glb(glb_bytes(solved, rig="mixamo"))
    (skin,) = glb.doc["skins"]
    assert [glb.doc["nodes"][j]["name"] for j in skin["joints"]] == list(mixamo)
    with pytest.raises(UsageError) as raised:
        glb_bytes(solved, rig="unreal")
    message = str(raised.value)
    print(message)
    assert "\n" not in message and "'unreal'" in message
    assert all(choice in message for choice in RIG_CHOICES)


def test_non_finite_rotation_is_refused_and_leaves_no_file(solved, tmp_path):
    rotations = solved.rotations.copy()
    rotations[7, H36M17.index("left_elbow"), 0, 0] = np.nan
    with pytest.raises(ValueError) as raised:
        write_glb(dataclasses.replace(solved, rotations=rotations), tmp_path / "nan.glb")
    print(raised.value)
    assert "frame 7" in str(raised.value) and "left_elbow" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_keeps_the_old_file_and_no_temporary(solved, tmp_path):
    target = tmp_path / "track.glb"
    target.write_bytes(b"old")
    rotations = solved.rotations.copy()
    rotations[3, 0] *= 1.1  # a scaled matrix is not a rotation: no quaternion represents it
    for bad, kwargs in ((dataclasses.replace(solved, rotations=rotations), {}),
                        (solved, {"extras": {"contact": float("nan")}})):  # JSON has no NaN
        with pytest.raises(ValueError):
            write_glb(bad, target, **kwargs)
        assert target.read_bytes() == b"old"
        assert [p.name for p in tmp_path.iterdir()] == ["track.glb"]
