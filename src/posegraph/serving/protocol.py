"""The KServe v1 protocol over a stage, independent of any server.

``{"instances": [doc, ...]}`` in, ``{"predictions": [doc, ...]}`` out, errors as
``{"error": "..."}`` with an HTTP status. Several requests can be answered in one
stage call (server-side batching) without one bad request failing the others.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import BadInput, PosegraphError
from ..frame import Document, parse_document
from ..names import MAX_REQUEST_BYTES_DEFAULT

log = logging.getLogger(__name__)

# Largest request body we accept (names.MAX_REQUEST_BYTES_DEFAULT says why 32 MiB).
MAX_REQUEST_BYTES = int(os.environ.get("POSEGRAPH_MAX_REQUEST_BYTES", MAX_REQUEST_BYTES_DEFAULT))
MAX_INSTANCES = int(os.environ.get("POSEGRAPH_MAX_INSTANCES", 256))


class ProtocolError(BadInput):
    """A request that is not a KServe v1 request of frame/track documents."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def loads_json(data: bytes | bytearray | memoryview | str, *, what: str = "request body") -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity (Python's json takes them, KServe's orjson and every
    other JSON parser do not, and answers with them would not be JSON either), and every way the
    parser fails is a 400: nesting deeper than the recursion limit raises RecursionError and a
    5000-digit integer a ValueError, both of which were 5xx (tests/test_hostile.py)."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise ProtocolError(f"{what} is not JSON we accept: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the int digit limit, NaN
        raise ProtocolError(f"{what} is not JSON: {exc}") from None


def parse_request(body: Any) -> list[Document]:
    """One request body (bytes, str, or already-parsed JSON) → its documents."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        if len(body) > MAX_REQUEST_BYTES:  # a str counts characters: at most what its bytes count
            raise ProtocolError(f"request body is {len(body)} bytes, above the {MAX_REQUEST_BYTES} byte limit",
                                status=413)
        body = loads_json(body)
    if not isinstance(body, dict) or "instances" not in body:
        raise ProtocolError('request must be a JSON object with "instances": [frame documents]')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ProtocolError('"instances" must be a list of frame documents')
    if len(instances) > MAX_INSTANCES:
        raise ProtocolError(f"{len(instances)} instances in one request; the limit is {MAX_INSTANCES}", status=413)
    return [parse_document(doc, where=f"instances[{i}]") for i, doc in enumerate(instances)]


def response_body(docs: list[Document]) -> dict[str, Any]:
    return {"predictions": [doc.to_json() for doc in docs]}


def error_body(exc: BaseException) -> dict[str, str]:
    return {"error": str(exc)}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ProtocolError):
        return exc.status
    if isinstance(exc, BadInput):
        return exc.http_status  # 400, or a subclass's own (403: a URI outside the fetch policy)
    if isinstance(exc, PosegraphError):
        return 500
    return 500


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    documents: int = 0


@dataclass
class BatchReport:
    """What one call of :func:`answer_batch` did, for metrics."""

    requests: int = 0
    documents: int = 0
    persons: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def answer_batch(run: Callable[[list[Document]], list[Document]], bodies: list[Any]) -> tuple[list[Outcome], BatchReport]:
    """Answer several requests with as few stage calls as possible.

    All valid requests' documents go through ``run`` together. If that fails on bad input, each
    request is retried alone so the error lands on the request that caused it.
    """
    started = time.perf_counter()
    outcomes: list[Outcome | None] = [None] * len(bodies)
    parsed: list[tuple[int, list[Document]]] = []
    for i, body in enumerate(bodies):
        try:
            parsed.append((i, parse_request(body)))
        except BadInput as exc:
            outcomes[i] = Outcome(status_of(exc), error_body(exc))
        except Exception as exc:  # noqa: BLE001 - a parser fault fails its own request, not the batch
            log.exception("could not parse request %d of %d", i, len(bodies))
            outcomes[i] = Outcome(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def answer(items: list[tuple[int, list[Document]]]) -> None:
        docs = [d for _, ds in items for d in ds]
        result = run(docs) if docs else []
        start = 0
        for i, ds in items:
            mine = result[start : start + len(ds)]
            start += len(ds)
            outcomes[i] = Outcome(200, response_body(mine), documents=len(mine))

    if parsed:
        try:
            answer(parsed)
        except BadInput:
            for item in parsed:
                try:
                    answer([item])
                except Exception as exc:  # noqa: BLE001 - reported on its own request
                    outcomes[item[0]] = Outcome(status_of(exc), error_body(exc))
        except Exception as exc:  # noqa: BLE001 - a server fault fails the whole batch, said once
            log.exception("stage failed on a batch of %d requests", len(parsed))
            for i, _ in parsed:
                outcomes[i] = Outcome(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    final = [o for o in outcomes if o is not None]
    report = BatchReport(
        requests=len(bodies),
        documents=sum(o.documents for o in final),
        persons=[],
        errors=sum(1 for o in final if o.status >= 400),
        seconds=time.perf_counter() - started,
    )
    for o in final:
        if o.status == 200:
            report.persons.extend(len(p.get("persons") or []) for p in o.body["predictions"]
                                  if p.get("schema") == "posegraph/frame/v1")
    return final, report
