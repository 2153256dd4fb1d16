"""Authentication helpers: header dicts (as the reference clients return) and matching `httpx.Auth`
classes. Secrets never appear in their reprs."""

from __future__ import annotations

from collections.abc import Generator

import httpx

__all__ = [
    "APIKeyAuth",
    "AuthHeaders",
    "BearerAuth",
    "api_key_auth",
    "bearer_token_auth",
    "oauth_token_auth",
]

_MASK = "[secret]"


class AuthHeaders(dict[str, str]):
    """A header dict whose repr hides the values, so it can be logged or printed safely."""

    def __repr__(self) -> str:
        return f"AuthHeaders({dict.fromkeys(self, _MASK)!r})"

    __str__ = __repr__


def _check_secret(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{kind} must not contain line breaks")
    return value


def bearer_token_auth(token: str) -> AuthHeaders:
    """``{"Authorization": "Bearer <token>"}``."""
    return AuthHeaders({"Authorization": f"Bearer {_check_secret('token', token)}"})


def oauth_token_auth(access_token: str) -> AuthHeaders:
    """``{"Authorization": "Bearer <access_token>"}`` for an OAuth 2.0 access token (RFC 6750)."""
    return AuthHeaders({"Authorization": f"Bearer {_check_secret('access_token', access_token)}"})


def api_key_auth(api_key: str, header_name: str = "X-API-Key") -> AuthHeaders:
    """``{header_name: api_key}``."""
    if not isinstance(header_name, str) or not header_name.strip():
        raise ValueError("header_name must be a non-empty string")
    return AuthHeaders({header_name: _check_secret("api_key", api_key)})


class BearerAuth(httpx.Auth):
    """``auth=BearerAuth(token)``: sends ``Authorization: Bearer <token>`` (also for OAuth)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {_check_secret('token', token)}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return f"BearerAuth(token={_MASK!r})"


class APIKeyAuth(httpx.Auth):
    """``auth=APIKeyAuth(key, header_name="X-API-Key")``: sends the key in that header."""

    def __init__(self, api_key: str, header_name: str = "X-API-Key") -> None:
        self.header_name = header_name
        self._headers = api_key_auth(api_key, header_name)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._headers)
        yield request

    def __repr__(self) -> str:
        return f"APIKeyAuth(api_key={_MASK!r}, header_name={self.header_name!r})"
