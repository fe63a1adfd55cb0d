"""Snapshots against real servers: push, SnapshotStorage, gc, provenance, secrets, pull steps.

A snapshot root lives on every kind of source of ``remote_sources.py`` (moto, the GCS
emulator, Azurite, the HTTP file server, a folder, the memory store). The HTTP kind is
pushed into the folder its server serves (a ``file://`` root) and pulled over HTTP.
What runs once per kind is what a backend can get wrong (translation of errors, request
counts, listings); the checks of untrusted manifests run on the memory store, where they
are fastest, since they do not depend on the transport.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from remote_sources import (
    SOURCE_KINDS,
    AzureSource,
    S3Source,
    Source,
    make_source,
)
from servers.azurite import AzuriteServer
from snapshot_helpers import (
    SnapshotRoot,
    describe,
    file_record,
    manifest_document,
    pull,
    write_tree,
)

from runner_storage import Secret
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    UnsafeContentError,
)
from runner_storage.fs.protocols import required_package
from runner_storage.publish.layout import METADATA_DIR
from runner_storage.snapshots import (
    SnapshotStorage,
    acollect_garbage,
    apush_snapshot,
    collect_garbage,
    push_snapshot,
)
from runner_storage.snapshots.format import blob_key, manifest_key, ref_key

PULL_STEP = "runner_storage.deployments.steps.pull_snapshot"
WRITABLE_KINDS = [kind for kind in SOURCE_KINDS if kind != "http"]
#: Requests a no-op pull of a ref makes, at the servers that count them: one GET of the
#: ref (adlfs too: no properties call first; s3fs: no HEAD first, see fs/transfer.read_whole).
NOOP_REQUESTS = {"s3": 1, "gs": 1, "az": 1, "http": 1}

# --- the project tree every round trip pushes ----------------------------------------------

PROJECT_FILES = {
    "flows/main.py": b"print('main')\n",
    "flows/run.sh": b"#!/bin/sh\necho run\n",
    "lib/util.py": b"UTIL = 1\n",
    "lib/deep/data.json": b'{"k": 1}\n',
    "README.md": b"# project\n",
    ".prefectignore": b"*.log\nbuild/\n!keep.log\n",
    "keep.log": b"kept by a negation\n",
    "debug.log": b"ignored by *.log\n",
    "build/out.bin": b"ignored with its folder\n",
    ".git/config": b"[remote]\n url = https://user:pw@example.invalid/r.git\n",
    "lib/.git": b"gitdir: ../elsewhere\n",
}
PROJECT_EXECUTABLE = ("flows/run.sh",)
PROJECT_LINKS = {
    "flows/current.py": "main.py",  # to a file
    "libs": "lib",  # to a directory
    "lib/deep/main.py": "../../flows/main.py",  # relative, climbing
}
IGNORED = ("debug.log", "build/out.bin", ".git/config", "lib/.git")


def project(directory: Path) -> Path:
    """Write the project tree at ``directory``, with an absolute in-tree symlink too."""
    write_tree(directory, PROJECT_FILES, executable=PROJECT_EXECUTABLE, links=PROJECT_LINKS)
    os.symlink(directory / "lib" / "util.py", directory / "flows" / "util_abs.py")
    return directory


def expected_project() -> dict[str, tuple[Any, ...]]:
    """What a pull of :func:`project` publishes: files with their modes, and symlinks."""
    expected: dict[str, tuple[Any, ...]] = {
        path: ("file", data, 0o755 if path in PROJECT_EXECUTABLE else 0o644)
        for path, data in PROJECT_FILES.items()
        if path not in IGNORED
    }
    expected.update({path: ("link", target) for path, target in PROJECT_LINKS.items()})
    expected["flows/util_abs.py"] = ("link", "../lib/util.py")  # rewritten relative
    return dict(sorted(expected.items()))


def numbered(count: int, tag: str = "") -> dict[str, bytes]:
    """``count`` small files of distinct content."""
    return {f"f/{i:03}.txt": f"file {i} {tag}\n".encode() for i in range(count)}


def root_on(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotRoot:
    """A snapshot root on a fresh source of ``kind``."""
    return SnapshotRoot.on(make_source(kind, request, tmp_path))


@pytest.fixture
def root(source: Source) -> SnapshotRoot:
    """A snapshot root on every kind of source in turn."""
    return SnapshotRoot.on(source)


@pytest.fixture
def mem_root(request: pytest.FixtureRequest, tmp_path: Path) -> SnapshotRoot:
    """A snapshot root on the in-process memory store (``countmem://``)."""
    return root_on("memory", request, tmp_path)


@pytest.fixture
def s3_root(s3: S3Source) -> SnapshotRoot:
    """A snapshot root in a fresh bucket on moto."""
    return SnapshotRoot.on(s3)


def published(storage: SnapshotStorage) -> Path:
    """The version directory the destination symlink points at."""
    return storage.destination.resolve()


def state_text(storage: SnapshotStorage, base: Path) -> str:
    """The raw ``state.json`` of ``storage``."""
    return (base / METADATA_DIR / storage.name / "state.json").read_text(encoding="utf-8")


def assert_one_line(error: BaseException) -> str:
    """The message of ``error``, checked to be one line; returned for more checks."""
    message = str(error)
    assert message
    assert "\n" not in message
    return message


def manifest_bytes(root: SnapshotRoot, snapshot_id: str) -> bytes:
    """The manifest of ``snapshot_id`` as stored, read through fsspec."""
    with fsspec.open(f"{root.push_url}/{manifest_key(snapshot_id)}", "rb", **root.settings) as f:
        data: bytes = f.read()
    return data


# --- 1. round trip on every kind -----------------------------------------------------------


class TestRoundTrip:
    """A pushed tree comes back exactly, on s3, gs, az, http, file and memory alike."""

    def test_pull_publishes_the_exact_tree(
        self, root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """Bytes, 0755/0644, symlinks, ignore rules and .git as pushed; revision is the id."""
        directory = project(tmp_path / "project")
        expected = expected_project()
        if root.source.accepts_empty:  # the GCS emulator cannot store an empty object
            (directory / "lib/__init__.py").write_bytes(b"")
            expected = dict(sorted({**expected, "lib/__init__.py": ("file", b"", 0o644)}.items()))
        info = root.push(directory)
        storage = root.storage()
        storage.set_base_path(base)

        result = pull(storage)

        assert describe(storage.destination) == expected
        assert (result.revision, result.changed) == (info.id, True)
        assert info.files == len([e for e in expected.values() if e[0] == "file"])
        assert info.blobs_uploaded == info.files  # every content is distinct
        assert result.files_fetched == info.files
        assert result.bytes_fetched == info.bytes_uploaded
        # the on-disk contract: BASE/NAME is a relative symlink to an immutable version
        assert storage.destination == base / storage.name
        assert storage.destination.is_symlink()
        link = os.readlink(storage.destination)
        assert not os.path.isabs(link)
        version = published(storage)
        assert version.parent == base / METADATA_DIR / storage.name / "versions"
        assert version.name.startswith(info.id[:40])
        assert json.loads(state_text(storage, base))["revision"] == info.id
        # links resolve inside the version, through a symlinked directory too
        assert (storage.destination / "libs" / "util.py").read_bytes() == b"UTIL = 1\n"
        assert (storage.destination / "lib/deep/main.py").resolve() == version / "flows/main.py"

    def test_noop_pull_reads_only_the_ref(
        self, root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """An unchanged ref is a no-op: only the ref is read and the live version stays."""
        info = root.push(write_tree(tmp_path / "p", numbered(5)))
        storage = root.storage()
        storage.set_base_path(base)
        pull(storage)
        live = published(storage)
        root.source.reset_counts()

        again = pull(storage)

        assert (again.revision, again.changed, again.files_fetched) == (info.id, False, 0)
        assert published(storage) == live
        assert root.reads() == ["refs/latest"]
        if root.source.kind in NOOP_REQUESTS:
            assert root.requests() == NOOP_REQUESTS[root.source.kind]

    def test_pinned_published_snapshot_costs_nothing(
        self, root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """A pull pinned to the published id reads nothing and makes no request at all."""
        info = root.push(write_tree(tmp_path / "p", numbered(5)))
        storage = root.storage(snapshot=info.id)
        storage.set_base_path(base)
        assert pull(storage).changed
        root.source.reset_counts()

        again = pull(storage)

        assert (again.revision, again.changed) == (info.id, False)
        assert root.reads() == []
        no_server = root.source.kind in ("file", "memory")
        assert root.requests() == (None if no_server else 0)

    def test_small_change_reads_ref_manifest_and_changed_blob(
        self, root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """A 1 % change reads exactly the ref, the new manifest and the one changed blob.

        A 4 % change on the servers, whose uploads are slow, to keep the file fast.
        """
        count = 25 if root.source.kind in ("s3", "gs", "az") else 100
        directory = write_tree(tmp_path / "p", numbered(count))
        root.push(directory)
        storage = root.storage()
        storage.set_base_path(base)
        pull(storage)
        (directory / "f/012.txt").write_bytes(b"changed\n")
        info = root.push(directory)
        root.source.reset_counts()

        result = pull(storage)

        changed = hashlib.sha256(b"changed\n").hexdigest()
        assert root.reads() == sorted([blob_key(changed), "refs/latest", manifest_key(info.id)])
        assert (result.revision, result.files_fetched, result.bytes_fetched) == (info.id, 1, 8)
        assert (storage.destination / "f/012.txt").read_bytes() == b"changed\n"

    def test_missing_ref_is_not_found_with_a_push_hint(
        self, root: SnapshotRoot, base: Path
    ) -> None:
        """No ref yet: NotFoundError, one line, saying to run runner-storage push."""
        storage = root.storage(ref="prod")
        storage.set_base_path(base)

        with pytest.raises(NotFoundError) as caught:
            pull(storage)

        message = assert_one_line(caught.value)
        assert "runner-storage push" in message
        assert "prod" in message
        assert not os.path.lexists(storage.destination)

    def test_damaged_blob_fails_and_keeps_the_live_version(
        self, root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """A corrupt blob: SourceError; a deleted one: NotFoundError naming it; old tree live."""
        directory = write_tree(tmp_path / "p", numbered(3))
        root.push(directory)
        storage = root.storage()
        storage.set_base_path(base)
        pull(storage)
        live, before = published(storage), describe(storage.destination)
        (directory / "f/001.txt").write_bytes(b"new content\n")
        root.push(directory)
        damaged = blob_key(hashlib.sha256(b"new content\n").hexdigest())
        root.put(damaged, b"bad content\n")  # same size, other bytes

        with pytest.raises(SourceError) as corrupt:
            pull(storage)
        root.delete(damaged)
        with pytest.raises(NotFoundError) as missing:
            pull(storage)

        assert type(corrupt.value) is SourceError
        assert "corrupt" in assert_one_line(corrupt.value)
        message = assert_one_line(missing.value)
        if root.source.kind != "http":  # an HTTP root cannot be listed to say which
            assert damaged in message
        assert published(storage) == live
        assert describe(storage.destination) == before
        state = json.loads(state_text(storage, base))
        assert state["consecutive_failures"] == 2


def test_a_plain_path_is_a_root(tmp_path: Path, base: Path) -> None:
    """push, pull and gc take a local path as the root, as a file:// URL of it."""
    store = tmp_path / "store"
    directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})

    info = push_snapshot(directory, store)
    storage = SnapshotStorage(store)
    storage.set_base_path(base)
    result = pull(storage)
    collected = collect_garbage(os.fspath(store), keep=0, grace_period=0)

    assert storage.root == store.as_uri()
    assert result.revision == info.id
    assert (store / "refs" / "latest").read_text() == f"{info.id}\n"
    assert collected.kept_snapshots == (info.id,)
    assert describe(storage.destination) == {"a.txt": ("file", b"a\n", 0o644)}


def test_push_to_an_http_root_is_refused(http_file_server: Any, tmp_path: Path) -> None:
    """http(s) roots are read-only: push and gc say so in one line before any request."""
    url = http_file_server.url_for("snap")
    directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
    http_file_server.reset_requests()

    with pytest.raises(ConfigurationError) as pushed:
        push_snapshot(directory, url)
    with pytest.raises(ConfigurationError) as collected:
        collect_garbage(url, keep=1)

    assert "read-only" in assert_one_line(pushed.value)
    assert "read-only" in assert_one_line(collected.value)
    assert http_file_server.requests == []


class TestPushRefusals:
    """What a push cannot copy safely is refused in one line, before anything is written."""

    def test_symlink_out_of_the_tree(self, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """A symlink leaving the pushed folder: UnsafeContentError naming it; nothing written."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"}, links={"out": "../secret"})
        (tmp_path / "secret").write_bytes(b"not part of the tree\n")

        with pytest.raises(UnsafeContentError) as caught:
            mem_root.push(directory)

        assert "out" in assert_one_line(caught.value)
        assert mem_root.object_keys() == []

    def test_special_file(self, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """A FIFO cannot be pushed: UnsafeContentError naming it; nothing written."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
        os.mkfifo(directory / "pipe")

        with pytest.raises(UnsafeContentError) as caught:
            mem_root.push(directory)

        assert "pipe" in assert_one_line(caught.value)
        assert mem_root.object_keys() == []

    def test_file_name_that_is_not_utf8(self, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """A name a manifest cannot hold: UnsafeContentError naming it, nothing uploaded."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
        (directory / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name\n")

        with pytest.raises(UnsafeContentError) as caught:
            mem_root.push(directory)

        assert "caf" in assert_one_line(caught.value)
        assert mem_root.object_keys() == []

    @pytest.mark.parametrize("what", ["empty", "all-ignored", "not-a-folder", "bad-ref"])
    def test_nothing_or_bad_input(self, what: str, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """An empty or fully ignored folder, a file, a bad ref: ConfigurationError."""
        directory = tmp_path / "p"
        options: dict[str, Any] = {}
        if what == "empty":
            directory.mkdir()
        elif what == "all-ignored":
            write_tree(directory, {".prefectignore": b"*\n", "a.txt": b"a\n"})
        elif what == "not-a-folder":
            directory.write_bytes(b"a file\n")
        else:
            write_tree(directory, {"a.txt": b"a\n"})
            options["ref"] = "../escape"

        with pytest.raises(ConfigurationError) as caught:
            mem_root.push(directory, **options)

        assert_one_line(caught.value)
        assert mem_root.object_keys() == []

    def test_ignore_file_replaces_prefectignore(
        self, mem_root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """ignore_file= is used instead of the tree's .prefectignore; .git still left out."""
        directory = write_tree(
            tmp_path / "p",
            {
                ".prefectignore": b"*.py\n",
                "a.py": b"A\n",
                "b.txt": b"B\n",
                ".git/HEAD": b"ref: refs/heads/main\n",
            },
        )
        rules = tmp_path / "rules"
        rules.write_bytes(b"*.txt\n!.git/\n")

        mem_root.push(directory, ignore_file=rules)
        storage = mem_root.storage()
        storage.set_base_path(base)
        pull(storage)

        assert sorted(describe(storage.destination)) == [".prefectignore", "a.py"]


# --- 2. dedup --------------------------------------------------------------------------------


class TestDedup:
    """A push uploads only the blobs the store lacks."""

    def test_unchanged_tree_writes_nothing(self, root: SnapshotRoot, tmp_path: Path) -> None:
        """Pushing the same tree again: no blob, no manifest, the ref not even rewritten."""
        directory = project(tmp_path / "project")
        first = root.push(directory)
        keys, stamps = root.object_keys(), root.stamps()
        root.source.reset_counts()

        again = root.push(directory)

        assert again.id == first.id
        assert (again.blobs_uploaded, again.bytes_uploaded) == (0, 0)
        assert (again.manifest_uploaded, again.ref_moved) == (False, False)
        assert root.object_keys() == keys
        assert root.stamps() == stamps
        assert root.writes() == (None if stamps else [])  # no server log: stamps tell

    def test_one_changed_file_uploads_one_blob(
        self, mem_root: SnapshotRoot, tmp_path: Path
    ) -> None:
        """After changing one file of twenty, exactly its blob, the manifest and ref move."""
        directory = write_tree(tmp_path / "p", numbered(20))
        first = mem_root.push(directory)
        (directory / "f/007.txt").write_bytes(b"seven, edited\n")

        second = mem_root.push(directory)

        assert second.id != first.id
        assert (second.blobs_uploaded, second.bytes_uploaded) == (1, 14)
        assert (second.manifest_uploaded, second.ref_moved) == (True, True)
        blobs = [key for key in mem_root.object_keys() if key.startswith("blobs/")]
        assert len(blobs) == 21

    def test_directories_sharing_files_share_blobs(
        self, mem_root: SnapshotRoot, tmp_path: Path
    ) -> None:
        """Two projects with common files store each common content once."""
        shared = {"common/a.py": b"A = 1\n", "common/b.py": b"B = 2\n"}
        one = write_tree(tmp_path / "one", {**shared, "own.py": b"one\n"})
        two = write_tree(tmp_path / "two", {**shared, "other/own.py": b"two\n"})

        first = mem_root.push(one, ref="one")
        second = mem_root.push(two, ref="two")

        assert (first.blobs_uploaded, second.blobs_uploaded) == (3, 1)
        assert len([key for key in mem_root.object_keys() if key.startswith("blobs/")]) == 4

    @pytest.mark.parametrize("kind", ["s3", "gs"])
    def test_server_sees_no_blob_upload_for_known_content(
        self, kind: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """Counted at the server: an unchanged tree writes nothing; a rename writes 2 objects."""
        root = root_on(kind, request, tmp_path)
        directory = write_tree(tmp_path / "p", numbered(10))
        root.push(directory)
        root.source.reset_counts()

        root.push(directory)
        unchanged = root.writes()
        (directory / "f/000.txt").rename(directory / "f/renamed.txt")
        root.source.reset_counts()
        renamed = root.push(directory)
        writes = root.writes()

        assert unchanged == []
        assert renamed.blobs_uploaded == 0
        assert writes is not None
        assert len(writes) == 2  # the manifest, then the ref; no blob
        if isinstance(root.source, S3Source):  # GCS names the object in the body, not the path
            bucket = root.source.bucket
            assert writes == [
                f"PUT /{bucket}/snap/{manifest_key(renamed.id)}",
                f"PUT /{bucket}/snap/{ref_key('latest')}",
            ]


# --- 3. request counts at the server -------------------------------------------------------


def test_noop_pull_of_a_ref_on_s3_is_one_request(
    s3_root: SnapshotRoot, tmp_path: Path, base: Path
) -> None:
    """Following a ref that did not move costs one GET at S3, as at GCS and Azure."""
    s3_root.push(write_tree(tmp_path / "p", numbered(5)))
    storage = s3_root.storage()
    storage.set_base_path(base)
    pull(storage)
    s3_root.source.reset_counts()

    assert not pull(storage).changed

    assert s3_root.requests() == 1


def test_rollback_to_a_kept_snapshot_downloads_nothing(
    mem_root: SnapshotRoot, tmp_path: Path, base: Path
) -> None:
    """Pointing the ref back at a kept snapshot republishes it from disk: only the ref read."""
    directory = write_tree(tmp_path / "p", numbered(5))
    old = mem_root.push(directory)
    storage = mem_root.storage()
    storage.set_base_path(base)
    pull(storage)
    old_version = published(storage)
    (directory / "f/001.txt").write_bytes(b"v2\n")
    mem_root.push(directory)
    pull(storage)
    mem_root.set_ref(old.id)
    mem_root.source.reset_counts()

    result = pull(storage)

    assert (result.revision, result.changed, result.files_fetched) == (old.id, True, 0)
    assert published(storage) == old_version
    assert mem_root.reads() == ["refs/latest"]


# --- 4. hard links from kept versions ------------------------------------------------------


class TestLinking:
    """Unchanged content is linked from the kept version, never written through."""

    def test_unchanged_files_share_the_inode_of_the_kept_copy(
        self, mem_root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """The next version hard-links unchanged files; the changed one is new; v1 intact."""
        directory = write_tree(tmp_path / "p", numbered(10), executable=("f/003.txt",))
        mem_root.push(directory)
        storage = mem_root.storage()
        storage.set_base_path(base)
        pull(storage)
        old = published(storage)
        old_tree = describe(old)
        (directory / "f/005.txt").write_bytes(b"five, edited\n")
        mem_root.push(directory)

        result = pull(storage)

        new = published(storage)
        assert new != old
        assert result.files_fetched == 1
        for path in numbered(10):
            same = (new / path).stat().st_ino == (old / path).stat().st_ino
            assert same == (path != "f/005.txt"), path
        assert (new / "f/003.txt").stat().st_mode & 0o777 == 0o755
        assert describe(old) == old_tree

    def test_file_wanted_with_another_mode_is_a_copy(
        self, mem_root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """Same content made executable: a copy of its own with 0755; the kept one stays 0644."""
        directory = write_tree(tmp_path / "p", {"run.sh": b"#!/bin/sh\n", "x.txt": b"x\n"})
        mem_root.push(directory)
        storage = mem_root.storage()
        storage.set_base_path(base)
        pull(storage)
        old = published(storage)
        os.chmod(directory / "run.sh", 0o755)  # noqa: S103 - made executable on purpose
        mem_root.source.reset_counts()
        mem_root.push(directory)

        result = pull(storage)

        new = published(storage)
        assert result.files_fetched == 0  # the content was on disk already
        assert (new / "run.sh").stat().st_mode & 0o777 == 0o755
        assert (old / "run.sh").stat().st_mode & 0o777 == 0o644
        assert (new / "run.sh").stat().st_ino != (old / "run.sh").stat().st_ino
        assert (new / "x.txt").stat().st_ino == (old / "x.txt").stat().st_ino

    def test_one_content_at_two_modes_in_one_tree(
        self, mem_root: SnapshotRoot, tmp_path: Path, base: Path
    ) -> None:
        """Two paths with the same bytes, one executable: one download, each its own mode."""
        data = b"#!/bin/sh\necho same\n"
        directory = write_tree(
            tmp_path / "p",
            {"bin/tool": data, "doc/tool.txt": data, "doc/again.txt": data},
            executable=("bin/tool",),
        )
        info = mem_root.push(directory)
        storage = mem_root.storage()
        storage.set_base_path(base)

        result = pull(storage)

        assert info.blobs_uploaded == 1
        assert result.files_fetched == 1
        assert describe(storage.destination) == {
            "bin/tool": ("file", data, 0o755),
            "doc/again.txt": ("file", data, 0o644),
            "doc/tool.txt": ("file", data, 0o644),
        }


# --- 5. damaged and hostile manifests ------------------------------------------------------


def _hostile_cases() -> list[Any]:
    data = b"payload\n"
    ok = file_record("ok.txt", data)
    link = "symlinks"
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "dotdot": ({"files": [file_record("../escape.txt", data)]}, "'../escape.txt'"),
        "dotdot-inside": ({"files": [file_record("a/../../x.txt", data)]}, "'a/../../x.txt'"),
        "absolute": ({"files": [file_record("/tmp/escape.txt", data)]}, "'/tmp/escape.txt'"),
        "empty-path": ({"files": [file_record("", data)]}, "path ''"),
        "path-not-text": ({"files": [{**file_record("x", data), "path": 7}]}, "not text"),
        "duplicate": ({"files": [ok, file_record("ok.txt", b"other\n")]}, "listed twice"),
        "file-and-link": ({"files": [ok], link: [{"path": "ok.txt", "target": "x"}]}, "twice"),
        "under-a-file": (
            {"files": [ok, file_record("ok.txt/inner.txt", data)]},
            "'ok.txt/inner.txt' is below 'ok.txt'",
        ),
        "under-a-link": (
            {"files": [ok, file_record("d/inner.txt", data)], link: [{"path": "d", "target": "s"}]},
            "'d/inner.txt' is below 'd'",
        ),
        "link-out": ({"files": [ok], link: [{"path": "e", "target": "../../etc"}]}, "'../../etc'"),
        "link-out-deep": ({link: [{"path": "a/b/up", "target": "../../../x"}]}, "'a/b/up'"),
        "link-absolute": ({"files": [ok], link: [{"path": "e", "target": "/etc"}]}, "'/etc'"),
        "link-empty": ({"files": [ok], link: [{"path": "l", "target": ""}]}, "'l'"),
        # each link stays inside as text; on disk sub/a -> sub/b/.. -> the version's parent:
        # only the publisher's containment check of the built tree can see it
        "link-chain-on-disk": (
            {
                "files": [ok],
                link: [{"path": "sub/b", "target": ".."}, {"path": "sub/a", "target": "b/.."}],
            },
            "sub/a -> b/..",
        ),
        "size-negative": ({"files": [file_record("ok.txt", data, size=-1)]}, "size -1"),
        "size-over-1TiB": (
            {"files": [file_record("ok.txt", data, size=(1 << 40) + 1)]},
            f"size {(1 << 40) + 1}",
        ),
        "size-bool": ({"files": [file_record("one.txt", b"1", size=True)]}, "size True"),
        "mode-setuid": ({"files": [file_record("ok.txt", data, mode=0o4755)]}, "mode 2541"),
        "mode-bool": ({"files": [file_record("ok.txt", data, mode=True)]}, "mode True"),
        "sha-not-hex": ({"files": [file_record("ok.txt", data, sha256="z" * 64)]}, "sha256"),
    }
    return [pytest.param(case, fragment, id=name) for name, (case, fragment) in cases.items()]


def _broken_cases() -> list[Any]:
    document = manifest_document([file_record("ok.txt", b"payload\n")])
    cases: dict[str, Any] = {
        "not-json": b"{not json",
        "not-an-object": [1, 2],
        "other-format": {**document, "format": "something-else"},
        "future-version": {**document, "version": 2},
        "files-not-a-list": {**document, "files": {"ok.txt": 1}},
        "record-not-an-object": {**document, "files": ["ok.txt"]},
    }
    return [pytest.param(case, id=name) for name, case in cases.items()]


class TestUntrustedManifests:
    """A fetched manifest is untrusted: anything wrong fails the pull and publishes nothing."""

    @pytest.fixture
    def live(self, mem_root: SnapshotRoot, tmp_path: Path, base: Path) -> SnapshotStorage:
        """A storage with a good version published, following ``latest``."""
        mem_root.push(write_tree(tmp_path / "good", {"good.txt": b"good\n"}))
        storage = mem_root.storage()
        storage.set_base_path(base)
        pull(storage)
        return storage

    def assert_nothing_published(self, storage: SnapshotStorage, live: Path) -> None:
        """The good version is still live and whole, staging is empty, nothing escaped."""
        layout = storage.publisher.layout
        assert published(storage) == live
        assert describe(storage.destination) == {"good.txt": ("file", b"good\n", 0o644)}
        assert not layout.staging.exists() or list(layout.staging.iterdir()) == []
        assert sorted(p.name for p in layout.base.parent.iterdir()) == ["base", "good"]
        state = json.loads(layout.state_file.read_text(encoding="utf-8"))
        assert live.name.startswith(state["revision"][:40])
        assert state["consecutive_failures"] == 1

    @pytest.mark.parametrize(("case", "names"), _hostile_cases())
    def test_hostile_manifest_is_refused(
        self,
        case: dict[str, Any],
        names: str,
        mem_root: SnapshotRoot,
        live: SnapshotStorage,
    ) -> None:
        """Escaping, duplicate or nested paths, bad links, sizes, modes: UnsafeContentError."""
        before = published(live)
        for record in case.get("files", []):
            mem_root.put_blob(b"payload\n" if record.get("size") is not True else b"1")
        snapshot_id = mem_root.put_manifest(manifest_document(**case))
        mem_root.set_ref(snapshot_id)

        with pytest.raises(UnsafeContentError) as caught:
            pull(live)

        assert names in assert_one_line(caught.value)
        self.assert_nothing_published(live, before)

    @pytest.mark.parametrize("document", _broken_cases())
    def test_broken_manifest_is_a_source_error(
        self,
        document: Any,
        mem_root: SnapshotRoot,
        live: SnapshotStorage,
    ) -> None:
        """Not JSON, another format or version, malformed lists: SourceError, one line."""
        before = published(live)
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        snapshot_id = hashlib.sha256(data).hexdigest()
        mem_root.put(manifest_key(snapshot_id), data)
        mem_root.set_ref(snapshot_id)

        with pytest.raises(SourceError) as caught:
            pull(live)

        assert type(caught.value) is SourceError
        assert_one_line(caught.value)
        self.assert_nothing_published(live, before)

    def test_manifest_not_matching_its_id_is_refused(
        self, mem_root: SnapshotRoot, live: SnapshotStorage
    ) -> None:
        """A manifest replaced under its id (even by a valid one) is refused as corrupt."""
        before = published(live)
        good = mem_root.put_manifest(manifest_document([file_record("x.txt", b"payload\n")]))
        mem_root.put_blob(b"payload\n")
        other = manifest_document([file_record("y.txt", b"payload\n")])
        mem_root.put(manifest_key(good), json.dumps(other, sort_keys=True).encode())
        mem_root.set_ref(good)

        with pytest.raises(SourceError) as caught:
            pull(live)

        assert type(caught.value) is SourceError
        assert "does not match its id" in assert_one_line(caught.value)
        self.assert_nothing_published(live, before)

    def test_ref_holding_garbage_is_a_source_error(
        self, mem_root: SnapshotRoot, live: SnapshotStorage
    ) -> None:
        """A ref that holds no id fails the pull with SourceError; the live version stays."""
        before = published(live)
        mem_root.put(ref_key("latest"), b"<html>not an id</html>\n")

        with pytest.raises(SourceError) as caught:
            pull(live)

        assert type(caught.value) is SourceError
        assert "latest" in assert_one_line(caught.value)
        self.assert_nothing_published(live, before)

    def test_pinned_snapshot_that_does_not_exist(
        self, mem_root: SnapshotRoot, base: Path, tmp_path: Path
    ) -> None:
        """A pin naming no manifest: NotFoundError, one line, nothing at the destination."""
        mem_root.push(write_tree(tmp_path / "good", {"good.txt": b"good\n"}))
        storage = mem_root.storage(snapshot="0" * 64)
        storage.set_base_path(base)

        with pytest.raises(NotFoundError) as caught:
            pull(storage)

        assert "0" * 12 in assert_one_line(caught.value)
        assert not os.path.lexists(storage.destination)

    @pytest.mark.parametrize(
        "options",
        [{"ref": "../up"}, {"ref": ""}, {"ref": "-x"}, {"snapshot": "abc"}, {"snapshot": "A" * 64}],
    )
    def test_bad_ref_or_id_is_refused_at_construction(self, options: dict[str, Any]) -> None:
        """A ref name that could leave refs/ or an id that is not 64 hex: ConfigurationError."""
        with pytest.raises(ConfigurationError) as caught:
            SnapshotStorage("memory://x/snap", **options)

        assert_one_line(caught.value)


def test_pushing_again_repairs_a_lost_blob(
    mem_root: SnapshotRoot, tmp_path: Path, base: Path
) -> None:
    """After a blob is lost, pushing the same tree again, as the error says, repairs the store."""
    directory = write_tree(tmp_path / "p", numbered(3))
    info = mem_root.push(directory)
    lost = blob_key(hashlib.sha256(numbered(3)["f/001.txt"]).hexdigest())
    mem_root.delete(lost)
    storage = mem_root.storage()
    storage.set_base_path(base)
    with pytest.raises(NotFoundError, match="push the tree again"):
        pull(storage)

    again = mem_root.push(directory)

    assert again.id == info.id
    assert again.blobs_uploaded == 1
    assert pull(storage).revision == info.id


def test_pushing_again_replaces_a_damaged_blob_of_the_same_size(
    s3_root: SnapshotRoot, tmp_path: Path, base: Path
) -> None:
    """A blob overwritten with other bytes of its size fails the pull; a push replaces it.

    The store's listing promises each object's MD5 on S3, so the push sees the damage
    without reading the blob back.
    """
    directory = write_tree(tmp_path / "p", numbered(3))
    info = s3_root.push(directory)
    content = numbered(3)["f/001.txt"]
    damaged = blob_key(hashlib.sha256(content).hexdigest())
    s3_root.put(damaged, bytes(reversed(content)))
    storage = s3_root.storage()
    storage.set_base_path(base)
    with pytest.raises(SourceError, match="corrupt"):
        pull(storage)

    again = s3_root.push(directory)

    assert (again.id, again.blobs_uploaded, again.manifest_uploaded) == (info.id, 1, False)
    assert pull(storage).revision == info.id


# --- 7. racing pushers ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_racing_pushers_on_one_ref(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two pushes of different trees to one ref at once: both complete, the ref names one."""
    root = root_on(kind, request, tmp_path)
    trees = {
        name: write_tree(tmp_path / name, {**numbered(8, name), f"{name}.txt": name.encode()})
        for name in ("left", "right")
    }
    barrier = threading.Barrier(2)
    infos: dict[str, Any] = {}
    errors: list[BaseException] = []

    def push(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            infos[name] = root.push(trees[name])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(name,)) for name in trees]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert infos["left"].id != infos["right"].id
    for name, info in infos.items():
        storage = root.storage(snapshot=info.id, name=f"pinned-{name}")
        storage.set_base_path(tmp_path / "base")
        pull(storage)
        assert describe(storage.destination) == {
            path: ("file", data, 0o644)
            for path, data in sorted({**numbered(8, name), f"{name}.txt": name.encode()}.items())
        }
    follower = root.storage(name="follower")
    follower.set_base_path(tmp_path / "base")
    assert pull(follower).revision in {info.id for info in infos.values()}


# --- 8. gc ---------------------------------------------------------------------------------


def _four_snapshots(root: SnapshotRoot, tmp_path: Path) -> dict[str, Any]:
    """Push four snapshots, oldest first: ``pinned`` (ref pinned), then three on latest.

    Every tree has ``shared.txt``; each its own file; ``second`` and ``third`` share one more.
    """
    trees = {
        "pinned": {"shared.txt": b"shared\n", "p.txt": b"pinned only\n"},
        "first": {"shared.txt": b"shared\n", "one.txt": b"first only\n"},
        "second": {"shared.txt": b"shared\n", "two.txt": b"second only\n", "m.txt": b"mid\n"},
        "third": {"shared.txt": b"shared\n", "three.txt": b"third only\n", "m.txt": b"mid\n"},
    }
    ids = {}
    for name, files in trees.items():
        directory = write_tree(tmp_path / "trees" / name, files)
        ids[name] = root.push(directory, ref="pinned" if name == "pinned" else "latest").id
    return ids


def _blob_names(root: SnapshotRoot) -> set[str]:
    return {key.rsplit("/", 1)[-1] for key in root.object_keys() if key.startswith("blobs/")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestGarbageCollection:
    """gc keeps what refs name and the newest N, and every blob they need."""

    @pytest.mark.parametrize("kind", WRITABLE_KINDS)
    def test_keeps_refs_newest_young_and_their_blobs(
        self, kind: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """keep=2 and a grace period: what refs name, the 2 newest, anything young stays.

        The first run (the default grace of an hour) deletes only a snapshot that is old
        by its created_at, not its just uploaded blob nor a stray young blob; without a
        grace period the snapshot no ref or keep protects goes, with the blobs only it
        needed, never one a kept snapshot needs (``shared.txt``).
        """
        root = root_on(kind, request, tmp_path)
        ids = _four_snapshots(root, tmp_path)
        fresh_data, stray_data = b"new blob of an old snapshot\n", b"a push still uploading\n"
        fresh, stray = root.put_blob(fresh_data), root.put_blob(stray_data)
        document = manifest_document([file_record("x.txt", fresh_data)])
        document["created_at"] = "2020-01-01T00:00:00.000000Z"
        old = root.put_manifest(document)
        keys = set(root.object_keys())

        young = collect_garbage(root.push_url, keep=2, **root.settings)
        after_young = set(root.object_keys())
        result = collect_garbage(root.push_url, keep=2, grace_period=0, **root.settings)

        assert (young.deleted_snapshots, young.deleted_blobs) == ((old,), ())
        assert after_young == keys - {manifest_key(old)}
        assert result.deleted_snapshots == (ids["first"],)
        assert result.kept_snapshots == (ids["third"], ids["second"], ids["pinned"])
        assert sorted(result.deleted_blobs) == sorted([_sha(b"first only\n"), fresh, stray])
        assert result.bytes_freed == len(b"first only\n") + len(fresh_data) + len(stray_data)
        assert result.refs == {"latest": ids["third"], "pinned": ids["pinned"]}
        assert (result.dangling_refs, result.dry_run) == ((), False)
        assert manifest_key(ids["first"]) not in root.object_keys()
        assert _blob_names(root) == {
            _sha(data)
            for data in (b"shared\n", b"pinned only\n", b"second only\n", b"mid\n", b"third only\n")
        }
        # what is kept is whole: each kept snapshot still pulls by id
        for name in ("second", "pinned"):
            storage = root.storage(snapshot=ids[name], name=name)
            storage.set_base_path(tmp_path / "base")
            assert pull(storage).changed
        gone = root.storage(snapshot=ids["first"], name="first")
        gone.set_base_path(tmp_path / "base")
        with pytest.raises(NotFoundError):
            pull(gone)

    def test_dry_run_deletes_nothing(self, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """dry_run reports what a real run deletes, and the store is left exactly as it was."""
        ids = _four_snapshots(mem_root, tmp_path)
        keys = mem_root.object_keys()

        dry = collect_garbage(mem_root.push_url, keep=0, grace_period=0, dry_run=True)

        assert mem_root.object_keys() == keys
        assert dry.dry_run
        assert set(dry.deleted_snapshots) == {ids["first"], ids["second"]}
        real = collect_garbage(mem_root.push_url, keep=0, grace_period=0)
        assert (real.deleted_snapshots, real.deleted_blobs) == (
            dry.deleted_snapshots,
            dry.deleted_blobs,
        )
        assert set(real.deleted_blobs) == {_sha(b"first only\n"), _sha(b"second only\n")}
        assert mem_root.object_keys() != keys

    def test_unreadable_manifest_stops_gc_before_any_delete(
        self, mem_root: SnapshotRoot, tmp_path: Path
    ) -> None:
        """A manifest gc cannot read: SourceError naming it, and nothing at all deleted."""
        _four_snapshots(mem_root, tmp_path)
        garbage = manifest_key("f" * 64)
        mem_root.put(garbage, b"\x00 not a manifest")
        keys = mem_root.object_keys()

        with pytest.raises(SourceError) as caught:
            collect_garbage(mem_root.push_url, keep=0, grace_period=0)

        message = assert_one_line(caught.value)
        assert garbage in message
        assert mem_root.object_keys() == keys

    def test_dangling_ref_is_reported(self, mem_root: SnapshotRoot, tmp_path: Path) -> None:
        """A ref naming a snapshot that is gone is reported, and gc still runs."""
        ids = _four_snapshots(mem_root, tmp_path)
        mem_root.set_ref("e" * 64, name="team/broken")

        result = collect_garbage(mem_root.push_url, keep=0, grace_period=0)

        assert result.dangling_refs == ("team/broken",)
        assert set(result.kept_snapshots) == {ids["third"], ids["pinned"]}

    @pytest.mark.anyio
    async def test_async_forms_run_inside_an_event_loop(
        self, mem_root: SnapshotRoot, tmp_path: Path
    ) -> None:
        """apush_snapshot and acollect_garbage work from a running event loop."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
        info = await apush_snapshot(directory, mem_root.push_url, ref="async")
        (directory / "a.txt").write_bytes(b"b\n")
        second = await apush_snapshot(directory, mem_root.push_url, ref="async")

        result = await acollect_garbage(mem_root.push_url, keep=0, grace_period=0)

        assert result.deleted_snapshots == (info.id,)
        assert result.kept_snapshots == (second.id,)


# --- 9. provenance -------------------------------------------------------------------------

ORIGIN = "https://user:s3cr3t-canary@example.invalid/org/repo.git"


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of every git command here, GitPython's too: no host config, no prompt."""
    values = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.invalid",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.invalid",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def git(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; return its stdout, stripped."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


class TestProvenance:
    """A push records the git checkout it came from, without credentials."""

    def test_checkout_commit_branch_dirty_and_clean_origin(
        self, git_env: dict[str, str], tmp_path: Path, mem_root: SnapshotRoot
    ) -> None:
        """commit, branch, dirty False then True after an edit, origin without credentials."""
        repo = write_tree(tmp_path / "repo", {"flows/a.py": b"A = 1\n", "README": b"r\n"})
        git(git_env, repo, "init", "-q", "-b", "main")
        git(git_env, repo, "remote", "add", "origin", ORIGIN)
        git(git_env, repo, "add", "-A")
        git(git_env, repo, "commit", "-q", "-m", "first")
        head = git(git_env, repo, "rev-parse", "HEAD")

        clean = mem_root.push(repo)
        (repo / "README").write_bytes(b"edited outside flows/\n")
        dirty = mem_root.push(repo)
        sub_clean = mem_root.push(repo / "flows", ref="sub")
        (repo / "flows/new.py").write_bytes(b"untracked\n")
        sub_dirty = mem_root.push(repo / "flows", ref="sub")
        git(git_env, repo, "checkout", "-q", "--detach")
        detached = mem_root.push(repo, ref="detached")

        clean_bytes = manifest_bytes(mem_root, clean.id)
        provenance = {
            name: json.loads(manifest_bytes(mem_root, info.id))["provenance"]["git"]
            for name, info in (
                ("dirty", dirty),
                ("sub_clean", sub_clean),
                ("sub_dirty", sub_dirty),
                ("detached", detached),
            )
        }
        assert json.loads(clean_bytes)["provenance"] == {
            "git": {
                "commit": head,
                "branch": "main",
                "dirty": False,
                "path": ".",
                "origin": "https://example.invalid/org/repo.git",
            }
        }
        assert provenance["dirty"]["dirty"] is True
        assert (provenance["sub_clean"]["path"], provenance["sub_clean"]["dirty"]) == (
            "flows",
            False,  # the edit is outside the pushed folder
        )
        assert provenance["sub_dirty"]["dirty"] is True  # an untracked file inside it
        assert (provenance["detached"]["branch"], provenance["detached"]["commit"]) == (None, head)
        assert b"s3cr3t-canary" not in clean_bytes
        assert not [r for r in json.loads(clean_bytes)["files"] if ".git" in r["path"]]

    def test_outside_a_checkout_there_is_no_provenance(
        self, git_env: dict[str, str], tmp_path: Path, mem_root: SnapshotRoot
    ) -> None:
        """A folder in no git checkout is pushed with empty provenance."""
        directory = write_tree(tmp_path / "plain", {"a.py": b"A\n"})
        with pytest.raises(subprocess.CalledProcessError):
            git(git_env, directory, "rev-parse", "--git-dir")

        info = mem_root.push(directory)

        assert json.loads(manifest_bytes(mem_root, info.id))["provenance"] == {}


# --- 10. the canary secret -----------------------------------------------------------------

CANARY = f"CANARY-{uuid.uuid4().hex}"
CANARY_KEY = f"AKIACANARY{uuid.uuid4().hex[:10].upper()}"


class TestCanary:
    """A secret setting appears in no manifest, ref, key, state, step or error message."""

    def test_canary_appears_nowhere(
        self,
        s3: S3Source,
        tmp_path: Path,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Push, pull, step and failing pulls with a canary secret leave no trace of it."""
        caplog.set_level(logging.DEBUG)
        monkeypatch.setenv("RS_SNAP_SECRET", CANARY)
        monkeypatch.setenv("RS_SNAP_KEY", CANARY_KEY)
        server, url = s3.server, s3.url("snap")
        settings: dict[str, Any] = {
            "key": server.key,
            "secret": Secret.from_env("RS_SNAP_SECRET"),
            "endpoint_url": server.endpoint_url,
        }
        directory = write_tree(tmp_path / "project", {"a.py": b"A\n", "b/c.py": b"C\n"})
        info = push_snapshot(directory, url, **settings)
        storage = SnapshotStorage(url, **settings)
        storage.set_base_path(base)
        pull(storage)
        step = storage.to_pull_step()
        texts = [json.dumps(step), repr(storage), repr(info)]
        texts += [os.fspath(p) for p in base.rglob("*")]
        texts += [p.read_text("utf-8", "replace") for p in base.rglob("*") if p.is_file()]
        for key in server.list_keys(s3.bucket):
            texts += [key, server.get(s3.bucket, key).decode("utf-8", "replace")]
        failures = self._failures(s3, tmp_path)

        assert step[PULL_STEP]["secret"] == "{{ $RS_SNAP_SECRET }}"
        assert info.id in texts[0]
        assert len(failures) == 7
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("runner_storage")]
        for text in [*texts, *failures, *ours]:
            assert CANARY not in text
            assert CANARY_KEY not in text
        # botocore's own debug log shows the access key id it signs with; never the secret
        assert CANARY not in caplog.text

    def _failures(self, s3: S3Source, tmp_path: Path) -> list[str]:
        """Messages and state of pulls and a push rejected with canary credentials."""
        server, url = s3.server, s3.url("snap")
        texts = []
        with server.enable_auth() as (key, _):
            attempts = [
                ("latest", key, Secret.from_env("RS_SNAP_SECRET")),
                ("missing", key, Secret.from_env("RS_SNAP_SECRET")),
                ("latest", Secret.from_env("RS_SNAP_KEY"), Secret.from_env("RS_SNAP_SECRET")),
            ]
            for i, (ref, access_key, secret) in enumerate(attempts):
                storage = SnapshotStorage(
                    url, ref=ref, key=access_key, secret=secret, endpoint_url=server.endpoint_url
                )
                base = tmp_path / f"failing-{i}"
                storage.set_base_path(base)
                with pytest.raises(AuthenticationError) as caught:
                    pull(storage)
                assert caught.value.__cause__ is None
                texts += [assert_one_line(caught.value), state_text(storage, base)]
            with pytest.raises(AuthenticationError) as pushed:
                push_snapshot(
                    tmp_path / "project",
                    url,
                    key=key,
                    secret=Secret.from_env("RS_SNAP_SECRET"),
                    endpoint_url=server.endpoint_url,
                )
        return [*texts, assert_one_line(pushed.value)]

    def test_wrong_azure_key_is_kept_out_of_errors(
        self,
        azurite_server: AzuriteServer,
        tmp_path: Path,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A rejected account key fails pull, push and gc in one line that does not hold it."""
        root = SnapshotRoot.on(AzureSource(azurite_server))
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
        root.push(directory)
        wrong = azurite_server.wrong_connection_string()
        wrong_key = wrong.split("AccountKey=", 1)[1].split(";", 1)[0]
        monkeypatch.setenv("RS_SNAP_AZ", wrong)
        settings: dict[str, Any] = {"connection_string": Secret.from_env("RS_SNAP_AZ")}
        storage = SnapshotStorage(root.pull_url, **settings)
        storage.set_base_path(base)

        with pytest.raises(AuthenticationError) as pulled:
            pull(storage)
        with pytest.raises(AuthenticationError) as pushed:
            push_snapshot(directory, root.push_url, **settings)
        with pytest.raises(AuthenticationError) as collected:
            collect_garbage(root.push_url, keep=0, **settings)

        texts = [assert_one_line(e.value) for e in (pulled, pushed, collected)]
        for text in [*texts, state_text(storage, base), repr(storage)]:
            assert wrong_key not in text
        assert pulled.value.__cause__ is None


# --- 11. pull steps ------------------------------------------------------------------------


class TestPullStep:
    """to_pull_step pins one snapshot id and names our step function."""

    @pytest.fixture
    def secret_settings(
        self, s3_root: SnapshotRoot, monkeypatch: pytest.MonkeyPatch
    ) -> dict[str, Any]:
        """The s3 settings, with the secret read from the environment."""
        monkeypatch.setenv("RS_SNAP_S3_SECRET", s3_root.settings["secret"])
        return {**s3_root.settings, "secret": Secret.from_env("RS_SNAP_S3_SECRET")}

    def test_pinned_id_costs_no_request(
        self, s3_root: SnapshotRoot, secret_settings: dict[str, Any], tmp_path: Path
    ) -> None:
        """A pinned storage's step names the pin, with placeholders, without a request."""
        info = s3_root.push(write_tree(tmp_path / "p", {"a.txt": b"a\n"}))
        storage = SnapshotStorage(s3_root.pull_url, snapshot=info.id, **secret_settings)
        storage.set_base_path(tmp_path / "base")
        s3_root.source.reset_counts()

        step = storage.to_pull_step()

        assert step == {
            PULL_STEP: {
                "requires": ["runner-storage", "s3fs"],
                "root": s3_root.pull_url,
                "snapshot": info.id,
                "key": secret_settings["key"],
                "secret": "{{ $RS_SNAP_S3_SECRET }}",
                "endpoint_url": secret_settings["endpoint_url"],
            }
        }
        assert s3_root.source.requests() == 0
        module, _, function = PULL_STEP.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function))

    def test_published_id_wins_over_a_moved_ref(
        self, s3_root: SnapshotRoot, secret_settings: dict[str, Any], tmp_path: Path
    ) -> None:
        """After a pull, the step names what is published, even once the ref moved on."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"a\n"})
        first = s3_root.push(directory)
        storage = SnapshotStorage(s3_root.pull_url, **secret_settings)
        storage.set_base_path(tmp_path / "base")
        pull(storage)
        (directory / "a.txt").write_bytes(b"b\n")
        assert s3_root.push(directory).id != first.id
        s3_root.source.reset_counts()

        step = storage.to_pull_step()

        assert step[PULL_STEP]["snapshot"] == first.id
        assert s3_root.source.requests() == 0

    def test_unpulled_storage_reads_the_ref(
        self, s3_root: SnapshotRoot, secret_settings: dict[str, Any], tmp_path: Path
    ) -> None:
        """Before any pull, the step pins what the ref names now; no ref: NotFoundError."""
        info = s3_root.push(write_tree(tmp_path / "p", {"a.txt": b"a\n"}), ref="prod")
        storage = SnapshotStorage(s3_root.pull_url, ref="prod", **secret_settings)
        storage.set_base_path(tmp_path / "base")
        missing = SnapshotStorage(s3_root.pull_url, ref="nope", **secret_settings)
        missing.set_base_path(tmp_path / "base")

        assert storage.to_pull_step()[PULL_STEP]["snapshot"] == info.id
        with pytest.raises(NotFoundError, match="runner-storage push"):
            missing.to_pull_step()

    def test_plain_secret_is_refused(self, s3_root: SnapshotRoot) -> None:
        """A plain-text secret setting would be written down: the step is refused, redacted."""
        storage = SnapshotStorage(s3_root.pull_url, snapshot="a" * 64, **s3_root.settings)

        with pytest.raises(ConfigurationError) as caught:
            storage.to_pull_step()

        assert s3_root.settings["secret"] not in assert_one_line(caught.value)

    def test_a_gcs_token_mode_is_written_and_not_redacted(self) -> None:
        """``token="anon"`` on a GCS root says how to log in: written as it is, never hidden."""
        storage = SnapshotStorage("gs://bucket/snap", snapshot="a" * 64, token="anon")

        step = storage.to_pull_step()

        assert step[PULL_STEP]["token"] == "anon"
        assert storage.redact("no snapshot at gs://bucket/anonymous") == (
            "no snapshot at gs://bucket/anonymous"
        )

    def test_root_with_a_password_is_refused(self) -> None:
        """A password in the root URL would be written into the step: refused, not shown."""
        storage = SnapshotStorage("https://user:pw-canary@example.invalid/snap", snapshot="a" * 64)

        with pytest.raises(ConfigurationError) as caught:
            storage.to_pull_step()

        assert "pw-canary" not in assert_one_line(caught.value)
        assert "pw-canary" not in repr(storage)

    def test_step_runs_and_publishes_the_pinned_tree(
        self,
        mem_root: SnapshotRoot,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The step's function, called with the step's arguments, publishes that snapshot."""
        directory = write_tree(tmp_path / "p", {"a.txt": b"one\n"})
        first = mem_root.push(directory)
        step = mem_root.storage(snapshot=first.id).to_pull_step()[PULL_STEP]
        (directory / "a.txt").write_bytes(b"two\n")
        mem_root.push(directory)
        workdir = tmp_path / "work"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        module, _, function = PULL_STEP.rpartition(".")
        run: Callable[..., dict[str, str]] = getattr(importlib.import_module(module), function)

        output = run(**{k: v for k, v in step.items() if k != "requires"})

        # runner-storage, and the package implementing the protocol (here, the test's own).
        assert step["requires"] == ["runner-storage", required_package("countmem")]
        assert describe(workdir / output["directory"]) == {"a.txt": ("file", b"one\n", 0o644)}
