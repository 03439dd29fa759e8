"""TorchServe adapter: a stage archive's handler.

It speaks KServe v1 itself. Run without ``TS_SERVICE_ENVELOPE``, TorchServe hands the handler every
request's raw body, so server-side batching (``batchSize``/``maxBatchDelay``) gives one stage call
for several requests. TorchServe's stock kserve envelopes read only the first request of a batch.
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from typing import Any

from .archive import read_manifest
from .auth import BearerAuth
from .metrics import TorchServeStageMetrics
from .protocol import Outcome, answer_batch
from .runtime import load_stage, pick_device

log = logging.getLogger(__name__)

# TorchServe's worker json-decodes an application/json body itself (per request, reading this
# variable) and hands the handler a dict. Then POSEGRAPH_MAX_REQUEST_BYTES never applied (a 2 MB
# body under a 1 MiB limit got a 400, not a 413), NaN/Infinity were accepted (KServe's runtime
# refuses them), and a body it could not decode came as bytes anyway. Raw bytes always: both
# runtimes then parse every body with protocol.parse_request (one decode, as before).
os.environ["TS_DECODE_INPUT_REQUEST"] = "false"


class StageService:
    def __init__(self, context) -> None:
        props = context.system_properties
        archive = read_manifest(props["model_dir"])
        self.stage = load_stage(archive, pick_device(props.get("gpu_id")))
        self.metrics = TorchServeStageMetrics(archive.stage, context)
        self.auth = BearerAuth.from_env()

    @staticmethod
    def _header(context, idx: int, name: str) -> str | None:
        headers = context.get_all_request_header(idx) or {}
        for key, value in headers.items():
            if key.lower() == name.lower():
                return value.decode() if isinstance(value, (bytes, bytearray)) else value
        return None

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        outcomes: list[Outcome | None] = [None] * len(data)
        admitted = []
        for i, row in enumerate(data):
            if not self.auth.allows(self._header(context, i, "Authorization")):
                outcomes[i] = Outcome(401, {"error": "missing or wrong bearer token"})
            else:
                admitted.append(i)
        bodies = [data[i].get("body", data[i].get("data")) for i in admitted]
        answered, report = answer_batch(self.stage.run, bodies)
        for i, outcome in zip(admitted, answered):
            outcomes[i] = outcome
        for i, outcome in enumerate(outcomes):
            context.set_response_content_type(i, "application/json")
            if outcome.status != 200:
                # The standard phrase, not the message (that is in the body): TorchServe frames the
                # phrase with its length in characters, so a message with "×" or "…" in it
                # desynchronised the frame and killed the worker, a 500 for every request in
                # flight (found by a 10000×6000 PNG, tests/test_hostile.py).
                context.set_response_status(outcome.status, HTTPStatus(outcome.status).phrase, idx=i)
        self.metrics.observe(report, [o.status for o in outcomes])
        return [json.dumps(o.body) for o in outcomes]


_service: StageService | None = None


def handle(data, context):
    """TorchServe's entry point: called with ``data=None`` once at load, then once per batch."""
    global _service
    if _service is None:
        _service = StageService(context)
    if data is None:
        return None
    return _service.handle(data, context)
