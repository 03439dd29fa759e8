"""The graph routers the embedded graph can run: posegraph's own or KServe's, as child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .. import processes
from ..errors import PosegraphError, UsageError
from ..uri import cache_dir

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
    process = processes.spawn(cmd, log=log, env={**os.environ, **(env or {}), **router_env})
    deadline = time.monotonic() + timeout
    while not router_ready(port):
        if process.poll() is not None or time.monotonic() > deadline:
            processes.stop(process, sig=signal.SIGKILL)
            raise PosegraphError(f"the graph router ({router}) did not start: {Path(log).read_text()[-800:]}")
        time.sleep(0.1)
    return process


def router_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


