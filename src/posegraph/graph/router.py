"""A local graph router with KServe's InferenceGraph router semantics.

It reads the same graph spec KServe's router reads (``--graph-json``: the InferenceGraph's
``spec``, camelCase) and answers on the same external shape: ``POST /`` with a KServe v1 body, and
``GET /readyz``. So a client cannot tell a laptop from a cluster. Semantics, following KServe's
``cmd/router``:

* ``Sequence`` nodes run their steps in order. A step gets the graph's input, or, with
  ``data: $response``, the previous step's raw response.
* ``mapPredictionsToInstances: true`` turns a ``{"predictions": …}`` request into
  ``{"instances": …}`` before the step is called (KServe ≥ 0.16).
* ``dependency: Hard`` stops at the first non-2xx and returns that response as it is. ``Soft``
  goes on.
* Each step call is bounded by ``routerTimeouts.serviceClient``. The whole request is bounded by
  ``serverWrite``.
* Headers matching the propagation patterns are forwarded to every step: a pattern matches
  anywhere in the header's canonical name (``X-Request-Id``), case-sensitively, as KServe's does.
  A request id (``X-Request-Id``) is always forwarded; this router generates one when absent and
  echoes it in the response (KServe's does neither).

What a client sends is checked before any step is called. The body is refused with 413 once it is
above ``--max-request-bytes`` (``POSEGRAPH_MAX_REQUEST_BYTES``, 32 MiB as the stage servers): by its
Content-Length without reading it, or while a chunked body streams in. It must arrive within
``serverRead`` (KServe's default, 60 s, when the spec has none), else 408. What the body says is
the first step's to judge, as behind KServe's router, so a bad body gets the same 400 through
both. KServe's router reads any body whole (no limit) and forwards it.

Where KServe's router says little, this one says more. An unreachable step is answered with 502,
a step that times out with 504, and both name the step. Prometheus metrics per step are at
``/metrics``; KServe's router has none (kserve#2703). Only Sequence nodes are supported (with
nested ``nodeName`` steps, a step's ``condition`` in the GJSON subset of ``graph.gjson``). Splitter, Ensemble,
Switch and other conditions are refused at start, so
no graph silently behaves differently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from ..asgi import read_body
from ..names import MAX_REQUEST_BYTES_DEFAULT
from . import gjson

log = logging.getLogger(__name__)

ROOT = "root"
# KServe's router reads a request for at most serverRead seconds, 60 when unset
# (pkg/constants RouterTimeoutsServerRead); so does this one.
SERVER_READ_DEFAULT_S = 60


class GraphSpecError(ValueError):
    pass


def check_graph(spec: dict[str, Any]) -> None:
    nodes = spec.get("nodes") or {}
    if ROOT not in nodes:
        raise GraphSpecError("the graph needs a node named 'root'")
    for name, node in nodes.items():
        if node.get("routerType") != "Sequence":
            raise GraphSpecError(f"node {name}: routerType {node.get('routerType')!r} is not supported by the "
                                 "local router (Sequence only)")
        for i, step in enumerate(node.get("steps") or []):
            label = step.get("name") or f"{name}[{i}]"
            if step.get("condition"):
                try:
                    gjson.parse(step["condition"])
                except gjson.UnsupportedCondition as exc:
                    raise GraphSpecError(f"step {label}: {exc}") from None
            if not (step.get("serviceUrl") or step.get("nodeName")):
                raise GraphSpecError(f"step {label}: needs serviceUrl (or nodeName); serviceName is resolved "
                                     "by KServe's controller and must be given as a URL locally")
            if step.get("nodeName") and step["nodeName"] not in nodes:
                raise GraphSpecError(f"step {label}: no node named {step['nodeName']!r}")


@dataclass
class Answer:
    body: bytes
    status: int
    content_type: str = "application/json"


def _error(status: int, message: str, step: str | None = None) -> Answer:
    payload = {"error": message}
    if step:
        payload["step"] = step
    return Answer(json.dumps(payload).encode(), status)


def map_predictions_to_instances(body: bytes) -> bytes:
    """As KServe's router does it: a body whose ``predictions`` is a non-empty list becomes
    ``{"instances": predictions}`` (KServe decodes into a struct of just those two fields, so any
    other top-level key is dropped); anything else is passed on unchanged."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON we read: passed on as it is
        return body
    if isinstance(data, dict) and isinstance(data.get("predictions"), list) and data["predictions"]:
        return json.dumps({"instances": data["predictions"]}).encode()
    return body


def canonical_header(name: str) -> str:
    """Go's canonical form of a header name (``x-request-id`` → ``X-Request-Id``): what KServe's
    router matches its patterns against."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
        self.requests = Counter("posegraph_router_requests_total", "Graph requests by status", ["code"],
                                registry=self.registry)
        self.latency = Histogram("posegraph_router_request_seconds", "Graph request latency", buckets=buckets,
                                 registry=self.registry)
        self.step_latency = Histogram("posegraph_router_step_seconds", "Step call latency", ["step"],
                                      buckets=buckets, registry=self.registry)
        self.step_errors = Counter("posegraph_router_step_errors_total", "Failed step calls", ["step", "reason"],
                                   registry=self.registry)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class GraphRouter:
    """An ASGI app that routes requests through the graph."""

    def __init__(self, spec: dict[str, Any], *, headers_to_propagate: list[str] | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES_DEFAULT) -> None:
        check_graph(spec)
        self.spec = spec
        timeouts = spec.get("routerTimeouts") or {}
        self.step_timeout = timeouts.get("serviceClient")
        self.request_timeout = timeouts.get("serverWrite")
        self.read_timeout = timeouts.get("serverRead") or SERVER_READ_DEFAULT_S
        self.max_request_bytes = max_request_bytes
        # KServe's semantics: a header is forwarded when a pattern matches anywhere in its canonical
        # name (Go's regexp MatchString, unanchored and case-sensitive).
        self.patterns = [re.compile(p) for p in (headers_to_propagate or [])]
        # Each step's condition, parsed once (check_graph has refused any this router cannot read).
        self.conditions = {step["condition"]: gjson.parse(step["condition"])
                           for node in spec["nodes"].values() for step in node.get("steps") or []
                           if step.get("condition")}
        self.metrics = Metrics()
        self.client: httpx.AsyncClient | None = None
        self.shutting_down = False

    # -- routing ----------------------------------------------------------------------------------
    async def route(self, node_name: str, body: bytes, headers: dict[str, str]) -> Answer:
        node = self.spec["nodes"][node_name]
        answer = Answer(body, 200)
        for i, step in enumerate(node.get("steps") or []):
            name = step.get("name") or f"{node_name}[{i}]"
            request = answer.body if (step.get("data") == "$response" and i > 0) else body
            if step.get("mapPredictionsToInstances"):
                request = map_predictions_to_instances(request)
            if step.get("condition"):
                # KServe: the previous response must be JSON (else 500), and when the condition's path
                # does not exist in it the sequence ends there, answering it with 200.
                try:
                    previous = json.loads(answer.body) if i > 0 else None
                except (ValueError, UnicodeDecodeError, RecursionError):
                    previous = None
                if previous is None:
                    return _error(500, f"step {name}: invalid response to test its condition on", name)
                if not gjson.exists(previous, self.conditions[step["condition"]]):
                    return Answer(answer.body, 200, answer.content_type)
            if step.get("nodeName"):
                answer = await self.route(step["nodeName"], request, headers)
            else:
                answer = await self.call(name, step["serviceUrl"], request, headers)
            if step.get("dependency") == "Hard" and not 200 <= answer.status < 300:
                return answer  # KServe: a failed hard dependency ends the sequence with its response
        return answer

    async def call(self, name: str, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        started = time.perf_counter()
        try:
            response = await self.client.post(url, content=body, headers=headers, timeout=self.step_timeout)
        except httpx.TimeoutException:
            self.metrics.step_errors.labels(name, "timeout").inc()
            return _error(504, f"step {name} did not answer within {self.step_timeout}s ({url})", name)
        except httpx.HTTPError as exc:
            self.metrics.step_errors.labels(name, "unreachable").inc()
            return _error(502, f"step {name} is unreachable at {url}: {type(exc).__name__}: {exc}", name)
        finally:
            self.metrics.step_latency.labels(name).observe(time.perf_counter() - started)
        if not 200 <= response.status_code < 300:
            self.metrics.step_errors.labels(name, str(response.status_code)).inc()
        return Answer(response.content, response.status_code,
                      response.headers.get("content-type", "application/json"))

    def forwarded_headers(self, headers: dict[str, str], request_id: str) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if any(p.search(canonical_header(k)) for p in self.patterns)}
        out = {k: v for k, v in out.items() if k.lower() not in {"content-length", "host"}}
        out["x-request-id"] = request_id
        out["content-type"] = "application/json"
        return out

    # -- the request ------------------------------------------------------------------------------
    async def read_body(self, receive) -> bytes | Answer | None:
        """The request body, a 413 once it is above the limit, or None when the client went away
        before it was all sent. That last case used to end the loop as if the body were complete:
        a truncated body was routed to the first step."""
        body = await read_body(receive, self.max_request_bytes)
        if body is not None and len(body) > self.max_request_bytes:
            return _error(413, f"request body is above the {self.max_request_bytes} byte limit "
                               "(POSEGRAPH_MAX_REQUEST_BYTES, --max-request-bytes)")
        return body

    async def predict(self, receive, headers: dict[str, str], request_id: str) -> Answer | None:
        """POST /: the checks, then the graph. None: the client is gone, nobody to answer."""
        length = next((v for k, v in headers.items() if k.lower() == "content-length"), "")
        if length.isdigit() and int(length) > self.max_request_bytes:  # refused unread
            return _error(413, f"request body is {int(length)} bytes, above the {self.max_request_bytes} byte "
                               "limit (POSEGRAPH_MAX_REQUEST_BYTES, --max-request-bytes)")
        try:
            body = await asyncio.wait_for(self.read_body(receive), timeout=self.read_timeout)
        except asyncio.TimeoutError:
            return _error(408, f"the request body did not arrive within {self.read_timeout}s (serverRead)")
        if body is None or isinstance(body, Answer):
            return body
        # What the body says is the first stage's to judge, as behind KServe's router: a bad body gets
        # the same 400 through both (tests/test_kserve_router.py).
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(self.route(ROOT, body, self.forwarded_headers(headers, request_id)),
                                            timeout=self.request_timeout)
        except asyncio.TimeoutError:
            answer = _error(504, f"the graph did not finish within {self.request_timeout}s (serverWrite)")
        self.metrics.latency.observe(time.perf_counter() - started)
        return answer

    # -- ASGI -------------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.shutting_down = True
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        extra = {}
        if path == "/readyz" and method == "GET":
            answer = Answer(b"shutting down" if self.shutting_down else b"ok", 503 if self.shutting_down else 200,
                            "text/plain")
        elif path == "/metrics" and method == "GET":
            answer = Answer(self.metrics.exposition(), 200, "text/plain; version=0.0.4")
        elif path == "/" and method == "POST":
            request_id = next((v for k, v in headers.items() if k.lower() == "x-request-id"), None) or str(uuid.uuid4())
            extra["x-request-id"] = request_id
            answer = await self.predict(receive, headers, request_id)
            if answer is None:
                return
            # The body never came: closed, or uvicorn waits on for it. Not for a 413: a client still
            # sending its body then gets the answer, not a broken pipe (kserve_model._json_error).
            if answer.status == 408:
                extra["connection"] = "close"
            self.metrics.requests.labels(str(answer.status)).inc()
        else:
            answer = _error(404, f"{method} {path}: the graph answers POST / (and GET /readyz, /metrics)")
        response_headers = [(b"content-type", answer.content_type.encode()),
                            (b"content-length", str(len(answer.body)).encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
        await send({"type": "http.response.body", "body": answer.body})


def serve(spec: dict[str, Any], *, host: str = "127.0.0.1", port: int = 8080,
          headers_to_propagate: list[str] | None = None, max_request_bytes: int = MAX_REQUEST_BYTES_DEFAULT) -> None:
    import uvicorn

    app = GraphRouter(spec, headers_to_propagate=headers_to_propagate, max_request_bytes=max_request_bytes)
    idle = (spec.get("routerTimeouts") or {}).get("serverIdle") or 180
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=int(idle), lifespan="on")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="posegraph's local InferenceGraph router")
    parser.add_argument("--graph-json", required=True, help="the InferenceGraph spec as JSON (KServe's flag)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--headers-propagate", default="Authorization,X-Request-Id,Traceparent",
                        help="comma-separated header name patterns forwarded to every step")
    parser.add_argument("--max-request-bytes", type=int,
                        default=int(os.environ.get("POSEGRAPH_MAX_REQUEST_BYTES", MAX_REQUEST_BYTES_DEFAULT)),
                        help="larger request bodies are refused with 413 (default: $POSEGRAPH_MAX_REQUEST_BYTES "
                             f"or {MAX_REQUEST_BYTES_DEFAULT})")
    args = parser.parse_args(argv)
    if args.max_request_bytes < 1:
        parser.error("--max-request-bytes must be a positive byte count")
    logging.basicConfig(level=logging.WARNING)
    try:
        spec = json.loads(args.graph_json)
    except json.JSONDecodeError as exc:
        parser.error(f"--graph-json is not JSON: {exc}")
    patterns = [p.strip() for p in args.headers_propagate.split(",") if p.strip()]
    try:
        serve(spec, host=args.host, port=args.port, headers_to_propagate=patterns,
              max_request_bytes=args.max_request_bytes)
    except GraphSpecError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
