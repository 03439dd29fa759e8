"""An independent BVH reader for the tests, written from the format's description (not from
posegraph's writer): the hierarchy, the motion rows, and forward kinematics with plain rotation
matrices built per channel in file order."""

from __future__ import annotations

import re

import numpy as np


def axis_rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "Y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def parse_bvh(text: str) -> dict:
    """HIERARCHY (ROOT/JOINT blocks nested by braces, OFFSET, CHANNELS in any order and number, End
    Site) and MOTION (Frames, Frame Time, one row of channel values per frame)."""
    head, motion = re.split(r"^\s*MOTION\s*$", text, maxsplit=1, flags=re.M)
    tokens = head.split()
    assert tokens[0] == "HIERARCHY"
    joints: list[dict] = []  # in file order: name, parent, offset, channels, end_site
    stack: list[int] = []  # open blocks: a joint's index, or -1 for an End Site
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            parent = next((s for s in reversed(stack) if s >= 0), -1)
            joints.append({"name": tokens[i + 1], "parent": parent, "offset": None, "channels": [],
                           "end_site": None})
            assert tokens[i + 2] == "{"
            stack.append(len(joints) - 1)
            i += 3
        elif tok == "End":
            assert tokens[i + 1] == "Site" and tokens[i + 2] == "{"
            stack.append(-1)
            i += 3
        elif tok == "OFFSET":
            offset = np.array([float(v) for v in tokens[i + 1:i + 4]])
            if stack[-1] < 0:
                joints[next(s for s in reversed(stack) if s >= 0)]["end_site"] = offset
            else:
                joints[stack[-1]]["offset"] = offset
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            joints[stack[-1]]["channels"] = tokens[i + 2:i + 2 + n]
            i += 2 + n
        elif tok == "}":
            stack.pop()
            i += 1
        else:
            raise AssertionError(f"unexpected token {tok!r}")
    assert not stack, "unbalanced braces"
    lines = [line.split() for line in motion.strip().splitlines()]
    assert lines[0][0] == "Frames:" and lines[1][:2] == ["Frame", "Time:"]
    frames, frame_time = int(lines[0][1]), float(lines[1][2])
    values = np.array([[float(v) for v in row] for row in lines[2:]])
    return {"joints": joints, "frames": frames, "frame_time": frame_time, "values": values}


def bvh_fk(bvh: dict) -> np.ndarray:
    """(T, J, 3) joint positions in file units. Per joint: translation = OFFSET + position
    channels, rotation = the product of its rotation channels in file order; global = parent's
    global × local."""
    joints, values = bvh["joints"], bvh["values"]
    out = np.zeros((len(values), len(joints), 3))
    for t, row in enumerate(values):
        col, glob_r, glob_t = 0, [None] * len(joints), [None] * len(joints)
        for j, joint in enumerate(joints):
            r, trans = np.eye(3), joint["offset"].copy()
            for ch in joint["channels"]:
                if ch.endswith("position"):
                    trans["XYZ".index(ch[0])] += row[col]
                else:
                    r = r @ axis_rotation(ch[0], row[col])
                col += 1
            p = joint["parent"]
            if p < 0:
                glob_r[j], glob_t[j] = r, trans
            else:
                glob_r[j], glob_t[j] = glob_r[p] @ r, glob_t[p] + glob_r[p] @ trans
            out[t, j] = glob_t[j]
        assert col == len(row), "a frame's values do not match the channels"
    return out
