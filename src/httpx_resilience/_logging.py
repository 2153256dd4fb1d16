"""The package logger, and URL redaction so that no credential reaches a log line.

Redaction itself lives in `_redact.py` (names, URLs, free text, the logging filter).
"""

from __future__ import annotations

import logging

from ._redact import redact_url

__all__ = ["logger", "redact_url"]

logger = logging.getLogger("httpx_resilience")
# A library's advice from the logging HOWTO: without this, an application that configures no
# logging would print our WARNINGs through Python's last-resort handler.
logger.addHandler(logging.NullHandler())
