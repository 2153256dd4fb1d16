"""Instrumentation: the hook protocol (`_hooks.py`), its logging adapter (`_log.py`), its
OpenTelemetry adapter (`_otel.py`, imports OpenTelemetry lazily) and the transport's live
snapshot (`_stats.py`).

This package imports nothing on its own: `_hooks.py`, which plugs its hook dispatch into the pure
cool-down and circuit tables (`_cooldown.py`, `_circuit.py`) when imported, must not pull in the
rest (the adapters and the snapshot import `_breaker.py` in turn).
"""
