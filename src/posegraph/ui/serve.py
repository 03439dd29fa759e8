"""``posegraph ui``: the embedded default (a local graph, local job runners, SQLite and files) or
a cluster (a graph URL, PoseJobs through the Kubernetes API, PostgreSQL)."""

from __future__ import annotations

import ipaddress
import os
from contextlib import ExitStack
from pathlib import Path

from .. import processes
from ..config import load_profile
from ..asgi import run_server
from ..embedded import graph_on_demand
from ..errors import UsageError
from ..fetchpolicy import FetchPolicy
from ..jobs.store import redact
from .app import UISettings, create_app
from .launchers import KubernetesLauncher, LocalLauncher


def _password(args) -> str | None:
    if args.password_file:
        return Path(args.password_file).read_text().strip() or None
    return os.environ.get("POSEGRAPH_UI_PASSWORD") or None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_ui(args) -> int:
    password = _password(args)
    if not password and not _is_loopback(args.host) and not args.no_auth:
        raise UsageError(f"--host {args.host} exposes the UI beyond this machine: set POSEGRAPH_UI_PASSWORD "
                         "(or --password-file), or pass --no-auth if something else guards it")
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    results = args.results or f"sqlite:///{data / 'results.db'}"
    processes.exit_on_sigterm()
    with ExitStack() as stack:
        if args.kubernetes_namespace:
            if not args.graph or args.graph == "local":
                raise UsageError("with --kubernetes-namespace, --graph names the cluster's graph URL")
            launcher = KubernetesLauncher(namespace=args.kubernetes_namespace, pipeline=args.pipeline,
                                          upload_prefix=args.upload_prefix, output_prefix=args.output_prefix,
                                          results_secret=args.results_secret)
            graph, lift3d = args.graph, None
        else:
            if args.graph and args.graph != "local":
                graph, lift3d = args.graph, args.lift3d
            else:
                start = graph_on_demand(args.profile, args.checkpoints, args.overrides, announce=True)
                graph, lift3d = start(stack)
            launcher = LocalLauncher(graph=graph, lift3d=lift3d, results=results, output_dir=data / "jobs",
                                     token=os.environ.get("POSEGRAPH_AUTH_TOKEN"), profile=args.profile)
        settings = UISettings(graph=graph, results=results, launcher=launcher, data_dir=data,
                              max_upload_bytes=int(args.max_upload_mb * 1e6), password=password,
                              graph_token=os.environ.get("POSEGRAPH_AUTH_TOKEN"),
                              fetch_policy=FetchPolicy.served(args.fetch_allow),
                              profile=load_profile(args.profile, args.overrides))
        app = create_app(settings)

        def announce() -> None:
            print(f"posegraph UI: http://{args.host}:{args.port}/   (graph {graph}; results {_redact(results)})",
                  flush=True)
            if password:
                print("  sign in as user 'posegraph' with the UI password", flush=True)

        run_server(app, host=args.host, port=args.port, on_listening=announce, log_level="warning")
    return 0


def _redact(dsn: str) -> str:
    return redact(dsn)
