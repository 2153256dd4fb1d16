"""Keeping credentials out of URLs, messages and log lines.

Three tools, from the most to the least informed:

* `scrub` / `scrub_exception`: remove the *known* credential values of one request (its
  ``Authorization``, API-key and other secret-looking headers) from a text or from an exception
  chain. Used on every error and history entry this library produces for a failing request.
* `redact_url`: drop userinfo and fragment, replace secret-looking query and path parameters.
* `redact_text` / `LogRedactionFilter`: redact what other libraries log, knowing only names:
  secret-looking headers in the reprs httpcore, h2 and hpack log, URLs, ``name=value`` pairs,
  and HPACK header blocks and HTTP/2 frame payloads, which are dropped whole (they decode back
  to every header, the bearer token included).

A name is secret-looking if, lower-cased, it contains one of `SECRET_NAME_MARKERS` or equals one
of `SECRET_NAMES` or a name added with `add_secret_names`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, unquote_plus

import httpx

__all__ = [
    "SECRET_NAMES",
    "SECRET_NAME_MARKERS",
    "LogRedactionFilter",
    "add_secret_names",
    "credential_values",
    "form_credential_values",
    "install_log_redaction",
    "is_secret_name",
    "redact_text",
    "redact_url",
    "scrub",
    "scrub_exception",
    "uninstall_log_redaction",
    "url_credential_values",
]

REDACTED = "[redacted]"

#: A query, path-parameter or header name that contains one of these (lower-cased) is a secret.
SECRET_NAME_MARKERS: tuple[str, ...] = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "auth",
    "sig",
    "session",
    "sessid",
    "credential",
    "cookie",
    "jwt",
    "bearer",
    "private",
    "assertion",
    "ticket",
    "saml",
    "csrf",
    "xsrf",
)

#: Names that are secrets only as a whole word (as markers they would match too much:
#: ``pin`` in "shipping", ``otp`` in "footprint").
SECRET_NAMES: frozenset[str] = frozenset(
    {
        "code",
        "pass",
        "pin",
        "otp",
        "totp",
        "hotp",
        "mfa",
        "sid",
        "hmac",
        "nonce",
        "client_secret",
        "client_assertion",
        "refresh",
    }
)

# Names that contain a marker but are not secrets (``auth`` in ``:authority``).
_NOT_SECRET = frozenset(
    {"authority", ":authority", "author", "authors", "keep-alive", "keys", "idempotency-key"}
)

_extra_names: frozenset[str] = frozenset()
_extra_lock = threading.Lock()


def add_secret_names(*names: str) -> None:
    """Treat ``names`` (compared case-insensitively, as whole names) as secrets from now on:
    in `redact_url`, in this library's own log lines and errors, in the `LogRedactionFilter`,
    and when deciding which headers to drop on a redirect to another origin.

    For the whole process, like logging configuration. Names are added, never removed.
    """
    global _extra_names
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"add_secret_names() takes non-empty strings, got {name!r}")
    with _extra_lock:
        _extra_names = _extra_names | {name.strip().lower() for name in names}
        _verdicts.clear()


def is_secret_name(name: str | bytes) -> bool:
    """Whether a query parameter, path parameter or header called ``name`` holds a secret."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    known = _verdicts.get(name)
    if known is not None:
        return known
    lowered = name.lower()
    verdict = lowered not in _NOT_SECRET and (
        lowered in SECRET_NAMES
        or lowered in _extra_names
        or any(marker in lowered for marker in SECRET_NAME_MARKERS)
    )
    if len(_verdicts) >= 4096:  # names come from traffic too: keep the memo bounded
        _verdicts.clear()
    _verdicts[name] = verdict
    return verdict


# The same few header names are asked about on every request.
_verdicts: dict[str, bool] = {}


# --- URLs ---------------------------------------------------------------------------------------

# Applied to a URL or a path already cut out of its text, so a value runs to the next separator.
_QUERY_PARAM = re.compile(r"(?P<sep>^|[?&;])(?P<name>[^=&;?#/\s]+)=(?P<value>[^&;#\s]*)")
_PATH_PARAM = re.compile(r"(?P<sep>;)(?P<name>[^=;/?#\s]+)=(?P<value>[^;/?#\s]*)")


def _redact_params(text: str, pattern: re.Pattern[str], leading: bool = True) -> str:
    def replace(match: re.Match[str]) -> str:
        if (not match["sep"] and not leading) or not is_secret_name(match["name"]):
            return match[0]
        return f"{match['sep']}{match['name']}={REDACTED}"

    return pattern.sub(replace, text)


def _redact_path_and_query(text: str) -> str:
    """A path with optional ``?query``: secret path parameters and query values redacted."""
    path, mark, query = text.partition("?")
    path = _redact_params(path, _PATH_PARAM)
    if mark:
        query = _redact_params(query, _QUERY_PARAM)
    return path + mark + query


def redact_url(url: httpx.URL | str) -> str:
    """``url`` as text with userinfo and fragment dropped (a fragment can hold an OAuth token)
    and the values of secret-looking query parameters and path parameters (``;jsessionid=``)
    replaced by ``[redacted]``. ``;`` counts as a query separator too. Never raises: a URL that
    cannot be parsed is replaced whole."""
    try:
        url = httpx.URL(url)
        if url.userinfo or url.fragment:
            url = url.copy_with(username=None, password=None, fragment=None)
        text = str(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return "[unparseable URL]"
    if ";" not in text and "?" not in text:
        return text
    # Leave scheme and authority alone: the path starts at the first "/" or "?" after "//".
    start = text.find("//") + 2 if "//" in text else 0
    ends = [i for i in (text.find("/", start), text.find("?", start)) if i >= 0]
    if not ends:
        return text
    cut = min(ends)
    return text[:cut] + _redact_path_and_query(text[cut:])


# --- free text (other libraries' log lines) ------------------------------------------------------

# A Python repr of a str or bytes. It never starts right after a backslash or a word character,
# so escaped quotes (\\') and apostrophes are not starting points: each scan is linear.
_QUOTED = r"(?<![\\\w])b?(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_PAIR = re.compile(rf"(?P<name>{_QUOTED})(?P<sep>\s*,\s*|=|:\s*)(?P<value>{_QUOTED})", re.DOTALL)
# Each pattern starts only where its first token cannot be extended to the left, so a long run
# of word characters is scanned once, not once per position (no quadratic backtracking).
# A URL right after a quote ends at the next quote (a repr: "URL('https://h/a')"); any other
# runs to the next space: httpx writes "'" as it is in userinfo and query, and a password
# "pa'ss" cut at its "'" left the rest of it, and the URL after it, unredacted.
_URL = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?:(?<=['\"])[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>\\]+"
    r"|[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"<>\\]+)"
)
# "Illegal header value b'...'" (h11), "header value ... %r" (h2): everything after it on the
# line goes, since the value may sit in a repr of a repr with quotes escaped to any depth.
_HEADER_VALUE = re.compile(r"(?i)(header (?:field )?value)\b[^\n]*")
_ESCAPED = re.compile(r"\\(['\"\\])")
_SCHEME = r"(?:bearer|basic|digest|token|negotiate|ntlm|apikey|mac|hoba|dpop)"
_BARE_PAIR = re.compile(
    rf"(?i)(?<![A-Za-z0-9_.\-])(?P<name>[A-Za-z0-9_.\-]+)(?P<sep>\s*[:=]\s*)"
    rf"(?P<value>(?:{_SCHEME}\s+)?[^\s,;&'\"<>()\[\]{{}}]+)"
)
_HEX_PAYLOAD = re.compile(r"data=<hex:[0-9a-fA-F]*>")


def _unquote_name(quoted: str) -> str:
    return quoted.lstrip("b")[1:-1]


def _redact_pair(match: re.Match[str]) -> str:
    name, value = _unquote_name(match["name"]), match["value"]
    prefix = "b" if value.startswith("b") else ""
    quote, inner = value[len(prefix)], value[len(prefix) + 1 : -1]
    if name.lower() == ":path":
        inner = _redact_path_and_query(inner)
    elif is_secret_name(name) and inner != "SENSITIVE_REDACTED":
        inner = REDACTED
    else:
        return match[0]
    return f"{match['name']}{match['sep']}{prefix}{quote}{inner}{quote}"


def _redact_bare_pair(match: re.Match[str]) -> str:
    if not is_secret_name(match["name"]) or match["value"] == REDACTED:
        return match[0]
    return f"{match['name']}{match['sep']}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with secrets redacted by name and shape: URLs (as `redact_url`), quoted
    ``(name, value)`` pairs and ``name=value`` / ``name: value`` pairs with a secret-looking
    name, ``:path`` query values, the rest of the line after "header value" in header errors,
    and HTTP/2 frame payloads. Reprs nested in reprs are looked at with their quotes
    unescaped."""
    redacted = _redact_once(text)
    if "\\'" in redacted or '\\"' in redacted:
        # A repr inside a repr (an exception holding a message holding a header list) escapes
        # the inner quotes; look again with one level of escaping undone, and keep that
        # version if it finds more.
        flat = _ESCAPED.sub(r"\1", redacted)
        flat_redacted = _redact_once(flat)
        if flat_redacted != flat:
            return flat_redacted
    return redacted


def _redact_once(text: str) -> str:
    text = _URL.sub(lambda m: redact_url(m[0]), text)
    text = _PAIR.sub(_redact_pair, text)
    text = _HEADER_VALUE.sub(rf"\1 {REDACTED}", text)
    text = _BARE_PAIR.sub(_redact_bare_pair, text)
    return _HEX_PAYLOAD.sub(f"data={REDACTED}", text)


# --- the logging filter --------------------------------------------------------------------------

#: The loggers `install_log_redaction` covers (with every child logger that exists then).
REDACTED_LOGGERS = ("httpx", "httpcore", "h2", "hpack", "h11", "httpx_resilience")
_BLOCK_TEMPLATES = ("header block", "Decoding %s")
# The loggers those libraries use (read from httpx 0.28, httpcore 1.0, hpack 4).
_KNOWN_CHILDREN = (
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "hpack.hpack",
    "hpack.table",
)


class LogRedactionFilter(logging.Filter):
    """A `logging.Filter` that rewrites each record's message with secrets redacted.

    It formats the message, runs `redact_text` over it, and stores the result as the record's
    message (with no arguments left to format). An HPACK header block (hpack's "Encoded header
    block" and "Decoding" records) is replaced whole, since it decodes back to every header.
    Exception text attached to the record is redacted the same way. It never drops a record.

    Install it on the loggers of httpx, httpcore, h2 and hpack with `install_log_redaction`;
    a filter added to a parent logger does not see its children's records, which is why that
    function adds it to each of them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg = self._redacted_message(record)
            record.args = ()
            if record.exc_info and not record.exc_text:
                record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
            elif record.exc_text:
                record.exc_text = redact_text(record.exc_text)
        except Exception:  # a broken record must not break the request that logged it
            record.msg = "[log record redacted: it could not be formatted]"
            record.args = ()
        return True

    @staticmethod
    def _redacted_message(record: logging.LogRecord) -> str:
        template = str(record.msg)
        if record.name.startswith("hpack") and any(t in template for t in _BLOCK_TEMPLATES):
            args: Any = record.args
            if isinstance(args, tuple):
                record.args = tuple(
                    f"<{len(a)} bytes {REDACTED}>"
                    if isinstance(a, (bytes, bytearray, memoryview))
                    else a
                    for a in args
                )
        return redact_text(record.getMessage())


_installed: dict[str, LogRedactionFilter] = {}


def install_log_redaction(loggers: Iterable[str] = REDACTED_LOGGERS) -> LogRedactionFilter:
    """Add one `LogRedactionFilter` to the named loggers and to every child logger of theirs
    that exists now (httpcore logs through ``httpcore.http11``, ``httpcore.http2``, ...;
    hpack through ``hpack.hpack`` and ``hpack.table``). Returns the filter. Calling it again
    adds nothing twice.

    Opt-in, and not done on import: changing how other libraries log is the application's
    decision. Call it once at start-up, before turning those loggers up to INFO or DEBUG.
    """
    names = [loggers] if isinstance(loggers, str) else list(loggers)
    log_filter = next(iter(_installed.values()), None) or LogRedactionFilter()
    existing = list(logging.root.manager.loggerDict)
    for prefix in names:
        # The known children are made now if their module is not imported yet: the module
        # gets the same logger object, filter included, when it asks for it.
        known = [n for n in _KNOWN_CHILDREN if n.startswith(prefix + ".")]
        targets = [prefix, *known] + [n for n in existing if n.startswith(prefix + ".")]
        for name in targets:
            target = logging.getLogger(name)
            if log_filter not in target.filters:
                target.addFilter(log_filter)
            _installed[name] = log_filter
    return log_filter


def uninstall_log_redaction() -> None:
    """Remove what `install_log_redaction` added (for tests)."""
    for name, log_filter in list(_installed.items()):
        logging.getLogger(name).removeFilter(log_filter)
        del _installed[name]


# --- known secrets -------------------------------------------------------------------------------


def credential_values(headers: httpx.Headers, names: Iterable[str] = ()) -> list[str]:
    """The credential values among ``headers`` (those named in ``names`` or with a
    secret-looking name, and the token after an auth scheme), with the escaped forms in
    which reprs show them; longest first."""
    wanted = {name.lower() for name in names}
    values: set[str] = set()
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("latin-1")
        if name.lower() not in wanted and not is_secret_name(name):
            continue
        value = raw_value.decode("latin-1")
        parts = {value, value.strip()}
        token = value.partition(" ")[2]
        if token.strip():
            parts.add(token.strip())
        for part in parts:
            if part:
                values.update({part, repr(part)[1:-1], repr(part.encode("latin-1"))[2:-1]})
    return sorted((v for v in values if v), key=len, reverse=True)


#: URL values shorter than this are not scrubbed from messages: replacing every "1" or "on"
#: would garble them, and `redact_url` hides such a value in every URL this library writes.
_MIN_URL_SECRET = 4


def url_credential_values(url: httpx.URL) -> list[str]:
    """The credential values ``url`` carries: its userinfo, and the values of its
    secret-looking query and path parameters, as sent (percent-encoded) and decoded, with the
    escaped forms in which reprs show them. A server or a parser may quote the request line
    (h11's "illegal header line: bytearray(b'GET /?token=...')") or echo the query into an
    error body."""
    found: set[str] = set()
    userinfo = url.userinfo.decode("ascii", "replace")
    if userinfo:
        found.update(userinfo.split(":", 1))
        found.update((url.username, url.password or ""))
    path, _, query = url.raw_path.decode("ascii", "replace").partition("?")
    found.update(_secret_params(path, _PATH_PARAM))
    found.update(_secret_params(query, _QUERY_PARAM))
    return _scrubbable(found)


def form_credential_values(body: bytes) -> list[str]:
    """The values of the secret-looking fields of an ``application/x-www-form-urlencoded``
    body (an OAuth token request's ``client_secret``, ``refresh_token``, ``password``), as
    sent and decoded, in the forms reprs show them. Only the first `_FORM_BYTES` are read."""
    return _scrubbable(_secret_params(body[:_FORM_BYTES].decode("latin-1"), _QUERY_PARAM))


_FORM_BYTES = 1 << 16


def _secret_params(text: str, pattern: re.Pattern[str]) -> set[str]:
    """The values of the parameters in ``text`` with a secret-looking name (percent-decoded
    too), as written and decoded."""
    found: set[str] = set()
    for match in pattern.finditer(text):
        if is_secret_name(unquote_plus(match["name"])):
            value = match["value"]
            found.update((value, unquote(value), unquote_plus(value)))
    return found


def _scrubbable(found: set[str]) -> list[str]:
    values: set[str] = set()
    for value in found:
        if len(value) >= _MIN_URL_SECRET:
            values.update(_escaped_forms(value))
    return sorted(values, key=len, reverse=True)


def _escaped_forms(value: str) -> set[str]:
    """``value`` and the forms a str or bytes repr shows it in."""
    forms = {value, repr(value)[1:-1]}
    with contextlib.suppress(UnicodeEncodeError):
        forms.add(repr(value.encode("latin-1"))[2:-1])
    forms.add(repr(value.encode("utf-8"))[2:-1])
    return forms


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_exception(exc: BaseException, secrets: list[str]) -> None:
    """Remove ``secrets`` from the messages of ``exc`` and of the exceptions it was raised
    from or during (``__cause__``, ``__context__``), in place, keeping their types."""
    if not secrets:
        return
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending and len(seen) < 32:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if any(isinstance(arg, (str, bytes)) for arg in current.args):
            current.args = tuple(_scrub_arg(arg, secrets) for arg in current.args)
        message = getattr(current, "message", None)
        if isinstance(message, str):
            with contextlib.suppress(AttributeError):
                current.message = scrub(message, secrets)  # type: ignore[attr-defined]
        pending.extend((current.__cause__, current.__context__))


def _scrub_arg(arg: object, secrets: list[str]) -> object:
    if isinstance(arg, str):
        return scrub(arg, secrets)
    if isinstance(arg, bytes):
        return scrub(arg.decode("latin-1"), secrets).encode("latin-1")
    return arg
