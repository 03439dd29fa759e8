"""Reading and writing video with OpenCV, with readable errors for bad files."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# FFmpeg's own console messages ("moov atom not found") would interleave with ours: errors are
# reported as one readable line instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import BadInput
from .imageio import check_size

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FOURCC = {".webm": "VP80", ".mp4": "mp4v", ".avi": "MJPG"}


@contextlib.contextmanager
def _quiet_native_stderr():
    """OpenCV's FFmpeg backend prints notes straight to file descriptor 2 (e.g. that WebM spells
    the VP8 tag differently, before using it anyway): keep them off the user's terminal."""
    import sys

    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield
        return
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """A writer for ``path`` by its suffix: .webm (VP8: plays in browsers), .mp4 (mp4v), .avi (MJPG)."""
    path = Path(path)
    fourcc = FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise BadInput(f"{path.name}: write videos as .webm, .mp4 or .avi")
    with _quiet_native_stderr():
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise BadInput(f"cannot write video {path} (OpenCV has no {fourcc} encoder here)")
    return writer


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frame_count: int  # what the container claims; may be 0 or wrong for damaged files


def sniff_container(path: Path) -> str | None:
    """The video container by its magic bytes, or None. OpenCV's FFmpeg backend accepts almost
    anything (a text file decodes as "tty" video), so we only hand it files that look like video."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if len(head) >= 12 and head[4:8] in {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"}:
        return "mp4/mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska/webm"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg-ps"
    if len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "mpeg-ts"
    if head[:4] in {b"\x30\x26\xb2\x75"}:
        return "asf/wmv"
    return None


class VideoReader:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if sniff_container(self.path) is None:
            raise BadInput(f"{self.path.name} is neither an image nor a video OpenCV can read "
                           "(expected JPEG/PNG, or MP4/MOV/MKV/WebM/AVI)")
        self.capture = cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise BadInput(f"{self.path.name} looks like {sniff_container(self.path)} video but cannot be opened "
                           "(truncated or corrupt?)")
        width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(self.capture.get(cv2.CAP_PROP_FPS)) or 0.0
        count = max(0, int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        if width <= 0 or height <= 0:
            raise BadInput(f"{self.path.name}: no video stream found")
        check_size(width, height, what=f"{self.path.name}'s frames")
        self.info = VideoInfo(width, height, fps if 0 < fps < 1000 else 25.0, count)
        self.decoded = 0
        self.truncated = False

    def frames(self, stride: int = 1, max_frames: int | None = None, start: int = 0
               ) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, BGR pixels) for every ``stride``-th frame. Stops cleanly at a damaged tail.
        Frames before ``start`` are skipped without decoding their pixels (a resumed job);
        ``max_frames`` counts every selected frame, skipped ones included."""
        index = 0
        yielded = 0
        while max_frames is None or yielded < max_frames:
            ok = self.capture.grab()
            if not ok:
                break
            if index % stride == 0 and index < start:
                yielded += 1
            elif index % stride == 0:
                ok, pixels = self.capture.retrieve()
                if not ok or pixels is None:
                    break
                self.decoded += 1
                yielded += 1
                yield index, pixels
            index += 1
        expected = self.info.frame_count
        read_all = max_frames is None or yielded < max_frames
        if read_all and expected and index < expected:
            self.truncated = True
            log.warning("%s: decoding stopped after %d of %d frames (truncated or damaged file?)",
                        self.path.name, index, expected)
        if self.decoded == 0 and read_all and start == 0:
            raise BadInput(f"{self.path.name}: no frame could be decoded (empty, truncated or corrupt video)")

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Video via OpenCV (format by suffix); written to a temporary name, moved into place when complete."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = open_video_writer(self.tmp, fps, size)
        self.frames = 0

    def write(self, pixels: np.ndarray) -> None:
        self.writer.write(pixels)
        self.frames += 1

    def close(self) -> Path:
        self.writer.release()
        self.tmp.replace(self.path)
        return self.path


def is_image_file(path: Path) -> bool:
    """By content when possible (a .jpg that is really a video, or no suffix at all)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.format is not None
    except (UnidentifiedImageError, OSError):
        return False
