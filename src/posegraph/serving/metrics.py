"""Per-stage Prometheus metrics, the same names whichever runtime serves the stage.

posegraph_requests_total{stage,code}       requests answered, by HTTP status
posegraph_request_seconds{stage}           latency of a request (histogram)
posegraph_batch_requests{stage}            requests answered together in one stage call (histogram)
posegraph_persons_per_frame{stage}         persons in each returned frame document (histogram)

Under the KServe runtime these live in prometheus-client's default registry, which KServe's server
exposes at ``/metrics``. Under TorchServe a worker process cannot open its own port, so the
same measurements go through TorchServe's metrics API and appear on TorchServe's metrics endpoint
(``metrics_address``, prometheus mode) next to TorchServe's own ``ts_*`` metrics.
"""

from __future__ import annotations

from .protocol import BatchReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PERSON_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)


class PrometheusStageMetrics:
    _families = None

    def __init__(self, stage: str) -> None:
        from prometheus_client import Counter, Histogram

        cls = type(self)
        if cls._families is None:  # one set of families per process, labelled by stage
            cls._families = {
                "requests": Counter("posegraph_requests_total", "Requests answered", ["stage", "code"]),
                "latency": Histogram("posegraph_request_seconds", "Request latency", ["stage"],
                                     buckets=LATENCY_BUCKETS),
                "batch": Histogram("posegraph_batch_requests", "Requests per stage call", ["stage"],
                                   buckets=BATCH_BUCKETS),
                "persons": Histogram("posegraph_persons_per_frame", "Persons per returned frame", ["stage"],
                                     buckets=PERSON_BUCKETS),
            }
        self.stage = stage
        self.f = cls._families

    def observe(self, report: BatchReport, codes: list[int]) -> None:
        for code in codes:
            self.f["requests"].labels(self.stage, str(code)).inc()
            self.f["latency"].labels(self.stage).observe(report.seconds)
        self.f["batch"].labels(self.stage).observe(report.requests)
        for n in report.persons:
            self.f["persons"].labels(self.stage).observe(n)


class TorchServeStageMetrics:
    """The same measurements through TorchServe's ``context.metrics`` (declared in the archive's
    metrics.yaml, which TorchServe needs to expose model metrics in prometheus mode)."""

    def __init__(self, stage: str, context) -> None:
        self.stage = stage
        self.context = context

    def observe(self, report: BatchReport, codes: list[int]) -> None:
        from collections import Counter

        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        metrics = self.context.metrics

        def dims(**extra):
            # A fresh list every call: TorchServe appends ModelName/Level to the list it is given.
            return [Dimension("stage", self.stage)] + [Dimension(k, v) for k, v in extra.items()]

        for code, n in Counter(codes).items():
            metrics.add_metric("PosegraphRequests", n, "Count", None, dims(code=str(code)), MetricTypes.COUNTER)
        for _ in codes:
            metrics.add_metric("PosegraphRequestSeconds", report.seconds, "Seconds", None, dims(),
                               MetricTypes.HISTOGRAM)
        metrics.add_metric("PosegraphBatchRequests", report.requests, "Count", None, dims(), MetricTypes.HISTOGRAM)
        for n in report.persons:
            metrics.add_metric("PosegraphPersonsPerFrame", n, "Count", None, dims(), MetricTypes.HISTOGRAM)
