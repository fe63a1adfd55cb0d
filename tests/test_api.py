"""The public surface: names, protocol conformance, and a cheap import."""

from __future__ import annotations

import ast
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

#: Prefect 2.0's storage blocks, loaded on first use.
STORAGE_BLOCKS = (
    "AzureBlobStorageBlock",
    "FileStorageBlock",
    "GoogleCloudStorageBlock",
    "KVServerStorageBlock",
    "LocalStorageBlock",
    "S3StorageBlock",
    "StorageBlock",
    "TempStorageBlock",
)

PUBLIC_NAMES = {
    "AuthenticationError",
    "BlockStorageAdapter",
    "CheckFailedError",
    "ConfigurationError",
    "CredentialsError",
    "DeploymentValidationError",
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
    "SnapshotInfo",
    "SnapshotStorage",
    "SourceError",
    "SyncResult",
    "TransientSourceError",
    "UnsafeContentError",
    "classify_source",
    "collect_garbage",
    "create_storage_from_source",
    "push_snapshot",
    *STORAGE_BLOCKS,
}

#: The snapshot names, loaded on first access, and their modules.
SNAPSHOT_NAMES = {
    "SnapshotInfo": "runner_storage.snapshots.push",
    "SnapshotStorage": "runner_storage.snapshots.storage",
    "collect_garbage": "runner_storage.snapshots.gc",
    "push_snapshot": "runner_storage.snapshots.push",
}

HEAVY_MODULES = (
    "fsspec",
    "s3fs",
    "gcsfs",
    "adlfs",
    "runner_storage.git.repository",
    "runner_storage.git.sync",
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

    @pytest.mark.parametrize(
        "name",
        sorted(
            PUBLIC_NAMES
            - {"BlockStorageAdapter", "GitRepository", "RemoteStorage", *STORAGE_BLOCKS}
            - set(SNAPSHOT_NAMES)
        ),
    )
    def test_eager_names_exist(self, name: str) -> None:
        """Every name imported at package import is there."""
        assert getattr(runner_storage, name) is not None

    @pytest.mark.parametrize(
        ("name", "module"),
        [
            ("GitRepository", "runner_storage.git"),
            ("RemoteStorage", "runner_storage.remote"),
            *((name, "runner_storage.blocks.storage") for name in STORAGE_BLOCKS),
            *SNAPSHOT_NAMES.items(),
        ],
    )
    def test_lazy_names_resolve_to_their_class(self, name: str, module: str) -> None:
        """The storages and storage blocks load on first access and are the real classes."""
        implementation = importlib.import_module(module)
        assert getattr(runner_storage, name) is getattr(implementation, name)
        assert name in dir(runner_storage)

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ("runner_storage.base", "runner_storage.types"),
            ("runner_storage.credentials", "runner_storage.secrets"),
            ("runner_storage.block", "runner_storage.blocks.adapter"),
            ("runner_storage.plan", "runner_storage.remote.plan"),
            ("runner_storage.state", "runner_storage.publish.state"),
            ("runner_storage.managed", "runner_storage.publish.managed"),
        ],
    )
    def test_moved_modules_still_import(self, old: str, new: str) -> None:
        """A module path from before the packages still imports, as the new module, warning."""
        code = (
            "import importlib, warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            f"    old = importlib.import_module({old!r})\n"
            f"assert old is importlib.import_module({new!r}), old\n"
            f"assert any({new!r} in str(w.message) for w in caught), caught\n"
            "print('ok')\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert result.stdout.strip() == "ok", result.stderr

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
        assert len(errors) == 13
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
        assert "runner_storage.git.repository" not in loaded


#: The shared machinery: imports no storage family.
SHARED = ("fs", "publish", "secrets", "steps")
#: The storage families: each imports the shared machinery, never another family.
FAMILIES = ("git", "remote", "blocks", "snapshots")


def imported_modules(path: Path) -> set[str]:
    """Every ``runner_storage`` module ``path`` imports, at its top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("runner_storage.")}


class TestLayout:
    """The packages of the library and the one direction their imports run."""

    @staticmethod
    def package_of(module: str) -> str:
        """``git`` for ``runner_storage.git.store``; the module name for top-level ones."""
        return module.split(".")[1]

    @pytest.mark.parametrize("package", SHARED + FAMILIES)
    def test_imports_run_one_way(self, package: str) -> None:
        """Shared packages import no family; a family imports no other family."""
        root = Path(runner_storage.__file__).parent
        allowed = {*SHARED, "exceptions", "types", "_lazy"}
        if package in FAMILIES:
            allowed |= {package, "local"}
        for path in sorted((root / package).glob("*.py")):
            wrong = {m for m in imported_modules(path) if self.package_of(m) not in allowed}
            assert wrong == set(), f"{path.relative_to(root)} imports {sorted(wrong)}"
