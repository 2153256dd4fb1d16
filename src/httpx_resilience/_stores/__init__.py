"""Where shared state lives: the `StateStore` protocol, the in-process `MemoryStore` and the
`RedisStore` (optional extra ``redis``) that lets a whole fleet share circuits, the retry budget
and cool-downs. See `_protocol.py` for the operations and their guarantees."""

from __future__ import annotations

from ._memory import MemoryStore
from ._protocol import BudgetPolicy, BudgetView, CircuitPolicy, CircuitView, StateStore
from ._redis import RedisStore

__all__ = [
    "BudgetPolicy",
    "BudgetView",
    "CircuitPolicy",
    "CircuitView",
    "MemoryStore",
    "RedisStore",
    "StateStore",
]
