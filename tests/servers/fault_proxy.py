"""A fault-injecting HTTP/1.1 reverse proxy for one upstream server, on a thread.

Put a :class:`FaultProxy` between the code under test and a real server (moto, the git
smart-HTTP server) to make that server misbehave on demand, deterministically:

* :meth:`FaultProxy.fail_next` answers the next requests itself with an error status
  (``slow_down=True``: S3's ``503 SlowDown`` XML), without forwarding them;
* :meth:`FaultProxy.reset_next` closes the next connections with a TCP reset instead of
  answering;
* :meth:`FaultProxy.set_mode` switches every request to ``"forward"`` (the default),
  ``"slow_down"``, ``"reset"`` or ``"stall"`` (read the request, never answer) until switched
  back;
* :meth:`FaultProxy.hold` pauses one matching request, before forwarding it or after
  relaying part of its response body, until the test releases it: the test learns the exact
  moment through :attr:`Hold.reached` and can act (kill a client, change upstream data)
  while the transfer is frozen there;
* :attr:`FaultProxy.on_request` is called with each request before it is forwarded (to
  change upstream data "while it is being downloaded").

Requests keep their ``Host`` header, so signatures computed by clients (S3 SigV4) still
verify upstream. Every answered request is recorded in :attr:`FaultProxy.log`. The proxy
listens on 127.0.0.1 only; :meth:`FaultProxy.stop` releases every hold and stall, joins
every handler thread, and asserts the port is closed.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import pytest

from servers.procs import LOOPBACK, ThreadedHTTPServerHandle

Mode = Literal["forward", "slow_down", "reset", "stall"]

SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId>"
    b"</Error>"
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)
_CHUNK = 16 * 1024


@dataclass(frozen=True)
class ProxiedRequest:
    """One request as the proxy saw it, and what became of it."""

    method: str
    path: str
    status: int
    """The status sent back; 0 when the connection was reset or stalled."""
    response_bytes: int
    fault: str
    """``""`` when forwarded untouched, else the fault applied (``"503"``, ``"reset"``...)."""


@dataclass
class Hold:
    """A pause of one matching request; see :meth:`FaultProxy.hold`.

    ``reached`` is set once the request is frozen at the chosen point; ``release()`` lets
    it continue (when it is still connected).
    """

    matches: Callable[[str, str], bool]
    after_bytes: int | None
    cut: bool = False
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    taken: bool = False

    def release(self) -> None:
        """Let the held request continue."""
        self.released.set()

    def wait(self, timeout: float = 30) -> None:
        """Wait until the request is frozen at the hold point; fail after ``timeout``."""
        if not self.reached.wait(timeout):
            raise AssertionError(f"no request reached the hold point within {timeout}s")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultProxy

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        # Track handler threads and their sockets, so that stop() can end both.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self.owner.track(thread, request)
        thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up mid-answer are expected here: stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded in ``FaultProxy.log`` instead."""

    def do_GET(self) -> None:
        """Proxy a GET."""
        self._proxy()

    def do_HEAD(self) -> None:
        """Proxy a HEAD."""
        self._proxy()

    def do_POST(self) -> None:
        """Proxy a POST."""
        self._proxy()

    def do_PUT(self) -> None:
        """Proxy a PUT."""
        self._proxy()

    def do_DELETE(self) -> None:
        """Proxy a DELETE."""
        self._proxy()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        fault = owner.next_fault()
        if owner.on_request is not None:
            owner.on_request(self.command, self.path)
        if fault == "reset":
            owner.record(ProxiedRequest(self.command, self.path, 0, 0, "reset"))
            self._reset()
            return
        if fault == "stall":
            owner.record(ProxiedRequest(self.command, self.path, 0, 0, "stall"))
            owner.stopping.wait()
            self._reset()
            return
        if fault is not None:
            status, payload = fault
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            owner.record(ProxiedRequest(self.command, self.path, status, len(payload), str(status)))
            return
        hold = owner.take_hold(self.command, self.path)
        if hold is not None and hold.after_bytes is None:
            hold.reached.set()
            owner.wait_released(hold)
        self._forward(body, hold)

    def _forward(self, body: bytes, hold: Hold | None) -> None:
        owner = self.server.owner
        upstream = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            response = upstream.getresponse()
            length_header = response.getheader("Content-Length")
            streamed = length_header is not None and self.command != "HEAD"
            payload = b"" if streamed else response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header(
                "Content-Length", length_header if length_header is not None else str(len(payload))
            )
            self.end_headers()
            sent = 0
            if streamed:
                while chunk := response.read(_CHUNK):
                    if (
                        hold is not None
                        and hold.after_bytes is not None
                        and not hold.reached.is_set()
                        and hold.after_bytes - sent <= len(chunk)
                    ):
                        rest = self._hold_at(hold, chunk, sent, response.status)
                        if rest is None:  # cut
                            return
                        chunk, sent = rest, hold.after_bytes
                    self.wfile.write(chunk)
                    sent += len(chunk)
            elif self.command != "HEAD":
                self.wfile.write(payload)
                sent = len(payload)
            self.wfile.flush()
            if hold is not None and not hold.reached.is_set():
                owner.untake(hold)  # the answer was too short: hold a later request
            owner.record(ProxiedRequest(self.command, self.path, response.status, sent, ""))
        except OSError:
            # The client or the upstream went away mid-answer: drop the connection.
            self.close_connection = True
        finally:
            upstream.close()

    def _hold_at(self, hold: Hold, chunk: bytes, sent: int, status: int) -> bytes | None:
        """Relay ``chunk`` up to the hold point, then hold (or cut); the rest, or None if cut."""
        assert hold.after_bytes is not None, "the caller checked"
        room = hold.after_bytes - sent
        self.wfile.write(chunk[:room])
        self.wfile.flush()
        if hold.cut:
            self.server.owner.record(
                ProxiedRequest(self.command, self.path, status, hold.after_bytes, "cut")
            )
            hold.reached.set()
            self._reset()
            return None
        hold.reached.set()
        self.server.owner.wait_released(hold)
        return chunk[room:]

    def _reset(self) -> None:
        """Close the client connection with a TCP reset (SO_LINGER 0)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Attributes: ``port``, ``url`` (``http://127.0.0.1:PORT``), ``log`` (every
    :class:`ProxiedRequest`, in order), ``on_request`` (an optional
    ``callback(method, path)`` run before each request is handled).
    """

    def __init__(self, upstream_port: int, upstream_host: str = LOOPBACK) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.log: list[ProxiedRequest] = []
        self.on_request: Callable[[str, str], None] | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._mode: Mode = "forward"
        self._queued: list[tuple[int, bytes] | Literal["reset"]] = []
        self._holds: list[Hold] = []
        self._threads: list[tuple[threading.Thread, socket.socket]] = []
        server = _Server((LOOPBACK, 0), _Handler)
        server.owner = self
        self._handle = ThreadedHTTPServerHandle("fault-proxy", server)
        self.port = self._handle.port
        self.url = f"http://{LOOPBACK}:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving and wait until the port accepts connections."""
        self._handle.start()

    def stop(self) -> None:
        """Release holds and stalls, stop serving, join every handler thread."""
        self.stopping.set()
        with self._lock:
            for hold in self._holds:
                hold.release()
        self._handle.stop()
        with self._lock:
            threads = list(self._threads)
        for _, connection in threads:
            # Wake handlers blocked reading an idle keep-alive connection.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread, _ in threads:
            thread.join(10)
            assert not thread.is_alive(), "fault-proxy: a handler thread is still running"

    def track(self, thread: threading.Thread, connection: socket.socket) -> None:
        """Remember a handler thread and its connection (called by the server)."""
        with self._lock:
            self._threads = [(t, c) for t, c in self._threads if t.is_alive()]
            self._threads.append((thread, connection))

    # --- faults ----------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        """Apply ``mode`` to every request from now on (``"forward"`` to heal)."""
        with self._lock:
            self._mode = mode

    def fail_next(self, count: int = 1, status: int = 503, *, slow_down: bool = False) -> None:
        """Answer the next ``count`` requests with ``status`` (S3 SlowDown XML if asked)."""
        body = SLOW_DOWN_BODY if slow_down else b"<Error><Code>InternalError</Code></Error>"
        with self._lock:
            self._queued.extend([(status, body)] * count)

    def reset_next(self, count: int = 1) -> None:
        """Reset the connections of the next ``count`` requests instead of answering."""
        with self._lock:
            self._queued.extend(["reset"] * count)

    def hold(
        self,
        matches: Callable[[str, str], bool] = lambda method, path: True,
        *,
        after_bytes: int | None = None,
        cut: bool = False,
    ) -> Hold:
        """Pause the next request for which ``matches(method, path)`` is true.

        With ``after_bytes=None`` the request is held before it is forwarded; otherwise its
        response headers and the first ``after_bytes`` bytes of its body are relayed, then
        it is held, or with ``cut`` its connection is reset there (recorded as ``"cut"``).
        Only one request is held per call.
        """
        hold = Hold(matches, after_bytes, cut)
        with self._lock:
            self._holds.append(hold)
        return hold

    @contextlib.contextmanager
    def mode(self, mode: Mode) -> Iterator[None]:
        """Context manager: ``mode`` inside the block, forwarding afterwards."""
        self.set_mode(mode)
        try:
            yield
        finally:
            self.set_mode("forward")

    # --- used by the handler ---------------------------------------------------------------

    def next_fault(self) -> tuple[int, bytes] | Literal["reset", "stall"] | None:
        """The fault for the request being handled, if any."""
        with self._lock:
            if self._queued:
                return self._queued.pop(0)
            mode = self._mode
        if mode == "slow_down":
            return 503, SLOW_DOWN_BODY
        if mode in ("reset", "stall"):
            return mode
        return None

    def take_hold(self, method: str, path: str) -> Hold | None:
        """The first untaken hold matching this request, now taken."""
        with self._lock:
            for hold in self._holds:
                if not hold.taken and hold.matches(method, path):
                    hold.taken = True
                    return hold
        return None

    def untake(self, hold: Hold) -> None:
        """Offer a hold whose request ended before its hold point to the next request."""
        with self._lock:
            hold.taken = False

    def wait_released(self, hold: Hold) -> None:
        """Block the handler until the hold is released or the proxy stops."""
        while not hold.released.wait(0.05):
            if self.stopping.is_set():
                return

    def record(self, entry: ProxiedRequest) -> None:
        """Append one request to the log."""
        with self._lock:
            self.log.append(entry)

    def requests(self, method: str | None = None) -> list[ProxiedRequest]:
        """The logged requests, optionally only those with ``method``."""
        with self._lock:
            log = list(self.log)
        return [r for r in log if method is None or r.method == method]


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """Factory ``fault_proxy(upstream_port) -> FaultProxy``; each is stopped at teardown."""
    started: list[FaultProxy] = []

    def start(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port)
        proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
