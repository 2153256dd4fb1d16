"""Authentication helpers: header dicts (as the reference clients return) and matching `httpx.Auth`
classes. Secrets never appear in their reprs or in their error messages.

Credentials stay with their origin. httpx drops only ``Authorization`` when a redirect leads to
another origin; a request carrying credentials set through this library is marked (in its
``extensions``, which httpx hands on to each redirect) with its origin and the names of those
headers, and `strip_foreign_credentials` drops them, and every other secret-looking header,
once the request is on its way to another origin. `ResilientTransport` and `AsyncAPIClient`
call it before sending each request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Mapping
from typing import Any, NamedTuple

import httpx

from ._redact import (
    add_secret_names,
    credential_values,
    form_credential_values,
    is_secret_name,
    url_credential_values,
)
from ._validate import check_header_name, header_value_problem

__all__ = [
    "CREDENTIALS_EXTENSION",
    "APIKeyAuth",
    "AuthHeaders",
    "BearerAuth",
    "api_key_auth",
    "bearer_token_auth",
    "keep_cookies_with_their_domain",
    "mark_credentials",
    "oauth_token_auth",
    "remember_credential_names",
    "request_secrets",
    "strip_foreign_credentials",
]

_MASK = "[secret]"

#: The request ``extensions`` key of the credential marker (private to this library).
CREDENTIALS_EXTENSION = "httpx_resilience.credentials"


# Headers that are never credentials, even when given among auth headers.
_ORDINARY = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
        "user-agent",
    }
)


def remember_credential_names(names: Iterable[str]) -> None:
    """Treat ``names`` as secret-looking from now on (`add_secret_names`), so that the values
    of a credential header with an unremarkable name (``X-Tenant``, say) are redacted from
    logs and dropped on redirects like ``X-API-Key``."""
    unknown = [name for name in names if not is_secret_name(name) and name.lower() not in _ORDINARY]
    if unknown:
        add_secret_names(*unknown)


class AuthHeaders(dict[str, str]):
    """A header dict whose repr hides the values, so it can be logged or printed safely.

    Its names and values are checked when it is made: a value that could not be sent (a line
    break, a NUL, surrounding whitespace) raises `ValueError` naming the header, not the value.
    Its header names count as secret from then on (see `add_secret_names`).
    """

    def __init__(self, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), /) -> None:
        items = headers.items() if isinstance(headers, Mapping) else headers
        checked = {}
        for name, value in items:
            checked[check_header_name("AuthHeaders", "headers", name)] = _check_secret(
                f"AuthHeaders: the value of header {name!r}", value
            )
        super().__init__(checked)
        remember_credential_names(checked)

    def __repr__(self) -> str:
        return f"AuthHeaders({dict.fromkeys(self, _MASK)!r})"

    __str__ = __repr__


def _check_secret(kind: str, value: object) -> str:
    """``value`` if it is a non-empty str that can be sent in a header; the error names
    ``kind`` and the rule, never the value."""
    if not isinstance(value, str):
        raise TypeError(f"{kind} must be a str, got {type(value).__name__} (value not shown)")
    if not value:
        raise ValueError(f"{kind} must be a non-empty string")
    problem = header_value_problem(value)
    if problem is not None:
        raise ValueError(
            f"{kind} {problem}; it must be visible ASCII with inner spaces only (value not shown)"
        )
    return value


def bearer_token_auth(token: str) -> AuthHeaders:
    """``{"Authorization": "Bearer <token>"}``."""
    return AuthHeaders({"Authorization": f"Bearer {_check_secret('token', token)}"})


def oauth_token_auth(access_token: str) -> AuthHeaders:
    """``{"Authorization": "Bearer <access_token>"}`` for an OAuth 2.0 access token (RFC 6750)."""
    return AuthHeaders({"Authorization": f"Bearer {_check_secret('access_token', access_token)}"})


def api_key_auth(api_key: str, header_name: str = "X-API-Key") -> AuthHeaders:
    """``{header_name: api_key}``. The header, whatever its name, is dropped on a redirect to
    another origin by `AsyncAPIClient` and `ResilientTransport`."""
    if not isinstance(header_name, str) or not header_name.strip():
        raise ValueError("header_name must be a non-empty string")
    check_header_name("api_key_auth", "header_name", header_name)
    return AuthHeaders({header_name: _check_secret("api_key", api_key)})


class BearerAuth(httpx.Auth):
    """``auth=BearerAuth(token)``: sends ``Authorization: Bearer <token>`` (also for OAuth)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {_check_secret('BearerAuth.token', token)}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        mark_credentials(request, ("Authorization",))
        yield request

    def __repr__(self) -> str:
        return f"BearerAuth(token={_MASK!r})"


class APIKeyAuth(httpx.Auth):
    """``auth=APIKeyAuth(key, header_name="X-API-Key")``: sends the key in that header.

    The header is dropped on a redirect to another origin when the request goes through a
    `ResilientTransport` or an `AsyncAPIClient` (httpx alone drops only ``Authorization``).
    """

    def __init__(self, api_key: str, header_name: str = "X-API-Key") -> None:
        if not isinstance(header_name, str) or not header_name.strip():
            raise ValueError("APIKeyAuth.header_name must be a non-empty string")
        check_header_name("APIKeyAuth", "header_name", header_name)
        self.header_name = header_name
        self._headers = AuthHeaders({header_name: _check_secret("APIKeyAuth.api_key", api_key)})

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._headers)
        mark_credentials(request, (self.header_name,))
        yield request

    def __repr__(self) -> str:
        return f"APIKeyAuth(api_key={_MASK!r}, header_name={self.header_name!r})"


# --- keeping credentials with their origin ---------------------------------------------------


class _Credentials(NamedTuple):
    origin: tuple[str, str, int | None]
    names: frozenset[str]  # lower-cased header names


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port
    if port is None:
        port = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, port)


def mark_credentials(request: httpx.Request, names: Iterable[str]) -> None:
    """Record that the headers ``names`` of ``request`` are credentials of its origin.

    The marker lives in a fresh ``extensions`` dict (never the caller's), which httpx hands on
    unchanged to every redirect built from the request. A request marked twice keeps the first
    origin and both sets of names."""
    lowered = frozenset(name.lower() for name in names)
    current: Any = request.extensions.get(CREDENTIALS_EXTENSION)
    if isinstance(current, _Credentials):
        if lowered <= current.names:
            return
        marker = _Credentials(current.origin, current.names | lowered)
    else:
        marker = _Credentials(_origin(request.url), lowered)
    request.extensions = {**request.extensions, CREDENTIALS_EXTENSION: marker}


def strip_foreign_credentials(request: httpx.Request) -> bool:
    """Drop the credentials of a marked ``request`` if it is going to another origin than the
    one they were set for: the marked headers and every header with a secret-looking name
    (``Cookie`` excepted: httpx rebuilds it from the cookie jar, which matches the domains of
    the cookies that have one; see `keep_cookies_with_their_domain` for those that do not).
    Returns whether the request goes to another origin.

    As httpx does for ``Authorization``, a redirect from ``http`` to ``https`` on the same
    host (default ports) keeps them."""
    marker = request.extensions.get(CREDENTIALS_EXTENSION)
    if not isinstance(marker, _Credentials):
        return False
    target = _origin(request.url)
    if target == marker.origin or _is_https_upgrade(marker.origin, target):
        return False
    headers = request.headers
    doomed = [
        name
        for name in headers
        if name != "cookie" and (name in marker.names or is_secret_name(name))
    ]
    for name in doomed:
        del headers[name]
    return True


def keep_cookies_with_their_domain(request: httpx.Request, cookies: httpx.Cookies) -> None:
    """Rebuild the ``Cookie`` header of ``request``, a redirect to another origin, from the
    cookies of ``cookies`` that have a domain. A cookie given as ``cookies={"session": ...}``
    has none, and the cookie jar sends such a cookie to every host: it belongs to the origin
    the client was made for, not to wherever a redirect points."""
    if "cookie" not in request.headers:
        return
    del request.headers["cookie"]
    scoped = httpx.Cookies()
    for cookie in cookies.jar:
        if cookie.domain:
            scoped.jar.set_cookie(cookie)
    scoped.set_cookie_header(request)


def _is_https_upgrade(
    origin: tuple[str, str, int | None], target: tuple[str, str, int | None]
) -> bool:
    return origin == ("http", target[1], 80) and target == ("https", origin[1], 443)


def request_secrets(request: httpx.Request) -> list[str]:
    """The credential values ``request`` carries (marked headers and secret-looking ones, the
    URL's userinfo and secret-looking query and path parameters, the secret-looking fields of
    a form body), in the forms reprs show them: what `scrub` removes from anything said about
    the request. Longest first."""
    marker = request.extensions.get(CREDENTIALS_EXTENSION)
    names = marker.names if isinstance(marker, _Credentials) else ()
    found = credential_values(request.headers, names)
    more = url_credential_values(request.url)
    if _is_form(request):
        with contextlib.suppress(httpx.RequestNotRead):  # a streamed body: not kept
            more += form_credential_values(request.content)
    if not more:
        return found
    return sorted({*found, *more}, key=len, reverse=True)


def _is_form(request: httpx.Request) -> bool:
    media: str = request.headers.get("content-type", "")
    return media.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded"
