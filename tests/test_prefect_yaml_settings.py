"""A prefect.yaml as daemon settings: what it is refused for, shared sources, hooks, round trip.

These need no server: they check what ``load_settings`` (and ``runner-storage run``'s
settings check) makes of a prefect.yaml before anything is pulled. The pulls themselves,
against the suite's git and S3 servers, are in ``test_prefect_yaml.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import main
from service.config import SettingsError, load_settings
from service.sources import GitSource, RemoteSource, SnapshotSource

CANARY = "canary-7f3a9c-secret"
REPO = "https://git.example.com/acme/flows.git"
SNAPSHOT_ID = "ab" * 32


def prefect_yaml(tmp_path: Path, document: dict[str, Any]) -> Path:
    """``document`` written as ``tmp_path/prefect.yaml``."""
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def git_clone(**inputs: Any) -> dict[str, Any]:
    """A Prefect ``git_clone`` step of ``REPO`` (``inputs`` added or overriding)."""
    return {"prefect.deployments.steps.git_clone": {"repository": REPO, **inputs}}


def load(
    tmp_path: Path,
    document: dict[str, Any],
    *,
    environ: dict[str, str] | None = None,
    **settings: Any,
) -> Any:
    """The settings of a config with ``prefect_yaml`` set to ``document`` and ``settings``."""
    path = prefect_yaml(tmp_path, document)
    lines = [f'root = "{tmp_path / "root"}"', f'prefect_yaml = "{path}"']
    for key, value in settings.items():
        lines.append(f"{key} = {value}")
    config = tmp_path / "daemon.toml"
    config.write_text("\n".join(lines) + "\n")
    return load_settings(config, environ=environ or {})


def problems(tmp_path: Path, document: dict[str, Any], **kwargs: Any) -> list[str]:
    """The problem lines ``load`` raises with."""
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, document, **kwargs)
    return caught.value.problems


class TestRefused:
    """What a prefect.yaml is refused for: one line each, naming the deployment and step."""

    def test_an_unknown_step(self, tmp_path: Path) -> None:
        """A step runner-storage cannot keep current stops the start with one line."""
        document = {
            "deployments": [
                {"name": "etl", "pull": [git_clone(), {"prefect_aws.steps.pull_from_s3": {}}]}
            ]
        }
        (line,) = problems(tmp_path, document)
        assert "deployment 'etl'" in line
        assert "step 2 (pull_from_s3)" in line
        assert "prefect_aws.steps.pull_from_s3" in line

    @pytest.mark.parametrize(
        ("value", "named"),
        [
            ("{{ $NOT_SET_ANYWHERE }}", "NOT_SET_ANYWHERE"),
            ("{{ prefect.variables.missing }}", "missing"),
            ("{{ prefect.blocks.secret.absent }}", "secret/absent"),
            ("{{ clone.directory }}", "{{ clone.directory }}"),
        ],
    )
    def test_an_unresolvable_placeholder(self, tmp_path: Path, value: str, named: str) -> None:
        """Each kind of placeholder without a value: one line naming it and the deployment."""
        document = {"deployments": [{"name": "etl", "pull": [git_clone(branch=value)]}]}
        (line,) = problems(tmp_path, document)
        assert "deployment 'etl'" in line
        assert "step 1 (git_clone)" in line
        assert named in line

    def test_an_unresolvable_secret_names_it_and_not_a_value(self, tmp_path: Path) -> None:
        """An unset token variable: the placeholder is named; the other values never shown."""
        document = {
            "deployments": [
                {"name": "etl", "pull": [git_clone(access_token="{{ $TOKEN_NOT_SET }}")]}
            ]
        }
        (line,) = problems(tmp_path, document, environ={"OTHER": CANARY})
        assert "{{ $TOKEN_NOT_SET }}" in line
        assert CANARY not in line

    def test_an_input_the_step_does_not_take(self, tmp_path: Path) -> None:
        """A misspelt input is refused as calling the step would refuse it."""
        document = {"deployments": [{"name": "etl", "pull": [git_clone(brnach="main")]}]}
        (line,) = problems(tmp_path, document)
        assert "brnach" in line
        assert "step 1 (git_clone)" in line

    def test_a_deployment_not_in_the_file(self, tmp_path: Path) -> None:
        """``deployments`` naming one the file does not have: one line listing those it has."""
        document = {"deployments": [{"name": "etl", "pull": [git_clone()]}]}
        (line,) = problems(tmp_path, document, deployments='["nope"]')
        assert "'nope'" in line
        assert "'etl'" in line

    @pytest.mark.parametrize(
        "text",
        ["deployments: [\n", "pull:\n  - a: 1\n    b: 2\n", "deployments:\n  - pull: []\n"],
    )
    def test_a_malformed_file(self, tmp_path: Path, text: str) -> None:
        """Unparseable YAML, a step that is not one function, a deployment without a name."""
        path = tmp_path / "prefect.yaml"
        path.write_text(text)
        config = tmp_path / "daemon.toml"
        config.write_text(f'prefect_yaml = "{path}"\n')
        with pytest.raises(SettingsError) as caught:
            load_settings(config, environ={})
        (line,) = caught.value.problems
        assert str(path) in line

    def test_deployments_without_a_prefect_yaml(self, tmp_path: Path) -> None:
        """``deployments`` alone says what it needs."""
        config = tmp_path / "daemon.toml"
        config.write_text('deployments = ["etl"]\n')
        with pytest.raises(SettingsError) as caught:
            load_settings(config, environ={})
        assert any("prefect_yaml is not set" in line for line in caught.value.problems)

    def test_the_cli_exits_2_with_the_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``run --once --prefect-yaml`` with an unknown step: exit 2, the line, no pull."""
        path = prefect_yaml(tmp_path, {"pull": [{"acme.steps.deploy_magic": {}}]})
        root = tmp_path / "root"
        config = tmp_path / "daemon.toml"
        config.write_text(f'root = "{root}"\nhttp_port = 0\n')
        code = main(["run", "--once", "--config", str(config), "--prefect-yaml", str(path)])
        assert code == 2
        assert "acme.steps.deploy_magic" in capsys.readouterr().err
        assert not root.exists()


class TestSharedSources:
    """Several deployments, one source per destination."""

    def test_the_same_step_in_two_deployments_is_one_source(self, tmp_path: Path) -> None:
        """The top-level section used by two deployments gives one git source."""
        document = {
            "pull": [git_clone(branch="main")],
            "deployments": [{"name": "etl"}, {"name": "report"}],
        }
        (source,) = load(tmp_path, document).all_sources()
        assert isinstance(source, GitSource)
        assert (source.source, source.branch) == (REPO, "main")

    def test_two_branches_are_two_sources(self, tmp_path: Path) -> None:
        """Two branches of one repository: two sources, each under Prefect's name."""
        document = {
            "deployments": [
                {"name": "prod", "pull": [git_clone(branch="main")]},
                {"name": "dev", "pull": [git_clone(branch="dev")]},
            ]
        }
        sources = load(tmp_path, document).all_sources()
        assert [(s.branch, s.name) for s in sources] == [("main", None), ("dev", None)]

    def test_one_destination_with_different_settings_is_refused(self, tmp_path: Path) -> None:
        """Two steps that would publish different code as one name: one line naming both."""
        document = {
            "deployments": [
                {"name": "prod", "pull": [git_clone(branch="main", directories=["a"])]},
                {"name": "dev", "pull": [git_clone(branch="main", directories=["b"])]},
            ]
        }
        (line,) = problems(tmp_path, document)
        assert "'prod'" in line
        assert "'dev'" in line
        assert "flows-main" in line

    def test_a_configured_source_of_the_same_name_is_refused(self, tmp_path: Path) -> None:
        """A ``[[sources]]`` name the prefect.yaml's step also uses: one line."""
        document = {"pull": [git_clone(branch="main", clone_directory_name="flows")]}
        path = prefect_yaml(tmp_path, document)
        config = tmp_path / "daemon.toml"
        config.write_text(
            f'prefect_yaml = "{path}"\n[[sources]]\nname = "flows"\nsource = "{REPO}"\n'
        )
        with pytest.raises(SettingsError) as caught:
            load_settings(config, environ={})
        assert any("'flows'" in line for line in caught.value.problems)


class TestFlowRunSteps:
    """run_shell_script and pip_install_requirements: hooks when allowed, else notes."""

    def test_skipped_with_one_note_each(self, tmp_path: Path) -> None:
        """Without ``step_hooks`` each is one note naming the deployment and step."""
        document = {
            "deployments": [
                {
                    "name": "etl",
                    "pull": [
                        git_clone(branch="main"),
                        {"prefect.deployments.steps.pip_install_requirements": {}},
                        {"prefect.deployments.steps.run_shell_script": {"script": "echo hi"}},
                    ],
                }
            ]
        }
        settings = load(tmp_path, document)
        (source,) = settings.all_sources()
        assert source.hooks.exec is None
        first, second = settings.notes
        assert "deployment 'etl', step 2 (pip_install_requirements)" in first
        assert "step 3 (run_shell_script)" in second
        assert all("step_hooks" in note for note in settings.notes)

    def test_pip_install_becomes_the_exec_hook(self, tmp_path: Path) -> None:
        """With ``step_hooks``, pip runs in the clone's folder after each publish."""
        document = {
            "pull": [
                git_clone(branch="main", id="clone"),
                {
                    "prefect.deployments.steps.pip_install_requirements": {
                        "directory": "{{ clone.directory }}",
                        "requirements_file": "reqs/prod.txt",
                    }
                },
            ]
        }
        settings = load(tmp_path, document, step_hooks="true")
        (source,) = settings.all_sources()
        assert source.hooks.exec is not None
        shell, flag, script, _ = source.hooks.exec
        assert (shell, flag) == ("/bin/sh", "-c")
        assert f"cd {tmp_path / 'root' / 'flows-main'}" in script
        assert "-m pip install -q -r reqs/prod.txt" in script
        assert source.hooks.timeout >= 600
        assert settings.notes == ()

    def test_a_secret_block_in_a_shell_step_is_refused(self, tmp_path: Path) -> None:
        """A hook's command line is visible to every user: a secret in it is refused."""
        blocks = tmp_path / "blocks.toml"
        blocks.write_text(f'[secret.token]\nvalue = "{CANARY}"\n')
        document = {
            "pull": [
                git_clone(branch="main"),
                {
                    "prefect.deployments.steps.run_shell_script": {
                        "script": "curl -H 'token: {{ prefect.blocks.secret.token }}' x"
                    }
                },
            ]
        }
        (line,) = problems(tmp_path, document, step_hooks="true", blocks_file=f'"{blocks}"')
        assert "{{ prefect.blocks.secret.token }}" in line
        assert CANARY not in line

    def test_no_source_before_it(self, tmp_path: Path) -> None:
        """A shell step before any source has nothing to run after: a note, no hook."""
        document = {
            "pull": [
                {"prefect.deployments.steps.run_shell_script": {"script": "echo hi"}},
                git_clone(branch="main"),
            ]
        }
        settings = load(tmp_path, document, step_hooks="true")
        assert settings.all_sources()[0].hooks.exec is None
        (note,) = settings.notes
        assert "no source before it" in note


class TestRoundTrip:
    """``steps`` of a daemon config, as a prefect.yaml, read back: the same sources."""

    def test_steps_then_prefect_yaml_gives_the_same_sources(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Git (env token and a named secret), S3 with secret settings, a pinned snapshot.

        The printed section, put into a deployment, gives sources of the same kinds, URLs,
        selections, names and secret references, publishing to the same folders.
        """
        root = tmp_path / "root"
        config = tmp_path / "daemon.toml"
        config.write_text(
            f'root = "{root}"\n'
            "[[sources]]\n"
            f'source = "{REPO}"\n'
            'branch = "main"\n'
            'directories = ["flows"]\n'
            'credentials = { token = { env = "GH_TOKEN" } }\n'
            "[[sources]]\n"
            'name = "named"\n'
            f'source = "{REPO}"\n'
            'branch = "dev"\n'
            'credentials = { username = "bot", token = { env = "GH_DEV", name = "gh-dev" } }\n'
            "[[sources]]\n"
            'source = "s3://acme-code/flows"\n'
            'settings = { key = { env = "AWS_KEY" }, secret = { env = "AWS_SECRET" },'
            ' client_kwargs = { endpoint_url = "http://127.0.0.1:9" } }\n'
            "[[sources]]\n"
            'source = "snapshot+s3://acme-code/etl"\n'
            f'snapshot = "{SNAPSHOT_ID}"\n'
            'settings = { secret = { env = "AWS_SECRET" } }\n'
        )
        assert main(["steps", "--config", str(config)]) == 0
        section = yaml.safe_load(capsys.readouterr().out)["pull"]
        path = prefect_yaml(tmp_path, {"deployments": [{"name": "all", "pull": section}]})
        blocks = tmp_path / "blocks.toml"
        blocks.write_text('[secret.gh-dev]\nvalue = { env = "GH_DEV" }\n')
        back = tmp_path / "back.toml"
        back.write_text(f'root = "{root}"\nprefect_yaml = "{path}"\nblocks_file = "{blocks}"\n')
        environ = {"GH_TOKEN": CANARY, "GH_DEV": CANARY, "AWS_KEY": "k", "AWS_SECRET": CANARY}
        original = load_settings(config, environ=environ).all_sources()
        again = load_settings(back, environ=environ).all_sources()
        assert [type(s) for s in again] == [GitSource, GitSource, RemoteSource, SnapshotSource]
        for before, after in zip(original, again, strict=True):
            assert after.target() == before.target()
            assert after.name == before.name
        git_main, git_dev = again[0], again[1]
        assert isinstance(git_main, GitSource)
        assert isinstance(git_dev, GitSource)
        assert (git_main.branch, git_main.directories) == ("main", ["flows"])
        assert git_main.credentials is not None
        assert git_main.credentials.token.to_secret().env_var == "GH_TOKEN"
        assert git_dev.credentials is not None
        assert git_dev.credentials.username == "bot"
        dev_token = git_dev.credentials.token.to_secret()
        assert (dev_token.env_var, dev_token.name) == ("GH_DEV", "gh-dev")
        remote = again[2]
        assert isinstance(remote, RemoteSource)
        settings = remote.fsspec_settings()
        assert settings["secret"].env_var == "AWS_SECRET"
        assert settings["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9"}
        snapshot = again[3]
        assert isinstance(snapshot, SnapshotSource)
        assert snapshot.snapshot == SNAPSHOT_ID
        destinations = [
            s.build_storage(root=root, keep_versions=3, grace_period=0).destination
            for s in (*original, *again)
        ]
        assert destinations[:4] == destinations[4:]
        assert CANARY not in path.read_text()
