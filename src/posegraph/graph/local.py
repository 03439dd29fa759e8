"""``posegraph up``: the same graph as on a cluster, on this machine.

Three stage servers (TorchServe or KServe's Python server, one process each) and the graph router
run on loopback with free ports. The router gets the InferenceGraph spec rendered for the
cluster, with each step pointed at its local server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..checkpoints import ensure_checkpoints
from ..config import Profile
from ..errors import PosegraphError, UsageError
from ..serving.local import StageServer, free_port, start_stage_server
from ..uri import cache_dir, file_sha256, local_path, s3_client, split_s3
from .kserve_objects import inference_graph, to_dict
from .spec import STAGE_NAMES, PosePipeline, parse_pipeline


def _build_cached_archive(stage: str, checkpoint: str, settings) -> Path:
    from dataclasses import asdict

    from ..engine import EXPORT_VERSION
    from ..serving.archive import ArchiveOptions, build_archive

    path = local_path(checkpoint)
    ident = file_sha256(path) if path is not None and path.is_file() else checkpoint
    key = hashlib.sha256(json.dumps([ident, settings.model_dump(exclude={"checkpoint"}), __version__,
                                     EXPORT_VERSION, asdict(ArchiveOptions())], sort_keys=True).encode()).hexdigest()[:16]
    layout = cache_dir("archives") / f"{stage}-{key}"
    if not (layout / "model-store" / f"{stage}.mar").is_file():
        tmp = Path(tempfile.mkdtemp(dir=layout.parent, prefix=f".{stage}-"))
        build_archive(stage, checkpoint, tmp, settings=settings)
        if layout.exists():
            shutil.rmtree(layout)
        os.replace(tmp, layout)
    return layout


def archives_for_profile(profile: Profile, checkpoint_dir: Path | None) -> dict[str, Path]:
    """Archive layouts for the embedded default, built once from the profile's checkpoints."""
    from ..checkpoints import resolve_checkpoint

    layouts = {}
    for stage in STAGE_NAMES:
        settings = profile.stage_settings(stage)
        checkpoint = resolve_checkpoint(settings.model, settings.checkpoint, checkpoint_dir)
        layouts[stage] = _build_cached_archive(stage, checkpoint, settings)
    return layouts


def _download_prefix(uri: str) -> Path:
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/"
    dest = cache_dir("archives") / ("s3-" + hashlib.sha256(uri.encode()).hexdigest()[:16])
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except Exception as exc:
        from ..uri import _describe

        raise PosegraphError(f"cannot list {uri}: {_describe(exc)}") from None
    if not keys:
        raise UsageError(f"{uri} is empty: push an archive there first (posegraph models push)")
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return dest


def archives_for_pipeline(pipeline: PosePipeline) -> dict[str, Path]:
    """Where each stage's archive layout is on this machine: local paths as they are, s3:// copied."""
    layouts = {}
    for stage, deployment in pipeline.spec.stages.items():
        uri = deployment.storageUri
        if uri.startswith("s3://"):
            layouts[stage] = _download_prefix(uri)
        else:
            path = local_path(uri)
            if path is None or not path.is_dir():
                raise UsageError(f"stages.{stage}.storageUri {uri}: locally, a directory or s3:// prefix")
            layouts[stage] = path
    return layouts


def default_pipeline(layouts: dict[str, Path], runtime: str) -> PosePipeline:
    return parse_pipeline({
        "metadata": {"name": "local"},
        "spec": {"runtime": runtime,
                 "stages": {stage: {"storageUri": str(path)} for stage, path in layouts.items()}},
    })


# The graph routers `posegraph up --router` can start: posegraph's own (Python, with metrics and
# step-naming errors) or KServe's (the Go binary a cluster's InferenceGraph runs).
ROUTERS = ("posegraph", "kserve")
# The KServe release whose router scripts/control-plane.sh builds (and whose CRDs the tests use);
# tests/test_kserve_router.py checks that the script builds this one.
KSERVE_VERSION = "v0.20.0"


def kserve_router_binary() -> Path:
    """Where scripts/control-plane.sh put KServe's router ($POSEGRAPH_KSERVE_ROUTER overrides)."""
    if os.environ.get("POSEGRAPH_KSERVE_ROUTER"):
        return Path(os.environ["POSEGRAPH_KSERVE_ROUTER"])
    return cache_dir("control-plane") / f"kserve-{KSERVE_VERSION}" / "router"


def check_router(router: str) -> None:
    """Refuse an unknown router, or KServe's when it is not built, before anything starts."""
    if router not in ROUTERS:
        raise UsageError(f"router {router!r}: one of {', '.join(ROUTERS)}")
    if router == "kserve" and not os.access(kserve_router_binary(), os.X_OK):
        raise UsageError(f"KServe's router is not built ({kserve_router_binary()}): run "
                         "`scripts/control-plane.sh build-router` (needs Go; `make test` builds it), "
                         "or use --router posegraph")


def router_command(router: str, spec: dict, port: int, headers: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of a graph router serving `spec` on 127.0.0.1:port."""
    check_router(router)
    if router == "kserve":
        # KServe's controller passes the same two things to the router's container: the graph spec
        # as --graph-json and the header patterns as PROPAGATE_HEADERS. The listen address is
        # posegraph's one addition to that binary (scripts/control-plane.sh).
        return ([str(kserve_router_binary()), "--graph-json", json.dumps(spec)],
                {"PROPAGATE_HEADERS": ",".join(headers), "POSEGRAPH_ROUTER_LISTEN": f"127.0.0.1:{port}"})
    return ([sys.executable, "-m", "posegraph.graph.router", "--graph-json", json.dumps(spec),
             "--port", str(port), "--headers-propagate", ",".join(headers)], {})


def start_router(router: str, spec: dict, port: int, headers: list[str], *, log: Path,
                 env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.Popen:
    """A graph router on 127.0.0.1:port, in its own process group, once it answers /readyz."""
    cmd, router_env = router_command(router, spec, port, headers)
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {}), **router_env})
    deadline = time.monotonic() + timeout
    while not router_ready(port):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            raise PosegraphError(f"the graph router ({router}) did not start: {Path(log).read_text()[-800:]}")
        time.sleep(0.1)
    return process


def local_graph_spec(pipeline: PosePipeline, predict_urls: dict[str, str]) -> dict:
    """The cluster's InferenceGraph spec with each step pointed at its local stage server."""
    spec = to_dict(inference_graph(pipeline))["spec"]
    for step in spec["nodes"]["root"]["steps"]:
        step.pop("serviceName", None)
        step["serviceUrl"] = predict_urls[step["name"]]
    return spec


@dataclass
class LocalGraph:
    pipeline: PosePipeline
    servers: dict[str, StageServer]
    router: subprocess.Popen
    port: int
    workdir: Path
    graph_spec: dict = field(default_factory=dict)
    router_kind: str = "posegraph"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.router.poll() is None:
            # KServe's router answers SIGTERM by failing its readiness probe and sleeping 30 s for
            # a load balancer to notice; locally nothing routes to it but us, and it holds no state.
            os.killpg(self.router.pid, signal.SIGKILL if self.router_kind == "kserve" else signal.SIGTERM)
            try:
                self.router.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.router.pid, signal.SIGKILL)
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> "LocalGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def router_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_embedded_graph(profile: Profile, checkpoint_dir: Path) -> LocalGraph:
    """The embedded default's graph: the profile's checkpoints ensured, its archives built (once,
    then cached), three KServe-runtime stage servers and the router on loopback."""
    ensure_checkpoints(profile, checkpoint_dir)
    layouts = archives_for_profile(profile, checkpoint_dir)
    return start_local_graph(default_pipeline(layouts, "kserve"), layouts)


def start_local_graph(pipeline: PosePipeline, layouts: dict[str, Path], *, port: int | None = None,
                      runtime: str | None = None, env: dict[str, str] | None = None,
                      timeout: float = 180.0, router: str = "posegraph") -> LocalGraph:
    """Start the stage servers and the router (posegraph's or KServe's), and wait until all of them
    answer."""
    check_router(router)
    port = port or free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"127.0.0.1:{port} is already in use: pass another --port") from None
    workdir = Path(tempfile.mkdtemp(prefix="posegraph-up-"))
    servers: dict[str, StageServer] = {}
    try:
        for stage in STAGE_NAMES:
            servers[stage] = start_stage_server(stage, layouts[stage], runtime=runtime or pipeline.runtime_of(stage),
                                                workdir=workdir / stage, env=env)
        for server in servers.values():
            server.wait_ready(timeout)
        spec = local_graph_spec(pipeline, {stage: s.predict_url for stage, s in servers.items()})
        process = start_router(router, spec, port, pipeline.spec.graph.headersToPropagate,
                               log=workdir / "router.log", env=env)
        return LocalGraph(pipeline, servers, process, port, workdir, spec, router)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
