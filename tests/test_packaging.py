"""Packagers end to end: a flow script written to real storage, its manifest, and back.

A script packaged on one machine is unpackaged on another base path byte for byte, from
the manifest alone (JSON, secrets as placeholders). S3 is moto; local storage is disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from daemon_process import cli
from servers.s3 import S3Server

from runner_storage import Secret
from runner_storage.blocks.storage import (
    FileStorageBlock,
    KVServerStorageBlock,
    LocalStorageBlock,
    S3StorageBlock,
    TempStorageBlock,
)
from runner_storage.deployments.steps import pull_package
from runner_storage.exceptions import (
    ConfigurationError,
    CredentialsError,
    DeploymentValidationError,
    NotFoundError,
    SourceError,
)
from runner_storage.packaging import (
    DeploymentSpec,
    FilePackager,
    PackageManifest,
    ScriptPackager,
)

pytestmark = pytest.mark.anyio

FLOW = "from prefect import flow\n\n@flow\ndef etl() -> None:\n    print('etl')\n"
SECRET_VARIABLE = "RS_TEST_PACKAGE_S3_SECRET"
#: The S3 secret (moto takes any): distinctive, so a scan for it cannot match by chance.
CANARY = "canary-pkg-7f3a9c1e5b"


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    """A flow script on disk."""
    path = tmp_path / "project" / "etl.py"
    path.parent.mkdir()
    path.write_text(FLOW)
    return path


@pytest.fixture
def s3_storage(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3StorageBlock:
    """An S3StorageBlock on a fresh moto bucket; the secret comes from the environment."""
    monkeypatch.setenv(SECRET_VARIABLE, CANARY)
    return S3StorageBlock(
        s3_server.new_bucket("packages"),
        aws_access_key_id=s3_server.key,
        aws_secret_access_key=Secret.from_env(SECRET_VARIABLE),
        endpoint_url=s3_server.endpoint_url,
    )


def same_bytes(one: Path, other: Path) -> bool:
    """Whether two files hold the same bytes."""
    return one.read_bytes() == other.read_bytes()


def manifest_of(storage: dict[str, object]) -> PackageManifest:
    """A manifest of an ``etl.py`` script kept in ``storage`` (as a manifest describes it)."""
    return PackageManifest(
        type="script",
        flow_name="etl",
        flow_file="etl.py",
        key="k",
        sha256="0" * 64,
        storage=storage,
    )


def remote(flow: Path) -> DeploymentSpec:
    """A deployment of ``flow`` whose flows run elsewhere (Kubernetes)."""
    return DeploymentSpec("etl-prod", str(flow), infrastructure="kubernetes-job")


class TestScriptPackager:
    """ScriptPackager: the script to a storage block, a manifest back."""

    async def test_package_then_unpackage_elsewhere_is_byte_identical(
        self, flow_file: Path, s3_storage: S3StorageBlock, tmp_path: Path
    ) -> None:
        """The manifest alone (through JSON) brings the exact script to another folder."""
        manifest = await ScriptPackager(s3_storage).package(remote(flow_file))
        data = json.loads(json.dumps(manifest.to_dict()))
        assert data["type"] == "script"
        assert data["flow_name"] == "etl"
        assert data["flow_file"] == "etl.py"
        assert data["storage"]["aws_secret_access_key"] == f"{{{{ ${SECRET_VARIABLE} }}}}"
        runner = tmp_path / "runner"
        runner.mkdir()
        written = await PackageManifest.from_dict(data).unpackage(runner)
        assert written == runner / "etl.py"
        assert same_bytes(written, flow_file)

    async def test_the_manifest_holds_no_secret_value(
        self, flow_file: Path, s3_storage: S3StorageBlock
    ) -> None:
        """Neither the manifest nor its pull step holds the secret, in any form."""
        manifest = await ScriptPackager(s3_storage).package(remote(flow_file))
        text = json.dumps([manifest.to_dict(), manifest.to_pull_step()])
        assert CANARY not in text

    async def test_a_literal_secret_is_refused_before_anything_is_written(
        self, flow_file: Path, s3_server: S3Server
    ) -> None:
        """A secret with no placeholder would end up in the manifest: refused, one line."""
        bucket = s3_server.new_bucket("packages")
        storage = S3StorageBlock(
            bucket,
            aws_access_key_id=s3_server.key,
            aws_secret_access_key=CANARY,
            endpoint_url=s3_server.endpoint_url,
        )
        s3_server.reset_requests()
        with pytest.raises(ConfigurationError, match="aws_secret_access_key") as caught:
            await ScriptPackager(storage).package(remote(flow_file))
        assert CANARY not in str(caught.value)
        assert [r for r in s3_server.requests() if r.method == "PUT"] == []

    async def test_a_password_in_a_storage_url_is_refused(self, flow_file: Path) -> None:
        """A KV address with a login in it would end up in the manifest: refused, one line."""
        storage = KVServerStorageBlock("http://deploy:kv-pa55word@127.0.0.1:9/storage")
        with pytest.raises(ConfigurationError, match="password") as caught:
            await ScriptPackager(storage).package(remote(flow_file))
        assert "kv-pa55word" not in str(caught.value)

    async def test_a_changed_stored_script_is_refused(
        self, flow_file: Path, tmp_path: Path
    ) -> None:
        """Unpackage checks the sha256: a tampered object writes nothing."""
        storage = FileStorageBlock(tmp_path / "store", key_type="uuid")
        manifest = await ScriptPackager(storage).package(
            DeploymentSpec("etl", str(flow_file), infrastructure="docker-container")
        )
        (tmp_path / "store" / manifest.key).write_text("import os; os.system('evil')\n")
        runner = tmp_path / "runner"
        runner.mkdir()
        with pytest.raises(SourceError, match="sha256 differs"):
            await manifest.unpackage(runner)
        assert list(runner.iterdir()) == []

    async def test_a_missing_flow_script_is_not_found(self, tmp_path: Path) -> None:
        """A flow_location that does not exist is one NotFoundError line."""
        storage = FileStorageBlock(tmp_path / "store")
        with pytest.raises(NotFoundError, match="does not exist"):
            await ScriptPackager(storage).package(
                DeploymentSpec("etl", str(tmp_path / "nope.py"), infrastructure="docker")
            )


class TestCompatibility:
    """Prefect's rules: local storage only for flows that run on this machine."""

    async def test_local_infrastructure_without_storage_warns_and_uses_local_storage(
        self, flow_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No storage and the process infrastructure: a warning, then a LocalStorageBlock."""
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        packager = ScriptPackager()
        with pytest.warns(UserWarning, match="current machine"):
            manifest = await packager.package(DeploymentSpec("etl", str(flow_file)))
        assert isinstance(packager.storage, LocalStorageBlock)
        assert same_bytes(Path(manifest.key), flow_file)

    async def test_local_storage_for_local_infrastructure_warns(self, flow_file: Path) -> None:
        """Temp storage with the process infrastructure works, with a warning."""
        with pytest.warns(UserWarning, match="local storage"):
            await ScriptPackager(TempStorageBlock()).check_compat(
                DeploymentSpec("etl", str(flow_file))
            )

    @pytest.mark.parametrize("storage", [None, "local", "temp"])
    async def test_remote_infrastructure_needs_remote_storage(
        self, storage: str | None, flow_file: Path, tmp_path: Path
    ) -> None:
        """No storage or local storage for flows that run elsewhere: refused, saying why."""
        block = {
            None: None,
            "local": LocalStorageBlock(tmp_path / "local"),
            "temp": TempStorageBlock(),
        }[storage]
        with pytest.raises(DeploymentValidationError, match="needs remote storage") as caught:
            await ScriptPackager(block).check_compat(remote(flow_file))
        assert isinstance(caught.value, ConfigurationError)

    async def test_remote_storage_for_remote_infrastructure_passes(
        self, flow_file: Path, s3_storage: S3StorageBlock
    ) -> None:
        """An S3 block is what a Kubernetes deployment needs: no warning, no error."""
        await ScriptPackager(s3_storage).check_compat(remote(flow_file))


class TestManifest:
    """A manifest is data from anywhere: it is checked, and builds only known blocks."""

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"format": 2}, "not a runner-storage package manifest"),
            ({"sha256": 5}, "sha256 is missing"),
            ({"flow_file": "../../etc/cron.d/x"}, "not a plain file name"),
            ({"storage": "s3://x"}, "storage is missing"),
        ],
    )
    def test_malformed_manifests_are_one_line(
        self, change: dict[str, object], message: str
    ) -> None:
        """Each problem is one ConfigurationError line."""
        data = {
            "format": 1,
            "type": "script",
            "flow_name": "etl",
            "flow_file": "etl.py",
            "key": "k",
            "sha256": "0" * 64,
            "storage": {"type": "TempStorageBlock"},
            **change,
        }
        with pytest.raises(ConfigurationError, match=message):
            PackageManifest.from_dict(data)

    async def test_a_manifest_naming_another_class_builds_nothing(self, tmp_path: Path) -> None:
        """Only the block types runner-storage writes are ever built from a manifest."""
        manifest = manifest_of(
            {"type": "subprocess.Popen", "args": ["touch", str(tmp_path / "ran")]}
        )
        with pytest.raises(ConfigurationError, match="not one of"):
            await manifest.unpackage(tmp_path)
        assert not (tmp_path / "ran").exists()

    async def test_a_prefect_block_placeholder_needs_prefect(self, tmp_path: Path) -> None:
        """A ``{{ prefect.blocks.secret.X }}`` left unresolved says Prefect resolves it."""
        manifest = manifest_of(
            {
                "type": "S3StorageBlock",
                "bucket": "b",
                "aws_secret_access_key": "{{ prefect.blocks.secret.aws }}",
            }
        )
        with pytest.raises(CredentialsError, match="only Prefect resolves"):
            await manifest.fetch()


class TestFilePackager:
    """FilePackager: the script at its content's hash under a filesystem block."""

    async def test_key_is_the_hash_and_unpackage_gives_it_back(
        self, flow_file: Path, tmp_path: Path
    ) -> None:
        """The key is the sha256; the manifest unpackages it under the script's own name."""
        from runner_storage.blocks.filesystems import LocalFileSystem

        filesystem = LocalFileSystem(basepath=str(tmp_path / "fs"))
        manifest = await FilePackager(filesystem).package(DeploymentSpec("etl", str(flow_file)))
        assert manifest.type == "file"
        assert manifest.key == manifest.sha256
        runner = tmp_path / "runner"
        runner.mkdir()
        written = await PackageManifest.from_dict(manifest.to_dict()).unpackage(runner)
        assert same_bytes(written, flow_file)

    async def test_a_local_filesystem_is_refused_for_remote_infrastructure(
        self, flow_file: Path, tmp_path: Path
    ) -> None:
        """Flows that run elsewhere cannot read this machine's disk."""
        from runner_storage.blocks.filesystems import LocalFileSystem

        with pytest.raises(DeploymentValidationError, match="RemoteFileSystem"):
            await FilePackager(LocalFileSystem(basepath=str(tmp_path))).package(remote(flow_file))


class TestPullStepAndCLI:
    """The manifest's pull step, and ``runner-storage package``."""

    def test_cli_packages_and_the_pull_step_unpackages(
        self, flow_file: Path, tmp_path: Path
    ) -> None:
        """The command writes the script and prints a manifest whose step brings it back."""
        store = tmp_path / "store"
        result = cli("package", str(flow_file), "--storage", str(store), "--name", "etl")
        assert result.returncode == 0, result.stderr
        printed = yaml.safe_load(result.stdout)
        ((name, step),) = printed["pull"][0].items()
        assert name == "runner_storage.deployments.steps.pull_package"
        assert step["requires"] == "runner-storage"
        assert printed["manifest"]["key"] == printed["manifest"]["sha256"]
        runner = tmp_path / "runner"
        runner.mkdir()
        code = (
            "import json, sys\n"
            "from runner_storage.deployments.steps import pull_package\n"
            "print(json.dumps(pull_package(json.loads(sys.stdin.read()))))\n"
        )
        ran = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(step["manifest"]),
            capture_output=True,
            text=True,
            cwd=runner,
            check=False,
            env=os.environ.copy(),
        )
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == {"directory": "."}
        assert (runner / "etl.py").read_text() == FLOW

    def test_cli_json_and_a_missing_flow(self, flow_file: Path, tmp_path: Path) -> None:
        """``--format json`` prints JSON; a missing FLOW_FILE is one line and exit 2."""
        result = cli("package", str(flow_file), "--storage", str(tmp_path), "--format", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["manifest"]["flow_name"] == "etl"
        missing = cli("package", str(tmp_path / "nope.py"), "--storage", str(tmp_path))
        assert missing.returncode == 2
        assert missing.stderr.count("\n") == 1
        assert "does not exist" in missing.stderr

    def test_pull_package_in_process(
        self, flow_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The step function writes the script into the working directory."""
        import anyio

        storage = FileStorageBlock(tmp_path / "store")
        manifest = anyio.run(
            ScriptPackager(storage).package,
            DeploymentSpec("etl", str(flow_file), infrastructure="docker"),
        )
        runner = tmp_path / "runner"
        runner.mkdir()
        monkeypatch.chdir(runner)
        assert pull_package(manifest.to_dict()) == {"directory": "."}
        assert (runner / "etl.py").read_text() == FLOW
