"""`AsyncAPIClient`: a small facade over ``httpx.AsyncClient(transport=ResilientTransport(...))``
that maps every failure to one exception tree and returns responses with parsed ``.data``.

It covers what the reference clients offer — lionfuncs' AsyncAPIClient (circuit breaker, retry
config, ``call()``, mapped errors), a header-helper client (``get_json``), and django-api-orm's
AsyncServiceClient (``http2``, ``verify_ssl``, ``max_retries``, connection limits, ``.data``) —
with the connection options really reaching the connections.
"""

from __future__ import annotations

import difflib
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ._auth import (
    keep_cookies_with_their_domain,
    mark_credentials,
    remember_credential_names,
    request_secrets,
    strip_foreign_credentials,
)
from ._breaker import CircuitBreaker
from ._config import RetryConfig
from ._exceptions import (
    APICircuitOpenError,
    APIClientError,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CircuitOpenError,
    PermissionDeniedError,
    RateLimitError,
    ResourceNotFoundError,
    ServerError,
)
from ._logging import logger
from ._redact import is_secret_name, redact_url, scrub, scrub_exception
from ._retry_after import parse_retry_after
from ._transport import READ_BODY_EXTENSION, ResilientTransport
from ._validate import (
    check_bool,
    check_header_value,
    check_headers,
    check_number,
    check_type,
)

__all__ = ["APIResponse", "AsyncAPIClient"]

_SNIPPET = 200  # characters of an error body quoted in an exception message
_NO_CONTENT = frozenset({204, 205, 304})
_UNSET: Any = object()
# Options httpx.AsyncClient would silently ignore once a transport is given: they go to ours.
_TRANSPORT_OPTIONS = ("cert", "http1", "limits", "proxy", "trust_env", "uds", "local_address")
# What **client_kwargs may hold: httpx.AsyncClient's own keywords and the transport's options.
_CLIENT_KWARGS = frozenset(
    [*inspect.signature(httpx.AsyncClient.__init__).parameters, *_TRANSPORT_OPTIONS]
) - {"self"}


class APIResponse:
    """A response with its body already read.

    Attributes:
        status_code: The HTTP status.
        headers: The response headers.
        data: Parsed JSON for JSON bodies, text otherwise, None for an empty body or 204.
        response: The underlying `httpx.Response`.
    """

    __slots__ = ("data", "response")

    def __init__(self, response: httpx.Response) -> None:
        check_type("APIResponse", "response", response, httpx.Response, "an httpx.Response")
        self.response = response
        self.data: Any = _data_of(response)

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    def __repr__(self) -> str:
        return f"<APIResponse [{self.status_code}]>"


def _is_json(response: httpx.Response) -> bool:
    media: str = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _data_of(response: httpx.Response) -> Any:
    if response.status_code in _NO_CONTENT or not response.content:
        return None
    if _is_json(response):
        try:
            return response.json()
        except ValueError:
            return response.text  # mislabelled: the text is all there is
    return response.text


class AsyncAPIClient:
    """An API client with retries, circuit breaking, HTTP/2 and mapped errors.

    Args:
        base_url: Prefix of every relative URL.
        timeout: Seconds (or an `httpx.Timeout`) for each operation of each attempt.
        headers: Headers sent with every request.
        auth: An `httpx.Auth`, or a header dict such as `bearer_token_auth` returns.
        auth_headers: More auth headers, merged into ``headers``.
        auth_token: A token sent as ``Authorization: Bearer <token>``.
        client: An existing `httpx.AsyncClient`, used as given and never closed by the facade.
            Connection and retry options cannot be combined with it (they would be ignored).
        circuit_breaker: A `CircuitBreaker` for the transport.
        retry: A `RetryConfig` for the transport (the name `ResilientTransport` uses).
        retry_config: Alias of ``retry`` (the reference client's name); give one of the two.
        max_retries: Shorthand for ``RetryConfig(max_retries=...)``; not with ``retry``.
        retry_delay: Shorthand for ``RetryConfig(base_delay=...)``; not with ``retry``.
        http2: Negotiate HTTP/2 over TLS (default True; falls back to HTTP/1.1).
        verify: TLS verification: True, a CA bundle path or an `ssl.SSLContext`.
        verify_ssl: Alias of ``verify``.
        follow_redirects: Follow redirects (default False, as httpx).
        max_connections: Connection pool limit (default 100).
        max_keepalive_connections: Idle connections kept open (default 20).
        **client_kwargs: Passed to `httpx.AsyncClient`. Options that httpx would ignore once a
            transport is given (``limits``, ``proxy``, ``cert``, ``http1``, ``trust_env``,
            ``uds``, ``local_address``) go to the transport; ``transport=`` becomes the
            transport that `ResilientTransport` wraps (an `httpx.MockTransport` in tests, say).
            Any other keyword raises `TypeError` naming `AsyncAPIClient`.
    """

    def __init__(
        self,
        base_url: str | httpx.URL = "",
        *,
        timeout: float | httpx.Timeout | None = 10.0,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | Mapping[str, str] | None = None,
        auth_headers: Mapping[str, str] | None = None,
        auth_token: str | None = None,
        client: httpx.AsyncClient | None = None,
        circuit_breaker: CircuitBreaker | None = None,
        retry: RetryConfig | None = None,
        retry_config: RetryConfig | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        http2: bool | None = None,
        verify: ssl.SSLContext | str | bool | None = None,
        verify_ssl: ssl.SSLContext | str | bool | None = None,
        follow_redirects: bool = False,
        max_connections: int | None = None,
        max_keepalive_connections: int | None = None,
        **client_kwargs: Any,
    ) -> None:
        _check_keywords(client_kwargs)
        retry_config = _one_retry_config(retry, retry_config)
        _check_arguments(
            base_url=base_url, timeout=timeout, client=client, circuit_breaker=circuit_breaker,
            retry_config=retry_config, max_retries=max_retries, retry_delay=retry_delay,
            http2=http2, verify=verify, verify_ssl=verify_ssl, follow_redirects=follow_redirects,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
        )  # fmt: skip
        self._base_url = httpx.URL(base_url) if base_url else None
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        merged = dict(check_headers("AsyncAPIClient", "headers", headers))
        auth_object: httpx.Auth | None = None
        credentials: set[str] = set()
        if isinstance(auth, httpx.Auth):
            auth_object = auth
        elif isinstance(auth, Mapping):
            pairs = check_headers("AsyncAPIClient", "auth", auth)
            merged.update(pairs)
            credentials.update(name for name, _ in pairs)
        elif auth is not None:
            raise TypeError(
                "AsyncAPIClient.auth must be an httpx.Auth or a dict of headers (or None), "
                f"got {type(auth).__name__} (value not shown)"
            )
        pairs = check_headers("AsyncAPIClient", "auth_headers", auth_headers)
        merged.update(pairs)
        credentials.update(name for name, _ in pairs)
        if auth_token is not None:
            if not isinstance(auth_token, str) or not auth_token:
                raise ValueError("AsyncAPIClient.auth_token must be a non-empty string")
            # The token on its own too: "Bearer \tX" would pass as a header value.
            check_header_value("AsyncAPIClient", "auth_token", "Authorization", auth_token)
            merged["Authorization"] = f"Bearer {auth_token}"
            credentials.add("Authorization")
        remember_credential_names(credentials)
        # Every secret-looking header set here counts as a credential of base_url's origin.
        credentials.update(name for name in merged if is_secret_name(name))
        self._credentials = frozenset(credentials)
        self._headers = httpx.Headers(merged)
        self._auth = auth_object
        self._follow_redirects = follow_redirects
        self._closed = False

        if verify is not None and verify_ssl is not None and verify is not verify_ssl:
            raise ValueError("AsyncAPIClient: give verify or its alias verify_ssl, not both")
        verify = verify if verify is not None else verify_ssl
        if retry_config is not None and (max_retries is not None or retry_delay is not None):
            raise ValueError(
                "AsyncAPIClient: give retry/retry_config or max_retries/retry_delay, not both"
            )
        if client is not None:
            given = {
                "circuit_breaker": circuit_breaker,
                "retry" if retry is not None else "retry_config": retry_config,
                "max_retries": max_retries, "retry_delay": retry_delay, "http2": http2,
                "verify": verify, "max_connections": max_connections,
                "max_keepalive_connections": max_keepalive_connections,
            }  # fmt: skip
            ignored = [name for name, value in given.items() if value is not None]
            ignored += list(client_kwargs)
            if ignored:
                raise TypeError(
                    f"AsyncAPIClient: {', '.join(ignored)} cannot be combined with client=; "
                    "configure that client's transport instead"
                )
            self._client = client
            self._owns_client = False
            return

        if retry_config is None:
            retry_config = RetryConfig()
            if max_retries is not None:
                retry_config = retry_config.replace(max_retries=max_retries)
            if retry_delay is not None:
                retry_config = retry_config.replace(
                    base_delay=retry_delay, max_delay=max(retry_delay, retry_config.max_delay)
                )
        if verify is False:
            logger.warning(
                "AsyncAPIClient: TLS certificate verification was turned off by the caller"
            )
        if "mounts" in client_kwargs:
            raise TypeError("AsyncAPIClient: mounts= is not supported; pass client= instead")
        options = {
            name: client_kwargs.pop(name) for name in _TRANSPORT_OPTIONS if name in client_kwargs
        }
        limits = options.pop("limits", None)
        if limits is None:
            limits = httpx.Limits(
                max_connections=100 if max_connections is None else max_connections,
                max_keepalive_connections=(
                    20 if max_keepalive_connections is None else max_keepalive_connections
                ),
            )
        elif max_connections is not None or max_keepalive_connections is not None:
            raise ValueError(
                "AsyncAPIClient: give limits or max_connections/max_keepalive_connections, not both"
            )
        inner = client_kwargs.pop("transport", None)
        if inner is not None:
            if options or verify is not None or http2 is not None:
                raise TypeError(
                    "AsyncAPIClient: connection options cannot be combined with transport="
                )
            transport = ResilientTransport(
                inner, retry=retry_config, circuit_breaker=circuit_breaker
            )
        else:
            transport = ResilientTransport(
                retry=retry_config,
                circuit_breaker=circuit_breaker,
                verify=True if verify is None else verify,
                http2=True if http2 is None else http2,
                limits=limits,
                **options,
            )
        self._client = httpx.AsyncClient(transport=transport, **client_kwargs)
        self._owns_client = True

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        """The underlying `httpx.AsyncClient`."""
        return self._client

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the facade (and its own client, not one passed in). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncAPIClient:
        if self._closed:
            raise RuntimeError("AsyncAPIClient is closed; create a new one")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        base = "" if self._base_url is None else redact_url(self._base_url)
        return f"<AsyncAPIClient base_url={base!r}>"

    # --- requests --------------------------------------------------------------------------

    async def request(self, method: str, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        """Send a request; return an `APIResponse` for a 1xx-3xx answer, raise otherwise.

        Keyword arguments are those of `httpx.AsyncClient.request` (``params``, ``json``,
        ``data``, ``content``, ``files``, ``headers``, ``cookies``, ``timeout``,
        ``extensions``, ...). The body is read inside the retry scope, so an error while
        reading it is retried like any other for idempotent requests.
        """
        request = self._build(method, url, kwargs)
        extensions = dict(request.extensions)
        extensions.setdefault(READ_BODY_EXTENSION, True)
        request.extensions = extensions
        response = await self._send(request, stream=False)
        return APIResponse(response)

    async def get(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("DELETE", url, **kwargs)

    async def head(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("HEAD", url, **kwargs)

    async def options(self, url: str | httpx.URL, **kwargs: Any) -> APIResponse:
        return await self.request("OPTIONS", url, **kwargs)

    async def get_json(self, url: str | httpx.URL, params: Any = None) -> Any:
        """GET ``url`` and return its parsed JSON body; `APIClientError` if it is not JSON."""
        result = await self.request("GET", url, params=params)
        try:
            return result.response.json()
        except ValueError as exc:
            raise APIClientError(
                f"GET {redact_url(result.response.request.url)} -> "
                f"{result.status_code}: the body is not JSON",
                request=result.response.request,
                response=result.response,
            ) from exc

    async def call(self, request: Mapping[str, Any]) -> Any:
        """Send ``{"method": "GET", "url": ..., "params": ..., "json": ..., ...}`` and return the
        parsed ``data`` (the ResourceClient protocol). ``method`` defaults to GET."""
        if not isinstance(request, Mapping) or "url" not in request:
            raise ValueError('AsyncAPIClient.call() needs a dict with at least a "url"')
        spec = dict(request)
        method = spec.pop("method", "GET")
        url = spec.pop("url")
        return (await self.request(method, url, **spec)).data

    @asynccontextmanager
    async def stream(
        self, method: str, url: str | httpx.URL, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """``async with api.stream("GET", url) as response:`` iterate the body as it arrives.

        Errors are mapped as for `request`; an error status raises before the block runs.
        The response is closed when the block exits, however it exits.
        """
        request = self._build(method, url, kwargs)
        response = await self._send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    # --- internals -------------------------------------------------------------------------

    def _build(self, method: str, url: str | httpx.URL, kwargs: dict[str, Any]) -> httpx.Request:
        if self._closed:
            raise RuntimeError("AsyncAPIClient is closed; create a new one")
        headers = httpx.Headers(self._headers)
        extra = check_headers("AsyncAPIClient", "request(headers=...)", kwargs.pop("headers", None))
        headers.update(extra)
        timeout = kwargs.pop("timeout", _UNSET)
        if timeout is _UNSET:
            timeout = self._timeout
        target = httpx.URL(url)
        if self._base_url is not None and not target.is_absolute_url:
            base = self._base_url
            path = base.raw_path.rstrip(b"/") + b"/" + target.raw_path.lstrip(b"/")
            target = base.copy_with(raw_path=path)
        request = self._client.build_request(method, target, headers=headers, timeout=timeout,
                                             **kwargs)  # fmt: skip
        names = self._credentials
        if extra:
            names = names.union(name for name, _ in extra if is_secret_name(name))
        if names:
            mark_credentials(request, names)
        return request

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = await self._send_following(request, stream)
        except CircuitOpenError as exc:
            raise APICircuitOpenError(
                f"{_describe(request)}: {_scrubbed(exc, request)}", origin=exc.origin,
                retry_in=exc.retry_in, request=request,
            ) from exc  # fmt: skip
        except httpx.TimeoutException as exc:
            _scrubbed(exc, request)
            raise APITimeoutError(f"{_describe(request)}: timed out ({type(exc).__name__})",
                                  request=request) from exc  # fmt: skip
        except httpx.TransportError as exc:
            message = f"{_describe(request)}: {type(exc).__name__}: {_scrubbed(exc, request)}"
            raise APIConnectionError(message, request=request) from exc
        except httpx.HTTPError as exc:  # DecodingError, TooManyRedirects
            message = f"{_describe(request)}: {type(exc).__name__}: {_scrubbed(exc, request)}"
            raise APIClientError(message, request=request) from exc
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _status_error(response.request, response)
        return response

    async def _send_following(self, request: httpx.Request, stream: bool) -> httpx.Response:
        """Send ``request``; with ``follow_redirects``, follow its redirects here rather than in
        httpx, so that each hop's credentials are checked against its origin whatever the
        client's transport (httpx itself drops only ``Authorization``)."""
        client = self._client
        auth: Any = self._auth or httpx.USE_CLIENT_DEFAULT
        if self._follow_redirects:
            # Record the origin even when the facade set no credential itself: a client=
            # of the caller's may carry its own (``headers=``), and an auth flow sets its
            # headers inside ``send``. Every secret-looking header stays with this origin.
            mark_credentials(request, ())
        hops: list[httpx.Response] = []
        while True:
            response = await client.send(request, auth=auth, stream=stream,
                                         follow_redirects=False)  # fmt: skip
            next_request = response.next_request
            if not self._follow_redirects or next_request is None:
                break
            try:
                await response.aread()
            finally:
                await response.aclose()
            hops.append(response)
            if len(hops) > client.max_redirects:
                raise httpx.TooManyRedirects(
                    "Exceeded maximum allowed redirects.", request=next_request
                )
            if strip_foreign_credentials(next_request):
                keep_cookies_with_their_domain(next_request, client.cookies)
            request = next_request
            auth = None  # as in httpx: an auth flow runs once, for the first request
        if hops:
            response.history = hops
        return response


def _scrubbed(exc: BaseException, request: httpx.Request) -> str:
    """``str(exc)``, with ``exc`` and its causes cleared of ``request``'s credentials."""
    scrub_exception(exc, request_secrets(request))
    return str(exc)


def _check_keywords(client_kwargs: Mapping[str, Any]) -> None:
    """Raise `TypeError` naming `AsyncAPIClient` (not httpx's class) for an unknown keyword."""
    for name in client_kwargs:
        if name not in _CLIENT_KWARGS:
            known = [*inspect.signature(AsyncAPIClient.__init__).parameters, *_CLIENT_KWARGS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"AsyncAPIClient() got an unexpected keyword argument {name!r}{hint}")


def _one_retry_config(
    retry: RetryConfig | None, retry_config: RetryConfig | None
) -> RetryConfig | None:
    """``retry`` and its alias ``retry_config``: at most one, and a `RetryConfig`."""
    if retry is not None and retry_config is not None and retry is not retry_config:
        raise ValueError("AsyncAPIClient: give retry or its alias retry_config, not both")
    config = retry if retry is not None else retry_config
    if config is not None and not isinstance(config, RetryConfig):
        raise TypeError(f"AsyncAPIClient.retry must be a RetryConfig or None, got {config!r}")
    return config


def _describe(request: httpx.Request) -> str:
    return f"{request.method} {redact_url(request.url)}"


def _snippet(response: httpx.Response, secrets: list[str]) -> str:
    """The start of the body, with ``secrets`` scrubbed from the whole body first: cut first,
    a credential the cut went through would keep its first characters."""
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    text = " ".join(scrub(text, secrets).split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _status_error(request: httpx.Request, response: httpx.Response) -> APIStatusError:
    status = response.status_code
    # A server that echoes the credential it refused must not put it into our message.
    snippet = _snippet(response, request_secrets(request))
    reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
    message = f"{_describe(request)} -> {status} {reason}".rstrip()
    if snippet:
        message += f": {snippet}"
    if status == 429:
        header = response.headers.get("retry-after")
        retry_after = None
        if header is not None:
            retry_after = parse_retry_after(header, time.time())
        return RateLimitError(message, request=request, response=response, retry_after=retry_after)
    cls: type[APIStatusError]
    if status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = ResourceNotFoundError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIStatusError
    return cls(message, request=request, response=response)


def _check_arguments(
    *,
    base_url: object,
    timeout: object,
    client: object,
    circuit_breaker: object,
    retry_config: object,
    max_retries: object,
    retry_delay: object,
    http2: object,
    verify: object,
    verify_ssl: object,
    follow_redirects: object,
    max_connections: object,
    max_keepalive_connections: object,
) -> None:
    """TypeError/ValueError naming ``AsyncAPIClient``, the argument and the allowed values."""
    owner = "AsyncAPIClient"
    _check_base_url(base_url)
    if isinstance(timeout, httpx.Timeout):
        for part in ("connect", "read", "write", "pool"):
            check_number(owner, f"timeout.{part}", getattr(timeout, part), allow_none=True)
    else:
        check_number(owner, "timeout", timeout, allow_none=True)
    check_type(owner, "client", client, (httpx.AsyncClient, type(None)),
               "an httpx.AsyncClient or None")  # fmt: skip
    check_type(owner, "circuit_breaker", circuit_breaker, (CircuitBreaker, type(None)),
               "a CircuitBreaker or None")  # fmt: skip
    check_type(owner, "retry_config", retry_config, (RetryConfig, type(None)),
               "a RetryConfig or None")  # fmt: skip
    check_number(owner, "max_retries", max_retries, integer=True, allow_none=True)
    check_number(owner, "retry_delay", retry_delay, allow_none=True)
    check_bool(owner, "http2", http2, allow_none=True)
    check_bool(owner, "follow_redirects", follow_redirects)
    for name, value in (("verify", verify), ("verify_ssl", verify_ssl)):
        check_type(owner, name, value, (ssl.SSLContext, str, bool, type(None)),
                   "True, False, a CA bundle path or an ssl.SSLContext")  # fmt: skip
    check_number(owner, "max_connections", max_connections, minimum=1, integer=True,
                 allow_none=True)  # fmt: skip
    check_number(owner, "max_keepalive_connections", max_keepalive_connections, integer=True,
                 allow_none=True)  # fmt: skip


def _check_base_url(base_url: object) -> None:
    allowed = "an absolute http:// or https:// URL such as 'https://api.example.com/v1'"
    if not isinstance(base_url, (str, httpx.URL)):
        raise TypeError(f"AsyncAPIClient.base_url must be {allowed}, got {type(base_url).__name__}")
    if not base_url:
        return
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        # The value is not echoed whole: a URL may carry a password or a token.
        shown = "an unparseable URL" if url is None else repr(redact_url(url))
        raise ValueError(f"AsyncAPIClient.base_url must be {allowed}, got {shown}")
