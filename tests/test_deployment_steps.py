"""The step functions with Prefect's names, called as Prefect's worker calls them.

``runner_storage.deployments.steps.git_clone`` and friends take Prefect 3's arguments and
return Prefect's ``{"directory": ...}`` relative to the working directory. These tests
call them directly in a working directory of their own, against the real git server;
``test_prefect_steps.py`` runs them under Prefect itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servers.git_http import GitHTTPServer
from servers.gitrepo import INITIAL_FILES, UpstreamRepoFactory
from servers.s3 import S3Server

from runner_storage.deployments.steps import (
    agit_clone,
    git_clone,
    pull_from_remote_storage,
    pull_with_block,
    set_working_directory,
)
from runner_storage.exceptions import AuthenticationError, ConfigurationError

pytestmark = pytest.mark.usefixtures("_trust_https")


@pytest.fixture
def _trust_https(git_https_server: GitHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SSL_CAINFO", str(git_https_server.ca_file))


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's working directory, entered for the test."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (symlinks followed), by relative path."""
    root = Path(os.path.realpath(folder))
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def login(server: GitHTTPServer) -> str:
    """An ``access_token`` for the test server: ``user:password``, as Prefect documents."""
    return f"{server.username}:{server.password}"


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Every file below ``folder`` (not following symlinks) whose bytes hold ``secret``."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]


class TestGitClone:
    """``git_clone``: Prefect's arguments and result; a second call is a no-op or an update."""

    def test_clones_then_updates_in_place_never_already_exists(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """The same step twice, then after a commit: one directory, always the newest tree.

        Prefect's own step fails the second time in a long-lived worker ("destination path
        already exists"); here the second call changes nothing and the third publishes
        the new commit, and the token never lands in a file under the working directory.
        """
        upstream = upstream_repo()
        url = git_https_server.url_for(upstream)
        token = f"{git_https_server.username}:{git_https_server.password}"

        first = git_clone(url, branch="main", access_token=token)
        second = git_clone(url, branch="main", access_token=token)
        upstream.commit({"flows/a.py": "A = 2\n"})
        third = git_clone(url, branch="main", access_token=token)

        assert first == second == third == {"directory": f"{upstream.name}-main"}
        assert tree(work / first["directory"]) == {**INITIAL_FILES, "flows/a.py": "A = 2\n"}
        assert files_holding(work, token) == []

    def test_sparse_directories_and_clone_directory_name(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """``directories`` checks out those folders, under ``clone_directory_name``.

        As in git's cone mode (and Prefect's), the files at the top come too.
        """
        upstream = upstream_repo()
        result = git_clone(
            git_https_server.url_for(upstream),
            access_token=login(git_https_server),
            directories=["flows"],
            clone_directory_name="code",
        )

        assert result == {"directory": "code"}
        assert set(tree(work / "code")) == {"README.md", "flows/a.py", "flows/sub/b.py"}

    def test_credentials_as_a_mapping_or_a_block_like_object(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """``credentials`` may be a dict or an object with the credential attributes."""
        upstream = upstream_repo()
        url = git_https_server.url_for(upstream)

        class Credentials:
            """A stand-in for a Prefect credentials block: attributes only."""

            username = git_https_server.username
            token = git_https_server.password

        by_dict = git_clone(
            url,
            credentials={
                "username": git_https_server.username,
                "access_token": git_https_server.password,
            },
        )
        by_object = git_clone(url, credentials=Credentials(), clone_directory_name="other")

        assert tree(work / by_dict["directory"]) == tree(work / by_object["directory"])

    def test_token_and_credentials_exclude_each_other(self, work: Path) -> None:
        """Both given: Prefect's ValueError and wording, before any request."""
        with pytest.raises(ValueError, match="either an access token or credentials"):
            git_clone("https://127.0.0.1:9/x.git", access_token="a", credentials={"token": "b"})
        assert list(work.iterdir()) == []

    def test_a_failed_pull_keeps_the_last_good_tree(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """A wrong token on the next run: one-line AuthenticationError, the tree stays."""
        upstream = upstream_repo()
        url = git_https_server.url_for(upstream)
        result = git_clone(url, access_token=login(git_https_server))
        upstream.commit({"lib/c.py": "C = 4\n"})

        with pytest.raises(AuthenticationError) as caught:
            git_clone(url, access_token="wr0ng-t0ken-value")

        assert "\n" not in str(caught.value)
        assert "wr0ng-t0ken-value" not in str(caught.value)
        assert tree(work / result["directory"]) == INITIAL_FILES

    @pytest.mark.anyio
    async def test_agit_clone_is_the_awaitable_twin(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """``await agit_clone(...)`` publishes the same directory as ``git_clone``."""
        upstream = upstream_repo()
        result = await agit_clone(
            git_https_server.url_for(upstream), access_token=login(git_https_server)
        )
        assert tree(work / result["directory"]) == INITIAL_FILES


class TestOtherSteps:
    """``pull_from_remote_storage``, ``set_working_directory``, ``pull_with_block``."""

    @pytest.mark.anyio
    async def test_pull_from_remote_storage_with_settings(
        self, s3_server: S3Server, work: Path
    ) -> None:
        """An S3 prefix with settings: published at ``<bucket>/<prefix>``; again, a no-op."""
        bucket = s3_server.new_bucket()
        s3_server.put(bucket, "flows/etl.py", b"print('etl')\n")
        settings = s3_server.storage_options()

        first = await pull_from_remote_storage(f"s3://{bucket}/flows", **settings)
        second = await pull_from_remote_storage(f"s3://{bucket}/flows", **settings)

        assert first == second == {"directory": f"{bucket}/flows"}
        assert tree(work / first["directory"]) == {"etl.py": "print('etl')\n"}

    def test_set_working_directory_enters_a_published_tree(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, work: Path
    ) -> None:
        """Entering a step's directory makes later relative paths resolve inside it."""
        upstream = upstream_repo()
        cloned = git_clone(git_https_server.url_for(upstream), access_token=login(git_https_server))

        result = set_working_directory(cloned["directory"])

        assert Path(result["directory"]) == Path.cwd()
        assert Path("flows/a.py").read_text() == "A = 1\n"

    def test_set_working_directory_of_a_missing_folder_is_one_line(self, work: Path) -> None:
        """A folder that is not there: ConfigurationError naming it, the cwd unchanged."""
        with pytest.raises(ConfigurationError, match="missing") as caught:
            set_working_directory("missing")
        assert "\n" not in str(caught.value)
        assert Path.cwd() == work

    @pytest.mark.anyio
    async def test_pull_with_block_without_prefect_is_one_line(
        self, work: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither a block file nor Prefect has the block: one line naming both ways out."""
        monkeypatch.delenv("RUNNER_STORAGE_BLOCKS_FILE", raising=False)
        with pytest.raises(ConfigurationError, match="no block s3-bucket/flows") as caught:
            await pull_with_block("flows", "s3-bucket")
        assert "RUNNER_STORAGE_BLOCKS_FILE" in str(caught.value)
        assert "\n" not in str(caught.value)
        assert os.listdir(work) == []

    @pytest.mark.anyio
    async def test_pull_with_block_from_the_block_file(
        self, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without Prefect, the block file named by RUNNER_STORAGE_BLOCKS_FILE gives the block.

        A local-file-system block's tree is published under ``<slug>-<name>``, and a second
        call with nothing changed publishes nothing new.
        """
        code = tmp_path / "code"
        (code / "flows").mkdir(parents=True)
        (code / "flows" / "etl.py").write_text("print('etl')\n")
        blocks = tmp_path / "blocks.toml"
        blocks.write_text(f'[local-file-system.flows]\nbasepath = "{code}"\n')
        monkeypatch.setenv("RUNNER_STORAGE_BLOCKS_FILE", str(blocks))
        first = await pull_with_block("flows", "local-file-system")
        assert first == {"directory": "local-file-system-flows"}
        published = work / "local-file-system-flows"
        assert (published / "flows" / "etl.py").read_text() == "print('etl')\n"
        version = published.resolve()
        assert await pull_with_block("flows", "local-file-system") == first
        assert published.resolve() == version

    @pytest.mark.anyio
    async def test_pull_with_block_of_a_type_it_cannot_pull(
        self, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A block file's block that is no filesystem block: one line naming the types."""
        blocks = tmp_path / "blocks.toml"
        blocks.write_text('[s3-bucket.flows]\nbucket_name = "acme"\n')
        monkeypatch.setenv("RUNNER_STORAGE_BLOCKS_FILE", str(blocks))
        with pytest.raises(ConfigurationError, match="remote-file-system") as caught:
            await pull_with_block("flows", "s3-bucket")
        assert "\n" not in str(caught.value)
        assert os.listdir(work) == []
