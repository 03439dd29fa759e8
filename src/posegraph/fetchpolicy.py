"""What a request may make posegraph read: the one fetch policy of stage servers, the in-process
pipeline and the UI.

A frame document's ``image.uri`` and a video URI given to the UI are chosen by whoever calls.
On a cluster a stage pod runs with an IAM role that can read the model bucket, and sits next to
the cloud's metadata service: a caller must not be able to point it at either. So a *served*
policy allows inline image data only, unless whoever runs the server allows sources:

    POSEGRAPH_FETCH_ALLOW="s3://photos/incoming/,https://images.example.com"   (or --fetch-allow)

An entry is ``s3://bucket[/prefix]``, ``https://host[:port][/path]``, ``http://host[:port][/path]``
or ``file:///directory``. A host given by name must resolve to public addresses only (loopback,
link-local — the metadata service at 169.254.169.254 —, private and reserved ranges are refused,
after DNS and at every redirect); a host given as an IP literal in the list is allowed as it is.
Used from the command line (``posegraph run``, ``job run``, ...), the policy allows anything: the
user is the operator there, and the CLI installs ``FetchPolicy.command_line()``. A process that
installs nothing (a library user's, or a new entry point that forgot) allows inline data only: a
forgotten policy is a refused URI with a message, never a server that reads what a request names.

A URI the policy refuses is refused before any connection or file access, with a message that
says what is allowed and how to allow more.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

ENV = "POSEGRAPH_FETCH_ALLOW"


class FetchRefused(BadInput):
    """A URI outside the fetch policy: the caller may not make the server read it."""

    http_status = 403


@dataclass(frozen=True)
class Source:
    scheme: str  # s3 | https | http | file
    host: str  # bucket, host name or IP literal; "" for file
    port: int | None
    prefix: str  # key prefix (s3), path prefix (http), directory (file)

    @property
    def literal_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host.strip("[]"))
            return True
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        if self.scheme == "s3":
            return f"s3://{self.host}/{self.prefix}"
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{self.host}{port}{self.prefix}"


def _parse_source(entry: str) -> Source:
    parsed = urllib.parse.urlparse(entry)
    scheme = parsed.scheme.lower()
    if scheme == "s3" and parsed.netloc:
        return Source("s3", parsed.netloc, None, parsed.path.lstrip("/"))
    if scheme in {"http", "https"} and parsed.hostname:
        return Source(scheme, parsed.hostname.lower(), parsed.port, parsed.path or "/")
    if scheme == "file" and parsed.path.startswith("/") and not parsed.netloc:
        return Source("file", "", None, str(Path(parsed.path).resolve()))
    raise BadInput(f"{ENV} entry {entry!r}: s3://bucket[/prefix], https://host[:port][/path], "
                   "http://host[:port][/path] or file:///directory")


@dataclass(frozen=True)
class FetchPolicy:
    sources: tuple[Source, ...] = ()
    anything: bool = False  # the command line: what the user types is read
    origin: str = f"${ENV}"  # where the allowed sources are configured, for messages

    @classmethod
    def parse(cls, text: str | None, *, origin: str = f"${ENV}") -> "FetchPolicy":
        entries = [e for e in (text or "").replace(",", " ").split() if e]
        if entries == ["*"]:
            return cls(anything=True, origin=origin)
        return cls(tuple(_parse_source(e) for e in entries), origin=origin)

    @classmethod
    def command_line(cls) -> "FetchPolicy":
        """What a user's own command reads: anything it names (the user is the operator)."""
        return cls(anything=True, origin="the command line")

    @classmethod
    def served(cls, allow: str | None = None) -> "FetchPolicy":
        """A network service's policy: ``allow`` (a flag), else $POSEGRAPH_FETCH_ALLOW, else inline only."""
        if allow is not None:
            return cls.parse(allow, origin="--fetch-allow")
        return cls.parse(os.environ.get(ENV))

    def describe(self) -> str:
        if self.anything:
            return "any URI"
        if not self.sources:
            return "inline image data only (no URI)"
        return "URIs under " + ", ".join(map(str, self.sources))

    def check(self, uri: str, *, what: str = "image.uri",
              instead: str = "Send the image inline as base64 'data'") -> None:
        """Refuse ``uri`` unless the policy allows it, before anything is read."""
        if self.anything:
            return
        source = self._match(uri)
        if source is None:
            raise FetchRefused(f"{what} {_shorten(uri)} is not allowed here: this server reads "
                               f"{self.describe()}. {instead}, or have the "
                               f"operator allow the source ({self.origin}, e.g. s3://bucket/prefix/ or "
                               f"https://host)")
        if source.scheme in {"http", "https"} and not source.literal_address:
            self._check_public(urllib.parse.urlparse(uri).hostname or "", what, uri)

    def _match(self, uri: str) -> Source | None:
        parsed = urllib.parse.urlparse(uri)
        scheme = parsed.scheme.lower()
        for source in self.sources:
            if source.scheme != scheme:
                continue
            if scheme == "s3":
                key = parsed.path.lstrip("/")
                if parsed.netloc == source.host and _under(key, source.prefix):
                    return source
            elif scheme in {"http", "https"}:
                try:
                    port = parsed.port
                except ValueError:
                    return None
                if ((parsed.hostname or "").lower() == source.host and port == source.port
                        and _under(urllib.parse.unquote(parsed.path) or "/", source.prefix)
                        and ".." not in urllib.parse.unquote(parsed.path).split("/")):
                    return source
            elif scheme == "file" and not parsed.netloc:
                path = Path(urllib.parse.unquote(parsed.path)).resolve()  # symlinks and .. resolved
                if path == Path(source.prefix) or Path(source.prefix) in path.parents:
                    return source
        return None

    def _check_public(self, host: str, what: str, uri: str) -> None:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise FetchRefused(f"{what} {_shorten(uri)}: cannot resolve {host} ({exc})") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not address.is_global:
                raise FetchRefused(f"{what} {_shorten(uri)}: {host} resolves to {address}, a loopback, "
                                   "link-local, private or reserved address; only public addresses are "
                                   f"fetched (list an IP literal in {self.origin} to allow one)")

    def check_redirect(self, uri: str, *, what: str = "image.uri") -> None:
        """Every hop of a redirect is checked as the first URI was."""
        self.check(uri, what=f"{what} (redirected)")


def _under(path: str, prefix: str) -> bool:
    if not prefix or prefix == "/":
        return True
    # At a path boundary: "photos/in" allows "photos/in/a.jpg", not "photos/inbox/a.jpg".
    return path == prefix.rstrip("/") or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _shorten(uri: str) -> str:
    return repr(uri if len(uri) <= 200 else uri[:200] + "…")


# The policy of this process: refuse (inline data only) until someone installs one. The CLI installs
# the command line's for the commands a user runs on their own data; a network service installs a
# served policy before it answers anything (stage servers, the UI); a library user calls install().
_current = FetchPolicy(origin="posegraph.fetchpolicy.install() (no policy is installed in this process)")


def install(policy: FetchPolicy) -> FetchPolicy:
    global _current
    _current = policy
    return policy


def current() -> FetchPolicy:
    return _current
