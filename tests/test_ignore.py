"""Ignore rules in gitignore syntax: the same answers as git, and the local tree they filter.

Each row of :data:`CASES` is checked twice: against :class:`IgnoreRules`, and against git
itself (``git add -A`` in a scratch repository, then ``git ls-files``), so the table is
git's own answer and not our reading of its documentation.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runner_storage.exceptions import ConfigurationError, UnsafeContentError
from runner_storage.fs.ignore import IgnoreRules

#: (patterns, files in the tree, the files git adds).
CASES: list[tuple[str, list[str], list[str]]] = [
    ("build/\n!build/keep.py", ["a.py", "build/keep.py", "build/x.py"], ["a.py"]),
    (
        "build/*\n!build/keep.py",
        ["build/keep.py", "build/sub/k.py", "build/x.py"],
        ["build/keep.py"],
    ),
    ("docs/**\n!docs/keep.md", ["docs/a.md", "docs/keep.md", "docs/sub/b.md"], ["docs/keep.md"]),
    ("*\n!*/\n!*.py", ["a.py", "a.txt", "d/a.py", "d/a.txt"], ["a.py", "d/a.py"]),
    ("/top.txt", ["sub/top.txt", "top.txt"], ["sub/top.txt"]),
    ("a/b", ["a/b/c", "x/a/b/c"], ["x/a/b/c"]),
    (
        "*.log\n!important.log",
        ["d/important.log", "important.log", "x.log"],
        ["d/important.log", "important.log"],
    ),
    ("docs/**/*.md", ["d/docs/y.md", "docs/x/y.md", "docs/y.md"], ["d/docs/y.md"]),
    ("build", ["build/x", "buildx", "sub/build/y"], ["buildx"]),
    ("foo/", ["bar/foo/x", "foo"], ["foo"]),
    ("# a comment\n\n*.pyc\n__pycache__/", ["a.py", "a.pyc", "p/__pycache__/a.pyc"], ["a.py"]),
    ("\\#hash\n\\!bang", ["!bang", "#hash", "keep"], ["keep"]),
    ("**/tmp", ["a/b/tmp/x", "tmp", "tmpx"], ["tmpx"]),
    ("a/**/z", ["a/b/c/z", "a/z", "a/zz", "b/a/z"], ["a/zz", "b/a/z"]),
    ("*.py\n!/keep.py\n", ["keep.py", "sub/keep.py"], ["keep.py"]),
    ("data?.csv\n[ab].txt", ["a.txt", "c.txt", "data1.csv", "data10.csv"], ["c.txt", "data10.csv"]),
]


def _case_id(case: tuple[str, list[str], list[str]]) -> str:
    return case[0].replace("\n", "|")


def git_adds(tmp_path: Path, patterns: str, files: list[str]) -> list[str]:
    """The files git adds to a repository whose ``.gitignore`` holds ``patterns``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("x\n")
    (repo / ".gitignore").write_text(patterns + "\n")
    env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
    }

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    git("init", "-q", ".")
    git("add", "-A")
    return sorted(name for name in git("ls-files").splitlines() if name != ".gitignore")


class TestRulesAreGits:
    """The table, as git answers it and as IgnoreRules answers it."""

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_the_table_is_what_git_adds(
        self, tmp_path: Path, case: tuple[str, list[str], list[str]]
    ) -> None:
        """Git itself adds exactly the files each row says it keeps."""
        patterns, files, kept = case
        assert git_adds(tmp_path, patterns, files) == kept

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_filter_keeps_what_git_adds(self, case: tuple[str, list[str], list[str]]) -> None:
        """``filter`` keeps, in order, the files git adds; an ignored directory hides its files."""
        patterns, files, kept = case
        assert IgnoreRules(patterns.splitlines()).filter(files) == kept

    @pytest.mark.parametrize("case", CASES, ids=_case_id)
    def test_walk_keeps_what_git_adds(
        self, tmp_path: Path, case: tuple[str, list[str], list[str]]
    ) -> None:
        """Walking a real tree with the rules lists the files git adds, sorted."""
        patterns, files, kept = case
        for name in files:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text("x\n")
        walked = IgnoreRules(patterns.splitlines()).walk(tmp_path)
        assert [file.path for file in walked] == kept
        assert all(file.size == 2 for file in walked)


class TestMatches:
    """One path at a time."""

    @pytest.mark.parametrize(
        ("patterns", "path", "directory", "ignored"),
        [
            (["build/"], "build", True, True),
            (["build/"], "build", False, False),  # a file named build: the pattern is for folders
            (["docs/**"], "docs", True, False),  # "/**" is what is inside, not the folder
            (["docs/**"], "docs/sub", True, True),
            (["*.log"], "logs/", False, False),  # a trailing "/" marks a directory
            (["logs"], "logs/", False, True),
            ([], "a/b.py", False, False),
        ],
    )
    def test_directory_or_file(
        self, patterns: list[str], path: str, directory: bool, ignored: bool
    ) -> None:
        """A pattern ending in ``/`` matches folders only; ``dir/**`` only what is in ``dir``."""
        assert IgnoreRules(patterns).matches(path, directory=directory) is ignored

    @pytest.mark.parametrize(
        "path", [".git", ".git/config", "sub/.git", "sub/.git/HEAD", "a/.git/objects/x"]
    )
    def test_git_is_always_ignored(self, path: str) -> None:
        """``.git`` is ignored at any depth, even when a pattern tries to bring it back."""
        assert IgnoreRules(["!.git", "!.git/", "!**/.git/**"]).matches(path)

    def test_a_file_named_like_git_is_not(self) -> None:
        """Only the name ``.git`` itself: ``.github`` and ``.gitignore`` are kept."""
        assert IgnoreRules().filter([".github/workflows/ci.yml", ".gitignore"]) == [
            ".github/workflows/ci.yml",
            ".gitignore",
        ]


class TestFiles:
    """Reading ignore files."""

    def test_for_tree_reads_the_prefectignore(self, tmp_path: Path) -> None:
        """Without an ignore file given, the tree's own ``.prefectignore`` applies."""
        (tmp_path / ".prefectignore").write_text("*.log\n")
        rules = IgnoreRules.for_tree(tmp_path)
        assert rules.lines == ("*.log",)
        assert rules.origin == str(tmp_path / ".prefectignore")

    def test_an_ignore_file_given_wins(self, tmp_path: Path) -> None:
        """``ignore_file`` replaces the tree's ``.prefectignore``; none at all ignores only .git."""
        (tmp_path / ".prefectignore").write_text("*.log\n")
        other = tmp_path / "other-ignore"
        other.write_text("*.tmp\n")
        assert IgnoreRules.for_tree(tmp_path, other).filter(["a.log", "a.tmp"]) == ["a.log"]
        assert IgnoreRules.for_tree(tmp_path / "missing").lines == ()

    def test_an_unreadable_ignore_file_is_one_line(self, tmp_path: Path) -> None:
        """A missing or non-UTF-8 ignore file is a ConfigurationError naming the file."""
        with pytest.raises(ConfigurationError) as missing:
            IgnoreRules.from_file(tmp_path / "nope")
        assert str(missing.value).splitlines() == [str(missing.value)]
        assert str(tmp_path / "nope") in str(missing.value)
        binary = tmp_path / "binary"
        binary.write_bytes(b"\xff\xfe*.log\n")
        with pytest.raises(ConfigurationError, match="not UTF-8"):
            IgnoreRules.from_file(binary)

    def test_crlf_lines_match_like_lf(self, tmp_path: Path) -> None:
        """An ignore file written on Windows (CRLF) means what it says."""
        path = tmp_path / ".prefectignore"
        path.write_bytes(b"*.log\r\nbuild/\r\n")
        assert IgnoreRules.from_file(path).filter(["a.log", "build/x", "a.py"]) == ["a.py"]


class TestWalk:
    """The local tree the rules keep, and what cannot be copied safely."""

    def test_symlinks_inside_are_read_as_their_targets(self, tmp_path: Path) -> None:
        """A file symlink inside is listed with its target; a folder symlink is not followed."""
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "a.py").write_text("A\n")
        (tmp_path / "alias.py").symlink_to("real/a.py")
        (tmp_path / "real-too").symlink_to("real")
        walked = {file.path: file for file in IgnoreRules().walk(tmp_path)}
        assert sorted(walked) == ["alias.py", "real/a.py"]
        assert walked["alias.py"].local == (tmp_path / "real" / "a.py").resolve()

    def test_a_symlink_out_of_the_tree_is_refused(self, tmp_path: Path) -> None:
        """A symlink to a file or folder outside is UnsafeContentError, one line naming it."""
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "credentials").write_text("secret\n")
        for name, target in (("leak", outside / "credentials"), ("dir-leak", outside)):
            tree = tmp_path / f"tree-{name}"
            tree.mkdir()
            (tree / name).symlink_to(target)
            with pytest.raises(UnsafeContentError) as caught:
                IgnoreRules().walk(tree)
            message = str(caught.value)
            assert message.splitlines() == [message]
            assert f"symlink {name} ->" in message
            assert ".prefectignore" in message

    def test_ignored_entries_are_never_looked_at(self, tmp_path: Path) -> None:
        """An ignored folder is not entered and an ignored link not followed: nothing is refused."""
        (tmp_path / "venv").mkdir()
        (tmp_path / "venv" / "escape").symlink_to("/etc")
        (tmp_path / "broken.lnk").symlink_to(tmp_path / "gone")
        (tmp_path / "a.py").write_text("A\n")
        rules = IgnoreRules(["venv/", "*.lnk"])
        assert [file.path for file in rules.walk(tmp_path)] == ["a.py"]

    def test_broken_links_and_special_files_are_refused(self, tmp_path: Path) -> None:
        """A kept broken symlink or FIFO cannot be copied: one line says to ignore it."""
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "dangling").symlink_to(broken / "gone")
        with pytest.raises(UnsafeContentError, match="'dangling' is a broken symlink"):
            IgnoreRules().walk(broken)
        fifo = tmp_path / "fifo"
        fifo.mkdir()
        os.mkfifo(fifo / "pipe")
        with pytest.raises(UnsafeContentError, match="'pipe' is not a regular file"):
            IgnoreRules().walk(fifo)

    def test_unsafe_names_are_refused(self, tmp_path: Path) -> None:
        """A kept name with a backslash or control character is refused, not uploaded mangled."""
        (tmp_path / "a\\b.py").write_text("x\n")
        with pytest.raises(UnsafeContentError, match="contains a backslash"):
            IgnoreRules().walk(tmp_path)
        assert IgnoreRules(["*.py"]).walk(tmp_path) == []
