"""The package logger. Pure (the sans-IO core logs through it).

Redaction, so that no credential reaches a log line, lives in `_redact.py` (names, URLs, free
text, the logging filter).
"""

from __future__ import annotations

import logging

__all__ = ["logger"]

logger = logging.getLogger("httpx_resilience")
# A library's advice from the logging HOWTO: without this, an application that configures no
# logging would print our WARNINGs through Python's last-resort handler.
logger.addHandler(logging.NullHandler())
