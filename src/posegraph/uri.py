"""Read and write bytes at a URI: local path, ``file://``, ``s3://`` (boto3), ``https://``/``http://``.

S3 endpoint and credentials come from the standard AWS environment/config
(``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, profiles,
IRSA web identity), so MinIO/SeaweedFS on a laptop and IAM roles on EKS both work.
With a custom endpoint we use path-style addressing (what MinIO/SeaweedFS expect).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import BadInput, FetchError

HTTP_TIMEOUT_S = float(os.environ.get("POSEGRAPH_HTTP_TIMEOUT", "30"))


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("POSEGRAPH_CACHE", Path.home() / ".cache" / "posegraph"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# A video a PoseJob or the UI may name: an object in S3 or an HTTP(S) URL (a pod has no local files
# to offer; S3 bucket names are 3–63 characters of a-z, 0-9, '.' and '-').
_REMOTE_VIDEO = re.compile(r"^(s3://[a-z0-9.\-]{3,63}/.+|https?://\S+)$")


def is_remote_video_uri(uri: str) -> bool:
    """The one check of where a video job may read from (PoseJob spec, UI form, UI launcher)."""
    return bool(_REMOTE_VIDEO.match(uri or ""))


def scheme_of(uri: str) -> str:
    scheme = urllib.parse.urlparse(str(uri)).scheme.lower()
    # A Windows drive letter or a bare path has no scheme we handle remotely.
    return scheme if scheme in {"file", "s3", "http", "https"} else ""


def local_path(uri: str) -> Path | None:
    """The filesystem path for a local path or ``file://`` URI, else None."""
    uri = str(uri)
    scheme = scheme_of(uri)
    if scheme == "":
        return Path(uri).expanduser()
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))
    return None


def s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    style = os.environ.get("POSEGRAPH_S3_ADDRESSING_STYLE", "path" if endpoint else "auto")
    config = Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)
    # A fresh session reads the current environment/config (boto3's default session caches
    # credentials from the first call).
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    if not parsed.netloc:
        raise FetchError(f"{uri}: an s3 URI needs a bucket: s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    try:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip(": ")
    except ImportError:  # pragma: no cover
        pass
    return f"{type(exc).__name__}: {exc}"


def download(uri: str, dest: Path, *, progress: bool = False) -> Path:
    """Copy ``uri`` to ``dest`` atomically (a partial download never appears at ``dest``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_to(uri, out, progress=progress)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _opener(policy):
    """urllib's opener, with every redirect target checked by ``policy`` before it is followed."""
    if policy is None:
        return urllib.request.build_opener()

    class Checked(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            policy.check_redirect(newurl)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(Checked)


def _copy_to(uri: str, out, *, progress: bool, policy=None) -> None:
    scheme = scheme_of(uri)
    try:
        if scheme in {"", "file"}:
            path = local_path(uri)
            if not path.is_file():
                raise FetchError(f"{uri}: no such file")
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out)
        elif scheme == "s3":
            bucket, key = split_s3(uri)
            s3_client().download_fileobj(bucket, key, out)
        else:
            request = urllib.request.Request(uri, headers={"User-Agent": "posegraph"})
            with _opener(policy).open(request, timeout=HTTP_TIMEOUT_S) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = _bar(total, Path(urllib.parse.urlparse(uri).path).name) if progress else None
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
    except (FetchError, BadInput):
        raise
    except Exception as exc:
        raise FetchError(f"cannot read {uri}: {_describe(exc)}") from exc


def _bar(total, name):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def read_bytes(uri: str, *, max_bytes: int | None = None, policy=None) -> bytes:
    """The bytes at ``uri``. With a ``policy`` (posegraph.fetchpolicy), ``uri`` and every redirect
    are checked before anything is read."""
    if policy is not None:
        policy.check(uri)
    scheme = scheme_of(uri)
    if scheme in {"", "file"}:
        path = local_path(uri)
        if not path.is_file():
            raise FetchError(f"{uri}: no such file")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise FetchError(f"{uri}: larger than the {max_bytes} byte limit")
        return path.read_bytes()
    with tempfile.TemporaryFile() as tmp:
        _copy_to(uri, tmp, progress=False, policy=policy)
        if max_bytes is not None and tmp.tell() > max_bytes:
            raise FetchError(f"{uri}: larger than the {max_bytes} byte limit")
        tmp.seek(0)
        return tmp.read()


def fetch_to_cache(uri: str, *, progress: bool = True) -> Path:
    """A local path with the content of ``uri``: local files as they are, remote ones cached by URI."""
    path = local_path(uri)
    if path is not None:
        if not path.is_file():
            raise FetchError(f"{uri}: no such file")
        return path
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = Path(urllib.parse.urlparse(uri).path).name or "download"
    dest = cache_dir("downloads") / f"{digest}-{name}"
    if not dest.is_file():
        download(uri, dest, progress=progress)
    return dest


def write_bytes(uri: str, data: bytes, *, content_type: str | None = None) -> None:
    scheme = scheme_of(uri)
    try:
        if scheme in {"", "file"}:
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        elif scheme == "s3":
            bucket, key = split_s3(uri)
            extra = {"ContentType": content_type} if content_type else {}
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **extra)
        else:
            raise FetchError(f"{uri}: writing is supported for local paths, file:// and s3:// only")
    except FetchError:
        raise
    except Exception as exc:
        raise FetchError(f"cannot write {uri}: {_describe(exc)}") from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
