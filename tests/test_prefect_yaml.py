"""The daemon configured by a prefect.yaml pull section, against real servers.

What a platform engineer sees who points ``runner-storage run --prefect-yaml FILE`` (or the
``prefect_yaml`` setting) at the prefect.yaml their deployments already have: every pull
step becomes the source that keeps its code current, published where the step's
``{{ id.directory }}`` says, with Prefect's placeholders resolved from the environment, a
block file, the secrets directory and the ``variables`` table. The git server is ``git
http-backend`` behind Basic auth over TLS, S3 is moto; the daemon runs as a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from daemon_process import DaemonFactory, cli, wait_for
from servers.git_http import GitHTTPServer
from servers.gitrepo import GIT_TEST_ENV, UpstreamRepo, UpstreamRepoFactory
from servers.s3 import S3Server

from runner_storage.snapshots import push_snapshot
from service.cli import main
from service.config import DaemonSettings, load_settings
from service.sources import GitSource, RemoteSource, SourceBase

#: The S3 secret every source here is given (moto takes any): distinctive, so a scan of
#: logs and files cannot miss it.
S3_CANARY = "pyaml-s3-canary-5b0e7c2a91"
#: The bearer token of ``POST /sync/NAME``.
SYNC_TOKEN = "pyaml-sync-token-3c9d0e"

GIT_CLONE = "prefect.deployments.steps.git_clone"
PREFECT_PULL_GIT_CLONE = "prefect.deployments.steps.pull.git_clone"
OUR_GIT_CLONE = "runner_storage.deployments.steps.git_clone"
REMOTE = "prefect.deployments.steps.pull_from_remote_storage"
SNAPSHOT = "runner_storage.deployments.steps.pull_snapshot"
WITH_BLOCK = "prefect.deployments.steps.pull_with_block"
WORKDIR = "prefect.deployments.steps.set_working_directory"
SHELL = "prefect.deployments.steps.run_shell_script"
PIP = "prefect.deployments.steps.pip_install_requirements"

REMOTE_OBJECTS = {
    "flows/etl.py": "ETL = 1\n",
    "flows/lib/util.py": "UTIL = 2\n",
    "elsewhere/skip.py": "not pulled\n",
}
SNAPSHOT_TREE = {"flows/snap.py": "SNAP = 1\n", "README.md": "snapshot\n"}
BLOCK_TREE = {"flows/from_block.py": "BLOCK = 1\n", "conf/settings.toml": "x = 1\n"}


def tree(folder: Path) -> dict[str, str]:
    """Every regular file below ``folder`` (the published link followed), by relative path."""
    real = folder.resolve()
    return {
        path.relative_to(real).as_posix(): path.read_text()
        for path in sorted(real.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def write_tree(folder: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` below ``folder``; return ``folder``."""
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def step(function: str, **inputs: Any) -> dict[str, Any]:
    """One pull step as Prefect writes it: ``{function: {inputs}}``."""
    return {function: inputs}


def write_prefect_yaml(path: Path, deployments: Mapping[str, list[dict[str, Any]]]) -> Path:
    """A prefect.yaml at ``path`` with one deployment per entry of ``deployments``."""
    document = {
        "name": "acme",
        "prefect-version": "3.1.0",
        "deployments": [
            {"name": name, "entrypoint": "flows/a.py:main", "pull": pull}
            for name, pull in deployments.items()
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def problem_lines(stderr: str) -> list[str]:
    """The ``runner-storage: ...`` lines of a refused start."""
    return [line for line in stderr.splitlines() if line.startswith("runner-storage: ")]


def json_logs(output: str) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's output."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@dataclass
class World:
    """The servers and files every test here shares: one repository, a bucket, blocks.

    The repository (``main`` and ``dev``) is served over HTTPS with Basic auth; the bucket
    holds plain objects under ``flows/`` and a snapshot root ``snap`` with the ref ``prod``;
    the block file holds Secret blocks (read from the environment), a credentials block and
    a ``local-file-system`` block; the secrets directory holds the Secret block
    ``git-login``.
    """

    folder: Path
    git: GitHTTPServer
    repo: UpstreamRepo
    s3: S3Server
    bucket: str
    snapshot_id: str
    block_dir: Path
    block_file: Path
    secrets_dir: Path
    hook_out: Path

    @property
    def url(self) -> str:
        """The repository's HTTPS URL (no credentials in it)."""
        return self.git.url_for(self.repo)

    @property
    def login(self) -> str:
        """``user:password`` for the git server, as Prefect's ``access_token`` takes it."""
        return f"{self.git.username}:{self.git.password}"

    @property
    def repo_name(self) -> str:
        """The repository's name in its URL (Prefect's destination is ``NAME-BRANCH``)."""
        return self.repo.name

    def environ(self, **extra: str) -> dict[str, str]:
        """The environment the daemon runs with: git hermetic, secrets as variables."""
        return {
            **GIT_TEST_ENV,
            **self.git.ssl_env(),
            "PYAML_LOGIN": self.login,
            "PYAML_PASSWORD": self.git.password,
            "PYAML_AWS_KEY": self.s3.key,
            "PYAML_AWS_SECRET": S3_CANARY,
            "PYAML_HOOK_OUT": str(self.hook_out),
            "PYAML_GIT_PORT": str(self.git.port),
            "RUNNER_STORAGE_SECRETS_DIR": str(self.secrets_dir),
            **extra,
        }

    def config_text(self, root: Path | str, body: str = "", tables: str = "") -> str:
        """Daemon settings: ``root``, HTTP on a free port, JSON logs, the block file.

        Then ``body`` (more top-level settings), the variables table, and ``tables``.
        """
        return (
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n'
            f'blocks_file = "{self.block_file}"\n{body}\n'
            "[variables]\n"
            f's3_endpoint = "{self.s3.endpoint_url}"\n'
            f'bucket = "{self.bucket}"\n'
            f'repo = "{self.repo.relpath}"\n'
            'dirs = ["flows"]\n'
            "submodules = false\n"
            f'who = "world"\n\n{tables}'
        )

    def config(self, path: Path, root: Path | str, body: str = "", tables: str = "") -> Path:
        """:meth:`config_text` written to ``path``."""
        path.write_text(self.config_text(root, body, tables))
        return path


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    git_https_server: GitHTTPServer,
    git_project_root: Path,
    _git_work_root: Path,
    s3_server: S3Server,
) -> World:
    """The shared repository, bucket, snapshot, block file and secrets directory."""
    folder = tmp_path_factory.mktemp("prefect-yaml")
    repo = UpstreamRepo(git_project_root, _git_work_root, f"pyaml-{folder.name}")
    repo.create_branch("dev")
    repo.commit({"flows/dev.py": "DEV = 1\n"}, branch="dev")
    bucket = s3_server.new_bucket("pyaml")
    for key, text in REMOTE_OBJECTS.items():
        s3_server.put(bucket, key, text)
    info = push_snapshot(
        write_tree(folder / "snapshot-tree", SNAPSHOT_TREE),
        f"s3://{bucket}/snap",
        ref="prod",
        key=s3_server.key,
        secret=S3_CANARY,
        client_kwargs={"endpoint_url": s3_server.endpoint_url},
    )
    block_dir = write_tree(folder / "block-folder", BLOCK_TREE)
    block_file = folder / "blocks.toml"
    block_file.write_text(
        textwrap.dedent(
            f"""\
            [secret.git-password]
            value = {{ env = "PYAML_PASSWORD" }}

            [secret.aws-secret]
            value = {{ env = "PYAML_AWS_SECRET" }}

            [github-credentials.acme]
            username = "{git_https_server.username}"
            token = {{ env = "PYAML_PASSWORD" }}

            [local-file-system.shared]
            basepath = "{block_dir}"
            """
        )
    )
    secrets_dir = folder / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "git-login").write_text(
        f"{git_https_server.username}:{git_https_server.password}\n"
    )
    hook_out = folder / "hook-out"
    hook_out.mkdir()
    return World(
        folder=folder,
        git=git_https_server,
        repo=repo,
        s3=s3_server,
        bucket=bucket,
        snapshot_id=info.id,
        block_dir=block_dir,
        block_file=block_file,
        secrets_dir=secrets_dir,
        hook_out=hook_out,
    )


@pytest.fixture
def world_environ(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The daemon's environment set in this process, for ``load_settings`` and ``main``.

    The prefect.yaml's placeholders are resolved from ``os.environ``.
    """
    environ = world.environ()
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return environ


def s3_inputs() -> dict[str, Any]:
    """The S3 settings of a step.

    The key from the environment, the secret from a Secret block, the endpoint from a
    variable.
    """
    return {
        "key": "{{ $PYAML_AWS_KEY }}",
        "secret": "{{ prefect.blocks.secret.aws-secret }}",
        "client_kwargs": {"endpoint_url": "{{ prefect.variables.s3_endpoint }}"},
    }


def every_step_kind(world: World) -> dict[str, list[dict[str, Any]]]:
    """Deployments that, together, use every step kind and every placeholder kind."""
    return {
        "env-token": [
            step(
                GIT_CLONE,
                # inline placeholders inside text: an environment variable and a variable
                repository="https://127.0.0.1:{{ $PYAML_GIT_PORT }}/{{ prefect.variables.repo }}",
                branch="main",
                access_token="{{ $PYAML_LOGIN }}",
                # whole-string placeholders keep their type: a list, a boolean
                directories="{{ prefect.variables.dirs }}",
                include_submodules="{{ prefect.variables.submodules }}",
                clone_directory_name="sparse-flows",
            )
        ],
        "block-secret": [
            step(
                PREFECT_PULL_GIT_CLONE,
                repository=world.url,
                branch="dev",
                credentials={
                    "username": world.git.username,
                    "access_token": "{{ prefect.blocks.secret.git-password }}",
                },
            )
        ],
        "secrets-dir": [
            step(
                OUR_GIT_CLONE,
                repository=world.url,
                branch="main",
                access_token="{{ prefect.blocks.secret.git-login }}",
                clone_directory_name="from-secrets-dir",
            )
        ],
        "credentials-block": [
            step(
                GIT_CLONE,
                repository=world.url,
                branch="main",
                credentials="{{ prefect.blocks.github-credentials.acme }}",
                clone_directory_name="from-credentials-block",
            )
        ],
        "remote": [
            step(
                REMOTE,
                requires="s3fs>=2023.1",
                url="s3://{{ prefect.variables.bucket }}/flows",
                **s3_inputs(),
            )
        ],
        "snapshot": [
            step(
                SNAPSHOT,
                requires=["runner-storage"],
                root=f"s3://{world.bucket}/snap",
                ref="prod",
                **s3_inputs(),
            )
        ],
        "block": [
            step(WITH_BLOCK, block_type_slug="local-file-system", block_document_name="shared")
        ],
        "hooks": [
            step(
                GIT_CLONE,
                id="clone",
                repository=world.url,
                branch="main",
                access_token="{{ $PYAML_LOGIN }}",
                clone_directory_name="hooked",
            ),
            step(
                SHELL,
                directory="{{ clone.directory }}",
                script=(
                    'sh -c \'echo "$RUNNER_STORAGE_NEW_REVISION $PWD"'
                    " > {{ $PYAML_HOOK_OUT }}/clone-dir.txt'"
                ),
            ),
            step(WORKDIR, id="workdir", directory="{{ clone.directory }}/flows"),
            step(
                SHELL,
                script=(
                    "sh -c 'echo \"$PWD $GREETING\" > {{ $PYAML_HOOK_OUT }}/workdir.txt'\n"
                    "sh -c 'echo \"$HOOK_TOKEN\" > {{ $PYAML_HOOK_OUT }}/token.txt'"
                ),
                env={
                    "GREETING": "hello-{{ prefect.variables.who }}",
                    "HOOK_TOKEN": "{{ $PYAML_PASSWORD }}",
                },
            ),
        ],
    }


@dataclass
class OnceRun:
    """One ``runner-storage run --once --prefect-yaml`` of :func:`every_step_kind`."""

    result: subprocess.CompletedProcess[str]
    root: Path
    config: Path
    prefect_yaml: Path

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines."""
        return json_logs(self.result.stdout)


@pytest.fixture(scope="module")
def once_run(world: World) -> OnceRun:
    """Every step kind, pulled once by the daemon as a real process (hooks on)."""
    root = world.folder / "once-root"
    config = world.config(world.folder / "once.toml", root, "step_hooks = true")
    prefect_yaml = write_prefect_yaml(world.folder / "prefect.yaml", every_step_kind(world))
    result = cli(
        "run", "--once", "--config", str(config), "--prefect-yaml", str(prefect_yaml),
        env=world.environ(),
    )  # fmt: skip
    return OnceRun(result, root, config, prefect_yaml)


class TestEveryStepKind:
    """Each kind of pull step becomes the right source; ``run --once`` publishes its tree."""

    def test_the_run_succeeds(self, once_run: OnceRun) -> None:
        """``run --once --prefect-yaml`` exits 0 with every source published once."""
        assert once_run.result.returncode == 0, once_run.result.stdout + once_run.result.stderr
        finished = sorted(e["source"] for e in once_run.logs if e["event"] == "sync_finished")
        assert len(finished) == 8, finished

    def test_git_clone_with_a_token_from_the_environment_sparse_and_named(
        self, once_run: OnceRun
    ) -> None:
        """A token from ``{{ $VAR }}``, ``directories`` and ``clone_directory_name``.

        Only the named directories are checked out, under ``ROOT/<clone_directory_name>``.
        """
        files = tree(once_run.root / "sparse-flows")
        assert files["flows/a.py"] == "A = 1\n"
        assert files["flows/sub/b.py"] == "B = 2\n"
        assert "lib/c.py" not in files
        assert "docs/x.md" not in files

    def test_git_clone_with_a_secret_block_from_the_block_file(
        self, once_run: OnceRun, world: World
    ) -> None:
        """A token from a Secret block of the block file (its ``{ env = ... }``).

        Prefect's ``.pull.git_clone`` name works; the branch is under ``ROOT/REPO-BRANCH``.
        """
        files = tree(once_run.root / f"{world.repo_name}-dev")
        assert files["flows/dev.py"] == "DEV = 1\n"
        assert (
            os.readlink(once_run.root / f"{world.repo_name}-dev")
            .split("/")[-1]
            .startswith(world.repo.head("dev")[:12])
        )

    def test_git_clone_with_a_secret_from_the_secrets_directory(
        self, once_run: OnceRun, world: World
    ) -> None:
        """A Secret block missing from the block file comes from the secrets directory.

        It is the file of its name in ``RUNNER_STORAGE_SECRETS_DIR``; our own ``git_clone``
        name works too.
        """
        files = tree(once_run.root / "from-secrets-dir")
        assert files["lib/c.py"] == "C = 3\n"
        assert files["README.md"] == "# upstream\n"

    def test_git_clone_with_a_credentials_block(self, once_run: OnceRun) -> None:
        """A whole credentials block as ``credentials`` logs in.

        ``"{{ prefect.blocks.github-credentials.acme }}"`` is a mapping of a username and a
        token.
        """
        assert tree(once_run.root / "from-credentials-block")["flows/a.py"] == "A = 1\n"

    def test_pull_from_remote_storage_from_s3(self, once_run: OnceRun, world: World) -> None:
        """``pull_from_remote_storage`` publishes the objects under its URL.

        The key comes from ``{{ $VAR }}``, the secret from a Secret block and
        ``client_kwargs.endpoint_url`` from ``{{ prefect.variables.NAME }}``; the tree is
        under Prefect's ``ROOT/bucket/path``.
        """
        assert tree(once_run.root / world.bucket / "flows") == {
            "etl.py": "ETL = 1\n",
            "lib/util.py": "UTIL = 2\n",
        }

    def test_pull_snapshot_follows_the_ref(self, once_run: OnceRun, world: World) -> None:
        """``pull_snapshot`` with ``ref``: the snapshot the ref names, published."""
        assert tree(once_run.root / world.bucket / "snap") == SNAPSHOT_TREE

    def test_pull_with_block_of_a_local_file_system_block(self, once_run: OnceRun) -> None:
        """``pull_with_block`` of a ``local-file-system`` block publishes its folder.

        The block is in the block file; the tree is under Prefect's ``ROOT/<slug>-<name>``.
        """
        assert tree(once_run.root / "local-file-system-shared") == BLOCK_TREE

    def test_a_shell_step_runs_after_the_publish_in_the_clone_directory(
        self, once_run: OnceRun, world: World
    ) -> None:
        """A shell step runs after its source was published, in the clone's directory.

        With ``step_hooks = true``, ``directory: "{{ clone.directory }}"`` is ``ROOT/<name>``
        and the hook sees the published revision.
        """
        revision, directory = (world.hook_out / "clone-dir.txt").read_text().split()
        assert revision == world.repo.head("main")
        assert Path(directory) == once_run.root / "hooked"

    def test_set_working_directory_moves_the_later_steps(
        self, once_run: OnceRun, world: World
    ) -> None:
        """After ``set_working_directory``, a shell step without ``directory`` runs there.

        An inline ``{{ prefect.variables.NAME }}`` in its ``env`` is replaced by text.
        """
        directory, greeting = (world.hook_out / "workdir.txt").read_text().split()
        assert Path(directory) == once_run.root / "hooked" / "flows"
        assert greeting == "hello-world"

    def test_a_whole_env_placeholder_reaches_the_hook_as_its_value(
        self, once_run: OnceRun, world: World
    ) -> None:
        """``env: {HOOK_TOKEN: "{{ $VAR }}"}`` is the variable's value inside the hook.

        The hook's shell expands it from its own environment (the value is not in argv).
        """
        assert (world.hook_out / "token.txt").read_text() == world.git.password + "\n"

    def test_one_object_store_for_the_repository(self, once_run: OnceRun) -> None:
        """Git sources of one URL share exactly one object store.

        Five sources (two branches, several logins) have one store under
        ``ROOT/.runner-storage/.repos/``.
        """
        stores = sorted((once_run.root / ".runner-storage" / ".repos").glob("*.git"))
        assert len(stores) == 1, stores

    def test_requires_is_accepted_and_ignored(self, once_run: OnceRun) -> None:
        """``requires`` (what Prefect's worker installs first) is accepted and ignored.

        It is neither a problem nor a note: the steps that carry it are pulled.
        """
        assert not [e for e in once_run.logs if e["event"] == "prefect_yaml_step_skipped"]
        assert "requires" not in once_run.result.stdout + once_run.result.stderr


def settings_for(
    world: World,
    folder: Path,
    deployments: Mapping[str, list[dict[str, Any]]],
    body: str = "",
    *,
    environ: Mapping[str, str] | None = None,
) -> DaemonSettings:
    """``load_settings`` of a config under ``folder`` naming a prefect.yaml.

    The prefect.yaml holds ``deployments``; ``body`` holds more top-level settings.
    """
    prefect_yaml = write_prefect_yaml(folder / "prefect.yaml", deployments)
    config = world.config(
        folder / "config.toml", folder / "root", f'prefect_yaml = "{prefect_yaml}"\n{body}'
    )
    return load_settings(config, environ=environ)


def by_name(settings: DaemonSettings) -> dict[str, SourceBase]:
    """The sources by where they publish, relative to the root.

    Keys are like ``sparse-flows`` or ``BUCKET/flows``.
    """
    sources = {}
    for source in settings.all_sources():
        storage = source.build_storage(root=settings.root, keep_versions=3, grace_period=0)
        sources[Path(storage.destination).relative_to(settings.root).as_posix()] = source
    return sources


def git_step(world: World, **inputs: Any) -> dict[str, Any]:
    """A ``git_clone`` of the shared repository logging in with ``{{ $PYAML_LOGIN }}``."""
    return step(GIT_CLONE, repository=world.url, access_token="{{ $PYAML_LOGIN }}", **inputs)


def refused(
    world: World,
    folder: Path,
    prefect_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> list[str]:
    """Run ``runner-storage run --once --prefect-yaml FILE [extra]`` in this process.

    It must exit 2 before anything starts; the result is its ``runner-storage:`` lines.
    """
    root = folder / "root"
    config = world.config(folder / "config.toml", root)
    argv = ["run", "--once", "--config", str(config), "--prefect-yaml", str(prefect_yaml)]
    code = main([*argv, *extra])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert not root.exists()
    return problem_lines(captured.err)


@pytest.mark.usefixtures("world_environ")
class TestTemplates:
    """Prefect's placeholders, as the sources they give show them."""

    @pytest.fixture
    def sources(self, world: World, tmp_path: Path) -> dict[str, SourceBase]:
        """The sources of :func:`every_step_kind`, hooks on."""
        return by_name(settings_for(world, tmp_path, every_step_kind(world), "step_hooks = true"))

    def test_inline_placeholders_become_text(
        self, sources: dict[str, SourceBase], world: World
    ) -> None:
        """Inline placeholders inside text are replaced by their text.

        ``https://127.0.0.1:{{ $PORT }}/{{ prefect.variables.repo }}`` and
        ``s3://{{ prefect.variables.bucket }}/flows`` are the URLs, filled in.
        """
        assert sources["sparse-flows"].source == world.url
        assert sources[f"{world.bucket}/flows"].source == f"s3://{world.bucket}/flows"

    def test_whole_placeholders_keep_their_type(self, sources: dict[str, SourceBase]) -> None:
        """Whole-string placeholders keep the type of their value.

        ``directories: "{{ prefect.variables.dirs }}"`` is the variable's list,
        ``include_submodules`` its boolean.
        """
        source = sources["sparse-flows"]
        assert isinstance(source, GitSource)
        assert source.directories == ["flows"]
        assert source.include_submodules is False

    def test_a_credentials_block_is_a_mapping_and_its_token_stays_a_reference(
        self, sources: dict[str, SourceBase], world: World
    ) -> None:
        """A credentials block placeholder is the block's mapping; its token stays a reference.

        ``credentials: "{{ prefect.blocks.github-credentials.acme }}"`` gives the block's
        username, and its token as the ``{ env = ... }`` it is in the block file.
        """
        source = sources["from-credentials-block"]
        assert isinstance(source, GitSource)
        assert source.credentials is not None
        assert source.credentials.username == world.git.username
        assert source.credentials.token.env == "PYAML_PASSWORD"
        assert source.credentials.token.value is None

    def test_secret_placeholders_stay_references(
        self, sources: dict[str, SourceBase], world: World
    ) -> None:
        """Secret placeholders stay references, read at every pull, never copied.

        ``{{ $VAR }}`` stays the variable, a Secret block keeps its name, and one from the
        secrets directory is its file.
        """
        tokens = {}
        for name in ("sparse-flows", f"{world.repo_name}-dev", "from-secrets-dir"):
            source = sources[name]
            assert isinstance(source, GitSource)
            assert source.credentials is not None
            tokens[name] = source.credentials.token.model_dump(exclude_none=True)
        assert tokens == {
            "sparse-flows": {"env": "PYAML_LOGIN"},
            f"{world.repo_name}-dev": {"env": "PYAML_PASSWORD", "name": "git-password"},
            "from-secrets-dir": {
                "file": world.secrets_dir / "git-login",
                "name": "git-login",
            },
        }
        remote = sources[f"{world.bucket}/flows"]
        assert isinstance(remote, RemoteSource)
        settings = remote.fsspec_settings()
        assert (settings["key"].env_var, settings["secret"].env_var) == (
            "PYAML_AWS_KEY",
            "PYAML_AWS_SECRET",
        )
        assert settings["secret"].name == "aws-secret"
        assert settings["client_kwargs"] == {"endpoint_url": world.s3.endpoint_url}

    def test_step_id_directory_is_the_absolute_destination(
        self, sources: dict[str, SourceBase], tmp_path: Path
    ) -> None:
        """``{{ clone.directory }}`` is the clone's absolute destination, ``ROOT/<name>``.

        A later ``set_working_directory`` below it is where the next hook runs.
        """
        hook = sources["hooked"].hooks.exec
        assert isinstance(hook, list)
        assert hook[:2] == ["/bin/sh", "-c"]
        assert f"cd {tmp_path / 'root' / 'hooked'}\n" in hook[2]
        assert f"cd {tmp_path / 'root' / 'hooked' / 'flows'}\n" in hook[2]

    def test_a_deployment_without_pull_uses_the_top_level_one(
        self, world: World, tmp_path: Path
    ) -> None:
        """As ``prefect deploy``: a deployment with no ``pull`` runs the file's own."""
        prefect_yaml = tmp_path / "prefect.yaml"
        prefect_yaml.write_text(
            yaml.safe_dump(
                {
                    "pull": [git_step(world, branch="main", clone_directory_name="top")],
                    "deployments": [{"name": "inherits"}],
                }
            )
        )
        config = world.config(
            tmp_path / "config.toml", tmp_path / "root", f'prefect_yaml = "{prefect_yaml}"'
        )
        assert [s.name for s in load_settings(config).all_sources()] == ["top"]

    def test_placeholders_read_the_environment_load_settings_is_given(
        self, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``load_settings(environ=...)`` resolves the prefect.yaml from that environment.

        A ``{{ $VAR }}`` set there and nowhere else resolves.
        """
        monkeypatch.delenv("PYAML_ONLY_GIVEN", raising=False)
        environ = {**world.environ(), "PYAML_ONLY_GIVEN": world.login}
        deployments = {
            "given": [step(GIT_CLONE, repository=world.url, access_token="{{ $PYAML_ONLY_GIVEN }}")]
        }
        settings = settings_for(world, tmp_path, deployments, environ=environ)
        assert len(settings.all_sources()) == 1


class TestProblems:
    """What cannot be kept current is refused before anything starts.

    Exit 2, one line per problem, naming the prefect.yaml, the deployment and the step.
    """

    @pytest.mark.usefixtures("world_environ")
    def test_an_unknown_step_is_one_line(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A step of a function runner-storage does not know is one line, exit 2.

        The line names the deployment, the step's position and its function.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "custom": [
                    git_step(world, branch="main"),
                    step("acme.steps.build_wheel", target="dist"),
                ]
            },
        )
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert str(prefect_yaml) in line
        assert "deployment 'custom'" in line
        assert "step 2" in line
        assert "acme.steps.build_wheel" in line

    MISSING: ClassVar[dict[str, tuple[str, str]]] = {
        "environment variable": ("access_token", "{{ $PYAML_NOT_SET_ANYWHERE }}"),
        "variable": ("branch", "{{ prefect.variables.no_such_variable }}"),
        "block": ("access_token", "{{ prefect.blocks.secret.no-such-block }}"),
        "step id": ("repository", "{{ nowhere.directory }}"),
    }

    @pytest.mark.usefixtures("world_environ")
    @pytest.mark.parametrize("kind", list(MISSING))
    def test_a_missing_template_is_one_line_naming_it(
        self, kind: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A placeholder without a value is one line, exit 2.

        An unset environment variable, a missing variable, block or step id: the line names
        the placeholder, the deployment and the step.
        """
        key, placeholder = self.MISSING[kind]
        inputs: dict[str, Any] = {"repository": world.url, "branch": "main", key: placeholder}
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml", {"missing": [step(GIT_CLONE, **inputs)]}
        )
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert placeholder in line
        assert "deployment 'missing'" in line
        assert "step 1 (git_clone)" in line

    @pytest.mark.usefixtures("world_environ")
    @pytest.mark.parametrize("kind", ["variable", "block", "step id"])
    def test_a_missing_template_names_its_place_once(
        self, kind: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The line says where the placeholder is once, as it does for ``{{ $VAR }}``."""
        key, placeholder = self.MISSING[kind]
        inputs: dict[str, Any] = {"repository": world.url, "branch": "main", key: placeholder}
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml", {"missing": [step(GIT_CLONE, **inputs)]}
        )
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert line.count("deployment 'missing'") == 1, line

    @pytest.mark.usefixtures("world_environ")
    def test_each_deployment_with_a_problem_is_one_line(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Problems of several deployments are all reported, one line each.

        A good deployment next to them says nothing.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "good": [git_step(world, branch="main")],
                "unknown": [step("acme.steps.deploy")],
                "unset": [step(GIT_CLONE, repository="{{ $PYAML_NOT_SET_ANYWHERE }}")],
            },
        )
        lines = refused(world, tmp_path, prefect_yaml, capsys)
        assert len(lines) == 2, lines
        assert "deployment 'unknown'" in lines[0]
        assert "deployment 'unset'" in lines[1]

    def test_an_unparseable_prefect_yaml_is_one_line(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A prefect.yaml that is no YAML: exit 2, one line naming the file."""
        prefect_yaml = tmp_path / "prefect.yaml"
        prefect_yaml.write_text("deployments:\n  - name: [unclosed\n")
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert f"prefect.yaml {prefect_yaml} cannot be parsed" in line

    @pytest.mark.parametrize(
        "pull",
        [
            [{GIT_CLONE: {"repository": "x"}, REMOTE: {"url": "s3://b/p"}}],
            ["prefect.deployments.steps.git_clone"],
            [{GIT_CLONE: "https://example.com/x.git"}],
            [{GIT_CLONE: 5}],
        ],
        ids=["two-functions", "a-string", "inputs-a-string", "inputs-a-number"],
    )
    def test_a_step_that_is_not_one_mapping_is_one_line(
        self,
        pull: list[Any],
        world: World,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A step that is not ``{function: {inputs}}`` is one line, exit 2.

        The line names the deployment and the step's position.
        """
        prefect_yaml = tmp_path / "prefect.yaml"
        prefect_yaml.write_text(yaml.safe_dump({"deployments": [{"name": "odd", "pull": pull}]}))
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert "deployment 'odd'" in line
        assert "step 1" in line

    def test_an_unknown_deployment_is_one_line_listing_the_known(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--deployment`` naming no deployment of the file is one line, exit 2.

        The line names it and the deployments the file has.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {"etl": [git_step(world)], "reports": [git_step(world, branch="dev")]},
        )
        (line,) = refused(world, tmp_path, prefect_yaml, capsys, "--deployment", "nope")
        assert "'nope'" in line
        assert "'etl'" in line
        assert "'reports'" in line

    @pytest.mark.usefixtures("world_environ")
    def test_deployment_leaves_the_other_deployments_out(
        self, world: World, tmp_path: Path
    ) -> None:
        """With ``deployments`` given, only those are read.

        Another deployment's problem does not stop the daemon.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {"etl": [git_step(world, branch="main")], "broken": [step("acme.steps.deploy")]},
        )
        config = world.config(tmp_path / "config.toml", tmp_path / "root")
        settings = load_settings(
            config, overrides={"prefect_yaml": prefect_yaml, "deployments": ["etl"]}
        )
        assert [s.name for s in settings.all_sources()] == [None]
        assert [s.source for s in settings.all_sources()] == [world.url]


@pytest.mark.usefixtures("world_environ")
class TestSharing:
    """Several deployments pulling the same repository."""

    def test_the_same_git_clone_in_two_deployments_is_one_source(
        self, world: World, tmp_path: Path
    ) -> None:
        """Two deployments with the same step keep one source."""
        settings = settings_for(
            world,
            tmp_path,
            {"etl": [git_step(world, branch="main")], "reports": [git_step(world, branch="main")]},
        )
        assert [s.source for s in settings.all_sources()] == [world.url]

    def test_two_branches_are_two_sources(self, world: World, tmp_path: Path) -> None:
        """Two branches of one repository are two sources, named as Prefect names them.

        They share one object store: see ``test_one_object_store_for_the_repository``.
        """
        settings = settings_for(
            world,
            tmp_path,
            {"etl": [git_step(world, branch="main")], "reports": [git_step(world, branch="dev")]},
        )
        sources = settings.all_sources()
        assert [getattr(source, "branch", None) for source in sources] == ["main", "dev"]
        root = tmp_path / "root"
        destinations = {
            Path(source.build_storage(root=root, keep_versions=3, grace_period=0).destination)
            for source in sources
        }
        assert destinations == {root / f"{world.repo_name}-main", root / f"{world.repo_name}-dev"}

    def test_one_destination_with_different_settings_is_one_line_naming_both(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two deployments publishing different code under one name are one line, exit 2.

        The line names both deployments and the destination.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "etl": [git_step(world, branch="main", clone_directory_name="code")],
                "reports": [git_step(world, branch="dev", clone_directory_name="code")],
            },
        )
        (line,) = refused(world, tmp_path, prefect_yaml, capsys)
        assert "deployment 'etl'" in line
        assert "deployment 'reports'" in line
        assert "'code'" in line


class TestStepHooks:
    """``run_shell_script`` and ``pip_install_requirements``: hooks, or skipped with a note."""

    @pytest.mark.usefixtures("world_environ")
    def test_pip_install_requirements_becomes_the_sources_hook(
        self, world: World, tmp_path: Path
    ) -> None:
        """With ``step_hooks = true``, ``pip_install_requirements`` is a post-publish hook.

        It is the exec hook of the source before it: pip installs the requirements file in the
        step's directory, with a long timeout.
        """
        settings = settings_for(
            world,
            tmp_path,
            {
                "etl": [
                    git_step(world, id="code", branch="main", clone_directory_name="etl"),
                    step(
                        PIP,
                        directory="{{ code.directory }}",
                        requirements_file="requirements-dev.txt",
                    ),
                ]
            },
            "step_hooks = true",
        )
        (source,) = settings.all_sources()
        command = source.hooks.exec
        assert isinstance(command, list)
        shell, flag, body, label = command
        assert (shell, flag, label) == ("/bin/sh", "-c", "runner-storage-step-hook")
        lines = [line.strip() for line in body.splitlines()]
        assert f"cd {tmp_path / 'root' / 'etl'}" in lines
        assert any(line.endswith("-m pip install -q -r requirements-dev.txt") for line in lines), (
            body
        )
        assert source.hooks.timeout == 900
        assert settings.notes == ()

    def test_without_step_hooks_they_are_skipped_with_one_warning_each(
        self, world: World, tmp_path: Path
    ) -> None:
        """Without ``step_hooks``, flow-run steps are skipped with one warning each.

        The code is pulled, the steps do not run, and the log has one
        ``prefect_yaml_step_skipped`` warning per step, naming it.
        """
        marker = tmp_path / "ran"
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "etl": [
                    git_step(world, branch="main", clone_directory_name="etl"),
                    step(SHELL, script=f"touch {marker}"),
                    step(PIP, requirements_file="requirements.txt"),
                ]
            },
        )
        config = world.config(tmp_path / "config.toml", tmp_path / "root")
        result = cli(
            "run", "--once", "--config", str(config), "--prefect-yaml", str(prefect_yaml),
            env=world.environ(),
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        skipped = [e for e in json_logs(result.stdout) if e["event"] == "prefect_yaml_step_skipped"]
        assert [e["level"] for e in skipped] == ["warning", "warning"]
        assert "deployment 'etl', step 2 (run_shell_script)" in skipped[0]["detail"]
        assert "deployment 'etl', step 3 (pip_install_requirements)" in skipped[1]["detail"]
        assert "step_hooks" in skipped[0]["detail"]
        assert (tmp_path / "root" / "etl" / "flows" / "a.py").is_file()
        assert not marker.exists()

    @pytest.mark.usefixtures("world_environ")
    def test_a_secret_block_in_a_shell_step_is_refused(
        self, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A Secret block in a shell step is refused with one line naming it.

        It would sit in the hook's command line, which every user of the machine can read.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "etl": [
                    git_step(world, branch="main"),
                    step(SHELL, script="deploy --token {{ prefect.blocks.secret.git-password }}"),
                ]
            },
        )
        config = world.config(tmp_path / "config.toml", tmp_path / "root", "step_hooks = true")
        code = main(["run", "--once", "--config", str(config), "--prefect-yaml", str(prefect_yaml)])
        captured = capsys.readouterr()
        assert code == 2
        (line,) = problem_lines(captured.err)
        assert "deployment 'etl', step 2 (run_shell_script)" in line
        assert "{{ prefect.blocks.secret.git-password }}" in line
        assert world.git.password not in captured.out + captured.err

    @pytest.mark.usefixtures("world_environ")
    def test_a_shell_steps_env_stays_out_of_the_hooks_command_line(
        self, world: World, tmp_path: Path
    ) -> None:
        """A shell step's ``env`` reaches the hook as its environment, not its command line.

        ``env: {TOKEN: "{{ $VAR }}"}`` is passed as Prefect's ``run_shell_script`` passes it.
        """
        settings = settings_for(
            world,
            tmp_path,
            {
                "etl": [
                    git_step(world, branch="main"),
                    step(SHELL, script="deploy", env={"TOKEN": "{{ $PYAML_PASSWORD }}"}),
                ]
            },
            "step_hooks = true",
        )
        (source,) = settings.all_sources()
        assert isinstance(source.hooks.exec, list)
        assert not [arg for arg in source.hooks.exec if world.git.password in arg]


def files_holding(folder: Path, needles: list[str]) -> list[Path]:
    """Every file below ``folder`` (symlinks not followed) whose bytes hold a needle."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and any(needle.encode() in path.read_bytes() for needle in needles)
    ]


class TestSecretsNeverAppear:
    """Tokens from placeholders reach git and S3 and nothing else."""

    def test_no_secret_in_logs_state_sources_or_git_config(
        self, world: World, start_daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """No secret value reaches the logs, the HTTP answers or any file under the root.

        A running daemon pulls with a token from ``{{ $VAR }}``, a Secret block and the
        secrets directory, and an S3 secret; none is in its logs, ``/sources``, ``/readyz``,
        ``/metrics``, ``state.json`` or the object store's ``config``.
        """
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "env-token": [git_step(world, branch="main", clone_directory_name="env")],
                "block-secret": [
                    step(
                        GIT_CLONE,
                        repository=world.url,
                        branch="dev",
                        credentials={
                            "username": world.git.username,
                            "access_token": "{{ prefect.blocks.secret.git-password }}",
                        },
                    )
                ],
                "secrets-dir": [
                    step(
                        GIT_CLONE,
                        repository=world.url,
                        access_token="{{ prefect.blocks.secret.git-login }}",
                        clone_directory_name="file",
                    )
                ],
                "remote": [step(REMOTE, url=f"s3://{world.bucket}/flows", **s3_inputs())],
                "snapshot": [
                    step(SNAPSHOT, root=f"s3://{world.bucket}/snap", ref="prod", **s3_inputs())
                ],
            },
        )
        daemon = start_daemon(
            world.config_text("{root}", f'prefect_yaml = "{prefect_yaml}"'),
            env=world.environ(),
            wait_ready=True,
        )
        secrets = [world.git.password, S3_CANARY, world.git.auth_header().split()[1]]
        sources = daemon.sources()
        assert len(sources) == 5
        assert all(entry["revision"] for entry in sources.values()), sources
        answers = [daemon.request(path)[1] for path in ("/sources", "/readyz?verbose", "/metrics")]
        assert [s for s in secrets if any(s in answer for answer in answers)] == []
        assert [s for s in secrets if s in daemon.process.output()] == []
        states = list((daemon.root / ".runner-storage").glob("**/state.json"))
        assert len(states) == 5, states
        (git_config,) = (daemon.root / ".runner-storage" / ".repos").glob("*.git/config")
        assert files_holding(daemon.root, secrets) == []
        assert world.git.password not in git_config.read_text()

    def test_a_rotated_secret_file_is_read_at_the_next_pull(
        self, world: World, start_daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """A token rotated in the secrets directory is used at the next pull.

        A wrong token fails (nothing is published); the right one written into the file is
        used at the next pull (SIGHUP), without a restart.
        """
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir()
        secret_file = secrets_dir / "git-login"
        wrong = f"{world.git.username}:wrong-pyaml-token-8f31"
        secret_file.write_text(wrong)
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "etl": [
                    step(
                        GIT_CLONE,
                        repository=world.url,
                        branch="main",
                        access_token="{{ prefect.blocks.secret.git-login }}",
                        clone_directory_name="rotated",
                    )
                ]
            },
        )
        daemon = start_daemon(
            world.config_text(
                "{root}",
                f'prefect_yaml = "{prefect_yaml}"\nbackoff_initial = 300\nbackoff_max = 600',
            ),
            env=world.environ(RUNNER_STORAGE_SECRETS_DIR=str(secrets_dir)),
        )
        wait_for(lambda: daemon.events("sync_failed"), what="the pull with the wrong token")
        assert daemon.sources()["rotated"]["revision"] is None
        secret_file.write_text(world.login)
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: daemon.sources()["rotated"]["revision"] == world.repo.head("main"),
            what="the pull with the rotated token",
        )
        assert tree(daemon.root / "rotated")["flows/a.py"] == "A = 1\n"
        output = daemon.process.output()
        assert wrong.split(":")[1] not in output
        assert world.git.password not in output


class TestRunningDaemon:
    """A daemon kept running on a prefect.yaml follows the repository."""

    def test_a_new_commit_arrives_on_the_next_pull(
        self,
        world: World,
        start_daemon: DaemonFactory,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """``POST /sync/NAME`` pulls now: the new commit is published at the same path.

        NAME is the clone's name as Prefect names it (``REPO-BRANCH``).
        """
        repo = upstream_repo()
        prefect_yaml = write_prefect_yaml(
            tmp_path / "prefect.yaml",
            {
                "etl": [
                    step(
                        GIT_CLONE,
                        repository=world.git.url_for(repo),
                        access_token="{{ $PYAML_LOGIN }}",
                        branch="main",
                    )
                ]
            },
        )
        daemon = start_daemon(
            world.config_text("{root}", f'prefect_yaml = "{prefect_yaml}"'),
            env=world.environ(RUNNER_STORAGE_SYNC_TOKEN=SYNC_TOKEN),
            wait_ready=True,
        )
        name = f"{repo.name}-main"
        assert daemon.sources()[name]["revision"] == repo.head()
        new = repo.commit({"flows/new.py": "NEW = 1\n"})
        status, _ = daemon.request(
            f"/sync/{name}", method="POST", headers={"Authorization": f"Bearer {SYNC_TOKEN}"}
        )
        assert status == 202
        wait_for(lambda: daemon.sources()[name]["revision"] == new, what="the new commit")
        assert tree(daemon.root / name)["flows/new.py"] == "NEW = 1\n"


class TestRoundTrip:
    """``runner-storage steps`` and ``prefect_yaml`` are each other's inverse."""

    def test_steps_of_a_config_read_back_as_the_same_sources(
        self, world: World, tmp_path: Path, world_environ: dict[str, str]
    ) -> None:
        """``runner-storage steps`` read back as a prefect.yaml gives the same sources.

        Git (a token from the environment, a named Secret), remote S3 and snapshot sources ->
        ``steps`` -> one deployment -> the same kind, URL, branch, directories, names, secret
        references and destinations (a snapshot following a ref is pinned to its id, as its
        step is).
        """
        s3_settings = (
            'settings = { key = { env = "PYAML_AWS_KEY" },'
            ' secret = { env = "PYAML_AWS_SECRET", name = "aws-secret" },'
            f' client_kwargs = {{ endpoint_url = "{world.s3.endpoint_url}" }} }}'
        )
        configured = world.config(
            tmp_path / "configured.toml",
            tmp_path / "root",
            tables=textwrap.dedent(
                f"""\
                [[sources]]
                source = "{world.url}"
                branch = "main"
                directories = ["flows", "lib"]
                name = "code"
                [sources.credentials]
                username = "{world.git.username}"
                token = {{ env = "PYAML_PASSWORD", name = "git-password" }}

                [[sources]]
                source = "{world.url}"
                branch = "dev"
                credentials = {{ token = {{ env = "PYAML_LOGIN" }} }}

                [[sources]]
                source = "s3://{world.bucket}/flows"
                {s3_settings}

                [[sources]]
                kind = "snapshot"
                source = "s3://{world.bucket}/snap"
                ref = "prod"
                {s3_settings}
                """
            ),
        )
        result = cli("steps", "--config", str(configured), env=world_environ)
        assert result.returncode == 0, result.stderr
        pull = yaml.safe_load(result.stdout)["pull"]
        assert world.git.password not in result.stdout
        assert S3_CANARY not in result.stdout
        prefect_yaml = write_prefect_yaml(tmp_path / "prefect.yaml", {"round-trip": pull})
        read_back = world.config(
            tmp_path / "read-back.toml", tmp_path / "root", f'prefect_yaml = "{prefect_yaml}"'
        )
        before = by_name(load_settings(configured))
        after = by_name(load_settings(read_back))
        assert sorted(before) == sorted(after)
        for destination, source in before.items():
            expected = source.model_dump(exclude={"pull_interval"})
            got = after[destination].model_dump(exclude={"pull_interval"})
            if expected["kind"] == "snapshot":
                expected.update(ref="latest", snapshot=world.snapshot_id)
            assert got == expected, destination
