"""Pixels in and out of frame documents."""

from __future__ import annotations

import base64
import binascii
import io
import os

import cv2
import numpy as np

from .. import fetchpolicy
from ..errors import BadInput, FetchError, MissingInput
from ..frame import FrameDocument, ImageRef
from ..uri import read_bytes

# A 50-megapixel frame is far above what the detector looks at (≤ 640²) and keeps a
# hostile or mistaken upload from taking gigabytes of memory in every stage.
MAX_PIXELS = int(os.environ.get("POSEGRAPH_MAX_PIXELS", 50_000_000))
MAX_IMAGE_BYTES = int(os.environ.get("POSEGRAPH_MAX_IMAGE_BYTES", 64 << 20))


def single_threaded_opencv() -> None:
    """Make OpenCV run each call on its calling thread, for the rest of this process.

    OpenCV 5.1's warpAffine cuts its output into row stripes run side by side, and a stripe's
    first row can come out one grey level off the same row cut in one piece; when another call
    holds OpenCV's threads, a call runs in one piece. So a pose2d crop depended on how busy the
    process was: 21 of 300 crops differed between 1 and 2 threads, 2 to 16 of 300 between passes
    of 3 concurrent callers, and a split job's keypoint scores were 9.4e-3 off the unsplit job's
    (frame 2, person 9, in 6 of 7 runs). On one thread a crop depends on its box and image only,
    and is no slower: 0.135 ms a 256×192 crop against 0.180 ms on 2 threads (2 cores). Stages
    take their parallelism from the batch (onnxruntime, split_batch), not from OpenCV."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def check_size(width: int, height: int, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> None:
    if width <= 0 or height <= 0:
        raise BadInput(f"{what} has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise BadInput(
            f"{what} is {width}×{height} = {width * height / 1e6:.0f} MP, above the "
            f"{max_pixels / 1e6:.0f} MP limit (POSEGRAPH_MAX_PIXELS)"
        )


def decode_image(data: bytes, *, what: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes → BGR uint8 array, refusing oversized images before decoding them."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            fmt = header.format
    except Image.DecompressionBombError:
        raise BadInput(f"{what} is above the {max_pixels / 1e6:.0f} MP limit (POSEGRAPH_MAX_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput(f"{what} is not a decodable image (expected JPEG or PNG bytes)") from None
    if fmt not in {"JPEG", "PNG", "BMP", "WEBP", "TIFF"}:
        raise BadInput(f"{what} is a {fmt} image; send JPEG or PNG")
    check_size(width, height, what=what, max_pixels=max_pixels)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise BadInput(f"{what} is truncated or corrupt ({fmt}, {len(data)} bytes)")
    return pixels


def decode_base64_image(text: str, *, what: str = "image.data") -> np.ndarray:
    if "," in text[:64] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # tolerate data URLs
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{what} is not valid base64") from None
    return decode_image(data, what=what)


def pixels_of(doc: FrameDocument, *, stage: str) -> np.ndarray:
    """The document's BGR pixels, decoding them once per document. An ``image.uri`` is read only
    if this process's fetch policy allows it (posegraph.fetchpolicy: inline data only when served)."""
    if doc._pixels is not None:
        return doc._pixels
    image: ImageRef | None = doc.image
    if image is None:
        raise MissingInput(stage, ["image (base64 'data' or 'uri')"])
    if image.data is not None:
        pixels = decode_base64_image(image.data)
    else:

        try:
            data = read_bytes(image.uri, max_bytes=MAX_IMAGE_BYTES, policy=fetchpolicy.current())
        except fetchpolicy.FetchRefused as exc:
            raise fetchpolicy.FetchRefused(f"{stage}: {exc}") from None
        except FetchError as exc:
            raise BadInput(f"{stage}: {exc}") from None
        pixels = decode_image(data, what=f"image at {image.uri}")
    height, width = pixels.shape[:2]
    if (doc.width is not None and doc.width != width) or (doc.height is not None and doc.height != height):
        raise BadInput(f"{stage}: document says {doc.width}×{doc.height} but the image is {width}×{height}")
    doc.width, doc.height = width, height
    doc._pixels = pixels
    return pixels


def encode_image(pixels: np.ndarray, fmt: str = "jpeg", quality: int = 92) -> bytes:
    ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if fmt == "jpeg" else (".png", [])
    ok, buf = cv2.imencode(ext, pixels, params)
    if not ok:  # pragma: no cover - OpenCV only fails on empty input
        raise BadInput("cannot encode image")
    return buf.tobytes()


def image_ref(pixels: np.ndarray, fmt: str = "jpeg", quality: int = 92) -> ImageRef:
    """Pixels encoded and inlined in a frame document."""
    return inline_image(encode_image(pixels, fmt, quality), fmt)


def inline_image(data: bytes, fmt: str | None = None) -> ImageRef:
    """Encoded image bytes inlined in a frame document (base64): the one way every caller does it."""
    return ImageRef(data=base64.b64encode(data).decode("ascii"), format=fmt)


def network_input(pixels: np.ndarray, params: dict) -> np.ndarray:
    """BGR uint8 (H, W, 3) → normalised float32 (3, H, W), channel order and statistics from a
    model's params (mmcv's data preprocessor: optional BGR→RGB, then (x - mean) / std)."""
    chw = pixels.transpose(2, 0, 1).astype(np.float32)
    if params["to_rgb"]:
        chw = chw[::-1]
    mean = np.asarray(params["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(params["std"], np.float32).reshape(3, 1, 1)
    return (chw - mean) / std
