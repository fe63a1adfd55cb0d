"""What both filesystem blocks share: Prefect's four methods, their async twins, one boundary.

:class:`FileSystemBlock` implements ``read_path``, ``write_path``, ``get_directory`` and
``put_directory`` over an fsspec filesystem; :mod:`runner_storage.blocks.filesystems`
says, for each block, where paths resolve and which filesystem serves them. Everything
the filesystem raises is translated once, in :meth:`FileSystemBlock._boundary`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import anyio.to_thread
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import (
    ConfigurationError,
    PublishError,
    RunnerStorageError,
    describe_error,
    disk_error,
)
from runner_storage.fs.checksums import same_content
from runner_storage.fs.errors import raise_from, translate_error
from runner_storage.fs.ignore import DEFAULT_IGNORE_FILE, IgnoreRules, LocalFile
from runner_storage.fs.listing import Listing, list_tree
from runner_storage.fs.transfer import (
    download_all,
    make_parents,
    read_whole,
    upload_all,
    write_atomic,
)
from runner_storage.secrets import redact, strip_url_credentials

__all__ = ["DEFAULT_TRANSFER_CONCURRENCY", "FileSystemBlock"]

#: The most files transferred at once by ``get_directory`` and ``put_directory``.
DEFAULT_TRANSFER_CONCURRENCY = 16


class FileSystemBlock(abc.ABC):
    """The base of :class:`LocalFileSystem` and :class:`RemoteFileSystem`: Prefect's methods.

    A subclass says where a path resolves (:meth:`_resolve`), which filesystem serves a
    call (:meth:`_filesystem`) and how a folder is copied out (:meth:`_fetch_plan`).
    """

    _slug: ClassVar[str]
    _protocol: str

    def __init__(self, *, transfer_concurrency: int) -> None:
        if not isinstance(transfer_concurrency, int) or transfer_concurrency < 1:
            raise ConfigurationError(
                "transfer_concurrency must be a whole number of at least 1, got"
                f" {transfer_concurrency!r}"
            )
        self._concurrency = transfer_concurrency

    @classmethod
    def get_block_type_slug(cls) -> str:
        """Prefect's slug for the block type (``local-file-system``, ``remote-file-system``)."""
        return cls._slug

    def read_path(self, path: str) -> bytes:
        """The bytes of the file at ``path`` (relative to the base path, or inside it).

        Raises:
            ConfigurationError: the path leaves the base path, or names a folder.
            NotFoundError: there is no such file.
            SourceError: the store failed (one of its subclasses says how).
        """
        target = self._resolve(path)
        with self._boundary(target, doing="reading"), self._filesystem() as fs:
            try:
                content = read_whole(fs, target)
            except IsADirectoryError:
                raise self._folder_error(target, "read_path") from None
            return content

    def write_path(self, path: str, content: bytes) -> str:
        """Write ``content`` at ``path`` atomically; return where it was written.

        A reader sees the old file or the new one, never part of one.

        Raises:
            ConfigurationError: the path leaves the base path or names a folder, or
                ``content`` is not bytes.
            SourceError, PublishError: the store or the local disk failed.
        """
        if not isinstance(content, bytes | bytearray | memoryview):
            raise ConfigurationError(
                f"write_path takes bytes, not {type(content).__name__}: encode text first"
            )
        target = self._resolve(path)
        boundary = self._boundary(target, doing="writing", staging=self._local_root())
        with boundary, self._filesystem() as fs:
            make_parents(fs, [target])
            try:
                write_atomic(fs, target, bytes(content))
            except IsADirectoryError:
                raise self._folder_error(target, "write_path") from None
        return target

    def get_directory(self, from_path: str | None = None, local_path: str | None = None) -> None:
        """Copy the folder ``from_path`` (default: the base path) into ``local_path``.

        ``local_path`` defaults to the current directory; files already there are
        overwritten, others left alone.

        Raises:
            ConfigurationError: ``from_path`` leaves the base path.
            NotFoundError: nothing is there.
            UnsafeContentError: something stored would be written outside ``local_path``.
            SourceError, PublishError: the store or the local disk failed.
        """
        source = self._resolve(from_path)
        destination = Path(local_path if local_path is not None else ".").absolute()
        boundary = self._boundary(source, doing="fetching", staging=destination)
        with boundary, self._filesystem() as fs:
            pairs = self._fetch_plan(fs, source, destination)
            for directory in sorted({os.path.dirname(local) for _, local in pairs}):
                os.makedirs(directory, exist_ok=True)
            download_all(fs, pairs, self._concurrency)

    def put_directory(
        self,
        local_path: str | None = None,
        to_path: str | None = None,
        ignore_file: str | None = None,
    ) -> int:
        """Upload the folder ``local_path`` to ``to_path``; return how many files were written.

        Files that ``ignore_file`` (default: the folder's ``.prefectignore``, if any)
        ignores in gitignore syntax, and ``.git``, are left out. One listing of the
        destination tells which files are already there with the same content (by size,
        then the MD5 the store gives, or sha256 on local and memory filesystems): those
        are not uploaded again. The rest are uploaded concurrently, each atomically.
        Nothing is deleted at the destination.

        Raises:
            ConfigurationError: ``to_path`` leaves the base path, ``local_path`` is not a
                folder, or the ignore file cannot be read.
            UnsafeContentError: a file to upload is a symlink leading out of the folder,
                or has a name that is not a safe path.
            SourceError, PublishError: the store or the local disk failed.
        """
        target = self._resolve(to_path)
        root = Path(local_path if local_path is not None else ".").absolute()
        if not root.is_dir():
            raise ConfigurationError(
                f"local_path {os.fspath(root)} is not a folder: give the folder to upload"
            )
        rules = IgnoreRules.for_tree(root, ignore_file)
        if self._is_same_place(root, target):
            return 0
        try:
            files = rules.walk(root)
        except OSError as exc:
            raise disk_error(f"cannot read the folder {os.fspath(root)}", exc) from None
        boundary = self._boundary(
            target, doing="uploading to", staging=self._local_root(), reading=root
        )
        with boundary, self._filesystem() as fs:
            pairs = self._changed(fs, target, files)
            make_parents(fs, [remote for _, remote in pairs])
            upload_all(fs, pairs, self._concurrency)
        return len(pairs)

    async def aread_path(self, path: str) -> bytes:
        """:meth:`read_path`, in a worker thread."""
        return await anyio.to_thread.run_sync(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """:meth:`write_path`, in a worker thread."""
        return await anyio.to_thread.run_sync(self.write_path, path, content)

    async def aget_directory(
        self, from_path: str | None = None, local_path: str | None = None
    ) -> None:
        """:meth:`get_directory`, in a worker thread."""
        await anyio.to_thread.run_sync(functools.partial(self.get_directory, from_path, local_path))

    async def aput_directory(
        self,
        local_path: str | None = None,
        to_path: str | None = None,
        ignore_file: str | None = None,
    ) -> int:
        """:meth:`put_directory`, in a worker thread."""
        call = functools.partial(self.put_directory, local_path, to_path, ignore_file)
        return await anyio.to_thread.run_sync(call)

    def resolve_path(self, path: str | None) -> str:
        """The full path or URL ``path`` stands for, checked to be under the base path.

        Every method resolves its paths this way first; nothing is read or written here.

        Raises:
            ConfigurationError: the path leaves the base path (``..``, an absolute path
                outside it, another scheme or location, a sibling sharing its prefix).
            UnsafeContentError: a local path leads out through a symlink under the base.
        """
        return self._resolve(path)

    def redact(self, text: str) -> str:
        """``text`` without this block's secret values or any URL credentials."""
        return redact(text, self._secret_values())

    # --- what each block says for itself ----------------------------------------------------

    @abc.abstractmethod
    def _resolve(self, path: str | None) -> str:
        """The full path or URL of ``path``, checked to be under the base path."""

    @abc.abstractmethod
    def _filesystem(self) -> contextlib.AbstractContextManager[AbstractFileSystem]:
        """A filesystem for one call, with the settings resolved now."""

    @abc.abstractmethod
    def _fetch_plan(
        self, fs: AbstractFileSystem, source: str, destination: Path
    ) -> list[tuple[str, str]]:
        """The ``(remote, local)`` pairs that copy ``source`` into ``destination``."""

    def _is_same_place(self, root: Path, target: str) -> bool:
        return False

    def _local_root(self) -> Path | None:
        """The local folder writes land in, so that its disk errors are told as such."""
        return None

    def _secret_values(self) -> list[str]:
        return []

    def _setting_names(self) -> list[str]:
        return []

    # --- shared machinery -------------------------------------------------------------------

    def _changed(
        self, fs: AbstractFileSystem, target: str, files: Sequence[LocalFile]
    ) -> list[tuple[str, str]]:
        """The ``(local, remote)`` uploads of the files whose content is not at ``target``.

        One listing of ``target`` (a destination that is not there yet lists empty), then
        :func:`~runner_storage.fs.checksums.same_content` for each file listed there.
        """
        try:
            listing = list_tree(fs, target, self._concurrency)
        except FileNotFoundError:
            listing = Listing((), {})
        listed = {entry.path: entry for entry in listing.entries}
        return [
            (os.fspath(file.local), f"{target}/{file.path}")
            for file in files
            if file.path not in listed
            or not same_content(
                fs,
                self._protocol,
                listed[file.path],
                listing.remote[file.path],
                file.local,
                md5=listing.md5.get(file.path),
            )
        ]

    def _folder_error(self, target: str, method: str) -> ConfigurationError:
        return ConfigurationError(
            f"{self._shown(target)} is a folder, not a file: {method} takes the path of a file"
        )

    def _shown(self, target: str) -> str:
        return self.redact(strip_url_credentials(target))

    @contextlib.contextmanager
    def _boundary(
        self,
        target: str,
        *,
        doing: str,
        staging: Path | None = None,
        reading: Path | None = None,
    ) -> Iterator[None]:
        """Translate what the filesystem raises into one redacted line of the error tree."""
        try:
            yield
        except RunnerStorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            unreadable = _file_under(exc, reading)
            if unreadable is not None:
                detail = describe_error(exc, redact=self.redact)
                raise PublishError(
                    f"cannot read {unreadable}: {detail}; make it readable, or ignore it in"
                    f" {DEFAULT_IGNORE_FILE}"
                ) from None
            error, chain = translate_error(
                exc,
                where=self._shown(target),
                redact=self.redact,
                staging=staging,
                settings=self._setting_names(),
                doing=doing,
            )
            raise_from(error, exc, chain=chain)


def _file_under(exc: BaseException, root: Path | None) -> str | None:
    """The file under ``root`` that ``exc`` is about, if it is a local error about one."""
    if root is None or not isinstance(exc, OSError):
        return None
    if not isinstance(exc.filename, str | os.PathLike):
        return None
    name = os.path.abspath(os.fspath(exc.filename))
    top = os.fspath(root)
    return name if name == top or name.startswith(top.rstrip(os.sep) + os.sep) else None
