"""The daemon and CLI as real subprocesses, for end-to-end tests of the service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from servers.procs import LOOPBACK, ManagedProcess, free_port, http_status, start_process

BIN = Path(sys.executable).parent
RUNNER_STORAGE = str(BIN / "runner-storage")


def cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``runner-storage ARGS`` to completion and return its result."""
    return subprocess.run(
        [RUNNER_STORAGE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def config_file(tmp_path: Path, body: str) -> Path:
    """A config with its root under ``tmp_path``, HTTP off, and ``body`` appended."""
    path = tmp_path / "config.toml"
    path.write_text(f'root = "{tmp_path / "root"}"\nhttp_port = 0\n{body}')
    return path


@dataclass
class RunningDaemon:
    """A ``runner-storage run`` subprocess and ways to talk to it."""

    process: ManagedProcess
    root: Path
    config: Path

    @property
    def port(self) -> int:
        """The HTTP port."""
        return self.process.port

    def request(
        self, path: str, *, method: str = "GET", headers: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Send one HTTP request; return the status and the body."""
        req = urllib.request.Request(
            f"http://{LOOPBACK}:{self.port}{path}", method=method, headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def sources(self) -> dict[str, dict[str, Any]]:
        """``GET /sources`` as a mapping by source name."""
        status, body = self.request("/sources")
        assert status == 200, body
        return {entry["name"]: entry for entry in json.loads(body)["sources"]}

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line the daemon wrote so far."""
        lines = []
        for line in self.process.output().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of one event."""
        return [line for line in self.logs() if line.get("event") == name]

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the daemon process."""
        os.kill(self.process.pid, sig)

    def wait_exit(self, timeout: float = 20) -> int:
        """Wait for the process to exit and return its code."""
        return self.process.popen.wait(timeout=timeout)


class DaemonFactory(Protocol):
    """Starts a daemon from config text (``{root}`` is filled in) and extra environment."""

    def __call__(
        self, config: str, *, env: Mapping[str, str] | None = None, wait_ready: bool = False
    ) -> RunningDaemon:
        """Start the daemon."""
        ...


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` every 50 ms until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    """Factory for daemons under test; each is stopped (and checked gone) at teardown."""
    started: list[RunningDaemon] = []
    logs = tmp_path / "daemon-logs"
    logs.mkdir()

    def start(
        config: str, *, env: Mapping[str, str] | None = None, wait_ready: bool = False
    ) -> RunningDaemon:
        root = tmp_path / f"root{len(started)}"
        path = tmp_path / f"config{len(started)}.toml"
        path.write_text(config.replace("{root}", str(root)))
        port = free_port()
        environ = {
            **os.environ,
            "RUNNER_STORAGE_HTTP_PORT": str(port),
            "RUNNER_STORAGE_LOG_FORMAT": "json",
            **(env or {}),
        }
        process = start_process(
            "runner-storage",
            lambda _port: [RUNNER_STORAGE, "run", "--config", str(path)],
            ready=lambda p: http_status("/livez", p) == 200,
            log_dir=logs,
            env=environ,
            port=port,
        )
        daemon = RunningDaemon(process, root, path)
        started.append(daemon)
        if wait_ready:
            wait_for(lambda: daemon.request("/readyz")[0] == 200, what="readiness")
        return daemon

    yield start
    for daemon in started:
        daemon.process.stop()
