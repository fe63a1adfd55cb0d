"""Daemon settings: file, environment and secrets directory, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner_storage import (
    ConfigurationError,
    GitRepository,
    RemoteStorage,
    RunnerStorage,
    create_storage_from_source,
)
from runner_storage.secrets import Secret
from service.cli.shared import build_sources
from service.config import DaemonSettings, SettingsError, load_settings
from service.sources import GitSource, LocalSource, RemoteSource, SnapshotSource, SourceBase

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


class TestSources:
    """Where settings come from, and in which order they win."""

    def test_example_config_loads(self) -> None:
        """The example config shipped in examples/ is valid and means what it says."""
        settings = load_settings(EXAMPLES / "config.toml", environ={})
        flows, models, etl = settings.all_sources()
        assert isinstance(flows, GitSource)
        assert isinstance(models, RemoteSource)
        assert isinstance(etl, SnapshotSource)
        assert (etl.target(), etl.ref, etl.snapshot) == ("s3://acme-code/etl", "prod", None)
        assert flows.name == "flows"
        assert flows.directories == ["flows"]
        assert flows.credentials is not None
        token = flows.credentials.token.to_secret()
        assert token.env_var == "GITHUB_TOKEN"
        assert token.placeholder() == "{{ prefect.blocks.secret.github-token }}"
        assert flows.hooks.check == ["python", "-m", "compileall", "-q", "."]
        assert models.source == "s3://acme-artifacts/models"
        secret = models.fsspec_settings()["secret"]
        assert isinstance(secret, Secret)
        assert secret.env_var == "AWS_SECRET_ACCESS_KEY"

    def test_example_prefect1_config_loads(self) -> None:
        """examples/prefect1: Prefect 1 storages as daemon sources of their own kinds.

        ``steps`` would write Prefect 3 steps with the secrets as placeholders.
        """
        settings = load_settings(EXAMPLES / "prefect1" / "daemon.toml", environ={})
        kinds = [source.kind for source in settings.all_sources()]
        assert kinds == ["github", "gitlab", "s3", "webhook"]
        storages, problems = build_sources(list(enumerate(settings.all_sources())), settings)
        assert problems == []
        github = storages[0][1].to_pull_step()["prefect.deployments.steps.git_clone"]
        assert github["credentials"] == {
            "access_token": "{{ prefect.blocks.secret.github-access-token }}"
        }
        assert [type(storage).__name__ for _, storage in storages] == [
            "GitHub",
            "GitLab",
            "S3",
            "Webhook",
        ]

    def test_example_prefect_yaml_loads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """examples/prefect: its two deployments become a git and an S3 source.

        The git token stays the block file's reference to GITHUB_TOKEN under the Secret
        block's name; the S3 secrets stay environment references; the variable gives the
        endpoint; the top-level pip step becomes the git source's exec hook.
        """
        monkeypatch.chdir(EXAMPLES.parent)
        environ = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        settings = load_settings(EXAMPLES / "prefect" / "daemon.toml", environ=environ)
        flows, report = settings.all_sources()
        assert isinstance(flows, GitSource)
        assert (flows.source, flows.branch, flows.name) == (
            "https://github.com/acme/flows.git",
            "main",
            None,
        )
        assert flows.credentials is not None
        token = flows.credentials.token.to_secret()
        assert token.env_var == "GITHUB_TOKEN"
        assert token.placeholder() == "{{ prefect.blocks.secret.github-token }}"
        assert flows.hooks.exec is not None
        assert "/var/lib/runner-storage/flows-main" in flows.hooks.exec[2]
        assert "requirements.txt" in flows.hooks.exec[2]
        assert isinstance(report, RemoteSource)
        settings_given = report.fsspec_settings()
        assert settings_given["secret"].env_var == "AWS_SECRET_ACCESS_KEY"
        assert settings_given["client_kwargs"] == {
            "endpoint_url": "https://s3.eu-west-1.amazonaws.com"
        }
        assert settings.notes == ()

    def test_yaml_file(self, tmp_path: Path) -> None:
        """A YAML file is read like a TOML one."""
        path = write(
            tmp_path,
            "c.yaml",
            "root: /srv/code\nsources:\n  - source: https://h/r.git\n    branch: dev\n",
        )
        settings = load_settings(path, environ={})
        assert settings.root == Path("/srv/code")
        (source,) = settings.all_sources()
        assert isinstance(source, GitSource)
        assert source.branch == "dev"

    def test_environment_beats_file(self, tmp_path: Path) -> None:
        """A RUNNER_STORAGE_ variable overrides the same key in the file."""
        path = write(tmp_path, "c.toml", 'root = "/from/file"\nconcurrency = 2\n')
        settings = load_settings(path, environ={"RUNNER_STORAGE_ROOT": "/from/env"})
        assert settings.root == Path("/from/env")
        assert settings.concurrency == 2

    def test_config_path_from_environment(self, tmp_path: Path) -> None:
        """RUNNER_STORAGE_CONFIG names the file when --config is not given."""
        path = write(tmp_path, "c.toml", "concurrency = 7\n")
        settings = load_settings(environ={"RUNNER_STORAGE_CONFIG": str(path)})
        assert settings.concurrency == 7

    def test_single_source_from_environment(self) -> None:
        """A sidecar can describe one source with environment variables only."""
        settings = load_settings(
            environ={
                "RUNNER_STORAGE_SOURCE": "https://git.example/org/repo.git",
                "RUNNER_STORAGE_BRANCH": "release",
                "RUNNER_STORAGE_DIRECTORIES": "flows, lib",
                "RUNNER_STORAGE_PULL_INTERVAL": "15",
                "RUNNER_STORAGE_USERNAME": "bot",
                "RUNNER_STORAGE_TOKEN_FILE": "/run/secrets/token",
            }
        )
        (source,) = settings.all_sources()
        assert isinstance(source, GitSource)
        assert source.source == "https://git.example/org/repo.git"
        assert source.branch == "release"
        assert source.directories == ["flows", "lib"]
        assert source.pull_interval == 15
        assert source.credentials is not None
        assert source.credentials.username == "bot"
        assert source.credentials.token.file == Path("/run/secrets/token")

    def test_secrets_directory(self, tmp_path: Path) -> None:
        """Files in the secrets directory (systemd's CREDENTIALS_DIRECTORY) fill secret fields."""
        (tmp_path / "runner_storage_sync_token").write_text("s3cr3t-sync")
        settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
        assert settings.sync_token is not None
        assert settings.sync_token.get_secret_value() == "s3cr3t-sync"
        assert "s3cr3t-sync" not in repr(settings)

    def test_unprefixed_files_are_not_settings(self, tmp_path: Path) -> None:
        """A systemd credential named ``token``, referenced by path, is not a setting."""
        (tmp_path / "token").write_text("git-token")
        settings = load_settings(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
        assert settings.token is None

    def test_defaults(self) -> None:
        """With nothing configured the HTTP server binds loopback only."""
        settings = DaemonSettings.model_validate({})
        assert settings.http_host == "127.0.0.1"
        assert settings.all_sources() == []


class TestErrors:
    """Invalid settings: every problem at once, naming the field and where it came from."""

    def test_every_problem_is_reported_with_its_origin(self, tmp_path: Path) -> None:
        """Problems in the file and the environment are all listed, each with its origin."""
        path = write(
            tmp_path,
            "bad.toml",
            'http_port = "eighty"\n[[sources]]\nsource = "s3://b"\npull_interval = -1\nbogus = 1\n',
        )
        with pytest.raises(SettingsError) as caught:
            load_settings(path, environ={"RUNNER_STORAGE_CONCURRENCY": "zero"})
        problems = caught.value.problems
        assert any(p.startswith("http_port: Input should be a valid integer") for p in problems)
        assert any(p.startswith("http_port:") and p.endswith(f"(from {path})") for p in problems)
        assert any(
            p.startswith("concurrency:") and "RUNNER_STORAGE_CONCURRENCY" in p for p in problems
        )
        assert any(p.startswith("sources[0].pull_interval:") and str(path) in p for p in problems)
        assert any(p.startswith("sources[0].bogus: Extra inputs") for p in problems)
        assert len(problems) == 4

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("[[sources]]\n", "sources[0].source: Field required", id="no-source"),
            pytest.param(
                '[[sources]]\nsource = "x"\ncredentials = { token = { env = "A", file = "/b" } }\n',
                "give exactly one of env, file or value",
                id="two-secret-origins",
            ),
            pytest.param(
                '[[sources]]\nsource = "x"\nhooks = { webhook = "ftp://h" }\n',
                "webhook must be an http:// or https:// URL",
                id="webhook-scheme",
            ),
            pytest.param(
                '[[sources]]\nname = "a"\nsource = "x"\n[[sources]]\nname = "a"\nsource = "y"\n',
                "names must be unique",
                id="duplicate-names",
            ),
            pytest.param("backoff_initial = 10\nbackoff_max = 1\n", "backoff_max", id="backoff"),
            pytest.param('log_level = "loud"\n', "log_level", id="log-level"),
            pytest.param("[[sources]\n", "cannot be parsed", id="toml-syntax"),
        ],
    )
    def test_bad_file(self, tmp_path: Path, text: str, expected: str) -> None:
        """Each kind of bad file gives a readable line that says what is wrong."""
        with pytest.raises(SettingsError) as caught:
            load_settings(write(tmp_path, "c.toml", text), environ={})
        assert expected in str(caught.value)
        assert all("\n" not in problem for problem in caught.value.problems)

    def test_single_source_options_without_source(self) -> None:
        """RUNNER_STORAGE_BRANCH without RUNNER_STORAGE_SOURCE is an error, not ignored."""
        with pytest.raises(SettingsError) as caught:
            load_settings(environ={"RUNNER_STORAGE_BRANCH": "main"})
        assert caught.value.problems == [
            "branch: applies to the single source, but source (RUNNER_STORAGE_SOURCE) is not"
            " set: set it, or remove branch (from environment variable RUNNER_STORAGE_BRANCH)"
        ]

    def test_checks_across_fields_come_with_the_field_errors(self, tmp_path: Path) -> None:
        """Duplicate names, backoff order and single-source options are not held back.

        They are listed together with the field errors, so one edit fixes everything.
        """
        path = write(
            tmp_path,
            "c.toml",
            'http_port = "eighty"\nbackoff_initial = 10\nbackoff_max = 1\n'
            '[[sources]]\nname = "a"\nsource = "x"\ntimeout = -1\n'
            '[[sources]]\nname = "a"\nsource = "y"\n',
        )
        environ = {"RUNNER_STORAGE_TOKEN": "t", "RUNNER_STORAGE_TOKEN_FILE": "/t"}
        with pytest.raises(SettingsError) as caught:
            load_settings(path, environ=environ)
        problems = caught.value.problems
        assert [problem.split(":")[0] for problem in problems] == [
            "http_port",
            "sources[0].timeout",
            "token",
            "token_file",
            "token_file",
            "backoff_max",
            "sources[1].name",
        ]
        assert problems[-1] == (
            f"sources[1].name: 'a' is also the name of sources[0]; names must be unique"
            f" (from {path})"
        )
        assert problems[-2].startswith("backoff_max: must not be smaller than backoff_initial")
        # The sources that are valid on their own are handed on for further checks.
        assert [(index, source.source) for index, source in caught.value.sources] == [(1, "y")]

    def test_environment_source_name_clashes_with_a_file_source(self, tmp_path: Path) -> None:
        """The single environment source may not take a name a file source already has."""
        path = write(tmp_path, "c.toml", '[[sources]]\nname = "a"\nsource = "x"\n')
        with pytest.raises(SettingsError) as caught:
            load_settings(path, environ={"RUNNER_STORAGE_SOURCE": "y", "RUNNER_STORAGE_NAME": "a"})
        assert caught.value.problems == [
            "name: 'a' is also the name of sources[0]; names must be unique"
            " (from environment variable RUNNER_STORAGE_NAME)"
        ]

    def test_only_the_given_environment_is_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """load_settings(environ=...) and DaemonSettings() never read os.environ themselves."""
        monkeypatch.setenv("RUNNER_STORAGE_HTTP_PORT", "not-a-port")
        monkeypatch.setenv("RUNNER_STORAGE_SOURCE", "s3://bucket/flows")
        assert load_settings(environ={}).http_port == 8080
        assert DaemonSettings().all_sources() == []

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist says so."""
        with pytest.raises(SettingsError, match="does not exist"):
            load_settings(tmp_path / "nope.toml", environ={})

    def test_wrong_suffix(self, tmp_path: Path) -> None:
        """Only TOML and YAML files are accepted, and the message says so."""
        with pytest.raises(SettingsError, match=r"use a \.toml, \.yaml or \.yml file"):
            load_settings(write(tmp_path, "c.ini", "x=1"), environ={})

    def test_secret_values_never_in_errors(self, tmp_path: Path) -> None:
        """A literal token in a bad config does not appear in the error text."""
        path = write(
            tmp_path,
            "c.toml",
            '[[sources]]\nsource = "x"\ncredentials = { token = "tok-CANARY-123" }\ntimeout = -5\n',
        )
        with pytest.raises(SettingsError) as caught:
            load_settings(path, environ={})
        assert "tok-CANARY-123" not in str(caught.value)


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The problems ``load_settings`` reports for ``path`` and ``environ`` (it must fail)."""
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ=environ or {})
    return caught.value.problems


def sources_of(tmp_path: Path, text: str) -> list[SourceBase]:
    """The sources of a config file holding ``text``."""
    return load_settings(write(tmp_path, "c.toml", text), environ={}).all_sources()


def build(source: SourceBase, root: Path) -> RunnerStorage:
    """The storage a source builds under ``root``, with the default retention."""
    return source.build_storage(root=root, keep_versions=3, grace_period=600)


class TestSourceKinds:
    """One model per kind, chosen by ``kind`` or by the library's classifier."""

    def test_kinds_follow_the_library(self, tmp_path: Path) -> None:
        """Each source gets the model of its kind and builds the library's own storage."""
        urls = [
            "GIT+https://host.example/org/repo",
            "https://host.example/org/repo.git/",
            "s3://bucket/flows",
            "/srv/flows",
            "file:///srv/other",
        ]
        text = "".join(f'[[sources]]\nsource = "{url}"\n' for url in urls)
        models = sources_of(tmp_path, text)
        assert [type(model) for model in models] == [
            GitSource,
            GitSource,
            RemoteSource,
            LocalSource,
            LocalSource,
        ]
        for url, model in zip(urls, models, strict=True):
            expected = create_storage_from_source(url)
            expected.set_base_path(tmp_path)
            assert build(model, tmp_path) == expected, url
        second = build(models[1], tmp_path)
        assert isinstance(second, GitRepository)
        assert second.name == "repo"

    def test_kind_given_explicitly(self, tmp_path: Path) -> None:
        """``kind`` overrides the classifier; ``auto`` asks it."""
        text = (
            '[[sources]]\nsource = "https://host.example/org/repo"\nkind = "git"\n'
            '[[sources]]\nsource = "https://host.example/files/"\nkind = "auto"\n'
        )
        git, remote = sources_of(tmp_path, text)
        assert (type(git), git.kind) == (GitSource, "git")
        assert (type(remote), remote.kind) == (RemoteSource, "remote")

    def test_fractional_pull_interval_reaches_the_storage(self, tmp_path: Path) -> None:
        """``pull_interval = 0.5`` means 0.5 s to the storage too, not a rounded second."""
        text = (
            '[[sources]]\nsource = "https://h.example/r.git"\npull_interval = 0.5\n'
            '[[sources]]\nsource = "/srv/flows"\npull_interval = 1.25\n'
        )
        git, local = sources_of(tmp_path, text)
        assert build(git, tmp_path).pull_interval == 0.5
        assert build(local, tmp_path).pull_interval == 1.25

    def test_options_of_another_kind(self, tmp_path: Path) -> None:
        """An option of another kind names that kind and this one; the URL's password is hidden."""
        path = write(
            tmp_path,
            "c.toml",
            '[[sources]]\nsource = "s3://user:pw-CANARY-1@b/p"\nbranch = "main"\ndepth = 2\n'
            '[[sources]]\nsource = "https://h.example/r.git"\nsettings = { key = "k" }\n',
        )
        problems = problems_of(path)
        assert [problem.split(":")[0] for problem in problems] == [
            "sources[0].branch",
            "sources[0].depth",
            "sources[1].settings",
        ]
        assert problems[2] == (
            "sources[1].settings: only applies to remote and snapshot sources, and"
            f" 'https://h.example/r.git' is git (from {path})"
        )
        assert all("pw-CANARY-1" not in problem for problem in problems)
        assert "only applies to git sources, and 's3://" in problems[0]

    def test_unclassifiable_source(self, tmp_path: Path) -> None:
        """An unknown scheme is the classifier's line, as a problem of ``source``."""
        path = write(tmp_path, "c.toml", '[[sources]]\nsource = "s4://bucket/x"\ntimeout = 0\n')
        assert problems_of(path) == [
            "sources[0].source: unknown scheme 's4' in source 's4://bucket/x': use a git URL"
            " (https, ssh, git, file), an object-store URL (s3, gs, az, http...), a snapshot"
            f" root (snapshot+s3://...), or a path (from {path})"
        ]

    def test_environment_source_goes_through_the_union(self) -> None:
        """RUNNER_STORAGE_SOURCE and its options are checked by the same models."""
        (remote,) = load_settings(
            environ={"RUNNER_STORAGE_SOURCE": "s3://bucket/flows"}
        ).all_sources()
        assert isinstance(remote, RemoteSource)
        environ = {
            "RUNNER_STORAGE_SOURCE": "s3://bucket/flows",
            "RUNNER_STORAGE_BRANCH": "main",
            "RUNNER_STORAGE_TOKEN": "tok-CANARY-2",
        }
        assert problems_of(None, environ) == [
            "branch: only applies to git sources, and 's3://bucket/flows' is remote"
            " (from environment variable RUNNER_STORAGE_BRANCH)",
            "token: only applies to git sources, and 's3://bucket/flows' is remote"
            " (from environment variable RUNNER_STORAGE_TOKEN)",
        ]
        (problem,) = problems_of(None, {"RUNNER_STORAGE_SOURCE": "s4://bucket/x"})
        assert problem.startswith("source: unknown scheme 's4'")
        assert problem.endswith("(from environment variable RUNNER_STORAGE_SOURCE)")


class TestSettingsSecrets:
    """``{ env = ... }`` / ``{ file = ... }`` / ``{ value = ... }`` tables in fsspec settings."""

    def test_a_secret_table_inside_a_list_is_a_secret(self, tmp_path: Path) -> None:
        """Inside a list too, a table becomes a Secret: placeholdered in steps, redacted."""
        (source,) = sources_of(
            tmp_path,
            '[[sources]]\nsource = "s3://bucket/flows"\nsettings = { key = "k",'
            ' tokens = [{ env = "LIST_TOKEN" }, { value = "lit-CANARY-3" }],'
            ' nested = { deeper = [[{ file = "/run/token" }]] } }\n',
        )
        assert isinstance(source, RemoteSource)
        settings = source.fsspec_settings()
        first, second = settings["tokens"]
        assert isinstance(first, Secret)
        assert first.env_var == "LIST_TOKEN"
        assert isinstance(second, Secret)
        assert isinstance(settings["nested"]["deeper"][0][0], Secret)
        storage = build(source, tmp_path)
        assert isinstance(storage, RemoteStorage)
        assert "lit-CANARY-3" not in storage.redact("failed with lit-CANARY-3 in it")
        with pytest.raises(ConfigurationError, match="plain value"):
            storage.to_pull_step()  # the literal cannot become a placeholder

    def test_placeholders_inside_a_list(self, tmp_path: Path) -> None:
        """A pull step carries the placeholder of a listed secret, never a table."""
        (source,) = sources_of(
            tmp_path,
            '[[sources]]\nsource = "s3://bucket/flows"\n'
            'settings = { tokens = [{ env = "LIST_TOKEN" }, { file = "/t", name = "blk" }] }\n',
        )
        step = build(source, tmp_path).to_pull_step()
        assert isinstance(step, dict)
        assert step["prefect.deployments.steps.pull_from_remote_storage"]["tokens"] == [
            "{{ $LIST_TOKEN }}",
            "{{ prefect.blocks.secret.blk }}",
        ]

    def test_a_bad_secret_table_is_a_settings_problem(self, tmp_path: Path) -> None:
        """A table with two origins is reported where it is, with the other problems."""
        path = write(
            tmp_path,
            "c.toml",
            '[[sources]]\nsource = "s3://bucket/flows"\ntimeout = 0\n'
            'settings = { tokens = [{ env = "A", file = "/b" }] }\n',
        )
        assert problems_of(path) == [
            f"sources[0].timeout: Input should be greater than 0 (from {path})",
            "sources[0].settings: at ['tokens'][0]: give exactly one of env, file or value"
            f" (from {path})",
        ]
