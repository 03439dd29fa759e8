"""Errors a user can act on. The CLI prints them as one line and exits non-zero;
servers turn :class:`BadInput` into HTTP 4xx."""

from __future__ import annotations


class PosegraphError(Exception):
    """Base class: the message is a complete, user-facing sentence."""

    exit_code = 1


class UsageError(PosegraphError):
    """Wrong arguments or configuration."""

    exit_code = 2


class BadInput(PosegraphError):
    """The input (image, video, document) cannot be processed."""

    exit_code = 3
    http_status = 400  # what a server answers (a subclass may say more precisely, e.g. 403)


class MissingInput(BadInput):
    """A document lacks the fields a stage needs."""

    def __init__(self, stage: str, missing: list[str], where: str = "document") -> None:
        self.stage = stage
        self.missing = list(missing)
        super().__init__(f"{stage}: {where} is missing {', '.join(self.missing)}")


class FetchError(PosegraphError):
    """A URI could not be read (network, credentials, not found)."""

    exit_code = 4
