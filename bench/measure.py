"""Measuring the pulling process: wall time, peak memory, CPU, and /proc sampling.

Peak memory: Linux carries a process's peak RSS across ``execve``, so anything forked
from the bench (a Python process holding the data sets) would inherit the bench's own
peak. Whole-process runs therefore go through GNU time (``/usr/bin/time -f %M``): a small
process that forks the contender and reads its ``ru_maxrss`` (the largest resident size
of it and of its reaped descendants, e.g. git's helpers) with ``wait4``. Wall time is
measured here around it. Long-lived pulling processes are :class:`Worker`\\ s
(``bench/worker.py``), which time each pull around ``pull_code()`` themselves and report
their own peak (``VmHWM``, reset before every pull through ``/proc/self/clear_refs``).
Every process is started in its own session and its whole group is killed on timeout,
error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
GNU_TIME = "/usr/bin/time"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class MeasureError(RuntimeError):
    """A measured process failed or timed out; the message quotes its output."""


@dataclass(frozen=True)
class ProcessRun:
    """One whole-process run."""

    seconds: float
    maxrss_kb: int
    cpu_seconds: float
    returncode: int


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
    timeout: float = 600.0,
    check: bool = True,
) -> ProcessRun:
    """Run ``argv`` to completion under GNU time; return its wall time, peak RSS and CPU.

    Output goes to ``log`` (appended). Raises :class:`MeasureError` on timeout, or on a
    non-zero exit when ``check`` is true.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    stats = log.with_name(log.name + ".time")
    command = [GNU_TIME, "-f", "%M %U %S", "-o", str(stats), "--", *argv]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        started = time.perf_counter()
        popen = subprocess.Popen(
            command,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        status = _wait(popen.pid, started + timeout)
    except BaseException:
        _kill_group(popen.pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(popen.pid, 0)
        popen.returncode = -9
        raise
    seconds = time.perf_counter() - started
    _kill_group(popen.pid)  # anything it left behind in its group
    if status is None:
        popen.returncode = -9
        raise MeasureError(f"{argv[0]} timed out after {timeout:.0f} s; log: {log}")
    popen.returncode = os.waitstatus_to_exitcode(status)
    maxrss_kb, cpu = _read_stats(stats)
    run = ProcessRun(
        seconds=seconds, maxrss_kb=maxrss_kb, cpu_seconds=cpu, returncode=popen.returncode
    )
    if check and run.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise MeasureError(f"{' '.join(argv[:3])} exited {run.returncode}:\n{tail}")
    return run


def _read_stats(path: Path) -> tuple[int, float]:
    """GNU time's ``%M %U %S`` line (the last one; a failure adds a line before it)."""
    try:
        line = path.read_text().strip().splitlines()[-1]
        rss, user, system = line.split()
        return int(rss), float(user) + float(system)
    except (OSError, IndexError, ValueError):
        return 0, float("nan")


def _wait(pid: int, deadline: float) -> int | None:
    """Reap ``pid`` (blocking on a pidfd until it exits or the deadline passes)."""
    fd = os.pidfd_open(pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    _kill_group(pid)
                    os.waitpid(pid, 0)
                    return None
                if selector.select(min(left, 1.0)):
                    break
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return status


class Worker:
    """A long-lived pulling process (``bench/worker.py``) driven over a pipe."""

    def __init__(self, python: Path, env: Mapping[str, str], log: Path, cwd: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = log.open("ab")
        self.log = log
        self.popen = subprocess.Popen(
            [str(python), str(WORKER_SCRIPT)],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            start_new_session=True,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.popen.pid

    def call(self, request: Mapping[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """Send one request and wait for its answer; raise MeasureError if it failed."""
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        self.popen.stdin.write((json.dumps(request) + "\n").encode())
        self.popen.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MeasureError(f"worker timed out on {request.get('op')}; log {self.log}")
                if selector.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise MeasureError(f"worker exited; log {self.log}")
                    self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            trace = "\n".join(answer.get("trace", []))
            raise MeasureError(f"worker: {answer.get('error')}\n{trace}")
        return answer

    def stop(self) -> None:
        """Ask the worker to exit; kill its group if it does not."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.popen.stdin is not None
                self.popen.stdin.write(b'{"op": "exit"}\n')
                self.popen.stdin.close()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(self.popen.pid)
                self.popen.wait(timeout=10)
        _kill_group(self.popen.pid)
        with contextlib.suppress(OSError, ValueError):
            if self.popen.stdout is not None:
                self.popen.stdout.close()
        self._log_file.close()


# --- /proc ------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``: its CPU and its reaped children's."""
    own, children = proc_cpu_split(pid)
    return own + children


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """``pid``'s own CPU seconds (utime + stime) and its reaped children's (cutime + cstime)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14 -> index 11.
    ticks = [int(v) for v in fields[11:15]]
    return (ticks[0] + ticks[1]) / CLOCK_TICKS, (ticks[2] + ticks[3]) / CLOCK_TICKS


def proc_rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


def live_children(pid: int) -> list[int]:
    """Direct and indirect live children of ``pid`` (via /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = list(parents.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(parents.get(child, []))
    return found
