"""A counting TCP reverse proxy: the bytes a server sends, measured at the server's door.

moto's access log counts requests but not bytes, so every S3 client of the bench talks to
moto through this proxy. It forwards bytes unchanged in both directions (HTTP keep-alive
and pipelining included), with ``TCP_NODELAY`` on both legs so it adds no Nagle delays,
and counts what it forwarded: a byte is counted before the client can have received it,
so once a client is done, the counters hold everything it was sent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ProxyCounts:
    """What went through the proxy since the last reset."""

    bytes_down: int
    """Bytes from the server to clients (responses)."""
    bytes_up: int
    """Bytes from clients to the server (requests)."""
    connections: int
    """Connections accepted."""


class CountingProxy:
    """Listen on ``127.0.0.1:port`` and forward every connection to ``upstream_port``."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(512)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._down = self._up = self._connections = 0
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def start(self) -> None:
        """Start accepting connections."""
        self._acceptor.start()

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._down = self._up = self._connections = 0

    def counts(self) -> ProxyCounts:
        """The counters since the last :meth:`reset`."""
        with self._lock:
            return ProxyCounts(self._down, self._up, self._connections)

    def stop(self) -> None:
        """Stop accepting, close every open connection, and wait for the threads."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in list(self._threads):
            thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections += 1
                self._open.update((client, server))
                self._threads = [t for t in self._threads if t.is_alive()]
            done = threading.Barrier(2, action=lambda c=client, s=server: self._close(c, s))
            for source, target, down in ((client, server, False), (server, client, True)):
                thread = threading.Thread(
                    target=self._pump, args=(source, target, down, done), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(
        self, source: socket.socket, target: socket.socket, down: bool, done: threading.Barrier
    ) -> None:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        try:
            while True:
                count = source.recv_into(buffer)
                if not count:
                    break
                with self._lock:
                    if down:
                        self._down += count
                    else:
                        self._up += count
                target.sendall(view[:count])
        except OSError:
            pass
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(timeout=60)

    def _close(self, client: socket.socket, server: socket.socket) -> None:
        with self._lock:
            self._open.discard(client)
            self._open.discard(server)
        client.close()
        server.close()
