"""Every network endpoint, tested as an attacker would use it.

One setup for the module: the three stage servers under KServe's Python runtime, detect under
TorchServe too, posegraph's graph router, KServe's own router (when built) and the web UI, all on
loopback. Each gets malformed and hostile requests: truncated, oversized and never-ending bodies,
wrong content types, JSON nested 100000 deep, bytes that are not UTF-8, JSON that is not a
request, documents that are not documents, images that are not images or decompression bombs,
paths and upload names that climb out of their folder, another job's files. Every answer must be
a 4xx with a message (a JSON error or text), never a 5xx and never a hang (30 s is a hang), and
every server must answer a valid request afterwards.

What these requests found, and where it is fixed (docs/serving.md, "Limits"):

* ``{"instances": [{"schema": [1]}]}`` (a schema that is not a string): 500 from both runtimes
  (TypeError). frame.parse_document.
* A client field nested 300 levels deep: validated, ran the stage, then failed the whole batch with
  a 500 (pydantic serialises 255 levels at most). frame.MAX_EXTRA_DEPTH.
* ``[`` × 100000, and a 5000-digit integer, to TorchServe: 503 (RecursionError, ValueError in the
  handler's json.loads). protocol.loads_json.
* A 10000×6000 PNG (its "×" in the error message) or ``width: 10**30`` to TorchServe: "Worker
  died", 500s while it restarted. torchserve_handler: the reason phrase is the standard one.
* A 2 MB body under a 1 MiB POSEGRAPH_MAX_REQUEST_BYTES to TorchServe: 400, not 413 (TorchServe
  had decoded the JSON itself); NaN was accepted there and refused by KServe. torchserve_handler:
  TS_DECODE_INPUT_REQUEST=false.
* A chunked 40 MB body to a KServe stage server: read whole, no Content-Length to check. A body
  that never finished held its connection forever. kserve_model.BodyLimit (413 streaming, 408).
* ``v2`` elements that are numbers or objects, or nested too deep: 500. kserve_model._predict_v2.
* ``POST /v1/models/detect:explain``: 501. kserve_model: 404, nothing is served there.
* posegraph's router read any body whole, routed a truncated one (client gone) to detect, and
  passed anything on; now 413 (Content-Length or streaming), 408 (serverRead), 400 (not a v1
  request), nothing routed for a client that left. graph/router.py.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest
from tiers import missing, tier

LIMIT = 1 << 20          # POSEGRAPH_MAX_REQUEST_BYTES for every server here: a 2 MB body is over it
READ_TIMEOUT_S = 3       # POSEGRAPH_READ_TIMEOUT_S for the KServe stage servers
TIMEOUT = 30.0           # an answer (or a close) later than this is a hang
MAX_UPLOAD_MB = 5
PASSWORD = "hostile-" + uuid.uuid4().hex[:8]
AUTH = ("posegraph", PASSWORD)
FRAME, TRACK = "posegraph/frame/v1", "posegraph/track/v1"
JSON = {"content-type": "application/json"}

# The v1 endpoints: a stage's :predict or a graph's POST /.
STAGE_ENDPOINTS = ["kserve:detect", "kserve:pose2d", "kserve:lift3d", "torchserve:detect"]
ROUTER_ENDPOINTS = ["router:posegraph", "router:kserve"]
V1_ENDPOINTS = STAGE_ENDPOINTS + ROUTER_ENDPOINTS
SERVERS = V1_ENDPOINTS + ["ui"]


# ---- the servers ---------------------------------------------------------------------------------

@dataclass
class Stack:
    graph: object                                     # posegraph.embedded.LocalGraph (posegraph's router)
    torchserve: object                                # StageServer: detect under TorchServe
    kserve_router: str | None                         # KServe's router's URL, None when not built
    kserve_router_missing: str                        # why not
    ui: str
    ui_data: Path
    urls: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        if name == "router:kserve" and self.kserve_router is None:
            missing(f"KServe's router is not built, so it is not tested here: {self.kserve_router_missing}")
        return self.urls[name]


@pytest.fixture(scope="module")
@tier("servers")
def stack(checkpoints, tmp_path_factory):
    from services import free_port, stop_process, wait_for_port

    from posegraph.config import load_profile
    from posegraph.embedded import (archives_for_profile, check_router, default_pipeline, start_local_graph,
                                    start_router, start_stage_server)
    from posegraph.errors import UsageError

    work = tmp_path_factory.mktemp("hostile")
    env = {"POSEGRAPH_MAX_REQUEST_BYTES": str(LIMIT), "POSEGRAPH_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    with contextlib.ExitStack() as cleanup:
        graph = start_local_graph(default_pipeline(layouts, "kserve"), layouts, env=env)
        cleanup.callback(graph.stop)
        torchserve = start_stage_server("detect", layouts["detect"], runtime="torchserve", workdir=work / "ts",
                                        env=env)
        cleanup.callback(torchserve.stop)
        torchserve.wait_ready(180)
        kserve_router, missing = None, ""
        try:
            check_router("kserve")
        except UsageError as exc:
            missing = str(exc)
        else:
            port = free_port()
            process = start_router("kserve", graph.graph_spec, port, graph.pipeline.spec.graph.headersToPropagate,
                                   log=work / "kserve-router.log", env=env)
            cleanup.callback(lambda: (process.kill(), process.wait(10)))  # it drains 30 s on SIGTERM
            kserve_router = f"http://127.0.0.1:{port}/"
        # The UI as tests/test_ui.py starts it, pointed at this graph instead of an embedded one.
        port = free_port()
        data = work / "ui"
        log = work / "ui.log"
        with open(log, "wb") as out:
            ui = subprocess.Popen([sys.executable, "-m", "posegraph", "ui", "--port", str(port), "--data", str(data),
                                   "--graph", graph.endpoint, "--lift3d", graph.servers["lift3d"].predict_url,
                                   "--max-upload-mb", str(MAX_UPLOAD_MB)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "POSEGRAPH_UI_PASSWORD": PASSWORD,
                                       "POSEGRAPH_RETRY_BASE_S": "0.1"})
        cleanup.callback(stop_process, ui)
        wait_for_port(port, timeout=120, proc=ui, log=log)
        s = Stack(graph, torchserve, kserve_router, missing, f"http://127.0.0.1:{port}", data)
        s.urls = {f"kserve:{stage}": server.predict_url for stage, server in graph.servers.items()}
        s.urls.update({"torchserve:detect": torchserve.predict_url, "router:posegraph": graph.endpoint,
                       "router:kserve": kserve_router, "ui": f"http://127.0.0.1:{port}/api/photo"})
        yield s


# ---- valid requests ------------------------------------------------------------------------------

def jpeg_b64(pixels) -> str:
    return base64.b64encode(cv2.imencode(".jpg", pixels)[1].tobytes()).decode()


@pytest.fixture(scope="module")
def valid(astronaut):
    """One valid request per endpoint: a small real photo (skimage's astronaut)."""
    photo = astronaut[:192, :192].copy()
    frame = {"schema": FRAME, "image": {"data": jpeg_b64(photo), "format": "jpeg"}}
    person = {"bbox": [20.0, 10.0, 180.0, 190.0], "score": 1.0}
    keypoints = [[40.0 + 7 * i, 20.0 + 9 * i, 0.9] for i in range(17)]
    return {
        "kserve:detect": {"instances": [frame]},
        "kserve:pose2d": {"instances": [{**frame, "persons": [person]}]},
        "kserve:lift3d": {"instances": [{"width": 192, "height": 192,
                                         "persons": [{**person, "keypoints2d": keypoints}]}]},
        "torchserve:detect": {"instances": [frame]},
        "router:posegraph": {"instances": [frame]},
        "router:kserve": {"instances": [frame]},
        "photo": cv2.imencode(".jpg", photo)[1].tobytes(),
    }


def assert_serves(stack: Stack, name: str, valid) -> None:
    """The server still answers a valid request, correctly."""
    if name == "ui":
        response = httpx.post(stack.urls["ui"], auth=AUTH, files={"file": ("photo.jpg", valid["photo"])},
                              timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json()["schema"] == FRAME
        return
    response = httpx.post(stack.url(name), json=valid[name], timeout=TIMEOUT)
    assert response.status_code == 200, f"{name} after a hostile request: {response.status_code} {response.text[:300]}"
    assert len(response.json()["predictions"]) == 1


def assert_refused(response: httpx.Response, status: int | None = None, *, what: str = "") -> None:
    """A 4xx (or exactly ``status``) that says why: a JSON error or a line of text."""
    where = f"{what}: {response.status_code} {response.text[:300]!r}"
    if status is not None:
        assert response.status_code == status, where
    assert 400 <= response.status_code < 500, where
    if "json" in response.headers.get("content-type", ""):
        body = response.json()
        message = body.get("error") or body.get("detail") or body.get("message") if isinstance(body, dict) else None
        assert message, f"a 4xx without a message: {where}"
    else:
        assert response.text.strip(), f"a 4xx without a message: {where}"


# ---- hostile request bodies, to every v1 endpoint ---------------------------------------------

def _png(width: int, height: int, mode: str = "1") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def bomb_png() -> str:
    """30000×30000 1-bit: 109 kB of PNG, 2.7 GB as BGR pixels. POSEGRAPH_MAX_PIXELS stops it."""
    return base64.b64encode(_png(30000, 30000)).decode()


@functools.cache
def big_png() -> str:
    """10000×6000 = 60 MP: under PIL's own bomb check, over posegraph's 50 MP; its refusal says "×"."""
    return base64.b64encode(_png(10000, 6000)).decode()


def _gif() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    return base64.b64encode(buf.getvalue()).decode()


PIC = jpeg_b64(np.full((48, 64, 3), 90, np.uint8))


def raw(content: bytes, content_type: str | None = "application/json") -> dict:
    return {"content": content, "headers": {"content-type": content_type} if content_type else {}}


def doc(**fields) -> dict:
    return raw(json.dumps({"instances": [fields]}).encode())


def body(value) -> dict:
    return raw(json.dumps(value).encode())


def chunked(size: int):
    def chunks():
        yield b'{"instances": ["'
        for _ in range(size // 65536 + 1):
            yield b"x" * 65536
        yield b'"]}'
    return {"content": chunks(), "headers": JSON}  # an iterator: httpx sends it chunked, no Content-Length


# name → (request factory, the status it must get; None: any 4xx). Factories: bodies are built
# per use (a generator is spent once).
HOSTILE = {
    "not JSON": (lambda: raw(b"{this is not json"), 400),
    "empty body": (lambda: raw(b""), 400),
    "form-encoded": (lambda: raw(b"instances=1&a=2", "application/x-www-form-urlencoded"), None),
    "multipart": (lambda: raw(b'--x\r\nContent-Disposition: form-data; name="instances"\r\n\r\n[]\r\n--x--\r\n',
                              "multipart/form-data; boundary=x"), None),
    "XML": (lambda: raw(b"<instances><doc/></instances>", "application/xml"), None),
    "no content type, not JSON": (lambda: raw(b"\x00\x01\x02binary", None), None),
    "100000 levels of [": (lambda: raw(b"[" * 100_000), 400),
    "100000 levels of [], inside instances": (lambda: raw(b'{"instances": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"),
                                              400),
    "50000 levels of {": (lambda: raw(b'{"a":' * 50_000 + b"1" + b"}" * 50_000), 400),
    "a client field 300 levels deep": (lambda: raw(b'{"instances": [{"image": {"data": "%s"}, "x": %s}]}'
                                                   % (PIC.encode(), b"[" * 300 + b"]" * 300)), 400),
    "non-UTF-8 bytes": (lambda: raw(b'{"instances": [{"note": "\xff\xfe\xfd"}]}'), 400),
    "UTF-16": (lambda: raw('{"instances": [{}]}'.encode("utf-16")), 400),
    "NaN": (lambda: raw(b'{"instances": [{"width": NaN, "height": 4}]}'), 400),
    "Infinity in a bbox": (lambda: raw(b'{"instances": [{"image": {"data": "' + PIC.encode()
                                       + b'"}, "persons": [{"bbox": [0, 0, Infinity, 9], "score": 1}]}]}'), 400),
    "a 5000-digit number": (lambda: raw(b'{"instances": [{"frame_index": ' + b"9" * 5000 + b"}]}"), 400),
    "a JSON array": (lambda: body([{"image": {"data": PIC}}]), 400),
    "a JSON string": (lambda: body("instances"), 400),
    "a JSON number": (lambda: body(7), 400),
    "JSON null": (lambda: body(None), 400),
    "instances null": (lambda: body({"instances": None}), 400),
    "instances an object": (lambda: body({"instances": {"image": {"data": PIC}}}), 400),
    "instances that are not documents": (lambda: body({"instances": [1, "x", None, [], True]}), 400),
    "too many instances": (lambda: body({"instances": [{}] * 257}), 413),
    "schema an object": (lambda: doc(schema={"$ne": 1}), 400),
    "schema a list": (lambda: doc(schema=[FRAME]), 400),
    "unknown schema": (lambda: doc(schema="posegraph/frame/v0"), 400),
    "image a string": (lambda: doc(image="cat.jpg"), 400),
    "image data not base64": (lambda: doc(image={"data": "!!not*base64??"}), 400),
    "image data: base64 of text": (lambda: doc(image={"data": base64.b64encode(b"hello, world").decode()}), 400),
    "image data: a truncated JPEG": (lambda: doc(image={"data": PIC[:120]}), 400),
    "image data: a GIF": (lambda: doc(image={"data": _gif()}), 400),
    "image data: a 30000x30000 PNG bomb": (lambda: doc(image={"data": bomb_png()}), 400),
    "image data: a 60 MP PNG": (lambda: doc(image={"data": big_png()}), 400),
    "width 10**30": (lambda: doc(image={"data": PIC}, width=10**30, height=48), 400),
    "width a word": (lambda: doc(image={"data": PIC}, width="wide"), 400),
    "negative frame_index": (lambda: doc(image={"data": PIC}, frame_index=-1), 400),
    "bbox of 3 numbers": (lambda: doc(image={"data": PIC}, persons=[{"bbox": [1, 2, 3], "score": 1}]), 400),
    "16 keypoints": (lambda: doc(width=64, height=48, persons=[{"bbox": [1, 2, 30, 40], "score": 1,
                                                                "keypoints2d": [[1, 2, 1]] * 16}]), 400),
    "a track with no frames": (lambda: doc(schema=TRACK, track_id=1, width=10, height=10, frames=[]), 400),
    "a body over the limit": (lambda: raw(b'{"instances": ["' + b"x" * (LIMIT + 1) + b'"]}'), 413),
    "a chunked body over the limit": (lambda: chunked(2 * LIMIT), 413),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("endpoint", V1_ENDPOINTS)
def test_hostile_bodies_get_a_4xx_with_a_message(stack, valid, endpoint, case):
    url = stack.url(endpoint)
    make, status = HOSTILE[case]
    try:
        response = httpx.post(url, timeout=TIMEOUT, **make())
    except httpx.TimeoutException:
        pytest.fail(f"{endpoint}: no answer to {case!r} within {TIMEOUT:.0f} s")
    assert_refused(response, status, what=f"{endpoint}, {case}")
    assert_serves(stack, endpoint, valid)


def test_a_valid_body_whatever_its_content_type_says(stack, valid):
    """Content types are not trusted either way: the body decides (KServe's behaviour)."""
    for endpoint in ("kserve:detect", "torchserve:detect", "router:posegraph"):
        for content_type in ("text/plain", "application/octet-stream", "image/jpeg", None):
            response = httpx.post(stack.url(endpoint), timeout=TIMEOUT,
                                  **raw(json.dumps(valid[endpoint]).encode(), content_type))
            assert response.status_code == 200, f"{endpoint}, {content_type}: {response.text[:200]}"


def test_torchserve_refuses_bodies_over_its_own_frame_limit(stack, valid):
    """Above TorchServe's max_request_size (32 MiB, config.properties), its Java frontend answers
    413 itself, with an empty body: the one 4xx here without a message (docs/serving.md, Limits)."""
    big = b'{"instances": ["' + b"x" * (40 << 20) + b'"]}'
    response = httpx.post(stack.url("torchserve:detect"), content=big, headers=JSON, timeout=TIMEOUT)
    assert response.status_code == 413
    assert_serves(stack, "torchserve:detect", valid)


def test_kserve_v2_and_other_routes_refuse_hostile_requests(stack, valid):
    base = stack.url("kserve:detect").rsplit("/v1/", 1)[0]
    infer = f"{base}/v2/models/detect/infer"

    def v2(data, datatype="BYTES", shape=None):
        return {"json": {"inputs": [{"name": "instances", "shape": shape or [len(data)], "datatype": datatype,
                                     "data": data}]}}

    cases = {
        "v2 not JSON": (infer, raw(b"{nope")),
        "v2 inputs a string": (infer, {"json": {"inputs": "x"}}),
        "v2 element not JSON": (infer, v2(["{nope"])),
        "v2 element nested 100000 deep": (infer, v2(["[" * 100_000])),
        "v2 element a number": (infer, v2([1])),
        "v2 element an object": (infer, v2([{"image": {"data": PIC}}])),
        "v2 element with a list schema": (infer, v2([json.dumps({"schema": [1]})])),
        "v2 FP32 instances": (infer, v2([1.0], "FP32")),
        "v2 element NaN": (infer, v2(["NaN"])),
        "v2 over the limit": (infer, raw(b'{"inputs": ["' + b"x" * (LIMIT + 1) + b'"]}')),
        ":explain (no explainer)": (f"{base}/v1/models/detect:explain", body({"instances": []})),
        "v2 model version": (f"{base}/v2/models/detect/versions/1/infer", v2([json.dumps({})])),
        "another model": (f"{base}/v1/models/nope:predict", body({"instances": []})),
    }
    for name, (url, request) in cases.items():
        assert_refused(httpx.post(url, timeout=TIMEOUT, **request), what=name)
    assert_refused(httpx.get(stack.url("kserve:detect"), timeout=TIMEOUT), what="GET :predict")
    assert_serves(stack, "kserve:detect", valid)


# ---- bytes on the wire: truncated, never-ending and malformed requests ------------------------

def _exchange(url: str, head: bytes, payload: bytes = b"", *, half_close: bool = True) -> tuple[int | None, bytes]:
    """Send bytes as they are; read one answer, or until the server closes. (None, b"") when it
    closed or reset without answering. No answer and no close within TIMEOUT fails the test."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(head + payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server closed or reset while we sent (TorchServe on a header too long)
            pass
        return _read_answer(sock, url)


def _read_answer(sock: socket.socket, url: str) -> tuple[int | None, bytes]:
    data = b""
    try:
        while True:
            if b"\r\n\r\n" in data:  # a whole answer with a Content-Length: done, whatever keep-alive says
                head, _, rest = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length and len(rest) >= int(length.group(1)):
                    break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"{url}: neither an answer nor a close within {TIMEOUT:.0f} s: {data[:200]!r}")
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None
    return status, data


def _head(url: str, *, length: str | int | None, extra: str = "", content_type: str = "application/json") -> bytes:
    parts = urlsplit(url)
    auth = "Authorization: Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode() + "\r\n"
    lines = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}Content-Type: {content_type}\r\n"
    if length is not None:
        lines += f"Content-Length: {length}\r\n"
    return (lines + extra + "\r\n").encode("latin-1")


def _multipart_or_json(name: str) -> str:
    return "multipart/form-data; boundary=x" if name == "ui" else "application/json"


# A TLS ClientHello's first bytes, then junk: what an https:// client sends to a plain-HTTP port.
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))

WIRE = {
    # Content-Length promises 1000 bytes; 40 come, then the client closes its side.
    "a truncated body": lambda url, ct: (_head(url, length=1000, content_type=ct),
                                         b'{"instances": [{"image": {"data": "'),
    "Content-Length over the limit, body never sent": lambda url, ct: (
        _head(url, length=40 << 20, content_type=ct), b""),
    "Content-Length not a number": lambda url, ct: (_head(url, length="12abc", content_type=ct), b"{}"),
    "negative Content-Length": lambda url, ct: (_head(url, length=-5, content_type=ct), b"{}"),
    "Content-Length and chunked at once": lambda url, ct: (
        _head(url, length=5, extra="Transfer-Encoding: chunked\r\n", content_type=ct), b"0\r\n\r\n"),
    "a broken chunk size": lambda url, ct: (
        _head(url, length=None, extra="Transfer-Encoding: chunked\r\n", content_type=ct), b"zz\r\nhello\r\n0\r\n\r\n"),
    "a TLS handshake to plain HTTP": lambda url, ct: (TLS_HELLO, b""),
    "a 100 kB header": lambda url, ct: (
        _head(url, length=2, extra=f"X-Junk: {'a' * 100_000}\r\n", content_type=ct), b"{}"),
}


@pytest.mark.parametrize("case", list(WIRE))
@pytest.mark.parametrize("server", SERVERS)
def test_broken_requests_on_the_wire(stack, valid, server, case):
    """The answer, if any, is a 4xx; closing without one is fine (nobody is left to read it, or the
    request was not HTTP); a 5xx or a wait past TIMEOUT is not."""
    url = stack.url(server)
    steps = _detect_calls(stack) if server == "router:posegraph" else None
    head, payload = WIRE[case](url, _multipart_or_json(server))
    status, data = _exchange(url, head, payload)
    assert status is None or 400 <= status < 500, f"{server}, {case}: {data[:300]!r}"
    if case.startswith("Content-Length over the limit") and server not in ("torchserve:detect", "router:kserve"):
        # Refused unread, by its Content-Length (TorchServe resets a half-closed connection, and
        # KServe's router has no limit: it forwards what it read, and detect refuses that).
        assert status == 413 and data.partition(b"\r\n\r\n")[2].strip(), data[:300]
    assert_serves(stack, server, valid)
    if steps is not None and case == "a truncated body":
        # The client left mid-body: nothing was routed (the router used to send detect the 40 bytes).
        assert _detect_calls(stack) == steps + 1  # + the valid request


def _detect_calls(stack: Stack) -> float:
    text = httpx.get(stack.graph.endpoint + "metrics", timeout=TIMEOUT).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("posegraph_router_step_seconds_count") and 'step="detect"' in line)


@contextlib.contextmanager
def _unfinished_body(url: str, content_type: str = "application/json"):
    """A connection that promised 1000 bytes of body, sent 40 and waits."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
    try:
        sock.sendall(_head(url, length=1000, content_type=content_type) + b'{"instances": [{"image": {"data": "abc')
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize("server", SERVERS)
def test_a_body_that_never_finishes_blocks_nobody_else(stack, valid, server):
    """While one client holds a half-sent body, the server answers others; a KServe stage server
    gives up on it after POSEGRAPH_READ_TIMEOUT_S with a 408 (the others have no such timeout of
    their own, or a long one: docs/serving.md, Limits)."""
    url = stack.url(server)
    with _unfinished_body(url, _multipart_or_json(server)) as held:
        started = time.monotonic()
        assert_serves(stack, server, valid)
        if server.startswith("kserve:"):
            status, data = _read_answer(held, url)
            assert status == 408 and b"POSEGRAPH_READ_TIMEOUT_S" in data, data[:300]
            assert time.monotonic() - started < READ_TIMEOUT_S + 10


def test_posegraphs_router_gives_up_on_a_slow_body_after_server_read(stack, valid, tmp_path):
    """serverRead bounds reading the request, as in KServe's router (60 s when unset): 408."""
    from services import free_port

    from posegraph.embedded import start_router

    spec = {**stack.graph.graph_spec, "routerTimeouts": {**stack.graph.graph_spec["routerTimeouts"], "serverRead": 2}}
    port = free_port()
    process = start_router("posegraph", spec, port, [], log=tmp_path / "router.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        with _unfinished_body(url) as held:
            started = time.monotonic()
            status, data = _read_answer(held, url)
            assert status == 408 and b"serverRead" in data, data[:300]
            assert 1.5 < time.monotonic() - started < 10
        response = httpx.post(url, json=valid["router:posegraph"], timeout=TIMEOUT)
        assert response.status_code == 200, response.text[:300]
    finally:
        process.kill()
        process.wait(10)


def test_posegraphs_router_flag_sets_its_limit(stack, tmp_path):
    """--max-request-bytes (or POSEGRAPH_MAX_REQUEST_BYTES; default names.MAX_REQUEST_BYTES_DEFAULT)."""
    from services import free_port, wait_for_port

    from posegraph import processes

    port = free_port()
    process = processes.spawn([sys.executable, "-m", "posegraph.graph.router", "--graph-json",
                               json.dumps(stack.graph.graph_spec), "--port", str(port), "--max-request-bytes", "1000"],
                              log=tmp_path / "router.log")
    try:
        wait_for_port(port, timeout=30, proc=process, log=tmp_path / "router.log")
        response = httpx.post(f"http://127.0.0.1:{port}/", content=b'{"instances": ["' + b"x" * 1000 + b'"]}',
                              headers=JSON, timeout=TIMEOUT)
        assert_refused(response, 413)
        assert "1000 byte limit" in response.json()["error"]
    finally:
        processes.stop(process)


# ---- property-based: the v1 protocol fuzzed ---------------------------------------------------

def _fuzz_strategies():
    from hypothesis import strategies as st

    # No key is "uri": image.uri fetches are the fetch policy's to test (see below).
    keys = st.text(max_size=8).filter(lambda k: k != "uri")
    scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16))
    anything = st.recursive(scalars,
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                            max_leaves=12)

    def png(size):
        w, h, value = size
        return base64.b64encode(cv2.imencode(".png", np.full((h, w, 3), value, np.uint8))[1].tobytes()).decode()

    image_data = st.one_of(
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(0, 255)).map(png),
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(0, 255)).map(png).map(lambda s: s[: len(s) // 2]),
        st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
        st.text(max_size=24),
    )
    number = st.integers(-5, 100_000) | st.floats(allow_nan=False, allow_infinity=False)
    point = st.lists(number, min_size=2, max_size=4)
    person = st.fixed_dictionaries({}, optional={
        "bbox": st.lists(number, min_size=3, max_size=5) | anything,
        "score": number | anything,
        "track_id": st.integers(-3, 10) | anything,
        "keypoints2d": st.lists(point, min_size=15, max_size=18) | anything,
        "keypoints3d": st.lists(point, min_size=16, max_size=17) | anything,
    })
    document = st.fixed_dictionaries({}, optional={
        "schema": st.sampled_from([FRAME, TRACK, "posegraph/frame/v2"]) | anything,
        "image": st.fixed_dictionaries({}, optional={"data": image_data | anything,
                                                     "format": st.sampled_from(["jpeg", "png", "gif"])}) | anything,
        "width": st.integers(-1, 50) | anything,
        "height": st.integers(-1, 50) | anything,
        "frame_index": st.integers(-2, 10) | anything,
        "persons": st.lists(person | anything, max_size=3) | anything,
        "track_id": st.integers(-2, 5) | anything,
        "frames": st.lists(st.fixed_dictionaries({"frame_index": st.integers(-1, 5), "bbox": point,
                                                  "keypoints2d": st.lists(point, min_size=16, max_size=17)}),
                           max_size=3) | anything,
        "stages": st.dictionaries(keys, anything, max_size=2) | anything,
        "client_ref": anything,
    })
    as_json = lambda value: json.dumps(value).encode()  # noqa: E731
    return st.one_of(
        st.lists(document | anything, max_size=3).map(lambda docs: as_json({"instances": docs})),
        st.dictionaries(keys, anything, max_size=3).map(as_json),
        anything.map(as_json),
        st.binary(max_size=64),
    )


@pytest.mark.parametrize("endpoint", ["kserve:detect", "torchserve:detect", "router:posegraph"])
def test_fuzzed_v1_requests_get_200_or_a_4xx_with_a_message(stack, valid, endpoint):
    """Hypothesis, 60 examples per endpoint, derandomised (the same examples in every run): any body
    gets 200 with predictions or a 4xx that says why."""
    pytest.importorskip("hypothesis", reason="the test extra installs hypothesis")
    from hypothesis import HealthCheck, given, settings

    url = stack.url(endpoint)
    client = httpx.Client(timeout=TIMEOUT)

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(_fuzz_strategies())
    def check(payload: bytes):
        response = client.post(url, content=payload, headers=JSON)
        if response.status_code == 200:
            assert isinstance(response.json()["predictions"], list)
        else:
            assert_refused(response, what=f"{endpoint}, {payload[:200]!r}")

    with client:
        check()
    assert_serves(stack, endpoint, valid)


# ---- image.uri fetch targets ---------------------------------------------------------------------
# The served fetch policy (posegraph.fetchpolicy): no URI at all unless the deployment allows its
# source. Allowed sources, redirects and DNS are tested in tests/test_fetch_policy.py; here every kind
# of target an attacker would try, against each endpoint that reads images (lift3d reads none).
FETCH_TARGETS = [
    "file:///etc/passwd", "/etc/shadow", "file://localhost/etc/passwd", "../../../../etc/passwd",
    "s3://posegraph-models/demo/detect/model.onnx", "http://169.254.169.254/latest/meta-data/iam/",
    "http://[fd00:ec2::254]/latest/meta-data/", "http://127.0.0.1:1/", "http://[::1]/", "http://10.0.0.1/a.jpg",
    "https://example.com/a.jpg", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://example.com/a.jpg",
]


@pytest.mark.parametrize("endpoint", ["kserve:detect", "kserve:pose2d", "torchserve:detect", *ROUTER_ENDPOINTS])
def test_image_uris_a_caller_names_are_refused(stack, valid, endpoint):
    url = stack.url(endpoint)
    # pose2d reads the image once it has persons to crop.
    persons = {"persons": [{"bbox": [0, 0, 10, 10], "score": 0.9}]} if endpoint.endswith("pose2d") else {}
    for uri in FETCH_TARGETS:
        instance = {"schema": FRAME, "image": {"uri": uri}, **persons}
        response = httpx.post(url, json={"instances": [instance]}, timeout=TIMEOUT)
        assert_refused(response, what=f"{endpoint}, image.uri {uri}")
        assert response.status_code == 403 or endpoint == "router:kserve", (endpoint, uri, response.text[:300])
        assert "not allowed here" in response.text, (endpoint, uri, response.text[:300])
    assert_serves(stack, endpoint, valid)


# ---- the web UI ----------------------------------------------------------------------------------

def _get(stack: Stack, path: str, *, auth: bool = True) -> tuple[int | None, bytes]:
    """GET a path exactly as written: httpx would resolve ``..`` and ``%2e%2e`` before sending it."""
    parts = urlsplit(stack.ui)
    credentials = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    head = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
    head += f"Authorization: Basic {credentials}\r\n" if auth else ""
    return _exchange(stack.ui + "/", (head + "\r\n").encode("latin-1"), half_close=False)


CLIMBING = [
    "/api/jobs/../../etc/passwd", "/api/jobs/%2e%2e/%2e%2e/etc/passwd", "/api/jobs/..%2f..%2fetc%2fpasswd",
    "/api/jobs/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/frames", "/api/jobs/....//....//etc/passwd",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fapp.py",
    "/static/%2e%2e%2fapp.py", "/static/vendor/../../app.py", "/static//etc/passwd", "/static/..\\..\\app.py",
    "/static/%00", "/%2e%2e/%2e%2e/etc/passwd", "/api/meta/../../../etc/passwd",
    "/api/jobs/x/video/../../../../etc/passwd",
]


@pytest.mark.parametrize("path", CLIMBING)
def test_ui_paths_that_climb_out_are_refused(stack, valid, path):
    status, data = _get(stack, path)
    assert status is not None and 400 <= status < 500, f"{path}: {data[:300]!r}"
    _, _, content = data.partition(b"\r\n\r\n")
    assert content.strip(), f"{path}: a 4xx without a message"
    assert b"root:" not in content and b"import " not in content, f"{path} served a file: {content[:200]!r}"


JOB_ROUTES = ["", "/frames", "/frames.jsonl", "/tracks/1.csv", "/tracks/1.bvh", "/tracks/1/angles", "/angles.csv",
              "/video"]
ODD_JOB_IDS = ["no-such-job", "a%2fb", "..", "%2e%2e", "%00", "%ff%fe", "'%20OR%201=1--", "a" * 3000,
               "ui-20250101-000000-abcdef"]


@pytest.mark.parametrize("job_id", ODD_JOB_IDS, ids=lambda j: j[:20])
def test_ui_jobs_that_do_not_exist_are_404_on_every_route(stack, job_id):
    for route in JOB_ROUTES:
        status, data = _get(stack, f"/api/jobs/{job_id}{route}")
        assert status == 404, f"/api/jobs/{job_id[:40]}{route}: {data[:300]!r}"
        assert data.partition(b"\r\n\r\n")[2].strip()


def test_ui_refuses_garbage_credentials(stack):
    for header in ("Basic !!!", "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "Bearer x",
                   # Non-ASCII (valid UTF-8) was a 500: secrets.compare_digest refuses non-ASCII str.
                   "Basic " + base64.b64encode("é:x".encode()).decode(),
                   "Basic " + base64.b64encode("posegraph:pässwörd".encode()).decode(),
                   "Basic " + base64.b64encode(b"posegraph").decode(), "Basic " + "A" * 10_000):
        response = httpx.get(f"{stack.ui}/api/jobs", headers={"Authorization": header}, timeout=TIMEOUT)
        assert_refused(response, 401, what=header[:30])


def _multipart(name: str, filename: bytes, content: bytes, boundary: bytes = b"x") -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"; filename="'
            + filename + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + content + b"\r\n--" + boundary
            + b"--\r\n")


def test_ui_hostile_uploads_get_a_4xx_with_a_message(stack, valid):
    photo, jobs = f"{stack.ui}/api/photo", f"{stack.ui}/api/jobs"
    stored_before = set((stack.ui_data / "uploads").rglob("*"))
    jobs_before = len(httpx.get(jobs, auth=AUTH, timeout=TIMEOUT).json()["jobs"])
    cases = {
        "not an image": (photo, {"files": {"file": ("../../x.jpg", b"hello")}}, 415),
        "a 30000x30000 PNG bomb": (photo, {"files": {"file": ("bomb.png", base64.b64decode(bomb_png()))}}, 415),
        "a 60 MP PNG": (photo, {"files": {"file": ("big.png", base64.b64decode(big_png()))}}, 415),
        "a GIF": (photo, {"files": {"file": ("a.gif", base64.b64decode(_gif()))}}, 415),
        "a truncated JPEG": (photo, {"files": {"file": ("a.jpg", valid["photo"][:500])}}, 415),
        "no file": (photo, {"data": {"a": "b"}}, 400),
        "an empty file": (photo, {"files": {"file": ("a.jpg", b"")}}, 400),
        "two files": (photo, {"files": [("file", ("a.jpg", valid["photo"])), ("file", ("b.jpg", valid["photo"]))]},
                      400),
        "50 fields": (photo, {"data": {f"f{i}": "x" for i in range(50)}}, 400),
        "JSON, not a form": (photo, {"json": {"instances": []}}, 400),
        "multipart without a boundary": (photo, raw(b"--x\r\n", "multipart/form-data"), 400),
        "multipart cut short": (photo, raw(b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"'
                                           b"\r\n\r\nabc", "multipart/form-data; boundary=x"), None),
        "a 5000-character boundary": (photo, raw(b"--x--\r\n", "multipart/form-data; boundary=" + "x" * 5000), None),
        "a field over 1 MB": (jobs, raw(b'--x\r\nContent-Disposition: form-data; name="stride"\r\n\r\n'
                                        + b"1" * (2 << 20) + b"\r\n--x--\r\n", "multipart/form-data; boundary=x"),
                              400),
        "an upload over the limit": (jobs, {"files": {"file": ("big.mp4", bytes((MAX_UPLOAD_MB + 1) * 1_000_000))}},
                                     413),
        "a chunked upload": (jobs, {"content": iter([b"--x\r\n"] * 3),
                                    "headers": {"content-type": "multipart/form-data; boundary=x"}}, 411),
        "a video that is not one, named ../../x.mp4": (jobs, {"files": {"file": ("../../x.mp4", b"\x00" * 100)}}, 415),
        "a file:// URI": (jobs, {"data": {"uri": "file:///etc/passwd"}}, 400),
        "a stride of 5000 digits": (jobs, {"data": {"stride": "9" * 5000}}, 400),
        "a negative stride": (jobs, {"data": {"stride": "-1", "uri": "s3://b/v.mp4"}}, 400),
        "max_frames 1e9": (jobs, {"data": {"max_frames": "1e9", "uri": "s3://b/v.mp4"}}, 400),
    }
    for name, (url, request, status) in cases.items():
        try:
            response = httpx.post(url, auth=AUTH, timeout=TIMEOUT, **request)
        except httpx.TimeoutException:
            pytest.fail(f"UI: no answer to {name!r} within {TIMEOUT:.0f} s")
        assert_refused(response, status, what=name)
    # What an HTTP client library refuses to send: a non-ASCII boundary, a filename with NUL and ../.
    for name, content_type, payload in [
        ("a non-ASCII boundary", "multipart/form-data; boundary=\xff\xfe", b"--\xff\xfe--\r\n"),
        ("a filename with NUL and ..", "multipart/form-data; boundary=x",
         _multipart("file", b"a\x00b/../../c.jpg", b"abc")),
        ("a non-UTF-8 filename", "multipart/form-data; boundary=x", _multipart("file", b"\xff\xfe.jpg", b"abc")),
    ]:
        status, data = _exchange(photo, _head(photo, length=len(payload), content_type=content_type), payload,
                                 half_close=False)
        assert status is not None and 400 <= status < 500 and data.partition(b"\r\n\r\n")[2].strip(), (name, data[:300])
    assert set((stack.ui_data / "uploads").rglob("*")) == stored_before, "a refused upload was stored"
    assert not list((stack.ui_data / "tmp").iterdir()), "a refused upload left a temporary file"
    assert len(httpx.get(jobs, auth=AUTH, timeout=TIMEOUT).json()["jobs"]) == jobs_before, "a refused upload made a job"
    assert_serves(stack, "ui", valid)


@pytest.fixture(scope="module")
def uploaded_job(stack, clip_path):
    """A real video uploaded as "../../x.mp4", run through the graph to the end."""
    from posegraph.names import JOB_FINISHED

    response = httpx.post(f"{stack.ui}/api/jobs", auth=AUTH, timeout=TIMEOUT,
                          files={"file": ("../../x.mp4", clip_path.read_bytes())})
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 300
    while True:
        job = httpx.get(f"{stack.ui}/api/jobs/{job_id}", auth=AUTH, timeout=TIMEOUT).json()
        if job["status"] in JOB_FINISHED or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert job["status"] == "succeeded", job
    assert job["track_list"], f"the clip gave no tracks: {job}"
    return job


def test_ui_upload_names_cannot_climb_out(stack, uploaded_job):
    job_id = uploaded_job["job_id"]
    stored = list((stack.ui_data / "uploads").rglob("*"))
    assert [p.relative_to(stack.ui_data / "uploads").as_posix() for p in stored if p.is_file()] == [f"{job_id}/x.mp4"]
    for outside in (stack.ui_data / "x.mp4", stack.ui_data.parent / "x.mp4", stack.ui_data.parent.parent / "x.mp4"):
        assert not outside.exists(), outside
    assert uploaded_job["params"]["filename"] == "x.mp4"


def test_ui_one_jobs_files_are_not_reachable_through_another(stack, uploaded_job, clip_path):
    from posegraph.jobs.store import open_store

    track = max(uploaded_job["track_list"], key=lambda t: t["frames"])["track_id"]
    other = "hostile-other-" + uuid.uuid4().hex[:6]
    store = open_store(f"sqlite:///{stack.ui_data / 'results.db'}")
    try:
        store.begin_job(other, str(clip_path), {})
        store.update_job(other, status="succeeded")
    finally:
        store.close()
    for route in (f"/tracks/{track}.csv", f"/tracks/{track}.bvh", f"/tracks/{track}/angles", "/video"):
        status, data = _get(stack, f"/api/jobs/{other}{route}")
        assert status == 404, f"{other}{route}: {data[:300]!r}"
        assert other.encode() in data, data[:300]
    for route in ("/tracks/99999.csv", "/tracks/99999.bvh", "/tracks/-1.csv", "/tracks/1e3.csv",
                  f"/tracks/{track}.csv/../../{other}/frames"):
        status, data = _get(stack, f"/api/jobs/{uploaded_job['job_id']}{route}")
        assert status == 404, f"{route}: {data[:300]!r}"
    status, _ = _get(stack, f"/api/jobs/{uploaded_job['job_id']}/tracks/{track}.csv")
    assert status == 200, "the job's own track is served"
