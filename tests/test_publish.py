"""The on-disk contract, through Publisher, with small real backends on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner_storage.exceptions import (
    ConfigurationError,
    DestinationConflictError,
    PublishError,
    SourceError,
    UnsafeContentError,
)
from runner_storage.publish import Materialized, PreviousVersion, Publisher, validate_name
from runner_storage.secrets import redact
from runner_storage.types import Revision, SyncResult, fingerprint

pytestmark = pytest.mark.anyio

NAME = "flows"


def revision(tag: str) -> Revision:
    """The revision a test backend reports for the tree tagged ``tag``."""
    return Revision(id=f"rev{tag}", digest=fingerprint(tag))


class TreeBackend:
    """Writes a small tree whose every file contains ``tag``; counts materialisations.

    With ``known=False`` it resolves nothing up front, as block storages do, so the
    publisher learns the revision only after materialising.
    """

    def __init__(self, tag: str, *, known: bool = True, manifest: Any = None) -> None:
        self.tag = tag
        self.known = known
        self.manifest = manifest
        self.materialized = 0
        self.previous: list[PreviousVersion | None] = []

    async def resolve(self) -> Revision | None:
        """The tag's revision, or None when it is only known after fetching."""
        return revision(self.tag) if self.known else None

    async def materialize(
        self, rev: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Write the tagged tree and remember what ``previous`` was."""
        self.materialized += 1
        self.previous.append(previous)
        write_tree(staging, self.tag)
        return Materialized(
            revision(self.tag), files_fetched=3, bytes_fetched=30, manifest=self.manifest
        )


class FailingBackend:
    """Writes part of a tree, then raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def resolve(self) -> Revision | None:
        """Unknown until fetched."""
        return None

    async def materialize(
        self, rev: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Leave a partial file, then fail."""
        (staging / "half-written").write_text("partial")
        raise self.error


class SymlinkBackend:
    """Writes a tree with one symlink ``link`` -> ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def resolve(self) -> Revision | None:
        """A revision named after the link target."""
        return revision(f"link-{self.target}")

    async def materialize(
        self, rev: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Write the tree and the symlink."""
        write_tree(staging, "linked")
        os.symlink(self.target, staging / "sub" / "link")
        return Materialized(revision(f"link-{self.target}"))


def write_tree(root: Path, tag: str) -> None:
    """Three files in two folders, each containing ``tag``."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for relative in ("a.py", "b.py", "sub/c.py"):
        (root / relative).write_text(tag)


def read_tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its text."""
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def versions(base: Path) -> list[str]:
    """The names under ``versions/``."""
    return sorted(p.name for p in (base / ".runner-storage" / NAME / "versions").iterdir())


def state_json(base: Path) -> dict[str, Any]:
    """The parsed ``state.json``."""
    data: dict[str, Any] = json.loads((base / ".runner-storage" / NAME / "state.json").read_text())
    return data


def publisher(base: Path, **kwargs: Any) -> Publisher:
    """A publisher for ``NAME`` under ``base`` with the test source label."""
    kwargs.setdefault("source", "test:source")
    return Publisher(base, NAME, **kwargs)


def lexists(path: Path) -> bool:
    """Whether anything, even a dangling symlink, is at ``path``."""
    return os.path.lexists(path)


def leftovers(base: Path) -> list[str]:
    """Anything a pull leaves behind when it is done: staging trees, temporary files."""
    root = base / ".runner-storage" / NAME
    found = [p.name for p in (root / "staging").glob("*")] if (root / "staging").exists() else []
    found += [n for n in ("link.tmp", "state.json.tmp") if os.path.lexists(root / n)]
    return found


class TestPublish:
    """Publishing versions: the link, no-ops, reuse."""

    async def test_first_publish_is_a_relative_symlink_into_versions(self, tmp_path: Path) -> None:
        """BASE/NAME is a relative symlink to a complete version under .runner-storage."""
        result = await publisher(tmp_path).sync(TreeBackend("1"))

        link = tmp_path / NAME
        assert link.is_symlink()
        target = os.readlink(link)
        assert not os.path.isabs(target)
        assert target == f".runner-storage/{NAME}/versions/{revision('1').version_name}"
        assert read_tree(link) == {"a.py": "1", "b.py": "1", "sub/c.py": "1"}
        assert result == SyncResult("rev1", True, 3, 30, result.duration)
        state = state_json(tmp_path)
        assert state["revision"] == "rev1"
        assert state["version"] == revision("1").version_name
        assert state["source"] == "test:source"
        assert state["consecutive_failures"] == 0
        assert leftovers(tmp_path) == []

    async def test_relative_link_survives_moving_the_base(self, tmp_path: Path) -> None:
        """Because the link is relative, a base path moved or mounted elsewhere still works."""
        await publisher(tmp_path / "a").sync(TreeBackend("1"))
        (tmp_path / "a").rename(tmp_path / "b")
        assert read_tree(tmp_path / "b" / NAME)["a.py"] == "1"

    async def test_nested_name_gets_its_own_folders(self, tmp_path: Path) -> None:
        """A name with a slash publishes BASE/team/flows with metadata beside it."""
        pub = Publisher(tmp_path, "team/flows", source="s")
        await pub.sync(TreeBackend("1"))
        assert read_tree(tmp_path / "team" / "flows")["a.py"] == "1"
        assert (tmp_path / ".runner-storage" / "team" / "flows" / "state.json").is_file()

    async def test_same_digest_is_a_noop(self, tmp_path: Path) -> None:
        """A resolved revision equal to the published one moves no bytes."""
        pub = publisher(tmp_path)
        backend = TreeBackend("1")
        await pub.sync(backend)
        before = os.readlink(tmp_path / NAME)

        result = await pub.sync(backend)

        assert result.changed is False
        assert (result.revision, result.files_fetched, result.bytes_fetched) == ("rev1", 0, 0)
        assert backend.materialized == 1
        assert os.readlink(tmp_path / NAME) == before

    async def test_noop_found_after_materialising_discards_the_staging_tree(
        self, tmp_path: Path
    ) -> None:
        """When only fetching tells the digest (blocks), an unchanged tree leaves no copy."""
        pub = publisher(tmp_path)
        await pub.sync(TreeBackend("1", known=False))

        result = await pub.sync(TreeBackend("1", known=False))

        assert result.changed is False
        assert leftovers(tmp_path) == []
        assert versions(tmp_path) == [revision("1").version_name]

    async def test_new_revision_replaces_the_link(self, tmp_path: Path) -> None:
        """A changed revision publishes a new version and points BASE/NAME at it."""
        pub = publisher(tmp_path)
        await pub.sync(TreeBackend("1"))
        result = await pub.sync(TreeBackend("2"))
        assert result.changed is True
        assert read_tree(tmp_path / NAME)["sub/c.py"] == "2"
        assert state_json(tmp_path)["history"][1]["retired_at"] is not None

    async def test_a_kept_version_is_reused_when_its_digest_returns(self, tmp_path: Path) -> None:
        """A -> B -> A republishes A's kept tree without fetching it again."""
        pub = publisher(tmp_path)
        a, b = TreeBackend("A"), TreeBackend("B")
        await pub.sync(a)
        await pub.sync(b)

        result = await pub.sync(a)

        assert result.changed is True
        assert a.materialized == 1
        assert os.path.basename(os.readlink(tmp_path / NAME)) == revision("A").version_name
        assert read_tree(tmp_path / NAME)["a.py"] == "A"

    async def test_manifest_is_handed_back_and_deleted_with_its_version(
        self, tmp_path: Path
    ) -> None:
        """A backend's manifest comes back with the previous version; retention removes it."""
        pub = publisher(tmp_path, keep=1, grace_seconds=0)
        manifests = tmp_path / ".runner-storage" / NAME / "manifests"
        first = TreeBackend("1", manifest={"files": ["a.py"]})
        await pub.sync(first)
        assert first.previous == [None]

        second = TreeBackend("2", manifest={"files": ["b.py"]})
        await pub.sync(second)

        previous = second.previous[0]
        assert previous is not None
        assert previous.manifest == {"files": ["a.py"]}
        assert previous.path.name == revision("1").version_name
        assert sorted(p.name for p in manifests.iterdir()) == [f"{revision('2').version_name}.json"]


class TestRetention:
    """Old versions: keep the newest K, and never pull a tree from under a runner."""

    async def test_keeps_the_newest_versions_once_grace_has_passed(self, tmp_path: Path) -> None:
        """With no grace period, only the newest ``keep`` versions remain."""
        pub = publisher(tmp_path, keep=2, grace_seconds=0)
        for tag in "1234":
            await pub.sync(TreeBackend(tag))
        assert versions(tmp_path) == sorted(revision(t).version_name for t in "34")
        assert [e["revision"] for e in state_json(tmp_path)["history"]] == ["rev4", "rev3"]

    async def test_never_deletes_a_version_retired_within_grace(self, tmp_path: Path) -> None:
        """Versions retired less than the grace period ago stay, whatever ``keep`` says."""
        pub = publisher(tmp_path, keep=1, grace_seconds=3600)
        for tag in "123":
            await pub.sync(TreeBackend(tag))
        assert versions(tmp_path) == sorted(revision(t).version_name for t in "123")

    async def test_unknown_version_directories_wait_for_the_grace_period(
        self, tmp_path: Path
    ) -> None:
        """A version renamed in place by a pull killed before writing state is not deleted early."""
        pub = publisher(tmp_path, keep=1, grace_seconds=3600)
        await pub.sync(TreeBackend("1"))
        orphan = tmp_path / ".runner-storage" / NAME / "versions" / "orphan"
        orphan.mkdir()
        await pub.sync(TreeBackend("2"))
        assert orphan.is_dir()


class TestFailures:
    """A failed, cancelled or killed pull never touches what is published."""

    async def test_failure_keeps_the_published_tree_and_records_a_redacted_error(
        self, tmp_path: Path
    ) -> None:
        """The last good tree stays live; state.json counts failures without the secret."""
        pub = publisher(tmp_path, redact=lambda text: redact(text, ["s3cr3t-value"]))
        await pub.sync(TreeBackend("1"))
        link_before = os.readlink(tmp_path / NAME)
        error = SourceError("fetch from https://bob:pw@host/x failed with token s3cr3t-value")

        for attempt in (1, 2):
            with pytest.raises(SourceError):
                await pub.sync(FailingBackend(error))
            state = state_json(tmp_path)
            assert state["consecutive_failures"] == attempt

        text = (tmp_path / ".runner-storage" / NAME / "state.json").read_text()
        assert "s3cr3t-value" not in text
        assert "bob:pw" not in text
        assert state["last_error"] == "fetch from https://***@host/x failed with token ***"
        assert state["revision"] == "rev1"
        assert os.readlink(tmp_path / NAME) == link_before
        assert read_tree(tmp_path / NAME) == {"a.py": "1", "b.py": "1", "sub/c.py": "1"}
        assert leftovers(tmp_path) == []

    async def test_success_after_failures_resets_the_count(self, tmp_path: Path) -> None:
        """One good pull clears last_error and consecutive_failures."""
        pub = publisher(tmp_path)
        with pytest.raises(RuntimeError):
            await pub.sync(FailingBackend(RuntimeError("boom")))
        assert state_json(tmp_path)["last_error"] == "RuntimeError"
        await pub.sync(TreeBackend("1"))
        state = state_json(tmp_path)
        assert (state["last_error"], state["consecutive_failures"]) == (None, 0)

    async def test_failed_first_pull_publishes_nothing(self, tmp_path: Path) -> None:
        """Without a good version there is no BASE/NAME at all, never a partial one."""
        with pytest.raises(SourceError):
            await publisher(tmp_path).sync(FailingBackend(SourceError("down")))
        assert not lexists(tmp_path / NAME)
        assert leftovers(tmp_path) == []

    async def test_cancellation_publishes_nothing_and_cleans_up(self, tmp_path: Path) -> None:
        """Cancelling a pull mid-fetch (shutdown) leaves the old tree and no leftovers."""
        pub = publisher(tmp_path)
        await pub.sync(TreeBackend("1"))
        inside = anyio.Event()

        class Hanging(TreeBackend):
            async def materialize(
                self, rev: Revision | None, staging: Path, previous: PreviousVersion | None
            ) -> Materialized:
                """Signal that the fetch started, then hang."""
                write_tree(staging, self.tag)
                inside.set()
                await anyio.sleep(60)
                raise AssertionError("not cancelled")

        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pub.sync, Hanging("2"))
                await inside.wait()
                group.cancel_scope.cancel()
        assert not scope.cancelled_caught

        assert read_tree(tmp_path / NAME)["a.py"] == "1"
        assert versions(tmp_path) == [revision("1").version_name]
        assert leftovers(tmp_path) == []

    async def test_leftovers_of_a_killed_pull_are_removed(self, tmp_path: Path) -> None:
        """Staging trees and temporary files of a dead writer disappear on the next pull."""
        pub = publisher(tmp_path)
        await pub.sync(TreeBackend("1"))
        root = tmp_path / ".runner-storage" / NAME
        write_tree(root / "staging" / "deadbeef", "dead")
        os.symlink("versions/nowhere", root / "link.tmp")
        (root / "state.json.tmp").write_text("{")

        await pub.sync(TreeBackend("1"))

        assert leftovers(tmp_path) == []
        assert read_tree(tmp_path / NAME)["a.py"] == "1"

    def test_a_writer_killed_mid_pull_leaves_the_tree_and_frees_the_lock(
        self, tmp_path: Path
    ) -> None:
        """A writer killed by SIGKILL mid-fetch leaves the old tree; the next pull succeeds."""
        anyio.run(publisher(tmp_path).sync, TreeBackend("1"))
        inside = tmp_path / "inside"
        script = tmp_path / "hang.py"
        script.write_text(
            _SCRIPT_PRELUDE
            + f"""
class Hang:
    async def resolve(self):
        return None

    async def materialize(self, rev, staging, previous):
        (staging / "partial.py").write_text("partial")
        Path({str(inside)!r}).write_text("yes")
        await anyio.sleep(60)

anyio.run(Publisher(Path({str(tmp_path)!r}), {NAME!r}, source="test:source").sync, Hang())
"""
        )
        process = subprocess.Popen([sys.executable, str(script)])
        try:
            _wait_for(inside.exists, process)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        staging = tmp_path / ".runner-storage" / NAME / "staging"
        assert any(staging.iterdir()), "the killed writer should have left a staging tree"
        assert read_tree(tmp_path / NAME)["a.py"] == "1"

        result = anyio.run(_sync_within, publisher(tmp_path), TreeBackend("2"))

        assert result.changed is True
        assert read_tree(tmp_path / NAME)["a.py"] == "2"
        assert leftovers(tmp_path) == []


class TestDestinationSafety:
    """We never overwrite what we do not manage, and never write outside a version."""

    async def test_real_directory_at_the_destination_is_a_conflict(self, tmp_path: Path) -> None:
        """A directory the user put at BASE/NAME is left alone."""
        (tmp_path / NAME).mkdir()
        (tmp_path / NAME / "mine.txt").write_text("keep me")
        with pytest.raises(DestinationConflictError, match="not managed"):
            await publisher(tmp_path).sync(TreeBackend("1"))
        assert read_tree(tmp_path / NAME) == {"mine.txt": "keep me"}

    async def test_foreign_symlink_at_the_destination_is_a_conflict(self, tmp_path: Path) -> None:
        """A symlink we did not create keeps pointing where it did."""
        (tmp_path / "elsewhere").mkdir()
        os.symlink("elsewhere", tmp_path / NAME)
        with pytest.raises(DestinationConflictError):
            await publisher(tmp_path).sync(TreeBackend("1"))
        assert os.readlink(tmp_path / NAME) == "elsewhere"

    async def test_state_of_another_source_is_a_conflict(self, tmp_path: Path) -> None:
        """One destination never mixes two sources."""
        await publisher(tmp_path, source="git:https://a/x.git").sync(TreeBackend("1"))
        before = os.readlink(tmp_path / NAME)
        with pytest.raises(DestinationConflictError, match=r"git:https://a/x\.git"):
            await publisher(tmp_path, source="git:https://b/y.git").sync(TreeBackend("2"))
        assert os.readlink(tmp_path / NAME) == before
        assert state_json(tmp_path)["source"] == "git:https://a/x.git"

    @pytest.mark.parametrize("target", ["/etc", "../../../../outside", "../.."])
    async def test_symlink_escaping_the_tree_is_refused(self, tmp_path: Path, target: str) -> None:
        """Upstream symlinks that point outside the version are never published."""
        pub = publisher(tmp_path)
        await pub.sync(TreeBackend("1"))
        with pytest.raises(UnsafeContentError, match="outside"):
            await pub.sync(SymlinkBackend(target))
        assert read_tree(tmp_path / NAME)["a.py"] == "1"
        assert leftovers(tmp_path) == []

    async def test_symlink_inside_the_tree_is_published(self, tmp_path: Path) -> None:
        """Relative symlinks that stay inside the version are kept as they are."""
        await publisher(tmp_path).sync(SymlinkBackend("../a.py"))
        assert os.readlink(tmp_path / NAME / "sub" / "link") == "../a.py"
        assert (tmp_path / NAME / "sub" / "link").read_text() == "linked"

    async def test_base_path_that_cannot_be_created_is_a_one_line_publish_error(
        self, tmp_path: Path
    ) -> None:
        """A base path under a regular file fails with a one-line PublishError."""
        (tmp_path / "file").write_text("")
        with pytest.raises(PublishError) as caught:
            await Publisher(tmp_path / "file" / "base", NAME, source="s").sync(TreeBackend("1"))
        assert "\n" not in str(caught.value)
        assert str(tmp_path / "file" / "base") in str(caught.value)

    @pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes through chmod 0o555; covered by the ENOTDIR test"
    )
    async def test_read_only_base_path_is_a_one_line_publish_error(self, tmp_path: Path) -> None:
        """A base path the user cannot write names the fix."""
        base = tmp_path / "ro"
        base.mkdir(mode=0o555)
        try:
            with pytest.raises(PublishError, match="permission denied") as caught:
                await Publisher(base, NAME, source="s").sync(TreeBackend("1"))
            assert "\n" not in str(caught.value)
        finally:
            base.chmod(0o755)


class TestValidateName:
    """Destination names stay inside the base path."""

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "   ",
            "/abs",
            "..",
            "a/../b",
            "a/..",
            ".hidden",
            "-x",
            "a\\b",
            "a\0b",
            "a\nb",
            "a\tb",
        ],
    )
    def test_rejects_names_that_escape_or_hide(self, name: str) -> None:
        """Names that are empty, absolute, climb, hide, look like options or carry controls fail."""
        with pytest.raises(ConfigurationError):
            validate_name(name)

    @pytest.mark.parametrize(
        ("name", "normal"), [("flows", "flows"), ("a/b", "a/b"), ("a//b/", "a/b")]
    )
    def test_accepts_plain_and_nested_names(self, name: str, normal: str) -> None:
        """Plain names and nested names are returned normalised."""
        assert validate_name(name) == normal


class TestConcurrency:
    """The lock, readers during publishes, and runners inside old versions."""

    def test_lock_serialises_two_processes(self, tmp_path: Path) -> None:
        """Two OS processes syncing one NAME never materialise at the same time."""
        script = tmp_path / "slow.py"
        script.write_text(
            _SCRIPT_PRELUDE
            + """
import time
base, tag, log_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
peers = [log_dir / f"called-{t}" for t in ("x", "y")]

class Slow:
    async def resolve(self):
        return None

    async def materialize(self, rev, staging, previous):
        start = time.time()
        while not all(p.exists() for p in peers):
            await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # room for the other process to barge in, were there no lock
        (staging / "marker").write_text(tag)
        (log_dir / f"interval-{tag}").write_text(f"{start} {time.time()}")
        return Materialized(Revision("rev" + tag, fingerprint(tag)))

(log_dir / f"called-{tag}").write_text(str(time.time()))
anyio.run(Publisher(base, "flows", source="test:source").sync, Slow())
"""
        )
        processes = [
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "base"), tag, str(tmp_path)]
            )
            for tag in ("x", "y")
        ]
        try:
            codes = [process.wait(timeout=60) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert codes == [0, 0]

        intervals = sorted(
            tuple(map(float, (tmp_path / f"interval-{tag}").read_text().split())) for tag in "xy"
        )
        (_, first_end), (second_start, _) = intervals
        assert first_end <= second_start
        called = [float((tmp_path / f"called-{tag}").read_text()) for tag in "xy"]
        assert max(called) < first_end, "both processes must have contended for the lock"

    def test_reader_never_sees_a_mixed_or_missing_tree(self, tmp_path: Path) -> None:
        """A reader walking BASE/NAME during 50 publishes always sees one complete version."""
        pub = publisher(tmp_path, keep=3)
        anyio.run(pub.sync, TreeBackend("0"))
        link = tmp_path / NAME
        stop = threading.Event()
        progress = threading.Condition()
        observations = 0
        seen: set[str] = set()
        problems: list[str] = []

        def read_loop() -> None:
            nonlocal observations
            while not stop.is_set():
                # What a runner does: resolve the link once, then read inside that version.
                try:
                    tree = read_tree(Path(os.path.realpath(link)))
                except OSError as exc:
                    tree = {"error": repr(exc)}
                if set(tree) != {"a.py", "b.py", "sub/c.py"} or len(set(tree.values())) != 1:
                    problems.append(f"incomplete, mixed or missing tree: {tree}")
                seen.update(tree.values())
                with progress:
                    observations += 1
                    progress.notify_all()

        def walked_since(target: int) -> Callable[[], bool]:
            return lambda: observations >= target

        reader = threading.Thread(target=read_loop)
        reader.start()
        try:
            for number in range(1, 51):
                anyio.run(pub.sync, TreeBackend(str(number)))
                with progress:
                    # at least one whole walk that started after this publish
                    assert progress.wait_for(walked_since(observations + 2), timeout=10)
        finally:
            stop.set()
            reader.join()

        assert problems == []
        assert len(seen) > 10

    def test_process_inside_an_old_version_keeps_reading_it(self, tmp_path: Path) -> None:
        """A runner that chdir'd into BASE/NAME keeps its files after a new publish."""
        pub = publisher(tmp_path, keep=1)
        anyio.run(pub.sync, TreeBackend("1"))
        runner = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, sys\n"
                "os.chdir(sys.argv[1])\n"
                "print('ready', flush=True)\n"
                "sys.stdin.readline()\n"
                "print(open('sub/c.py').read(), sorted(os.listdir('.')), flush=True)\n",
                str(tmp_path / NAME),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert runner.stdin is not None
        assert runner.stdout is not None
        try:
            assert runner.stdout.readline().strip() == "ready"
            anyio.run(pub.sync, TreeBackend("2"))
            assert read_tree(tmp_path / NAME)["sub/c.py"] == "2"
            runner.stdin.write("go\n")
            runner.stdin.flush()
            output = runner.stdout.readline().strip()
        finally:
            runner.stdin.close()
            runner.wait(timeout=10)
            runner.stdout.close()
        assert output == "1 ['a.py', 'b.py', 'sub']"


async def _sync_within(pub: Publisher, backend: TreeBackend, seconds: float = 10) -> SyncResult:
    """Sync, failing instead of hanging if the lock is never released."""
    with anyio.fail_after(seconds):
        return await pub.sync(backend)


_SCRIPT_PRELUDE = """
import sys
from pathlib import Path

import anyio

from runner_storage.types import Revision, fingerprint
from runner_storage.publish import Materialized, Publisher
"""


def _wait_for(condition: Any, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll ``condition`` until true; fail if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"helper process exited early with {process.returncode}"
        assert time.monotonic() < deadline, "helper process never reached the expected point"
        time.sleep(0.02)
