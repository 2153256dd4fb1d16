"""`Origin`: where requests go (scheme, host, port), the unit every per-origin state is kept by.

Pure: no httpx, no event loop (see `tests/test_core_imports.py`).
"""

from __future__ import annotations

from typing import NamedTuple

from ._validate import check_number

__all__ = ["Origin", "origin_of"]


class Origin(NamedTuple):
    """Where requests go: the unit a circuit breaker and a cool-down track."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _checked_origin(cls: type[Origin], scheme: str, host: str, port: int) -> Origin:
    """``Origin(scheme, host, port)``, checked: a typo here would silently name a circuit
    that no request ever reaches."""
    if not isinstance(scheme, str):
        raise TypeError(f"Origin.scheme must be a str such as 'https', got {scheme!r}")
    if not scheme:
        raise ValueError("Origin.scheme must be a non-empty str such as 'https', got ''")
    if not isinstance(host, str):
        raise TypeError(f"Origin.host must be a str, got {host!r}")
    check_number("Origin", "port", port, maximum=65535, integer=True)
    return tuple.__new__(cls, (scheme, host, port))


# NamedTuple forbids defining __new__ in the class body; set it afterwards. The transport's own
# origins (`origin_of`) skip the check: they come from a parsed URL.
Origin.__new__ = _checked_origin  # type: ignore[assignment,method-assign]

# ``tuple.__new__(Origin, ...)``: what `Origin._make` does, without its Python-level frame and
# length check (every request builds one, see `origin_of`).
_new_origin = tuple.__new__


def origin_of(scheme: str, host: str, port: int | None) -> Origin:
    """The origin of a request URL, with the scheme's default port filled in."""
    if port is None:
        port = 443 if scheme in ("https", "wss") else 80
    return _new_origin(Origin, (scheme, host, port))
