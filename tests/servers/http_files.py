"""Plain HTTP file server with directory listings, like ``python -m http.server``.

Runs on a thread, serves a fresh temporary directory per test, supports single byte
ranges (fsspec reads blocks with ``Range``), and records every request.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

from servers.procs import LOOPBACK, ThreadedHTTPServerHandle

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: HTTPFileServer


class _Handler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus request recording and single-range GETs."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean: requests are recorded in ``requests`` instead."""

    def _record(self) -> None:
        owner = self.server.owner
        with owner.lock:
            owner.requests.append((self.command, unquote(urlsplit(self.path).path)))

    def _overridden(self) -> bool:
        """Answer with the status set by :meth:`HTTPFileServer.answering`, if any."""
        status = self.server.owner.overrides.get(unquote(urlsplit(self.path).path))
        if status is None:
            return False
        self.send_error(status)
        return True

    def do_HEAD(self) -> None:
        """Answer a HEAD request (recorded)."""
        self._record()
        if not self._overridden():
            super().do_HEAD()

    def do_GET(self) -> None:
        """Answer a GET request (recorded), honouring a single ``Range: bytes=a-b``."""
        self._record()
        if self._overridden():
            return
        spec = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        match = _RANGE.match(spec.strip()) if spec else None
        if match is None or not path.is_file() or not (match[1] or match[2]):
            super().do_GET()
            return
        size = path.stat().st_size
        if match[1]:
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
        else:
            start, end = max(size - int(match[2]), 0), size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with path.open("rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        self.wfile.write(body)


class HTTPFileServer:
    """Serves ``root`` over plain HTTP on 127.0.0.1, with HTML directory listings.

    Attributes: ``root`` (the served directory), ``port``, ``base_url``, ``requests`` (list
    of ``(method, path)`` received, path unquoted without query).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.overrides: dict[str, int] = {}
        self.lock = threading.Lock()
        server = _Server((LOOPBACK, 0), partial(_Handler, directory=os.fspath(root)))
        server.owner = self
        self._handle = ThreadedHTTPServerHandle("http-files", server)
        self.port = self._handle.port
        self.base_url = f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Start serving and wait until the port accepts connections."""
        self._handle.start()

    def stop(self) -> None:
        """Stop serving; assert the thread ended and the port is closed."""
        self._handle.stop()

    def url_for(self, relpath: str = "") -> str:
        """URL of ``relpath`` under ``root`` (a directory's URL should end with ``/``)."""
        return f"{self.base_url}/{quote(relpath.lstrip('/'))}"

    def write(self, relpath: str, data: bytes | str) -> Path:
        """Create (or overwrite) a file under ``root``, making parent directories."""
        target = self.root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        return target

    @contextlib.contextmanager
    def answering(self, status: int, path: str) -> Iterator[None]:
        """Answer every request for ``path`` (``/flows/sub/``) with ``status`` inside."""
        self.overrides[path] = status
        try:
            yield
        finally:
            del self.overrides[path]

    def reset_requests(self) -> None:
        """Forget the recorded requests."""
        with self.lock:
            self.requests.clear()


@pytest.fixture
def http_file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPFileServer]:
    """A fresh HTTP file server per test, serving an empty temporary ``root``."""
    server = HTTPFileServer(tmp_path_factory.mktemp("http-files"))
    server.start()
    yield server
    server.stop()
