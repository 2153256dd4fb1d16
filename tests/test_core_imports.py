"""The sans-IO core imports no httpx and no event loop.

The retry decision, backoff, Retry-After, the retry budget, the sliding windows, the cool-down
table, the circuit breaker's state machine, origins and the validated configuration are pure code
with an injected clock and random source: they must not import httpx, httpcore, h2, anyio,
asyncio, trio or sniffio, directly or through another module of this package. The check reads
the import statements (including those inside functions and ``if TYPE_CHECKING:`` blocks, which a
reader follows too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "httpx_resilience"

#: The core: pure decision code.
CORE = [
    "_budget",
    "_circuit",
    "_config",
    "_cooldown",
    "_decision",
    "_logging",
    "_origin",
    "_retry_after",
    "_validate",
    "_window",
]
#: What the core must not import.
FORBIDDEN = {"httpx", "httpcore", "h2", "h11", "anyio", "asyncio", "trio", "sniffio"}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """The outside top-level packages and the package's own modules that ``module`` imports."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    base = module.split(".")[:-1]  # the package a relative import starts from
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
        base = module.split(".")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    outside: set[str] = set()
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("httpx_resilience."):
                    own.add(alias.name.removeprefix("httpx_resilience."))
                else:
                    outside.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if name.startswith("httpx_resilience."):
                    own.add(name.removeprefix("httpx_resilience."))
                else:
                    outside.add(name.split(".")[0])
                continue
            parent = base[: len(base) - (node.level - 1)]
            if node.module:
                own.add(".".join([*parent, node.module]))
            else:  # from . import a, b: submodules
                own.update(".".join([*parent, alias.name]) for alias in node.names)
    own.discard("")
    return outside, own


def _closure(module: str) -> dict[str, set[str]]:
    """Every package module ``module`` reaches, with the outside packages each imports."""
    seen: dict[str, set[str]] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        outside, own = _imports(current)
        seen[current] = outside
        todo.extend(own - seen.keys())
    return seen


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_httpx_and_no_event_loop(module: str) -> None:
    offending = {
        name: sorted(outside & FORBIDDEN)
        for name, outside in _closure(module).items()
        if outside & FORBIDDEN
    }
    assert offending == {}, f"{module} reaches {offending}"


def test_the_check_can_fail() -> None:
    # The transport is a shell: it imports httpx and anyio, and the check sees it.
    closure = _closure("_transport")
    assert {"httpx", "anyio"} <= closure["_transport"]
    assert "_decision" in closure
