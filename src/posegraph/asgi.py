"""What posegraph's two ASGI servers (the graph router and the KServe runtime's body guard) share.

Both refuse a body past their limit while it streams in, so a chunked body without a
Content-Length cannot make either hold more than the limit in memory.
"""

from __future__ import annotations


async def read_body(receive, max_bytes: int) -> bytes | None:
    """The whole request body; None when the client went away before sending all of it (a
    truncated body must not be answered as if it were complete). Reading stops one chunk past
    ``max_bytes``: a result longer than ``max_bytes`` means "too big"."""
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes or not message.get("more_body"):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def run_server(app, *, host: str, port: int, on_listening=None, **uvicorn_options) -> None:
    """uvicorn.run, calling ``on_listening()`` once the socket accepts connections. A URL
    printed before that is a lie for a moment: a client (or a test) that reads it and connects
    at once was refused (CI saw it for `posegraph ui`)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and not self.should_exit and on_listening is not None:
                on_listening()

    _Server(uvicorn.Config(app, host=host, port=port, **uvicorn_options)).run()
