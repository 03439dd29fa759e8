"""Operator metrics (Prometheus): reconciles and errors per kind, PoseJobs per phase."""

from __future__ import annotations

import os
import threading

from ..names import POSEJOB_FAILED, POSEJOB_PARTIAL, POSEJOB_PENDING, POSEJOB_RUNNING, POSEJOB_SUCCEEDED

_lock = threading.RLock()  # handlers run in a thread pool
_phases: dict[tuple[str, str], str] = {}
_families = None


def _f():
    global _families
    with _lock:
        return _families or _create()


def _create():
    global _families
    if _families is None:
        from prometheus_client import Counter, Gauge

        _families = {
            "reconciles": Counter("posegraph_operator_reconciles_total", "Reconciles started", ["kind"]),
            "errors": Counter("posegraph_operator_errors_total", "Reconciles that failed or found bad input", ["kind"]),
            "jobs": Gauge("posegraph_operator_posejobs", "PoseJobs by phase", ["phase"]),
        }
    return _families


def serve() -> None:
    port = int(os.environ.get("POSEGRAPH_OPERATOR_METRICS_PORT", "0") or 0)
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=os.environ.get("POSEGRAPH_OPERATOR_METRICS_HOST", "0.0.0.0"))


def reconciled(kind: str) -> None:
    _f()["reconciles"].labels(kind).inc()


def failed(kind: str) -> None:
    _f()["errors"].labels(kind).inc()


def _publish() -> None:
    counts: dict[str, int] = {}
    for phase in _phases.values():
        counts[phase] = counts.get(phase, 0) + 1
    gauge = _f()["jobs"]
    for phase in {POSEJOB_PENDING, POSEJOB_RUNNING, POSEJOB_SUCCEEDED, POSEJOB_PARTIAL, POSEJOB_FAILED, *counts}:
        gauge.labels(phase).set(counts.get(phase, 0))


def posejob_phase(namespace: str, name: str, phase: str) -> None:
    with _lock:
        _phases[(namespace, name)] = phase
        _publish()


def forget_posejob(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        _publish()
