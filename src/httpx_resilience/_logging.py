"""The package logger, and URL redaction so that no credential reaches a log line."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

import httpx

__all__ = ["logger", "redact_url"]

logger = logging.getLogger("httpx_resilience")
# A library's advice from the logging HOWTO: without this, an application that configures no
# logging would print our WARNINGs through Python's last-resort handler.
logger.addHandler(logging.NullHandler())

_REDACTED = "[redacted]"
# A query parameter whose lower-cased name contains one of these is treated as a secret.
_SECRET_MARKERS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "sig",
    "session",
    "credential",
    "cookie",
    "jwt",
    "bearer",
    "private",
)
_SECRET_NAMES = frozenset({"code", "pass", "client_secret", "sid", "hmac"})


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(marker in lowered for marker in _SECRET_MARKERS)


def redact_url(url: httpx.URL | str) -> str:
    """``url`` as text with userinfo and fragment dropped (a fragment can hold an OAuth token)
    and secret-looking query values replaced. ``;`` counts as a query separator too."""
    url = httpx.URL(url)
    if url.userinfo or url.fragment:
        url = url.copy_with(username=None, password=None, fragment=None)
    if url.query:
        query = url.query.decode("ascii", "replace").replace(";", "&")
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret(name) for name, _ in pairs):
            redacted = [(name, _REDACTED if _is_secret(name) else value) for name, value in pairs]
            url = url.copy_with(query=urlencode(redacted, safe="[]").encode("ascii"))
    return str(url)
