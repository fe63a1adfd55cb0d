"""The half every publishing storage shares: base path, destination, retention, pull_code."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from runner_storage.base import Revision, SyncResult
from runner_storage.credentials import redact
from runner_storage.exceptions import ConfigurationError
from runner_storage.publish import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_KEEP,
    Backend,
    Publisher,
    Verifier,
    validate_name,
)

__all__ = ["ManagedStorage"]


class ManagedStorage(abc.ABC):
    """A storage whose pulls publish immutable versions under ``BASE/NAME``.

    Subclasses say where the code comes from (:meth:`_backend`), how to name the source
    in ``state.json`` without secrets (:meth:`_source_label`), and which secret values to
    redact (:meth:`_secret_values`).
    """

    def __init__(
        self,
        *,
        name: str,
        pull_interval: int | None,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if pull_interval is not None and pull_interval < 0:
            raise ConfigurationError(
                f"pull_interval must be a positive number of seconds or None, got {pull_interval}"
            )
        self._name = validate_name(name)
        self._pull_interval = pull_interval
        self._storage_base_path = Path.cwd()
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
    def pull_interval(self) -> int | None:
        """Seconds between pulls; None means pull once."""
        return self._pull_interval

    @property
    def destination(self) -> Path:
        """``BASE/NAME``: a symlink to the published version."""
        return self._storage_base_path / self._name

    def set_base_path(self, path: Path | str) -> None:
        """Publish under ``path`` from now on."""
        self._storage_base_path = Path(path)

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

    async def pull_code(self, *, verify: Verifier | None = None) -> SyncResult:
        """Publish the upstream revision if it differs from the published one.

        Args:
            verify: an optional pre-publish check, awaited with the complete new tree
                before it goes live; raising keeps the current version published.

        Returns:
            What the pull did; ``changed`` is False for a no-op.

        Raises:
            RunnerStorageError: the pull failed; the published tree is unchanged.
        """
        return await self.publisher.sync(self._backend(), verify=verify)

    async def check(self) -> Revision | None:
        """Resolve the upstream revision without fetching or publishing anything.

        Returns:
            The revision, or None for sources that can only tell by fetching (blocks).

        Raises:
            RunnerStorageError: the source cannot be reached or resolved.
        """
        return await self._backend().resolve()

    def redact(self, text: str) -> str:
        """``text`` with this storage's secrets and URL credentials replaced."""
        return redact(text, self._secret_values())

    @abc.abstractmethod
    def to_pull_step(self) -> dict[str, Any]:
        """The Prefect deployment pull step that reproduces this storage."""

    @abc.abstractmethod
    def _backend(self) -> Backend:
        """A backend for one pull."""

    @abc.abstractmethod
    def _source_label(self) -> str:
        """The source as recorded in ``state.json``: stable, and free of secrets."""

    def _secret_values(self) -> list[str]:
        return []

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._name))

    def _identity(self) -> tuple[Any, ...]:
        return (self._source_label(), self._name)
