"""RemoteStorage errors that are the user's to fix, each one line saying what to do.

An unsupported protocol, a missing package, a setting the filesystem would reject, and a
local disk that cannot take the files. Configuration errors are not retryable, and
``runner-storage pull`` reports them on one line (no traceback) with exit code 2.
Settings are checked against the real S3 server: a rejected setting costs no request.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import fsspec
import pytest
from daemon_process import RUNNER_STORAGE, cli
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import known_implementations
from servers.http_files import HTTPFileServer
from servers.s3 import S3Server

from runner_storage.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    PublishError,
    disk_error,
)
from runner_storage.factory import create_storage_from_source
from runner_storage.fs.errors import translate_error
from runner_storage.remote import RemoteStorage
from runner_storage.secrets import Secret
from runner_storage.types import SyncResult

MISSING_MODULE = "rs_test_module_not_installed"
#: The file-size limit (RLIMIT_FSIZE) of a child in the EFBIG test.
FILE_SIZE_LIMIT = 256 * 1024


class NeedsModuleFileSystem(MemoryFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """The memory filesystem under ``rsneedsmodule://``, importing a missing module when built.

    That is what ``hdfs://`` does with pyarrow: the class imports, building it does not.
    """

    protocol = ("rsneedsmodule",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        importlib.import_module(MISSING_MODULE)
        super().__init__(*args, **kwargs)


fsspec.register_implementation("rsneedsmodule", NeedsModuleFileSystem, clobber=True)


def pull(storage: RemoteStorage) -> SyncResult:
    """Run one pull."""
    return anyio.run(storage.pull_code)


def limit_file_size() -> None:  # pragma: no cover - runs in the child
    """In a child process: writes past FILE_SIZE_LIMIT fail with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def one_line(text: str) -> str:
    """The single line of ``text``; fails if there are more (a traceback, say)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    path = tmp_path / "base"
    path.mkdir()
    return path


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket holding one file under ``flows/``."""
    name = s3_server.new_bucket("errors")
    s3_server.put(name, "flows/a.py", "A = 1\n")
    return name


def s3_storage(s3_server: S3Server, bucket: str, base: Path, **settings: Any) -> RemoteStorage:
    """A RemoteStorage of ``s3://BUCKET/flows`` on moto, with ``settings`` over the defaults."""
    storage = RemoteStorage(f"s3://{bucket}/flows", **{**s3_server.storage_options(), **settings})
    storage.set_base_path(base)
    return storage


def rejected(s3_server: S3Server, storage: RemoteStorage) -> ConfigurationError:
    """Pull ``storage``, expecting a one-line ConfigurationError before any request."""
    s3_server.reset_requests()
    with pytest.raises(ConfigurationError) as caught:
        pull(storage)
    one_line(str(caught.value))
    assert not caught.value.retryable
    assert s3_server.request_count() == 0
    assert not os.path.lexists(storage.destination)
    return caught.value


class TestUnsupportedProtocols:
    """Protocols fsspec knows that RemoteStorage cannot sync are refused when it is made."""

    def test_ftp_is_taken(self) -> None:
        """ftp:// is no longer refused: a storage is made (its pulls: test_remote_ftp.py)."""
        storage = RemoteStorage("ftp://files.example.com/flows")
        assert repr(storage) == "RemoteStorage(url='ftp://files.example.com/flows')"

    def test_ftp_without_a_server_is_refused(self) -> None:
        """An ftp:// URL that names no server is a one-line ConfigurationError at once."""
        with pytest.raises(ConfigurationError) as caught:
            RemoteStorage("ftp:///flows")
        message = one_line(str(caught.value))
        assert message.startswith("the ftp:// URL names no server")
        assert not caught.value.retryable

    @pytest.mark.parametrize(
        "url", ["simplecache://bucket/flows", "filecache://b/f", "dir://folder", "reference://x"]
    )
    def test_protocols_that_wrap_another_filesystem_are_refused(self, url: str) -> None:
        """Caches and views over another filesystem are refused: give the store's URL."""
        with pytest.raises(ConfigurationError, match="wraps another filesystem"):
            RemoteStorage(url)

    def test_cli_pull_of_ftp_without_a_server_exits_2_with_one_line(self, tmp_path: Path) -> None:
        """``runner-storage pull ftp:///flows`` prints one line, no traceback, and exits 2."""
        result = cli("pull", "ftp:///flows", "--dest", str(tmp_path))
        assert result.returncode == 2
        assert "the ftp:// URL names no server" in one_line(result.stderr)


class TestMissingPackages:
    """A protocol whose implementation cannot be loaded says what to install."""

    @pytest.mark.parametrize(
        ("url", "package", "extra"),
        [("s3://b/p", "s3fs", "s3"), ("gs://b/p", "gcsfs", "gcs"), ("az://c/p", "adlfs", "azure")],
    )
    def test_cloud_protocol_without_its_package_is_refused_when_made(
        self, monkeypatch: pytest.MonkeyPatch, url: str, package: str, extra: str
    ) -> None:
        """Without s3fs, gcsfs or adlfs, making the storage fails: one line naming the extra."""
        monkeypatch.setitem(sys.modules, package, None)  # find_spec(package) is None now
        protocol = url.split("://", 1)[0]
        with pytest.raises(MissingDependencyError) as caught:
            RemoteStorage(url)
        assert one_line(str(caught.value)) == (
            f"the {protocol}:// protocol needs the {package} package, which is not installed:"
            f" pip install 'runner-storage[{extra}]'"
        )
        assert isinstance(caught.value, ConfigurationError)

    def test_factory_refuses_a_cloud_protocol_without_its_package(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """create_storage_from_source raises the same MissingDependencyError as RemoteStorage."""
        monkeypatch.setitem(sys.modules, "s3fs", None)
        with pytest.raises(MissingDependencyError) as caught:
            create_storage_from_source("s3://b/p")
        assert one_line(str(caught.value)) == (
            "the s3:// protocol needs the s3fs package, which is not installed:"
            " pip install 'runner-storage[s3]'"
        )

    def test_the_package_check_imports_nothing(self) -> None:
        """Making an s3:// storage looks s3fs up without loading it (nor botocore)."""
        code = (
            "import json, sys\n"
            "from runner_storage.remote import RemoteStorage\n"
            "RemoteStorage('s3://b/p')\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=True,
        )
        modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
        assert "runner_storage.remote.storage" in modules
        assert not {m.split(".", 1)[0] for m in modules} & {"s3fs", "botocore", "aiobotocore"}

    def test_module_missing_when_the_filesystem_is_built(self, base: Path) -> None:
        """A filesystem that imports a missing module when built names that module."""
        storage = RemoteStorage("rsneedsmodule://folder")
        storage.set_base_path(base)
        with pytest.raises(MissingDependencyError) as caught:
            pull(storage)
        message = one_line(str(caught.value))
        assert f"needs the {MISSING_MODULE} module" in message
        assert f"pip install {MISSING_MODULE}" in message
        assert isinstance(caught.value, ConfigurationError)

    def test_package_missing_at_import_gives_fsspecs_advice(
        self, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """For a protocol fsspec lists, its own advice (naming the distribution) is given."""
        monkeypatch.setitem(
            known_implementations,
            "rsnopackage",
            {"class": "rs_test_package_not_installed.fs.FileSystem", "err": "install rs-test"},
        )
        storage = RemoteStorage("rsnopackage://folder")
        storage.set_base_path(base)
        with pytest.raises(MissingDependencyError) as caught:
            pull(storage)
        assert one_line(str(caught.value)) == (
            "the rsnopackage:// protocol needs the rs_test_package_not_installed module,"
            " which is not installed: install rs-test"
        )

    @pytest.mark.skipif(
        importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed"
    )
    def test_cli_pull_of_hdfs_without_pyarrow_exits_2(self, tmp_path: Path) -> None:
        """hdfs:// builds its filesystem with pyarrow: without it, one line and exit 2."""
        result = cli("pull", "hdfs://namenode/flows", "--dest", str(tmp_path))
        assert result.returncode == 2
        line = one_line(result.stderr)
        assert "needs the pyarrow module" in line


class TestSettings:
    """A setting the filesystem would reject is a ConfigurationError naming it."""

    @pytest.mark.parametrize(
        ("setting", "guess"),
        [("endpoint_ur", "endpoint_url"), ("requester_pay", "requester_pays"), ("colour", None)],
    )
    def test_misspelled_s3_setting_is_named(
        self, s3_server: S3Server, bucket: str, base: Path, setting: str, guess: str | None
    ) -> None:
        """An s3fs setting name that does not exist is named, with the closest real one."""
        storage = s3_storage(s3_server, bucket, base, **{setting: "x"})
        message = str(rejected(s3_server, storage))
        assert f"s3:// has no setting {setting!r}" in message
        if guess is None:
            assert "did you mean" not in message
        else:
            assert f"did you mean {guess!r}" in message

    @pytest.mark.parametrize(
        ("setting", "value"), [("key", 12345), ("endpoint_url", 9000), ("secret", b"bytes")]
    )
    def test_credential_or_endpoint_of_the_wrong_type_is_named(
        self, s3_server: S3Server, bucket: str, base: Path, setting: str, value: Any
    ) -> None:
        """Credentials and the endpoint must be text; the type is named, never the value."""
        storage = s3_storage(s3_server, bucket, base, **{setting: value})
        message = str(rejected(s3_server, storage))
        assert f"setting {setting!r} must be text, not {type(value).__name__}" in message
        assert str(value) not in message

    def test_endpoint_botocore_rejects_is_configuration(
        self, s3_server: S3Server, bucket: str, base: Path
    ) -> None:
        """An endpoint that is no URL fails when the client is built, with the secret hidden."""
        secret = "sk-" + uuid.uuid4().hex
        storage = s3_storage(
            s3_server, bucket, base, endpoint_url="not a url", secret=Secret(secret)
        )
        message = str(rejected(s3_server, storage))
        assert "Invalid endpoint" in message
        assert "endpoint_url" in message
        assert secret not in message

    def test_missing_profile_is_configuration(
        self, s3_server: S3Server, bucket: str, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A profile that no AWS config file defines is named."""
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        storage = s3_storage(s3_server, bucket, base, profile="rs-no-such-profile")
        message = str(rejected(s3_server, storage))
        assert "rs-no-such-profile" in message

    def test_value_of_the_wrong_type_found_on_the_first_request(
        self, s3_server: S3Server, bucket: str, base: Path
    ) -> None:
        """A timeout given as text fails inside the HTTP client: configuration, not the store."""
        storage = s3_storage(s3_server, bucket, base, config_kwargs={"connect_timeout": "5"})
        message = str(rejected(s3_server, storage))
        assert "config_kwargs" in message

    def test_request_parameter_botocore_rejects_is_configuration(
        self, s3_server: S3Server, bucket: str, base: Path
    ) -> None:
        """Extra request parameters that fail botocore's validation are configuration."""
        storage = s3_storage(s3_server, bucket, base, s3_additional_kwargs={"RequestPayer": 5})
        message = str(rejected(s3_server, storage))
        assert "ParamValidationError" in message

    def test_plain_type_error_from_a_filesystem_is_configuration(self) -> None:
        """translate_error maps a bare TypeError to ConfigurationError listing the settings."""
        error, _ = translate_error(
            TypeError("sequence item 0: expected str instance, int found"),
            where="s3://b/p",
            redact=str,
            settings=["secret", "key"],
        )
        assert type(error) is ConfigurationError
        assert "s3://b/p" in str(error)
        assert str(error).endswith("settings: key, secret")


class TestDiskErrors:
    """A local write failure is a PublishError whose hint says what to do."""

    @pytest.mark.parametrize(
        ("code", "hint"),
        [
            (errno.ENOSPC, "the disk is full: free space"),
            (errno.EDQUOT, "the disk quota is exceeded"),
            (errno.EACCES, "permission denied: make the base path writable"),
            (errno.EROFS, "the file system is read-only"),
            (errno.ENOTDIR, "a component of the path is a file, not a directory"),
            (errno.EFBIG, "a file is too large to write (File too large): raise the file-size"),
            (errno.EIO, os.strerror(errno.EIO)),
        ],
    )
    def test_each_errno_gets_its_hint(self, code: int, hint: str) -> None:
        """disk_error: what failed, then the hint (the OS's text when there is none)."""
        error = disk_error("cannot write /b/x", OSError(code, os.strerror(code), "/b/x"))
        assert type(error) is PublishError
        assert str(error).startswith(f"cannot write /b/x: {hint}")
        assert "\n" not in str(error)

    def test_base_path_below_a_file(self, tmp_path: Path) -> None:
        """A base path under a regular file fails with the ENOTDIR hint."""
        folder = f"rs-errors-{uuid.uuid4().hex}"
        memory = fsspec.filesystem("memory")
        memory.pipe(f"/{folder}/a.py", b"A = 1\n")
        blocker = tmp_path / "file"
        blocker.write_text("x")
        storage = RemoteStorage(f"memory://{folder}")
        storage.set_base_path(blocker / "base")
        try:
            with pytest.raises(PublishError, match="is a file, not a directory"):
                pull(storage)
        finally:
            memory.rm(f"/{folder}", recursive=True)
        assert blocker.read_text() == "x"

    def test_file_larger_than_the_file_size_limit(
        self, http_file_server: HTTPFileServer, tmp_path: Path
    ) -> None:
        """A download past RLIMIT_FSIZE: exit 1, one line with the EFBIG hint, none published."""
        http_file_server.write("flows/a.py", "A = 1\n")
        http_file_server.write("flows/big.bin", os.urandom(4 * FILE_SIZE_LIMIT))
        dest = tmp_path / "dest"
        result = subprocess.run(
            [RUNNER_STORAGE, "pull", http_file_server.url_for("flows/"), "--dest", str(dest)],
            capture_output=True,
            text=True,
            preexec_fn=limit_file_size,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1
        line = one_line(result.stderr)
        assert "a file is too large to write" in line
        assert "ulimit -f" in line
        assert not any(path.is_symlink() for path in dest.rglob("*"))
