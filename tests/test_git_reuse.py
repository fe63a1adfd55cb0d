"""A new commit's version reuses the old one's files, and is still exactly the commit's tree.

The pull links the published version's files into the new one while the fetch runs, then
removes what the new commit changed; whatever the history does (files become folders and
back, folders vanish, ``.gitattributes`` or modes change), every published tree must equal
what a fresh clone (sparse when the source is) checks out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from servers.gitrepo import git_env

from runner_storage import GitRepository

pytestmark = pytest.mark.anyio

#: Each step's changes: path -> text, or None to delete (a file or a whole folder).
STEPS: list[dict[str, str | None]] = [
    {
        "a/b/c.txt": "1",
        "a/d.txt": "2",
        "x/y/z.txt": "3",
        "top.txt": "t",
        "keep/k.txt": "k",
        "a/b/e/f.txt": "f",
    },
    {"a/b/c.txt": None, "a/b/e/f.txt": None, "x": None},  # folders emptied and deleted
    {"x": "now a file"},  # a deleted folder's name becomes a file
    {"x": None, "x/new/deep.txt": "the file became a folder"},
    {"keep/k.txt": None, "keep/other/o.txt": "o", "a/d.txt": None, "a/d.txt/q": "q"},
    {".gitattributes": "*.txt text eol=crlf\n"},  # the same blobs check out differently
    {"m.sh": "#!/bin/sh\n"},  # committed executable below
]


def git(*args: str, cwd: Path) -> None:
    """Run git hermetically in ``cwd``."""
    subprocess.run(["git", *args], cwd=cwd, check=True, env=git_env(), capture_output=True)


def write(work: Path, changes: dict[str, str | None]) -> None:
    """Apply ``changes`` to the work tree and commit them (an executable ``m.sh``)."""
    for path, text in changes.items():
        target = work / path
        if text is None:
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("add", "-A", cwd=work)
    if "m.sh" in changes:
        git("update-index", "--chmod=+x", "m.sh", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "step", cwd=work)


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every folder and file under ``root`` (``.git`` left out): bytes and the exec bit."""
    found: dict[str, tuple[bytes, int] | None] = {}
    real = os.path.realpath(root)
    for folder, dirs, files in os.walk(real):
        dirs[:] = [d for d in dirs if d != ".git"]
        relative = os.path.relpath(folder, real)
        found[relative + "/"] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                found[os.path.join(relative, name)] = (file.read(), os.lstat(path).st_mode & 0o100)
    return found


@pytest.mark.parametrize(
    "directories", [None, ["a", "keep"], ["x"]], ids=["whole", "two-cones", "one-cone"]
)
async def test_every_version_is_the_commits_tree(
    directories: list[str] | None, tmp_path: Path
) -> None:
    """Through files turned into folders and back, each version equals a fresh clone."""
    work = tmp_path / "upstream"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    storage = GitRepository(work.as_uri(), name="code", pull_interval=None, directories=directories)
    storage.set_base_path(tmp_path / "base")
    for index, changes in enumerate(STEPS):
        write(work, changes)
        assert (await storage.pull_code()).changed
        clone = tmp_path / f"clone-{index}"
        if directories:
            git("clone", "-q", "--sparse", work.as_uri(), str(clone), cwd=tmp_path)
            git("sparse-checkout", "set", "--skip-checks", *directories, cwd=clone)
        else:
            git("clone", "-q", work.as_uri(), str(clone), cwd=tmp_path)
        published, expected = snapshot(storage.destination), snapshot(clone)
        assert published == expected, (index, sorted(set(published) ^ set(expected)))
