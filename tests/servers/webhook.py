"""An HTTP server that stores and answers flow scripts, as a Webhook storage's peer, on a thread.

It is the kind of service Prefect 1's ``Webhook`` storage talked to: a request to a path
in :attr:`WebhookServer.files` (any method) answers the file, with its ``ETag`` and
``Last-Modified`` when it has them, and honours ``If-None-Match`` and
``If-Modified-Since`` on a GET with a 304; a request to ``/upload/<rest>`` stores its body
as ``/flows/<rest>`` (with an ETag of its sha256) and answers 201 with JSON. Every request
must carry :attr:`WebhookServer.required_headers` (401 otherwise), so a test sees that the
templated headers arrived filled in; :attr:`WebhookServer.statuses` makes a path answer a
status, :attr:`WebhookServer.redirects` a 307. Every request is recorded with the status
it was answered with. It is the peer we talk to, not a mock of our code.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from servers.procs import LOOPBACK, ThreadedHTTPServerHandle

UPLOAD_PREFIX = "/upload/"
FLOWS_PREFIX = "/flows/"


@dataclass(frozen=True)
class WebhookRequest:
    """One request the server answered.

    Attributes:
        method: the HTTP method.
        path: the unquoted path.
        query: the query, parsed (name -> values).
        headers: the headers, names in lower case.
        body: the body as received.
        status: the status it was answered with.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Resource:
    """A file the server holds: its body and the validators it answers with.

    ``gzip`` sends the body gzip-encoded (``Content-Encoding: gzip``).
    """

    body: bytes
    etag: str | None = None
    last_modified: datetime | None = None
    gzip: bool = False

    @property
    def last_modified_text(self) -> str | None:
        """``Last-Modified`` as HTTP writes it, or None."""
        if self.last_modified is None:
            return None
        return email.utils.format_datetime(self.last_modified, usegmt=True)


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110's weak comparison of ``If-None-Match`` with ``etag``."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, owner: WebhookServer) -> None:
        self.owner = owner  # before the base class handles the request
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean: requests are recorded instead."""

    def _answer(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="flows"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        owner = self.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, answer, extra = self._decide(path, headers, body)
        with owner.lock:
            owner.requests.append(
                WebhookRequest(
                    self.command, path, parse_qs(parts.query), headers, body, int(status)
                )
            )
        self._answer(status, answer, extra)

    def _decide(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        owner = self.owner
        with owner.lock:
            required = dict(owner.required_headers)
            status = owner.statuses.get(path)
            redirect = owner.redirects.get(path)
            resource = owner.files.get(path)
        for name, value in required.items():
            if headers.get(name.lower()) != value:
                return HTTPStatus.UNAUTHORIZED, b'{"detail": "not authenticated"}', {}
        if status is not None:
            return status, b"", {}
        if redirect is not None:
            return HTTPStatus.TEMPORARY_REDIRECT, b"", {"Location": redirect}
        if path.startswith(UPLOAD_PREFIX) and self.command in ("POST", "PUT", "PATCH"):
            rest = path[len(UPLOAD_PREFIX) :]
            stored = Resource(body, etag=f'"{hashlib.sha256(body).hexdigest()[:16]}"')
            with owner.lock:
                owner.files[FLOWS_PREFIX + rest] = stored
            answer = json.dumps({"id": rest, "location": FLOWS_PREFIX + rest}).encode()
            return HTTPStatus.CREATED, answer, {"Content-Type": "application/json"}
        if resource is None:
            return HTTPStatus.NOT_FOUND, b'{"detail": "Not Found"}', {}
        validators: dict[str, str] = {}
        if resource.etag:
            validators["ETag"] = resource.etag
        if resource.last_modified_text:
            validators["Last-Modified"] = resource.last_modified_text
        if self.command == "GET" and self._not_modified(resource, headers):
            return HTTPStatus.NOT_MODIFIED, b"", validators
        content = resource.body
        if resource.gzip:
            content = gzip.compress(content)
            validators["Content-Encoding"] = "gzip"
        return HTTPStatus.OK, content, {"Content-Type": "text/x-python", **validators}

    @staticmethod
    def _not_modified(resource: Resource, headers: dict[str, str]) -> bool:
        none_match = headers.get("if-none-match")
        if none_match is not None:  # RFC 9110: If-Modified-Since is then ignored
            return resource.etag is not None and _etag_matches(none_match, resource.etag)
        since = headers.get("if-modified-since")
        if since is None or resource.last_modified is None:
            return False
        try:
            when = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        return resource.last_modified.replace(microsecond=0) <= when

    def do_GET(self) -> None:
        """Answer the file (or 304), a status, a redirect, or 404."""
        self._handle()

    def do_POST(self) -> None:
        """Store an upload, or answer as a GET does (without conditions)."""
        self._handle()

    def do_PUT(self) -> None:
        """As :meth:`do_POST`."""
        self._handle()

    def do_PATCH(self) -> None:
        """As :meth:`do_POST`."""
        self._handle()


class WebhookServer(ThreadedHTTPServerHandle):
    """The flow server on 127.0.0.1, served on a thread by :meth:`start` until :meth:`stop`.

    Attributes:
        files: path -> :class:`Resource` answered there.
        requests: every :class:`WebhookRequest`, in order.
        required_headers: headers (name -> exact value) every request must carry.
        statuses: path -> a status answered there (no body).
        redirects: path -> the ``Location`` of a 307 answered there.
    """

    def __init__(self) -> None:
        self.files: dict[str, Resource] = {}
        self.requests: list[WebhookRequest] = []
        self.required_headers: dict[str, str] = {}
        self.statuses: dict[str, int] = {}
        self.redirects: dict[str, str] = {}
        self.lock = threading.Lock()
        server = ThreadingHTTPServer((LOOPBACK, 0), partial(_Handler, owner=self))
        server.daemon_threads = True
        super().__init__("webhook", server)
        self.origin = f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        return self.origin + path

    def put(
        self,
        path: str,
        body: bytes,
        *,
        etag: str | None = None,
        last_modified: datetime | None = None,
        gzip: bool = False,
    ) -> Resource:
        """Serve ``body`` at ``path`` from now on (replacing what was there)."""
        resource = Resource(body, etag, last_modified, gzip)
        with self.lock:
            self.files[path] = resource
        return resource

    def requests_to(self, path: str) -> list[WebhookRequest]:
        """The requests made to ``path``, in order."""
        with self.lock:
            return [request for request in self.requests if request.path == path]


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    """A fresh flow server per test, holding nothing."""
    server = WebhookServer()
    server.start()
    yield server
    server.stop()
