"""``python -m httpx_resilience demo``: plain httpx and httpx-resilience, side by side, against
real fault-injecting servers on 127.0.0.1.

Modules, one concept each: `asgi` (ASGI plumbing), `servers` (Hypercorn on a thread, TLS from a
throwaway CA), `upstream` (the seeded fault-injecting app), `scenarios` (the load and the
clients), `report` (the table and the JSON), `cli` (the command). Only `servers` and what
imports it need the ``demo`` extra (Hypercorn, trustme); this package itself imports nothing.
"""
