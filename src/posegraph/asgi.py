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
