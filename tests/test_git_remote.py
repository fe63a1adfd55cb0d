"""GitRepository over smart HTTP(S) with Basic auth, and over ssh.

Credentials, where they go (and never go), request costs of no-op and incremental pulls,
and error mapping.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from servers.git_http import GitHTTPServer
from servers.gitrepo import INITIAL_FILES, UpstreamRepo, UpstreamRepoFactory
from servers.sshd import SSHServer

from runner_storage.exceptions import (
    AuthenticationError,
    NotFoundError,
    RunnerStorageError,
    TransientSourceError,
)
from runner_storage.git import GitRepository
from runner_storage.secrets import Secret

pytestmark = pytest.mark.anyio

WRONG_TOKEN = "wr0ng-t0ken-value-123"


def tree_of(destination: Path) -> dict[str, str]:
    """Every file of a published tree: path -> text."""
    root = Path(os.path.realpath(destination))
    return {
        path.relative_to(root).as_posix(): path.read_text(errors="replace")
        for path in root.rglob("*")
        if path.is_file()
    }


def https_storage(
    server: GitHTTPServer, repo: UpstreamRepo | str, base: Path, **options: Any
) -> GitRepository:
    """A GitRepository for ``repo`` on the HTTPS server, publishing under ``base``."""
    options.setdefault(
        "credentials", {"username": server.username, "access_token": server.password}
    )
    storage = GitRepository(server.url_for(repo), **options)
    storage.set_base_path(base)
    return storage


def http_storage(
    server: GitHTTPServer, repo: UpstreamRepo | str, base: Path, **options: Any
) -> GitRepository:
    """Like :func:`https_storage` over plain HTTP (which warns about clear text)."""
    with pytest.warns(UserWarning, match="clear text"):
        return https_storage(server, repo, base, **options)


def random_bytes(size: int) -> bytes:
    """Incompressible content, so transfer sizes mean something."""
    return os.urandom(size)


def is_published(storage: GitRepository) -> bool:
    """Whether anything exists at the destination."""
    return os.path.lexists(storage.destination)


def files_containing(root: Path, needles: list[str]) -> list[Path]:
    """Every regular file under ``root`` whose bytes contain one of ``needles``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle.encode() in data for needle in needles):
                found.append(path)
    return found


@pytest.fixture
def trust_https(git_https_server: GitHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let git trust the HTTPS test server's certificate (GIT_SSL_CAINFO)."""
    monkeypatch.setenv("GIT_SSL_CAINFO", str(git_https_server.ca_file))


class TestHTTPCredentials:
    """Every way of giving a token works; a wrong or missing one is an AuthenticationError."""

    @pytest.mark.usefixtures("trust_https")
    async def test_credentials_dict_over_https(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A username and access_token reach the server as Basic auth, over TLS."""
        upstream = upstream_repo()
        git_https_server.reset_stats()
        storage = https_storage(git_https_server, upstream, tmp_path)
        result = await storage.pull_code()
        assert result.revision == upstream.head()
        assert tree_of(storage.destination) == INITIAL_FILES
        headers = {r.authorization for r in git_https_server.requests_for(upstream)}
        assert headers == {git_https_server.auth_header()}

    @pytest.mark.usefixtures("trust_https")
    async def test_secret_from_env(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_https_server: GitHTTPServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Secret.from_env reads the variable at pull time."""
        monkeypatch.setenv("RS_TEST_TOKEN", git_https_server.password)
        credentials = {
            "username": git_https_server.username,
            "access_token": Secret.from_env("RS_TEST_TOKEN"),
        }
        storage = https_storage(
            git_https_server, upstream_repo(), tmp_path, credentials=credentials
        )
        assert (await storage.pull_code()).changed

    @pytest.mark.usefixtures("trust_https")
    async def test_secret_from_file_is_read_at_every_pull(
        self, upstream_repo: UpstreamRepoFactory, git_https_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A rotated token file takes effect on the next pull, without a restart."""
        token_file = tmp_path / "token"
        token_file.write_text(WRONG_TOKEN + "\n")
        credentials = {
            "username": git_https_server.username,
            "access_token": Secret.from_file(token_file),
        }
        storage = https_storage(
            git_https_server, upstream_repo(), tmp_path / "base", credentials=credentials
        )
        with pytest.raises(AuthenticationError):
            await storage.pull_code()
        token_file.write_text(git_https_server.password + "\n")
        assert (await storage.pull_code()).changed

    async def test_password_key_and_plain_http(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Prefect's 'password' key works too; plain http warns but works."""
        credentials = {"username": git_http_server.username, "password": git_http_server.password}
        storage = http_storage(git_http_server, upstream_repo(), tmp_path, credentials=credentials)
        assert (await storage.pull_code()).changed

    async def test_wrong_token_is_rejected_without_showing_it(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A rejected token is an AuthenticationError whose text holds no secret."""
        credentials = {"username": git_http_server.username, "access_token": WRONG_TOKEN}
        storage = http_storage(git_http_server, upstream_repo(), tmp_path, credentials=credentials)
        with pytest.raises(AuthenticationError, match=r"HTTP 401.*check the credentials") as caught:
            await storage.pull_code()
        text = str(caught.value)
        assert WRONG_TOKEN not in text
        assert git_http_server.auth_header(password=WRONG_TOKEN).split()[1] not in text
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
        assert not is_published(storage)

    async def test_missing_credentials_fail_at_once(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """No credentials: git does not prompt, the pull fails with AuthenticationError."""
        storage = GitRepository(git_http_server.url_for(upstream_repo()))
        storage.set_base_path(tmp_path)
        with pytest.raises(AuthenticationError):
            await storage.pull_code()

    async def test_missing_secret_variable_is_a_credentials_error(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """An unset secret variable fails the pull (recorded in state), not construction."""
        credentials = {"access_token": Secret.from_env("RS_TEST_UNSET_VARIABLE")}
        storage = http_storage(git_http_server, upstream_repo(), tmp_path, credentials=credentials)
        with pytest.raises(RunnerStorageError, match="RS_TEST_UNSET_VARIABLE"):
            await storage.pull_code()
        state = storage.publisher.state()
        assert state is not None
        assert "RS_TEST_UNSET_VARIABLE" in (state.last_error or "")


class TestSecretsStayOut:
    """The token reaches git through the environment only: no file, log or error holds it."""

    async def test_token_is_absent_from_every_file_log_and_error(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Successful, no-op and failing pulls leave no trace of the token anywhere."""
        caplog.set_level(logging.DEBUG)
        upstream = upstream_repo()
        storage = http_storage(git_http_server, upstream, tmp_path, directories=["flows"])
        errors: list[str] = []
        await storage.pull_code()
        upstream.commit({"flows/a.py": "A = 2\n"})
        await storage.pull_code()
        await storage.pull_code()
        for failing in (
            http_storage(git_http_server, upstream, tmp_path, branch="missing"),
            http_storage(git_http_server, "no-such-repo", tmp_path),
        ):
            with pytest.raises(NotFoundError) as caught:
                await failing.pull_code()
            errors.append(str(caught.value))
        secrets = [
            git_http_server.password,
            git_http_server.auth_header().split()[1],
        ]
        assert files_containing(tmp_path, secrets) == []
        for secret in secrets:
            assert secret not in caplog.text
            assert all(secret not in error for error in errors)
            assert secret not in repr(storage)
        config = next((tmp_path / ".runner-storage" / ".repos").glob("*.git")) / "config"
        assert "extraheader" not in config.read_text().lower()


class TestRequestCosts:
    """What pulls cost on the wire, from the HTTP server's request log."""

    async def test_noop_pull_lists_one_ref_and_moves_no_objects(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """An unchanged branch costs one ref listing: no fetch request, no pack."""
        upstream = upstream_repo()
        storage = http_storage(git_http_server, upstream, tmp_path)
        await storage.pull_code()
        git_http_server.reset_stats()
        result = await storage.pull_code()
        assert not result.changed
        posts = [r for r in git_http_server.requests_for(upstream) if r.is_upload_pack]
        assert len(posts) == 1  # the ls-refs command of protocol v2
        assert posts[0].response_bytes < 1024

    async def test_pinned_commit_needs_no_network_once_published(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A full or short commit SHA, once published, is a no-op without any request."""
        upstream = upstream_repo()
        sha = upstream.head()
        for name, commit in (("full", sha), ("short", sha[:8])):
            storage = http_storage(
                git_http_server, upstream, tmp_path, commit_sha=commit, name=name
            )
            assert (await storage.pull_code()).revision == sha
            git_http_server.reset_stats()
            result = await storage.pull_code()
            assert (result.revision, result.changed) == (sha, False)
            assert git_http_server.stats(upstream).requests == 0

    async def test_new_commit_costs_only_what_changed(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Beside a 512 KiB file, a one-line change transfers a few KiB, not the tree."""
        upstream = upstream_repo()
        upstream.commit({"data/big.bin": random_bytes(512 * 1024)})
        storage = http_storage(git_http_server, upstream, tmp_path)
        first = await storage.pull_code()
        assert first.bytes_fetched > 512 * 1024
        upstream.commit({"flows/a.py": "A = 2\n"})
        git_http_server.reset_stats()
        result = await storage.pull_code()
        assert (result.changed, result.files_fetched) == (True, 1)
        assert git_http_server.stats(upstream).upload_pack_bytes < 16 * 1024
        assert result.bytes_fetched < 16 * 1024

    async def test_sparse_pull_leaves_other_directories_on_the_server(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """With directories, a large file elsewhere is never transferred."""
        upstream = upstream_repo()
        upstream.commit({"data/big.bin": random_bytes(512 * 1024)})
        storage = http_storage(git_http_server, upstream, tmp_path, directories=["flows"])
        git_http_server.reset_stats()
        await storage.pull_code()
        assert "data/big.bin" not in tree_of(storage.destination)
        assert git_http_server.stats(upstream).upload_pack_bytes < 64 * 1024


class TestHTTPErrors:
    """HTTP failures map onto the error tree."""

    async def test_missing_repository_is_not_found(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A 404 is a NotFoundError naming the repository."""
        upstream = upstream_repo()
        storage = http_storage(git_http_server, upstream, tmp_path)
        with git_http_server.hidden(upstream), pytest.raises(NotFoundError, match=upstream.name):
            await storage.pull_code()

    async def test_server_error_is_transient_and_keeps_the_tree(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A 503 is a TransientSourceError; the published version stays."""
        upstream = upstream_repo()
        storage = http_storage(git_http_server, upstream, tmp_path)
        await storage.pull_code()
        link = os.readlink(storage.destination)
        git_http_server.fail_next(1, 503)
        with pytest.raises(TransientSourceError, match="503"):
            await storage.pull_code()
        assert os.readlink(storage.destination) == link


class TestSubmoduleCredentials:
    """Credentials follow submodules on the same scheme, host and port, and nowhere else."""

    @staticmethod
    def superproject_with(
        upstream_repo: UpstreamRepoFactory, submodule_url: str | None
    ) -> tuple[UpstreamRepo, UpstreamRepo]:
        """A superproject whose ``mods/lib`` submodule has ``submodule_url`` (default relative)."""
        sub = upstream_repo("sub")
        sub.commit({"lib.py": "LIB = 1\n"})
        superproject = upstream_repo("super")
        superproject.add_submodule("mods/lib", sub.file_url)
        url = submodule_url or f"../{sub.relpath}"
        superproject.commit(
            {".gitmodules": f'[submodule "mods/lib"]\n\tpath = mods/lib\n\turl = {url}\n'}
        )
        return superproject, sub

    async def test_same_host_submodule_gets_the_credentials(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A private submodule beside the superproject is fetched with the same token."""
        superproject, sub = self.superproject_with(upstream_repo, None)
        storage = http_storage(git_http_server, superproject, tmp_path, include_submodules=True)
        await storage.pull_code()
        assert tree_of(storage.destination)["mods/lib/lib.py"] == "LIB = 1\n"
        assert git_http_server.stats(sub).unauthorized == 0

    @pytest.mark.usefixtures("trust_https")
    async def test_submodule_elsewhere_never_receives_them(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        git_https_server: GitHTTPServer,
        tmp_path: Path,
    ) -> None:
        """Another scheme and port is another origin: no header is sent, auth fails there."""
        sub = upstream_repo("sub")
        superproject, _ = self.superproject_with(upstream_repo, git_https_server.url_for(sub))
        git_https_server.reset_stats()
        storage = http_storage(git_http_server, superproject, tmp_path, include_submodules=True)
        with pytest.raises(AuthenticationError, match=sub.name):
            await storage.pull_code()
        assert git_https_server.requests_for(sub)
        assert all(r.authorization is None for r in git_https_server.requests_for(sub))
        assert not is_published(storage)


class TestSSH:
    """ssh:// with an explicit key and known_hosts file, or the user's own ssh setup."""

    async def test_key_and_known_hosts(
        self, upstream_repo: UpstreamRepoFactory, sshd_server: SSHServer, tmp_path: Path
    ) -> None:
        """The given key logs in and the given known_hosts file is trusted."""
        upstream = upstream_repo()
        storage = GitRepository(
            sshd_server.url_for(upstream),
            ssh_key_file=sshd_server.client_key_file,
            known_hosts_file=sshd_server.known_hosts_file,
            directories=["flows"],
        )
        storage.set_base_path(tmp_path)
        result = await storage.pull_code()
        assert result.revision == upstream.head()
        assert "flows/sub/b.py" in tree_of(storage.destination)

    @pytest.mark.parametrize("wrong", ["known_hosts", "key"])
    async def test_wrong_host_key_or_client_key_is_an_authentication_error(
        self, upstream_repo: UpstreamRepoFactory, sshd_server: SSHServer, tmp_path: Path, wrong: str
    ) -> None:
        """An unknown host key or a refused client key fails fast; nothing is published."""
        storage = GitRepository(
            sshd_server.url_for(upstream_repo()),
            ssh_key_file=(
                sshd_server.wrong_client_key_file if wrong == "key" else sshd_server.client_key_file
            ),
            known_hosts_file=(
                sshd_server.wrong_known_hosts_file
                if wrong == "known_hosts"
                else sshd_server.known_hosts_file
            ),
        )
        storage.set_base_path(tmp_path)
        match = "Host key verification failed" if wrong == "known_hosts" else "Permission denied"
        with pytest.raises(AuthenticationError, match=match):
            await storage.pull_code()
        assert not is_published(storage)

    async def test_users_own_ssh_setup_applies_without_options(
        self,
        upstream_repo: UpstreamRepoFactory,
        sshd_server: SSHServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without key options the user's GIT_SSH_COMMAND is used as is (scp-style URL)."""
        for key, value in sshd_server.config_env().items():
            monkeypatch.setenv(key, value)
        upstream = upstream_repo()
        storage = GitRepository(sshd_server.scp_url_for(upstream), branch="main")
        storage.set_base_path(tmp_path)
        assert (await storage.pull_code()).revision == upstream.head()
