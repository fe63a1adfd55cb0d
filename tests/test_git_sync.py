"""GitRepository end to end over file:// and git://.

Refs, updates, sparse trees, submodules, unsafe content, shared object stores and
concurrent pulls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from servers.git_daemon import GitDaemon
from servers.gitrepo import INITIAL_FILES, UpstreamRepo, UpstreamRepoFactory, git_env, run_git
from servers.procs import LOOPBACK, descendants, free_port, process_table

from runner_storage.exceptions import (
    ConfigurationError,
    DestinationConflictError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
)
from runner_storage.git import GitRepository
from runner_storage.types import SyncResult

pytestmark = pytest.mark.anyio


def tree_of(destination: Path) -> dict[str, str]:
    """Every file of a published tree: path -> text, symlinks as ``-> target``."""
    root = Path(os.path.realpath(destination))
    found: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(root):
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in [*filenames, *links]:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            found[relative] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_text()
    return found


def is_published(storage: GitRepository) -> bool:
    """Whether anything exists at the destination."""
    return os.path.lexists(storage.destination)


def live_version(storage: GitRepository) -> Path:
    """The version directory the destination points to now."""
    return Path(os.path.realpath(storage.destination))


def git_storage(url: str, base: Path, **options: Any) -> GitRepository:
    """A GitRepository publishing under ``base``."""
    storage = GitRepository(url, **options)
    storage.set_base_path(base)
    return storage


def commit_on_branch(upstream: UpstreamRepo, branch: str, files: dict[str, str | None]) -> str:
    """Commit ``files`` on ``branch``, starting it from main when it does not exist yet."""
    if branch not in upstream.branches():
        # UpstreamRepo.commit cannot start a branch itself yet (its existence check raises).
        upstream.create_branch(branch)
    return upstream.commit(files, branch=branch)


def stores(base: Path) -> list[Path]:
    """The shared object stores under ``base``."""
    return sorted((base / ".runner-storage" / ".repos").glob("*.git"))


class TestRefs:
    """Branch, tag, commit and default-branch selection."""

    async def test_default_branch_is_published_as_a_plain_tree(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """The remote's default branch is exported without .git; revision is the commit."""
        upstream = upstream_repo()
        storage = git_storage(upstream.file_url, tmp_path)
        result = await storage.pull_code()
        assert result == SyncResult(
            upstream.head(), True, len(INITIAL_FILES), result.bytes_fetched, result.duration
        )
        assert tree_of(storage.destination) == INITIAL_FILES
        assert not (storage.destination / ".git").exists()
        assert os.readlink(storage.destination).split("/")[-1].startswith(upstream.head())

    async def test_local_path(self, upstream_repo: UpstreamRepoFactory, tmp_path: Path) -> None:
        """A plain local path works as the URL (for demos); the label records it absolute."""
        upstream = upstream_repo()
        storage = git_storage(str(upstream.path), tmp_path)
        assert (await storage.pull_code()).revision == upstream.head()
        state = storage.publisher.state()
        assert state is not None
        assert state.source == f"git+{upstream.path}"

    async def test_relative_base_path(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative base path is relative to the current directory, as in Prefect."""
        upstream = upstream_repo()
        monkeypatch.chdir(tmp_path)
        storage = git_storage(upstream.file_url, Path("relative"))
        await storage.pull_code()
        assert tree_of(tmp_path / "relative" / upstream.name) == INITIAL_FILES

    async def test_default_branch_follows_the_remote_head(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """branch=None asks the remote which branch HEAD names."""
        upstream = upstream_repo()
        dev = commit_on_branch(upstream, "dev", {"dev.txt": "dev\n"})
        upstream.set_default_branch("dev")
        result = await git_storage(git_daemon.url_for(upstream), tmp_path).pull_code()
        assert result.revision == dev

    async def test_branch(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A named branch is published under <repo>-<branch>."""
        upstream = upstream_repo()
        sha = commit_on_branch(upstream, "feature/x", {"flows/a.py": "A = 'feature'\n"})
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, branch="feature/x")
        result = await storage.pull_code()
        assert result.revision == sha
        assert storage.destination.name == f"{upstream.name}-feature-x"
        assert tree_of(storage.destination)["flows/a.py"] == "A = 'feature'\n"

    @pytest.mark.parametrize("annotated", [False, True])
    async def test_tag_publishes_the_tagged_commit(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_daemon: GitDaemon,
        tmp_path: Path,
        annotated: bool,
    ) -> None:
        """branch= also takes a tag; an annotated tag is peeled to its commit."""
        upstream = upstream_repo()
        tagged = upstream.tag("v1.0", annotated=annotated)
        upstream.commit({"later.txt": "later\n"})
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, branch="v1.0")
        result = await storage.pull_code()
        assert result.revision == tagged
        assert "later.txt" not in tree_of(storage.destination)

    async def test_branch_wins_over_a_tag_of_the_same_name(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """As with git clone --branch, a branch is preferred to a same-named tag."""
        upstream = upstream_repo()
        upstream.tag("release")
        branch_sha = commit_on_branch(upstream, "release", {"b.txt": "branch\n"})
        result = await git_storage(
            git_daemon.url_for(upstream), tmp_path, branch="release"
        ).pull_code()
        assert result.revision == branch_sha

    async def test_full_commit_sha(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A full SHA of an older commit is fetched and published."""
        upstream = upstream_repo()
        first = upstream.head()
        upstream.commit({"flows/a.py": "A = 2\n"})
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, commit_sha=first)
        result = await storage.pull_code()
        assert result.revision == first
        assert tree_of(storage.destination) == INITIAL_FILES
        assert await storage.is_current_commit()

    async def test_short_commit_sha_is_resolved_from_history(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A short SHA of a commit deep in history resolves to the full one."""
        upstream = upstream_repo()
        first = upstream.head()
        upstream.commit({"x.txt": "1\n"})
        upstream.commit({"x.txt": "2\n"})
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, commit_sha=first[:7])
        result = await storage.pull_code()
        assert result.revision == first
        assert tree_of(storage.destination) == INITIAL_FILES
        again = await storage.pull_code()
        assert (again.revision, again.changed) == (first, False)

    @pytest.mark.parametrize("sha", ["abcdef1", "abcdef1234567890abcdef1234567890abcdef12"])
    async def test_unknown_commit_is_not_found(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path, sha: str
    ) -> None:
        """A commit that does not exist upstream is a NotFoundError; nothing is published."""
        storage = git_storage(git_daemon.url_for(upstream_repo()), tmp_path, commit_sha=sha)
        with pytest.raises(NotFoundError, match=sha[:7]):
            await storage.pull_code()
        assert not is_published(storage)

    async def test_depth_zero_fetches_all_history(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """depth=0 leaves a complete (not shallow) object store; depth=1 a shallow one."""
        upstream = upstream_repo()
        upstream.commit({"x.txt": "1\n"})
        url = git_daemon.url_for(upstream)
        await git_storage(url, tmp_path, depth=1).pull_code()
        (store,) = stores(tmp_path)
        assert (store / "shallow").exists()
        await git_storage(url, tmp_path, depth=0, name="full").pull_code()
        assert not (store / "shallow").exists()
        assert run_git("rev-list", "--count", "--all", cwd=store).stdout.strip() == "2"


class TestUpdates:
    """New commits, no-ops, rewritten history and vanished refs."""

    async def test_new_commit_publishes_a_new_version_and_keeps_the_old_one(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A runner inside the old version keeps reading it; unchanged files are shared."""
        upstream = upstream_repo()
        storage = git_storage(upstream.file_url, tmp_path)
        await storage.pull_code()
        old_root = live_version(storage)
        with (old_root / "flows/a.py").open(encoding="utf-8") as held:
            sha = upstream.commit({"flows/a.py": "A = 2\n", "docs/x.md": None, "new.txt": "n\n"})
            result = await storage.pull_code()
            assert held.read() == "A = 1\n"
        assert (result.revision, result.changed, result.files_fetched) == (sha, True, 2)
        expected = {**INITIAL_FILES, "flows/a.py": "A = 2\n", "new.txt": "n\n"}
        del expected["docs/x.md"]
        assert tree_of(storage.destination) == expected
        assert tree_of(old_root) == INITIAL_FILES
        new_root = live_version(storage)
        assert new_root != old_root
        # Unchanged files are hard links into the previous version, changed ones are not.
        assert (new_root / "lib/c.py").stat().st_ino == (old_root / "lib/c.py").stat().st_ino
        assert (new_root / "flows/a.py").stat().st_ino != (old_root / "flows/a.py").stat().st_ino

    async def test_unchanged_upstream_is_a_noop(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A second pull of the same commit changes nothing and reports changed=False."""
        upstream = upstream_repo()
        storage = git_storage(upstream.file_url, tmp_path)
        first = await storage.pull_code()
        link = os.readlink(storage.destination)
        second = await storage.pull_code()
        assert (second.revision, second.changed, second.files_fetched) == (first.revision, False, 0)
        assert os.readlink(storage.destination) == link

    async def test_force_push_publishes_the_rewritten_history(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """History rewritten upstream just works: we never merge."""
        upstream = upstream_repo()
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, branch="main")
        await storage.pull_code()
        upstream.commit({"flows/a.py": "A = 2\n"})
        await storage.pull_code()
        upstream.commit({"flows/a.py": "A = 3\n"})
        rewritten = commit_on_branch(upstream, "other", {"flows/a.py": "A = 'rewritten'\n"})
        upstream.force_reset("main", rewritten)
        result = await storage.pull_code()
        assert (result.revision, result.changed) == (rewritten, True)
        assert tree_of(storage.destination)["flows/a.py"] == "A = 'rewritten'\n"

    async def test_deleted_branch_keeps_the_published_tree(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A vanished branch is a NotFoundError with a hint; the last version stays live."""
        upstream = upstream_repo()
        upstream.create_branch("gone")
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, branch="gone")
        await storage.pull_code()
        link = os.readlink(storage.destination)
        upstream.delete_branch("gone")
        with pytest.raises(NotFoundError, match=r"'gone' does not exist.*kept"):
            await storage.pull_code()
        assert os.readlink(storage.destination) == link
        assert tree_of(storage.destination) == INITIAL_FILES
        state = storage.publisher.state()
        assert state is not None
        assert state.consecutive_failures == 1
        assert "gone" in (state.last_error or "")

    async def test_a_push_between_resolving_and_fetching_leaves_the_listed_commit(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """The commit listed is fetched by its id: a push in between is the next pull's.

        The version is that commit's tree under that commit's name (a server refusing
        commits by id gets the branch by name instead, labelled by what it fetched:
        ``tests/test_git_refs.py``).
        """
        upstream = upstream_repo()
        storage = git_storage(upstream.file_url, tmp_path)
        backend = storage.backend()
        listed = await backend.resolve()
        assert listed is not None
        pushed = upstream.commit({"flows/a.py": "A = 'pushed'\n"})
        staging = tmp_path / "staging"
        staging.mkdir()
        built = await backend.materialize(listed, staging, None)
        assert listed.id != pushed
        assert built.revision.id == listed.id
        assert (staging / "flows/a.py").read_text() == INITIAL_FILES["flows/a.py"]
        assert (await storage.pull_code()).revision == pushed
        assert (storage.destination / "flows/a.py").read_text() == "A = 'pushed'\n"


class TestSparse:
    """directories select subtrees, as a cone-mode sparse checkout does."""

    async def test_cone_selection(self, upstream_repo: UpstreamRepoFactory, tmp_path: Path) -> None:
        """The listed directory, plus files at the top and in its parents, nothing else."""
        upstream = upstream_repo()
        storage = git_storage(upstream.file_url, tmp_path, directories=["flows/sub"])
        await storage.pull_code()
        assert tree_of(storage.destination) == {
            "README.md": INITIAL_FILES["README.md"],
            "flows/a.py": INITIAL_FILES["flows/a.py"],
            "flows/sub/b.py": INITIAL_FILES["flows/sub/b.py"],
        }
        assert await storage.is_sparsely_checked_out()

    async def test_changing_directories_takes_effect_on_the_next_pull(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Same commit, other directories: a different tree, published in place."""
        upstream = upstream_repo()
        url = git_daemon.url_for(upstream)
        await git_storage(url, tmp_path, directories=["lib"], name="code").pull_code()
        storage = git_storage(url, tmp_path, directories=["docs", "flows"], name="code")
        result = await storage.pull_code()
        assert result.changed
        assert set(tree_of(storage.destination)) == {
            "README.md",
            "docs/x.md",
            "flows/a.py",
            "flows/sub/b.py",
        }

    async def test_sparse_fetch_leaves_other_contents_upstream(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Blobless fetch: contents outside the directories never reach the object store."""
        upstream = upstream_repo()
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, directories=["flows"])
        await storage.pull_code()
        (store,) = stores(tmp_path)
        listing = run_git(
            "rev-list", "--objects", "--missing=print", "--no-walk", upstream.head(), cwd=store
        ).stdout
        assert f"?{upstream.git('rev-parse', 'main:lib/c.py')}" in listing
        assert f"?{upstream.git('rev-parse', 'main:flows/a.py')}" not in listing

    async def test_sparse_fetch_without_allow_any_sha1_in_want(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Fetching the needed contents by id works on a server with default settings."""
        upstream = upstream_repo()
        upstream.git("config", "--unset", "uploadpack.allowAnySHA1InWant")
        storage = git_storage(git_daemon.url_for(upstream), tmp_path, directories=["lib"])
        await storage.pull_code()
        assert tree_of(storage.destination)["lib/c.py"] == INITIAL_FILES["lib/c.py"]


class TestUnsafeContent:
    """Upstream content never writes outside the new version."""

    @pytest.mark.parametrize(("path", "target"), [("etc", "/etc"), ("flows/up", "../..")])
    async def test_escaping_symlink_publishes_nothing(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, path: str, target: str
    ) -> None:
        """A symlink resolving outside the tree is an UnsafeContentError, nothing published."""
        upstream = upstream_repo()
        upstream.symlink(path, target)
        storage = git_storage(upstream.file_url, tmp_path)
        with pytest.raises(UnsafeContentError, match=f"symlink {path} -> "):
            await storage.pull_code()
        assert not is_published(storage)
        assert not list((tmp_path / ".runner-storage" / storage.name).glob("versions/*"))

    @pytest.mark.parametrize(
        "entries",
        [[("040000", ".git")], [("040000", ".GIT")], [("100644", "..")], [("040000", "..")]],
    )
    async def test_paths_into_git_or_out_of_the_tree_are_refused(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, entries: list[tuple[str, str]]
    ) -> None:
        """A hostile tree with .git or .. entries is refused; nothing is published."""
        upstream = upstream_repo()
        commit_raw_tree(upstream, [("100644", "ok.txt"), *entries])
        storage = git_storage(upstream.file_url, tmp_path)
        with pytest.raises(UnsafeContentError, match="would leave the source tree"):
            await storage.pull_code()
        assert not is_published(storage)

    async def test_symlink_inside_the_tree_is_kept(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A relative symlink that stays inside the tree is published as a symlink."""
        upstream = upstream_repo()
        upstream.symlink("flows/link.py", "a.py")
        storage = git_storage(upstream.file_url, tmp_path)
        await storage.pull_code()
        assert tree_of(storage.destination)["flows/link.py"] == "-> a.py"


def commit_raw_tree(upstream: UpstreamRepo, entries: list[tuple[str, str]]) -> str:
    """Commit a hand-made tree (``(mode, name)`` entries holding one blob) on main.

    git itself refuses to add such paths, but a hostile server can still serve them.
    """

    def git(*args: str, stdin: str = "") -> str:
        return subprocess.run(
            ["git", *args],
            cwd=upstream.path,
            env=git_env(),
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    blob = git("hash-object", "-w", "--stdin", stdin="x\n")
    inner = git("mktree", stdin=f"100644 blob {blob}\tconfig\n")
    lines = [
        f"{mode} {'tree' if mode == '040000' else 'blob'} {inner if mode == '040000' else blob}"
        f"\t{name}\n"
        for mode, name in entries
    ]
    tree = git("mktree", stdin="".join(lines))
    commit = git("commit-tree", tree, "-p", upstream.head(), "-m", "hostile")
    git("update-ref", "refs/heads/main", commit)
    return commit


class TestSubmodules:
    """include_submodules exports each submodule's commit; unsafe URLs are refused."""

    @staticmethod
    def with_submodule(
        upstream_repo: UpstreamRepoFactory, url_in_gitmodules: str | None = None
    ) -> tuple[UpstreamRepo, UpstreamRepo]:
        """A superproject with ``mods/lib`` pointing at a second repository."""
        sub = upstream_repo("sub")
        sub.commit({"lib.py": "LIB = 1\n"})
        superproject = upstream_repo("super")
        superproject.add_submodule("mods/lib", sub.file_url)
        url = url_in_gitmodules if url_in_gitmodules is not None else f"../{sub.relpath}"
        superproject.commit(
            {".gitmodules": f'[submodule "mods/lib"]\n\tpath = mods/lib\n\turl = {url}\n'}
        )
        return superproject, sub

    async def test_submodule_is_exported(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A relative submodule URL resolves against the superproject's; its commit is used."""
        superproject, sub = self.with_submodule(upstream_repo)
        pinned = sub.head()
        sub.commit({"lib.py": "LIB = 'not pinned'\n"})
        storage = git_storage(git_daemon.url_for(superproject), tmp_path, include_submodules=True)
        await storage.pull_code()
        tree = tree_of(storage.destination)
        assert tree["mods/lib/lib.py"] == "LIB = 1\n"
        assert not (storage.destination / "mods/lib/.git").exists()
        assert len(stores(tmp_path)) == 2
        manifests = list((tmp_path / ".runner-storage" / storage.name / "manifests").iterdir())
        assert json.loads(manifests[0].read_text())["submodules"] == {"mods/lib": pinned}

    async def test_submodules_are_left_empty_unless_asked_for(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Without include_submodules a submodule is an empty directory, as in a clone."""
        superproject, _ = self.with_submodule(upstream_repo)
        storage = git_storage(git_daemon.url_for(superproject), tmp_path)
        await storage.pull_code()
        assert (storage.destination / "mods/lib").is_dir()
        assert not any((storage.destination / "mods/lib").iterdir())

    @pytest.mark.parametrize(
        "url", ["file:///etc", "/etc", "local-path", "ext::sh -c touch% /tmp/pwned"]
    )
    async def test_unsafe_submodule_url_is_refused(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, git_daemon: GitDaemon, url: str
    ) -> None:
        """file://, local paths and ext:: in .gitmodules are refused; nothing is published."""
        superproject, _ = self.with_submodule(upstream_repo, url)
        storage = git_storage(git_daemon.url_for(superproject), tmp_path, include_submodules=True)
        with pytest.raises(UnsafeContentError, match="only https, http, ssh and git") as caught:
            await storage.pull_code()
        assert "\n" not in str(caught.value)
        assert not is_published(storage)
        assert not os.path.lexists("/tmp/pwned")  # noqa: ASYNC240 - one cheap check

    async def test_nested_submodules_are_followed(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A submodule of a submodule is exported too, its URL relative to its parent's."""
        inner = upstream_repo("inner")
        inner.commit({"inner.py": "INNER = 1\n"})
        middle, sub = self.with_submodule(upstream_repo)
        middle.add_submodule("deep/inner", inner.file_url)
        middle.commit(
            {
                ".gitmodules": '[submodule "mods/lib"]\n\tpath = mods/lib\n'
                f"\turl = ../{sub.relpath}\n"
                '[submodule "deep/inner"]\n\tpath = deep/inner\n'
                f"\turl = ../{inner.relpath}\n"
            }
        )
        outer = upstream_repo("outer")
        outer.add_submodule("vendor/middle", middle.file_url)
        outer.commit(
            {
                ".gitmodules": '[submodule "vendor/middle"]\n\tpath = vendor/middle\n'
                f"\turl = ../{middle.relpath}\n"
            }
        )
        storage = git_storage(git_daemon.url_for(outer), tmp_path, include_submodules=True)
        await storage.pull_code()
        tree = tree_of(storage.destination)
        assert tree["vendor/middle/deep/inner/inner.py"] == "INNER = 1\n"
        assert tree["vendor/middle/mods/lib/lib.py"] == "LIB = 1\n"

    async def test_submodule_without_a_url_is_a_source_error(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A submodule commit with no .gitmodules entry cannot be fetched: say which one."""
        superproject, _ = self.with_submodule(upstream_repo)
        superproject.commit({".gitmodules": None})
        storage = git_storage(git_daemon.url_for(superproject), tmp_path, include_submodules=True)
        with pytest.raises(SourceError, match=r"'mods/lib' has no URL in \.gitmodules"):
            await storage.pull_code()

    async def test_local_superproject_refuses_relative_submodules(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """Relative URLs of a file:// superproject resolve to local paths: refused."""
        superproject, _ = self.with_submodule(upstream_repo)
        storage = git_storage(superproject.file_url, tmp_path, include_submodules=True)
        with pytest.raises(UnsafeContentError):
            await storage.pull_code()


class TestSharing:
    """Destinations, object stores and concurrent pulls."""

    async def test_destination_holding_another_repository_is_a_conflict(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """One name cannot be published from two repositories."""
        await git_storage(upstream_repo().file_url, tmp_path, name="code").pull_code()
        other = git_storage(upstream_repo().file_url, tmp_path, name="code")
        with pytest.raises(DestinationConflictError, match="published from git\\+"):
            await other.pull_code()

    async def test_corrected_url_after_a_failed_first_pull(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A mistyped URL that never published anything does not hold the name."""
        missing = git_storage((tmp_path / "typo.git").as_uri(), tmp_path, name="code")
        with pytest.raises(NotFoundError):
            await missing.pull_code()
        upstream = upstream_repo()
        result = await git_storage(upstream.file_url, tmp_path, name="code").pull_code()
        assert result.changed
        assert tree_of(tmp_path / "code") == INITIAL_FILES

    async def test_switching_branch_in_place_is_allowed(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Same repository, same name, another branch: the destination follows it."""
        upstream = upstream_repo()
        dev = commit_on_branch(upstream, "dev", {"dev.txt": "dev\n"})
        url = git_daemon.url_for(upstream)
        await git_storage(url, tmp_path, name="code", branch="main").pull_code()
        result = await git_storage(url, tmp_path, name="code", branch="dev").pull_code()
        assert result.revision == dev

    async def test_sources_of_one_repository_share_one_object_store(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Different directories and branches of one URL use a single bare store."""
        upstream = upstream_repo()
        upstream.create_branch("dev")
        url = git_daemon.url_for(upstream)
        await git_storage(url, tmp_path, name="a", directories=["flows"]).pull_code()
        await git_storage(url, tmp_path, name="b", directories=["lib"]).pull_code()
        full = git_storage(url, tmp_path, name="c", branch="dev")
        await full.pull_code()
        # The store became blobless for a and b; c still gets every file.
        assert tree_of(full.destination) == INITIAL_FILES
        assert len(stores(tmp_path)) == 1
        config = (stores(tmp_path)[0] / "config").read_text()
        assert f"url = {url}" in config

    async def test_concurrent_pulls_in_one_process_serialise(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Two tasks pulling the same source both succeed; one publishes, one finds it done."""
        url = git_daemon.url_for(upstream_repo())
        results: list[SyncResult] = []

        async def pull() -> None:
            results.append(await git_storage(url, tmp_path, name="code").pull_code())

        async with anyio.create_task_group() as group:
            group.start_soon(pull)
            group.start_soon(pull)
        assert sorted(r.changed for r in results) == [False, True]
        assert results[0].revision == results[1].revision

    def test_concurrent_pulls_from_two_processes_serialise(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Two processes pulling one source (and one store) both succeed, one publishes."""
        url = git_daemon.url_for(upstream_repo())
        script = (
            "import anyio, json, sys; from pathlib import Path;"
            " from runner_storage.git import GitRepository;"
            " s = GitRepository(sys.argv[1], name='code'); s.set_base_path(Path(sys.argv[2]));"
            " r = anyio.run(s.pull_code); print(json.dumps([r.revision, r.changed]))"
        )
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, url, str(tmp_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=60) for process in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        results = [json.loads(out) for out, _ in outputs]
        assert results[0][0] == results[1][0]
        assert sorted(changed for _, changed in results) == [False, True]


class TestRecovery:
    """Leftovers of killed pulls and cancelled pulls."""

    async def test_git_lock_files_left_by_a_killed_pull_are_cleared(
        self, upstream_repo: UpstreamRepoFactory, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """Lock files a killed git left in the object store do not block the next pull."""
        upstream = upstream_repo()
        storage = git_storage(git_daemon.url_for(upstream), tmp_path)
        await storage.pull_code()
        (store,) = stores(tmp_path)
        for leftover in ("shallow.lock", "packed-refs.lock", "refs/runner-storage/x.lock"):
            (store / leftover).write_text("")
        sha = upstream.commit({"flows/a.py": "A = 2\n"})
        assert (await storage.pull_code()).revision == sha

    async def test_cancelled_pull_kills_git_and_publishes_nothing(self, tmp_path: Path) -> None:
        """Cancelling a pull stuck on the network kills git and all it started."""
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind((LOOPBACK, 0))
            silent.listen(8)
            url = f"git://{LOOPBACK}:{silent.getsockname()[1]}/repo.git"
            storage = git_storage(url, tmp_path)
            before = descendants(os.getpid())
            with anyio.move_on_after(1.5) as scope:
                await storage.pull_code()
            assert scope.cancelled_caught
            table = process_table()
            left = {table[pid].command for pid in descendants(os.getpid(), table) - before}
        assert not {command for command in left if command.startswith("git")}
        assert not is_published(storage)

    async def test_empty_repository_is_not_found(
        self, git_daemon: GitDaemon, git_project_root: Path, tmp_path: Path
    ) -> None:
        """A repository without commits has no default branch: NotFoundError with a hint."""
        name = f"empty-{tmp_path.name}"
        run_git("init", "-q", "--bare", git_project_root / f"{name}.git")
        storage = git_storage(git_daemon.url_for(name), tmp_path)
        with pytest.raises(NotFoundError, match="no default branch"):
            await storage.pull_code()


class TestNetworkErrors:
    """Failures of the git protocol map onto the error tree."""

    async def test_missing_repository_is_not_found(
        self, git_daemon: GitDaemon, tmp_path: Path
    ) -> None:
        """A repository the daemon does not have is a NotFoundError."""
        storage = git_storage(git_daemon.url_for("does-not-exist"), tmp_path)
        with pytest.raises(NotFoundError, match="does-not-exist"):
            await storage.pull_code()

    async def test_closed_port_is_transient(self, tmp_path: Path) -> None:
        """Nothing listening is a TransientSourceError (retried with backoff)."""
        storage = git_storage(f"git://127.0.0.1:{free_port()}/repo.git", tmp_path)
        with pytest.raises(TransientSourceError, match="Connection refused"):
            await storage.pull_code()

    async def test_missing_git_is_a_configuration_error(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without git on PATH the pull fails with a ConfigurationError saying so."""
        storage = git_storage(upstream_repo().file_url, tmp_path)
        monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
        with pytest.raises(ConfigurationError, match="git is not installed"):
            await storage.pull_code()

    async def test_missing_local_repository_is_not_found(self, tmp_path: Path) -> None:
        """A local path that is no repository is a NotFoundError."""
        storage = git_storage(str(tmp_path / "nothing.git"), tmp_path / "base")
        with pytest.raises(NotFoundError, match=r"nothing\.git"):
            await storage.pull_code()
