"""HTTP peers the service talks to (a webhook receiver, a folder behind a token), on threads.

They are the other end of a protocol we speak, not mocks of our code; each test file
writes its handler, and :func:`serving` runs it on a free loopback port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from servers.procs import LOOPBACK, ThreadedHTTPServerHandle


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that writes no access log (the tests assert on what they record)."""

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@contextlib.contextmanager
def serving(name: str, handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 on a thread; yield ``http://127.0.0.1:PORT``.

    ``handler`` is a handler class or a factory of one (``functools.partial``). The server
    is stopped, its thread joined and its port checked closed, when the block ends.
    """
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    handle = ThreadedHTTPServerHandle(name, server)
    handle.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        handle.stop()
