"""The real servers of the bench: the test suite's moto S3 and smart-HTTP git servers.

They are imported from ``tests/servers`` (the same code the tests run against) through
their plain classes, not pytest fixtures. Every server started here is registered on an
:class:`contextlib.ExitStack`, so it is stopped when the bench ends, fails or is
interrupted.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import proc_cpu_seconds
from bench.proxy import CountingProxy

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from servers.git_http import GitHTTPServer  # noqa: E402
from servers.procs import free_port  # noqa: E402
from servers.s3 import S3Server, start_s3_server  # noqa: E402

__all__ = ["GitEndpoint", "S3Endpoint", "ServerUsage", "free_port"]


@dataclass(frozen=True)
class ServerUsage:
    """What one server sent and was asked, measured at the server, for one run."""

    requests: int
    bytes_sent: int
    by_kind: dict[str, int]
    """Requests by kind: for S3 ``LIST``, ``GET``, ``HEAD`` and others by method; for git
    ``info/refs`` and ``upload-pack``."""
    reads: tuple[str, ...] = ()
    """S3 only: the keys of the objects read (GET), as ``bucket/key``."""
    server_cpu_seconds: float | None = None
    """S3 only: CPU time moto spent meanwhile (it is the bottleneck of cold pulls)."""


class S3Endpoint:
    """moto's S3 server behind a :class:`CountingProxy`; clients use :attr:`endpoint_url`."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.server: S3Server = start_s3_server(workdir)
        stack.callback(self.server.stop)
        self.proxy = CountingProxy(self.server.port)
        self.proxy.start()
        stack.callback(self.proxy.stop)
        self.endpoint_url = f"http://127.0.0.1:{self.proxy.port}"
        self.key = self.server.key
        self.secret = self.server.secret
        self._cpu_mark = 0.0

    def client(self) -> Any:
        """A botocore S3 client talking to moto directly (data set-up, not counted)."""
        return self.server.client()

    def reset(self) -> None:
        """Start counting requests and bytes from now."""
        self.server.reset_requests()
        self.proxy.reset()
        self._cpu_mark = proc_cpu_seconds(self.server.process.pid)

    def usage(self, bucket: str | None = None) -> ServerUsage:
        """Requests (moto's access log) and bytes (the proxy) since :meth:`reset`."""
        kinds: Counter[str] = Counter()
        reads: list[str] = []
        for request in self.server.requests():
            if bucket is not None and not request.path.lstrip("/").startswith(bucket):
                continue
            kind = _s3_kind(request.method, request.path, request.query)
            kinds[kind] += 1
            if kind == "GET":
                reads.append(request.path.lstrip("/"))
        return ServerUsage(
            requests=sum(kinds.values()),
            bytes_sent=self.proxy.counts().bytes_down,
            by_kind=dict(kinds),
            reads=tuple(reads),
            server_cpu_seconds=proc_cpu_seconds(self.server.process.pid) - self._cpu_mark,
        )


def _s3_kind(method: str, path: str, query: str) -> str:
    parts = path.strip("/").split("/", 1)
    if method == "GET" and (len(parts) == 1 or not parts[1]):
        return "LIST"
    return method


class GitEndpoint:
    """The smart-HTTP git server (Basic auth) over ``project_root``, counting per request."""

    def __init__(self, stack: contextlib.ExitStack, project_root: Path) -> None:
        project_root.mkdir(parents=True, exist_ok=True)
        self.server = GitHTTPServer(project_root)
        self.server.start()
        stack.callback(self.server.stop)
        self.username = self.server.username
        self.password = self.server.password

    def url_for(self, name: str) -> str:
        """``http://127.0.0.1:PORT/NAME.git``."""
        return self.server.url_for(name)

    def auth_env(self) -> dict[str, str]:
        """Environment that makes plain git (and Prefect's git) send the credentials."""
        return self.server.extra_header_env()

    def reset(self) -> None:
        """Start counting from now."""
        self.server.reset_stats()

    def usage(self) -> ServerUsage:
        """Requests and response bytes since :meth:`reset`."""
        log = self.server.requests_for()
        kinds: Counter[str] = Counter()
        for entry in log:
            if entry.is_upload_pack:
                kinds["upload-pack"] += 1
            elif entry.path.endswith("/info/refs"):
                kinds["info/refs"] += 1
            else:
                kinds[f"{entry.method} other"] += 1
            if entry.status == 401:
                kinds["401"] += 1
        return ServerUsage(
            requests=len(log),
            bytes_sent=sum(entry.response_bytes for entry in log),
            by_kind=dict(kinds),
        )

    def errors(self) -> list[str]:
        """http-backend failures since the last reset."""
        return list(self.server.errors)
