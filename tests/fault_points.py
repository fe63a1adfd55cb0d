"""Run the ``runner-storage`` CLI and freeze it at an exact point, for kill -9 tests.

Usage: ``python tests/fault_points.py ARGS...`` behaves as ``runner-storage ARGS...``, with
one addition driven by the environment:

``RS_PAUSE_AT=EVENT|SUBSTRING|N``
    at the ``N``-th Python audit event named ``EVENT`` (``os.rename``, ``os.symlink``,
    ``open``, ``os.remove``, ``subprocess.Popen``, ``fcntl.flock``...) whose arguments
    contain ``SUBSTRING`` (``WANTED!UNWANTED``: contain ``WANTED`` but not ``UNWANTED``),
    write the event to ``RS_PAUSE_MARKER`` and stop the whole process
    with SIGSTOP, *before* the operation happens. The test then sees the marker, inspects
    the disk in that exact state, and kills the process with SIGKILL.

``RS_PAUSE_MODE=thread``
    hold only the thread that reached the point (as a hung disk or network call would),
    forever, instead of stopping the whole process: the event loop and its signal
    handling keep running.

Audit hooks (PEP 578) see every file operation the library makes, in whatever thread, so
no test hook is needed in the code under test. Nothing here changes behaviour when
``RS_PAUSE_AT`` is unset.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


def _install(spec: str, marker: str, *, whole_process: bool) -> None:
    event_name, substring, count = spec.split("|")
    substring, _, unwanted = substring.partition("!")
    wanted = int(count)
    lock = threading.Lock()
    state = {"seen": 0, "busy": False}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != event_name or state["busy"]:
            return
        text = " ".join(map(str, args))
        if substring not in text or (unwanted and unwanted in text):
            return
        with lock:
            state["seen"] += 1
            if state["seen"] != wanted:
                return
            state["busy"] = True  # our own writes below must not re-enter
        first = str(args[1] if event == "subprocess.Popen" else args[0])
        fd = os.open(marker + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{event} {first}\n".encode(errors="replace"))
        os.close(fd)
        os.rename(marker + ".tmp", marker)
        if whole_process:
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            threading.Event().wait()

    sys.addaudithook(hook)


def main() -> int:
    """Install the pause point, then run the CLI with our arguments."""
    spec = os.environ.get("RS_PAUSE_AT")
    if spec:
        whole_process = os.environ.get("RS_PAUSE_MODE", "process") == "process"
        _install(spec, os.environ["RS_PAUSE_MARKER"], whole_process=whole_process)
    from service.cli import main as cli_main  # imported after the hook is in place

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
