"""``python -m posegraph.operator``: run the operator against the current kubeconfig (or in-cluster).

    python -m posegraph.operator                     # all namespaces
    python -m posegraph.operator --namespace poses   # one namespace (repeatable)
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posegraph.operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace only")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("POSEGRAPH_OPERATOR_METRICS_PORT", 0)),
                        help="Prometheus metrics port (0: off)")
    parser.add_argument("--liveness", default=os.environ.get("POSEGRAPH_OPERATOR_LIVENESS"),
                        help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.environ["POSEGRAPH_OPERATOR_METRICS_PORT"] = str(args.metrics_port)
    kopf_args = ["run", "--standalone", "-m", "posegraph.operator.handlers"]
    kopf_args += [item for ns in args.namespace for item in ("--namespace", ns)] or ["--all-namespaces"]
    if args.liveness:
        kopf_args += ["--liveness", args.liveness]
    if args.verbose:
        kopf_args.append("--verbose")
    from kopf.cli import main as kopf_main

    return kopf_main(kopf_args, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
