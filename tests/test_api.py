"""The public surface: names, protocol conformance, and a cheap import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runner_storage
from runner_storage import RunnerStorage
from runner_storage.git import GitRepository
from runner_storage.remote import RemoteStorage

PUBLIC_NAMES = {
    "AuthenticationError",
    "BlockStorageAdapter",
    "ConfigurationError",
    "CredentialsError",
    "DestinationConflictError",
    "GitCredentials",
    "GitRepository",
    "LocalStorage",
    "MissingDependencyError",
    "NotFoundError",
    "PublishError",
    "RemoteStorage",
    "RunnerStorage",
    "RunnerStorageError",
    "Secret",
    "SourceError",
    "SyncResult",
    "TransientSourceError",
    "UnsafeContentError",
    "create_storage_from_source",
}

HEAVY_MODULES = (
    "fsspec",
    "s3fs",
    "gcsfs",
    "adlfs",
    "runner_storage.git",
    "runner_storage._gitsync",
)


def modules_loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which heavy modules it loaded."""
    script = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = json.loads(output)
    return loaded


class TestPublicNames:
    """What ``from runner_storage import ...`` offers."""

    def test_all_lists_the_public_names_sorted(self) -> None:
        """__all__ holds exactly the public names, sorted."""
        assert set(runner_storage.__all__) == PUBLIC_NAMES
        assert runner_storage.__all__ == sorted(runner_storage.__all__)

    @pytest.mark.parametrize("name", sorted(PUBLIC_NAMES - {"GitRepository", "RemoteStorage"}))
    def test_eager_names_exist(self, name: str) -> None:
        """Every name imported at package import is there."""
        assert getattr(runner_storage, name) is not None

    @pytest.mark.parametrize(
        ("name", "module"),
        [("GitRepository", "runner_storage.git"), ("RemoteStorage", "runner_storage.remote")],
    )
    def test_lazy_names_resolve_to_their_class(self, name: str, module: str) -> None:
        """GitRepository and RemoteStorage load on first access and are the real classes."""
        implementation = importlib.import_module(module)
        assert getattr(runner_storage, name) is getattr(implementation, name)
        assert name in dir(runner_storage)

    def test_unknown_attribute(self) -> None:
        """A misspelt name is an AttributeError, as for any module."""
        with pytest.raises(AttributeError, match="GitRepo"):
            runner_storage.GitRepo  # noqa: B018

    def test_version(self) -> None:
        """__version__ is the installed distribution's version."""
        from importlib.metadata import version

        assert runner_storage.__version__ == version("runner-storage")

    def test_exceptions_share_one_root(self) -> None:
        """Every exported error derives from RunnerStorageError."""
        errors = [getattr(runner_storage, n) for n in PUBLIC_NAMES if n.endswith("Error")]
        assert len(errors) == 11
        for error in errors:
            assert issubclass(error, runner_storage.RunnerStorageError)
        assert issubclass(runner_storage.ConfigurationError, ValueError)


class TestProtocol:
    """Every storage is a RunnerStorage, checked at runtime."""

    def test_protocol_is_runtime_checkable(self) -> None:
        """Checking against RunnerStorage works at runtime and rejects unrelated objects."""
        assert not isinstance(object(), RunnerStorage)

    def test_local_storage(self, tmp_path: Path) -> None:
        """LocalStorage satisfies the protocol."""
        assert isinstance(runner_storage.LocalStorage(tmp_path), RunnerStorage)

    def test_block_storage_adapter(self) -> None:
        """BlockStorageAdapter satisfies the protocol."""

        class Block:
            def get_directory(self, from_path: Any = None, local_path: Any = None) -> None:
                """Fetch nothing."""

        storage = runner_storage.BlockStorageAdapter(Block(), name="b")
        assert isinstance(storage, RunnerStorage)

    def test_remote_storage(self) -> None:
        """RemoteStorage satisfies the protocol."""
        assert isinstance(RemoteStorage("memory://flows"), RunnerStorage)

    def test_git_repository(self) -> None:
        """GitRepository satisfies the protocol."""
        assert isinstance(GitRepository("https://github.com/org/repo.git"), RunnerStorage)


class TestCheapImport:
    """Importing the package, or using local sources, loads no heavy backend."""

    def test_import_loads_no_backend(self) -> None:
        """``import runner_storage`` loads neither the git backend nor fsspec nor any cloud SDK."""
        assert modules_loaded_after("import runner_storage") == []

    def test_local_sources_load_no_backend(self) -> None:
        """Importing the eager names and building a local storage stays cheap."""
        code = (
            "from runner_storage import LocalStorage, Secret, create_storage_from_source\n"
            "create_storage_from_source('/srv/flows')"
        )
        assert modules_loaded_after(code) == []

    def test_remote_storage_loads_fsspec_but_not_git(self) -> None:
        """Asking for RemoteStorage loads fsspec, and still not the git backend."""
        loaded = modules_loaded_after("from runner_storage import RemoteStorage")
        assert "fsspec" in loaded
        assert "runner_storage.git" not in loaded
