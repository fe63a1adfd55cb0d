"""systemd's notify protocol (``Type=notify``) without extra dependencies.

Messages go to the datagram socket named by ``NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``). Without that variable every call does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd when run under it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if watchdog.isdigit() and int(watchdog) > 0 and watchdog_pid in ("", str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(watchdog) / 2_000_000
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return bool(self._address)

    def send(self, **fields: str) -> None:
        """Send ``KEY=value`` lines; failures are ignored, as sd_notify(3) does."""
        if not self._address:
            return
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        with contextlib.suppress(OSError):
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(payload.encode(), self._address)

    def ready(self, status: str) -> None:
        """Tell systemd start-up is complete."""
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        """Update the one-line status shown by ``systemctl status``."""
        self.send(status=status)

    def watchdog(self) -> None:
        """Tell systemd the main loop is making progress."""
        self.send(watchdog="1")

    def stopping(self) -> None:
        """Tell systemd the daemon is shutting down."""
        self.send(stopping="1", status="stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
