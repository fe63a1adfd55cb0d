"""The storage protocol every runner relies on, and the values a pull produces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["Revision", "RunnerStorage", "SyncResult", "fingerprint"]


@runtime_checkable
class RunnerStorage(Protocol):
    """A storage a runner uses to fetch flow code, as in ``prefect.runner.storage``."""

    def set_base_path(self, path: Path) -> None:
        """Set the folder under which the storage publishes its destination."""
        ...

    @property
    def pull_interval(self) -> int | None:
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
