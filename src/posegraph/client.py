"""A client for a posegraph endpoint: the local router, a cluster's InferenceGraph, or one stage.

    from posegraph.client import GraphClient
    doc = GraphClient("http://127.0.0.1:8090/").infer_image("photo.jpg")
    print(len(doc.persons), doc.persons[0].keypoints3d)
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput, PosegraphError
from .frame import FrameDocument, ImageRef, TrackDocument, parse_document
from .media.imageio import decode_image, encode_image, inline_image
from .uri import local_path


class GraphError(PosegraphError):
    """The endpoint answered with an error (status and its message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.step = step


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None, capath: str | None):
    """httpx's default TLS context (certifi, or $SSL_CERT_FILE / $SSL_CERT_DIR: the arguments, so a
    changed environment gets a new one), made once: loading the CA bundle took 35 ms of every
    client's start (a UI request, a job's two clients), measured with cProfile."""
    import httpx

    return httpx.create_ssl_context()


class GraphClient:
    def __init__(self, endpoint: str, *, token: str | None = None, timeout: float = 120.0) -> None:
        import httpx

        self.endpoint = endpoint
        headers = {"content-type": "application/json"}
        token = token or os.environ.get("POSEGRAPH_AUTH_TOKEN")
        if token:
            headers["authorization"] = f"Bearer {token}"
        tls = _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        self.http = httpx.Client(timeout=timeout, headers=headers, verify=tls)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "GraphClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, documents: list[dict[str, Any] | FrameDocument | TrackDocument], *,
              request_id: str | None = None) -> list[FrameDocument | TrackDocument]:
        import httpx

        instances = [d.to_json() if isinstance(d, (FrameDocument, TrackDocument)) else d for d in documents]
        headers = {"x-request-id": request_id} if request_id else None
        try:
            response = self.http.post(self.endpoint, content=json.dumps({"instances": instances}), headers=headers)
        except httpx.HTTPError as exc:
            raise GraphError(f"cannot reach {self.endpoint}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:300]}
        if response.status_code != 200:
            message = body.get("error") if isinstance(body, dict) else None
            if isinstance(body, dict) and body.get("cause"):  # KServe's router: {"error": …, "cause": …}
                message = f"{message}: {body['cause']}"
            raise GraphError(f"{self.endpoint} answered {response.status_code}: {message or body}",
                             status=response.status_code, step=body.get("step") if isinstance(body, dict) else None)
        if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
            raise GraphError(f"{self.endpoint} answered 200 without a predictions list")
        return [parse_document(p, where=f"predictions[{i}]") for i, p in enumerate(body["predictions"])]

    def infer_image(self, image: str | Path | bytes | np.ndarray, **fields: Any) -> FrameDocument:
        """A photo (path, encoded bytes, or BGR pixels) through the endpoint. An ``s3://``/``https://``
        string is sent as a URI for the server to read."""
        if isinstance(image, str) and "://" in image and not image.startswith("file://"):
            ref = ImageRef(uri=image)
        else:
            if isinstance(image, np.ndarray):

                data = encode_image(image, "jpeg")
            elif isinstance(image, bytes):
                data = image
            else:

                path = local_path(str(image))
                if path is None or not path.is_file():
                    raise BadInput(f"{image}: no such file")
                data = path.read_bytes()

            pixels = decode_image(data, what=str(image)[:80] if not isinstance(image, np.ndarray) else "image")
            ref = inline_image(data)
            fields.setdefault("width", int(pixels.shape[1]))
            fields.setdefault("height", int(pixels.shape[0]))
        return self.infer([FrameDocument(image=ref, **fields)])[0]
