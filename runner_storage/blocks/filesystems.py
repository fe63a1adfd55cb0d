"""Prefect's filesystem blocks, ``LocalFileSystem`` and ``RemoteFileSystem``, on our fsspec stack.

Both have Prefect's ``read_path``, ``write_path``, ``get_directory`` and ``put_directory``
with our guarantees: every path stays under ``basepath``, writes are atomic
(:func:`~runner_storage.fs.transfer.write_atomic`), ``put_directory`` uploads only what
changed, settings hold secrets as :class:`~runner_storage.Secret` resolved at each call,
and errors are one redacted line of the error tree.

Sync or async: the methods are synchronous, as Prefect 3's are when called from sync
code (a deploy script, a CLI), and each has the ``a``-prefixed twin Prefect 3 offers for
async code (``await fs.aput_directory(...)``), which runs it in a worker thread.
:class:`~runner_storage.blocks.BlockStorageAdapter` runs the sync ``get_directory`` in a
worker thread too. Prefect 2 code that awaits ``fs.get_directory(...)`` awaits
``fs.aget_directory(...)`` instead.

Which error for a path that would leave the base: a path argument (``..``, an absolute
path outside the base, another scheme or host, ``/data/flows-evil`` for
``/data/flows``) is :class:`~runner_storage.exceptions.ConfigurationError`, the caller's
input that no retry fixes (a ``ValueError``, as Prefect raises); what is *stored* that
would lead out (a symlink in the base or in a tree being uploaded, a listed key) is
:class:`~runner_storage.exceptions.UnsafeContentError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec.spec import AbstractFileSystem

from runner_storage.blocks.filesystem_base import DEFAULT_TRANSFER_CONCURRENCY, FileSystemBlock
from runner_storage.exceptions import ConfigurationError, NotFoundError
from runner_storage.fs.ignore import IgnoreRules
from runner_storage.fs.listing import list_tree
from runner_storage.fs.paths import BaseURL, resolve_in_folder
from runner_storage.fs.pool import filesystem
from runner_storage.fs.protocols import check_protocol, url_settings
from runner_storage.secrets import resolve_settings, secret_values, strip_url_credentials

__all__ = [
    "BLOCK_CLASSES",
    "DEFAULT_TRANSFER_CONCURRENCY",
    "FileSystemBlock",
    "LocalFileSystem",
    "RemoteFileSystem",
    "from_block_document",
]

#: The class of each filesystem block type slug runner-storage builds from a document.
BLOCK_CLASSES = {"local-file-system": "LocalFileSystem", "remote-file-system": "RemoteFileSystem"}


class LocalFileSystem(FileSystemBlock):
    """Files on this machine, under ``basepath``, as Prefect's ``LocalFileSystem``.

    Args:
        basepath: the folder every path is under; ``~`` is expanded and the path resolved
            at each call. Default: the current directory at each call.
        transfer_concurrency: the most files copied at once.

    Raises:
        ConfigurationError: ``basepath`` is a URL (use :class:`RemoteFileSystem`).

    ``get_directory`` honours a ``.prefectignore`` at the top of the folder it copies,
    as Prefect does.

    Example::

        fs = LocalFileSystem("/srv/flows")
        fs.write_path("etl/config.json", b"{}")  # '/srv/flows/etl/config.json'
        fs.put_directory("build/flows", "etl")   # files written
    """

    _slug = "local-file-system"
    _protocol = "file"

    def __init__(
        self,
        basepath: str | os.PathLike[str] | None = None,
        *,
        transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
    ) -> None:
        super().__init__(transfer_concurrency=transfer_concurrency)
        text = None if basepath is None else os.fspath(basepath)
        if text is not None and "://" in text:
            shown = strip_url_credentials(text)
            raise ConfigurationError(
                f"LocalFileSystem takes a local folder, not the URL {shown!r}: use"
                " RemoteFileSystem for URLs"
            )
        self._basepath = text

    @property
    def basepath(self) -> str | None:
        """The base folder as given (None: the current directory)."""
        return self._basepath

    def __repr__(self) -> str:
        return f"LocalFileSystem(basepath={self._basepath!r})"

    def _base(self) -> Path:
        return Path(self._basepath or ".").expanduser().resolve()

    def _resolve(self, path: str | None) -> str:
        return os.fspath(resolve_in_folder(self._base(), path))

    def _filesystem(self) -> contextlib.AbstractContextManager[AbstractFileSystem]:
        return filesystem("file", {})

    def _local_root(self) -> Path | None:
        return self._base()

    def _fetch_plan(
        self, fs: AbstractFileSystem, source: str, destination: Path
    ) -> list[tuple[str, str]]:
        folder = Path(source)
        if not folder.is_dir():
            raise NotFoundError(
                f"{source} is not a folder: check the block's basepath and from_path"
            )
        if self._is_same_place(folder, os.fspath(destination)):
            return []  # copying a folder onto itself, as Prefect: nothing to do
        rules = IgnoreRules.for_tree(folder)  # the source's own .prefectignore, as Prefect
        return [(os.fspath(f.local), os.fspath(destination / f.path)) for f in rules.walk(folder)]

    def _is_same_place(self, root: Path, target: str) -> bool:
        """Whether ``root`` is ``target``; refuses a ``target`` inside ``root``."""
        here, there = root.resolve(), Path(target).resolve()
        if here == there:
            return True
        if here in there.parents:
            raise ConfigurationError(
                f"{there} is inside {here}: copying a folder into itself would copy the copy"
                " again; choose a destination outside it"
            )
        return False


class RemoteFileSystem(FileSystemBlock):
    """Files under an fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``...), as Prefect's.

    Args:
        basepath: the URL every path is under, with a scheme and a bucket, container or
            host (``s3://bucket/flows``).
        settings: settings of the fsspec filesystem; values may be
            :class:`~runner_storage.Secret` (or ``SecretStr``, or plain text), resolved
            at each call and never kept resolved.
        transfer_concurrency: the most files transferred at once.

    Raises:
        ConfigurationError: ``basepath`` has no scheme or no location, is a ``file://``
            URL (use :class:`LocalFileSystem`), or its protocol is unknown.
        MissingDependencyError: the protocol's extra is not installed.

    Example::

        fs = RemoteFileSystem(
            "s3://acme/flows",
            settings={"key": Secret.from_env("AWS_ACCESS_KEY_ID"),
                      "secret": Secret.from_env("AWS_SECRET_ACCESS_KEY")},
        )
        fs.put_directory("build/flows", "etl")    # only changed files are uploaded
        fs.read_path("etl/flow.py")
    """

    _slug = "remote-file-system"

    def __init__(
        self,
        basepath: str,
        settings: Mapping[str, Any] | None = None,
        *,
        transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
    ) -> None:
        super().__init__(transfer_concurrency=transfer_concurrency)
        self._url = BaseURL.parse(basepath)
        self._protocol = check_protocol(basepath, user="RemoteFileSystem")
        if settings is not None and not (
            isinstance(settings, Mapping) and all(isinstance(k, str) for k in settings)
        ):
            raise ConfigurationError(
                "RemoteFileSystem settings must be a mapping of setting names to values"
            )
        self._basepath = basepath
        self._settings = dict(settings or {})

    @property
    def basepath(self) -> str:
        """The base URL as given."""
        return self._basepath

    @property
    def settings(self) -> dict[str, Any]:
        """The filesystem settings as given (secrets unresolved)."""
        return dict(self._settings)

    def __repr__(self) -> str:
        shown = strip_url_credentials(self._basepath)
        return f"RemoteFileSystem(basepath={shown!r}, settings={sorted(self._settings)!r})"

    def _resolve(self, path: str | None) -> str:
        return self._url.resolve(path, shown=self._shown)

    def _filesystem(self) -> contextlib.AbstractContextManager[AbstractFileSystem]:
        # Secrets are resolved now, for this call, and never kept.
        settings = {
            **url_settings(self._protocol, self._basepath),
            **resolve_settings(self._settings),
        }
        return filesystem(self._protocol, settings, redact=self.redact)

    def _fetch_plan(
        self, fs: AbstractFileSystem, source: str, destination: Path
    ) -> list[tuple[str, str]]:
        listing = list_tree(fs, source, self._concurrency)  # safe relative paths only
        if not listing.entries:
            raise NotFoundError(
                f"nothing to fetch at {self._shown(source)}: the folder is missing or empty;"
                " check the block's basepath and from_path"
            )
        return [(listing.remote[e.path], os.fspath(destination / e.path)) for e in listing.entries]

    def _secret_values(self) -> list[str]:
        values = secret_values(self._settings, protocol=self._protocol)
        password = urlsplit(self._basepath).password
        return [*values, password, unquote(password)] if password else values

    def _setting_names(self) -> list[str]:
        return sorted(self._settings)


def from_block_document(
    type_slug: str, name: str, fields: Mapping[str, Any]
) -> LocalFileSystem | RemoteFileSystem:
    """The filesystem block a Prefect block document describes (a local block file's).

    ``local-file-system`` takes ``basepath``; ``remote-file-system`` takes ``basepath``
    and ``settings`` (secrets in them as Secrets); Prefect's other fields are ignored.

    Raises:
        ConfigurationError: another block type, or no ``basepath``; one line.
    """
    if type_slug not in BLOCK_CLASSES:
        raise ConfigurationError(
            f"block {type_slug}/{name} is not a filesystem block runner-storage can pull:"
            f" use {' or '.join(BLOCK_CLASSES)}"
        )
    basepath = fields.get("basepath")
    if not isinstance(basepath, str) or not basepath:
        raise ConfigurationError(f"block {type_slug}/{name} has no basepath: add one")
    if type_slug == "local-file-system":
        return LocalFileSystem(basepath)
    settings = fields.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ConfigurationError(f"block {type_slug}/{name}: settings must be a table")
    return RemoteFileSystem(basepath, settings=settings)
