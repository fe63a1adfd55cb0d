"""The daemon keeps glibc to two malloc arenas, however many threads list object stores.

glibc gives every thread that allocates while others do an arena of its own (up to eight
per core), and each arena keeps the peak of what its thread parsed; the daemon's worker
threads parse S3 listings at once. Each check runs in a fresh interpreter, since the
limit only governs arenas created after it is set, and counts the arenas glibc reports
(``malloc_info``) after eight threads allocated at the same moment.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: Eight threads allocate at once, then the arenas glibc holds are counted.
_CHILD = """
import ctypes, sys, threading
from service.cli.run import limit_malloc_arenas
print("limited", limit_malloc_arenas() if sys.argv[1] == "limit" else None)
libc = ctypes.CDLL(None)
barrier = threading.Barrier(8)
def allocate():
    barrier.wait()
    blocks = [bytearray(100_000) for _ in range(50)]
    barrier.wait()
    del blocks
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
libc.open_memstream.restype = ctypes.c_void_p
stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size)))
libc.malloc_info(0, stream)
libc.fclose(stream)
print("arenas", buffer.value.decode().count("<heap nr="))
"""


def arenas_after(mode: str, **env: str) -> tuple[str, int]:
    """Run the child (``limit`` or ``free``); return what the limit said and the arenas."""
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return lines["limited"], int(lines["arenas"])


class TestMallocArenas:
    """``limit_malloc_arenas`` (called when ``runner-storage run`` starts)."""

    def test_eight_threads_share_two_arenas(self) -> None:
        """With the limit, eight threads allocating at once leave two arenas.

        Control: without it glibc makes one per thread (more than two).
        """
        assert arenas_after("limit") == ("True", 2)
        assert arenas_after("free")[1] > 2

    def test_malloc_arena_max_set_by_the_operator_wins(self) -> None:
        """``MALLOC_ARENA_MAX`` in the environment is left to glibc, which obeys it."""
        limited, arenas = arenas_after("limit", MALLOC_ARENA_MAX="4")
        assert limited == "False"
        assert arenas == 4
