"""LocalStorage: code that is already on this machine; nothing is copied or published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner_storage.base import SyncResult
from runner_storage.steps import set_working_directory_step

__all__ = ["LocalStorage"]


class LocalStorage:
    """Use a local folder as it is, as Prefect's ``LocalStorage`` does.

    ``destination`` is the resolved ``path``; ``set_base_path`` has no effect on it.

    Example::

        storage = LocalStorage("/srv/flows")
        storage.to_pull_step()
        # {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/flows"}}
    """

    def __init__(self, path: str | Path, pull_interval: int | None = None) -> None:
        self._path = Path(path).expanduser().resolve()
        self._pull_interval = pull_interval
        self._storage_base_path = Path.cwd()

    @property
    def destination(self) -> Path:
        """The folder itself."""
        return self._path

    @property
    def pull_interval(self) -> int | None:
        """Seconds between pulls (pulls do nothing); None by default."""
        return self._pull_interval

    def set_base_path(self, path: Path | str) -> None:
        """Accepted for protocol compatibility; the destination does not move."""
        self._storage_base_path = Path(path)

    async def pull_code(self) -> SyncResult:
        """Nothing to pull: report the folder as unchanged."""
        return SyncResult(revision=str(self._path), changed=False)

    def to_pull_step(self) -> dict[str, Any]:
        """A ``set_working_directory`` step for the folder."""
        return set_working_directory_step(str(self._path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LocalStorage):
            return NotImplemented
        return self._path == other._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        return f"LocalStorage(path={str(self._path)!r})"
