"""Run a network: exported ONNX under onnxruntime (default on CPU), or PyTorch.

Why ONNX by default: measured here, onnxruntime runs these CNNs 1.5–3× faster than
eager PyTorch on CPU with outputs within 1e-4, and an exported model needs
neither PyTorch nor any OpenMMLab package to serve (small images, no mmcv
build). A ``.pth`` checkpoint is exported once and cached by content hash;
a ``.onnx`` file (what model archives carry) is loaded directly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import PosegraphError, UsageError
from ..uri import cache_dir, fetch_to_cache, file_sha256
from .checkpoints import load_state_dict, require_torch
from .zoo import ModelSpec, build_network

log = logging.getLogger(__name__)

# Bump when the exported graph changes for the same checkpoint in a way export_fingerprint() cannot
# see (a change of the exporter's own behaviour, say).
EXPORT_VERSION = "1"
ONNX_OPSET = 17
# The code an export runs: the networks, how a checkpoint becomes one, and how it is traced.
_EXPORT_CODE = ("nets", "engine.py", "zoo.py", "checkpoints.py")


@functools.cache
def export_fingerprint() -> str:
    """EXPORT_VERSION, the content of the code an export runs and torch's version: the ONNX and
    archive caches are keyed by it with the checkpoint's hash, so an edit to a network can never be
    served an export of the code before it (the tests keep those caches across sessions)."""
    root = Path(__file__).parent
    digest = hashlib.sha256(f"{EXPORT_VERSION}|{ONNX_OPSET}|{_torch_version()}".encode())
    for entry in _EXPORT_CODE:
        for path in sorted((root / entry).rglob("*.py")) if (root / entry).is_dir() else [root / entry]:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


@dataclass
class ExportSpec:
    """How to trace a network: example inputs and which axes stay dynamic."""

    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    arch_overrides: dict[str, Any] = field(default_factory=dict)


def export_spec(spec: ModelSpec, variant: str | None = None) -> ExportSpec:
    """``variant`` picks a layout where a model has two: VideoPose3D's ``sequence`` (dilated, a
    whole track in one pass: cheapest for long tracks) and ``window`` (strided, one 243-frame
    window per output frame: ~7× cheaper for a single frame). Measured in docs/models.md."""
    if spec.family == "rtmdet":
        s = spec.params["input_size"]
        return ExportSpec({"images": (1, 3, s, s)}, ["scores", "distances"],
                          {"images": {0: "batch"}, "scores": {0: "batch"}, "distances": {0: "batch"}})
    if spec.family == "rtmpose":
        w, h = spec.params["input_size"]
        return ExportSpec({"crops": (1, 3, h, w)}, ["simcc_x", "simcc_y"],
                          {"crops": {0: "batch"}, "simcc_x": {0: "batch"}, "simcc_y": {0: "batch"}})
    if spec.family == "videopose3d" and variant == "window":
        n = spec.params["seq_len"]
        return ExportSpec({"keypoints": (1, n, 17, 2)}, ["keypoints3d"],
                          {"keypoints": {0: "batch"}, "keypoints3d": {0: "batch"}}, {"dilated": False})
    if spec.family == "videopose3d":
        # The dilated layout: a padded sequence of any length ≥ the receptive field in, T frames out.
        return ExportSpec({"keypoints": (1, spec.params["seq_len"] + 8, 17, 2)}, ["keypoints3d"],
                          {"keypoints": {0: "batch", 1: "frames"}, "keypoints3d": {0: "batch", 1: "out_frames"}},
                          {"dilated": True})
    if spec.family == "motionbert":
        return ExportSpec({"keypoints": (1, spec.params["seq_len"], 17, 3)}, ["keypoints3d"],
                          {"keypoints": {0: "batch", 1: "frames"}, "keypoints3d": {0: "batch", 1: "frames"}})
    raise ValueError(spec.family)


class Network:
    """Calls a network on numpy arrays and returns numpy arrays."""

    backend: str
    random_init: bool
    source: str

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError


class OrtNetwork(Network):
    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str, threads: int | None, random_init: bool, source: str,
                 split_batch: bool = False) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Several stages share a few cores: spinning threads steal them from each other
        # (measured: 12.5 → 6.7 frames/s with spinning on, 3 stages on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        # split_batch: a call's batch is cut into one part per thread, each part run whole on one
        # thread (the session is single-threaded; onnxruntime's Run is safe to call concurrently).
        # No part waits on another mid-operator, so stage servers sharing cores, and requests
        # sharing a server, do not stall each other: pose2d's server spent 38.5 CPU ms a frame
        # instead of 47.7 beside detect (72.7 instead of 92.7 with the flip test), docs/jobs.md.
        self.pool, self.parts = None, 1
        if split_batch and not device.startswith("cuda"):
            from concurrent.futures import ThreadPoolExecutor

            self.parts = threads or len(os.sched_getaffinity(0))
            self.pool = ThreadPoolExecutor(max_workers=self.parts, thread_name_prefix="onnxruntime")
            options.intra_op_num_threads = 1
        elif threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError("device cuda asked for onnxruntime, but this onnxruntime has no CUDA provider; "
                                 "install onnxruntime-gpu or use backend: torch")
            device_id = int(device.split(":", 1)[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
            if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from PyPI's nvidia-* wheels (the CUDA images)
                ort.preload_dlls()
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.session.get_providers():
            # onnxruntime falls back to the CPU by itself when the CUDA provider cannot start (no
            # GPU, a driver too old for its CUDA): say so plainly instead of one line among its own.
            log.warning(
                "%s: onnxruntime's CUDA provider did not start on %s (see onnxruntime's message above); "
                "running on the CPU", Path(path).name, device)
        self.input_names = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.random_init = random_init or meta.get("posegraph.random_init") == "true"
        self.source = source

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self.pool is None:
            return self._run(*inputs)
        n = inputs[0].shape[0]
        if n < 2:  # through the pool all the same: however many requests come, no more runs than threads
            return self.pool.submit(self._run, *inputs).result()
        bounds = np.linspace(0, n, min(self.parts, n) + 1).astype(int)
        parts = [self.pool.submit(self._run, *(x[lo:hi] for x in inputs)) for lo, hi in zip(bounds, bounds[1:])]
        outputs = [part.result() for part in parts]
        return [np.concatenate(pieces, axis=0) for pieces in zip(*outputs)]

    def _run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        feeds = {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in zip(self.input_names, inputs)}
        return self.session.run(None, feeds)


class TorchNetwork(Network):
    backend = "torch"

    def __init__(self, module, *, device: str, random_init: bool, source: str, threads: int | None) -> None:
        torch = require_torch()
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.random_init = random_init
        self.source = source

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device) for x in inputs]
            out = self.module(*tensors)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.float().cpu().numpy() for o in out]


def build_torch_module(spec: ModelSpec, state_dict: dict, **arch_overrides):
    net = build_network(spec, **arch_overrides)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        raise PosegraphError(
            f"checkpoint does not fit {spec.name}: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(wrong_shape)} wrongly shaped tensors (e.g. {(missing + unexpected + wrong_shape)[:2]}) — "
            "is it a checkpoint of another model?"
        )
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def export_onnx(module, spec: ModelSpec, dest: Path, *, random_init: bool, variant: str | None = None) -> Path:
    """Export ``module`` to ``dest`` (atomically). Uses the TorchScript exporter: ~50× faster to
    export than the dynamo one here and writes a single self-contained file."""
    torch = require_torch()
    import onnx

    ex = export_spec(spec, variant)
    args = tuple(torch.zeros(shape) for shape in ex.inputs.values())
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=list(ex.inputs),
            output_names=ex.outputs,
            dynamic_axes=ex.dynamic,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    for key, value in {"posegraph.model": spec.name, "posegraph.random_init": str(random_init).lower(),
                       "posegraph.export_version": EXPORT_VERSION, "posegraph.variant": variant or ""}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp))
    os.replace(tmp, dest)
    log.info("exported %s to %s in %.1fs", spec.name, dest, time.perf_counter() - started)
    return dest


def load_network(
    spec: ModelSpec,
    checkpoint_uri: str,
    *,
    device: str = "cpu",
    backend: str = "auto",
    threads: int | None = None,
    split_batch: bool = False,
    variant: str | None = None,
    on_export: Callable[[str], None] | None = None,
) -> Network:
    """Load ``checkpoint_uri`` (.pth or .onnx) for ``spec`` on ``device`` with ``backend``.
    ``split_batch`` (onnxruntime on CPU): ``threads`` single-threaded runs share each call's batch
    (OrtNetwork)."""
    if backend not in {"auto", "onnxruntime", "torch"}:
        raise UsageError(f"backend must be auto, onnxruntime or torch, not {backend!r}")
    uri = str(checkpoint_uri)
    if uri.endswith(".tflite"):
        if backend == "torch":
            raise UsageError(f"{uri} is a TFLite model: posegraph runs it converted, under onnxruntime")
        return OrtNetwork(converted_tflite(uri), device=device, threads=threads, random_init=False, source=uri,
                          split_batch=split_batch)
    if uri.endswith(".onnx"):
        if backend == "torch":
            raise UsageError(f"{uri} is an ONNX model: use backend onnxruntime")
        return OrtNetwork(fetch_to_cache(uri), device=device, threads=threads, random_init=False, source=uri,
                          split_batch=split_batch)

    if backend == "auto":
        backend = "onnxruntime"
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                backend = "torch"
    if backend == "torch":
        ckpt = load_state_dict(uri)
        module = build_torch_module(spec, ckpt.state_dict, **export_spec(spec, variant).arch_overrides)
        return TorchNetwork(module, device=device, random_init=ckpt.random_init, source=uri, threads=threads)
    onnx_path, random_init = exported_onnx(spec, uri, variant=variant, on_export=on_export)
    return OrtNetwork(onnx_path, device=device, threads=threads, random_init=random_init, source=uri,
                      split_batch=split_batch)


def converted_tflite(uri: str) -> Path:
    """The ONNX conversion of a TFLite model (models/tflite.py), cached by the file's hash and the
    converter's code: converted once (0.1-1 s), then loaded like any export."""
    # lazy: the converter needs the tflite and onnx packages (the models extra), which serving does not
    from . import tflite

    local = fetch_to_cache(uri)
    converter = hashlib.sha256(Path(tflite.__file__).read_bytes()).hexdigest()[:12]
    # ends with export_fingerprint(), as every export does (tests/conftest.py keeps those across sessions)
    path = cache_dir("onnx") / f"{Path(local).stem}-{file_sha256(local)[:20]}-tflite-{converter}-{export_fingerprint()}.onnx"
    if not path.is_file():
        import onnx

        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        onnx.save(tflite.convert(local), tmp)
        os.replace(tmp, path)
    return path


def exported_onnx(spec: ModelSpec, checkpoint_uri: str, *, variant: str | None = None,
                  on_export: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The ONNX export of a ``.pth`` checkpoint (cached by content hash) and whether its weights
    are random. A cached export is found from the checkpoint's bytes alone, with what the export
    learnt from the checkpoint in a small file beside it: no PyTorch import and no unpickling
    (2.1 of the 3.6 s `posegraph run` took on a photo, measured on this 2-core machine)."""
    local = fetch_to_cache(str(checkpoint_uri))
    suffix = f"-{variant}" if variant else ""
    base = f"{spec.name}{suffix}-{file_sha256(local)[:20]}-{export_fingerprint()}"
    onnx_path, facts_path = cache_dir("onnx") / f"{base}.onnx", cache_dir("onnx") / f"{base}.json"
    if onnx_path.is_file() and facts_path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return onnx_path, bool(json.loads(facts_path.read_text())["random_init"])
    ckpt = load_state_dict(str(checkpoint_uri))
    if not onnx_path.is_file():
        if on_export:
            on_export(spec.name)
        module = build_torch_module(spec, ckpt.state_dict, **export_spec(spec, variant).arch_overrides)
        export_onnx(module, spec, onnx_path, random_init=ckpt.random_init, variant=variant)
    tmp = facts_path.with_name(f".{facts_path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps({"random_init": ckpt.random_init, "checkpoint": str(checkpoint_uri)}))
    os.replace(tmp, facts_path)
    return onnx_path, ckpt.random_init
