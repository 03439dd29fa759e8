"""Model archives: one stage as a TorchServe ``.mar`` in KServe's TorchServe storage layout.

A built-in stage's archive holds its exported network; a user's stage (posegraph.stages.user)
holds its directory as ``user-stage.zip`` (code, description, model files) instead.

    DIR/config/config.properties      TorchServe configuration (what KServe's runtime passes as --ts-config)
    DIR/model-store/<name>.mar        the archive:
        <stage>.onnx                  the exported network (+ <stage>.window.onnx for VideoPose3D)
        stage.yaml                    which stage, its settings, provenance
        posegraph_handler.py          a 1-line TorchServe handler: posegraph.serving.torchserve_handler
        model-config.yaml             batching and workers for TorchServe
    DIR/config/metrics.yaml           TorchServe metric declarations (its own we keep + ours)

Why ONNX in the archive (measured, docs/serving.md): the serving image then needs neither
mmcv/mmdet/mmpose nor, for the KServe runtime, PyTorch; a ``.pth`` would make every replica
export on start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import PosegraphError, UsageError
from ..models.engine import converted_tflite, exported_onnx
from ..names import STAGES
from ..stages import STAGE_CLASSES, StageSettings, make_stage
from ..stages.user import load_user_stage, read_stage_file
from ..uri import _describe, cache_dir, file_sha256, local_path, s3_client, split_s3

ARCHIVE_FORMAT = "posegraph/archive/v1"
HANDLER_SOURCE = '''"""TorchServe entry point of a posegraph stage archive: all logic lives in the posegraph package."""
from posegraph.serving.torchserve_handler import handle  # noqa: F401
'''


@dataclass
class ArchiveOptions:
    """How TorchServe should run the stage (written into model-config.yaml and config.properties)."""

    model_name: str | None = None  # served name; KServe's graph calls /v1/models/<ISVC name>:predict
    batch_size: int = 8  # requests TorchServe may hand the handler at once
    # How long TorchServe waits to fill a batch. Every request that arrives alone waits this long,
    # so it is a latency floor per stage (measured: 20 ms made the served graph 1.6× in-process).
    max_batch_delay_ms: int = 5
    workers: int = 1
    response_timeout_s: int = 120
    max_request_mb: int = 32


def _yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def metrics_declarations() -> dict[str, Any]:
    """The metrics TorchServe exposes in prometheus mode: its own frontend metrics we want on
    dashboards, and posegraph's model metrics (TorchServe shows only declared ones)."""
    ts_counter = ["Requests2XX", "Requests4XX", "Requests5XX"]
    ts_inference = ["ts_inference_requests_total", "ts_inference_latency_microseconds",
                    "ts_queue_latency_microseconds"]
    return {
        "dimensions": ["ModelName", "Level", "Hostname"],
        "ts_metrics": {
            "counter": [{"name": n, "unit": "Count", "dimensions": ["Level", "Hostname"]} for n in ts_counter]
            + [{"name": n, "unit": "Microseconds" if "latency" in n else "Count",
                "dimensions": ["model_name", "model_version", "hostname"]} for n in ts_inference],
            "gauge": [{"name": n, "unit": "Milliseconds", "dimensions": ["Level", "Hostname"]}
                      for n in ("QueueTime", "WorkerThreadTime")]
            + [{"name": "WorkerLoadTime", "unit": "Milliseconds", "dimensions": ["WorkerName", "Level", "Hostname"]}],
        },
        "model_metrics": {
            # TorchServe's backend appends ModelName and Level to the dimensions a handler gives.
            "counter": [{"name": "PosegraphRequests", "unit": "Count",
                         "dimensions": ["stage", "code", "ModelName", "Level"]}],
            "histogram": [{"name": n, "unit": u, "dimensions": ["stage", "ModelName", "Level"]}
                          for n, u in (("PosegraphRequestSeconds", "Seconds"), ("PosegraphBatchRequests", "Count"),
                                       ("PosegraphPersonsPerFrame", "Count"))],
            "gauge": [{"name": n, "unit": "ms", "dimensions": ["ModelName", "Level"]}
                      for n in ("HandlerTime", "PredictionTime")],
        },
    }


def config_properties(model_name: str, options: ArchiveOptions, *, inference: str = "http://0.0.0.0:8080",
                      management: str = "http://127.0.0.1:8081", metrics: str = "http://0.0.0.0:8082",
                      grpc_ports: tuple[int, int] = (7070, 7071), model_store: str = "/mnt/models/model-store",
                      metrics_config: str = "/mnt/models/config/metrics.yaml", token_auth: bool = False) -> str:
    """TorchServe's configuration for one stage.

    Token auth: TorchServe's own tokens are random per process, so a graph router in front of
    several replicas could never know them. posegraph therefore turns TorchServe's token auth off
    explicitly and authenticates in the handler with a shared bearer token from a Secret
    (``POSEGRAPH_AUTH_TOKEN``); the management API listens on loopback inside the pod and model
    registration through it is off (TorchServe's default), so nothing outside can load code.
    """
    snapshot = {
        "name": "startup.cfg",
        "modelCount": 1,
        "models": {
            model_name: {
                "1.0": {
                    "defaultVersion": True,
                    "marName": f"{model_name}.mar",
                    "minWorkers": options.workers,
                    "maxWorkers": options.workers,
                    "batchSize": options.batch_size,
                    "maxBatchDelay": options.max_batch_delay_ms,
                    "responseTimeout": options.response_timeout_s,
                }
            }
        },
    }
    lines = {
        "inference_address": inference,
        "management_address": management,
        "metrics_address": metrics,
        "grpc_inference_port": grpc_ports[0],
        "grpc_management_port": grpc_ports[1],
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "enable_metrics_api": "true",
        "metrics_mode": "prometheus",
        "metrics_config": metrics_config,
        "disable_token_authorization": "false" if token_auth else "true",
        "enable_model_api": "false",
        "enable_envvars_config": "true",
        "install_py_dep_per_model": "false",
        "load_models": "all",
        "model_store": model_store,
        "default_workers_per_model": options.workers,
        "max_request_size": options.max_request_mb << 20,
        "max_response_size": options.max_request_mb << 20,
        "model_snapshot": json.dumps(snapshot),
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def _layout(out_dir: Path, model_name: str) -> Path:
    """KServe's TorchServe layout in ``out_dir`` (model-store/ and config/), for ``model_name``,
    which becomes a URL path; returns the model store."""
    if not model_name.replace("-", "").isalnum():
        raise UsageError(f"model name {model_name!r}: use letters, digits and '-' (it becomes a URL path)")
    store = out_dir / "model-store"
    store.mkdir(parents=True, exist_ok=True)
    (out_dir / "config").mkdir(parents=True, exist_ok=True)
    return store


# Long on purpose: the archive's steps in the order a reader checks them against KServe's layout.
def build_archive(stage: str, checkpoint_uri: str, out_dir: Path, *, settings: StageSettings | dict | None = None,
                  options: ArchiveOptions | None = None) -> Path:
    """Export ``checkpoint_uri`` for ``stage`` and write the KServe TorchServe layout into ``out_dir``."""

    if stage not in STAGE_CLASSES:
        raise UsageError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    options = options or ArchiveOptions()
    stage_obj = make_stage(stage, settings)
    spec = stage_obj.spec
    model_name = options.model_name or stage
    out_dir = Path(out_dir)
    store = _layout(out_dir, model_name)

    uri = str(checkpoint_uri)
    with tempfile.TemporaryDirectory(prefix="posegraph-archive-") as tmp:
        work = Path(tmp)
        files: dict[str, str] = {}
        if uri.endswith(".onnx"):
            src = local_path(uri)
            if src is None or not src.is_file():
                raise UsageError(f"{uri}: an .onnx checkpoint must be a local file")
            onnx_path, random_init = src, False
        elif uri.endswith(".tflite"):  # BlazePose's: converted once, real weights
            onnx_path, random_init = converted_tflite(uri), False
        else:
            onnx_path, random_init = exported_onnx(spec, uri)
        model_file = work / f"{stage}.onnx"
        shutil.copy(onnx_path, model_file)
        files["model"] = model_file.name
        extra = []
        if spec.family == "videopose3d" and not uri.endswith(".onnx"):
            window, _ = exported_onnx(spec, uri, variant="window")
            shutil.copy(window, work / f"{stage}.window.onnx")
            files["window"] = f"{stage}.window.onnx"
            extra.append(work / f"{stage}.window.onnx")
        manifest = {
            "format": ARCHIVE_FORMAT,
            "posegraph_version": __version__,
            "stage": stage,
            "model_name": model_name,
            "settings": stage_obj.settings.model_dump(exclude={"checkpoint"}),
            "files": files,
            "source": {"checkpoint": uri, "onnx_sha256": file_sha256(model_file)},
            "random_weights": bool(random_init),
        }
        extra.append(_yaml(work / "stage.yaml", manifest))
        _package(model_name, model_file, extra, work, out_dir, options)
    return store / f"{model_name}.mar"


USER_CODE = "user-stage.zip"  # a user's stage directory, inside its archive
_SKIPPED = {"__pycache__", ".pytest_cache", ".git"}


def _zip_stage_dir(stage_dir: Path, target: Path) -> None:
    """The stage directory's files (its code, its description, its model files) into one zip, in a
    fixed order with fixed times: the same directory packs to the same bytes."""
    files = sorted(p for p in stage_dir.rglob("*")
                   if p.is_file() and not _SKIPPED & set(p.relative_to(stage_dir).parts))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(stage_dir).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)


def build_user_archive(stage_dir: Path, out_dir: Path, *, options: ArchiveOptions | None = None) -> Path:
    """A user's stage directory (posegraph.stages.user) as an archive both runtimes serve: loaded and
    probed first, so a broken stage is refused here, not in a pod."""
    stage_dir = Path(stage_dir)
    runner = load_user_stage(stage_dir)
    description = read_stage_file(stage_dir)
    options = options or ArchiveOptions()
    model_name = options.model_name or runner.name
    out_dir = Path(out_dir)
    store = _layout(out_dir, model_name)
    with tempfile.TemporaryDirectory(prefix="posegraph-archive-") as tmp:
        work = Path(tmp)
        code = work / USER_CODE
        _zip_stage_dir(stage_dir, code)
        manifest = {
            "format": ARCHIVE_FORMAT,
            "posegraph_version": __version__,
            "stage": runner.name,
            "kind": "user",
            "model_name": model_name,
            "settings": runner.stage.settings.model_dump(mode="json"),
            "files": {"code": USER_CODE},
            "user": {"module": description["module"], "class": description["class"], "documents": runner.documents,
                     "reads": list(runner.reads), "writes": list(runner.writes)},
            "source": {"stage_dir": str(stage_dir.resolve()), "code_sha256": file_sha256(code)},
            "random_weights": False,
        }
        extra = [_yaml(work / "stage.yaml", manifest)]
        _package(model_name, code, extra, work, out_dir, options)
    return store / f"{model_name}.mar"


def _package(model_name: str, serialized: Path, extra: list[Path], work: Path, out_dir: Path,
             options: ArchiveOptions) -> None:
    """torch-model-archiver: the .mar TorchServe loads and the KServe runtime unpacks, into the
    layout's model store, then the layout's config (TorchServe's properties, the metrics)."""
    store = out_dir / "model-store"
    handler = work / "posegraph_handler.py"
    handler.write_text(HANDLER_SOURCE)
    model_config = _yaml(work / "model-config.yaml", {
        "minWorkers": options.workers, "maxWorkers": options.workers, "batchSize": options.batch_size,
        "maxBatchDelay": options.max_batch_delay_ms, "responseTimeout": options.response_timeout_s,
    })
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", model_name, "--version", "1.0", "--serialized-file", str(serialized),
        "--handler", str(handler), "--extra-files", ",".join(str(p) for p in extra),
        "--config-file", str(model_config), "--export-path", str(store), "--force",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PosegraphError(f"torch-model-archiver failed: {done.stderr.strip().splitlines()[-1:]}")
    (out_dir / "config" / "config.properties").write_text(config_properties(model_name, options))
    _yaml(out_dir / "config" / "metrics.yaml", metrics_declarations())


@dataclass
class UnpackedArchive:
    directory: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def model_name(self) -> str:
        return self.manifest["model_name"]

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest["files"]["model"]

    @property
    def is_user_stage(self) -> bool:
        return self.manifest.get("kind") == "user"

    def user_stage_dir(self) -> Path:
        """A user's stage directory, unpacked beside the manifest (once; a rename makes it whole)."""
        target = self.directory / "user-stage"
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=self.directory, prefix=".user-stage-"))
            with zipfile.ZipFile(self.directory / self.manifest["files"]["code"]) as z:
                z.extractall(tmp)
            try:
                os.replace(tmp, target)
            except OSError:  # another worker unpacked it first
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def settings(self) -> dict[str, Any]:
        return dict(self.manifest["settings"])


def read_manifest(directory: Path) -> UnpackedArchive:
    path = Path(directory) / "stage.yaml"
    if not path.is_file():
        raise UsageError(f"{directory} has no stage.yaml: not a posegraph stage archive")
    manifest = yaml.safe_load(path.read_text())
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise UsageError(f"{path}: format {manifest.get('format')!r}, this posegraph reads {ARCHIVE_FORMAT!r}")
    return UnpackedArchive(Path(directory), manifest)


def find_mar(model_dir: Path, stage_or_name: str | None = None) -> Path:
    """The .mar in a KServe layout directory (``model-store/*.mar``), by model name if several."""
    model_dir = Path(model_dir)
    store = model_dir / "model-store" if (model_dir / "model-store").is_dir() else model_dir
    mars = sorted(store.glob("*.mar"))
    if stage_or_name:
        named = [m for m in mars if m.stem == stage_or_name]
        if named:
            return named[0]
        for mar in mars:  # a stage name given for an archive served under another name
            with zipfile.ZipFile(mar) as z:
                if "stage.yaml" in z.namelist() and yaml.safe_load(z.read("stage.yaml")).get("stage") == stage_or_name:
                    return mar
    if len(mars) == 1 and not stage_or_name:
        return mars[0]
    raise UsageError(f"no model archive{' for ' + stage_or_name if stage_or_name else ''} in {store} "
                     f"(found: {', '.join(m.name for m in mars) or 'none'})")


def unpack(mar: Path, dest: Path | None = None) -> UnpackedArchive:
    """Extract a .mar (a zip) — what the KServe Python runtime does with the same file."""
    mar = Path(mar)
    key = hashlib.sha256(f"{mar.resolve()}:{mar.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    if dest is None:

        dest = cache_dir("unpacked") / f"{mar.stem}-{key}"
    if not (dest / "stage.yaml").is_file():
        tmp = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None, prefix=".unpack-"))
        with zipfile.ZipFile(mar) as z:
            z.extractall(tmp)
        os.replace(tmp, dest) if not dest.exists() else shutil.rmtree(tmp)
    return read_manifest(dest)


def push(model_dir: Path, target: str) -> list[str]:
    """Upload a KServe layout directory to ``s3://bucket/prefix/`` (config/ and model-store/)."""

    if not target.startswith("s3://"):
        raise UsageError(f"push target must be s3://bucket/prefix/, not {target!r}")
    model_dir = Path(model_dir)
    if not (model_dir / "config" / "config.properties").is_file() or not list((model_dir / "model-store").glob("*.mar")):
        raise UsageError(f"{model_dir} is not an archive layout (config/config.properties + model-store/*.mar)")
    bucket, prefix = split_s3(target)
    prefix = prefix.rstrip("/")
    client = s3_client()
    uploaded = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(model_dir).as_posix()}" if prefix else path.relative_to(model_dir).as_posix()
        try:
            client.upload_file(str(path), bucket, key)
        except Exception as exc:

            raise PosegraphError(f"cannot upload {path} to s3://{bucket}/{key}: {_describe(exc)}") from None
        uploaded.append(f"s3://{bucket}/{key}")
    return uploaded
