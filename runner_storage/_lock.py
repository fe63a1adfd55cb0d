"""A cross-process exclusive lock on a file (``flock``), awaited without blocking the loop."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from runner_storage.exceptions import disk_error

__all__ = ["file_lock"]


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Waiting polls with a growing delay (10 ms to 250 ms), so cancellation is immediate
    and no thread is tied up. The lock dies with the process, even on ``kill -9``.

    Raises:
        PublishError: the lock file cannot be created.
    """
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
