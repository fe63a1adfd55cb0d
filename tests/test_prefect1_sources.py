"""The daemon's Prefect 1 source kinds: settings by Prefect 1's names, built into our storages.

Each kind (``github``, ``gitlab``, ``bitbucket``, ``codecommit``, ``git1``, ``s3``,
``gcs``, ``azure``, ``module``...) takes its class's constructor arguments as options;
``runner-storage steps`` writes their Prefect 3 steps and ``run --once`` pulls them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_process import cli
from servers.s3 import S3Server
from servers.webhook import WebhookServer

from service.cli.shared import build_sources
from service.config import DaemonSettings, SettingsError, load_settings

pytestmark = pytest.mark.timeout(120)


def settings_from(
    tmp_path: Path, body: str, environ: dict[str, str] | None = None
) -> DaemonSettings:
    """The daemon settings of a config file holding ``body``, rooted in ``tmp_path``."""
    config = tmp_path / "config.toml"
    config.write_text(f'root = "{tmp_path / "root"}"\n{body}')
    return load_settings(config, environ=environ or {})


def built(tmp_path: Path, body: str) -> list[Any]:
    """The storages the daemon builds for the sources of ``body``."""
    settings = settings_from(tmp_path, body)
    storages, problems = build_sources(list(enumerate(settings.all_sources())), settings)
    assert problems == []
    return [storage for _, storage in storages]


class TestKinds:
    """Each kind builds its Prefect 1 class with the options as its arguments."""

    def test_github_kind(self, tmp_path: Path) -> None:
        """``kind = "github"`` is a GitHub storage at ``root``, named by Prefect's rule."""
        (storage,) = built(
            tmp_path,
            '[[sources]]\nkind = "github"\nrepo = "org/flows"\npath = "flows/etl.py"\n'
            'ref = "main"\naccess_token_secret = "ACME_TOKEN"\n',
        )
        assert type(storage).__name__ == "GitHub"
        assert storage.flow_path == tmp_path / "root" / "flows-main" / "flows" / "etl.py"
        (step,) = storage.to_pull_step().values()
        assert step["credentials"] == {"access_token": "{{ prefect.blocks.secret.acme-token }}"}

    def test_each_kind_is_its_class(self, tmp_path: Path) -> None:
        """Every Prefect 1 kind builds the class of the same name."""
        body = (
            '[[sources]]\nkind = "gitlab"\nrepo = "group/flows"\npath = "a/etl.py"\n'
            '[[sources]]\nkind = "bitbucket"\nproject = "ETL"\nrepo = "bbflows"\n'
            'host = "https://bitbucket.example.com"\npath = "etl.py"\n'
            '[[sources]]\nkind = "git1"\nflow_path = "etl.py"\nrepo = "org/other"\n'
            'branch_name = "dev"\n'
            '[[sources]]\nkind = "s3"\nbucket = "flows"\nkey = "etl/flow.py"\n'
            '[[sources]]\nkind = "gcs"\nbucket = "flows"\nkey = "etl/gflow.py"\n'
            '[[sources]]\nkind = "azure"\ncontainer = "flows"\nblob_name = "etl/aflow.py"\n'
            '[[sources]]\nkind = "module"\nmodule = "json"\n'
        )
        names = [type(storage).__name__ for storage in built(tmp_path, body)]
        assert names == ["GitLab", "Bitbucket", "Git", "S3", "GCS", "Azure", "Module"]

    def test_a_gitlab_project_id_may_be_a_number(self, tmp_path: Path) -> None:
        """``repo = 4242`` (a TOML integer) is GitLab's numeric project id."""
        (storage,) = built(
            tmp_path,
            '[[sources]]\nkind = "gitlab"\nrepo = 4242\nhost = "gitlab.example.com"\n'
            'path = "etl.py"\n',
        )
        assert storage.name == "project-4242-master"

    def test_steps_writes_prefect3_steps(self, tmp_path: Path) -> None:
        """``runner-storage steps`` of Prefect 1 sources: Prefect 3's steps, no secret values."""
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{tmp_path}"\n'
            '[[sources]]\nkind = "azure"\ncontainer = "flows"\nblob_name = "etl/flow.py"\n'
            '[[sources]]\nkind = "module"\nmodule = "json"\n'
        )
        result = cli("steps", "--config", str(config), "--format", "json")
        assert result.returncode == 0, result.stderr
        steps = json.loads(result.stdout)["pull"]
        remote = steps[0]["runner_storage.deployments.steps.pull_from_remote_storage"]
        assert remote["url"] == "az://flows/etl/flow.py"
        assert remote["connection_string"] == (
            "{{ prefect.blocks.secret.azure-storage-connection-string }}"
        )
        workdir = steps[1]["prefect.deployments.steps.set_working_directory"]
        assert workdir["directory"] == str(Path(json.__file__).parent)


class TestProblems:
    """Bad Prefect 1 sources are one line each, before anything starts."""

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                'kind = "github"\nrepo = "org/flows"\npath = "p.py"\nsource = "x"',
                "source does not apply to github sources",
            ),
            ('kind = "github"\nrepo = "org/flows"', "sources[0].path"),
            (
                'kind = "gitlab"\nrepo = "g/p"\npath = "p.py"\nbranch = "x"',
                "sources[0].branch: only applies to git sources",
            ),
            ('kind = "s3"\nbucket = "b"\nkey = "k.py"\nref = "x"', "sources[0].ref"),
        ],
        ids=["source-given", "path-missing", "git-option", "other-kinds-option"],
    )
    def test_invalid_settings_are_one_line(self, tmp_path: Path, body: str, expected: str) -> None:
        """An option that does not apply, or a missing one, names the source and the option."""
        with pytest.raises(SettingsError) as caught:
            settings_from(tmp_path, f"[[sources]]\n{body}\n")
        assert any(expected in line for line in caught.value.problems), caught.value.problems

    def test_storage_refusals_are_one_line(self, tmp_path: Path) -> None:
        """What the class refuses (no host or workspace, a missing module) is one line each."""
        settings = settings_from(
            tmp_path,
            '[[sources]]\nkind = "bitbucket"\nproject = "P"\nrepo = "r"\npath = "p.py"\n'
            '[[sources]]\nkind = "module"\nmodule = "no_such_module_anywhere"\n'
            '[[sources]]\nkind = "module"\nmodule = "json"\nname = "x"\n',
        )
        _, problems = build_sources(list(enumerate(settings.all_sources())), settings)
        assert len(problems) == 3, problems
        assert problems[0].startswith("sources[0] (bitbucket:P/r/p.py): give host")
        assert "no_such_module_anywhere" in problems[1]
        assert "is not installed here" in problems[1]
        assert "name and hooks do not apply to module sources" in problems[2]


class TestRunOnce:
    """``run --once`` pulls a Prefect 1 source as a real process."""

    def test_s3_kind_publishes_the_flow_script(self, s3_server: S3Server, tmp_path: Path) -> None:
        """An ``s3`` source with boto3 client options: the object is the published flow file.

        The secret key is a ``{ env = ... }`` table; it reaches neither the logs nor any
        file under the root.
        """
        bucket = s3_server.new_bucket("p1")
        s3_server.put(bucket, "etl/flow.py", "print('etl')\n")
        s3_server.put(bucket, "etl/other.py", "print('other')\n")
        root = tmp_path / "root"
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n'
            f'[[sources]]\nkind = "s3"\nbucket = "{bucket}"\nkey = "etl/flow.py"\n'
            f'client_options = {{ endpoint_url = "{s3_server.endpoint_url}",'
            f' aws_access_key_id = "{s3_server.key}",'
            ' aws_secret_access_key = { env = "P1_SECRET" } }\n'
        )
        result = cli("run", "--once", "--config", str(config), env={"P1_SECRET": s3_server.secret})
        assert result.returncode == 0, result.stdout + result.stderr
        published = root / bucket / "etl" / "flow.py"
        assert (published / "flow.py").read_text() == "print('etl')\n"
        assert sorted(p.name for p in published.iterdir()) == ["flow.py"]
        assert s3_server.secret not in result.stdout + result.stderr
        leaked = [
            path
            for path in root.rglob("*")
            if path.is_file() and s3_server.secret.encode() in path.read_bytes()
        ]
        assert leaked == []


def test_module_kind_is_found_without_importing(tmp_path: Path) -> None:
    """A ``module`` source is found on ``sys.path`` without importing it.

    A package whose import would fail is still found, and its folder is the destination.
    """
    package = tmp_path / "site" / "explodes_on_import"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        (storage,) = built(
            tmp_path, '[[sources]]\nkind = "module"\nmodule = "explodes_on_import"\n'
        )
    finally:
        sys.path.remove(str(tmp_path / "site"))
    assert storage.destination == package
    assert "explodes_on_import" not in sys.modules


class TestPrefectYaml:
    """Our Prefect 1 steps in a prefect.yaml become the same daemon sources."""

    def test_pull_codecommit_round_trip(self, tmp_path: Path) -> None:
        """``steps`` of a ``codecommit`` source, read back as a prefect.yaml, is that source.

        The destination and the options are the same; no secret is in either.
        """
        body = (
            '[[sources]]\nkind = "codecommit"\nrepo = "flows"\npath = "etl/flow.py"\n'
            'commit = "main"\nclient_options = { region_name = "eu-west-1" }\n'
        )
        first = built(tmp_path, body)[0]
        pull = [first.to_pull_step()]
        document = {"deployments": [{"name": "etl", "pull": pull}]}
        path = tmp_path / "prefect.yaml"
        path.write_text(json.dumps(document))  # JSON is YAML
        config = tmp_path / "from-yaml.toml"
        config.write_text(f'root = "{tmp_path / "root"}"\nprefect_yaml = "{path}"\n')
        settings = load_settings(config, environ={})
        (source,) = settings.all_sources()
        assert source.kind == "codecommit"
        storages, problems = build_sources([(0, source)], settings)
        assert problems == []
        (_, again) = storages[0]
        assert type(again).__name__ == "CodeCommit"
        assert again.destination == first.destination
        assert again.to_pull_step() == first.to_pull_step()


class TestDockerKind:
    """``kind = "docker"``: a path where it is, or a folder of an image."""

    def test_path_only_is_used_where_it_is(self, tmp_path: Path) -> None:
        """Without an image the flow's folder is the destination; the step changes into it."""
        flow = tmp_path / "code" / "etl.py"
        flow.parent.mkdir()
        flow.write_text("print('etl')\n")
        (storage,) = built(tmp_path, f'[[sources]]\nkind = "docker"\npath = "{flow}"\n')
        assert storage.destination == flow.parent
        assert storage.to_pull_step() == {
            "prefect.deployments.steps.set_working_directory": {"directory": str(flow.parent)}
        }

    def test_image_password_is_a_secret_reference(self, tmp_path: Path) -> None:
        """With an image, the registry password is a ``{ env = ... }`` table.

        The pull step carries its placeholder, never a value.
        """
        (storage,) = built(
            tmp_path,
            '[[sources]]\nkind = "docker"\npath = "/opt/prefect/flows/etl.py"\n'
            'image = "127.0.0.1:5000/team/flows:1"\nusername = "puller"\n'
            'password = { env = "REGISTRY_PASSWORD" }\n',
        )
        (inputs,) = storage.to_pull_step().values()
        assert inputs["image"] == "127.0.0.1:5000/team/flows:1"
        assert inputs["password"] == "{{ $REGISTRY_PASSWORD }}"

    def test_pull_docker_image_round_trip(self, tmp_path: Path) -> None:
        """A ``docker`` source's step, read back from a prefect.yaml, is the same source.

        The registry password stays an environment reference on the way.
        """
        body = (
            '[[sources]]\nkind = "docker"\npath = "/opt/prefect/flows/etl.py"\n'
            'image = "127.0.0.1:5000/team/flows:1"\nusername = "puller"\n'
            'password = { env = "REGISTRY_PASSWORD" }\n'
        )
        first = built(tmp_path, body)[0]
        path = tmp_path / "prefect.yaml"
        path.write_text(
            json.dumps({"deployments": [{"name": "etl", "pull": [first.to_pull_step()]}]})
        )
        config = tmp_path / "from-yaml.toml"
        config.write_text(f'root = "{tmp_path / "root"}"\nprefect_yaml = "{path}"\n')
        settings = load_settings(config, environ={"REGISTRY_PASSWORD": "pw-from-env"})
        (source,) = settings.all_sources()
        assert source.kind == "docker"
        assert "pw-from-env" not in source.model_dump_json()
        storages, problems = build_sources([(0, source)], settings)
        assert problems == []
        (_, again) = storages[0]
        assert again.destination == first.destination
        assert again.to_pull_step() == first.to_pull_step()


class TestWebhookKind:
    """``kind = "webhook"`` pulls the get request's answer as the flow file."""

    def test_run_once_with_a_templated_header(
        self, webhook_server: WebhookServer, tmp_path: Path
    ) -> None:
        """``$API_KEY`` in a header is filled from a secrets-directory file at the pull.

        The server demands the header; the value is in no log line and no file under
        the root, and ``/sources`` would show the url as written.
        """
        key = "whk-" + "9f3a" * 6
        webhook_server.required_headers = {"X-Api-Key": key}
        webhook_server.put("/flows/etl.py", b"print('etl')\n", etag='"v1"')
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir()
        (secrets_dir / "API_KEY").write_text(key)
        root = tmp_path / "root"
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n'
            '[[sources]]\nkind = "webhook"\nname = "etl"\nflow_script_path = "etl.py"\n'
            "[sources.get_flow_request_kwargs]\n"
            f'url = "{webhook_server.url("/flows/etl.py")}"\n'
            'headers = { X-Api-Key = "$API_KEY" }\n'
        )
        result = cli(
            "run", "--once", "--config", str(config),
            env={"RUNNER_STORAGE_SECRETS_DIR": str(secrets_dir)},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert (root / "etl" / "etl.py").read_text() == "print('etl')\n"
        assert key not in result.stdout + result.stderr
        assert [p for p in root.rglob("*") if p.is_file() and key.encode() in p.read_bytes()] == []
        (request,) = webhook_server.requests_to("/flows/etl.py")
        assert request.status == 200


class TestWebhookFromPrefectYaml:
    """Our ``pull_webhook`` step in a prefect.yaml is a webhook source of the daemon."""

    def test_round_trip_keeps_the_key_a_reference(
        self, webhook_server: WebhookServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``{{ $VAR }}`` in the step becomes ``${VAR}``: filled at every pull, never stored.

        ``run --once --prefect-yaml`` then pulls the flow with the header the server
        demands; a literal ``$`` elsewhere is kept as written.
        """
        key = "whk-yaml-" + "7a2c" * 5
        webhook_server.required_headers = {"X-Api-Key": key, "X-Price": "$5"}
        webhook_server.put("/flows/etl.py", b"print('etl')\n")
        monkeypatch.setenv("API_KEY", key)
        (storage,) = built(
            tmp_path,
            '[[sources]]\nkind = "webhook"\nflow_script_path = "etl.py"\n'
            "[sources.get_flow_request_kwargs]\n"
            f'url = "{webhook_server.url("/flows/etl.py")}"\n'
            'headers = { X-Api-Key = "$API_KEY", X-Price = "$$5" }\n',
        )
        pull = [storage.to_pull_step()]
        prefect_yaml = tmp_path / "prefect.yaml"
        prefect_yaml.write_text(json.dumps({"deployments": [{"name": "etl", "pull": pull}]}))
        config = tmp_path / "from-yaml.toml"
        root = tmp_path / "yaml-root"
        config.write_text(f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n')
        settings = load_settings(
            config, environ={"API_KEY": key}, overrides={"prefect_yaml": str(prefect_yaml)}
        )
        (source,) = settings.all_sources()
        assert source.kind == "webhook"
        assert key not in source.model_dump_json()
        result = cli("run", "--once", "--config", str(config), "--prefect-yaml", str(prefect_yaml))
        assert result.returncode == 0, result.stdout + result.stderr
        assert (root / storage.name / "etl.py").read_text() == "print('etl')\n"
        assert key not in result.stdout + result.stderr
