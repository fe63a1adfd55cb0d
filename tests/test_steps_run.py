"""``runner-storage steps --run FILE``: a prefect.yaml pull section run once, as Prefect's worker.

Each test writes a prefect.yaml (and a block file, a config) under its own temporary
folder, enters a fresh working directory and runs the command in-process
(``service.cli.main``, with the output captured at the file-descriptor level, so what git
children write counts too), or once as a subprocess. The sources are the suite's real
servers: git over smart HTTPS with Basic auth and moto's S3.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_process import cli
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepoFactory
from servers.s3 import S3Server

from service.cli import main

STEPS = "prefect.deployments.steps"

pytestmark = pytest.mark.usefixtures("_trust_https")


@pytest.fixture
def _trust_https(
    git_https_server: GitHTTPServer,
    safe_git_environ: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Make git in this process's environment trust the test server's certificate."""
    monkeypatch.setenv("GIT_SSL_CAINFO", str(git_https_server.ca_file))
    for name in list(os.environ):
        if name.startswith("RUNNER_STORAGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's working directory, entered for the test."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@dataclass
class Ran:
    """One run of the command: its exit code and what it wrote."""

    code: int
    out: str
    err: str

    def document(self) -> Any:
        """The standard output read as YAML (JSON is YAML too)."""
        return yaml.safe_load(self.out)

    def outputs(self) -> list[Any]:
        """Each step's output, in order."""
        return [step["output"] for step in self.document()["steps"]]

    def error_lines(self) -> list[str]:
        """The command's own lines on stderr (not the output a script streamed)."""
        return [line for line in self.err.splitlines() if line.startswith("runner-storage:")]


Runner = Callable[..., Ran]


@pytest.fixture
def run(work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Runner:
    """``run(*args)``: ``runner-storage steps *args`` in-process, started in ``work``."""

    def run_steps(*args: str | Path) -> Ran:
        monkeypatch.chdir(work)  # a set_working_directory step moved the last run
        capfd.readouterr()
        code = main(["steps", *map(str, args)])
        captured = capfd.readouterr()
        return Ran(code, captured.out, captured.err)

    return run_steps


def prefect_yaml(folder: Path, pull: list[Any] | None = None, **top: Any) -> Path:
    """A prefect.yaml in ``folder`` with a top-level ``pull`` section and ``top`` keys."""
    path = folder / "prefect.yaml"
    data = {"name": "acme", **({"pull": pull} if pull is not None else {}), **top}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def step(function: str, **inputs: Any) -> dict[str, Any]:
    """One pull step; a bare name is one of Prefect's step functions."""
    return {function if "." in function else f"{STEPS}.{function}": inputs}


def config(folder: Path, blocks: Path | None = None, **variables: Any) -> Path:
    """A settings file naming the block file and holding ``variables``."""
    path = folder / "config.yaml"
    data: dict[str, Any] = {"variables": variables}
    if blocks is not None:
        data["blocks_file"] = str(blocks)
    path.write_text(yaml.safe_dump(data))
    return path


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Every file below ``folder`` (not following symlinks) whose bytes hold ``secret``."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]


def login(server: GitHTTPServer) -> str:
    """An access token the test server takes: ``user:password``, as Prefect documents."""
    return f"{server.username}:{server.password}"


class TestGitSection:
    """git_clone, set_working_directory and run_shell_script, with tokens from placeholders."""

    def test_clone_enter_and_run_a_script_with_a_token_from_a_block_file(
        self,
        run: Runner,
        work: Path,
        tmp_path: Path,
        upstream_repo: UpstreamRepoFactory,
        git_https_server: GitHTTPServer,
    ) -> None:
        """The clone's ``id`` output names the folder entered; the script runs there.

        The token comes from ``{{ prefect.blocks.secret.gh }}``, a ``{ file = ... }``
        Secret of the block file: it reaches git, and nothing printed or written under the
        working directory (the object store's ``.git/config`` included) holds it.
        """
        upstream = upstream_repo()
        token = login(git_https_server)
        token_file = tmp_path / "gh-token"
        token_file.write_text(token + "\n")
        blocks = tmp_path / "blocks.toml"
        blocks.write_text(f'[secret.gh]\nvalue = {{ file = "{token_file}" }}\n')
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "git_clone",
                    id="clone",
                    repository=git_https_server.url_for(upstream),
                    branch="main",
                    access_token="{{ prefect.blocks.secret.gh }}",
                ),
                step("set_working_directory", directory="{{ clone.directory }}/flows"),
                step("run_shell_script", script="pwd\ncat a.py"),
            ],
        )

        ran = run("--run", path, "--config", config(tmp_path, blocks))

        assert ran.code == 0, ran.err
        entered = Path.cwd()
        steps = ran.document()["steps"]
        assert [(s["step"], s["id"]) for s in steps] == [
            ("step 1 (git_clone)", "clone"),
            ("step 2 (set_working_directory)", None),
            ("step 3 (run_shell_script)", None),
        ]
        assert steps[0]["output"] == {"directory": f"{upstream.name}-main"}
        assert steps[1]["output"] == {"directory": str(entered)}
        assert steps[2]["output"] == {"stdout": f"{entered}\nA = 1", "stderr": ""}
        assert entered == (work / f"{upstream.name}-main" / "flows").resolve()
        assert "A = 1" in ran.err  # the script's output, streamed
        assert token not in ran.out + ran.err
        git_configs = list((work / ".runner-storage" / ".repos").glob("*.git/config"))
        assert git_configs  # the object store's config is among the files scanned
        assert files_holding(work, token) == []

    def test_token_from_the_environment_in_a_subprocess_printing_json(
        self,
        work: Path,
        tmp_path: Path,
        upstream_repo: UpstreamRepoFactory,
        git_https_server: GitHTTPServer,
    ) -> None:
        """``{{ $VAR }}`` as the token, the real command, ``--format json``: it parses."""
        upstream = upstream_repo()
        token = login(git_https_server)
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "git_clone",
                    repository=git_https_server.url_for(upstream),
                    access_token="{{ $RS_TEST_GIT_TOKEN }}",
                )
            ],
        )
        # This process's environment is already safe for git and trusts the server.
        result = cli(
            "steps",
            "--run",
            str(path),
            "--format",
            "json",
            env={"RS_TEST_GIT_TOKEN": token},
            cwd=work,
        )

        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {
            "steps": [
                {
                    "step": "step 1 (git_clone)",
                    "id": None,
                    "output": {"directory": upstream.name},
                }
            ]
        }
        assert token not in result.stdout + result.stderr
        assert files_holding(work, token) == []
        assert (work / upstream.name / "flows" / "a.py").read_text() == "A = 1\n"

    def test_a_second_run_is_a_no_op_and_a_commit_publishes_the_new_one(
        self,
        run: Runner,
        work: Path,
        upstream_repo: UpstreamRepoFactory,
        git_https_server: GitHTTPServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Run twice: the same version stays published; after a commit, the new one is.

        The token is a Secret block found as a file of the secrets directory
        (``RUNNER_STORAGE_SECRETS_DIR``), with no block file at all.
        """
        upstream = upstream_repo()
        tmp_path = work.parent
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "gh").write_text(login(git_https_server))
        monkeypatch.setenv("RUNNER_STORAGE_SECRETS_DIR", str(secrets))
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "git_clone",
                    repository=git_https_server.url_for(upstream),
                    branch="main",
                    access_token="{{ prefect.blocks.secret.gh }}",
                )
            ],
        )
        published = work / f"{upstream.name}-main"

        first = run("--run", path)
        version = os.readlink(published)
        second = run("--run", path)
        unchanged = os.readlink(published)
        commit = upstream.commit({"flows/a.py": "A = 2\n"})
        third = run("--run", path)

        assert (first.code, second.code, third.code) == (0, 0, 0), third.err
        assert first.outputs() == second.outputs() == third.outputs()
        assert unchanged == version
        assert os.readlink(published) != version
        assert Path(os.readlink(published)).name.startswith(commit[:7])
        assert (published / "flows" / "a.py").read_text() == "A = 2\n"
        assert (work / version / "flows" / "a.py").read_text() == "A = 1\n"


class TestOtherSteps:
    """pull_from_remote_storage and pull_with_block, settings from the block file."""

    def test_pull_from_remote_storage_with_blocks_and_variables(
        self,
        run: Runner,
        tmp_path: Path,
        s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The URL and endpoint from variables, the keys from a block (one a Secret)."""
        bucket = s3_server.new_bucket()
        s3_server.put(bucket, "flows/etl.py", "print('etl')\n")
        s3_server.put(bucket, "other/x.py", "x\n")
        monkeypatch.setenv("RS_TEST_S3_SECRET", s3_server.secret)
        blocks = tmp_path / "blocks.yaml"
        blocks.write_text(
            "aws-credentials:\n  moto:\n"
            f"    aws_access_key_id: {s3_server.key}\n"
            "    aws_secret_access_key: {env: RS_TEST_S3_SECRET}\n"
        )
        credentials = "prefect.blocks.aws-credentials.moto"
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "pull_from_remote_storage",
                    id="code",
                    url="s3://{{ prefect.variables.bucket }}/flows",
                    key=f"{{{{ {credentials}.aws_access_key_id }}}}",
                    secret=f"{{{{ {credentials}.aws_secret_access_key }}}}",
                    endpoint_url="{{ prefect.variables.s3_endpoint }}",
                ),
                step("set_working_directory", directory="{{ code.directory }}"),
                step("run_shell_script", script="ls\ncat etl.py"),
            ],
        )
        settings = config(tmp_path, blocks, bucket=bucket, s3_endpoint=s3_server.endpoint_url)

        ran = run("--run", path, "--config", settings)

        assert ran.code == 0, ran.err
        outputs = ran.outputs()
        assert outputs[0] == {"directory": f"{bucket}/flows"}
        assert outputs[2]["stdout"] == "etl.py\nprint('etl')"
        assert s3_server.secret not in ran.out

    def test_pull_with_block_from_the_configured_block_file(
        self, run: Runner, work: Path, tmp_path: Path
    ) -> None:
        """A local-file-system block of the settings' block file: published, then a no-op."""
        code = tmp_path / "code"
        (code / "flows").mkdir(parents=True)
        (code / "flows" / "etl.py").write_text("print('etl')\n")
        blocks = tmp_path / "blocks.toml"
        blocks.write_text(f'[local-file-system.flows]\nbasepath = "{code}"\n')
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "pull_with_block",
                    block_document_name="flows",
                    block_type_slug="local-file-system",
                )
            ],
        )
        settings = config(tmp_path, blocks)

        first = run("--run", path, "--config", settings)
        version = os.readlink(work / "local-file-system-flows")
        second = run("--run", path, "--config", settings)

        assert (first.code, second.code) == (0, 0), first.err + second.err
        assert first.outputs() == [{"directory": "local-file-system-flows"}]
        assert (work / "local-file-system-flows" / "flows" / "etl.py").is_file()
        assert os.readlink(work / "local-file-system-flows") == version

    def test_run_shell_script_expands_its_own_env(self, run: Runner, tmp_path: Path) -> None:
        """Prefect's docstring example: ``echo "Hello $NAME"`` with ``env: {NAME: World}``."""
        path = prefect_yaml(
            tmp_path,
            [
                step(
                    "run_shell_script",
                    script='echo "Hello $NAME"',
                    env={"NAME": "World"},
                    expand_env_vars=True,
                )
            ],
        )
        ran = run("--run", path)
        assert ran.code == 0, ran.err
        assert ran.outputs() == [{"stdout": "Hello World", "stderr": ""}]

    def test_run_shell_script_through_the_shell(self, run: Runner, tmp_path: Path) -> None:
        """``shell: true`` (Prefect 3.9) runs each line through /bin/sh: a pipe works."""
        path = prefect_yaml(
            tmp_path,
            [step("run_shell_script", script="printf 'b\\na\\n' | sort", **{"shell": True})],
        )
        ran = run("--run", path)
        assert ran.code == 0, ran.err
        assert ran.outputs() == [{"stdout": "a\nb", "stderr": ""}]

    def test_without_shell_a_pipe_is_an_argument(self, run: Runner, tmp_path: Path) -> None:
        """Without ``shell``, as Prefect, no shell runs: ``|`` reaches echo as a word."""
        path = prefect_yaml(tmp_path, [step("run_shell_script", script="echo a | sort")])
        ran = run("--run", path)
        assert ran.code == 0, ran.err
        assert ran.outputs() == [{"stdout": "a | sort", "stderr": ""}]


CUSTOM_STEPS = '''\
"""Step functions of a user's own package."""
import asyncio
import pathlib


def record(**inputs):
    """Return what it was given, as a step output."""
    return {"received": inputs}


async def arecord(**inputs):
    """The same, awaited."""
    await asyncio.sleep(0)
    return {"count": len(inputs)}


def fail(**inputs):
    """Fail as a user's function fails."""
    raise ValueError("the deploy key expired")


def give_path(**inputs):
    """Return an output that is no plain data (Prefect's run_steps keeps it as it is)."""
    return {"where": pathlib.Path("/srv/flows")}
'''


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh importable module of step functions (on ``sys.path``)."""
    name = f"rs_custom_steps_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{name}.py").write_text(CUSTOM_STEPS)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


class TestCustomSteps:
    """Functions that are no known step: imported by name, called with rendered inputs."""

    def test_receives_rendered_inputs(
        self,
        run: Runner,
        tmp_path: Path,
        custom_module: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Secrets revealed, variables keeping their type, step outputs and env as text.

        ``id`` and ``requires`` are Prefect's keywords: taken out, never passed.
        """
        monkeypatch.setenv("RS_TEST_WHO", "world")
        blocks = tmp_path / "blocks.toml"
        blocks.write_text('[secret.api]\nvalue = { value = "literal-api-key" }\n')
        path = prefect_yaml(
            tmp_path,
            [
                step("run_shell_script", id="greet", script="echo hello"),
                step(
                    f"{custom_module}.record",
                    id="rec",
                    requires="my-steps>=1",
                    token="{{ prefect.blocks.secret.api }}",
                    depth="{{ prefect.variables.depth }}",
                    dirs="{{ prefect.variables.dirs }}",
                    greeting="{{ greet.stdout }} {{ $RS_TEST_WHO }}",
                    nested={"items": ["{{ $RS_TEST_WHO }}", 1, None]},
                ),
                step(f"{custom_module}.arecord", a="{{ rec.received.depth }}", b=2),
            ],
        )

        ran = run("--run", path, "--config", config(tmp_path, blocks, depth=3, dirs=["f"]))

        assert ran.code == 0, ran.err
        assert ran.outputs()[1:] == [
            {
                "received": {
                    "token": "literal-api-key",
                    "depth": 3,
                    "dirs": ["f"],
                    "greeting": "hello world",
                    "nested": {"items": ["world", 1, None]},
                }
            },
            {"count": 2},
        ]

    def test_a_failing_function_exits_1_naming_the_step(
        self, run: Runner, tmp_path: Path, custom_module: str
    ) -> None:
        """The user's exception: one line with its type and message; nothing printed."""
        path = prefect_yaml(tmp_path, [step(f"{custom_module}.fail", x=1)])
        ran = run("--run", path)
        assert ran.code == 1
        assert ran.out == ""
        (line,) = ran.error_lines()
        assert "deployment 'acme'" in line
        assert "step 1 (fail)" in line
        assert "ValueError: the deploy key expired" in line

    def test_an_output_that_is_no_plain_data_is_no_traceback(
        self, run: Runner, tmp_path: Path, custom_module: str
    ) -> None:
        """The steps ran; printing their outputs must not crash the command."""
        path = prefect_yaml(tmp_path, [step(f"{custom_module}.give_path")])
        ran = run("--run", path)
        assert ran.code == 0, ran.err

    @pytest.mark.parametrize(
        ("requires", "hint"),
        [
            ("my-steps>=1.2", "(install what its requires names: my-steps>=1.2)"),
            (None, ": install the package that provides it"),
        ],
    )
    def test_unimportable_step_exits_2_naming_it(
        self, run: Runner, work: Path, tmp_path: Path, requires: str | None, hint: str
    ) -> None:
        """A function that does not import: exit 2, its name and ``requires`` in one line."""
        inputs = {"requires": requires} if requires else {}
        path = prefect_yaml(
            tmp_path,
            [
                step("run_shell_script", script="touch before"),
                step("rs_no_such_package.steps.pull", **inputs, x=1),
                step("run_shell_script", script="touch after"),
            ],
        )
        ran = run("--run", path)
        assert ran.code == 2
        assert ran.out == ""
        (line,) = ran.error_lines()
        assert "deployment 'acme', step 2 (pull)" in line
        assert "cannot import rs_no_such_package.steps.pull" in line
        assert line.endswith(hint)
        assert not (work / "after").exists()


class TestFailures:
    """What fails, and how: exit 1 at run time, exit 2 for the file and its inputs."""

    def test_a_failing_shell_command_exits_1_in_one_line(
        self, run: Runner, work: Path, tmp_path: Path
    ) -> None:
        """A command exiting non-zero: one line with the step and the command's last words.

        The steps after it do not run, and no document is printed.
        """
        path = prefect_yaml(
            tmp_path,
            [
                step("run_shell_script", script="sh -c 'echo partial; echo disk full >&2; exit 3'"),
                step("run_shell_script", script="touch after"),
            ],
        )
        ran = run("--run", path)
        assert ran.code == 1
        assert ran.out == ""
        (line,) = ran.error_lines()
        assert "deployment 'acme'" in line
        assert "step 1 (run_shell_script)" in line
        assert "'sh' exited 3: disk full" in line
        assert not (work / "after").exists()

    def test_a_failing_command_streams_its_output_first(self, run: Runner, tmp_path: Path) -> None:
        """What a failing command printed is on stderr, before the line naming the step."""
        path = prefect_yaml(
            tmp_path, [step("run_shell_script", script="sh -c 'echo before-failing; exit 4'")]
        )
        ran = run("--run", path)
        assert ran.code == 1
        assert "before-failing" in ran.err
        assert ran.err.index("before-failing") < ran.err.index("runner-storage:")

    def test_a_failing_shell_command_names_the_step_once(self, run: Runner, tmp_path: Path) -> None:
        """The deployment and step appear once in the line, as for every other failure."""
        path = prefect_yaml(tmp_path, [step("run_shell_script", script="false")])
        ran = run("--run", path)
        (line,) = ran.error_lines()
        assert line.count("step 1 (run_shell_script)") == 1

    def test_unresolvable_placeholder_exits_2_naming_it_and_the_deployment(
        self, run: Runner, work: Path, tmp_path: Path
    ) -> None:
        """A variable nobody set: one line naming it, the deployment and step; nothing runs."""
        path = prefect_yaml(
            tmp_path,
            deployments=[
                {"name": "dev"},
                {
                    "name": "prod",
                    "pull": [
                        step("git_clone", repository="{{ prefect.variables.repo_url }}"),
                    ],
                },
            ],
        )
        ran = run("--run", path, "--deployment", "prod")
        assert ran.code == 2
        assert ran.out == ""
        (line,) = ran.error_lines()
        assert line == (
            f"runner-storage: {path}: deployment 'prod', step 1 (git_clone):"
            " {{ prefect.variables.repo_url }} cannot be resolved: no variable 'repo_url':"
            " add it to the variables table"
        )
        assert list(work.iterdir()) == []

    def test_a_bad_block_placeholder_in_text_exits_2(self, run: Runner, tmp_path: Path) -> None:
        """A whole block written inline into a script: refused before the command runs."""
        blocks = tmp_path / "blocks.toml"
        blocks.write_text('[github-credentials.acme]\nusername = "u"\ntoken = "t"\n')
        path = prefect_yaml(
            tmp_path,
            [step("run_shell_script", script="echo {{ prefect.blocks.github-credentials.acme }}")],
        )
        ran = run("--run", path, "--config", config(tmp_path, blocks))
        assert ran.code == 2
        (line,) = ran.error_lines()
        assert "{{ prefect.blocks.github-credentials.acme }} cannot be resolved: it is a dict" in (
            line
        )

    def test_several_deployments_need_one_named(self, run: Runner, tmp_path: Path) -> None:
        """Without ``--deployment`` a file of several is refused, listing them; so is a typo."""
        path = prefect_yaml(
            tmp_path,
            [step("run_shell_script", script="echo top")],
            deployments=[{"name": "etl"}, {"name": "report"}],
        )
        several = run("--run", path)
        unknown = run("--run", path, "--deployment", "nightly")
        chosen = run("--run", path, "--deployment", "report")

        assert several.code == unknown.code == 2
        assert several.error_lines() == [
            f"runner-storage: {path} has deployments 'etl', 'report': pick one with"
            " --deployment NAME"
        ]
        (line,) = unknown.error_lines()
        assert "no deployment 'nightly'" in line
        assert "'etl', 'report'" in line
        assert chosen.code == 0, chosen.err
        assert chosen.outputs() == [{"stdout": "top", "stderr": ""}]

    def test_deployment_without_run_exits_2(self, run: Runner) -> None:
        """``--deployment`` alone names nothing to run."""
        ran = run("--deployment", "etl")
        assert ran.code == 2
        assert ran.error_lines() == [
            "runner-storage: --deployment applies to --run FILE: give the prefect.yaml to run"
        ]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (None, "cannot read prefect.yaml"),
            ("pull: [\n", "cannot be parsed"),
            ("pull: {a: 1}\n", "pull must be a list of steps"),
            ("pull:\n- a.b: 1\n  c.d: 2\n", "step 1 must be one function name with its inputs"),
        ],
    )
    def test_bad_file_exits_2_in_one_line(
        self, run: Runner, tmp_path: Path, text: str | None, expected: str
    ) -> None:
        """A file missing, unparseable or not shaped as Prefect's: one line, exit 2."""
        path = tmp_path / "prefect.yaml"
        if text is not None:
            path.write_text(text)
        ran = run("--run", path)
        assert ran.code == 2
        (line,) = ran.error_lines()
        assert expected in line
        assert str(path) in line
