"""FTP: pyftpdlib as a subprocess, one user with a password, its commands counted.

One server runs per session and serves a root folder; tests stay apart by using fresh
folders from :meth:`FTPServer.new_folder`, written on disk (the server's own folder), so
that a test sets modification times with :func:`os.utime`. The server prints each MLSD,
MLST, LIST and RETR it receives to its log, and :meth:`FTPServer.commands` reads them back.

:func:`ftp_server_without_mlsd` is a second server, on a root of its own, whose handler
lacks MLSD and MLST (RFC 3659), as old servers do: clients must fall back to LIST.

Run as ``python -m servers.ftp --port P --root DIR --user NAME [--no-mlsd]``, with the
password in the ``RS_FTP_PASSWORD`` environment variable (never on the command line).
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import itertools
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from servers.procs import LOOPBACK, ManagedProcess, start_process

USER = "alice"
_PASSWORD_VARIABLE = "RS_FTP_PASSWORD"
#: The prefix of the log lines that record a command the server received.
_MARK = "@@ftp "
_COMMAND = re.compile(rf"^{re.escape(_MARK)}(?P<command>[A-Z]+) (?P<path>.*)$", re.MULTILINE)
#: Commands recorded in the log: listings and downloads.
RECORDED = ("MLSD", "MLST", "LIST", "NLST", "RETR")
_TESTS_DIR = Path(__file__).resolve().parents[1]
_folders = itertools.count(1)


class FTPServer:
    """A running pyftpdlib server on 127.0.0.1 with one user, ``alice``, and a password.

    Attributes: ``port``, ``root`` (the folder it serves, on disk), ``user``, ``password``,
    ``process`` (its ``output()`` is the server's log, commands included).
    """

    def __init__(self, process: ManagedProcess, root: Path, password: str) -> None:
        self.process = process
        self.port = process.port
        self.root = root
        self.user = USER
        self.password = password
        self._mark = 0

    def stop(self) -> None:
        """Stop the server; assert nothing of it is left and the port is closed."""
        self.process.stop()

    # --- addresses and settings for the code under test ------------------------------------

    def url(self, folder: str) -> str:
        """``ftp://127.0.0.1:PORT/FOLDER``: no credentials in it."""
        return f"ftp://{LOOPBACK}:{self.port}/{folder}"

    def settings(self) -> dict[str, Any]:
        """The FTP filesystem's settings that log in: ``username`` and ``password``."""
        return {"username": self.user, "password": self.password}

    # --- data helpers (on disk, as the server sees it) -------------------------------------

    def new_folder(self, prefix: str = "f") -> str:
        """Create a fresh, empty folder under the root; return its name."""
        name = f"{prefix}-{next(_folders)}-{secrets.token_hex(4)}"
        (self.root / name).mkdir()
        return name

    def path(self, folder: str, relative: str = "") -> Path:
        """The file or folder ``FOLDER/RELATIVE`` on disk."""
        return self.root / folder / relative if relative else self.root / folder

    def write(
        self, folder: str, relative: str, data: bytes | str, *, mtime: float | None = None
    ) -> Path:
        """Write one file (parents created); give it modification time ``mtime`` if set."""
        target = self.path(folder, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        if mtime is not None:
            os.utime(target, (mtime, mtime))
        return target

    # --- command counting ------------------------------------------------------------------

    def reset_commands(self) -> None:
        """Count commands from now on."""
        self._mark = self.process.log_path.stat().st_size

    def commands(self, command: str | None = None, under: str | None = None) -> list[str]:
        """Paths of the recorded commands since :meth:`reset_commands`, filtered.

        Args:
            command: only this command (``"MLSD"``, ``"RETR"``...).
            under: only paths inside the root folder ``under``.
        """
        with self.process.log_path.open("rb") as log:
            log.seek(self._mark)
            text = log.read().decode("utf-8", errors="replace")
        prefix = f"/{under}" if under is not None else None
        return [
            match["path"]
            for match in _COMMAND.finditer(text)
            if (command is None or match["command"] == command)
            and (
                prefix is None or match["path"] == prefix or match["path"].startswith(prefix + "/")
            )
        ]

    def count(self, command: str, under: str | None = None) -> int:
        """How many ``command`` were received since :meth:`reset_commands`."""
        return len(self.commands(command, under))


def can_log_in(port: int, password: str) -> bool:
    """Whether a real FTP login as ``alice`` succeeds on ``127.0.0.1:port`` (readiness)."""
    try:
        with ftplib.FTP() as client:  # noqa: S321 - plain FTP is what the server speaks
            client.connect(LOOPBACK, port, timeout=1)
            client.login(USER, password)
    except (OSError, EOFError, ftplib.Error):
        return False
    return True


def start_ftp_server(workdir: Path, *, mlsd: bool = True) -> FTPServer:
    """Start pyftpdlib on a free loopback port, serving ``workdir/root`` (log in workdir)."""
    root = workdir / "root"
    root.mkdir()
    password = "pw-" + secrets.token_hex(8)
    flags = [] if mlsd else ["--no-mlsd"]
    process = start_process(
        "pyftpdlib" if mlsd else "pyftpdlib-no-mlsd",
        lambda port: [
            sys.executable,
            "-m",
            "servers.ftp",
            "--port",
            str(port),
            "--root",
            str(root),
            "--user",
            USER,
            *flags,
        ],
        ready=lambda port: can_log_in(port, password),
        log_dir=workdir,
        cwd=_TESTS_DIR,
        env={**os.environ, _PASSWORD_VARIABLE: password, "PYTHONUNBUFFERED": "1"},
    )
    return FTPServer(process, root, password)


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """Session-wide FTP server with MLSD; use ``new_folder()`` per test."""
    server = start_ftp_server(tmp_path_factory.mktemp("ftp"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ftp_server_without_mlsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """Session-wide FTP server that lacks MLSD and MLST (LIST only), on a root of its own."""
    server = start_ftp_server(tmp_path_factory.mktemp("ftp-no-mlsd"), mlsd=False)
    yield server
    server.stop()


# --- the server process ----------------------------------------------------------------------


def serve(argv: Sequence[str] | None = None) -> None:
    """Run the FTP server until signalled (the ``python -m servers.ftp`` entry point)."""
    parser = argparse.ArgumentParser(prog="servers.ftp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--no-mlsd", action="store_true")
    options = parser.parse_args(argv)

    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]
    from pyftpdlib.servers import FTPServer as Server  # type: ignore[import-untyped]

    class RecordingHandler(FTPHandler):  # type: ignore[misc]  # pyftpdlib is untyped
        """Prints each listing and download command it receives, before answering it."""

        # A wrong password is answered at once, not after pyftpdlib's 3 s penalty.
        auth_failed_timeout = 0

        def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
            if cmd in RECORDED:
                print(f"{_MARK}{cmd} {arg}", flush=True)
            super().pre_process_command(line, cmd, arg)

    handler: type[Any] = RecordingHandler
    if options.no_mlsd:
        without = {name: spec for name, spec in FTPHandler.proto_cmds.items()}
        for name in ("MLSD", "MLST"):
            without.pop(name)
        handler = type("NoMLSDHandler", (RecordingHandler,), {"proto_cmds": without})

    authorizer = DummyAuthorizer()
    authorizer.add_user(options.user, os.environ[_PASSWORD_VARIABLE], options.root, perm="elr")
    handler.authorizer = authorizer
    handler.banner = "runner-storage test FTP server"
    server = Server((LOOPBACK, options.port), handler)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    serve()
