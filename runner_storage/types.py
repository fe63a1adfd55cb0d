"""The storage protocol runners rely on, the values a pull produces, our storages' base."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from runner_storage.exceptions import ConfigurationError

__all__ = ["Revision", "RunnerStorage", "StorageBase", "SyncResult", "fingerprint"]


@runtime_checkable
class RunnerStorage(Protocol):
    """A storage a runner uses to fetch flow code, as in ``prefect.runner.storage``."""

    def set_base_path(self, path: Path) -> None:
        """Set the folder under which the storage publishes its destination."""
        ...

    @property
    def pull_interval(self) -> float | None:
        """Seconds between pulls; None means pull once."""
        ...

    @property
    def destination(self) -> Path:
        """The local path the code is available at."""
        ...

    async def pull_code(self) -> SyncResult | None:
        """Bring the destination up to date with the source."""
        ...

    def to_pull_step(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The Prefect deployment pull step that reproduces this storage."""
        ...


class StorageBase:
    """What every storage of ours has: a pull interval and a base path.

    Args:
        pull_interval: seconds between pulls (a fraction is kept as it is); None pulls once.

    Raises:
        ConfigurationError: ``pull_interval`` is negative, or neither a number nor None.
    """

    def __init__(self, *, pull_interval: float | None) -> None:
        if pull_interval is not None and (
            isinstance(pull_interval, bool)
            or not isinstance(pull_interval, int | float)
            or not pull_interval >= 0
        ):
            raise ConfigurationError(
                f"pull_interval must be a number of seconds (0 or more) or None, got"
                f" {pull_interval!r}"
            )
        self._pull_interval = pull_interval
        self._storage_base_path = Path.cwd()

    @property
    def pull_interval(self) -> float | None:
        """Seconds between pulls; None means pull once."""
        return self._pull_interval

    def set_base_path(self, path: Path | str) -> None:
        """Use ``path`` as the base path from now on."""
        self._storage_base_path = Path(path)


@dataclass(frozen=True)
class SyncResult:
    """What one ``pull_code()`` did.

    Attributes:
        revision: what is published now: for git the commit SHA, for object stores a
            sha256 of the listing, for blocks a digest of the fetched tree.
        changed: whether this pull published a new version.
        files_fetched: files transferred from the source (0 on a no-op).
        bytes_fetched: bytes transferred from the source, as far as the backend knows.
        duration: seconds the pull took, lock wait included.
    """

    revision: str
    changed: bool
    files_fetched: int = 0
    bytes_fetched: int = 0
    duration: float = 0.0


@dataclass(frozen=True)
class Revision:
    """A resolved upstream version, before anything is fetched.

    Attributes:
        id: the upstream identity (commit SHA, listing sha256, tree digest).
        digest: ``id`` plus every option that shapes the tree (sparse directories,
            submodules). Equal digests mean identical published trees.
        detail: backend data carried from resolving to materialising (a listing).
    """

    id: str
    digest: str
    detail: Any = None

    @property
    def version_name(self) -> str:
        """The directory name under ``versions/``: starts with the upstream id."""
        return f"{self.id[:40]}-{self.digest[:8]}"


def fingerprint(*parts: object) -> str:
    """A stable sha256 hex digest over ``parts`` (their ``repr``)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()
