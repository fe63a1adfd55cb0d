"""Smart-HTTP(S) git server: ``git http-backend`` as CGI behind Basic authentication.

A :class:`GitHTTPServer` serves every repository in ``git_project_root`` at
``http(s)://127.0.0.1:PORT/NAME.git``. It answers 401 with ``WWW-Authenticate: Basic
realm="git"`` unless the request carries the right ``Authorization: Basic`` header, records
every request (method, path, status, bytes, ``Authorization`` header seen), and can make a
repository look missing (404) or make the next requests fail. Tests may replace the login
check (:attr:`GitHTTPServer.accept`) and answer a host's REST API on the same server
(:attr:`GitHTTPServer.api`).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import secrets
import ssl
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest

from servers.gitrepo import UpstreamRepo, git_env, repo_relpath
from servers.procs import LOOPBACK, ThreadedHTTPServerHandle

USERNAME = "alice"
"""The one user the git HTTP servers accept."""

ApiReply = tuple[int, list[tuple[str, str]], bytes]
"""A reply of :attr:`GitHTTPServer.api`: status, headers, body."""
ApiHook = Callable[[str, str, Mapping[str, str]], "ApiReply | None"]
"""``api(method, path, headers) -> reply or None`` (see :attr:`GitHTTPServer.api`)."""


class RequestGate:
    """Requests held by :meth:`GitHTTPServer.holding`: count them, then let them through."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._held = 0
        self._open = False

    def wait(self) -> None:
        """Called by a request: count it and block until the gate opens."""
        with self._condition:
            self._held += 1
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._open, timeout=60)

    def wait_for_held(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until ``count`` requests are held; False if that did not happen in time."""
        with self._condition:
            return self._condition.wait_for(lambda: self._held >= count, timeout=timeout)

    def open(self) -> None:
        """Let every held request (and any later one) through."""
        with self._condition:
            self._open = True
            self._condition.notify_all()


@dataclass(frozen=True)
class GitRequest:
    """One request the git HTTP server answered."""

    method: str
    path: str
    query: str
    status: int
    request_bytes: int
    response_bytes: int
    authorization: str | None
    git_protocol: str | None
    command: str | None = None
    """The protocol v2 command of a POST (``ls-refs``, ``fetch``), else None."""

    @property
    def is_upload_pack(self) -> bool:
        """True for the ``POST …/git-upload-pack`` requests that transfer objects."""
        return self.method == "POST" and self.path.endswith("/git-upload-pack")


@dataclass(frozen=True)
class GitHTTPStats:
    """Request counters since the last :meth:`GitHTTPServer.reset_stats`."""

    requests: int
    """All requests, including refused ones."""
    upload_pack_requests: int
    """``POST …/git-upload-pack`` requests (fetch negotiation and pack transfer)."""
    upload_pack_bytes: int
    """Response body bytes of those requests (the packs and negotiation replies)."""
    unauthorized: int
    """Requests answered 401."""


class _Server(ThreadingHTTPServer):
    """The HTTP server object; holds the state that request handlers share."""

    daemon_threads = True
    owner: GitHTTPServer

    def handle_error(self, request: object, client_address: object) -> None:
        """Hand connection-level errors to the owner instead of printing them."""
        self.owner.connection_error()


class _Handler(BaseHTTPRequestHandler):
    """Authenticates, then hands the request to ``git http-backend`` as CGI."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        context = self.server.owner.ssl_context
        if context is not None:
            self.request.settimeout(self.timeout)
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.connection, ssl.SSLSocket):
                # Close TLS properly, or GnuTLS (git's libcurl) reports a truncated reply.
                with contextlib.suppress(OSError, ValueError):
                    self.connection.unwrap()
                self.connection.close()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean: requests are recorded in ``request_log`` instead."""

    def do_GET(self) -> None:
        """Serve ``info/refs`` and the dumb-protocol files through http-backend."""
        self._handle()

    def do_POST(self) -> None:
        """Serve ``git-upload-pack`` / ``git-receive-pack`` through http-backend."""
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        url = urlsplit(self.path)
        path = unquote(url.path)
        authorization = self.headers.get("Authorization")
        status, headers, payload = owner.respond(
            method=self.command,
            path=path,
            query=url.query,
            body=body,
            authorization=authorization,
            content_type=self.headers.get("Content-Type", ""),
            content_encoding=self.headers.get("Content-Encoding"),
            git_protocol=self.headers.get("Git-Protocol"),
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        # Record before replying: once the client has its answer the log must show it.
        owner.record(
            GitRequest(
                method=self.command,
                path=path,
                query=url.query,
                status=status,
                request_bytes=len(body),
                response_bytes=len(payload),
                authorization=authorization,
                git_protocol=self.headers.get("Git-Protocol"),
                command=_v2_command(body, self.headers.get("Content-Encoding")),
            )
        )
        self._reply(status, headers, payload)


def _v2_command(body: bytes, encoding: str | None) -> str | None:
    """The ``command=...`` of a protocol v2 request body (its first pkt-line)."""
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return None
    if len(body) < 4 or not body[4:].startswith(b"command="):
        return None
    try:
        length = int(body[:4], 16)
    except ValueError:
        return None
    return body[12:length].decode("ascii", "replace").strip() or None


def _parse_cgi(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response into status, headers and body."""
    ends = [(index, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (index := output.find(sep)) >= 0]
    if not ends:
        return 502, [("Content-Type", "text/plain")], b"malformed CGI output\n"
    end, sep_len = min(ends)
    head = output[:end].decode("latin-1")
    body = output[end + sep_len :]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name and name.lower() != "content-length":
            headers.append((name, value))
    return status, headers, body


class GitHTTPServer:
    """``git http-backend`` behind HTTP Basic auth, on a thread, optionally over TLS.

    Attributes: ``username`` ("alice"), ``password`` (random per session), ``port``,
    ``base_url``, ``ca_file`` (the self-signed certificate, TLS only, else ``None``),
    ``request_log`` (list of :class:`GitRequest`), ``seen_authorization_headers`` (every
    ``Authorization`` value received, in order), ``errors`` (http-backend failures and
    connection errors, as text).
    """

    def __init__(
        self,
        project_root: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.project_root = project_root
        self.username = USERNAME
        self.password = secrets.token_urlsafe(18)
        self.ca_file: Path | None = cert_file
        self.ssl_context: ssl.SSLContext | None = None
        if cert_file is not None:
            self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_context.load_cert_chain(cert_file, key_file)
        self.scheme = "https" if self.ssl_context else "http"
        self.request_log: list[GitRequest] = []
        self.seen_authorization_headers: list[str] = []
        self.errors: list[str] = []
        self._hidden: set[str] = set()
        self._failures: list[int] = []
        self._protocol_v2 = True
        self._gate: RequestGate | None = None
        self._lock = threading.Lock()
        #: When set, decides each request's login instead of the session's Basic login:
        #: ``accept(authorization header or None, path) -> bool`` (per-host login rules).
        self.accept: Callable[[str | None, str], bool] | None = None
        #: When set, answers requests that are not git's (a host's REST API on the same
        #: server, such as GitLab's ``GET /api/v4/projects/ID``) before any login check:
        #: ``api(method, path, headers with lower-case names) -> (status, headers, body)``,
        #: or None to handle the request as git's.
        self.api: ApiHook | None = None
        server = _Server((LOOPBACK, 0), _Handler)
        server.owner = self
        self._handle = ThreadedHTTPServerHandle(f"git-{self.scheme}", server)
        self.port = self._handle.port
        self.base_url = f"{self.scheme}://{LOOPBACK}:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving on the thread and wait until the port accepts connections."""
        self._handle.start()

    def stop(self) -> None:
        """Stop serving; asserts the thread ended and the port is closed."""
        self._handle.stop()

    # --- URLs and credentials --------------------------------------------------------------

    def url_for(self, repo: UpstreamRepo | str) -> str:
        """``http(s)://127.0.0.1:PORT/NAME.git`` for a repository or a name (no credentials)."""
        return f"{self.base_url}/{quote(repo_relpath(repo))}"

    def url_with_credentials(
        self, repo: UpstreamRepo | str, username: str | None = None, password: str | None = None
    ) -> str:
        """Like :meth:`url_for` with ``user:password@`` in it (for redaction tests)."""
        user = quote(username if username is not None else self.username, safe="")
        secret = quote(password if password is not None else self.password, safe="")
        return f"{self.scheme}://{user}:{secret}@{LOOPBACK}:{self.port}/{quote(repo_relpath(repo))}"

    def auth_header(self, username: str | None = None, password: str | None = None) -> str:
        """The ``Authorization`` header value for the given (default: the right) credentials."""
        raw = f"{username or self.username}:{password or self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def extra_header_env(
        self, username: str | None = None, password: str | None = None
    ) -> dict[str, str]:
        """Environment entries making git send :meth:`auth_header` (``http.extraHeader``).

        Merge into :func:`~servers.gitrepo.git_env`. Over TLS also sets
        ``GIT_SSL_CAINFO``.
        """
        env = {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": "Authorization: " + self.auth_header(username, password),
        }
        env.update(self.ssl_env())
        return env

    def ssl_env(self) -> dict[str, str]:
        """``{"GIT_SSL_CAINFO": ca_file}`` over TLS, ``{}`` over plain HTTP."""
        return {"GIT_SSL_CAINFO": str(self.ca_file)} if self.ca_file else {}

    # --- behaviour switches ----------------------------------------------------------------

    def hide(self, repo: UpstreamRepo | str) -> None:
        """Answer 404 for every request to this repository until :meth:`unhide`."""
        with self._lock:
            self._hidden.add(repo_relpath(repo))

    def unhide(self, repo: UpstreamRepo | str) -> None:
        """Serve the repository again after :meth:`hide`."""
        with self._lock:
            self._hidden.discard(repo_relpath(repo))

    @contextlib.contextmanager
    def hidden(self, repo: UpstreamRepo | str) -> Iterator[None]:
        """Context manager: the repository answers 404 inside the block."""
        self.hide(repo)
        try:
            yield
        finally:
            self.unhide(repo)

    @contextlib.contextmanager
    def protocol_v0_only(self) -> Iterator[None]:
        """Ignore ``Git-Protocol`` (answer as a server older than protocol v2) inside."""
        self._protocol_v2 = False
        try:
            yield
        finally:
            self._protocol_v2 = True

    @contextlib.contextmanager
    def holding(self) -> Iterator[RequestGate]:
        """Hold every request inside until the gate opens (on leaving, at the latest)."""
        gate = RequestGate()
        self._gate = gate
        try:
            yield gate
        finally:
            self._gate = None
            gate.open()

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` authenticated requests with ``status`` (e.g. 500, 503)."""
        with self._lock:
            self._failures.extend([status] * count)

    # --- statistics ------------------------------------------------------------------------

    def record(self, entry: GitRequest) -> None:
        """Append one request to the log (called by the handler)."""
        with self._lock:
            self.request_log.append(entry)
            if entry.authorization is not None:
                self.seen_authorization_headers.append(entry.authorization)

    def reset_stats(self) -> None:
        """Forget the request log, the seen headers and the errors."""
        with self._lock:
            self.request_log.clear()
            self.seen_authorization_headers.clear()
            self.errors.clear()

    def requests_for(self, repo: UpstreamRepo | str | None = None) -> list[GitRequest]:
        """The logged requests, optionally only those to one repository."""
        with self._lock:
            log = list(self.request_log)
        if repo is None:
            return log
        prefix = f"/{repo_relpath(repo)}/"
        return [r for r in log if r.path.startswith(prefix)]

    def stats(self, repo: UpstreamRepo | str | None = None) -> GitHTTPStats:
        """Counters over :meth:`requests_for` ``(repo)`` since the last :meth:`reset_stats`."""
        log = self.requests_for(repo)
        packs = [r for r in log if r.is_upload_pack]
        return GitHTTPStats(
            requests=len(log),
            upload_pack_requests=len(packs),
            upload_pack_bytes=sum(r.response_bytes for r in packs),
            unauthorized=sum(1 for r in log if r.status == 401),
        )

    # --- request handling ------------------------------------------------------------------

    def respond(
        self,
        *,
        method: str,
        path: str,
        query: str,
        body: bytes,
        authorization: str | None,
        content_type: str,
        content_encoding: str | None,
        git_protocol: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Compute the response (status, headers, body) for one request."""
        gate = self._gate
        if gate is not None:
            gate.wait()
        api = self.api
        if api is not None:
            reply = api(method, path, headers or {})
            if reply is not None:
                return reply
        text = [("Content-Type", "text/plain; charset=utf-8")]
        accept = self.accept
        if not (
            accept(authorization, path)
            if accept is not None
            else authorization is not None
            and secrets.compare_digest(authorization.encode(), self.auth_header().encode())
        ):
            return 401, [*text, ("WWW-Authenticate", 'Basic realm="git"')], b"unauthorized\n"
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            hidden = path.lstrip("/").split("/", 1)[0] in self._hidden
        if failure is not None:
            return failure, text, b"injected failure\n"
        if hidden:
            return 404, text, b"repository not found\n"
        env = git_env(
            GIT_PROJECT_ROOT=str(self.project_root),
            GIT_HTTP_EXPORT_ALL="1",
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL="HTTP/1.1",
            REQUEST_METHOD=method,
            PATH_INFO=path,
            QUERY_STRING=query,
            CONTENT_TYPE=content_type,
            CONTENT_LENGTH=str(len(body)),
            REMOTE_USER=self.username,
            REMOTE_ADDR=LOOPBACK,
        )
        if git_protocol and self._protocol_v2:
            env["HTTP_GIT_PROTOCOL"] = git_protocol
        if content_encoding:
            env["HTTP_CONTENT_ENCODING"] = content_encoding
        proc = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            env=env,
            check=False,
            timeout=120,
        )
        if proc.stderr:
            with self._lock:
                self.errors.append(f"{method} {path}: {proc.stderr.decode(errors='replace')}")
        if not proc.stdout:
            return 500, text, b"http-backend failed\n" + proc.stderr
        return _parse_cgi(proc.stdout)

    def connection_error(self) -> None:
        """Record connection-level errors (TLS handshake refused, reset...) quietly.

        A connection closed before the TLS handshake (the readiness probe) is not an error.
        """
        if isinstance(sys.exc_info()[1], ssl.SSLEOFError):
            return
        with self._lock:
            self.errors.append(traceback.format_exc())


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Create a throwaway certificate for ``IP:127.0.0.1``; return ``(cert, key)`` paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def git_http_server(git_project_root: Path) -> Iterator[GitHTTPServer]:
    """Session-wide smart-HTTP git server over ``git_project_root`` with Basic auth."""
    server = GitHTTPServer(git_project_root)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def git_https_server(
    git_project_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitHTTPServer]:
    """Like ``git_http_server`` over TLS; trust it with ``.ca_file`` (``GIT_SSL_CAINFO``)."""
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("git-tls"))
    server = GitHTTPServer(git_project_root, cert_file=cert, key_file=key)
    server.start()
    yield server
    server.stop()
