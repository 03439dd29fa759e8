"""What both runtimes do with an unpacked archive: build the stage and pick the device."""

from __future__ import annotations

import logging
import os

from .. import fetchpolicy
from ..errors import UsageError
from ..names import THREADS_ENV
from ..stages import STAGE_CLASSES, Stage
from .archive import UnpackedArchive

log = logging.getLogger(__name__)


def pick_device(gpu_id: int | None = None) -> str:
    """``POSEGRAPH_DEVICE`` if set; else the GPU the server assigned, when onnxruntime can use it."""
    forced = os.environ.get("POSEGRAPH_DEVICE")
    if forced:
        return forced
    if gpu_id is not None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return f"cuda:{gpu_id}"
    return "cpu"


def load_stage(archive: UnpackedArchive, device: str = "cpu") -> Stage:
    """The archive's stage, loaded, in a process whose fetch policy is a served one: requests'
    ``image.uri`` are refused unless the deployment allows their source ($POSEGRAPH_FETCH_ALLOW,
    set from the PosePipeline's ``fetchAllow`` by the operator)."""
    policy = fetchpolicy.install(fetchpolicy.FetchPolicy.served())
    log.info("fetch policy: %s", policy.describe())
    threads = os.environ.get(THREADS_ENV) or None
    if threads is not None and not (threads.isdigit() and int(threads) > 0):
        raise UsageError(f"${THREADS_ENV} is {threads!r}: a whole number of threads, 1 or more")
    stage = STAGE_CLASSES[archive.stage](archive.settings())
    # A served stage shares its cores with concurrent requests and, in the embedded graph, with the
    # other stages: each batch is split over single-threaded runs (OrtNetwork, split_batch), which
    # took the served job at 1 person a frame from 0.81× to 1.09× the in-process pipeline (docs/jobs.md).
    stage.load(str(archive.model_path), device, backend="onnxruntime", threads=int(threads) if threads else None,
               split_batch=True)
    log.info("serving %s (%s) as %r on %s", archive.stage, stage.spec.name, archive.model_name, device)
    return stage
