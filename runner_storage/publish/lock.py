"""A cross-process exclusive lock on a file (``flock``), awaited without blocking the loop."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from anyio.lowlevel import RunVar

from runner_storage.exceptions import disk_error

__all__ = ["file_lock"]


class _Queue:
    """The tasks of one event loop holding or awaiting one lock file."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


#: Per event loop: lock file path -> its queue, while any task holds or awaits it.
_queues: RunVar[dict[str, _Queue]] = RunVar("runner_storage_file_locks")


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Tasks of one event loop queue for the lock in order and are woken the moment it is
    released (the sources of one repository take turns this way, without delay). Only
    the task at the head of that queue waits for the file itself, which another process
    may hold: it polls with a growing delay (10 ms to 250 ms), so cancellation is
    immediate and no thread is tied up. The lock dies with the process, even on ``kill -9``.

    Raises:
        PublishError: the lock file cannot be created.
    """
    key = str(path)
    try:
        table = _queues.get()
    except LookupError:
        table = {}
        _queues.set(table)
    queue = table.get(key)
    if queue is None:
        queue = table[key] = _Queue()
    queue.users += 1
    try:
        async with queue.lock, _flock(path):
            yield
    finally:
        queue.users -= 1
        if queue.users == 0 and table.get(key) is queue:
            del table[key]


@contextlib.asynccontextmanager
async def _flock(path: Path) -> AsyncIterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise disk_error(f"cannot create {path}", exc) from None
    try:
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.25)
        yield
    finally:
        os.close(fd)
