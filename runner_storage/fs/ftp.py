"""ftp://: fsspec's FTP filesystem, made safe to sync from.

fsspec's :class:`~fsspec.implementations.ftp.FTPFileSystem` wraps one :mod:`ftplib`
connection, which two threads (concurrent downloads, or two pulls sharing a pooled
filesystem) would corrupt. So an FTP filesystem is never pooled
(:func:`runner_storage.fs.pool.filesystem` gives each phase of each pull its own
connection) and its files are downloaded one at a time (:func:`download_files`).

Its listing falls back from MLSD to parsing LIST output when the server lacks MLSD, and
LIST shows no reliable modification time, so a file rewritten with the same size would
look unchanged. :func:`list_ftp` lists with MLSD only (RFC 3659), refuses a server that
lacks it, and keeps each file's ``modify`` fact, which becomes its content token.

The address comes from the URL (:func:`url_settings`), since fsspec's FTP filesystem takes
it as settings. Nothing here imports :mod:`ftplib`: its errors are translated by class name
in :mod:`runner_storage.fs.errors`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import ConfigurationError, SourceError

__all__ = [
    "PROTOCOL",
    "check_url",
    "close_connection",
    "download_files",
    "is_ftp",
    "list_ftp",
    "url_settings",
]

PROTOCOL = "ftp"

#: Replies that mean "no such command": 500 (not understood), 502 (not implemented).
_UNKNOWN_COMMAND = ("500", "502")
#: Replies to MLSD of a path that is a file or is missing (RFC 3659 asks for 501).
_NOT_A_FOLDER = ("501", "550")
#: The ``modify`` fact of RFC 3659: YYYYMMDDHHMMSS in UTC, optionally with a fraction.
_MODIFY = re.compile(r"\d{14}(\.\d+)?")


def is_ftp(fs: AbstractFileSystem) -> bool:
    """Whether ``fs`` is fsspec's FTP filesystem (one connection, MLSD listings)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return PROTOCOL in protocols


def check_url(url: str) -> None:
    """Check that an ``ftp://`` URL names a server, and a valid port if it gives one.

    Raises:
        ConfigurationError: the URL has no host, or its port is not a number in range.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port in (-1, 0):
        raise ConfigurationError(
            "the port of the ftp:// URL is not a number from 1 to 65535: give one like"
            " ftp://host:2121/path, or leave it out for port 21"
        )
    if not parts.hostname:
        raise ConfigurationError(
            "the ftp:// URL names no server: give one like ftp://host/path or ftp://host:2121/path"
        )


def url_settings(url: str) -> dict[str, Any]:
    """The FTP filesystem's settings the URL carries: host, port, and any user:password.

    fsspec's FTP filesystem is built from settings only (``host`` is required), so the
    address in the URL is turned into settings; settings given to the storage win.
    """
    parts = urlsplit(url)
    settings: dict[str, Any] = {"host": parts.hostname or "", "port": parts.port or 21}
    if parts.username:
        settings["username"] = unquote(parts.username)
    if parts.password:
        settings["password"] = unquote(parts.password)
    return settings


def close_connection(fs: AbstractFileSystem) -> None:
    """Close the control connection now; fsspec's FTP filesystem does so only in ``__del__``."""
    connection = getattr(fs, "ftp", None)
    if connection is not None:
        with contextlib.suppress(Exception):
            connection.close()


def list_ftp(fs: AbstractFileSystem, path: str) -> dict[str, dict[str, Any]]:
    """Every file under ``path`` with its MLSD facts, by full path; one MLSD per folder.

    ``path`` may name a single file, which is then the one entry. Each entry has ``type``
    (``file``), ``size`` (an int, when the server gave one) and ``modify``.

    Raises:
        SourceError: the server lacks MLSD, gives no ``modify`` fact, or lists an entry
            that is neither a file nor a folder.
        FileNotFoundError: nothing is at ``path``.
        Exception: what :mod:`ftplib` raised (translate with :func:`translate_error`).
    """
    where = _server(fs)
    root = "/" + path.strip("/")
    refused: Exception | None = None
    try:
        listing = _mlsd(fs, root, where)
    except Exception as exc:
        if root == "/" or not str(exc).startswith(_NOT_A_FOLDER):
            raise
        refused = exc
    if refused is not None:  # a file, a missing path, or a folder we may not list
        facts = _facts_in_parent(fs, root, where)
        if facts is None:
            raise FileNotFoundError(root) from refused
        if facts.get("type", "").lower() != "file":
            raise refused
        return {root: _file_info(root, facts, where)}
    found: dict[str, dict[str, Any]] = {}
    pending = [(root, listing)]
    while pending:
        folder, entries = pending.pop()
        for name, facts in entries:
            kind = facts.get("type", "").lower()
            if name in (".", "..") or kind in ("cdir", "pdir"):
                continue
            full = f"{folder.rstrip('/')}/{name}"
            if kind == "dir":
                pending.append((full, _mlsd(fs, full, where)))
            elif kind == "file":
                found[full] = _file_info(full, facts, where)
            else:
                raise SourceError(
                    f"the FTP server {where} lists {full!r} as {kind or 'no type'!r}, neither"
                    " a file nor a folder: replace it with a file upstream (nothing was"
                    " published)"
                )
    return found


def download_files(fs: AbstractFileSystem, pairs: Sequence[tuple[str, str]]) -> None:
    """Download ``(remote, local)`` pairs one after the other over the one connection.

    One RETR each: fsspec's ``get_file`` would first list the parent folder of every file
    to ask whether it is a folder.
    """
    connection = fs.ftp
    for remote, local in pairs:
        with open(local, "wb") as out:
            connection.retrbinary(f"RETR {remote}", out.write, blocksize=fs.blocksize)


def _server(fs: AbstractFileSystem) -> str:
    return f"{getattr(fs, 'host', '?')}:{getattr(fs, 'port', 21)}"


def _mlsd(fs: AbstractFileSystem, folder: str, where: str) -> list[tuple[str, dict[str, str]]]:
    """The MLSD entries of ``folder``, or the one clear error when the server lacks MLSD."""
    try:
        return list(fs.ftp.mlsd(folder))
    except Exception as exc:
        if type(exc).__name__ == "error_perm" and str(exc).startswith(_UNKNOWN_COMMAND):
            raise SourceError(
                f"the FTP server {where} does not support MLSD (RFC 3659), which gives each"
                " file's exact modification time; without it a file rewritten with the same"
                " size would look unchanged: enable MLSD on the server, or serve the files"
                " over sftp://, https:// or from an object store"
            ) from None
        raise


def _facts_in_parent(fs: AbstractFileSystem, path: str, where: str) -> dict[str, str] | None:
    """The MLSD facts of ``path`` in its folder's listing; None if it is not there."""
    parent, _, name = path.rpartition("/")
    try:
        entries = _mlsd(fs, parent or "/", where)
    except Exception as exc:
        if str(exc).startswith(_NOT_A_FOLDER):  # the folder is missing too
            return None
        raise
    return next((facts for entry, facts in entries if entry == name), None)


def _file_info(path: str, facts: dict[str, str], where: str) -> dict[str, Any]:
    modify = facts.get("modify", "")
    if not _MODIFY.fullmatch(modify):
        raise SourceError(
            f"the FTP server {where} gives no modification time (the MLSD modify fact) for"
            f" {path!r}, so a file rewritten with the same size would look unchanged: enable"
            " the modify fact on the server, or serve the files over sftp://, https:// or"
            " from an object store"
        )
    info: dict[str, Any] = {"name": path, "type": "file", "modify": modify}
    with contextlib.suppress(KeyError, ValueError):
        info["size"] = int(facts["size"])
    return info
