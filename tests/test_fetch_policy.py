"""A request chooses data, never what a server reads (posegraph.fetchpolicy).

Served stages read inline image data only unless the deployment allows sources; a refused URI
is refused before any connection or file access, with a 403 that says what is allowed and how to
allow more. Loopback, link-local (the metadata service) and private addresses are refused for
hosts given by name, after DNS and at every redirect.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import pytest
from tiers import tier

from posegraph.fetchpolicy import FetchPolicy, FetchRefused
from services import free_port


class Recorder(http.server.ThreadingHTTPServer):
    """A web server on 127.0.0.1 that records every path asked of it: a refused URI must never
    reach it. /photos/a.jpg is a photo; /photos/jump redirects to /secret."""

    def __init__(self, photo: bytes) -> None:
        self.requests: list[str] = []
        self.photo = photo
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                recorder.requests.append(self.path)
                if self.path == "/photos/a.jpg":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(recorder.photo)))
                    self.end_headers()
                    self.wfile.write(recorder.photo)
                elif self.path == "/photos/jump":
                    self.send_response(302)
                    self.send_header("Location", "/secret")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
@tier("servers")
def web(astronaut):
    server = Recorder(cv2.imencode(".jpg", astronaut)[1].tobytes())
    yield server
    server.shutdown()


# -- the policy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri,needle", [
    ("file:///etc/passwd", "inline image data only"),
    ("/etc/passwd", "inline image data only"),
    ("s3://models/detect/model.onnx", "inline image data only"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "inline image data only"),
    ("https://example.com/a.jpg", "inline image data only"),
])
def test_the_served_default_allows_no_uri(uri, needle):
    with pytest.raises(FetchRefused, match=needle) as info:
        FetchPolicy.served("").check(uri)
    assert "--fetch-allow" in str(info.value) and "base64" in str(info.value)


@pytest.mark.parametrize("uri,allowed", [
    ("s3://photos/incoming/a.jpg", True),
    ("s3://photos/incoming", True),
    ("s3://photos/incomingX/a.jpg", False),   # a prefix ends at a path boundary
    ("s3://photos/other/a.jpg", False),
    ("s3://models/incoming/a.jpg", False),    # the model bucket, same key
    ("file:///srv/photos/a.jpg", True),
    ("file:///srv/photos/../secrets/key", False),
    ("file:///srv/photosX/a.jpg", False),
    ("https://img.example.com/a.jpg", False),  # https allowed only where listed: this host is not
    ("http://10.0.0.8:9000/p/a.jpg", True),     # an IP literal in the list is allowed as it is
    ("http://10.0.0.8:9000/q/a.jpg", False),
    ("http://10.0.0.8:9001/p/a.jpg", False),
    ("http://10.0.0.8:9000/p/%2e%2e/q/a.jpg", False),
    ("ftp://photos/incoming/a.jpg", False),
])
def test_listed_sources_and_nothing_else(uri, allowed):
    policy = FetchPolicy.parse("s3://photos/incoming/ file:///srv/photos,http://10.0.0.8:9000/p/")
    if allowed:
        policy.check(uri)
    else:
        with pytest.raises(FetchRefused, match="not allowed here"):
            policy.check(uri)


def test_a_host_by_name_that_resolves_to_loopback_is_refused():
    host = "localhost"  # resolves to 127.0.0.1 (and ::1) everywhere: /etc/hosts
    policy = FetchPolicy.parse(f"http://{host}:8080/")
    with pytest.raises(FetchRefused, match="loopback, link-local, private or reserved"):
        policy.check(f"http://{host}:8080/a.jpg")


def test_a_bad_allow_list_is_refused_at_start():
    from posegraph.errors import BadInput

    with pytest.raises(BadInput, match="s3://bucket"):
        FetchPolicy.parse("photos-bucket")


def test_the_command_line_reads_what_its_user_names(tmp_path, monkeypatch):
    """Locally the user is the operator: `posegraph run` reads any path or URI. A process that
    installs no policy (a library, an entry point that forgot) reads none: the safe default."""
    from posegraph import cli, fetchpolicy

    fresh = subprocess.run([sys.executable, "-c", "from posegraph import fetchpolicy\n"
                            f"fetchpolicy.current().check({str(tmp_path / 'a.jpg')!r})"], capture_output=True, text=True)
    assert fresh.returncode == 1 and "FetchRefused" in fresh.stderr and "inline image data only" in fresh.stderr, \
        fresh.stderr
    monkeypatch.setattr(fetchpolicy, "_current", fetchpolicy.current())
    seen = {}
    monkeypatch.setattr(cli, "cmd_schema", lambda args: seen.update(policy=fetchpolicy.current()) or 0)
    assert cli.main(["schema", "--out", str(tmp_path)]) == 0
    assert seen["policy"].anything
    seen["policy"].check(str(tmp_path / "a.jpg"))
    monkeypatch.setattr(fetchpolicy, "_current", fetchpolicy.FetchPolicy())
    monkeypatch.setattr(cli, "cmd_serve", lambda args: seen.update(served=fetchpolicy.current()) or 0)
    assert cli.main(["serve", "detect", "--model-dir", str(tmp_path)]) == 0
    assert not seen["served"].anything  # a network service installs its own, served, policy


# -- the stage servers ---------------------------------------------------------------------------------
def _start(checkpoints, runtime: str, env: dict[str, str] | None = None):
    from posegraph.config import load_profile
    from posegraph.embedded import archives_for_profile, start_stage_server

    layouts = archives_for_profile(load_profile("cpu"), checkpoints)
    return start_stage_server("detect", layouts["detect"], runtime=runtime, env=env).wait_ready(240)


def _post(server, image: dict) -> httpx.Response:
    return httpx.post(server.predict_url, json={"instances": [{"image": image}]}, timeout=60)


@pytest.mark.parametrize("runtime", ["kserve", "torchserve"])
def test_a_served_stage_refuses_every_uri_by_default_without_touching_it(checkpoints, web, runtime, astronaut):
    server = _start(checkpoints, runtime)
    try:
        before = list(web.requests)
        for uri in ("file:///etc/passwd", "/etc/hostname", f"{web.base}/photos/a.jpg", "s3://models/detect/x.onnx",
                    "http://169.254.169.254/latest/meta-data/"):
            response = _post(server, {"uri": uri})
            assert response.status_code == 403, (uri, response.status_code, response.text)
            assert "not allowed here" in response.text and "inline image data only" in response.text, response.text
        assert web.requests == before, "a refused URI was fetched"
        from posegraph.media.imageio import image_ref

        ok = _post(server, image_ref(astronaut).model_dump(exclude_none=True))
        assert ok.status_code == 200, ok.text  # inline data is what a served stage reads
    finally:
        server.stop()


def test_an_allowed_source_is_read_and_its_redirects_are_checked(checkpoints, web):
    server = _start(checkpoints, "kserve", env={"POSEGRAPH_FETCH_ALLOW": f"{web.base}/photos/"})
    try:
        response = _post(server, {"uri": f"{web.base}/photos/a.jpg"})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["persons"] is not None
        assert "/photos/a.jpg" in web.requests

        response = _post(server, {"uri": f"{web.base}/photos/jump"})  # 302 → /secret, outside the list
        assert response.status_code == 403 and "redirected" in response.text, response.text
        assert "/secret" not in web.requests

        response = _post(server, {"uri": f"{web.base}/private/a.jpg"})
        assert response.status_code == 403, response.text
        assert "/private/a.jpg" not in web.requests
    finally:
        server.stop()


# -- the UI ---------------------------------------------------------------------------------------------
def _ui(tmp_path: Path, *extra: str):
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "posegraph", "ui", "--port", str(port), "--data", str(tmp_path),
                             "--graph", "http://127.0.0.1:9/", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the UI did not start"
        time.sleep(0.3)


def test_the_ui_takes_video_uris_only_from_allowed_sources(tmp_path, starts_servers):
    proc, url = _ui(tmp_path / "default")
    try:
        response = httpx.post(f"{url}/api/jobs", data={"uri": "s3://videos/walk.mp4"}, timeout=30)
        assert response.status_code == 403, response.text
        assert "uploads only" in response.json()["error"] or "no URI" in response.json()["error"]
        assert "Upload the file instead" in response.json()["error"]
        assert httpx.get(f"{url}/api/jobs", timeout=10).json()["jobs"] == []  # nothing recorded
    finally:
        proc.terminate()
        proc.wait(30)
    proc, url = _ui(tmp_path / "allowed", "--fetch-allow", "s3://videos/")
    try:
        response = httpx.post(f"{url}/api/jobs", data={"uri": "s3://videos/walk.mp4"}, timeout=30)
        assert response.status_code < 300, response.text
        refused = httpx.post(f"{url}/api/jobs", data={"uri": "s3://models/walk.mp4"}, timeout=30)
        assert refused.status_code == 403 and "s3://videos/" in refused.json()["error"], refused.text
    finally:
        proc.terminate()
        proc.wait(30)


# -- the operator's decision: PosePipeline.spec.fetchAllow and the chart -----------------------------------
def _pipeline(**spec):
    return {"metadata": {"name": "p1"},
            "spec": {"stages": {s: {"storageUri": f"s3://models/p1/{s}/"} for s in ("detect", "pose2d", "lift3d")},
                     **spec}}


def test_a_pipelines_fetch_allow_reaches_every_stage_and_nothing_else_does():
    from posegraph.graph.kserve_objects import inference_service
    from posegraph.graph.spec import parse_pipeline

    def env_of(isvc):
        return {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["model"].get("env") or []}

    closed = parse_pipeline(_pipeline())
    assert all("POSEGRAPH_FETCH_ALLOW" not in env_of(inference_service(closed, s)) for s in ("detect", "pose2d"))
    opened = parse_pipeline(_pipeline(fetchAllow=["s3://photos/in/", "https://img.example.com"]))
    for stage in ("detect", "pose2d", "lift3d"):
        assert env_of(inference_service(opened, stage))["POSEGRAPH_FETCH_ALLOW"] == \
            "s3://photos/in/,https://img.example.com"


def test_a_bad_fetch_allow_entry_fails_the_spec_not_a_pod():
    from posegraph.errors import PosegraphError
    from posegraph.graph.spec import parse_pipeline

    with pytest.raises((PosegraphError, ValueError), match="s3://bucket"):
        parse_pipeline(_pipeline(fetchAllow=["photos"]))
