"""Run one stage server on this machine (127.0.0.1), with either runtime.

Both runtimes run as child processes started the way a pod starts them (TorchServe with the
archive's config.properties, KServe's server via ``python -m posegraph.serving.kserve_model``),
with addresses rewritten to loopback and free ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import processes
from ..errors import PosegraphError, UsageError
from ..names import RUNTIMES
from ..serving.archive import ArchiveOptions, config_properties, find_mar, metrics_declarations


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def _archive_options(model_dir: Path, model_name: str) -> ArchiveOptions:
    """Batching/workers as `models archive` wrote them into config.properties."""
    options = ArchiveOptions(model_name=model_name)
    props_path = model_dir / "config" / "config.properties"
    if props_path.is_file():
        snapshot = json.loads(_read_properties(props_path).get("model_snapshot", "{}") or "{}")
        version = next(iter(snapshot.get("models", {}).get(model_name, {}).values()), {})
        options.batch_size = int(version.get("batchSize", options.batch_size))
        options.max_batch_delay_ms = int(version.get("maxBatchDelay", options.max_batch_delay_ms))
        options.workers = int(version.get("minWorkers", options.workers))
        options.response_timeout_s = int(version.get("responseTimeout", options.response_timeout_s))
    return options


@dataclass
class StageServer:
    stage: str
    runtime: str
    model_name: str
    port: int
    process: subprocess.Popen
    metrics_url: str
    workdir: Path
    log_path: Path
    management_port: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.model_name}:predict"

    def ready(self) -> bool:
        try:
            if self.runtime == "torchserve":
                url = f"http://127.0.0.1:{self.management_port}/models/{self.model_name}"
                with urllib.request.urlopen(url, timeout=2) as r:
                    workers = json.load(r)[0].get("workers", [])
                return bool(workers) and all(w.get("status") == "READY" for w in workers)
            with urllib.request.urlopen(f"{self.url}/v1/models/{self.model_name}", timeout=2) as r:
                return bool(json.load(r).get("ready"))
        except (OSError, ValueError, KeyError, IndexError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> "StageServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PosegraphError(f"{self.runtime} server for {self.stage} exited with {self.process.returncode}; "
                                     f"last log lines:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise PosegraphError(f"{self.runtime} server for {self.stage} not ready after {timeout:.0f}s; "
                             f"log: {self.log_path}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        processes.stop(self.process)


def _model_name_of(mar: Path) -> str:
    with zipfile.ZipFile(mar) as z:
        return yaml.safe_load(z.read("stage.yaml"))["model_name"]


def start_stage_server(stage: str, model_dir: Path, *, runtime: str = "torchserve", port: int | None = None,
                       metrics_port: int | None = None, workdir: Path | None = None,
                       env: dict[str, str] | None = None) -> StageServer:
    """Start (not wait for) a server of ``stage`` from the archive layout in ``model_dir``."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    model_dir = Path(model_dir)
    mar = find_mar(model_dir, stage)
    model_name = _model_name_of(mar)
    port = port or free_port()
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"posegraph-{stage}-{runtime}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    child_env = {**os.environ, **(env or {})}
    if runtime == "torchserve":
        management_port = free_port()
        metrics_port = metrics_port or free_port()
        metrics_config = model_dir / "config" / "metrics.yaml"
        if not metrics_config.is_file():
            metrics_config = workdir / "metrics.yaml"
            metrics_config.write_text(yaml.safe_dump(metrics_declarations()))
        config = workdir / "config.properties"
        text = config_properties(
            model_name, _archive_options(model_dir, model_name),
            inference=f"http://127.0.0.1:{port}", management=f"http://127.0.0.1:{management_port}",
            metrics=f"http://127.0.0.1:{metrics_port}", grpc_ports=(free_port(), free_port()),
            model_store=str(mar.parent), metrics_config=str(metrics_config),
        )
        # Workers talk to the frontend over /tmp/.ts.sock.<port>: a port of our own per server.
        text += f"initial_worker_port={free_port()}\nvmargs=-Xmx1g -XX:+UseSerialGC -XX:ActiveProcessorCount={os.cpu_count()}\n"
        config.write_text(text)
        (workdir / "logs").mkdir(exist_ok=True)
        # TorchServe's launcher keeps one PID file in the temp dir and refuses a second server:
        # each server gets a temp dir of its own.
        (workdir / "tmp").mkdir(exist_ok=True)
        child_env.update(LOG_LOCATION=str(workdir / "logs"), METRICS_LOCATION=str(workdir / "logs"),
                         TMPDIR=str(workdir / "tmp"))
        child_env.pop("TS_SERVICE_ENVELOPE", None)  # the handler speaks KServe v1 itself
        torchserve = Path(sys.executable).parent / "torchserve"
        cmd = [str(torchserve) if torchserve.exists() else "torchserve", "--start", "--foreground", "--ncs",
               "--model-store", str(mar.parent), "--ts-config", str(config)]
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    else:
        management_port = None
        cmd = [sys.executable, "-m", "posegraph.serving.kserve_model", "--model_dir", str(model_dir),
               "--stage", stage, "--http_port", str(port), "--host", "127.0.0.1"]
        metrics_url = f"http://127.0.0.1:{port}/metrics"
    process = processes.spawn(cmd, log=log_path, cwd=workdir, env=child_env)
    return StageServer(stage, runtime, model_name, port, process, metrics_url, workdir, log_path, management_port)
