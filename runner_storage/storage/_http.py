"""One HTTP exchange, as Prefect 1's ``requests`` calls made it, translated to our errors.

:func:`prepare` turns request keyword arguments (``url``, ``headers``, ``params``,
``json``, ``data``, ``timeout``, already rendered) into a :class:`Request` the way
``requests`` prepares them; :func:`exchange` sends it and reads the answer (blocking: run
it in a worker thread), following redirects as ``requests`` does and never sending
``Authorization``, ``Cookie`` or ``Proxy-Authorization`` to another origin. Every failure
is one line naming the request by the label the caller gives (never the rendered URL,
which may hold a secret), and is raised ``from None``.

The standard library's client works under every event loop anyio runs, and a thread
abandoned on cancellation ends at its socket timeout.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from runner_storage.exceptions import (
    ConfigurationError,
    SourceError,
    TransientSourceError,
    status_error,
)

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_BODY_BYTES",
    "USER_AGENT",
    "Answer",
    "Request",
    "exchange",
    "prepare",
    "status_failure",
]

#: Seconds a connection or a read may stall when the request names no ``timeout``
#: (``requests`` would wait forever).
DEFAULT_TIMEOUT_SECONDS = 60.0
#: The largest answer read: a flow script is text, and a runaway answer must not fill memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Sent unless the request names its own ``User-Agent``.
USER_AGENT = "runner-storage"

#: Headers that carry a login and never follow a redirect to another origin.
_LOGIN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Request:
    """A prepared request: what goes over the wire.

    Attributes:
        method: ``GET``, ``POST``, ``PUT`` or ``PATCH``.
        url: the full URL, query included (may hold secrets: never show it).
        headers: the headers, as given plus what the body implies.
        body: the body, or None.
        timeout: seconds a connection or a read may stall.
    """

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Answer:
    """What the server answered (after redirects).

    Attributes:
        status: the HTTP status.
        reason: its reason phrase.
        headers: the headers, names in lower case.
        body: the body, decoded from gzip or deflate when the server encoded it (empty
            for anything but a success).
    """

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The header ``name`` (any case), or None."""
        return self.headers.get(name.lower())


def prepare(method: str, kwargs: Mapping[str, Any]) -> Request:
    """Build the request ``requests`` would send for ``method`` and rendered ``kwargs``.

    ``params`` are appended to the URL's query (a mapping's list values repeat the key,
    None values are left out); ``json`` is sent as JSON with ``Content-Type:
    application/json``; ``data`` as it is (text as UTF-8), or form-encoded when it is a
    mapping or a list of pairs. ``timeout`` is seconds, or a ``(connect, read)`` pair of
    which the larger applies to both.

    Raises:
        ConfigurationError: the URL is not http(s) with a host (the message does not show
            it), or a value cannot be sent.
    """
    url = str(kwargs["url"])
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            "the url is not an http:// or https:// URL with a host once its templates are"
            " filled in: check the url and the values its templates take"
        )
    query = _encode_pairs(kwargs.get("params"), "params")
    if query:
        url = urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))
    headers = {str(name): str(value) for name, value in (kwargs.get("headers") or {}).items()}
    names = {name.lower() for name in headers}
    body: bytes | None = None
    if kwargs.get("data") is not None:
        data = kwargs["data"]
        if isinstance(data, bytes | bytearray):
            body = bytes(data)
        elif isinstance(data, str):
            body = data.encode("utf-8")
        else:
            body = _encode_pairs(data, "data").encode("ascii")
            if "content-type" not in names:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif kwargs.get("json") is not None:
        body = json.dumps(kwargs["json"], allow_nan=False).encode("utf-8")
        if "content-type" not in names:
            headers["Content-Type"] = "application/json"
    if "user-agent" not in names:
        headers["User-Agent"] = USER_AGENT
    return Request(method, url, headers, body, _timeout(kwargs.get("timeout")))


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_SECONDS
    if isinstance(value, list | tuple):
        return float(max(value))
    return float(value)


def _encode_pairs(value: Any, what: str) -> str:
    """``value`` (a mapping, a list of pairs or text) as ``requests`` encodes it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii")
    items = value.items() if isinstance(value, Mapping) else value
    pairs: list[tuple[str, str]] = []
    try:
        for key, item in items:
            values = item if isinstance(item, list | tuple) else [item]
            pairs.extend((str(key), _text(v)) for v in values if v is not None)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{what} must be a mapping, a list of (name, value) pairs or text"
        ) from None
    return urlencode(pairs)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects as ``requests`` does, logins only within the origin."""

    def redirect_request(  # noqa: PLR0917 - urllib's signature
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        """The request to send to ``newurl``, or None to stop (a non-HTTP target)."""
        target = urlsplit(newurl)
        if target.scheme not in ("http", "https"):
            return None
        method = req.get_method()
        body = req.data
        if (code == 303 and method != "HEAD") or (code in (301, 302) and method == "POST"):
            method, body = "GET", None
        kept = {
            name: value
            for name, value in req.headers.items()
            if body is not None or name.lower() not in ("content-length", "content-type")
        }
        if _origin(newurl) != _origin(req.full_url):
            kept = {k: v for k, v in kept.items() if k.lower() not in _LOGIN_HEADERS}
        return urllib.request.Request(  # noqa: S310 - http(s) only, checked above
            newurl,
            data=body,
            headers=kept,
            method=method,
            origin_req_host=req.origin_req_host,
            unverifiable=True,
        )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def exchange(
    request: Request,
    *,
    where: str,
    redact: Callable[[str], str] = str,
    max_bytes: int = MAX_BODY_BYTES,
) -> Answer:
    """Send ``request`` and read the answer (blocking).

    A success (2xx) is read in full; a 304 is returned as it is; any other status is
    returned without its body, for the caller to translate (:func:`status_failure`).

    Args:
        request: what to send.
        where: how messages name the request (a label without secrets).
        redact: applied to every message (server reason phrases included).
        max_bytes: the largest body read (decoded).

    Raises:
        TransientSourceError: the server cannot be reached, the connection broke, or a
            connection or read stalled longer than the timeout.
        SourceError: the TLS handshake failed, the body is too large, or its encoding is
            unknown.
        ConfigurationError: the URL is malformed.
    """
    opener = urllib.request.build_opener(_Redirects)
    prepared = urllib.request.Request(  # noqa: S310 - http(s) only, checked by prepare()
        request.url, data=request.body, headers=request.headers, method=request.method
    )
    try:
        with opener.open(prepared, timeout=request.timeout) as response:
            headers = {name.lower(): value for name, value in response.headers.items()}
            raw = _read(response, max_bytes, where)
            return Answer(
                response.status, response.reason or "", headers, _decode(raw, headers, where)
            )
    except urllib.error.HTTPError as exc:
        headers = {name.lower(): value for name, value in (exc.headers or {}).items()}
        exc.close()
        return Answer(exc.code, str(exc.reason or ""), headers)
    except urllib.error.URLError as exc:
        raise _transport_failure(exc.reason, request, where, redact) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _transport_failure(exc, request, where, redact) from None
    except ValueError:
        raise ConfigurationError(
            f"{request.method} {where} cannot be sent: its url or a header value is malformed"
            " once its templates are filled in (a line break in a header?)"
        ) from None


def _read(response: Any, max_bytes: int, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(
                f"{where} answered more than {max_bytes // (1024 * 1024)} MiB: a flow script"
                " is expected; check the url"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, headers: Mapping[str, str], where: str) -> bytes:
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        attempts = [zlib.MAX_WBITS | 16]
    elif encoding == "deflate":
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, else raw (as browsers)
    else:
        raise SourceError(
            f"{where} answered with Content-Encoding {encoding!r}, which cannot be decoded"
            " here: ask for gzip or no encoding (Accept-Encoding)"
        )
    for wbits in attempts:
        decoder = zlib.decompressobj(wbits)
        try:
            body = decoder.decompress(raw, MAX_BODY_BYTES + 1)
        except zlib.error:
            continue
        if len(body) > MAX_BODY_BYTES or decoder.unconsumed_tail:
            raise SourceError(f"{where} answered a body larger than the limit once decoded")
        return body
    raise SourceError(f"{where} answered a body that is not valid {encoding}")


def _transport_failure(
    reason: object, request: Request, where: str, redact: Callable[[str], str]
) -> SourceError:
    what = f"{request.method} {where}"
    if isinstance(reason, TimeoutError | socket.timeout):
        return TransientSourceError(
            f"{what} timed out after {request.timeout:g}s: the server is slow or unreachable;"
            " the pull is retried (raise the request's timeout if it is just slow)"
        )
    if isinstance(reason, ssl.SSLError):
        detail = getattr(reason, "verify_message", None) or getattr(reason, "reason", None)
        return SourceError(
            redact(
                f"{what}: the TLS handshake failed ({detail or type(reason).__name__}):"
                " check the server's certificate (SSL_CERT_FILE names extra CAs)"
            )
        )
    if isinstance(reason, OSError):
        detail = reason.strerror or type(reason).__name__
    elif isinstance(reason, http.client.HTTPException):
        detail = f"the connection broke ({type(reason).__name__})"
    else:
        detail = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return TransientSourceError(redact(f"cannot reach {what}: {detail}; the pull is retried"))


def status_failure(answer: Answer, *, what: str, redact: Callable[[str], str]) -> SourceError:
    """The error an unsuccessful ``answer`` to ``what`` (``GET <label>``) means.

    401/403 :class:`AuthenticationError`, 404/410 :class:`NotFoundError`, 408/425/429/5xx
    :class:`TransientSourceError`, anything else (another 4xx, a redirect not followed)
    :class:`SourceError`; one line, redacted.
    """
    kind = status_error(answer.status) or SourceError
    reason = " ".join(answer.reason.split())[:80]
    status = f"{answer.status} {reason}".strip()
    hints = {
        401: "check the credentials the request's templates fill in",
        403: "check the credentials the request's templates fill in and their permissions",
        404: "check the url",
        410: "check the url",
    }
    if answer.status in hints:
        hint = hints[answer.status]
    elif kind is TransientSourceError:
        hint = "the pull is retried"
    elif 300 <= answer.status < 400:
        hint = "a redirect that cannot be followed (to a non-HTTP URL, or a loop)"
    else:
        hint = "check the request's url, method, headers and body"
    return kind(redact(f"{what} answered {status}: {hint}"))
