"""What a body-limit middleware costs per request: none vs Starlette's BaseHTTPMiddleware vs the
plain-ASGI ``BodyLimit`` the KServe runtime uses. Three FastAPI echo apps on loopback, requests
interleaved so drift hits all alike; a 100 kB body (a 512² JPEG frame document is about that).

    python bench/middleware.py [--requests 600]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware

from posegraph.serving.kserve_model import BodyLimit


def make_app(kind: str) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    if kind == "BaseHTTPMiddleware":
        class PassThrough(BaseHTTPMiddleware):
            async def dispatch(self, request, call_next):
                return await call_next(request)
        app.add_middleware(PassThrough)
    elif kind == "plain ASGI (BodyLimit)":
        app.add_middleware(BodyLimit)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    urls = {}
    for kind in ("no middleware", "BaseHTTPMiddleware", "plain ASGI (BodyLimit)"):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(make_app(kind), host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        urls[kind] = f"http://127.0.0.1:{port}/echo"
    body = os.urandom(50_000).hex().encode()
    clients = {kind: httpx.Client() for kind in urls}
    deadline = time.monotonic() + 30
    while True:  # wait until all three answer
        try:
            if all(clients[k].post(u, content=b"x").status_code == 200 for k, u in urls.items()):
                break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    latencies = {kind: [] for kind in urls}
    for _ in range(args.requests):
        for kind, url in urls.items():
            started = time.perf_counter()
            response = clients[kind].post(url, content=body)
            latencies[kind].append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json()["bytes"] == len(body)
    base = statistics.median(latencies["no middleware"][50:])
    for kind, values in latencies.items():
        median = statistics.median(values[50:])
        print(f"{kind:24s} median {median * 1000:6.3f} ms  ({(median - base) * 1000:+.3f} ms)")


if __name__ == "__main__":
    main()
