"""BlockStorageAdapter: any object with ``get_directory`` (a Prefect storage block).

A block cannot say what it holds without fetching it, so every pull fetches the whole
tree into a staging directory and names it by a digest of its contents; an unchanged
digest is a no-op and the staging tree is discarded.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import inspect
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio.to_thread

from runner_storage.base import Revision, fingerprint
from runner_storage.credentials import Secret, secret_str_value
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
)
from runner_storage.managed import ManagedStorage
from runner_storage.publish import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_KEEP,
    Backend,
    Materialized,
    PreviousVersion,
    disk_error,
)
from runner_storage.steps import pull_with_block_step

__all__ = [
    "BlockStorageAdapter",
    "NotABlockError",
    "block_secrets",
    "block_type_slug",
    "tree_digest",
]

_MAX_MESSAGE = 300

#: errnos that mean our disk failed while the block wrote into staging, not the source.
_LOCAL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class NotABlockError(ConfigurationError, TypeError):
    """The object given as a block has no ``get_directory`` method.

    Also a ``TypeError``, as Prefect raises for objects that are not blocks.
    """


class BlockStorageAdapter(ManagedStorage):
    """Use a storage block (anything with ``get_directory``) as a runner storage.

    Each pull fetches the block's directory into a staging tree, digests the tree, and
    publishes it as a new version only when the digest changed.

    Args:
        block: an object with ``get_directory(from_path=None, local_path=...)``, sync or
            async: a Prefect ``LocalFileSystem``, ``RemoteFileSystem``, ``S3Bucket``...
        pull_interval: seconds between pulls; None pulls once.
        name: the destination name. Defaults to Prefect's
            ``<block-type-slug>-<block-document-name>``; required when the block was
            never saved (Prefect would then name it ``<slug>-None``, or a random uuid for
            objects without a document name: neither is a stable destination).
        from_path: the folder inside the block to fetch; None fetches the whole block.
        keep_versions: how many newest versions to keep.
        grace_period: seconds a retired version is kept for runners still inside it.

    Raises:
        NotABlockError: ``block`` has no ``get_directory`` method.
        ConfigurationError: no ``name`` and the block has no saved name, or bad retention.

    Unlike Prefect, any object with ``get_directory`` is accepted (no Prefect import), an
    unsaved block needs ``name=`` instead of getting a random one, and the block writes
    into a staging tree that is published atomically instead of into the live folder.

    Example::

        from prefect.filesystems import LocalFileSystem

        storage = BlockStorageAdapter(LocalFileSystem.load("flows"))
        await storage.pull_code()  # publishes BASE/local-file-system-flows
    """

    def __init__(
        self,
        block: Any,
        pull_interval: int | None = 60,
        *,
        name: str | None = None,
        from_path: str | None = None,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if not callable(getattr(block, "get_directory", None)):
            raise NotABlockError(
                "Provided block must have a `get_directory` method."
                f" Received a {type(block).__name__!r} object."
            )
        self._block = block
        self._from_path = from_path
        self._slug = block_type_slug(block)
        self._document_name: str | None = getattr(block, "_block_document_name", None)
        if name is None:
            if not self._document_name:
                raise ConfigurationError(
                    f"the {self._slug} block is not saved, so it has no stable name: pass"
                    " name='...' or save the block first"
                )
            name = f"{self._slug}-{self._document_name}"
        super().__init__(
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    @property
    def block(self) -> Any:
        """The adapted block."""
        return self._block

    @property
    def from_path(self) -> str | None:
        """The folder inside the block that is fetched; None for all of it."""
        return self._from_path

    def to_pull_step(self) -> dict[str, Any]:
        """The block's own pull step if it has one, else a ``pull_with_block`` step.

        Raises:
            ConfigurationError: the block has no ``get_pull_step`` and was never saved,
                so a deployment could not load it by name.
        """
        get_pull_step = getattr(self._block, "get_pull_step", None)
        if callable(get_pull_step):
            step: dict[str, Any] = get_pull_step()
            return step
        if not self._document_name:
            raise ConfigurationError(
                "Block must be saved with `.save()` before it can be converted to a pull step."
            )
        return pull_with_block_step(
            block_type_slug=self._slug, block_document_name=self._document_name
        )

    def _backend(self) -> Backend:
        return _BlockBackend(
            self._block, from_path=self._from_path, label=self._source_label(), redact=self.redact
        )

    def _source_label(self) -> str:
        return f"block:{self._slug}/{self._document_name or self.name}"

    def _secret_values(self) -> list[str]:
        # Prefect blocks hold secrets as SecretStr fields, also in nested credentials blocks.
        return block_secrets(self._block)

    def _identity(self) -> tuple[Any, ...]:
        return (*super()._identity(), self._from_path)

    def __repr__(self) -> str:
        from_path = f", from_path={self._from_path!r}" if self._from_path else ""
        return f"BlockStorageAdapter({self._source_label()!r}, name={self.name!r}{from_path})"


def block_type_slug(block: Any) -> str:
    """The block's type slug: ``get_block_type_slug()``, else a slug of its class name."""
    getter = getattr(block, "get_block_type_slug", None)
    if callable(getter):
        return str(getter())
    return re.sub(r"[^a-z0-9]+", "-", type(block).__name__.lower()).strip("-") or "block"


def block_secrets(value: Any, depth: int = 3) -> list[str]:
    """Secret values held by a block or its nested blocks, for redaction."""
    found: list[str] = []
    if (text := secret_str_value(value)) is not None:
        found.append(text)
    elif isinstance(value, Secret):
        with contextlib.suppress(RunnerStorageError):
            found.append(value.get())
    elif depth > 0:
        if isinstance(value, Mapping):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list | tuple):
            children = value
        elif hasattr(value, "__dict__") and not isinstance(value, type | ModuleType):
            children = vars(value).values()
        else:
            children = ()
        for child in children:
            found.extend(block_secrets(child, depth - 1))
    return [s for s in found if s]


class _BlockBackend:
    """One pull of a block: fetch everything, then let the tree's digest decide."""

    def __init__(
        self, block: Any, *, from_path: str | None, label: str, redact: Callable[[str], str]
    ) -> None:
        self._block = block
        self._from_path = from_path
        self._label = label
        self._redact = redact

    async def resolve(self) -> Revision | None:
        return None  # only fetching can tell what the block holds

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        await self._fetch(staging)
        try:
            digest, files, size = await anyio.to_thread.run_sync(tree_digest, staging)
        except OSError as exc:
            raise disk_error(f"cannot read the fetched tree in {staging}", exc) from None
        return Materialized(
            Revision(id=digest, digest=fingerprint(digest, self._from_path)),
            files_fetched=files,
            bytes_fetched=size,
        )

    async def _fetch(self, staging: Path) -> None:
        get_directory = self._block.get_directory
        # Like Prefect, pass only local_path unless a folder was asked for, so blocks whose
        # get_directory takes no from_path keep working.
        kwargs: dict[str, Any] = {"local_path": str(staging)}
        if self._from_path is not None:
            kwargs["from_path"] = self._from_path
        call = functools.partial(get_directory, **kwargs)
        try:
            if inspect.iscoroutinefunction(get_directory):
                result = call()
            else:
                # Sync implementations block on I/O: keep them off the event loop. Some
                # (Prefect's async_dispatch) still hand back a coroutine: await it here.
                result = await anyio.to_thread.run_sync(call)
            if inspect.isawaitable(result):
                await result
        except RunnerStorageError:
            raise
        except OSError as exc:
            if exc.errno in _LOCAL_DISK_ERRNOS:
                raise disk_error(f"cannot write the fetched tree to {staging}", exc) from exc
            raise self._translate(exc) from exc
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> SourceError:
        """Map an error raised by the block to the SourceError the caller can act on."""
        where = self._label + (f" (from_path={self._from_path!r})" if self._from_path else "")
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = self._redact(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
        if len(detail) > _MAX_MESSAGE:
            detail = detail[: _MAX_MESSAGE - 3] + "..."
        if isinstance(exc, FileNotFoundError):
            return NotFoundError(
                f"{where} not found: {detail}; check the block's base path and from_path"
            )
        if isinstance(exc, PermissionError):
            return AuthenticationError(
                f"{where} denied access: {detail}; check the block's credentials"
            )
        if isinstance(exc, ConnectionError | TimeoutError):
            return TransientSourceError(f"{where} is unreachable: {detail}; will retry")
        return SourceError(f"{where} failed to fetch: {detail}")


def tree_digest(root: Path) -> tuple[str, int, int]:
    """Digest a tree: sorted relative paths, file modes and contents, symlink targets.

    Returns:
        ``(sha256 hex digest, number of files, total bytes of the files)``.

    Raises:
        OSError: the tree cannot be read.
    """
    digest = hashlib.sha256()
    files = size = 0
    for directory, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        relative_dir = os.path.relpath(directory, root)
        for entry in sorted((*dirnames, *filenames)):
            path = os.path.join(directory, entry)
            relative = entry if relative_dir == "." else f"{relative_dir}/{entry}"
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            record: tuple[object, ...]
            if stat.S_ISLNK(info.st_mode):
                record = ("link", relative, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                record = ("dir", relative, mode)
            elif stat.S_ISREG(info.st_mode):
                record = ("file", relative, mode, info.st_size, _file_sha256(path))
                files += 1
                size += info.st_size
            else:
                record = ("other", relative, stat.S_IFMT(info.st_mode))
            # repr quotes every field, so no name can be confused with a separator
            digest.update(repr(record).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest(), files, size


def _raise(error: OSError) -> None:
    raise error


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
