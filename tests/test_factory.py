"""create_storage_from_source: Prefect's rules for turning a source string into a storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import classify_source, create_storage_from_source
from runner_storage.git import GitRepository
from runner_storage.local import LocalStorage
from runner_storage.remote import RemoteStorage
from runner_storage.types import RunnerStorage

STEPS = "prefect.deployments.steps"


class TestGitSources:
    """Sources that are cloned with git."""

    @pytest.mark.parametrize(
        ("source", "repository"),
        [
            ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
            ("http://127.0.0.1:8080/repo.git", "http://127.0.0.1:8080/repo.git"),
            ("ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"),
            ("git://127.0.0.1:9418/repo", "git://127.0.0.1:9418/repo"),
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("github.com:org/repo.git", "github.com:org/repo.git"),
            ("git+https://github.com/org/repo", "https://github.com/org/repo"),
            ("git+http://127.0.0.1:8080/repo", "http://127.0.0.1:8080/repo"),
            ("git+ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
            ("GIT+HTTPS://github.com/org/repo", "HTTPS://github.com/org/repo"),
            ("https://github.com/org/repo.git/", "https://github.com/org/repo.git"),
            ("git+https://github.com/org/repo/", "https://github.com/org/repo"),
            ("  https://github.com/org/repo.git\n", "https://github.com/org/repo.git"),
        ],
    )
    def test_git_sources(self, source: str, repository: str) -> None:
        """The scheme git, a path ending in .git, or a git+ prefix make a GitRepository."""
        storage = create_storage_from_source(source, pull_interval=30)
        assert type(storage) is GitRepository
        assert storage.pull_interval == 30
        step = storage.to_pull_step()
        assert isinstance(step, dict)
        assert step[f"{STEPS}.git_clone"]["repository"] == repository

    def test_local_repository_paths(self, tmp_path: Path) -> None:
        """A local path ending in .git and git+file:// URLs are cloned, not used in place."""
        bare = tmp_path / "flows.git"
        for source in (str(bare), f"git+file://{bare}"):
            assert type(create_storage_from_source(source)) is GitRepository


class TestRemoteSources:
    """Sources fsspec knows are pulled as RemoteStorage."""

    @pytest.mark.parametrize(
        "url",
        [
            "s3://bucket/flows",
            "gs://bucket/flows",
            "gcs://bucket/flows",
            "az://container/flows",
            "abfs://container/flows",
            "memory://flows",
            "https://example.com/flows/",
        ],
    )
    def test_fsspec_protocols(self, url: str) -> None:
        """Object stores, memory and plain HTTP folders become RemoteStorage of the URL."""
        storage = create_storage_from_source(url, pull_interval=None)
        assert type(storage) is RemoteStorage
        assert storage.pull_interval is None
        step = storage.to_pull_step()
        assert isinstance(step, dict)
        assert step[f"{STEPS}.pull_from_remote_storage"]["url"] == url


class TestLocalSources:
    """Paths, file:// and local:// URLs are used in place."""

    @pytest.mark.parametrize(
        ("source", "relative_path"),
        [
            ("file:///srv/flows", "/srv/flows"),
            ("local:///srv/flows", "/srv/flows"),
            ("local://flows", "flows"),
            ("/srv/flows", "/srv/flows"),
            ("relative/path", "relative/path"),
            ("./flows", "flows"),
            ("host:org/repo", "host:org/repo"),
        ],
    )
    def test_local_sources(
        self, source: str, relative_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The path (relative to the current directory) is the destination, unchanged."""
        monkeypatch.chdir(tmp_path)
        storage = create_storage_from_source(source, pull_interval=15)
        assert type(storage) is LocalStorage
        assert storage.destination == tmp_path.resolve() / relative_path
        assert storage.pull_interval == 15

    def test_default_pull_interval_is_prefects(self) -> None:
        """Without a pull interval, Prefect's 60 seconds apply."""
        assert create_storage_from_source("/srv/flows").pull_interval == 60


class TestInvalidSources:
    """Sources that cannot name anything."""

    @pytest.mark.parametrize("source", ["", "   ", "\n\t"])
    def test_empty_source(self, source: str) -> None:
        """An empty source is a configuration error, also a ValueError."""
        with pytest.raises(ConfigurationError, match="empty") as caught:
            create_storage_from_source(source)
        assert isinstance(caught.value, ValueError)

    @pytest.mark.parametrize("source", ["unknown-scheme://host/flows", "s4://bucket/flows"])
    def test_unknown_scheme_is_refused(self, source: str) -> None:
        """A ``scheme://`` neither git nor fsspec knows is a typo, not a folder: one line."""
        with pytest.raises(ConfigurationError, match=r"unknown scheme .* a path$") as caught:
            create_storage_from_source(source)
        assert "\n" not in str(caught.value)

    def test_credentials_in_a_refused_source_are_not_shown(self) -> None:
        """The refusal names the source without its userinfo."""
        with pytest.raises(ConfigurationError) as caught:
            create_storage_from_source("s4://user:hunter2@bucket/flows")
        assert "hunter2" not in str(caught.value)

    @pytest.mark.parametrize(
        "source", ["/srv/flows", "memory://flows", "git@github.com:org/repo.git"]
    )
    def test_every_result_is_a_runner_storage(self, source: str) -> None:
        """Whatever the source, the result satisfies the RunnerStorage protocol."""
        assert isinstance(create_storage_from_source(source), RunnerStorage)


class TestClassifySource:
    """The one classifier: what ``create_storage_from_source`` and the daemon both use."""

    @pytest.mark.parametrize(
        ("source", "kind", "target"),
        [
            ("https://example.com/org/repo.git", "git", "https://example.com/org/repo.git"),
            ("https://example.com/org/repo.git/", "git", "https://example.com/org/repo.git"),
            ("GIT+https://example.com/org/repo", "git", "https://example.com/org/repo"),
            ("Git+SSH://host/org/repo", "git", "SSH://host/org/repo"),
            ("git://host/org/repo", "git", "git://host/org/repo"),
            ("git@host:org/repo.git/", "git", "git@host:org/repo.git"),
            ("/srv/repos/flows.git", "git", "/srv/repos/flows.git"),
            ("s3://bucket/flows", "remote", "s3://bucket/flows"),
            ("memory://flows", "remote", "memory://flows"),
            ("file:///srv/flows", "local", "/srv/flows"),
            ("LOCAL://flows", "local", "flows"),
            ("host:org/repo", "local", "host:org/repo"),
            ("relative/path", "local", "relative/path"),
        ],
    )
    def test_kinds(self, source: str, kind: str, target: str) -> None:
        """Each source gets its kind and the text its storage is built from."""
        assert classify_source(source) == (kind, target)

    def test_factory_builds_what_the_classifier_says(self) -> None:
        """An upper-case ``GIT+`` and a trailing slash after ``.git`` build the repository."""
        storage = create_storage_from_source("GIT+https://example.com/org/flows.git/")
        assert isinstance(storage, GitRepository)
        assert storage.name == "flows"
