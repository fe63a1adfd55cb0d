"""A key-value HTTP server that speaks Prefect 2.0's KV storage protocol, on a thread.

``POST /storage/KEY`` stores the request body (a JSON value) under ``KEY`` and answers
``null``; ``GET /storage/KEY`` answers the stored JSON, or 404 for a key it does not hold.
With ``credentials`` set, every request needs that HTTP Basic login (401 otherwise).
Every request is recorded. It is the peer a :class:`KVServerStorageBlock` talks to, not a
mock of our code.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from servers.procs import LOOPBACK, ThreadedHTTPServerHandle

PREFIX = "/storage/"


@dataclass(frozen=True)
class KVRequest:
    """One request the server answered: method, unquoted key, body, Authorization header."""

    method: str
    key: str
    body: bytes
    authorization: str | None


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, owner: KVServer) -> None:
        self.owner = owner  # before the base class handles the request
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean: requests are recorded instead."""

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="kv"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _key(self) -> str | None:
        path = urlsplit(self.path).path
        return unquote(path[len(PREFIX) :]) if path.startswith(PREFIX) else None

    def _allowed(self) -> bool:
        expected = self.owner.credentials
        if expected is None:
            return True
        login = base64.b64encode(":".join(expected).encode()).decode()
        return self.headers.get("Authorization") == f"Basic {login}"

    def _handle(self, body: bytes) -> None:
        owner = self.owner
        key = self._key()
        with owner.lock:
            owner.requests.append(
                KVRequest(self.command, key or "", body, self.headers.get("Authorization"))
            )
        if not self._allowed():
            self._answer(HTTPStatus.UNAUTHORIZED)
        elif not key:
            self._answer(HTTPStatus.NOT_FOUND)
        elif self.command == "POST" and not _is_json(body):
            self._answer(HTTPStatus.UNPROCESSABLE_ENTITY, b'{"detail": "not JSON"}')
        elif self.command == "POST":
            with owner.lock:
                owner.store[key] = body
            self._answer(HTTPStatus.OK, b"null")
        elif key in owner.store:
            self._answer(HTTPStatus.OK, owner.store[key])
        else:
            self._answer(HTTPStatus.NOT_FOUND, b'{"detail": "Not Found"}')

    def do_GET(self) -> None:
        """Answer the JSON stored under the key, or 404."""
        self._handle(b"")

    def do_POST(self) -> None:
        """Store the JSON body under the key."""
        self._handle(self.rfile.read(int(self.headers.get("Content-Length") or 0)))


class KVServer(ThreadedHTTPServerHandle):
    """A KV server on 127.0.0.1, served on a thread by :meth:`start` until :meth:`stop`.

    Attributes: ``port``, ``api_address`` (``http://127.0.0.1:P/storage``), ``store`` (key
    -> the JSON body as received), ``requests`` (:class:`KVRequest` list), ``credentials``
    (``(user, password)`` every request must log in with, or None).
    """

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.requests: list[KVRequest] = []
        self.credentials: tuple[str, str] | None = None
        self.lock = threading.Lock()
        server = ThreadingHTTPServer((LOOPBACK, 0), partial(_Handler, owner=self))
        server.daemon_threads = True
        super().__init__("kv", server)
        self.api_address = f"http://{LOOPBACK}:{self.port}/storage"

    def address_with_login(self, user: str, password: str) -> str:
        """``api_address`` with ``user:password@`` in it."""
        return f"http://{user}:{password}@{LOOPBACK}:{self.port}/storage"


@pytest.fixture
def kv_server() -> Iterator[KVServer]:
    """A fresh KV server per test, holding nothing."""
    server = KVServer()
    server.start()
    yield server
    server.stop()
