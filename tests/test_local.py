"""LocalStorage: a folder used in place, as Prefect's LocalStorage."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner_storage.local import LocalStorage
from runner_storage.types import RunnerStorage, SyncResult


class TestLocalStorage:
    """The folder is the destination; pulling does nothing; the step sets the directory."""

    def test_destination_is_the_resolved_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path resolves against the current directory at construction."""
        monkeypatch.chdir(tmp_path)
        storage = LocalStorage("flows/../flows")
        assert storage.destination == tmp_path.resolve() / "flows"

    def test_home_is_expanded(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """``~`` means the user's home, as in a shell."""
        monkeypatch.setenv("HOME", str(tmp_path))
        assert LocalStorage("~/flows").destination == tmp_path.resolve() / "flows"

    def test_set_base_path_does_not_move_it(self, tmp_path: Path) -> None:
        """The runner's base path does not apply to a local folder."""
        storage = LocalStorage(tmp_path)
        storage.set_base_path(tmp_path / "elsewhere")
        assert storage.destination == tmp_path.resolve()

    def test_pull_code_changes_nothing(self, tmp_path: Path) -> None:
        """Pulling reports the folder as unchanged and touches no file."""
        (tmp_path / "flow.py").write_text("x")
        result = anyio.run(LocalStorage(tmp_path).pull_code)
        assert result == SyncResult(revision=str(tmp_path.resolve()), changed=False)
        assert [p.name for p in tmp_path.iterdir()] == ["flow.py"]

    def test_pull_interval(self) -> None:
        """The pull interval defaults to None (pull once), as in Prefect."""
        assert LocalStorage("/srv").pull_interval is None
        assert LocalStorage("/srv", pull_interval=30).pull_interval == 30

    def test_pull_step(self, tmp_path: Path) -> None:
        """The pull step sets the working directory to the resolved folder."""
        assert LocalStorage(tmp_path).to_pull_step() == {
            "prefect.deployments.steps.set_working_directory": {
                "directory": str(tmp_path.resolve())
            }
        }

    def test_equality_and_hash(self, tmp_path: Path) -> None:
        """Storages of the same folder are equal, however the path was spelled."""
        assert LocalStorage(tmp_path) == LocalStorage(str(tmp_path / "x" / ".."))
        assert hash(LocalStorage(tmp_path)) == hash(LocalStorage(str(tmp_path)))
        assert LocalStorage(tmp_path) != LocalStorage(tmp_path / "other")
        assert LocalStorage(tmp_path) != str(tmp_path)

    def test_repr(self) -> None:
        """The repr shows the resolved path."""
        assert repr(LocalStorage("/srv/flows")) == "LocalStorage(path='/srv/flows')"

    def test_satisfies_the_protocol(self) -> None:
        """LocalStorage is a RunnerStorage."""
        assert isinstance(LocalStorage("/srv"), RunnerStorage)
