"""What each entry point imports: a backend or service dependency loads only when used.

Every check runs in a fresh interpreter, since this process has imported everything
already, and reads the child's ``sys.modules`` at the end (or when it leaves through
``os._exit``). A new top-level import of something heavy fails one of these tests instead
of silently slowing the CLI and growing the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from servers.gitrepo import UpstreamRepoFactory

#: Object-store backends and their HTTP stack: only object-store sources need them.
OBJECT_STORES = ("fsspec", "s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "aiohttp")

#: What the service loads for some commands only.
SERVICE = (
    "pydantic",
    "pydantic_settings",
    "structlog",
    "prometheus_client",
    "anyio",
    "yaml",
    "importlib.metadata",
)

#: Parsers pydantic-settings loads when a config file of their format is read.
FILE_PARSERS = ("yaml", "tomllib", "tomli")

_MARK = "@@modules "

# Runs first in the child: report the modules however the process ends (the CLI may leave
# through os._exit when a thread lingers).
_PRELUDE = f"""
import json as _json, os as _os, sys as _sys
def _report():
    print({_MARK!r} + _json.dumps(sorted(_sys.modules)), flush=True)
_real_exit = _os._exit
def _exit(code):
    _report()
    _real_exit(code)
_os._exit = _exit
"""

_EPILOGUE = "\n_report()\n"


def run_child(code: str) -> tuple[set[str], str]:
    """Run ``code`` in a fresh interpreter; return its ``sys.modules`` names and its output."""
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code + _EPILOGUE],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith(_MARK)]
    assert reports, f"no module report; exit {result.returncode}\n{result.stderr[-2000:]}"
    return set(json.loads(reports[0].removeprefix(_MARK))), result.stdout


def modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` of a fresh interpreter after it ran ``code``."""
    return run_child(code)[0]


def run_cli(*args: str) -> str:
    """Code that runs ``runner-storage ARGS`` in process, as the console script does."""
    return f"""
from service.cli import main
try:
    code = main({list(args)!r})
except SystemExit as exc:
    code = exc.code
print("exit", code)
"""


def loaded(modules: set[str], names: Iterable[str]) -> list[str]:
    """The ``names`` that are loaded: the module itself or any of its submodules."""
    return [name for name in names if any(m == name or m.startswith(f"{name}.") for m in modules)]


class TestLibrary:
    """``import runner_storage`` and its lazily loaded storages."""

    def test_package_import_loads_no_backend(self) -> None:
        """Importing the package loads no backend, pydantic or anyio."""
        modules = modules_after("import runner_storage")
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, SERVICE) == []
        assert loaded(modules, ["runner_storage.git.repository", "runner_storage.blocks"]) == []
        assert loaded(modules, ["runner_storage.remote", "runner_storage.fs"]) == []
        assert loaded(modules, ["runner_storage.publish"]) == []

    def test_git_repository_loads_no_object_store(self) -> None:
        """The git backend loads none of the object-store stack, nor pydantic."""
        modules = modules_after("from runner_storage import GitRepository")
        assert "runner_storage.git.repository" in modules
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, ["pydantic", "runner_storage.remote"]) == []

    def test_git_source_from_factory_loads_no_object_store(self) -> None:
        """create_storage_from_source for a git URL decides without asking fsspec."""
        modules = modules_after(
            "from runner_storage import create_storage_from_source\n"
            "storage = create_storage_from_source('https://example.com/org/repo.git')\n"
            "assert type(storage).__name__ == 'GitRepository'\n"
        )
        assert loaded(modules, OBJECT_STORES) == []

    def test_object_store_source_loads_its_filesystem_only_when_pulling(self) -> None:
        """An s3:// storage loads fsspec when it is created, s3fs not yet, other stores never."""
        modules = modules_after(
            "from runner_storage import create_storage_from_source\n"
            "storage = create_storage_from_source('s3://bucket/flows')\n"
            "assert type(storage).__name__ == 'RemoteStorage'\n"
        )
        assert "fsspec" in modules
        assert loaded(modules, ["s3fs", "gcsfs", "adlfs", "botocore", "aiohttp"]) == []

    def test_block_adapter_loads_on_first_use(self) -> None:
        """BlockStorageAdapter is imported when first named, still without pydantic."""
        modules = modules_after(
            "import sys, runner_storage\n"
            "assert 'runner_storage.blocks.adapter' not in sys.modules\n"
            "adapter = runner_storage.BlockStorageAdapter\n"
            "assert adapter.__module__ == 'runner_storage.blocks.adapter'\n"
        )
        assert "runner_storage.blocks.adapter" in modules
        assert loaded(modules, ["pydantic", *OBJECT_STORES]) == []

    def test_secrets_work_without_pydantic_and_with_it(self) -> None:
        """Secret needs no pydantic; a SecretStr made later is still recognised as a secret."""
        modules = modules_after(
            "import sys\n"
            "from runner_storage.secrets import Secret, is_secret_like, resolve_secret\n"
            "assert Secret('tok').get() == 'tok' and Secret('tok') == Secret('tok')\n"
            "assert not is_secret_like('plain') and resolve_secret('plain') == 'plain'\n"
            "assert 'pydantic' not in sys.modules\n"
            "from pydantic import SecretStr\n"
            "assert is_secret_like(SecretStr('s')) and resolve_secret(SecretStr('s')) == 's'\n"
            "assert Secret(SecretStr('s')) == Secret('s')\n"
        )
        assert "pydantic" in modules


class TestCommands:
    """The CLI commands that must start fast load only what they use."""

    def test_version(self) -> None:
        """--version reads the package metadata and nothing else of note."""
        modules = modules_after(run_cli("--version"))
        assert "importlib.metadata" in modules
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, [m for m in SERVICE if m != "importlib.metadata"]) == []

    def test_help(self) -> None:
        """--help needs argparse only, not even the version."""
        modules = modules_after(run_cli("--help"))
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, SERVICE) == []

    def test_status_of_an_empty_root(self, tmp_path: Path) -> None:
        """Status reads state files: no settings, logging, async or backend libraries."""
        modules, output = run_child(run_cli("status", "--root", str(tmp_path)))
        assert f"no sources published under {tmp_path}" in output
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, SERVICE) == []
        assert loaded(modules, ["runner_storage.git.repository", "runner_storage.fs"]) == []
        engine = ["runner_storage.publish.managed", "runner_storage.publish.publisher"]
        assert loaded(modules, engine) == []

    def test_steps_of_a_git_source(self, tmp_path: Path) -> None:
        """Steps of a git source from a TOML file: settings yes, YAML and object stores no."""
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{tmp_path / "root"}"\n'
            "[[sources]]\n"
            'source = "https://example.com/org/flows.git"\n'
        )
        modules = modules_after(run_cli("steps", "--format", "json", "--config", str(config)))
        assert "runner_storage.git.repository" in modules
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, ["yaml", "prometheus_client", "service.daemon"]) == []

    def test_pull_of_a_git_source(self, tmp_path: Path, upstream_repo: UpstreamRepoFactory) -> None:
        """Pulling a git source loads no object store, metrics, HTTP or file parsers.

        Nor the daemon's settings: pydantic-settings costs a tenth of a second.
        """
        repo = upstream_repo()
        code = run_cli("pull", repo.file_url, "--dest", str(tmp_path), "--name", "flows")
        env = "import os\nos.environ['RUNNER_STORAGE_KEEP_VERSIONS'] = '2'\n"
        modules = modules_after(env + code + "assert code == 0, code\n")
        assert (tmp_path / "flows").is_dir()
        assert loaded(modules, OBJECT_STORES) == []
        assert loaded(modules, ["prometheus_client", "service.daemon", *FILE_PARSERS]) == []
        assert loaded(modules, ["pydantic_settings", "service.config"]) == []


class TestDaemon:
    """``runner-storage run``: the daemon loads the HTTP and object-store stacks when used."""

    def test_git_sources_without_http_load_no_aiohttp(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """Git sources, no http_port and no webhook: neither aiohttp nor fsspec is loaded."""
        repo = upstream_repo()
        config = tmp_path / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "root": str(tmp_path / "root"),
                    "http_port": None,
                    "log_level": "warning",
                    "sources": [{"source": repo.file_url, "name": "flows"}],
                }
            )
        )
        code = run_cli("run", "--once", "--config", str(config))
        modules = modules_after(code + "assert code == 0, code\n")
        assert (tmp_path / "root" / "flows").is_dir()
        assert "prometheus_client" in modules
        assert loaded(modules, OBJECT_STORES) == []

    def test_git_sources_with_http_load_the_server_only(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """With http_port, aiohttp's server is loaded; the object-store stack still is not."""
        repo = upstream_repo()
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{tmp_path / "root"}"\n'
            "http_port = 0\n"
            'log_level = "warning"\n'
            "[[sources]]\n"
            f'source = "{repo.file_url}"\n'
            'name = "flows"\n'
        )
        code = run_cli("run", "--once", "--config", str(config))
        modules = modules_after(code + "assert code == 0, code\n")
        assert "aiohttp.web" in modules
        assert loaded(modules, ["fsspec", "s3fs", "gcsfs", "adlfs", "botocore"]) == []

    def test_daemon_module_loads_no_http_client(self) -> None:
        """service.daemon loads aiohttp only when a webhook is posted."""
        modules = modules_after("import service.daemon")
        assert loaded(modules, OBJECT_STORES) == []
