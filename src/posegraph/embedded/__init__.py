"""The embedded default: posegraph's graph on one machine, with no cluster.

It builds (or fetches) the stage archives, launches the stage servers and a graph router as
child processes on loopback (through ``posegraph.processes``, so none outlives its parent), and
hands back a ``LocalGraph`` whose endpoint takes the same requests as a cluster's InferenceGraph.

    archives.py  archives from a profile's checkpoints (cached) or a PosePipeline's storageUri
    servers.py   one stage server (KServe's Python runtime or TorchServe) on 127.0.0.1
    routers.py   posegraph's router or KServe's Go router on 127.0.0.1
    graph.py     the three servers and a router together: ``posegraph up``, ``job run --graph local``
"""

from .archives import archives_for_pipeline, archives_for_profile
from .graph import (
                    LocalGraph,
                    default_pipeline,
                    graph_on_demand,
                    local_graph_spec,
                    start_embedded_graph,
                    start_local_graph,
)
from .routers import KSERVE_VERSION, ROUTERS, check_router, kserve_router_binary, router_ready, start_router
from .servers import StageServer, free_port, start_stage_server

__all__ = [
    "KSERVE_VERSION", "ROUTERS", "LocalGraph", "StageServer", "archives_for_pipeline", "archives_for_profile",
    "check_router", "default_pipeline", "free_port", "graph_on_demand", "kserve_router_binary", "local_graph_spec", "router_ready",
    "start_embedded_graph", "start_local_graph", "start_router", "start_stage_server",
]
