"""The camera's focal length from a video's own metadata, where the camera wrote it.

Phones write it into MP4/QuickTime files as a metadata item (``moov/meta`` with a ``keys`` list of
reverse-DNS names and an ``ilst`` of values): Apple's camera as
``com.apple.quicktime.camera.focal_length.35mm_equivalent`` (ffmpeg writes the same with
``-movflags use_metadata_tags -metadata KEY=VALUE``). Only that box path is read: a walk over the
file's top-level boxes to ``moov`` (its size bounded), never the media data. Anything else, or a
file without the item: None, and posegraph.motion.root's default applies.
"""

from __future__ import annotations

import struct
from pathlib import Path

FOCAL_35MM_KEYS = ("com.apple.quicktime.camera.focal_length.35mm_equivalent",)
MAX_MOOV_BYTES = 64 << 20  # a moov this large is a long video's sample tables; metadata is near its start


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if size == 1 and at + 16 <= end:
            size, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif size == 0:
            size = end - at
        if size < head or at + size > end:
            return
        yield kind, at + head, at + size
        at += size


def _moov(path: Path) -> bytes | None:
    with open(path, "rb") as f:
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            size, kind = struct.unpack(">I4s", header)
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", f.read(8))[0], 16
            if size < head:
                return None
            if kind == b"moov":
                return f.read(size - head) if size - head <= MAX_MOOV_BYTES else None
            f.seek(size - head, 1)


def metadata_items(path: Path) -> dict[str, str]:
    """The moov/meta items (keys → values as text) of an MP4/MOV file; {} when there are none."""
    try:
        moov = _moov(Path(path))
    except OSError:
        return {}
    if not moov:
        return {}
    for kind, a, b in _boxes(moov):
        if kind == b"udta":  # some writers put it one level down
            inner = [(s, t) for k, s, t in _boxes(moov, a, b) if k == b"meta"]
            if inner:
                a, b, kind = *inner[0], b"meta"
        if kind == b"meta":
            # QuickTime's meta is a plain box; ISO's a full box (4 bytes of version and flags first).
            if moov[a + 4:a + 8] not in (b"hdlr", b"keys", b"ilst"):
                a += 4
            items = _items(moov, a, b)
            if items:
                return items
    return {}


def _items(data: bytes, start: int, end: int) -> dict[str, str]:
    keys, values = [], {}
    for kind, a, b in _boxes(data, start, end):
        if kind == b"keys" and b - a >= 8:
            count = struct.unpack(">I", data[a + 4:a + 8])[0]
            keys = [data[s:t].decode("utf-8", "replace") for _, s, t in _boxes(data, a + 8, b)][:count]
        elif kind == b"ilst":
            for index, s, t in _boxes(data, a, b):
                for inner, u, v in _boxes(data, s, t):
                    if inner == b"data" and v - u >= 8:
                        values[struct.unpack(">I", index)[0]] = data[u + 8:v].decode("utf-8", "replace")
    return {keys[i - 1]: value for i, value in values.items() if 0 < i <= len(keys)}


def focal_35mm(path: Path) -> float | None:
    """The 35 mm-equivalent focal length (mm) the video's metadata gives, or None."""
    items = metadata_items(path)
    for key in FOCAL_35MM_KEYS:
        try:
            value = float(items[key])
        except (KeyError, ValueError):
            continue
        if 1.0 <= value <= 2000.0:
            return value
    return None
