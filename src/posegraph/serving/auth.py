"""Shared bearer-token authentication for stage servers (both runtimes).

On when ``POSEGRAPH_AUTH_TOKEN`` (or a file named by ``POSEGRAPH_AUTH_TOKEN_FILE``, e.g. a mounted
Secret) is set; off otherwise (local runs and tests). Clients, and the graph router that forwards
their ``Authorization`` header, send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path


class BearerAuth:
    def __init__(self, token: str | None) -> None:
        self.token = token or None

    @classmethod
    def from_env(cls) -> "BearerAuth":
        token = os.environ.get("POSEGRAPH_AUTH_TOKEN")
        path = os.environ.get("POSEGRAPH_AUTH_TOKEN_FILE")
        if not token and path:
            token = Path(path).read_text().strip()
        return cls(token)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def allows(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        return hmac.compare_digest(authorization[7:].strip().encode(), self.token.encode())
