"""Prefect 2.0's storage blocks: ``key = await block.write(data)``, ``await block.read(key)``.

The names, arguments and keys are Prefect's (``prefect.blocks.storage``, 2.0 betas); the
stack is ours: fsspec filesystems from :mod:`runner_storage.fs` (pooled, listings cache
off), writes that a reader never sees half done, secrets resolved at every call, and one
translation of every failure into one-line, redacted errors.

* :mod:`~runner_storage.blocks.storage_block`: :class:`StorageBlock` (the interface) and
  what every block shares (keys, checks, errors);
* here: :class:`FsspecStorageBlock` (the machinery of the fsspec-backed blocks),
  :class:`FileStorageBlock`, :class:`LocalStorageBlock` and :class:`TempStorageBlock`;
* :mod:`~runner_storage.blocks.cloud`: :class:`S3StorageBlock`,
  :class:`GoogleCloudStorageBlock`, :class:`AzureBlobStorageBlock`;
* :mod:`~runner_storage.blocks.kv`: :class:`KVServerStorageBlock`.

Every name is importable from this module, as from ``prefect.blocks.storage``; the cloud
and KV blocks load on first use.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread

from runner_storage._lazy import lazy_exports
from runner_storage.blocks.storage_block import (
    KEY_TYPES,
    KeyType,
    StorageBlock,
    check_key,
    data_bytes,
    new_key,
    raise_translated,
)
from runner_storage.exceptions import ConfigurationError
from runner_storage.fs.pool import filesystem
from runner_storage.fs.protocols import check_protocol, url_settings
from runner_storage.fs.transfer import read_whole, write_atomic
from runner_storage.secrets import (
    redact,
    resolve_settings,
    secret_parts,
    secret_values,
    strip_url_credentials,
)

if TYPE_CHECKING:
    from runner_storage.blocks.cloud import (
        AzureBlobStorageBlock,
        GoogleCloudStorageBlock,
        S3StorageBlock,
    )
    from runner_storage.blocks.kv import KVServerStorageBlock

__all__ = [
    "KEY_TYPES",
    "AzureBlobStorageBlock",
    "FileStorageBlock",
    "FsspecStorageBlock",
    "GoogleCloudStorageBlock",
    "KVServerStorageBlock",
    "KeyType",
    "LocalStorageBlock",
    "S3StorageBlock",
    "StorageBlock",
    "TempStorageBlock",
    "default_storage_path",
]

_T = TypeVar("_T")


class FsspecStorageBlock(StorageBlock):
    """A storage block over a folder of an fsspec filesystem: the machinery of the others.

    Each call resolves the settings, takes a pooled filesystem
    (:func:`runner_storage.fs.pool.filesystem`) and runs fsspec's blocking calls in a
    worker thread that a cancelled caller abandons. Writes go through
    :func:`~runner_storage.fs.transfer.write_atomic`; failures through
    :func:`~runner_storage.fs.errors.translate_error`.

    Args:
        protocol: the filesystem's protocol (``file``, ``s3``...), already checked.
        root: the folder, as a URL or local path ending with its separator.
        key_type: how written data is named (see :data:`KEY_TYPES`).
    """

    def __init__(self, *, protocol: str, root: str, key_type: KeyType) -> None:
        self._protocol = protocol
        self._root = root
        self._key_type = key_type

    async def write(self, data: bytes) -> str:
        """Write ``data`` under a new key, atomically; return the key.

        A ``hash`` key that already exists is not written again.

        Raises:
            ConfigurationError: ``data`` is not bytes.
            CredentialsError: a secret cannot be read.
            AuthenticationError, NotFoundError, TransientSourceError, SourceError: the
                filesystem failed (one line, secrets redacted).
        """
        payload = data_bytes(data, type(self).__name__)
        name = new_key(self._key_type, payload)
        await anyio.to_thread.run_sync(self._write_sync, name, payload, abandon_on_cancel=True)
        return self._key_for(name)

    async def read(self, key: str) -> bytes:
        """The bytes stored under ``key``.

        Raises:
            ConfigurationError: ``key`` is not a relative path inside the block.
            NotFoundError: nothing is stored under ``key`` (the message names it).
            CredentialsError, AuthenticationError, TransientSourceError, SourceError: see
                :meth:`write`.
        """
        name = self._name_for(key)
        data: bytes = await anyio.to_thread.run_sync(
            self._read_sync, key, name, abandon_on_cancel=True
        )
        return data

    def _key_for(self, name: str) -> str:
        """The key :meth:`write` returns for the file ``name`` under the root."""
        return name

    def _name_for(self, key: str) -> str:
        """The file under the root that ``key`` names, checked not to leave it."""
        check_key(key, key, self._root)
        return key

    def _settings(self) -> dict[str, Any]:
        """The filesystem's settings, secrets unresolved."""
        return {}

    def _resolved_settings(self, found: list[str]) -> dict[str, Any]:
        """The settings for one call, every secret read now (and appended to ``found``)."""
        settings: dict[str, Any] = resolve_settings(self._settings(), found=found)
        return {**url_settings(self._protocol, self._root), **settings}

    def _extra_secrets(self, settings: Mapping[str, Any]) -> list[str]:
        """Secret texts in resolved ``settings`` that no setting's name marks as secret."""
        return []

    def _write_sync(self, name: str, data: bytes) -> None:
        path = self._root + name

        def put(fs: Any) -> None:
            if self._key_type == "hash" and fs.exists(path):
                return  # the same content is there already: one check, no second write
            write_atomic(fs, path, data)

        self._run(put, path=path, doing="writing")

    def _read_sync(self, key: str, name: str) -> bytes:
        path = self._root + name
        return self._run(lambda fs: read_whole(fs, path), path=path, doing="reading", key=key)

    def _run(
        self, call: Callable[[Any], _T], *, path: str, doing: str, key: str | None = None
    ) -> _T:
        """``call(fs)`` on this call's filesystem, every failure translated once."""
        found: list[str] = []
        settings = self._resolved_settings(found)
        texts = [
            *found,
            *secret_values(settings, protocol=self._protocol),
            *self._extra_secrets(settings),
        ]
        texts += [part for text in found for part in secret_parts(text)]
        redact_text = functools.partial(redact, secrets=tuple(texts))
        try:
            with filesystem(self._protocol, settings, redact=redact_text) as fs:
                return call(fs)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            raise_translated(
                exc,
                where=strip_url_credentials(path),
                doing=doing,
                redact=redact_text,
                settings=settings,
                key=key,
                location=strip_url_credentials(self._root),
            )


class FileStorageBlock(FsspecStorageBlock):
    """Store each piece of data as one file of a folder, local or on any fsspec filesystem.

    Example::

        block = FileStorageBlock("s3://acme-blocks/flows", options={
            "key": Secret.from_env("AWS_ACCESS_KEY_ID"),
            "secret": Secret.from_env("AWS_SECRET_ACCESS_KEY"),
        })
        key = await block.write(b"print('hello')")  # the sha256 of the data
        assert await block.read(key) == b"print('hello')"

    Args:
        base_path: the folder: a local path (a ``Path`` too) or an fsspec URL such as
            ``s3://bucket/folder`` or ``memory://folder``. It gains a trailing ``/``
            (``os.sep`` for a local path).
        key_type: ``"hash"`` (the default): the sha256 hex digest of the data, and data
            already there is not written again; ``"uuid"``: ``uuid4().hex``;
            ``"timestamp"``: the UTC time, ISO 8601 basic format to the microsecond
            (``20240501T120000.123456Z``): keys sort in writing order, hold no ``:``, and
            two writes of one process never share one (one of two processes writing in
            the same microsecond replaces the other's file; use uuid keys there).
        options: settings of the fsspec filesystem; secret values may be Secrets.

    Raises:
        ConfigurationError: an empty base path or one naming no folder, an unknown
            protocol or key type, or options that are not a mapping of names.
        MissingDependencyError: the protocol needs an extra that is not installed.
    """

    _fields = ("base_path", "key_type", "options")

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        *,
        key_type: KeyType = "hash",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        path = os.fspath(base_path) if isinstance(base_path, os.PathLike) else base_path
        if not isinstance(path, str) or not path.strip():
            raise ConfigurationError(
                "FileStorageBlock needs a base_path: a folder such as /srv/blocks or a URL"
                " such as s3://bucket/blocks"
            )
        if key_type not in KEY_TYPES:
            raise ConfigurationError(
                f"unknown key_type {key_type!r} for FileStorageBlock: use 'hash', 'uuid' or"
                " 'timestamp'"
            )
        if options is not None and (
            not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)
        ):
            raise ConfigurationError(
                "FileStorageBlock options must be a mapping of setting names to values, like"
                " {'endpoint_url': ...}"
            )
        if "://" in path:
            protocol = check_protocol(path, user="FileStorageBlock")
            parts = urlsplit(path)
            if not (parts.netloc or parts.path.strip("/")):
                raise ConfigurationError(
                    f"the FileStorageBlock base_path {strip_url_credentials(path)!r} names no"
                    " bucket or folder: add one, like s3://bucket/blocks or memory://blocks"
                )
            separator = "/"
        else:
            protocol, separator = "file", os.sep
        self.base_path = path if path.endswith(separator) else path + separator
        self.key_type: KeyType = key_type
        self.options: dict[str, Any] = dict(options or {})
        super().__init__(protocol=protocol, root=self.base_path, key_type=key_type)

    def _settings(self) -> dict[str, Any]:
        return self.options

    def _shown(self, name: str) -> str | None:
        if name == "options":  # names only: any of the values may be a secret
            return repr(sorted(self.options)) if self.options else None
        return super()._shown(name)


class LocalStorageBlock(FsspecStorageBlock):
    """Store each piece of data as a file named by a uuid in a local folder.

    The key is the file's absolute path, as in Prefect; :meth:`read` takes such a path
    (only inside the folder) or a path relative to it.

    Example::

        block = LocalStorageBlock("~/.flows")
        key = await block.write(b"data")  # '/home/me/.flows/3f2c...'

    Args:
        storage_path: the folder (``~`` is expanded); by default
            :func:`default_storage_path`. Created on the first write.

    Raises:
        ConfigurationError: ``storage_path`` is empty or not a path.
    """

    _fields: ClassVar[tuple[str, ...]] = ("storage_path",)

    def __init__(self, storage_path: str | os.PathLike[str] | None = None) -> None:
        if storage_path is not None and (
            not isinstance(storage_path, str | os.PathLike) or not os.fspath(storage_path)
        ):
            raise ConfigurationError(
                f"{type(self).__name__} storage_path must be a folder path, or None for the"
                " default folder"
            )
        self.storage_path = storage_path
        folder = default_storage_path() if storage_path is None else Path(storage_path)
        self._folder = Path(os.path.abspath(folder.expanduser()))
        super().__init__(protocol="file", root=os.path.join(self._folder, ""), key_type="uuid")

    def basepath(self) -> Path:
        """The absolute folder the files are written to (Prefect's name for it)."""
        return self._folder

    def _key_for(self, name: str) -> str:
        return self._root + name

    def _name_for(self, key: str) -> str:
        relative = key
        if isinstance(key, str) and os.path.isabs(key):
            if not key.startswith(self._root):
                raise ConfigurationError(
                    f"the key {key!r} is not inside {self._folder}: {type(self).__name__}"
                    " reads only the files its write() puts there"
                )
            relative = key[len(self._root) :].replace(os.sep, "/")
        check_key(relative, key, self._root)
        return relative

    def _shown(self, name: str) -> str | None:
        value = self.storage_path
        return None if value is None else repr(os.fspath(value))


class TempStorageBlock(LocalStorageBlock):
    """A :class:`LocalStorageBlock` in ``runner-storage/storage`` under the system's temp folder.

    The folder is shared by every user of the machine (as Prefect's was): keep data that
    other users must not read or replace elsewhere.
    """

    _fields = ()

    def __init__(self) -> None:
        super().__init__(Path(tempfile.gettempdir()) / "runner-storage" / "storage")


def default_storage_path() -> Path:
    """``runner-storage/storage`` under the user's data folder.

    ``$XDG_DATA_HOME`` (when absolute) or ``~/.local/share`` on Linux and other Unixes,
    ``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows.
    """
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "runner-storage" / "storage"


__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("AzureBlobStorageBlock", "GoogleCloudStorageBlock", "S3StorageBlock"),
            "runner_storage.blocks.cloud",
        ),
        "KVServerStorageBlock": "runner_storage.blocks.kv",
    },
)
