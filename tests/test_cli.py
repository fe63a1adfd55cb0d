"""The ``runner-storage`` command as users run it: output, files and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml
from daemon_process import RUNNER_STORAGE, cli
from servers.gitrepo import UpstreamRepoFactory
from servers.procs import LOOPBACK, free_port

from runner_storage import __version__


def config_file(tmp_path: Path, body: str, root: Path | None = None) -> Path:
    """Write a config with ``root`` set and return its path."""
    path = tmp_path / "config.toml"
    path.write_text(f'root = "{root or tmp_path / "root"}"\n{body}')
    return path


class TestGeneral:
    """--version, --help and usage errors."""

    def test_version(self) -> None:
        """--version prints the package version and exits 0."""
        result = cli("--version")
        assert result.returncode == 0
        assert result.stdout.strip() == f"runner-storage {__version__}"

    def test_help_everywhere(self) -> None:
        """Every command has --help, and the top level documents the exit codes."""
        top = cli("--help")
        assert top.returncode == 0
        assert "2 usage or configuration error" in top.stdout
        for command in ("run", "pull", "steps", "check", "status"):
            assert cli(command, "--help").returncode == 0

    def test_unknown_command_is_a_usage_error(self) -> None:
        """A typo exits 2 with argparse's message."""
        result = cli("pul")
        assert result.returncode == 2
        assert "invalid choice" in result.stderr


class TestPull:
    """``runner-storage pull``: one source, once."""

    def test_publishes_then_reports_up_to_date(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """The first pull publishes, the second is a no-op; both exit 0 and say so."""
        repo = upstream_repo()
        dest = tmp_path / "code"
        first = cli("pull", repo.file_url, "--dest", str(dest), "--name", "flows")
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith(f"published: {dest / 'flows'} at {repo.head()[:12]}")
        assert (dest / "flows" / "flows" / "a.py").is_file()
        second = cli("pull", repo.file_url, "--dest", str(dest), "--name", "flows", "--json")
        assert second.returncode == 0
        result = json.loads(second.stdout)
        assert result["changed"] is False
        assert result["revision"] == repo.head()
        assert result["destination"] == str(dest / "flows")

    def test_a_sidecars_environment_does_not_leak_into_pull(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """``pull`` run inside a configured container pulls what it is told, and only that."""
        repo = upstream_repo()
        sidecar = {"RUNNER_STORAGE_SOURCE": "s3://bucket/flows", "RUNNER_STORAGE_HTTP_PORT": "x"}
        result = cli("pull", repo.file_url, "--dest", str(tmp_path), "--name", "a", env=sidecar)
        assert result.returncode == 0, result.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == [".runner-storage", "a"]

    def test_retention_from_the_environment(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """RUNNER_STORAGE_KEEP_VERSIONS and _GRACE_PERIOD apply to pull; a bad one exits 2."""
        repo = upstream_repo()
        env = {"RUNNER_STORAGE_KEEP_VERSIONS": "1", "RUNNER_STORAGE_GRACE_PERIOD": "0"}
        args = ("pull", repo.file_url, "--dest", str(tmp_path), "--name", "a")
        assert cli(*args, env=env).returncode == 0
        repo.commit({"README.md": "second\n"})
        assert cli(*args, env=env).returncode == 0
        versions = tmp_path / ".runner-storage" / "a" / "versions"
        assert [v.name[:40] for v in versions.iterdir()] == [repo.head()]
        bad = cli(*args, env={"RUNNER_STORAGE_KEEP_VERSIONS": "none"})
        assert bad.returncode == 2
        assert "keep_versions" in bad.stderr
        assert "RUNNER_STORAGE_KEEP_VERSIONS" in bad.stderr

    def test_sparse_directories(self, tmp_path: Path, upstream_repo: UpstreamRepoFactory) -> None:
        """--directories publishes only those directories (and top-level files)."""
        repo = upstream_repo()
        result = cli("pull", repo.file_url, "--dest", str(tmp_path), "--directories", "lib")
        assert result.returncode == 0, result.stderr
        tree = tmp_path / repo.name
        assert (tree / "lib").is_dir()
        assert not (tree / "flows").exists()

    def test_unreachable_sources_exit_1_without_promising_a_retry(self, tmp_path: Path) -> None:
        """A network failure of a one-shot pull exits 1, and nothing claims it will be retried.

        Nothing retries a one-shot pull: neither the git nor the object-store message may
        say so. Both sources point at a closed port on 127.0.0.1.
        """
        port = free_port()  # released at once: nothing listens there
        for source in (
            f"http://{LOOPBACK}:{port}/org/repo.git",
            f"http://{LOOPBACK}:{port}/files/",
        ):
            result = cli("pull", source, "--dest", str(tmp_path / "out"))
            assert result.returncode == 1, (source, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith("runner-storage: pull failed:")
            assert "retried" not in result.stderr
            assert not (tmp_path / "out" / "repo").exists()

    def test_missing_local_folder_is_a_usage_error(self, tmp_path: Path) -> None:
        """A local path that does not exist is bad input: one line, exit 2."""
        missing = tmp_path / "no-such-folder"
        result = cli("pull", str(missing), "--dest", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [
            f"runner-storage: {missing} does not exist or is not a directory: give an existing"
            " folder, or a git or object-store URL"
        ]

    def test_git_option_on_an_object_store_source(self, tmp_path: Path) -> None:
        """--branch on an s3:// source names the option and the kind: exit 2, one line."""
        result = cli("pull", "s3://bucket/flows", "--dest", str(tmp_path), "--branch", "main")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "runner-storage: --branch: only applies to git sources, and 's3://bucket/flows'"
            " is remote"
        ]

    def test_missing_repository_exits_1(self, tmp_path: Path) -> None:
        """A pull that fails at runtime exits 1 with one line on stderr."""
        missing = (tmp_path / "missing.git").as_uri()
        result = cli("pull", missing, "--dest", str(tmp_path / "out"))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("runner-storage: pull failed:")

    def test_bad_option_exits_2(self, tmp_path: Path) -> None:
        """Bad input (an option-like branch) exits 2 before anything is written."""
        result = cli(
            "pull",
            "https://example.invalid/r.git",
            "--dest",
            str(tmp_path / "o"),
            "--branch=--upload-pack=touch /tmp/x",
        )
        assert result.returncode == 2
        assert "branch" in result.stderr
        assert not (tmp_path / "o").exists()


class TestSteps:
    """``runner-storage steps``: the prefect.yaml pull section."""

    def test_yaml_with_placeholders(self, tmp_path: Path) -> None:
        """Secrets become placeholders; the YAML is what prefect.yaml expects."""
        path = config_file(
            tmp_path,
            '[[sources]]\nsource = "https://github.com/acme/flows.git"\nbranch = "main"\n'
            'directories = ["flows"]\n'
            'credentials = { token = { env = "GITHUB_TOKEN" } }\n'
            '[[sources]]\nsource = "s3://bucket/models"\n'
            'settings = { key = { env = "AWS_KEY" }, secret = { file = "/s", name = "aws" } }\n',
        )
        result = cli("steps", "--config", str(path))
        assert result.returncode == 0, result.stderr
        assert yaml.safe_load(result.stdout) == {
            "pull": [
                {
                    "prefect.deployments.steps.git_clone": {
                        "repository": "https://github.com/acme/flows.git",
                        "branch": "main",
                        "directories": ["flows"],
                        "credentials": {"access_token": "{{ $GITHUB_TOKEN }}"},
                    }
                },
                {
                    "prefect.deployments.steps.pull_from_remote_storage": {
                        "url": "s3://bucket/models",
                        "key": "{{ $AWS_KEY }}",
                        "secret": "{{ prefect.blocks.secret.aws }}",
                        "requires": "s3fs",
                    }
                },
            ]
        }

    def test_json_format(self, tmp_path: Path) -> None:
        """--format json prints the same steps as JSON."""
        path = config_file(tmp_path, '[[sources]]\nsource = "/srv/flows"\n')
        result = cli("steps", "--config", str(path), "--format", "json")
        assert json.loads(result.stdout) == {
            "pull": [
                {"prefect.deployments.steps.set_working_directory": {"directory": "/srv/flows"}}
            ]
        }

    def test_plain_token_refused(self, tmp_path: Path) -> None:
        """A literal token cannot go into a pull step: exit 2, and the token is not printed."""
        path = config_file(
            tmp_path,
            '[[sources]]\nsource = "https://h.example/r.git"\n'
            'credentials = { token = "tok-CANARY-steps" }\n',
        )
        result = cli("steps", "--config", str(path))
        assert result.returncode == 2
        assert "Secret.from_env" in result.stderr
        assert "tok-CANARY-steps" not in result.stdout + result.stderr


class TestCheckAndStatus:
    """``check`` reaches sources without publishing; ``status`` reads state.json."""

    def test_check(self, tmp_path: Path, upstream_repo: UpstreamRepoFactory) -> None:
        """`check` resolves each source, publishes nothing, and exits 1 if one fails."""
        repo = upstream_repo()
        missing = (tmp_path / "missing.git").as_uri()
        good = config_file(tmp_path, f'[[sources]]\nname = "a"\nsource = "{repo.file_url}"\n')
        result = cli("check", "--config", str(good))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"ok   a: {repo.head()}"
        assert not (tmp_path / "root" / "a").exists()
        bad = config_file(tmp_path, f'[[sources]]\nname = "b"\nsource = "{missing}"\n')
        result = cli("check", "--config", str(bad))
        assert result.returncode == 1
        assert result.stdout.startswith("FAIL b: ")

    def test_status_table_and_json(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """`status` lists each published source with its revision."""
        repo = upstream_repo()
        root = tmp_path / "root"
        assert cli("pull", repo.file_url, "--dest", str(root), "--name", "code").returncode == 0
        table = cli("status", "--root", str(root))
        assert table.returncode == 0
        header, row = table.stdout.strip().splitlines()
        assert header.split()[:2] == ["NAME", "REVISION"]
        assert row.split()[:2] == ["code", repo.head()[:12]]
        data = json.loads(cli("status", "--root", str(root), "--json").stdout)
        assert data["sources"][0]["name"] == "code"
        assert data["sources"][0]["revision"] == repo.head()
        assert cli("status", "--root", str(tmp_path / "empty")).stdout.startswith("no sources")


class TestRun:
    """``run --once`` and configuration errors."""

    def test_once_exit_codes(self, tmp_path: Path, upstream_repo: UpstreamRepoFactory) -> None:
        """--once exits 0 when every source succeeded and 1 when any failed."""
        repo = upstream_repo()
        missing = (tmp_path / "missing.git").as_uri()
        good = f'[[sources]]\nname = "a"\nsource = "{repo.file_url}"\n'
        env = {"RUNNER_STORAGE_HTTP_PORT": "0"}
        ok = cli("run", "--once", "--config", str(config_file(tmp_path, good)), env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert (tmp_path / "root" / "a" / "README.md").is_file()
        bad = good + f'[[sources]]\nname = "b"\nsource = "{missing}"\n'
        failed = cli("run", "--once", "--config", str(config_file(tmp_path, bad)), env=env)
        assert failed.returncode == 1

    def test_config_errors_exit_2_with_one_line_each(self, tmp_path: Path) -> None:
        """Every problem is one line on stderr; exit 2; nothing is created."""
        path = config_file(
            tmp_path,
            '[[sources]]\nsource = "s3://b/p"\nbranch = "main"\n'
            '[[sources]]\nsource = "x"\npull_interval = 0\n',
        )
        result = cli("run", "--config", str(path))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines == [
            "runner-storage: sources[0].branch: only applies to git sources, and 's3://b/p'"
            f" is remote (from {path})",
            "runner-storage: sources[1].pull_interval: Input should be greater than 0"
            f" (from {path})",
        ]
        assert not (tmp_path / "root").exists()

    def test_sources_that_would_share_or_nest_folders(self, tmp_path: Path) -> None:
        """Two sources publishing to one folder, or one inside another, are refused up front."""
        path = config_file(
            tmp_path,
            '[[sources]]\nsource = "https://git.example/org/flows.git"\ndirectories = "a"\n'
            '[[sources]]\nsource = "https://git.example/org/flows.git"\ndirectories = "b"\n'
            '[[sources]]\nname = "team"\nsource = "s3://bucket/a"\n'
            '[[sources]]\nname = "team/models"\nsource = "s3://bucket/b"\n',
        )
        result = cli("check", "--config", str(path))
        assert result.returncode == 2
        root = tmp_path / "root"
        assert result.stderr.strip().splitlines() == [
            f"runner-storage: sources[1] uses {root / 'flows'}, as sources[0] does; give one"
            " of them another name",
            f"runner-storage: sources[3] publishes to {root / 'team' / 'models'}, which nests"
            f" with sources[2]'s {root / 'team'}; give them names that do not contain each"
            " other",
        ]
        assert not root.exists()

    def test_option_that_does_not_fit_the_source(self, tmp_path: Path) -> None:
        """A git-only option on an object-store source is refused, naming both."""
        path = config_file(tmp_path, '[[sources]]\nsource = "s3://b/p"\nbranch = "main"\n')
        result = cli("check", "--config", str(path))
        assert result.returncode == 2
        assert "sources[0].branch: only applies to git sources" in result.stderr

    def test_no_sources(self, tmp_path: Path) -> None:
        """A config without sources is a configuration error that says how to add one."""
        result = cli("run", "--config", str(config_file(tmp_path, "")))
        assert result.returncode == 2
        assert "RUNNER_STORAGE_SOURCE" in result.stderr


def run_on_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``runner-storage ARGS`` with stdout and stderr on a pseudo-terminal."""
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [RUNNER_STORAGE, *args],
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=secondary,
            env={**os.environ, **(env or {})},
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=60)
    finally:
        os.close(primary)
    return code, b"".join(chunks).decode(errors="replace")


class TestTerminal:
    """On a terminal: a progress display and human-readable logs."""

    def test_pull_shows_progress_then_a_summary(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """``pull`` draws a spinner with the elapsed time, clears it, then prints the summary."""
        repo = upstream_repo()
        code, output = run_on_terminal("pull", repo.file_url, "--dest", str(tmp_path))
        assert code == 0, output
        assert "pulling " in output
        assert "\x1b[K" in output  # the spinner line is cleared before the summary
        last = output.rstrip().splitlines()[-1]
        assert last.replace("\r", "").replace("\x1b[K", "").startswith("published: ")

    def test_daemon_logs_are_console_lines_on_a_terminal(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """``run`` logs readable lines, not JSON, when stdout is a terminal."""
        repo = upstream_repo()
        path = config_file(tmp_path, f'[[sources]]\nname = "a"\nsource = "{repo.file_url}"\n')
        code, output = run_on_terminal(
            "run", "--once", "--config", str(path), env={"RUNNER_STORAGE_HTTP_PORT": "0"}
        )
        assert code == 0, output
        plain = re.sub(r"\x1b\[[0-9;]*m", "", output)  # drop the colours
        finished = next(line for line in plain.splitlines() if "sync_finished" in line)
        assert not finished.lstrip().startswith("{")
        assert "source=a" in finished
        assert "changed=True" in finished
