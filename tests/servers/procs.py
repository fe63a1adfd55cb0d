"""Start, wait for and stop the test servers: the one shared implementation.

Every subprocess server of the suite goes through :func:`start_process`, and every in-process
(threaded) HTTP server through :class:`ThreadedHTTPServerHandle`. Both follow the project's
rules for test servers:

* listen on ``127.0.0.1`` only, on a port chosen at run time;
* a subprocess starts in its own session, hence its own process group;
* readiness is polled every ~50 ms against a deadline, and a server that does not come up
  fails with an error that quotes its captured output;
* teardown signals the whole group, waits, then asserts that no process of it is left and
  that the port no longer accepts connections.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"
"""The only address any test server listens on."""

POLL_INTERVAL = 0.05
"""Seconds between two readiness (or shutdown) checks."""

START_TIMEOUT = 30.0
"""Default deadline, in seconds, for a server to become ready."""

STOP_TIMEOUT = 10.0
"""Default deadline, in seconds, for a server to go away after being signalled."""

_OUTPUT_TAIL = 4000
_PORT_TAKEN = re.compile(r"in use|EADDRINUSE|cannot bind|could not bind", re.IGNORECASE)


class ServerStartError(RuntimeError):
    """A test server did not become ready before its deadline, or exited while starting."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process may grab it in between;
    :func:`start_process` retries on a fresh port when a server exits during start-up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = LOOPBACK) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] = lambda: "",
    interval: float = POLL_INTERVAL,
) -> None:
    """Call ``predicate`` every ``interval`` seconds until it is true.

    Raises :class:`TimeoutError` naming ``what`` and quoting ``details()`` when ``timeout``
    seconds pass first. Exceptions raised by ``predicate`` propagate.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            extra = details()
            raise TimeoutError(
                f"{what}: not done after {timeout:.1f} s" + (f"\n{extra}" if extra else "")
            )
        time.sleep(interval)


def assert_port_closed(port: int, *, timeout: float = STOP_TIMEOUT, name: str = "server") -> None:
    """Assert that ``127.0.0.1:port`` stops accepting connections within ``timeout`` seconds."""
    try:
        wait_until(lambda: not port_is_open(port), timeout=timeout, what=f"{name} port {port}")
    except TimeoutError as exc:
        raise AssertionError(f"{name}: port {port} still accepts connections") from exc


def http_status(url_path: str, port: int, *, method: str = "GET", timeout: float = 1.0) -> int:
    """Return the status of a plain-HTTP request to ``127.0.0.1:port``, or 0 if it failed.

    Meant for readiness checks: connection errors and timeouts read as "not ready" (0).
    """
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, url_path)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return 0
    else:
        return response.status
    finally:
        conn.close()


def tcp_banner_starts_with(port: int, prefix: bytes, *, timeout: float = 1.0) -> bool:
    """Tell whether a server on ``127.0.0.1:port`` greets a new connection with ``prefix``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            data = b""
            while len(data) < len(prefix):
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(prefix)


# --- process tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    """One line of the process table, as read from ``/proc/PID/stat``."""

    pid: int
    ppid: int
    pgid: int
    state: str
    command: str

    @property
    def alive(self) -> bool:
        """False for zombies and dead processes: they hold no port and run no code."""
        return self.state not in {"Z", "X"}


def process_table() -> dict[int, ProcInfo]:
    """Read every process's pid, parent, group, state and command name from ``/proc``."""
    table: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:  # the process went away while we were reading
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        command = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = ProcInfo(
            pid=int(entry.name),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            state=fields[0],
            command=command,
        )
    return table


def descendants(pid: int, table: Mapping[int, ProcInfo] | None = None) -> set[int]:
    """Return the pids of all live descendants of ``pid`` (children, grandchildren, ...)."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: set[int] = set()
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        if child not in found and table[child].alive:
            found.add(child)
            stack.extend(children.get(child, []))
    return found


# --- subprocess servers --------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """A server subprocess started by :func:`start_process`, leader of its own group.

    ``output()`` returns what it wrote to stdout and stderr so far (both go to ``log_path``).
    ``stop()`` is idempotent and asserts a clean shutdown.
    """

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """Process id of the server (also its process group id)."""
        return self.popen.pid

    def output(self, tail: int | None = None) -> str:
        """Return the captured stdout/stderr of the server, or its last ``tail`` characters."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else text[-tail:]

    def describe(self) -> str:
        """A short report for error messages: command state and the tail of its output."""
        code = self.popen.poll()
        state = "running" if code is None else f"exited with status {code}"
        out = self.output(_OUTPUT_TAIL).rstrip() or "(no output)"
        return f"{self.name} (pid {self.pid}, port {self.port}) {state}; output:\n{out}"

    def _members(self) -> set[int]:
        """Live processes of the server's group plus live descendants of its leader."""
        table = process_table()
        members = {p.pid for p in table.values() if p.pgid == self.pid and p.alive}
        if self.pid in table:
            members |= descendants(self.pid, table)
        return members

    def _signal(self, pids: set[int], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for pid in pids:  # children that moved to their own session (sshd does that)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the whole process group and assert that nothing of it is left.

        Sends SIGTERM to the group (and to any descendant that left it), waits up to
        ``timeout`` seconds, escalates to SIGKILL, then asserts that no live process of the
        group or of the leader's tree remains and that the port is closed.
        """
        if self._stopped:
            return
        self._stopped = True
        tracked = self._members()
        self._signal(tracked, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(tracked | self._members(), signal.SIGKILL)
            self.popen.wait(timeout=timeout)

        def leftovers() -> set[int]:
            table = process_table()
            in_group = {p.pid for p in table.values() if p.pgid == self.pid and p.alive}
            return in_group | {pid for pid in tracked if pid in table and table[pid].alive}

        try:
            wait_until(lambda: not leftovers(), timeout=timeout, what=f"{self.name} shutdown")
        except TimeoutError:
            left = leftovers()
            self._signal(left, signal.SIGKILL)
            raise AssertionError(
                f"{self.name}: processes left after SIGTERM (now killed): {sorted(left)}"
            ) from None
        assert_port_closed(self.port, timeout=timeout, name=self.name)


def start_process(
    name: str,
    argv: Callable[[int], Sequence[str | os.PathLike[str]]],
    *,
    ready: Callable[[int], bool],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    timeout: float = START_TIMEOUT,
    attempts: int = 3,
) -> ManagedProcess:
    """Start a server subprocess in its own session and wait until ``ready(port)`` is true.

    ``argv(port)`` builds the command line for a port (a fresh free port per attempt unless
    ``port`` is given). Output goes to a log file in ``log_dir``. If the process exits before
    it is ready because another process took the port first (its output says the address is
    in use), it is retried on a new port up to ``attempts`` times. Raises
    :class:`ServerStartError` quoting the server's output when it exits for another reason or
    never becomes ready; the process group is stopped in that case.
    """
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port()
        log_path = log_dir / f"{name}-{chosen}-{attempt}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [os.fspath(a) for a in argv(chosen)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        proc = ManagedProcess(name=name, port=chosen, popen=popen, log_path=log_path)
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                failures.append(proc.describe())
                _stop_quietly(proc, failures)
                if port is None and _PORT_TAKEN.search(proc.output()):
                    break  # lost the race for the port: try another one
                raise ServerStartError(f"{name} exited during start-up: " + "\n".join(failures))
            if ready(chosen):
                return proc
            if time.monotonic() >= deadline:
                report = [proc.describe()]
                _stop_quietly(proc, report)
                raise ServerStartError(
                    f"{name} did not become ready within {timeout:.1f} s: " + "\n".join(report)
                )
            time.sleep(POLL_INTERVAL)
    raise ServerStartError(
        f"{name} could not get a free port in {attempts} attempts:\n" + "\n---\n".join(failures)
    )


def _stop_quietly(proc: ManagedProcess, report: list[str]) -> None:
    """Stop a server that failed to start, adding any shutdown problem to ``report``."""
    try:
        proc.stop()
    except AssertionError as exc:
        report.append(f"while stopping it: {exc}")


# --- threaded HTTP servers -----------------------------------------------------------------


class ThreadedHTTPServerHandle:
    """Run a :class:`ThreadingHTTPServer` on a thread; stop it and assert it is gone.

    The server must already be bound (bind to ``("127.0.0.1", 0)`` to get a free port
    atomically). ``stop()`` is idempotent.
    """

    def __init__(self, name: str, server: ThreadingHTTPServer) -> None:
        self.name = name
        self.server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name=f"{name}-{self.port}",
            daemon=True,
        )
        self._stopped = False

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start serving and wait until the port accepts connections."""
        self._thread.start()
        wait_until(lambda: port_is_open(self.port), timeout=timeout, what=f"{self.name} start")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop serving, close the socket, and assert the thread ended and the port closed."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name}: server thread still running"
        assert_port_closed(self.port, timeout=timeout, name=self.name)


# --- access logs ---------------------------------------------------------------------------

_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


@dataclass(frozen=True)
class LoggedRequest:
    """One request found in a server's access log."""

    method: str
    path: str
    query: str
    status: int


class AccessLog:
    """Requests a server subprocess logged in the common ``"METHOD /path HTTP/1.1" 200`` form.

    Both werkzeug (moto) and :mod:`http.server` (the GCS emulator) write that line before
    they send the response body, so once a client has its answer the line is in the log.
    ``reset()`` moves a mark to the end of the log; ``requests()`` returns what came after.
    """

    def __init__(self, process: ManagedProcess, ignore_prefixes: tuple[str, ...] = ()) -> None:
        self._process = process
        self._ignore = ignore_prefixes
        self._mark = 0

    def reset(self) -> None:
        """Forget the requests logged so far."""
        self._mark = self._process.log_path.stat().st_size

    def requests(self) -> list[LoggedRequest]:
        """Requests logged since the last :meth:`reset`, minus the ignored path prefixes."""
        with self._process.log_path.open("rb") as log:
            log.seek(self._mark)
            text = log.read().decode("utf-8", errors="replace")
        found: list[LoggedRequest] = []
        for match in _ACCESS_LINE.finditer(text):
            target = urlsplit(match["target"])
            path = unquote(target.path)
            if not path.startswith(self._ignore):
                found.append(
                    LoggedRequest(match["method"], path, target.query, int(match["status"]))
                )
        return found

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Number of :meth:`requests` with this method and/or path prefix."""
        return sum(
            1
            for r in self.requests()
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
        )
