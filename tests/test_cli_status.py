"""``runner-storage status``: only real sources' ``state.json``, and a broken one said in a line.

A published tree is the user's: whatever files it holds (a ``flows/state.json`` of their
own among them) never count as a source; a real ``state.json`` that cannot be read is
one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_process import cli
from servers.gitrepo import UpstreamRepoFactory

#: What a user's own ``state.json`` may look like: much like ours, or not at all.
USER_STATE_FILES = {
    "state-like": json.dumps({"source": "not-ours", "revision": "f" * 40}),
    "a-list": json.dumps([1, 2, 3]),
}


def publish(tmp_path: Path, upstream_repo: UpstreamRepoFactory, files: dict[str, str]) -> Path:
    """Commit ``files`` upstream and pull them as source ``code``; return the root."""
    repo = upstream_repo()
    repo.commit(files)
    root = tmp_path / "root"
    result = cli("pull", repo.file_url, "--dest", str(root), "--name", "code")
    assert result.returncode == 0, result.stderr
    return root


class TestUserFiles:
    """Files inside published trees are never taken for sources."""

    @pytest.mark.parametrize("content", USER_STATE_FILES.values(), ids=USER_STATE_FILES.keys())
    def test_a_state_json_in_the_tree_is_not_a_source(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory, content: str
    ) -> None:
        """A tree's ``flows/state.json`` shows in neither the table nor ``--json``."""
        root = publish(tmp_path, upstream_repo, {"flows/state.json": content})
        assert (root / "code" / "flows" / "state.json").read_text() == content
        table = cli("status", "--root", str(root))
        assert table.returncode == 0, table.stderr
        assert table.stderr == ""
        rows = table.stdout.strip().splitlines()[1:]
        assert [row.split()[0] for row in rows] == ["code"]
        listed = cli("status", "--root", str(root), "--json")
        assert listed.returncode == 0, listed.stderr
        assert [entry["name"] for entry in json.loads(listed.stdout)["sources"]] == ["code"]


class TestBrokenState:
    """A real ``state.json`` that cannot be read."""

    @pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
    @pytest.mark.parametrize("content", ["{ not json", "[1, 2]"], ids=["corrupt", "a-list"])
    def test_one_line_and_exit_1(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory, content: str, as_json: bool
    ) -> None:
        """The line names the file and what to do; no traceback, nothing on stdout."""
        root = publish(tmp_path, upstream_repo, {})
        state = root / ".runner-storage" / "code" / "state.json"
        state.write_text(content)
        result = cli("status", "--root", str(root), *(["--json"] if as_json else []))
        assert result.returncode == 1
        assert result.stdout == ""
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"runner-storage: cannot read {state}: ")
        assert line.endswith("delete it to start over")
        assert "Traceback" not in result.stderr
