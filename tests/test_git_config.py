"""GitRepository without a server: construction checks, naming, pull steps, identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner_storage.exceptions import ConfigurationError
from runner_storage.git import GitRepository
from runner_storage.secrets import Secret
from runner_storage.types import RunnerStorage

STEP = "prefect.deployments.steps.git_clone"
URL = "https://github.com/org/repo.git"

pytestmark = pytest.mark.anyio


class TestConstructionErrors:
    """Settings that can never work fail at construction with a ConfigurationError."""

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"branch": "main", "commit_sha": "abcd1234"}, "either branch or commit_sha"),
            ({"branch": "-x"}, "starts with '-'"),
            ({"branch": "--upload-pack=touch /tmp/pwned"}, "starts with '-'"),
            ({"branch": "a..b"}, r"'\.\.'"),
            ({"branch": "a b"}, "not a valid git ref"),
            ({"branch": "a\nb"}, "not a valid git ref"),
            ({"branch": "a\x7fb"}, "not a valid git ref"),
            ({"branch": "a~1"}, "not a valid git ref"),
            ({"branch": "a^"}, "not a valid git ref"),
            ({"branch": "a:b"}, "not a valid git ref"),
            ({"branch": "a*"}, "not a valid git ref"),
            ({"branch": "a?"}, "not a valid git ref"),
            ({"branch": "a[b"}, "not a valid git ref"),
            ({"branch": "a\\b"}, "not a valid git ref"),
            ({"branch": "a@{1}"}, r"'@\{'"),
            ({"branch": "/a"}, "starts or ends with '/'"),
            ({"branch": "a/"}, "starts or ends with '/'"),
            ({"branch": "a//b"}, "'//'"),
            ({"branch": "a."}, "ends with '.'"),
            ({"branch": ".hidden"}, "starting with '.'"),
            ({"branch": "x/.y"}, "starting with '.'"),
            ({"branch": "main.lock"}, "'.lock'"),
            ({"branch": "HEAD"}, "default branch"),
            ({"branch": "@"}, "default branch"),
            ({"commit_sha": "xyz"}, "invalid commit SHA"),
            ({"commit_sha": "abc"}, "invalid commit SHA"),
            ({"commit_sha": "a" * 65}, "invalid commit SHA"),
            ({"commit_sha": "main"}, "invalid commit SHA"),
            ({"credentials": {"username": "alice"}}, "username but no access_token"),
            ({"credentials": "a-token"}, "must be a mapping"),
            ({"directories": ["/etc"]}, "is absolute"),
            ({"directories": ["flows/../.."]}, r"contains '\.\.'"),
            ({"directories": [""]}, "empty path"),
            ({"directories": ["  "]}, "empty path"),
            ({"directories": ["-x"]}, "starts with '-'"),
            ({"directories": ["--cone"]}, "starts with '-'"),
            ({"directories": ["."]}, "whole repository"),
            ({"directories": ["a\nb"]}, "control characters"),
            ({"directories": "flows"}, "list of paths"),
            ({"depth": -1}, "depth must be"),
            ({"depth": True}, "depth must be"),
            ({"pull_interval": -5}, "pull_interval"),
            ({"keep_versions": 0}, "keep must be"),
            ({"name": "../escape"}, "leave the base path"),
            ({"name": ".repos"}, "reserved"),
        ],
    )
    def test_bad_option(self, kwargs: dict[str, Any], match: str) -> None:
        """Each bad option is refused with a message naming the problem."""
        with pytest.raises(ConfigurationError, match=match):
            GitRepository(URL, **kwargs)

    @pytest.mark.parametrize(
        ("url", "match"),
        [
            ("", "empty"),
            ("   ", "empty"),
            (" https://h/r.git", "whitespace"),
            ("https://h/r.git\n", "whitespace"),
            ("-uhttps://h/r.git", "looks like an option"),
            ("--upload-pack=touch /tmp/x", "looks like an option"),
            ("ext::sh -c touch% /tmp/pwned", "transport::address"),
            ("fd::17", "transport::address"),
            ("ftp://host/r.git", "unsupported scheme 'ftp'"),
            ("s3://bucket/r.git", "unsupported scheme 's3'"),
            ("https://[::1/r.git", "cannot parse"),
            ("https://host:notaport/r.git", "cannot parse"),
            ("https:///r.git", "no valid host"),
            ("https://host", "names no repository"),
            ("ssh://-oProxyCommand=x/r.git", "no valid host"),
            ("-oProxyCommand=x:r.git", "looks like an option"),
            ("file://otherhost/r.git", "file:///absolute/path"),
        ],
    )
    def test_bad_url(self, url: str, match: str) -> None:
        """Empty, unparseable, option-like and unsupported URLs are refused."""
        with pytest.raises(ConfigurationError, match=match):
            GitRepository(url)

    @pytest.mark.parametrize(
        "url",
        [
            "https://alice:s3cr3t-t0ken@github.com/org/repo.git",
            "https://ghp_s3cr3tt0ken@github.com/org/repo.git",
            "http://user:s3cr3t-t0ken@127.0.0.1:8080/repo.git",
            "ssh://git:s3cr3t-t0ken@github.com/org/repo.git",
        ],
    )
    def test_credentials_in_the_url_are_refused_without_echoing_them(self, url: str) -> None:
        """A URL carrying a secret is refused with a hint, and the secret is not repeated."""
        with pytest.raises(ConfigurationError, match="credentials=") as caught:
            GitRepository(url)
        assert "s3cr3t" not in str(caught.value)

    def test_configuration_errors_are_value_errors(self) -> None:
        """Code written for Prefect catches ValueError; it still works."""
        with pytest.raises(ValueError, match="commit SHA"):
            GitRepository(URL, commit_sha="not-hex")

    @pytest.mark.parametrize(
        "url",
        [
            "https://github.com/org/repo.git",
            "http://127.0.0.1:8080/repo.git",
            "ssh://git@github.com/org/repo.git",
            "ssh://git@[::1]:2222/srv/repo.git",
            "git://127.0.0.1:9418/repo.git",
            "git@github.com:org/repo.git",
            "github.com:org/repo.git",
            "file:///srv/git/repo.git",
            "/srv/git/repo.git",
            "./repo",
        ],
    )
    def test_supported_urls(self, url: str) -> None:
        """https, http, ssh, git, scp-style, file:// and local paths are accepted."""
        assert GitRepository(url).name == "repo"

    @pytest.mark.parametrize(
        "branch", ["main", "feature/x", "release-1.2", "v1.0.0", "ü/ñ", "a-b_c", "x.y/z"]
    )
    def test_valid_branch_names(self, branch: str) -> None:
        """Names git accepts are accepted, including non-ASCII ones."""
        assert GitRepository(URL, branch=branch).name.startswith("repo-")

    @pytest.mark.parametrize("sha", ["abcd", "ABCDEF12", "a" * 40, "0123456789" * 6 + "abcd"])
    def test_valid_commit_shas(self, sha: str) -> None:
        """4 to 64 hex digits are accepted, in either case."""
        GitRepository(URL, commit_sha=sha)


class TestWarnings:
    """Credentials that would travel badly or be ignored are pointed out at construction."""

    def test_http_credentials_warn_about_clear_text(self) -> None:
        """A token for an http:// URL would travel unencrypted: warn once, at construction."""
        with pytest.warns(UserWarning, match="clear text"):
            GitRepository("http://127.0.0.1:8080/r.git", credentials={"access_token": "t0k"})

    @pytest.mark.parametrize(
        "url", ["ssh://git@host/r.git", "git@host:r.git", "git://host/r.git", "file:///r.git"]
    )
    def test_credentials_for_non_http_remotes_are_ignored_with_a_warning(self, url: str) -> None:
        """Only http(s) carries credentials; elsewhere they are ignored, and the user is told."""
        with pytest.warns(UserWarning, match="ignored"):
            GitRepository(url, credentials={"access_token": "t0k"})


class TestNaming:
    """Destination names follow Prefect's rule."""

    @pytest.mark.parametrize(
        ("url", "branch", "name"),
        [
            ("https://github.com/org/repo.git", None, "repo"),
            ("https://github.com/org/repo", None, "repo"),
            ("https://github.com/org/repo.git", "main", "repo-main"),
            ("https://github.com/org/repo.git", "feature/new-thing", "repo-feature-new-thing"),
            ("git@github.com:org/flows.git", "dev", "flows-dev"),
            ("/srv/git/local.git", None, "local"),
        ],
    )
    def test_default_name(self, url: str, branch: str | None, name: str) -> None:
        """``<repo>[-<branch with / as ->]``."""
        assert GitRepository(url, branch=branch).name == name

    def test_destination_is_base_slash_name(self, tmp_path: Path) -> None:
        """The destination is BASE/NAME once a base path is set."""
        storage = GitRepository(URL, branch="dev")
        storage.set_base_path(tmp_path)
        assert storage.destination == tmp_path / "repo-dev"

    def test_explicit_name_wins(self) -> None:
        """A given name replaces the default."""
        assert GitRepository(URL, name="flows").name == "flows"

    def test_empty_branch_means_the_default_branch(self) -> None:
        """An empty branch string is treated like None, as Prefect's truthiness checks do."""
        assert GitRepository(URL, branch="").name == "repo"

    def test_pull_interval_default_is_prefects(self) -> None:
        """60 seconds by default; None pulls once."""
        assert GitRepository(URL).pull_interval == 60
        assert GitRepository(URL, pull_interval=None).pull_interval is None


class TestPullStep:
    """to_pull_step builds Prefect's git_clone step exactly, without secrets."""

    def test_minimal(self) -> None:
        """Repository and branch (None for the default branch) only."""
        assert GitRepository(URL).to_pull_step() == {STEP: {"repository": URL, "branch": None}}

    def test_default_name_is_not_written(self) -> None:
        """clone_directory_name appears only when the name is not the default."""
        step = GitRepository(URL, branch="feature/x").to_pull_step()
        assert step == {STEP: {"repository": URL, "branch": "feature/x"}}

    def test_every_option(self) -> None:
        """Name, directories and submodules appear when set, in Prefect's key order."""
        storage = GitRepository(
            URL, name="custom", branch="dev", include_submodules=True, directories=["flows", "lib"]
        )
        step = storage.to_pull_step()
        assert step == {
            STEP: {
                "repository": URL,
                "branch": "dev",
                "clone_directory_name": "custom",
                "directories": ["flows", "lib"],
                "include_submodules": True,
            }
        }
        assert list(step[STEP]) == [
            "repository",
            "branch",
            "clone_directory_name",
            "directories",
            "include_submodules",
        ]

    def test_commit_sha_as_given(self) -> None:
        """The commit SHA is written as the user gave it."""
        step = GitRepository(URL, commit_sha="ABCDEF1").to_pull_step()
        assert step == {STEP: {"repository": URL, "branch": None, "commit_sha": "ABCDEF1"}}

    def test_environment_secret_becomes_an_env_placeholder(self) -> None:
        """Secret.from_env('VAR') is written as {{ $VAR }}; the username stays."""
        storage = GitRepository(
            URL, credentials={"username": "bot", "access_token": Secret.from_env("GH_TOKEN")}
        )
        assert storage.to_pull_step() == {
            STEP: {
                "repository": URL,
                "branch": None,
                "credentials": {"username": "bot", "access_token": "{{ $GH_TOKEN }}"},
            }
        }

    def test_named_secret_becomes_a_block_placeholder(self) -> None:
        """A named Secret is written as Prefect's Secret block placeholder."""
        storage = GitRepository(
            URL, credentials={"access_token": Secret("t0k3n-value", name="github-token")}
        )
        step = storage.to_pull_step()
        assert step[STEP]["credentials"] == {
            "access_token": "{{ prefect.blocks.secret.github-token }}"
        }
        assert "t0k3n-value" not in repr(step)

    def test_plaintext_token_refuses_to_build_a_step(self) -> None:
        """A plain token would be written into the deployment: refused, as Prefect does."""
        storage = GitRepository(URL, credentials={"access_token": "t0k3n-value"})
        with pytest.raises(ConfigurationError, match="plain value") as caught:
            storage.to_pull_step()
        assert "t0k3n-value" not in str(caught.value)


class TestIdentity:
    """Equality, hashing and repr follow Prefect; nothing secret is shown."""

    def test_equality_uses_url_branch_and_name(self) -> None:
        """Same URL, branch and name are equal; any difference is not."""
        assert GitRepository(URL, branch="a") == GitRepository(URL, branch="a")
        assert GitRepository(URL, branch="a") != GitRepository(URL, branch="b")
        assert GitRepository(URL, branch="a") != GitRepository(URL, branch="a", name="x")
        assert GitRepository(URL) != GitRepository("https://github.com/org/other.git", name="repo")
        assert GitRepository(URL) != "repo"

    def test_equal_storages_hash_alike(self) -> None:
        """Equal storages can share a set."""
        assert len({GitRepository(URL), GitRepository(URL)}) == 1

    def test_repr_has_no_secret(self) -> None:
        """The repr shows name, URL and branch, never credentials."""
        storage = GitRepository(URL, branch="dev", credentials={"access_token": "t0k3n-value"})
        assert repr(storage) == f"GitRepository(name='repo-dev' repository='{URL}', branch='dev')"

    def test_satisfies_the_protocol(self) -> None:
        """GitRepository is a RunnerStorage."""
        assert isinstance(GitRepository(URL), RunnerStorage)

    async def test_prefect_helpers(self, tmp_path: Path) -> None:
        """Prefect's helper methods answer from the settings and the published state."""
        storage = GitRepository(URL, commit_sha="abcd1234", directories=["flows"], depth=0)
        storage.set_base_path(tmp_path)
        assert not await storage.is_shallow_clone()
        assert not await storage.is_sparsely_checked_out()
        assert not await storage.is_current_commit()
        with pytest.raises(ConfigurationError, match="No commit SHA"):
            await GitRepository(URL).is_current_commit()
