"""The store side of snapshots: one root URL, read and written through the fsspec boundary.

:class:`SnapshotStore` is what push, pull and gc share: the root checked once, each call
made on a pooled filesystem (:func:`runner_storage.fs.pool.filesystem`) with the settings'
secrets resolved for that call, and every error of the filesystem translated once, here,
into a one-line error of ours. Every method is blocking: callers run them in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import ConfigurationError, NotFoundError
from runner_storage.fs.checksums import listed_md5
from runner_storage.fs.errors import error_class, raise_from, translate_error
from runner_storage.fs.listing import find_all
from runner_storage.fs.pool import filesystem
from runner_storage.fs.protocols import check_protocol, url_settings
from runner_storage.fs.transfer import download_all, make_parents, read_whole, write_atomic
from runner_storage.secrets import public_url, resolve_settings

__all__ = ["READ_ONLY_PROTOCOLS", "Listed", "SnapshotStore", "root_url"]

#: Protocols a snapshot can be pulled from but not pushed to (no writes, no listings).
READ_ONLY_PROTOCOLS = frozenset({"http", "https"})


def root_url(root: str | os.PathLike[str], *, user: str) -> tuple[str, str]:
    """The root as a URL and its protocol: a plain path becomes an absolute ``file://`` URL.

    Raises:
        ConfigurationError: the root is empty or its protocol unknown or unsupported.
        MissingDependencyError: the protocol needs an extra that is not installed.
    """
    text = os.fspath(root)
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(
            f"{user} needs a root: an fsspec URL like s3://bucket/code or a path"
        )
    if "://" not in text:
        text = Path(text).absolute().as_uri()
    scheme, separator, rest = text.partition("://")
    text = scheme.lower() + separator + rest  # schemes are case-insensitive (RFC 3986)
    url = text.rstrip("/")
    if url.endswith(":/") or url.endswith(":"):
        url = text  # file:/// stays itself
    return url, check_protocol(url, user=user)


@dataclass(frozen=True)
class Listed:
    """One object found under a folder of the root: key below the root, size, age, MD5.

    ``md5`` is the hex MD5 the store's listing promises for the content (S3, GCS, Azure:
    :func:`~runner_storage.fs.checksums.listed_md5`), or None.
    """

    key: str
    size: int | None
    modified: float | None
    md5: str | None = None


@dataclass(frozen=True)
class SnapshotStore:
    """One snapshot root, with the settings of its filesystem.

    Attributes:
        url: the root URL (from :func:`root_url`).
        protocol: its protocol.
        settings: the filesystem's settings, secrets unresolved (resolved per call).
        redact: removes the settings' secrets from text.
    """

    url: str
    protocol: str
    settings: Mapping[str, Any]
    redact: Callable[[str], str]

    @property
    def where(self) -> str:
        """The root as messages show it: no credentials, query or fragment."""
        return public_url(self.url)

    @property
    def read_only(self) -> bool:
        """Whether the root is served over HTTP (pull only)."""
        return self.protocol in READ_ONLY_PROTOCOLS

    def check_writable(self, what: str) -> None:
        """Refuse a root that cannot be written, naming what was asked.

        Raises:
            ConfigurationError: the root is an HTTP URL.
        """
        if self.read_only:
            raise ConfigurationError(
                f"{what} needs a root it can list and write; {self.protocol}:// roots are"
                " read-only: give the store behind it (s3://, gs://, az://, a path...)"
            )

    def key_url(self, key: str) -> str:
        """The URL of ``key`` below the root."""
        return f"{self.url}/{key}"

    @contextmanager
    def _filesystem(self) -> Iterator[AbstractFileSystem]:
        settings = {**url_settings(self.protocol, self.url), **resolve_settings(self.settings)}
        with filesystem(self.protocol, settings, redact=self.redact) as fs:
            yield fs

    def read(self, key: str, *, missing: str) -> bytes:
        """The bytes of ``key``; ``missing`` is the message when it does not exist.

        Raises:
            NotFoundError: it does not exist.
            SourceError: the store failed (translated, one line).
        """
        try:
            with self._filesystem() as fs:
                return read_whole(fs, self.key_url(key))
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            if error_class(exc) is NotFoundError:
                raise NotFoundError(missing) from None
            self.raise_translated(exc)

    def read_if_present(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None when it does not exist.

        Raises:
            SourceError: the store failed otherwise.
        """
        try:
            return self.read(key, missing="")
        except NotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically: readers see the old object or the new one.

        Raises:
            SourceError, PublishError: the store failed (translated, one line).
        """
        try:
            with self._filesystem() as fs:
                make_parents(fs, [fs._strip_protocol(self.key_url(key))])
                write_atomic(fs, self.key_url(key), data)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self.raise_translated(exc, doing="writing")

    def write_all(
        self,
        items: Sequence[tuple[str, Callable[[], bytes]]],
        concurrency: int,
        done: Callable[[int], None] | None = None,
    ) -> None:
        """Write each ``(key, read)`` atomically, at most ``concurrency`` at once.

        ``read`` gives the bytes when the write starts (so a tree is never all in memory);
        ``done`` is called with each written object's size.

        Raises:
            SourceError, PublishError: the store failed (translated); ``read``'s errors
                pass through.
        """
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait  # noqa: PLC0415

        if not items:
            return
        try:
            with self._filesystem() as fs:
                make_parents(fs, [fs._strip_protocol(self.key_url(key)) for key, _ in items])

                def one(key: str, read: Callable[[], bytes]) -> None:
                    data = read()
                    write_atomic(fs, self.key_url(key), data)
                    if done is not None:
                        done(len(data))

                workers = 1 if self.protocol == "ftp" else concurrency
                with ThreadPoolExecutor(workers, thread_name_prefix="rs-push") as pool:
                    futures = [pool.submit(one, key, read) for key, read in items]
                    finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
                    for future in pending:
                        future.cancel()
                    for future in finished:
                        future.result()
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self.raise_translated(exc, doing="writing")

    def download(self, pairs: Sequence[tuple[str, str]], concurrency: int, staging: Path) -> None:
        """Download ``(key, local path)`` pairs, at most ``concurrency`` at once.

        Raises:
            NotFoundError: an object is missing.
            SourceError, PublishError: the store or the local disk (below ``staging``)
                failed.
        """
        if not pairs:
            return
        try:
            with self._filesystem() as fs:
                remote = [fs._strip_protocol(self.key_url(key)) for key, _ in pairs]
                local = [path for _, path in pairs]
                download_all(fs, list(zip(remote, local, strict=True)), concurrency)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self.raise_translated(exc, staging=staging)

    def list(self, folder: str) -> list[Listed]:
        """Every object below ``folder`` (a key prefix such as ``blobs/sha256``).

        A folder that does not exist lists as empty: a new root has none of them.

        Raises:
            SourceError: the store failed (translated, one line).
        """
        top = self.key_url(folder)
        try:
            with self._filesystem() as fs:
                path = fs._strip_protocol(top).rstrip("/")
                try:
                    found = find_all(fs, path)
                except FileNotFoundError:
                    return []
                if isinstance(found, list):  # adlfs, for a name that is a blob
                    found = {}
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self.raise_translated(exc)
        listed = []
        protocols = (self.protocol,)
        for name, info in sorted(found.items()):
            if info.get("type", "file") == "directory" or not name.startswith(path + "/"):
                continue
            size = info.get("size")
            listed.append(
                Listed(
                    key=f"{folder}/{name[len(path) + 1 :]}",
                    size=size if isinstance(size, int) else None,
                    modified=_modified(info),
                    md5=listed_md5(protocols, info),
                )
            )
        return listed

    def delete(self, keys: Sequence[str]) -> None:
        """Delete ``keys``; one that is already gone is not an error.

        Raises:
            SourceError: the store failed (translated, one line).
        """
        if not keys:
            return
        try:
            with self._filesystem() as fs:
                for key in keys:
                    try:
                        fs.rm_file(self.key_url(key))
                    except FileNotFoundError:
                        continue
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self.raise_translated(exc, doing="deleting from")

    def raise_translated(
        self, exc: Exception, *, staging: Path | None = None, doing: str = "pulling"
    ) -> NoReturn:
        """Raise ``exc`` translated into one of ours, chained only when that is safe."""
        error, chain = translate_error(
            exc,
            where=self.where,
            redact=self.redact,
            staging=staging,
            settings=self.settings,
            doing=doing,
        )
        raise_from(error, exc, chain=chain)


def _modified(info: Mapping[str, Any]) -> float | None:
    """When an object was last written, in seconds since the epoch, if the listing says."""
    for field in ("LastModified", "last_modified", "updated", "mtime", "created"):
        value = info.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None
