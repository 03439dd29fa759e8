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

from .archive import find_mar, unpack
from .auth import BearerAuth
from .metrics import PrometheusStageMetrics
from .protocol import MAX_REQUEST_BYTES, answer_batch
from .runtime import load_stage, pick_device

log = logging.getLogger(__name__)


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
        try:
            docs = [json.loads(x.decode() if isinstance(x, (bytes, bytearray)) else x)
                    for x in inputs["instances"].data]
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"v2: an element of instances is not JSON: {exc}") from None
        body = self._answer([{"instances": docs}], headers)
        out = [json.dumps(doc) for doc in body["predictions"]]
        return InferResponse(model_name=self.name, infer_outputs=[InferOutput("predictions", [len(out)], "BYTES", out)],
                             response_id=request.id or str(uuid.uuid4()))


def _empty_report():
    from .protocol import BatchReport

    return BatchReport()


class BodyLimit:
    """Refuse a body whose Content-Length is over the limit before reading it. Plain ASGI, not
    Starlette's BaseHTTPMiddleware: that one re-streams every request and response through
    anyio memory streams, which measurably added to the per-hop overhead (bench/serving.py)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
                from fastapi.responses import JSONResponse

                response = JSONResponse({"error": f"request body is {int(length)} bytes, above the "
                                                  f"{MAX_REQUEST_BYTES} byte limit"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _limit_and_errors(app) -> None:
    """Refuse oversized bodies before they are read, and answer HTTPError with its status."""
    from fastapi.responses import JSONResponse

    async def http_error(request, exc: HTTPError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    app.add_middleware(BodyLimit)
    app.add_exception_handler(HTTPError, http_error)


def serve(model_dir: Path, *, stage: str | None = None, name: str | None = None, host: str = "0.0.0.0",
          port: int = 8080) -> None:
    """Run KServe's model server with one stage. Blocks; SIGINT/SIGTERM stop it."""
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, ModelServer, app
    from kserve.protocol.rest.server import RESTServer

    model = StageModel(Path(model_dir), stage, name)
    model.load()
    _limit_and_errors(app)

    class HostModelServer(ModelServer):
        """KServe's ModelServer binds 0.0.0.0 unconditionally; locally we bind loopback only."""

        def start(self, models):
            self.register_model(models[0])
            rest = RESTServer(FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                              self.http_port, grace_period=5)
            rest.config.host = host
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

