"""BlockStorageAdapter: storage blocks (sync or async get_directory) published as versions."""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import SecretStr

from runner_storage.blocks import BlockStorageAdapter
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PublishError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
    exception_chain,
)
from runner_storage.publish.tree import tree_digest
from runner_storage.types import RunnerStorage, SyncResult


class FolderBlock:
    """A sync block that copies a real local folder, as Prefect's LocalFileSystem does.

    It records the thread each fetch ran in and can be told to raise instead.
    """

    def __init__(self, basepath: Path, name: str | None = "code") -> None:
        self.basepath = basepath
        self._block_document_name = name
        self.threads: list[threading.Thread] = []
        self.calls: list[dict[str, Any]] = []
        self.error: Exception | None = None

    @classmethod
    def get_block_type_slug(cls) -> str:
        """Prefect's slug for the block type."""
        return "local-file-system"

    def get_directory(self, from_path: str | None = None, local_path: str | None = None) -> None:
        """Copy ``basepath/from_path`` into ``local_path``."""
        self.threads.append(threading.current_thread())
        self.calls.append({"from_path": from_path, "local_path": local_path})
        if self.error is not None:
            raise self.error
        assert local_path is not None
        source = self.basepath / from_path if from_path else self.basepath
        shutil.copytree(source, local_path, dirs_exist_ok=True, symlinks=True)


class AsyncFolderBlock(FolderBlock):
    """An async block (``async def get_directory``), as most Prefect storage blocks are."""

    async def get_directory(  # type: ignore[override]
        self, from_path: str | None = None, local_path: str | None = None
    ) -> None:
        """Copy asynchronously, yielding to the event loop first."""
        await anyio.lowlevel.checkpoint()
        FolderBlock.get_directory(self, from_path=from_path, local_path=local_path)


class DispatchingBlock(FolderBlock):
    """A block whose sync-looking method returns a coroutine (Prefect's async_dispatch)."""

    def get_directory(  # type: ignore[override]
        self, from_path: str | None = None, local_path: str | None = None
    ) -> Coroutine[Any, Any, None]:
        """Return the coroutine that does the copy."""
        return AsyncFolderBlock.get_directory(self, from_path=from_path, local_path=local_path)  # type: ignore[arg-type]


class StepBlock(FolderBlock):
    """A block that knows its own pull step."""

    def get_pull_step(self) -> dict[str, Any]:
        """A custom step."""
        return {"my_package.steps.pull": {"bucket": "code"}}


class PlainStorageThing:
    """Not a Prefect block: no slug method, no saved name; only get_directory."""

    def get_directory(self, from_path: str | None = None, local_path: str | None = None) -> None:
        """Fetch nothing."""


class Credentials:
    """A nested credentials block, as S3Bucket.credentials is."""

    def __init__(self, secret: str) -> None:
        self.aws_access_key_id = "AKIAEXAMPLE"
        self.aws_secret_access_key = SecretStr(secret)


class SecretHoldingBlock(FolderBlock):
    """A block with SecretStr fields, directly and in a nested credentials block."""

    def __init__(self, basepath: Path, secret: str, nested: str) -> None:
        super().__init__(basepath)
        self.token = SecretStr(secret)
        self.credentials = Credentials(nested)


class LocalPathOnlyBlock:
    """An older block whose get_directory accepts only local_path."""

    _block_document_name = "old"

    def __init__(self, basepath: Path) -> None:
        self.basepath = basepath

    def get_directory(self, local_path: str) -> None:
        """Copy everything."""
        shutil.copytree(self.basepath, local_path, dirs_exist_ok=True)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A real folder with a small flow project."""
    root = tmp_path / "source"
    (root / "flows").mkdir(parents=True)
    (root / "flows" / "etl.py").write_text("print('etl')\n")
    (root / "README.md").write_text("# flows\n")
    return root


def adapter(block: Any, base: Path, **kwargs: Any) -> BlockStorageAdapter:
    """An adapter publishing under ``base``."""
    storage = BlockStorageAdapter(block, **kwargs)
    storage.set_base_path(base)
    return storage


def pull(storage: BlockStorageAdapter) -> SyncResult:
    """Run one pull to completion."""
    return anyio.run(storage.pull_code)


def read_tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its text."""
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def staging_leftovers(storage: BlockStorageAdapter) -> list[Path]:
    """Trees left in the staging area after a pull."""
    staging = storage.publisher.layout.staging
    return list(staging.iterdir()) if staging.exists() else []


class TestNaming:
    """Where a block is published, and what is refused at construction."""

    def test_saved_block_uses_prefects_name(self, source: Path, tmp_path: Path) -> None:
        """A saved block publishes at BASE/<block-type-slug>-<block-document-name>."""
        storage = adapter(FolderBlock(source, name="prod"), tmp_path)
        assert storage.name == "local-file-system-prod"
        assert storage.destination == tmp_path / "local-file-system-prod"

    def test_name_overrides(self, source: Path) -> None:
        """``name=`` picks the destination name whatever the block is called."""
        assert BlockStorageAdapter(FolderBlock(source), name="flows").name == "flows"

    def test_unsaved_block_needs_a_name(self, source: Path) -> None:
        """Without a saved name the destination would change every run: ask for name=."""
        with pytest.raises(ConfigurationError, match="name="):
            BlockStorageAdapter(FolderBlock(source, name=None))
        assert BlockStorageAdapter(FolderBlock(source, name=None), name="x").name == "x"

    def test_slug_falls_back_to_the_class_name(self) -> None:
        """Objects without get_block_type_slug are named after their class."""
        storage = BlockStorageAdapter(PlainStorageThing(), name="x")
        assert repr(storage) == "BlockStorageAdapter('block:plainstoragething/x', name='x')"

    @pytest.mark.parametrize("thing", [object(), {"get_directory": None}, "s3://bucket"])
    def test_object_without_get_directory_is_refused(self, thing: Any) -> None:
        """Anything without get_directory fails at construction, as ValueError and TypeError."""
        with pytest.raises(ConfigurationError, match="get_directory") as caught:
            BlockStorageAdapter(thing, name="x")
        assert isinstance(caught.value, TypeError)
        assert isinstance(caught.value, ValueError)

    def test_unsafe_name_is_refused(self, source: Path) -> None:
        """Names that would leave the base path are configuration errors."""
        with pytest.raises(ConfigurationError):
            BlockStorageAdapter(FolderBlock(source), name="../x")

    def test_pull_interval(self, source: Path) -> None:
        """The pull interval defaults to Prefect's 60 seconds; negative is refused."""
        assert BlockStorageAdapter(FolderBlock(source)).pull_interval == 60
        assert BlockStorageAdapter(FolderBlock(source), pull_interval=None).pull_interval is None
        with pytest.raises(ConfigurationError):
            BlockStorageAdapter(FolderBlock(source), pull_interval=-1)

    def test_equality(self, source: Path) -> None:
        """Adapters of the same block, name and from_path are equal."""
        block = FolderBlock(source)
        assert BlockStorageAdapter(block) == BlockStorageAdapter(block)
        assert BlockStorageAdapter(block) != BlockStorageAdapter(block, from_path="flows")
        assert BlockStorageAdapter(block) != BlockStorageAdapter(block, name="other")

    def test_satisfies_the_protocol(self, source: Path) -> None:
        """The adapter is a RunnerStorage."""
        assert isinstance(BlockStorageAdapter(FolderBlock(source)), RunnerStorage)


class TestPull:
    """Fetching through the block and publishing by tree digest."""

    @pytest.mark.parametrize("block_class", [FolderBlock, AsyncFolderBlock, DispatchingBlock])
    def test_first_pull_publishes_the_tree(
        self, block_class: type[FolderBlock], source: Path, tmp_path: Path
    ) -> None:
        """Sync, async and coroutine-returning blocks all publish the block's files."""
        storage = adapter(block_class(source), tmp_path / "base")
        result = pull(storage)
        assert result.changed is True
        assert len(result.revision) == 64
        assert (result.files_fetched, result.bytes_fetched) == (2, 21)
        assert storage.destination.is_symlink()
        assert read_tree(storage.destination) == read_tree(source)

    def test_sync_blocks_run_off_the_event_loop_thread(self, source: Path, tmp_path: Path) -> None:
        """A sync get_directory runs in a worker thread, so the daemon's loop keeps going."""
        block = FolderBlock(source)
        pull(adapter(block, tmp_path / "base"))
        assert block.threads[0] is not threading.main_thread()

    def test_block_writes_into_a_fresh_staging_folder(self, source: Path, tmp_path: Path) -> None:
        """get_directory gets local_path inside our staging area, never the live tree."""
        block = FolderBlock(source)
        storage = adapter(block, tmp_path / "base")
        pull(storage)
        local_path = Path(block.calls[0]["local_path"])
        assert local_path.parent == storage.publisher.layout.staging

    def test_same_content_is_a_noop(self, source: Path, tmp_path: Path) -> None:
        """Fetching identical files publishes nothing and keeps no second copy."""
        storage = adapter(FolderBlock(source), tmp_path / "base")
        first = pull(storage)
        link = os.readlink(storage.destination)

        second = pull(storage)

        assert second.changed is False
        assert second.revision == first.revision
        assert os.readlink(storage.destination) == link
        assert staging_leftovers(storage) == []

    @pytest.mark.parametrize(
        "change",
        [
            lambda root: (root / "flows" / "etl.py").write_text("print('v2')\n"),
            lambda root: (root / "flows" / "new.py").write_text(""),
            lambda root: (root / "README.md").unlink(),
            lambda root: (root / "README.md").chmod(0o755),
            lambda root: (root / "empty").mkdir(),
            lambda root: os.symlink("flows/etl.py", root / "link"),
        ],
        ids=["content", "added", "removed", "mode", "empty-dir", "symlink"],
    )
    def test_changed_content_publishes_a_new_version(
        self, change: Any, source: Path, tmp_path: Path
    ) -> None:
        """Any change to files, modes, folders or links is a new version."""
        storage = adapter(FolderBlock(source), tmp_path / "base")
        first = pull(storage)
        change(source)

        second = pull(storage)

        assert second.changed is True
        assert second.revision != first.revision
        assert read_tree(storage.destination) == read_tree(source)

    def test_from_path_fetches_a_subfolder(self, source: Path, tmp_path: Path) -> None:
        """``from_path`` is passed to get_directory, so only that folder is published."""
        block = FolderBlock(source)
        storage = adapter(block, tmp_path / "base", from_path="flows")
        pull(storage)
        assert block.calls[0]["from_path"] == "flows"
        assert read_tree(storage.destination) == {"etl.py": "print('etl')\n"}

    def test_block_without_from_path_parameter(self, source: Path, tmp_path: Path) -> None:
        """Blocks whose get_directory takes only local_path work, as they do with Prefect."""
        storage = adapter(LocalPathOnlyBlock(source), tmp_path / "base")
        assert pull(storage).changed is True
        assert read_tree(storage.destination) == read_tree(source)

    def test_escaping_symlink_is_refused(self, source: Path, tmp_path: Path) -> None:
        """A block that delivers a symlink out of the tree publishes nothing."""
        os.symlink("/etc/passwd", source / "passwd")
        storage = adapter(FolderBlock(source), tmp_path / "base")
        with pytest.raises(UnsafeContentError):
            pull(storage)
        assert not os.path.lexists(storage.destination)


class TestErrors:
    """Errors raised by a block become SourceErrors; the published tree stays."""

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (FileNotFoundError(2, "No such file or directory", "/data/flows"), NotFoundError),
            (PermissionError(13, "Permission denied"), AuthenticationError),
            (ConnectionError("connection reset"), TransientSourceError),
            (TimeoutError("timed out"), TransientSourceError),
            (ValueError("bad bucket config"), SourceError),
        ],
    )
    def test_block_errors_are_translated_and_the_tree_stays(
        self, error: Exception, expected: type[SourceError], source: Path, tmp_path: Path
    ) -> None:
        """Each failure maps to the SourceError subclass a scheduler acts on; nothing changes."""
        block = FolderBlock(source)
        storage = adapter(block, tmp_path / "base")
        pull(storage)
        published = read_tree(storage.destination)
        link = os.readlink(storage.destination)
        block.error = error

        with pytest.raises(expected) as caught:
            pull(storage)

        assert type(caught.value) is expected
        assert caught.value.__cause__ is error
        message = str(caught.value)
        assert "\n" not in message
        assert "block:local-file-system/code" in message
        assert type(error).__name__ in message
        assert os.readlink(storage.destination) == link
        assert read_tree(storage.destination) == published
        assert staging_leftovers(storage) == []

    @pytest.mark.parametrize(
        ("code", "hint"),
        [
            (errno.ENOSPC, "disk is full"),
            (errno.EDQUOT, "quota"),
            (errno.EROFS, "read-only"),
            (errno.EFBIG, "too large"),
        ],
    )
    def test_full_local_disk_is_a_publish_error(
        self, code: int, hint: str, source: Path, tmp_path: Path
    ) -> None:
        """A block failing to write because of our disk blames the disk, not the source."""
        block = FolderBlock(source)
        block.error = OSError(code, os.strerror(code))
        with pytest.raises(PublishError, match=hint):
            pull(adapter(block, tmp_path / "base"))

    def test_missing_source_folder_is_not_found(self, tmp_path: Path) -> None:
        """A block whose folder does not exist is a NotFoundError on the first pull."""
        storage = adapter(FolderBlock(tmp_path / "absent"), tmp_path / "base")
        with pytest.raises(NotFoundError, match="not found"):
            pull(storage)

    def test_our_errors_pass_through(self, source: Path, tmp_path: Path) -> None:
        """An error that is already a RunnerStorageError is not wrapped again."""
        block = FolderBlock(source)
        block.error = TransientSourceError("throttled")
        with pytest.raises(TransientSourceError, match=r"^throttled$"):
            pull(adapter(block, tmp_path / "base"))

    def test_messages_are_redacted(self, source: Path, tmp_path: Path) -> None:
        """The block's own secrets and URL credentials never appear in errors or state."""
        block = SecretHoldingBlock(source, "sekrit-token", "nested-sekrit")
        block.error = RuntimeError(
            "GET https://user:pw@host/x?sig=sekrit-token&k=nested-sekrit failed\nmore"
        )
        storage = adapter(block, tmp_path / "base")

        with pytest.raises(SourceError) as caught:
            pull(storage)

        message = str(caught.value)
        assert "sekrit" not in message
        assert "user:pw" not in message
        assert "more" not in message
        state = json.loads(storage.publisher.layout.state_file.read_text())
        assert state["last_error"] == message
        assert state["consecutive_failures"] == 1

    def test_an_error_holding_a_secret_is_not_chained(self, source: Path, tmp_path: Path) -> None:
        """A block error whose text, or its cause's, holds a secret is not chained to ours.

        A traceback would print the whole chain.
        """
        block = SecretHoldingBlock(source, "sekrit-token", "nested-sekrit")
        try:
            raise KeyError("lookup failed")
        except KeyError as inner:
            outer = RuntimeError("retrying the request")
            outer.__cause__ = RuntimeError("signature sig=nested-sekrit rejected")
            outer.__cause__.__cause__ = inner
        block.error = outer
        with pytest.raises(SourceError) as caught:
            pull(adapter(block, tmp_path / "base"))
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__
        chained = [str(e) for e in exception_chain(caught.value)]
        assert not any("sekrit" in text for text in chained)


class TestPullStep:
    """The pull step a deployment uses to fetch the same code."""

    def test_blocks_own_step_wins(self, source: Path) -> None:
        """A block with get_pull_step supplies its own step."""
        storage = BlockStorageAdapter(StepBlock(source))
        assert storage.to_pull_step() == {"my_package.steps.pull": {"bucket": "code"}}

    def test_saved_block_is_pulled_with_block(self, source: Path) -> None:
        """A saved block is referenced by slug and document name."""
        storage = BlockStorageAdapter(FolderBlock(source, name="prod"))
        assert storage.to_pull_step() == {
            "prefect.deployments.steps.pull_with_block": {
                "block_type_slug": "local-file-system",
                "block_document_name": "prod",
            }
        }

    def test_unsaved_block_has_no_step(self, source: Path) -> None:
        """A block never saved cannot be loaded by a deployment: say to save it."""
        storage = BlockStorageAdapter(FolderBlock(source, name=None), name="x")
        with pytest.raises(ConfigurationError, match="saved"):
            storage.to_pull_step()


class TestTreeDigest:
    """The digest that names a block's tree."""

    def test_counts_and_is_stable(self, source: Path, tmp_path: Path) -> None:
        """The same tree at two places has the same digest; files and bytes are counted."""
        copy = tmp_path / "copy"
        shutil.copytree(source, copy, symlinks=True)
        assert tree_digest(source) == tree_digest(copy)
        digest, files, size = tree_digest(source)
        assert (files, size) == (2, 21)
        assert len(digest) == 64

    def test_names_cannot_be_confused_with_fields(self, tmp_path: Path) -> None:
        """A file name with spaces does not collide with a differently split tree."""
        one, two = tmp_path / "one", tmp_path / "two"
        (one / "a b").mkdir(parents=True)
        (two / "a").mkdir(parents=True)
        (two / "a" / "b").mkdir()
        assert tree_digest(one)[0] != tree_digest(two)[0]

    def test_symlink_target_counts_not_its_content(self, tmp_path: Path) -> None:
        """Links are hashed by their target text and are not counted as files."""
        (tmp_path / "t").mkdir()
        os.symlink("nowhere", tmp_path / "t" / "dangling")
        digest, files, _ = tree_digest(tmp_path / "t")
        assert files == 0
        os.unlink(tmp_path / "t" / "dangling")
        os.symlink("elsewhere", tmp_path / "t" / "dangling")
        assert tree_digest(tmp_path / "t")[0] != digest
