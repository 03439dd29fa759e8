"""``posegraph up``: the same graph as on a cluster, on this machine.

Three stage servers (TorchServe or KServe's Python server, one process each) and the graph router
run on loopback with free ports. The router gets the InferenceGraph spec rendered for the
cluster, with each step pointed at its local server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import processes
from ..config import Profile, load_profile
from ..errors import UsageError
from ..graph.kserve_objects import inference_graph, to_dict
from ..graph.spec import PosePipeline, parse_pipeline
from ..models.checkpoints import default_checkpoint_dir, ensure_checkpoints
from .archives import archives_for_profile
from .routers import check_router, start_router
from .servers import StageServer, free_port, start_stage_server


def default_pipeline(layouts: dict[str, Path], runtime: str) -> PosePipeline:
    return parse_pipeline({
        "metadata": {"name": "local"},
        "spec": {"runtime": runtime,
                 "stages": {stage: {"storageUri": str(path)} for stage, path in layouts.items()}},
    })


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
        # KServe's router answers SIGTERM by failing its readiness probe and sleeping 30 s for a
        # load balancer to notice; locally nothing routes to it but us, and it holds no state.
        processes.stop(self.router, sig=signal.SIGKILL if self.router_kind == "kserve" else signal.SIGTERM)
        # All servers at once: one grace period in all, not one each (a Ctrl-C while three
        # servers load took over 60 s, one after another).
        processes.stop([server.process for server in self.servers.values()])

    def __enter__(self) -> "LocalGraph":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_embedded_graph(profile: Profile, checkpoint_dir: Path) -> LocalGraph:
    """The embedded default's graph: the profile's checkpoints ensured, its archives built (once,
    then cached), three KServe-runtime stage servers and the router on loopback."""
    ensure_checkpoints(profile, checkpoint_dir)
    layouts = archives_for_profile(profile, checkpoint_dir)
    return start_local_graph(default_pipeline(layouts, "kserve"), layouts)


def graph_on_demand(profile: str, checkpoints: str | Path | None, overrides: list[str] | None = None,
                    *, announce: bool = False) -> Callable[[ExitStack], tuple[str, str]]:
    """What ``--graph local`` means, for the commands that take it (``job run``, ``ui``): a
    function that starts the embedded graph in the caller's stack, when it is first needed (a job
    already done starts nothing), and returns (graph endpoint, lift3d's URL)."""
    def start(stack: ExitStack) -> tuple[str, str]:
        if announce:
            print("starting the embedded graph: stage archives (exported once, then cached), three stage servers "
                  "and a router on 127.0.0.1 …", flush=True)
        directory = Path(checkpoints) if checkpoints else default_checkpoint_dir()
        graph = stack.enter_context(start_embedded_graph(load_profile(profile, overrides or []), directory))
        return graph.endpoint, graph.servers["lift3d"].predict_url

    return start


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
        for stage in pipeline.stage_names():
            servers[stage] = start_stage_server(stage, layouts[stage], runtime=runtime or pipeline.runtime_of(stage),
                                                workdir=workdir / stage, env=env)
        for server in servers.values():
            server.wait_ready(timeout)
        spec = local_graph_spec(pipeline, {stage: s.predict_url for stage, s in servers.items()})
        process = start_router(router, spec, port, pipeline.spec.graph.headersToPropagate,
                               log=workdir / "router.log", env=env)
        return LocalGraph(pipeline, servers, process, port, workdir, spec, router)
    except BaseException:
        processes.stop([server.process for server in servers.values()])
        raise
