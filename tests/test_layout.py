"""The on-disk layout, the list of published sources, retention's choice, and pull timeouts.

``list_states`` is what ``runner-storage status`` shows: only real sources, whatever the
published trees hold. ``versions_to_delete`` is pure and tested as a table. A pull ended
by its ``timeout`` is recorded in ``state.json`` like any other failure.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner_storage.exceptions import PublishError, TransientSourceError
from runner_storage.publish import (
    Materialized,
    PreviousVersion,
    Publisher,
    SourceLayout,
    list_states,
)
from runner_storage.publish.retention import versions_to_delete
from runner_storage.types import Revision, fingerprint

pytestmark = pytest.mark.anyio


class FileBackend:
    """Publishes ``files`` (relative path -> text) as one revision."""

    def __init__(self, files: dict[str, str], tag: str = "1") -> None:
        self.files = files
        self.tag = tag

    async def resolve(self) -> Revision | None:
        """The revision of the tag."""
        return Revision(id=f"rev{self.tag}", digest=fingerprint(self.tag))

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Write the files."""
        for relative, text in self.files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text)
        return Materialized(Revision(id=f"rev{self.tag}", digest=fingerprint(self.tag)))


class StallingBackend:
    """Resolves nothing and hangs while materialising, as a stalled server does."""

    async def resolve(self) -> Revision | None:
        """Unknown until fetched."""
        return None

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Write part of a tree, then never finish."""
        (staging / "partial.py").write_text("partial")
        await anyio.sleep(3600)
        raise AssertionError("unreachable")


def publish(base: Path, name: str, files: dict[str, str]) -> None:
    """Publish ``files`` as source ``name`` under ``base``."""
    anyio.run(Publisher(base, name, source=f"test:{name}").sync, FileBackend(files))


class TestListStates:
    """Which sources a base path holds."""

    def test_sources_with_slashes_and_a_user_state_file(self, tmp_path: Path) -> None:
        """Real sources are listed, nested names too; a ``state.json`` in a tree is not one."""
        user_state = json.dumps({"source": "not a source", "revision": "x"})
        publish(tmp_path, "flows", {"flows/state.json": user_state, "a.py": "a"})
        publish(tmp_path, "team/models", {"versions/state.json": "[1, 2]", "b.py": "b"})
        listed = list_states(tmp_path)
        assert [name for name, _ in listed] == ["flows", "team/models"]
        assert [state.source for _, state in listed] == ["test:flows", "test:team/models"]

    def test_a_json_list_in_a_published_tree_is_ignored(self, tmp_path: Path) -> None:
        """A published file named ``state.json`` holding a list neither shows nor breaks."""
        publish(tmp_path, "flows", {"state.json": "[]", "deep/state.json": "[1]"})
        assert [name for name, _ in list_states(tmp_path)] == ["flows"]

    def test_nothing_published(self, tmp_path: Path) -> None:
        """An empty or missing base path lists no sources; the object stores are not ones."""
        assert list_states(tmp_path / "missing") == []
        (tmp_path / ".runner-storage" / ".repos" / "abc.git").mkdir(parents=True)
        (tmp_path / ".runner-storage" / ".repos" / "state.json").write_text("{}")
        assert list_states(tmp_path) == []

    @pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"revision": "x"}'])
    def test_a_broken_state_file_is_one_line(self, content: str, tmp_path: Path) -> None:
        """A real source's ``state.json`` that is not a state is one PublishError line."""
        publish(tmp_path, "flows", {"a.py": "a"})
        SourceLayout(tmp_path, "flows").state_file.write_text(content)
        with pytest.raises(PublishError, match=r"cannot read .*state\.json.*delete it") as caught:
            list_states(tmp_path)
        assert "\n" not in str(caught.value)


class TestSourceLayout:
    """Every path of a source, named once."""

    def test_paths(self, tmp_path: Path) -> None:
        """The link, the metadata root and what it holds, as the README draws them."""
        layout = SourceLayout(tmp_path, "team/flows")
        meta = tmp_path / ".runner-storage" / "team/flows"
        assert layout.link == tmp_path / "team/flows"
        assert (layout.root, layout.versions, layout.staging) == (
            meta,
            meta / "versions",
            meta / "staging",
        )
        assert layout.state_file == meta / "state.json"
        assert layout.lock_file == meta / "lock"
        assert layout.manifest("v1") == meta / "manifests" / "v1.json"


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def retired(minutes_ago: float | None) -> str | None:
    """An ISO timestamp ``minutes_ago`` before NOW, or None (still live)."""
    if minutes_ago is None:
        return None
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def history(*entries: tuple[str, float | None]) -> list[dict[str, Any]]:
    """A newest-first history of ``(version, minutes since it was retired)``."""
    return [{"version": v, "retired_at": retired(m)} for v, m in entries]


class TestVersionsToDelete:
    """Retention is a pure choice: newest ``keep`` stay, nothing younger than grace goes."""

    @pytest.mark.parametrize(
        ("entries", "present", "keep", "expected"),
        [
            # newest two kept, the rest retired long ago
            ([("v4", None), ("v3", 60), ("v2", 60), ("v1", 60)], ["v1", "v2", "v3", "v4"], 2,
             ["v1", "v2"]),
            # retired within the grace period: kept whatever keep says
            ([("v3", None), ("v2", 5), ("v1", 60)], ["v1", "v2", "v3"], 1, ["v1"]),
            # an unknown directory modified long ago goes; history entries without a
            # directory are simply not there
            ([("v2", None), ("v1", 60)], ["v2", "orphan"], 1, ["orphan"]),
            # keep larger than the history: nothing goes
            ([("v2", None), ("v1", 60)], ["v1", "v2"], 5, []),
        ],
    )  # fmt: skip
    def test_table(
        self, entries: list[tuple[str, float | None]], present: list[str], keep: int,
        expected: list[str],
    ) -> None:  # fmt: skip
        """Each row: the history, the directories on disk, ``keep``; what is deleted."""
        old = (NOW - timedelta(hours=2)).timestamp()
        doomed = versions_to_delete(
            history(*entries),
            dict.fromkeys(present, old),
            live=entries[0][0],
            keep=keep,
            grace_seconds=600,
            now=NOW.timestamp(),
        )
        assert doomed == expected

    def test_live_and_young_unknown_versions_stay(self) -> None:
        """The live version stays even when keep is 1 and it is old; so does a fresh orphan."""
        now = NOW.timestamp()
        doomed = versions_to_delete(
            history(("v2", 60), ("v1", None)),
            {"v1": now - 7200, "v2": now - 7200, "fresh": now - 5},
            live="v1",
            keep=1,
            grace_seconds=600,
            now=now,
        )
        assert doomed == []


class TestTimeout:
    """A pull that takes longer than its timeout fails, and says so in ``state.json``."""

    async def test_timed_out_pull_is_recorded_and_publishes_nothing(self, tmp_path: Path) -> None:
        """The error is a TransientSourceError; state.json holds it; the tree stays."""
        pub = Publisher(tmp_path, "flows", source="test:flows")
        await pub.sync(FileBackend({"a.py": "one"}))
        with pytest.raises(TransientSourceError, match=r"timed out after 0\.2s") as caught:
            await pub.sync(StallingBackend(), timeout=0.2)
        state = pub.state()
        assert state is not None
        assert state.last_error == str(caught.value)
        assert state.consecutive_failures == 1
        assert (tmp_path / "flows" / "a.py").read_text() == "one"
        assert not pub.layout.staging.exists() or not any(pub.layout.staging.iterdir())

    async def test_a_pull_within_its_timeout_succeeds(self, tmp_path: Path) -> None:
        """A generous timeout changes nothing for a pull that finishes."""
        pub = Publisher(tmp_path, "flows", source="test:flows")
        result = await pub.sync(FileBackend({"a.py": "one"}), timeout=60)
        assert result.changed
        state = pub.state()
        assert state is not None
        assert state.consecutive_failures == 0
