"""Shared tools of the fault, hostile-input and secrets tests.

* comparing a published tree with an upstream revision (git blob ids, or file contents);
* running the CLI frozen at an exact point (:mod:`fault_points`) and killing it with -9;
* killing a process together with every process it started (git children run in sessions
  of their own, so a process group kill would miss them);
* listing the leftovers a killed pull may leave, and snapshotting directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers.gitrepo import run_git
from servers.procs import descendants, process_table

FAULT_POINTS = str(Path(__file__).with_name("fault_points.py"))

#: ``path -> (git mode, blob id)``: what a tree holds, as ``git ls-tree -r`` says it.
TreeListing = dict[str, tuple[str, str]]


def blob_id(data: bytes) -> str:
    """The git blob id (SHA-1) of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def tree_listing(root: Path) -> TreeListing:
    """What the directory ``root`` holds, in git's terms (regular files and symlinks).

    Empty directories do not appear, as in git. Anything that is neither a regular file,
    a symlink nor a directory is listed with mode ``"other"``.
    """
    found: TreeListing = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [
            *filenames,
            *(d for d in dirnames if os.path.islink(os.path.join(directory, d))),
        ]:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("120000", blob_id(os.fsencode(os.readlink(path))))
            elif stat.S_ISREG(info.st_mode):
                mode = "100755" if info.st_mode & 0o100 else "100644"
                found[relative] = (mode, blob_id(Path(path).read_bytes()))
            else:
                found[relative] = ("other", "")
    return found


def upstream_listing(repo: Path, sha: str) -> TreeListing:
    """``git ls-tree -r`` of commit ``sha`` in the repository ``repo``."""
    out = run_git("ls-tree", "-r", "-z", "--full-tree", sha, cwd=repo).stdout
    listing: TreeListing = {}
    for record in out.split("\0"):
        if record:
            meta, _, path = record.partition("\t")
            mode, _, oid = meta.split(" ")
            listing[path] = (mode, oid)
    return listing


def content_listing(files: Mapping[str, bytes]) -> TreeListing:
    """The :data:`TreeListing` of a mapping of relative paths to contents."""
    return {path: ("100644", blob_id(data)) for path, data in files.items()}


# --- processes -----------------------------------------------------------------------------


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every live descendant at once, as a cgroup or OOM kill would."""
    victims = {pid} | descendants(pid)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def wait_gone(pids: set[int], timeout: float = 10) -> None:
    """Wait until none of ``pids`` is alive (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        table = process_table()
        alive = {pid for pid in pids if pid in table and table[pid].alive}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes still alive after SIGKILL: {sorted(alive)}")
        time.sleep(0.02)


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal (state ``T``)."""
    info = process_table().get(pid)
    return info is not None and info.state in ("T", "t")


@dataclass
class CLIRun:
    """A ``runner-storage`` subprocess started through :mod:`fault_points`."""

    popen: subprocess.Popen[bytes]
    marker: Path
    log: Path

    @property
    def pid(self) -> int:
        """The CLI's process id."""
        return self.popen.pid

    def wait_paused(self, timeout: float = 60) -> str:
        """Wait until the CLI froze at its pause point; return the event it froze at."""
        return self._wait_marker(lambda: is_stopped(self.pid), timeout)

    def wait_held(self, timeout: float = 60) -> str:
        """Wait until a thread of the CLI is held at its pause point; return the event."""
        return self._wait_marker(lambda: True, timeout)

    def _wait_marker(self, also: Callable[[], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not (self.marker.exists() and also()):
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"the CLI exited ({self.popen.returncode}) before its pause point:\n"
                    + self.output()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the CLI did not reach its pause point:\n{self.output()}")
            time.sleep(0.005)
        return self.marker.read_text().strip()

    def kill(self) -> None:
        """SIGKILL the CLI and all its children; wait until they are gone."""
        victims = {self.pid} | descendants(self.pid)
        kill_tree(self.pid)
        self.popen.wait(10)
        wait_gone(victims)

    def wait(self, timeout: float = 120) -> int:
        """Wait for the CLI to finish on its own; return its exit code."""
        return self.popen.wait(timeout)

    def output(self) -> str:
        """What the CLI wrote to stdout and stderr."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_cli(
    args: list[str],
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    pause_at: str | None = None,
    hold_thread: bool = False,
) -> CLIRun:
    """Start ``runner-storage ARGS`` (frozen at ``pause_at``, see :mod:`fault_points`).

    With ``hold_thread`` only the thread that reaches ``pause_at`` stops, forever.
    """
    marker = workdir / f"paused-{time.monotonic_ns()}"
    log = workdir / f"cli-{time.monotonic_ns()}.log"
    environ = {**os.environ, **(env or {})}
    if pause_at is not None:
        environ.update(RS_PAUSE_AT=pause_at, RS_PAUSE_MARKER=str(marker))
        environ.update(RS_PAUSE_MODE="thread" if hold_thread else "process")
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, FAULT_POINTS, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            start_new_session=True,
        )
    return CLIRun(popen, marker, log)


def run_cli(
    args: list[str], *, workdir: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run ``runner-storage ARGS`` to the end (killed after ``timeout``): code and output."""
    run = start_cli(args, workdir=workdir, env=env)
    with stopped_on_exit(run):
        code = run.wait(timeout)
    return code, run.output()


@contextlib.contextmanager
def stopped_on_exit(run: CLIRun) -> Iterator[CLIRun]:
    """Make sure ``run`` is gone (killed if need be) when the block ends."""
    try:
        yield run
    finally:
        if run.popen.poll() is None:
            run.kill()


# --- the on-disk contract ------------------------------------------------------------------


def leftovers(root: Path, name: str) -> list[str]:
    """What a killed pull leaves that a finished pull must not: staging, temporary files."""
    meta = root / ".runner-storage" / name
    found = []
    staging = meta / "staging"
    if staging.exists() and any(staging.iterdir()):
        found.append("staging/*")
    for temporary in ("link.tmp", "state.json.tmp"):
        if os.path.lexists(meta / temporary):
            found.append(temporary)
    manifests = meta / "manifests"
    if manifests.is_dir():
        for manifest in manifests.iterdir():
            if not (meta / "versions" / manifest.name.removesuffix(".json")).is_dir():
                found.append(f"manifests/{manifest.name}")
    return found


def state_of(root: Path, name: str) -> dict[str, Any] | None:
    """``state.json`` of source ``name``, parsed, or None."""
    path = root / ".runner-storage" / name / "state.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def published_version(root: Path, name: str) -> Path | None:
    """The version directory ``root/name`` points to, or None when nothing is published."""
    link = root / name
    if not os.path.lexists(link):
        return None
    assert link.is_symlink(), f"{link} is not a symlink"
    target = os.readlink(link)
    assert not os.path.isabs(target), f"{link} -> {target} is not relative"
    version = Path(os.path.normpath(link.parent / target))
    assert version.parent == root / ".runner-storage" / name / "versions", target
    assert version.is_dir(), f"{link} -> {target} dangles"
    return version


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``directory`` with its type and size (the directory included)."""
    found: dict[str, tuple[str, int]] = {}
    if not os.path.lexists(directory):
        return found
    for current, dirnames, filenames in os.walk(directory):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(current, name))
            info = os.lstat(path)
            kind = "l" if stat.S_ISLNK(info.st_mode) else "d" if stat.S_ISDIR(info.st_mode) else "f"
            found[os.path.relpath(path, directory)] = (kind, info.st_size if kind == "f" else 0)
    return found


# --- the daemon's view ---------------------------------------------------------------------


def metric(text: str, sample: str) -> float | None:
    """The value of one sample (name and labels exactly as rendered) in /metrics text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
