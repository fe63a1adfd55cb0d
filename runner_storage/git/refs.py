"""Asking an http(s) remote for a few refs without starting git: protocol v2 ``ls-refs``.

A daemon asks every git source's remote "which commit is this ref at?" at each interval.
``git ls-remote`` answers with two processes (git and git-remote-http) and 10-20 ms of CPU
for a line of text, and it lists every ref of the remote, then filters. Over http and https
this module sends what git sends, in process: ``GET info/refs`` with ``Git-Protocol:
version=2``, then ``POST git-upload-pack`` with ``command=ls-refs``, only the wanted
``ref-prefix`` lines, and the same ``Authorization`` header git would get (see
:func:`runner_storage.git.environment.git_environment`).

It is a shortcut, never the authority. It is taken only when git would do nothing else:
git runs without system or global configuration, so what could change git's behaviour is
a proxy (``*_proxy`` variables), a client certificate (``GIT_SSL_CERT``), a user agent of
one's own, or a ``~/.netrc`` that holds a login for the host (libcurl, under git, reads
it), and with any of those :func:`list_refs` returns None at once. Anything
unexpected also returns None: a redirect, a server without protocol v2, an HTTP error, a
TLS or connection failure, an answer that does not parse. The caller then runs ``git
ls-remote``, whose answer (or error, with git's wording and its hints) stands.
"""

from __future__ import annotations

import http.client
import logging
import netrc
import os
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence

from runner_storage.git.errors import refusal_stderr

__all__ = ["RefusedError", "list_refs"]

logger = logging.getLogger("runner_storage.git")

#: Seconds without progress before a request gives up, as ``http.lowSpeedTime`` for git.
TIMEOUT = 60.0
#: The largest answer read (a remote listing many refs under one prefix stays far below).
MAX_ANSWER = 8 * 1024 * 1024

_ADVERTISEMENT = "application/x-git-upload-pack-advertisement"
_RESULT = "application/x-git-upload-pack-result"
_FLUSH = 0

_contexts: dict[tuple[str | None, str | None, float], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


class _Unusable(Exception):
    """The shortcut does not apply; git must answer. The message is for debug logs."""


class RefusedError(Exception):
    """The server answered the first request with an HTTP error, as it would answer git.

    Asking git again would only repeat the refusal (a second failed login, for one), so
    the caller turns :attr:`stderr`, the line git prints for this answer, into the error
    git's would have been (see :func:`runner_storage.git.errors.git_failure`).
    """

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def list_refs(
    url: str,
    names: Sequence[str],
    *,
    symrefs: bool,
    authorization: str | None,
    env: Mapping[str, str],
    user_agent: str,
) -> list[tuple[str, str]] | None:
    """``(object id or "ref: TARGET", refname)`` pairs for exactly ``names``, or None.

    Blocking; run it in a worker thread. The pairs are those ``git ls-remote [--symref]
    URL NAMES...`` prints for refs named exactly as asked (``refs/tags/v1^{}`` asks for
    the commit an annotated tag points to).

    Args:
        url: an ``http`` or ``https`` repository URL without credentials.
        names: full ref names (``HEAD``, ``refs/heads/main``, ``refs/tags/v1^{}``).
        symrefs: also give ``("ref: TARGET", name)`` for symbolic refs such as ``HEAD``.
        authorization: the ``Authorization`` header value, or None.
        env: git's environment: proxies and TLS settings are read from it.
        user_agent: the ``User-Agent`` git would send.

    Returns:
        None whenever git might answer differently; the caller then asks git.

    Raises:
        RefusedError: the server answered with an HTTP error status (not a redirect).
    """
    try:
        parts = _direct(url, env)
        if parts is None:
            return None
        headers = {"User-Agent": user_agent, "Git-Protocol": "version=2", "Pragma": "no-cache"}
        if authorization is not None:
            headers["Authorization"] = authorization
        listing = _exchange(parts, env, headers=headers, names=names, symrefs=symrefs)
        return _pairs(listing, names, symrefs)
    except RefusedError:
        raise
    except (_Unusable, OSError, http.client.HTTPException, ValueError) as exc:
        # Never the message of an OSError verbatim: it may quote the URL.
        logger.debug("asking git instead of ls-refs over http: %s", type(exc).__name__)
        return None


def _direct(url: str, env: Mapping[str, str]) -> urllib.parse.SplitResult | None:
    """``url`` split, if nothing in git's environment would make git reach it otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return None
    if any(env.get(k) for k in ("GIT_SSL_CERT", "GIT_SSL_KEY", "GIT_HTTP_USER_AGENT")):
        return None  # a client certificate or a user agent of one's own
    if _proxied(parts.hostname, env) or _netrc_login(parts.hostname, env):
        return None
    return parts


def _netrc_login(host: str, env: Mapping[str, str]) -> bool:
    """Whether git's libcurl would log in to ``host`` from the user's ``~/.netrc``.

    It does whenever the file has an entry for the host or a ``default`` one; a file that
    does not parse here counts as having one, so git decides.
    """
    home = env.get("HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".netrc")
    if not os.path.isfile(path):
        return False
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError):
        return True


def _exchange(
    parts: urllib.parse.SplitResult,
    env: Mapping[str, str],
    *,
    headers: Mapping[str, str],
    names: Sequence[str],
    symrefs: bool,
) -> bytes:
    """The capability advertisement, then the ``ls-refs`` answer, on one connection."""
    url, base = parts.geturl(), parts.path.rstrip("/")
    connection = _connection(parts, env)
    try:
        try:
            advertised = _request(
                connection,
                "GET",
                f"{base}/info/refs?service=git-upload-pack",
                body=None,
                headers={**headers, "Accept": "*/*"},
                content_type=_ADVERTISEMENT,
            )
        except _Status as refused:
            if refused.status < 400:  # a redirect: git follows it, and says so
                raise
            raise RefusedError(refusal_stderr(url, refused.status)) from None
        capabilities = _capabilities(advertised)
        request_headers = {
            **headers,
            "Content-Type": "application/x-git-upload-pack-request",
            "Accept": _RESULT,
        }
        return _request(
            connection,
            "POST",
            f"{base}/git-upload-pack",
            body=_ls_refs_request(names, symrefs, capabilities.get("object-format")),
            headers=request_headers,
            content_type=_RESULT,
        )
    finally:
        connection.close()


def _proxied(host: str, env: Mapping[str, str]) -> bool:
    """Whether libcurl might go through a proxy to ``host`` with this environment.

    True when any ``*_proxy`` variable is set unless ``no_proxy`` names the host (or a
    domain of it, or ``*``); an entry not understood here counts as no match, so git
    decides.
    """
    proxies = {key.lower(): value for key, value in env.items() if key.lower().endswith("_proxy")}
    if not any(value for key, value in proxies.items() if key != "no_proxy"):
        return False
    host = host.lower()
    for raw in proxies.get("no_proxy", "").split(","):
        entry = raw.strip().lower().lstrip(".")
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return False
    return True


def _connection(
    parts: urllib.parse.SplitResult, env: Mapping[str, str]
) -> http.client.HTTPConnection:
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "http":
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=_tls_context(env))


def _tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """Verify as git does: against ``GIT_SSL_CAINFO``/``GIT_SSL_CAPATH`` alone if set."""
    cafile, capath = env.get("GIT_SSL_CAINFO") or None, env.get("GIT_SSL_CAPATH") or None
    stamp = os.stat(cafile).st_mtime if cafile else 0.0  # a renewed bundle is read again
    key = (cafile, capath, stamp)
    with _contexts_lock:
        context = _contexts.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=cafile, capath=capath)
            _contexts.clear()
            _contexts[key] = context
    return context


def _request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    content_type: str,
) -> bytes:
    connection.request(method, path, body=body, headers=dict(headers))
    response = connection.getresponse()
    data = response.read(MAX_ANSWER + 1)
    if response.status != 200:
        raise _Status(response.status)
    if response.getheader("Content-Type", "").split(";")[0].strip() != content_type:
        raise _Unusable("not a smart HTTP answer")
    if len(data) > MAX_ANSWER:
        raise _Unusable("answer too large")
    return data


class _Status(_Unusable):
    """An answer other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _packets(data: bytes) -> Iterator[bytes | int]:
    """pkt-lines: payloads as bytes, special packets (flush, delim, end) as ints."""
    position = 0
    while position < len(data):
        size = int(data[position : position + 4], 16)
        if size < 4:
            yield size
            position += 4
            continue
        if position + size > len(data):
            raise _Unusable("truncated pkt-line")
        yield data[position + 4 : position + size]
        position += size


def _capabilities(advertised: bytes) -> dict[str, str]:
    packets = list(_packets(advertised))
    if packets and isinstance(packets[0], bytes) and packets[0].startswith(b"# service="):
        packets = packets[2:]  # the smart HTTP banner and its flush
    if not packets or packets[0] != b"version 2\n":
        raise _Unusable("the server does not speak protocol v2")
    capabilities: dict[str, str] = {}
    for packet in packets[1:]:
        if not isinstance(packet, bytes):
            break
        key, _, value = packet.decode("utf-8", "replace").rstrip("\n").partition("=")
        capabilities[key] = value
    if "ls-refs" not in capabilities:
        raise _Unusable("the server has no ls-refs")
    return capabilities


def _pkt(text: str) -> bytes:
    data = text.encode()
    return b"%04x" % (len(data) + 4) + data


def _ls_refs_request(names: Sequence[str], symrefs: bool, object_format: str | None) -> bytes:
    out = [_pkt("command=ls-refs\n")]
    if object_format:
        out.append(_pkt(f"object-format={object_format}\n"))
    out.append(b"0001")
    out.append(_pkt("peel\n"))
    if symrefs:
        out.append(_pkt("symrefs\n"))
    for prefix in dict.fromkeys(name.removesuffix("^{}") for name in names):
        out.append(_pkt(f"ref-prefix {prefix}\n"))
    out.append(b"0000")
    return b"".join(out)


def _pairs(answer: bytes, names: Sequence[str], symrefs: bool) -> list[tuple[str, str]]:
    wanted = set(names)
    pairs: list[tuple[str, str]] = []
    for packet in _packets(answer):
        if packet == _FLUSH:
            return pairs
        if not isinstance(packet, bytes):
            raise _Unusable("unexpected special packet")
        if packet.startswith(b"ERR "):
            raise _Unusable("the server reported an error")
        oid, name, *attributes = packet.decode("utf-8").rstrip("\n").split(" ")
        if len(oid) not in (40, 64) or not all(c in "0123456789abcdef" for c in oid):
            raise _Unusable("not an object id")
        if name not in wanted and f"{name}^{{}}" not in wanted:
            continue
        found = dict(a.split(":", 1) for a in attributes if ":" in a)
        if symrefs and "symref-target" in found and name in wanted:
            pairs.append((f"ref: {found['symref-target']}", name))
        if name in wanted:
            pairs.append((oid, name))
        if "peeled" in found and f"{name}^{{}}" in wanted:
            pairs.append((found["peeled"], f"{name}^{{}}"))
    raise _Unusable("the ref list did not end")
