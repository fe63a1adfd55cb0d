"""The half every publishing storage shares: base path, destination, retention, pull_code."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from runner_storage.publish.names import validate_name
from runner_storage.publish.publisher import Backend, Publisher, Verifier
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import redact
from runner_storage.types import Revision, StorageBase, SyncResult

__all__ = ["ManagedStorage"]


class ManagedStorage(StorageBase, abc.ABC):
    """A storage whose pulls publish immutable versions under ``BASE/NAME``.

    Subclasses say where the code comes from (:meth:`backend`), how to name the source
    in ``state.json`` without secrets (:meth:`_source_label`), which secret values to
    redact (:meth:`_secret_values`) and what else, beyond the name, makes two of them
    equal (:meth:`_identity`).
    """

    def __init__(
        self,
        *,
        name: str,
        pull_interval: float | None,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        super().__init__(pull_interval=pull_interval)
        self._name = validate_name(name)
        # Validate retention once, at construction, not at the first pull.
        Publisher(
            self._storage_base_path,
            self._name,
            source="",
            keep=keep_versions,
            grace_seconds=grace_period,
        )
        self._keep_versions = keep_versions
        self._grace_period = grace_period

    @property
    def name(self) -> str:
        """The destination name under the base path."""
        return self._name

    @property
    def destination(self) -> Path:
        """``BASE/NAME``: a symlink to the published version."""
        return self._storage_base_path / self._name

    @property
    def publisher(self) -> Publisher:
        """The publisher for the current base path."""
        return Publisher(
            self._storage_base_path,
            self._name,
            source=self._source_label(),
            keep=self._keep_versions,
            grace_seconds=self._grace_period,
            redact=self.redact,
        )

    async def pull_code(
        self, *, verify: Verifier | None = None, timeout: float | None = None
    ) -> SyncResult:
        """Publish the upstream revision if it differs from the published one.

        Args:
            verify: an optional pre-publish check, awaited with the complete new tree
                before it goes live; raising keeps the current version published.
            timeout: seconds the pull may take (waiting for another writer included);
                past it the pull is abandoned, nothing is published, and the failure is
                recorded in ``state.json``.

        Returns:
            What the pull did; ``changed`` is False for a no-op.

        Raises:
            TransientSourceError: the pull took longer than ``timeout``.
            RunnerStorageError: the pull failed; the published tree is unchanged.
        """
        return await self.publisher.sync(self.backend(), verify=verify, timeout=timeout)

    async def check(self) -> Revision | None:
        """Resolve the upstream revision without fetching or publishing anything.

        Returns:
            The revision, or None for sources that can only tell by fetching (blocks).

        Raises:
            RunnerStorageError: the source cannot be reached or resolved.
        """
        return await self.backend().resolve()

    def redact(self, text: str) -> str:
        """``text`` with this storage's secrets and URL credentials replaced."""
        return redact(text, self._secret_values())

    @abc.abstractmethod
    def to_pull_step(self) -> dict[str, Any]:
        """The Prefect deployment pull step that reproduces this storage."""

    @abc.abstractmethod
    def backend(self) -> Backend:
        """The backend of one pull: what :meth:`pull_code` hands :attr:`publisher`.

        For pulls of one's own: ``await storage.publisher.sync(wrapped(storage.backend()))``
        publishes through the same contract with, say, a check between resolving and
        materialising.
        """

    @abc.abstractmethod
    def _source_label(self) -> str:
        """The source as recorded in ``state.json``: stable, and free of secrets."""

    def _secret_values(self) -> list[str]:
        return []

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self._name, *self._identity()) == (other._name, *other._identity())

    def __hash__(self) -> int:
        # Equal storages have equal names, so hashing the name alone stays consistent
        # with __eq__ whatever _identity() holds (settings may not be hashable).
        return hash((type(self).__name__, self._name))

    def _identity(self) -> tuple[Any, ...]:
        """What, besides the destination name, makes two storages of this type equal."""
        return (self._source_label(),)
