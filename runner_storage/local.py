"""LocalStorage: code that is already on this machine; nothing is copied or published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner_storage.steps import set_working_directory_step
from runner_storage.types import StorageBase, SyncResult

__all__ = ["LocalStorage"]


class LocalStorage(StorageBase):
    """Use a local folder as it is, as Prefect's ``LocalStorage`` does.

    ``destination`` is the resolved ``path``; ``set_base_path`` has no effect on it.

    Example::

        storage = LocalStorage("/srv/flows")
        storage.to_pull_step()
        # {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/flows"}}
    """

    def __init__(self, path: str | Path, pull_interval: float | None = None) -> None:
        super().__init__(pull_interval=pull_interval)
        self._path = Path(path).expanduser().resolve()

    @property
    def destination(self) -> Path:
        """The folder itself; ``set_base_path`` does not move it."""
        return self._path

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
