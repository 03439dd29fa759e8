"""What both runtimes do with an unpacked archive: build the stage and pick the device."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import fetchpolicy
from ..errors import UsageError
from ..names import THREADS_ENV
from ..stages import Stage, make_stage
from ..stages.user import UserStageRunner, load_user_stage
from .archive import UnpackedArchive

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this container can open: the device files that the NVIDIA container
    runtime (Kubernetes' device plugin, ``docker run --gpus``) puts in /dev, unless
    CUDA_VISIBLE_DEVICES hides them all."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1", "none"):
        return []
    return sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))


def pick_device(gpu_id: int | None = None) -> str:
    """``POSEGRAPH_DEVICE`` if set; else the GPU the server assigned, when onnxruntime can use it
    and one is visible. A CUDA image started without a GPU says so and serves on the CPU."""
    forced = os.environ.get("POSEGRAPH_DEVICE")
    if forced:
        return forced
    if gpu_id is not None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            if visible_gpus():
                return f"cuda:{gpu_id}"
            log.warning("this onnxruntime has the CUDA provider, but no NVIDIA GPU is visible (no /dev/nvidia*; "
                        "on Kubernetes, request nvidia.com/gpu): serving on the CPU")
    return "cpu"


def load_stage(archive: UnpackedArchive, device: str = "cpu") -> Stage | UserStageRunner:
    """The archive's stage, loaded, in a process whose fetch policy is a served one: requests'
    ``image.uri`` are refused unless the deployment allows their source ($POSEGRAPH_FETCH_ALLOW,
    set from the PosePipeline's ``fetchAllow`` by the operator)."""
    policy = fetchpolicy.install(fetchpolicy.FetchPolicy.served())
    log.info("fetch policy: %s", policy.describe())
    threads = os.environ.get(THREADS_ENV) or None
    if threads is not None and not (threads.isdigit() and int(threads) > 0):
        raise UsageError(f"${THREADS_ENV} is {threads!r}: a whole number of threads, 1 or more")
    if archive.is_user_stage:  # a user's code: imported from the archive, probed before it serves
        runner = load_user_stage(archive.user_stage_dir(), archive.settings())
        log.info("serving the user stage %s as %r", archive.stage, archive.model_name)
        return runner
    stage = make_stage(archive.stage, archive.settings())
    # A served stage shares its cores with concurrent requests and, in the embedded graph, with the
    # other stages: each batch is split over single-threaded runs (OrtNetwork, split_batch), which
    # took the served job at 1 person a frame from 0.81× to 1.09× the in-process pipeline (docs/jobs.md).
    stage.load(str(archive.model_path), device, backend="onnxruntime", threads=int(threads) if threads else None,
               split_batch=True)
    log.info("serving %s (%s) as %r on %s", archive.stage, stage.spec.name, archive.model_name, device)
    return stage
