"""BlockStorageAdapter: any object with ``get_directory`` (a Prefect storage block).

A block cannot say what it holds without fetching it, so every pull fetches the whole
tree into a staging directory and names it by a digest of its contents; an unchanged
digest is a no-op and the staging tree is discarded.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread

from runner_storage import exceptions as errors
from runner_storage.exceptions import DISK_ERRNOS, describe_error, disk_error
from runner_storage.fs.errors import error_class, raise_from
from runner_storage.publish import Backend, Materialized, PreviousVersion
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.publish.tree import tree_digest
from runner_storage.secrets import chain_may_leak, secret_values
from runner_storage.steps import pull_with_block_step
from runner_storage.types import Revision, fingerprint

__all__ = ["BlockStorageAdapter", "NotABlockError", "block_type_slug"]

_MAX_MESSAGE = 300

#: What to do about a block's failure, by the error of the tree it stands for.
_ADVICE: dict[type[errors.RunnerStorageError], str] = {
    errors.NotFoundError: "not found: {detail}; check the block's base path and from_path",
    errors.AuthenticationError: "denied access: {detail}; check the block's credentials",
    errors.TransientSourceError: "is unreachable: {detail}; try again later",
}


class NotABlockError(errors.ConfigurationError, TypeError):
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
        pull_interval: float | None = 60,
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
                raise errors.ConfigurationError(
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
            raise errors.ConfigurationError(
                "Block must be saved with `.save()` before it can be converted to a pull step."
            )
        return pull_with_block_step(
            block_type_slug=self._slug, block_document_name=self._document_name
        )

    def backend(self) -> Backend:
        """A backend that fetches the whole block and digests the tree."""
        return _BlockBackend(
            self._block, from_path=self._from_path, label=self._source_label(), redact=self.redact
        )

    def _source_label(self) -> str:
        return f"block:{self._slug}/{self._document_name or self.name}"

    def _secret_values(self) -> list[str]:
        # Prefect blocks hold secrets as SecretStr fields, also in nested credentials blocks.
        return secret_values(self._block, objects=True)

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
        except errors.RunnerStorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            safe = not chain_may_leak(exc, self._redact)
            raise_from(self._translate(exc, staging), exc, chain=safe)

    def _translate(self, exc: Exception, staging: Path) -> errors.RunnerStorageError:
        """Map an error raised by the block to the error the caller can act on."""
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return disk_error(f"cannot write the fetched tree to {staging}", exc)
        where = self._label + (f" (from_path={self._from_path!r})" if self._from_path else "")
        detail = describe_error(exc, _MAX_MESSAGE, redact=self._redact)
        # Blocks raise what their stack raises (botocore, gcsfs, OSError...): the fsspec
        # table knows those errors.
        kind = error_class(exc)
        advice = _ADVICE.get(kind) if kind is not None else None
        if kind is None or advice is None:
            return errors.SourceError(f"{where} failed to fetch: {detail}")
        return kind(f"{where} {advice.format(detail=detail)}")
