"""The lock that makes sources sharing a folder or an object store take turns.

Tasks of one process queue in order and hand the lock on without delay; another process
holding the lock file keeps every task of this one out until it lets go.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from runner_storage.publish import lock as _lock
from runner_storage.publish.lock import file_lock

pytestmark = pytest.mark.anyio

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


async def test_tasks_take_turns_in_the_order_they_asked(tmp_path: Path) -> None:
    """Five tasks: one inside at a time, first come first served, nothing kept after.

    Once nobody holds or awaits the lock, the process keeps no trace of it.
    """
    path = tmp_path / "store.lock"
    events: list[str] = []

    async def work(number: int) -> None:
        async with file_lock(path):
            events.append(f"in {number}")
            await anyio.sleep(0.02)
            events.append(f"out {number}")

    async with anyio.create_task_group() as group:
        for number in range(5):
            group.start_soon(work, number)
            await anyio.sleep(0.005)  # each asks after the previous one
    assert events == [e for n in range(5) for e in (f"in {n}", f"out {n}")]
    assert _lock._queues.get() == {}


@pytest.fixture
def held_elsewhere(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A lock file held by another process until a line is written to its stdin."""
    path = tmp_path / "store.lock"
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            yield path, holder
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait(timeout=10)


async def test_another_process_keeps_us_out_until_it_lets_go(
    held_elsewhere: tuple[Path, subprocess.Popen[str]],
) -> None:
    """While another process holds the lock file, no task here gets in."""
    path, holder = held_elsewhere
    entered = anyio.Event()

    async def enter() -> None:
        async with file_lock(path):
            entered.set()

    async with anyio.create_task_group() as group:
        group.start_soon(enter)
        await anyio.sleep(0.3)
        assert not entered.is_set()
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        with anyio.fail_after(10):
            await entered.wait()
