"""KServe Python runtime adapter: the same ``.mar`` served by ``kserve.ModelServer``.

The archive is a zip; we unpack it and load the stage exactly as the TorchServe handler does.
v1 (``/v1/models/<name>:predict``) carries frame documents as JSON; v2
(``/v2/models/<name>/infer``) carries them as one BYTES input named ``instances`` whose
elements are JSON documents, answered by a BYTES output named ``predictions``.

In a pod: ``python -m posegraph.serving.kserve_model --model_dir /mnt/models --http_port 8080``
(binds all interfaces, as KServe expects). Locally: ``posegraph serve STAGE --runtime kserve``
(binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput

from ..asgi import read_body
from .archive import find_mar, unpack
from .auth import BearerAuth
from .metrics import PrometheusStageMetrics
from .protocol import MAX_REQUEST_BYTES, BatchReport, ProtocolError, answer_batch, loads_json
from .runtime import load_stage, pick_device

log = logging.getLogger(__name__)

# How long a request's body may take to arrive (KServe's router gives serverRead 60 s by default).
# Without it a client that sent part of a body and kept the connection open held it forever.
READ_TIMEOUT_S = float(os.environ.get("POSEGRAPH_READ_TIMEOUT_S", 60))


class HTTPError(Exception):
    """An answer with a status KServe has no exception for (401, 403, 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StageModel(kserve.Model):
    def __init__(self, model_dir: Path, stage_or_name: str | None = None, name: str | None = None) -> None:
        self.archive = unpack(find_mar(model_dir, stage_or_name))
        super().__init__(name or self.archive.model_name)
        self.stage = None
        self.metrics = PrometheusStageMetrics(self.archive.stage)
        self.auth = BearerAuth.from_env()

    def load(self) -> bool:
        self.stage = load_stage(self.archive, pick_device(0))
        self.ready = True
        return self.ready

    def _answer(self, bodies: list[Any], headers: dict[str, str] | None):
        authorization = next((v for k, v in (headers or {}).items() if k.lower() == "authorization"), None)
        if not self.auth.allows(authorization):
            self.metrics.observe(_empty_report(), [401])
            raise HTTPError(401, "missing or wrong bearer token")
        outcomes, report = answer_batch(self.stage.run, bodies)
        self.metrics.observe(report, [o.status for o in outcomes])
        outcome = outcomes[0]
        if outcome.status in (403, 413):
            raise HTTPError(outcome.status, outcome.body["error"])
        if 400 <= outcome.status < 500:
            raise InvalidInput(outcome.body["error"])
        if outcome.status != 200:
            raise RuntimeError(outcome.body["error"])
        return outcome.body

    async def predict(self, payload, headers: dict[str, str] | None = None, response_headers=None):
        if isinstance(payload, InferRequest):
            return self._predict_v2(payload, headers)
        # A stage call is CPU-bound: keep the event loop (health checks, metrics) responsive.
        return await asyncio.get_running_loop().run_in_executor(None, self._answer, [payload], headers)

    def _predict_v2(self, request: InferRequest, headers) -> InferResponse:
        inputs = {i.name: i for i in request.inputs}
        if "instances" not in inputs or inputs["instances"].datatype != "BYTES":
            raise InvalidInput('v2: send one BYTES input named "instances" whose elements are JSON documents')
        elements = inputs["instances"].data
        if not isinstance(elements, list) or not all(isinstance(x, (str, bytes, bytearray)) for x in elements):
            # An int or an object here was a TypeError from json.loads: a 500.
            raise InvalidInput("v2: the elements of instances must be strings, each one JSON document")
        try:
            docs = [loads_json(x, what="v2: an element of instances") for x in elements]
        except ProtocolError as exc:  # too deep was a RecursionError: a 500
            raise InvalidInput(str(exc)) from None
        body = self._answer([{"instances": docs}], headers)
        out = [json.dumps(doc) for doc in body["predictions"]]
        return InferResponse(model_name=self.name, infer_outputs=[InferOutput("predictions", [len(out)], "BYTES", out)],
                             response_id=request.id or str(uuid.uuid4()))


def _empty_report():
    return BatchReport()


class BodyLimit:
    """Read the body here, before KServe does: refuse it with 413 once it passes the limit (by its
    Content-Length, unread, or while a chunked body streams in: those have no Content-Length and a
    40 MB one was read whole), or with 408 if it takes longer than READ_TIMEOUT_S; then hand the app
    the body as one message. Plain ASGI, not Starlette's BaseHTTPMiddleware: that one re-streams
    every request and response through anyio memory streams, which measurably added to the per-hop
    overhead (bench/middleware.py)."""

    def __init__(self, app, max_bytes: int | None = None, read_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes
        self.read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await _json_error(scope, receive, send, 413, f"request body is {int(length)} bytes, above the "
                                                         f"{self.max_bytes} byte limit")
            return
        try:
            # The deadline costs +0.04 ms a request (bench/middleware.py: the old Content-Length-only
            # BodyLimit measured +0.00 ms beside it); asyncio.wait_for, which adds a task, cost more.
            if hasattr(asyncio, "timeout"):  # Python 3.11+
                async with asyncio.timeout(self.read_timeout_s):
                    body = await self._read(receive)
            else:
                body = await asyncio.wait_for(self._read(receive), self.read_timeout_s)
        except asyncio.TimeoutError:
            await _json_error(scope, receive, send, 408, f"the request body did not arrive within "
                                                         f"{self.read_timeout_s:g} s (POSEGRAPH_READ_TIMEOUT_S)")
            return
        if body is None:  # the client went away mid-body: nobody to answer
            return
        if len(body) > self.max_bytes:
            await _json_error(scope, receive, send, 413, f"request body is above the {self.max_bytes} byte limit "
                                                         "(it came without a Content-Length)")
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # http.disconnect, when the client goes
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        return await read_body(receive, self.max_bytes)


async def _json_error(scope, receive, send, status: int, message: str) -> None:
    """An answer before the body was read whole. A 408 closes the connection (uvicorn would wait
    on for the rest of the body). A 413 does not: uvicorn drops the rest of the body as it comes,
    and a client still sending it gets the 413. Closed, KServe's router, writing the body on,
    got a broken pipe and made the 413 a 500 (tests/test_hostile.py)."""
    from fastapi.responses import JSONResponse

    headers = {"connection": "close"} if status == 408 else None
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)


def _limit_and_errors(app) -> None:
    """Refuse oversized or slow bodies before KServe reads them, answer HTTPError with its status,
    and what KServe answers 501 (``:explain`` with no explainer, ``/versions/…``) with 404: this
    server has no such thing. Called after KServe's own handlers are in, so these win."""
    from fastapi.responses import JSONResponse

    async def http_error(request, exc: HTTPError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def not_served(request, exc: NotImplementedError):
        return JSONResponse({"error": f"{request.method} {request.url.path}: not served here ({exc}); "
                                      "a stage answers /v1/models/<name>:predict and /v2/models/<name>/infer"},
                            status_code=404)

    app.add_middleware(BodyLimit)
    app.add_exception_handler(HTTPError, http_error)
    app.add_exception_handler(NotImplementedError, not_served)


def serve(model_dir: Path, *, stage: str | None = None, name: str | None = None, host: str = "0.0.0.0",
          port: int = 8080) -> None:
    """Run KServe's model server with one stage. Blocks; SIGINT/SIGTERM stop it."""
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, ModelServer, app
    from kserve.protocol.rest.server import RESTServer

    model = StageModel(Path(model_dir), stage, name)
    model.load()

    class HostModelServer(ModelServer):
        """KServe's ModelServer binds 0.0.0.0 unconditionally; locally we bind loopback only."""

        def start(self, models):
            self.register_model(models[0])
            rest = RESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                              self.http_port, grace_period=5)
            rest.config.host = host
            create_application = rest.create_application

            def create_with_limits():
                create_application()
                _limit_and_errors(app)  # after KServe's handlers: its NotImplementedError → 501 is replaced

            rest.create_application = create_with_limits
            self._rest_server = rest
            self.servers.append(rest.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    HostModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start([model])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a posegraph stage archive with KServe's model server")
    parser.add_argument("--model_dir", default="/mnt/models", help="KServe layout: model-store/<name>.mar")
    parser.add_argument("--model_name", default=None, help="served name (default: the archive's)")
    parser.add_argument("--stage", default=None, help="which archive, if model-store holds several")
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    args, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO)
    if os.environ.get("POSEGRAPH_ACCESS_LOG", "0") != "1":
        # Three log lines per request (access log + KServe's timing traces) cost more than the
        # protocol itself on small stages; Prometheus has the same numbers.
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    serve(Path(args.model_dir), stage=args.stage, name=args.model_name, host=args.host, port=args.http_port)


if __name__ == "__main__":
    main()

