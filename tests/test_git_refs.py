"""Ref lookups over smart HTTP without starting git (protocol v2 ``ls-refs`` in process).

A daemon asks each git source's remote for one ref at every interval. Over http(s) that
question is asked in process; git is started only to fetch, and whenever the shortcut could
answer differently from git (no protocol v2, a proxy, a redirect...). These tests run the
real git HTTP server and watch which git commands run through a logging ``git`` on PATH
that hands every call to the real git.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory, git_env

from runner_storage.exceptions import AuthenticationError, TransientSourceError
from runner_storage.git import GitRepository
from runner_storage.git.environment import authorization, git_environment
from runner_storage.git.refs import RefusedError, list_refs

pytestmark = pytest.mark.anyio


@pytest.fixture
def git_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``git`` first on PATH that logs its arguments, one call per line, then runs git."""
    real = shutil.which("git")
    assert real is not None
    shim_dir, log = tmp_path / "shim", tmp_path / "git-calls.log"
    shim_dir.mkdir()
    shim = shim_dir / "git"
    shim.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def subcommands(log: Path) -> list[str]:
    """The git subcommand of every logged call by the client (not the server's backend)."""
    found = []
    for line in log.read_text().splitlines():
        words = [w for w in line.split() if not w.startswith("--git-dir=")]
        if words and words[0] != "http-backend":
            found.append(words[0])
    return found


def forget(log: Path) -> None:
    """Empty the call log."""
    log.write_text("")


def storage_for(
    server: GitHTTPServer, repo: UpstreamRepo, base: Path, **options: object
) -> GitRepository:
    """A GitRepository of ``repo`` on ``server`` with the right token, under ``base``."""
    options.setdefault(
        "credentials", {"username": server.username, "access_token": server.password}
    )
    with pytest.warns(UserWarning, match="clear text"):
        storage = GitRepository(server.url_for(repo), **options)  # type: ignore[arg-type]
    storage.set_base_path(base)
    return storage


def ask(
    server: GitHTTPServer,
    repo: UpstreamRepo,
    names: list[str],
    *,
    symrefs: bool = False,
    env: dict[str, str] | None = None,
) -> list[tuple[str, str]] | None:
    """What :func:`list_refs` answers for ``names`` of ``repo``, logged in as the server's user."""
    basic = (server.username, server.password)
    environment = git_environment(basic_auth=basic, http_origin=f"{server.base_url}/", ssh=None,
                                  inherited=env or {"PATH": os.environ["PATH"]})  # fmt: skip
    return list_refs(server.url_for(repo), names, symrefs=symrefs,
                     authorization=authorization(basic), env=environment,
                     user_agent="git/2 tests")  # fmt: skip


def git_ls_remote(
    server: GitHTTPServer, repo: UpstreamRepo, names: list[str], *, symrefs: bool = False
) -> list[tuple[str, str]]:
    """What ``git ls-remote`` prints for ``names``, keeping refs named exactly so."""
    argv = ["git", "ls-remote", *(["--symref"] if symrefs else []), server.url_for(repo), *names]
    out = subprocess.run(argv, env=git_env(**server.extra_header_env()), capture_output=True,
                         check=True, timeout=60).stdout.decode()  # fmt: skip
    pairs = [tuple(line.split("\t", 1)) for line in out.splitlines()]
    return [(value, name) for value, name in pairs if name in names]


class TestSameAnswerAsGit:
    """The in-process answer is the one ``git ls-remote`` gives."""

    def test_branches_tags_and_the_default_branch(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer
    ) -> None:
        """Branch, lightweight and annotated tag (peeled), HEAD with its target: as git says."""
        upstream = upstream_repo()
        upstream.create_branch("main-old")  # a prefix of main's name: never in the answer
        upstream.commit({"later.txt": "later\n"})
        upstream.tag("light")
        upstream.tag("v1", annotated=True)
        upstream.create_branch("feature/x")
        cases = [
            (["HEAD"], True),
            (["refs/heads/main"], False),
            (["refs/heads/feature/x", "refs/tags/feature/x", "refs/tags/feature/x^{}"], False),
            (["refs/heads/v1", "refs/tags/v1", "refs/tags/v1^{}"], False),
            (["refs/heads/light", "refs/tags/light", "refs/tags/light^{}"], False),
            (["refs/heads/nothing", "refs/tags/nothing"], False),
        ]
        for names, symrefs in cases:
            ours = ask(git_http_server, upstream, names, symrefs=symrefs)
            assert ours is not None, names
            assert sorted(ours) == sorted(git_ls_remote(git_http_server, upstream, names,
                                                        symrefs=symrefs)), names  # fmt: skip
        peeled = dict((n, v) for v, n in ask(git_http_server, upstream, ["refs/tags/v1^{}"]) or [])
        assert peeled == {"refs/tags/v1^{}": upstream.head()}

    def test_a_server_without_protocol_v2_is_left_to_git(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer
    ) -> None:
        """No v2 capability advertisement: no answer (None), so the caller asks git."""
        upstream = upstream_repo()
        with git_http_server.protocol_v0_only():
            assert ask(git_http_server, upstream, ["refs/heads/main"]) is None
        assert ask(git_http_server, upstream, ["refs/heads/main"]) == [
            (upstream.head(), "refs/heads/main")
        ]

    def test_a_proxy_in_the_environment_is_left_to_git(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer
    ) -> None:
        """A proxy variable makes git answer; ``no_proxy`` naming the host undoes that."""
        upstream = upstream_repo()
        path = {"PATH": os.environ["PATH"]}
        for proxy in ({"http_proxy": "http://127.0.0.1:9"}, {"ALL_PROXY": "http://127.0.0.1:9"}):
            assert ask(git_http_server, upstream, ["HEAD"], env={**path, **proxy}) is None
            bypass = {**path, **proxy, "no_proxy": "localhost,127.0.0.1"}
            assert ask(git_http_server, upstream, ["HEAD"], env=bypass) is not None
        assert ask(git_http_server, upstream, ["HEAD"], env={**path, "no_proxy": "x"}) is not None

    def test_a_netrc_login_for_the_host_is_left_to_git(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """With a ``~/.netrc`` login for the host, which git's libcurl reads, git answers.

        An entry for another host only does not stop the shortcut.
        """
        upstream = upstream_repo()
        netrc = tmp_path / ".netrc"
        netrc.write_text("machine elsewhere.example login someone password other\n")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        assert ask(git_http_server, upstream, ["HEAD"], env=env) is not None
        for entry in ("machine 127.0.0.1 login u password p", "default login u password p"):
            netrc.write_text(entry + "\n")
            assert ask(git_http_server, upstream, ["HEAD"], env=env) is None, entry
        netrc.write_text("machine 127.0.0.1 login\n")  # does not parse: git decides
        assert ask(git_http_server, upstream, ["HEAD"], env=env) is None

    def test_http_errors_are_refusals_in_gits_words(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer
    ) -> None:
        """401, 404 and 5xx raise RefusedError carrying the line git prints for them."""
        upstream = upstream_repo()
        with git_http_server.hidden(upstream), pytest.raises(RefusedError, match="not found"):
            ask(git_http_server, upstream, ["HEAD"])
        git_http_server.fail_next(1, 502)
        with pytest.raises(RefusedError, match="returned error: 502"):
            ask(git_http_server, upstream, ["HEAD"])


class TestPullsWithoutGit:
    """What a user of GitRepository over http(s) sees: no git process for a no-op pull."""

    async def test_no_change_runs_no_git(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        git_calls: Path,
        tmp_path: Path,
    ) -> None:
        """An unchanged branch costs one GET and one ls-refs, no git; a commit still lands."""
        upstream = upstream_repo()
        storage = storage_for(git_http_server, upstream, tmp_path / "base")
        assert (await storage.pull_code()).changed
        assert "fetch" in subcommands(git_calls)
        forget(git_calls)
        git_http_server.reset_stats()
        result = await storage.pull_code()
        assert not result.changed
        assert subcommands(git_calls) == []
        log = git_http_server.requests_for(upstream)
        assert [(r.method, r.command, r.status) for r in log] == [
            ("GET", None, 200),
            ("POST", "ls-refs", 200),
        ]
        assert all(r.authorization == git_http_server.auth_header() for r in log)
        sha = upstream.commit({"new.txt": "new\n"})
        result = await storage.pull_code()
        assert result.changed
        assert result.revision == sha
        assert "ls-remote" not in subcommands(git_calls)
        assert (storage.destination / "new.txt").read_text() == "new\n"

    async def test_a_new_commit_is_fetched_by_its_id(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A new commit costs four requests: our lookup, then git fetching the id it found.

        Fetched by branch name, git would list the refs again (five requests, as many
        ls-refs as pulls); fetched by id, it asks for the commit alone.
        """
        upstream = upstream_repo()
        storage = storage_for(git_http_server, upstream, tmp_path / "base")
        await storage.pull_code()
        sha = upstream.commit({"new.txt": "new\n"})
        git_http_server.reset_stats()
        result = await storage.pull_code()
        assert result.revision == sha
        assert (storage.destination / "new.txt").read_text() == "new\n"
        log = git_http_server.requests_for(upstream)
        assert [(r.method, r.command, r.status) for r in log] == [
            ("GET", None, 200),
            ("POST", "ls-refs", 200),
            ("GET", None, 200),
            ("POST", "fetch", 200),
        ]

    async def test_a_push_during_a_v0_pull_is_fetched_by_name(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        git_calls: Path,
        tmp_path: Path,
    ) -> None:
        """A push during a v0 pull: the branch is fetched by name, labelled as fetched.

        A protocol v0 server refuses a commit that a push moved its branch past.
        """
        upstream = upstream_repo()
        storage = storage_for(git_http_server, upstream, tmp_path / "base")
        await storage.pull_code()
        resolved = upstream.commit({"step.txt": "one\n"})
        pushed: list[str] = []
        adverts = 0

        def accept(authorization: str | None, path: str) -> bool:
            # The second advertisement is git's fetch, after our lookup saw ``resolved``.
            nonlocal adverts
            if path.endswith("/info/refs"):
                adverts += 1
                if adverts == 2:
                    pushed.append(upstream.commit({"step.txt": "two\n"}))
            return authorization == git_http_server.auth_header()

        git_http_server.accept = accept
        forget(git_calls)
        try:
            with git_http_server.protocol_v0_only():
                result = await storage.pull_code()
        finally:
            git_http_server.accept = None
        assert pushed
        assert pushed[0] != resolved
        assert result.revision == pushed[0]
        assert (storage.destination / "step.txt").read_text() == "two\n"
        assert subcommands(git_calls).count("fetch") == 2  # by id (refused), then by name

    async def test_protocol_v0_server_is_asked_by_git(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        git_calls: Path,
        tmp_path: Path,
    ) -> None:
        """A server that does not speak protocol v2 still works: git lists the refs."""
        upstream = upstream_repo()
        storage = storage_for(git_http_server, upstream, tmp_path / "base")
        with git_http_server.protocol_v0_only():
            await storage.pull_code()
            sha = upstream.commit({"v0.txt": "v0\n"})
            result = await storage.pull_code()
        assert result.revision == sha
        assert "ls-remote" in subcommands(git_calls)

    async def test_a_proxy_is_used_through_git(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With a dead ``http_proxy`` the pull fails as git does; nothing slips past it."""
        upstream = upstream_repo()
        storage = storage_for(git_http_server, upstream, tmp_path / "base")
        await storage.pull_code()
        git_http_server.reset_stats()
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
        with pytest.raises(TransientSourceError):
            await storage.pull_code()
        assert git_http_server.requests_for(upstream) == []

    async def test_a_netrc_login_works_as_with_git(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        git_calls: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A repository that needs a login, given only in ``~/.netrc``, pulls as git clones it."""
        upstream = upstream_repo()
        home = tmp_path / "home"
        home.mkdir()
        netrc = home / ".netrc"
        login = f"login {git_http_server.username} password {git_http_server.password}"
        netrc.write_text(f"machine 127.0.0.1 {login}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("HOME", str(home))
        storage = GitRepository(git_http_server.url_for(upstream))
        storage.set_base_path(tmp_path / "base")
        assert (await storage.pull_code()).revision == upstream.head()
        assert "ls-remote" in subcommands(git_calls)
        sha = upstream.commit({"netrc.txt": "netrc\n"})
        assert (await storage.pull_code()).revision == sha

    async def test_a_wrong_token_is_refused_once(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A rejected token costs the server one refused request, not one more from git."""
        upstream = upstream_repo()
        credentials = {"username": git_http_server.username, "access_token": "wr0ng-t0ken-42"}
        storage = storage_for(git_http_server, upstream, tmp_path / "base", credentials=credentials)
        git_http_server.reset_stats()
        with pytest.raises(AuthenticationError, match="HTTP 401"):
            await storage.pull_code()
        assert git_http_server.stats(upstream).unauthorized == 1
        assert git_http_server.stats(upstream).requests == 1

    async def test_https_trusts_what_git_trusts(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_https_server: GitHTTPServer,
        git_calls: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Over TLS the lookup trusts GIT_SSL_CAINFO alone, as git does.

        With it, a no-op pull needs no git; without it, the certificate fails the pull.
        """
        upstream = upstream_repo()
        monkeypatch.setenv("GIT_SSL_CAINFO", str(git_https_server.ca_file))
        storage = GitRepository(
            git_https_server.url_for(upstream),
            credentials={"username": git_https_server.username,
                         "access_token": git_https_server.password},
        )  # fmt: skip
        storage.set_base_path(tmp_path / "base")
        await storage.pull_code()
        forget(git_calls)
        assert not (await storage.pull_code()).changed
        assert subcommands(git_calls) == []
        monkeypatch.delenv("GIT_SSL_CAINFO")
        with pytest.raises(Exception, match="certificate"):
            await storage.pull_code()
        assert "ls-remote" in subcommands(git_calls)
