"""systemd's notify protocol, against a real datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    """Read one datagram and parse its KEY=value lines."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


class TestNotifier:
    """What the daemon tells systemd, byte for byte."""

    def test_ready_and_status(self, notify_socket: socket.socket) -> None:
        """READY=1 carries a STATUS line in the same datagram."""
        notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
        notifier.ready("2/2 sources ready")
        assert receive(notify_socket) == {"READY": "1", "STATUS": "2/2 sources ready"}
        notifier.status("1/2 sources ready; failing: b")
        assert receive(notify_socket) == {"STATUS": "1/2 sources ready; failing: b"}
        notifier.close()

    def test_watchdog_and_stopping(self, notify_socket: socket.socket) -> None:
        """WATCHDOG=1 and STOPPING=1 are sent as systemd expects."""
        notifier = Notifier(
            {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "4000000"}
        )
        assert notifier.watchdog_interval == 2.0
        notifier.watchdog()
        assert receive(notify_socket) == {"WATCHDOG": "1"}
        notifier.stopping()
        assert receive(notify_socket)["STOPPING"] == "1"
        notifier.close()

    def test_abstract_socket(self) -> None:
        """An '@' address means Linux's abstract namespace."""
        name = f"runner-storage-test-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(2)
            notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
            notifier.ready("ok")
            assert receive(sock)["READY"] == "1"
            notifier.close()

    def test_watchdog_for_another_process_is_ignored(self) -> None:
        """WATCHDOG_PID naming another process disables the watchdog (sd_watchdog_enabled)."""
        notifier = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert notifier.watchdog_interval is None

    def test_without_socket_nothing_happens(self) -> None:
        """Outside systemd every call is a no-op."""
        notifier = Notifier({})
        assert not notifier.enabled
        notifier.ready("ok")
        notifier.watchdog()
