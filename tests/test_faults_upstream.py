"""Upstream surprises, through the real CLI: history rewritten, refs, buckets and objects gone.

A rewritten branch is simply published (nothing is ever merged); a ref, repository, bucket or
prefix that disappears fails the pull with exit code 1 and one line on stderr, and the last
good version stays published and intact; an object that changes or vanishes between the
listing and its download is caught (size, checksum or 404), never published, and the next
pull publishes the upstream as it then is.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_process import cli
from fault_tools import (
    content_listing,
    leftovers,
    published_version,
    state_of,
    tree_listing,
    upstream_listing,
)
from servers.fault_proxy import FaultProxy
from servers.git_daemon import GitDaemon
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory
from servers.s3 import S3Server

NAME = "code"


def one_line_error(stderr: str, phrase: str) -> None:
    """The error output is exactly one line, and it contains ``phrase``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert phrase in lines[0], lines[0]


# --- git --------------------------------------------------------------------------------


def git_pull(
    git_daemon: GitDaemon, repo: UpstreamRepo, root: Path, *options: str
) -> tuple[int, str]:
    """``runner-storage pull`` of ``repo`` over git:// into ``root/code``."""
    result = cli("pull", git_daemon.url_for(repo), "--dest", str(root), "--name", NAME, *options)
    return result.returncode, result.stderr


def published_git(root: Path, repo: UpstreamRepo, sha: str) -> None:
    """``root/code`` is exactly commit ``sha`` and its name says so."""
    version = published_version(root, NAME)
    assert version is not None
    assert version.name.startswith(sha)
    assert tree_listing(version) == upstream_listing(repo.path, sha)


class TestGitUpstream:
    """Rewritten history and refs or repositories that disappear."""

    def test_force_push_publishes_the_rewritten_branch(
        self, git_daemon: GitDaemon, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """After a force-push the pull publishes the new tip as it is; nothing is merged."""
        repo = upstream_repo()
        root = tmp_path / "root"
        first = repo.head()
        ahead = repo.commit({"flows/ahead.py": "AHEAD = 1\n"})
        assert git_pull(git_daemon, repo, root, "--branch", "main")[0] == 0
        published_git(root, repo, ahead)
        repo.create_branch("rewrite", from_ref=first)  # history that never had "ahead"
        rewritten = repo.commit({"flows/other.py": "OTHER = 1\n"}, branch="rewrite")
        repo.force_reset("main", rewritten)
        code, stderr = git_pull(git_daemon, repo, root, "--branch", "main")
        assert code == 0, stderr
        published_git(root, repo, rewritten)
        version = published_version(root, NAME)
        assert version is not None
        assert not (version / "flows" / "ahead.py").exists()
        repo.force_reset("main", first)  # and back in time
        assert git_pull(git_daemon, repo, root, "--branch", "main")[0] == 0
        published_git(root, repo, first)

    @pytest.mark.parametrize("kind", ["branch", "tag", "repository"])
    def test_vanished_upstream_keeps_the_published_version(
        self,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
        kind: str,
    ) -> None:
        """A deleted branch, tag or repository: exit 1, one line, the old version intact."""
        repo = upstream_repo()
        root = tmp_path / "root"
        sha = repo.commit({"flows/x.py": "X = 1\n"}, branch="feature")
        repo.tag("v1", "feature")
        ref = "v1" if kind == "tag" else "feature"
        assert git_pull(git_daemon, repo, root, "--branch", ref)[0] == 0
        published_git(root, repo, sha)
        hidden = repo.path.with_name("hidden.git")
        if kind == "branch":
            repo.delete_branch("feature")
        elif kind == "tag":
            repo.delete_tag("v1")
        else:
            os.rename(repo.path, hidden)
        try:
            code, stderr = git_pull(git_daemon, repo, root, "--branch", ref)
        finally:
            if kind == "repository":
                os.rename(hidden, repo.path)
        assert code == 1
        phrase = "does not exist" if kind != "repository" else "check the URL"
        one_line_error(stderr, phrase)
        published_git(root, repo, sha)
        state = state_of(root, NAME)
        assert state is not None
        assert state["consecutive_failures"] == 1
        assert state["revision"] == sha
        assert leftovers(root, NAME) == []


# --- S3 ---------------------------------------------------------------------------------


class Prefix:
    """An S3 prefix pulled through the fault proxy by the CLI."""

    def __init__(self, server: S3Server, proxy: FaultProxy, root: Path) -> None:
        self.server = server
        self.proxy = proxy
        self.bucket = server.new_bucket("upstream")
        self.root = root

    def write(self, files: dict[str, bytes]) -> None:
        """Upload ``files`` under the prefix (straight to moto, not through the proxy)."""
        for path, data in files.items():
            self.server.put(self.bucket, f"{NAME}/{path}", data)

    def pull(self) -> tuple[int, str]:
        """``runner-storage pull s3://bucket/code`` through the proxy."""
        result = cli(
            "pull",
            f"s3://{self.bucket}/{NAME}",
            "--dest",
            str(self.root),
            "--name",
            NAME,
            env={
                "AWS_ENDPOINT_URL": self.proxy.url,
                "AWS_ACCESS_KEY_ID": self.server.key,
                "AWS_SECRET_ACCESS_KEY": self.server.secret,
            },
        )
        return result.returncode, result.stderr

    def published(self) -> dict[str, bytes] | None:
        """The published tree's files and contents, or None."""
        version = published_version(self.root, NAME)
        if version is None:
            return None
        return {
            str(path.relative_to(version)): path.read_bytes()
            for path in version.rglob("*")
            if path.is_file()
        }

    def on_first_get(self, key: str, action: Callable[[], None]) -> None:
        """Run ``action`` when the proxy sees the first GET of ``key``, before forwarding it."""
        done = [False]

        def hook(method: str, path: str) -> None:
            if method == "GET" and path == f"/{self.bucket}/{NAME}/{key}" and not done[0]:
                done[0] = True
                action()

        self.proxy.on_request = hook


@pytest.fixture
def prefix(
    s3_server: S3Server, fault_proxy: Callable[[int], FaultProxy], tmp_path: Path
) -> Iterator[Prefix]:
    """A bucket prefix holding v1, published once."""
    made = Prefix(s3_server, fault_proxy(s3_server.port), tmp_path / "root")
    made.write(V1)
    code, stderr = made.pull()
    assert code == 0, stderr
    assert made.published() == V1
    yield made
    made.proxy.on_request = None


V1 = {"flows/a.py": b"A = 1\n", "flows/b.py": b"B = 1\n", "README.md": b"# v1\n"}


class TestS3Upstream:
    """Buckets and prefixes that disappear, objects that change under a pull."""

    def test_deleted_prefix_keeps_the_published_version(self, prefix: Prefix) -> None:
        """Every object under the prefix deleted: exit 1, one line, v1 still published."""
        for path in V1:
            prefix.server.delete(prefix.bucket, f"{NAME}/{path}")
        code, stderr = prefix.pull()
        assert code == 1
        one_line_error(stderr, "the bucket or folder is missing or empty")
        assert prefix.published() == V1

    def test_deleted_bucket_keeps_the_published_version(self, prefix: Prefix) -> None:
        """The bucket deleted: exit 1, one line naming the bucket, v1 still published."""
        prefix.server.delete_bucket(prefix.bucket)
        code, stderr = prefix.pull()
        assert code == 1
        one_line_error(stderr, "check the bucket")
        assert prefix.published() == V1
        assert leftovers(prefix.root, NAME) == []

    @pytest.mark.parametrize(
        ("change", "phrase"),
        [
            ("longer", "changed while downloading (listed"),
            ("same-size", "does not match the listed checksum"),
            ("deleted", "disappeared while downloading"),
        ],
    )
    def test_object_changed_after_listing_is_never_published(
        self, prefix: Prefix, change: str, phrase: str
    ) -> None:
        """Rewritten or deleted between listing and download: exit 1, v1 stays; retried."""
        v2 = {**V1, "flows/a.py": b"A = 2\n"}
        prefix.write(v2)
        replaced = {"longer": b"A = 2222\n", "same-size": b"A = 3\n"}
        if change == "deleted":
            action: Callable[[], None] = lambda: prefix.server.delete(  # noqa: E731
                prefix.bucket, f"{NAME}/flows/a.py"
            )
        else:
            data = replaced[change]
            action = lambda: prefix.write({"flows/a.py": data})  # noqa: E731
        prefix.on_first_get("flows/a.py", action)
        code, stderr = prefix.pull()
        assert code == 1, stderr
        one_line_error(stderr, phrase)
        assert prefix.published() == V1
        assert leftovers(prefix.root, NAME) == []
        prefix.proxy.on_request = None
        code, stderr = prefix.pull()  # the next pull lists again
        assert code == 0, stderr
        expected = dict(V1)
        if change == "deleted":
            del expected["flows/a.py"]
        else:
            expected["flows/a.py"] = replaced[change]
        assert prefix.published() == expected
        version = published_version(prefix.root, NAME)
        assert version is not None
        assert tree_listing(version) == content_listing(expected)
