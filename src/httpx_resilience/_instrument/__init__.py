"""Instrumentation: the hook protocol (`_hooks.py`), its logging adapter (`_log.py`), its
OpenTelemetry adapter (`_otel.py`, imports OpenTelemetry lazily) and the transport's live
snapshot (`_stats.py`).

This package imports nothing on its own: `_breaker.py` imports `_hooks.py`, which must not pull
in the rest (the adapters and the snapshot import `_breaker.py` in turn).
"""
