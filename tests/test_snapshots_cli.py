"""Snapshots from the command line, the daemon, the pull step and the factory.

What a user of ``runner-storage push`` / ``gc`` / ``pull`` / ``run`` / ``steps`` sees, run as
real subprocesses against a ``file://`` root or moto (S3), with credentials given the way
the CLI takes them: from the environment. The library's own round trips are in
``tests/test_snapshots.py``; here only what the commands and the step function add.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from daemon_process import RUNNER_STORAGE, cli, config_file
from servers.ftp import can_log_in
from servers.procs import start_process
from servers.s3 import S3Server
from snapshot_helpers import write_tree

from runner_storage.deployments.steps import pull_snapshot
from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import classify_source, create_storage_from_source
from runner_storage.snapshots import SnapshotStorage, push_snapshot
from runner_storage.snapshots.format import blob_key, manifest_key
from runner_storage.snapshots.storage import PULL_SNAPSHOT_STEP
from service.cli import main

#: The S3 secret the CLI is given (moto takes any): distinctive, so a scan cannot miss it.
CANARY = "canary-snap-secret-4d7e91b2a6"

TREE_A = {
    "flows/etl.py": b"print('etl A')\n",
    "shared/common.py": b"COMMON = 1\n",
    "only_a.txt": b"only in A\n",
}
TREE_B = {
    "flows/etl.py": b"print('etl B')\n",
    "shared/common.py": b"COMMON = 1\n",
    "only_b.txt": b"only in B\n",
}
TREE_C = {
    "flows/etl.py": b"print('etl C')\n",
    "shared/common.py": b"COMMON = 1\n",
}


def contents(directory: Path) -> dict[str, bytes]:
    """Every regular file below ``directory`` (followed if it is the published link)."""
    real = directory.resolve()
    return {
        path.relative_to(real).as_posix(): path.read_bytes()
        for path in sorted(real.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def store_listing(root: Path) -> dict[str, bytes]:
    """Every object of a ``file://`` snapshot root, by key."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def ref_of(root: Path, name: str = "latest") -> str:
    """The id the ref ``name`` of a ``file://`` root holds."""
    return (root / "refs" / name).read_text().strip()


def lines(text: str) -> list[str]:
    """The non-empty lines of ``text``."""
    return [line for line in text.splitlines() if line.strip()]


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``runner-storage ARGS`` in this process, as the console script does.

    For ``push`` and ``gc`` (they configure no logging and start nothing): the same
    ``main`` and exit code as the console script, without an interpreter start per case.
    Returns the exit code, stdout and stderr.
    """
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def step_of(root: str, snapshot: str, *, package: str = "", **settings: Any) -> dict[str, Any]:
    """The pull step ``push`` and ``steps`` print for a snapshot pinned at ``root``.

    ``requires`` names what Prefect's worker imports (and installs when that fails):
    runner-storage, and the protocol's fsspec package.
    """
    requires: Any = ["runner-storage", package] if package else "runner-storage"
    return {
        PULL_SNAPSHOT_STEP: {"requires": requires, "root": root, "snapshot": snapshot, **settings}
    }


@dataclass
class S3Root:
    """A snapshot root in a fresh moto bucket, and the environment the CLI reads it with."""

    server: S3Server
    bucket: str

    @property
    def url(self) -> str:
        """The root's URL."""
        return f"s3://{self.bucket}/code"

    def env(self, secret: str = CANARY) -> dict[str, str]:
        """Credentials and endpoint, the way the CLI takes them."""
        return {
            "AWS_ACCESS_KEY_ID": self.server.key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.server.endpoint_url,
        }

    def settings(self) -> dict[str, Any]:
        """The same, as library settings (for pushes made by the test itself)."""
        return self.server.storage_options()

    def push(self, directory: Path, **options: Any) -> str:
        """Push ``directory`` in process; return the id."""
        return push_snapshot(directory, self.url, **{**self.settings(), **options}).id


@pytest.fixture
def s3_root(s3_server: S3Server) -> S3Root:
    """A snapshot root in a fresh bucket."""
    return S3Root(s3_server, s3_server.new_bucket("snapcli"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding tree A."""
    return write_tree(tmp_path / "project", TREE_A)


def rewrite(directory: Path, files: Mapping[str, bytes]) -> Path:
    """Make ``directory`` hold exactly ``files``."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.unlink()
    return write_tree(directory, files)


class TestPush:
    """``runner-storage push DIRECTORY ROOT``."""

    def test_prints_the_id_and_a_step_pinning_it_and_nothing_else(
        self, project: Path, tmp_path: Path
    ) -> None:
        """YAML then JSON: the id the ref names, a pinned pull step, exit 0, stderr empty.

        stderr is not a terminal here, so no progress bar is drawn; pushing the same tree
        again uploads nothing and reports the same id.
        """
        root = tmp_path / "store"
        first = cli("push", str(project), str(root))
        assert first.returncode == 0, first.stderr
        assert first.stderr == ""
        output = yaml.safe_load(first.stdout)
        snapshot = ref_of(root)
        assert output == {
            "snapshot": snapshot,
            "ref": "latest",
            "root": root.as_uri(),
            "files": 3,
            "blobs_uploaded": 3,
            "bytes_uploaded": sum(map(len, TREE_A.values())),
            "pull": [step_of(root.as_uri(), snapshot)],
        }
        assert (root / manifest_key(snapshot)).is_file()

        again = cli("push", str(project), str(root), "--format", "json")
        assert again.returncode == 0, again.stderr
        assert again.stderr == ""
        output = json.loads(again.stdout)
        assert output["snapshot"] == snapshot
        assert output["blobs_uploaded"] == 0
        assert output["bytes_uploaded"] == 0
        assert output["pull"] == [step_of(root.as_uri(), snapshot)]

    def test_a_named_ref_and_a_relative_root(self, project: Path, tmp_path: Path) -> None:
        """``--ref team/prod`` moves only that ref; a relative ROOT is printed absolute."""
        work = tmp_path / "work"
        work.mkdir()
        result = cli("push", str(project), "store", "--ref", "team/prod", cwd=work)
        assert result.returncode == 0, result.stderr
        output = yaml.safe_load(result.stdout)
        root = work / "store"
        assert output["ref"] == "team/prod"
        assert output["root"] == root.as_uri()
        assert ref_of(root, "team/prod") == output["snapshot"]
        assert not (root / "refs" / "latest").exists()

    def test_s3_credentials_come_from_the_environment(self, project: Path, s3_root: S3Root) -> None:
        """To S3 with AWS_* variables: the step names the s3 extra and holds no credential."""
        result = cli("push", str(project), s3_root.url, "--format", "json", env=s3_root.env())
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output["root"] == s3_root.url
        assert output["pull"] == [step_of(s3_root.url, output["snapshot"], package="s3fs")]
        stored = s3_root.server.get(s3_root.bucket, "code/refs/latest")
        assert stored.decode().strip() == output["snapshot"]
        assert CANARY not in result.stdout + result.stderr
        assert s3_root.server.key not in result.stdout

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            pytest.param(
                ["{missing}", "{root}"], "DIRECTORY {missing} does not exist", id="no-directory"
            ),
            pytest.param(
                ["{project}", "http://127.0.0.1:9/code"],
                "push_snapshot needs a root it can list and write; http:// roots are read-only",
                id="http-root",
            ),
            pytest.param(
                ["{project}", "{root}", "--ref", "bad ref"],
                "ref must be a name of letters, digits",
                id="ref-with-space",
            ),
            pytest.param(
                ["{project}", "{root}", "--ref=-x"],
                "ref must be a name of letters, digits",
                id="ref-starting-with-dash",
            ),
            pytest.param(
                ["{project}", "{root}", "--ref", "../x"],
                "ref must be a name of letters, digits",
                id="ref-climbing-out",
            ),
            pytest.param(
                ["{project}", "{root}", "--ignore-file", "{missing}"],
                "cannot read the ignore file {missing}: No such file or directory",
                id="ignore-file-missing",
            ),
            pytest.param(
                ["{project}", "{root}", "--ignore-file", "{project}"],
                "cannot read the ignore file {project}: Is a directory",
                id="ignore-file-unreadable",
            ),
        ],
    )
    def test_bad_input_is_one_line_and_exit_2(
        self,
        project: Path,
        tmp_path: Path,
        arguments: list[str],
        message: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A bad DIRECTORY, ROOT, --ref or --ignore-file: one line, exit 2, nothing written."""
        names = {"project": project, "root": tmp_path / "store", "missing": tmp_path / "nope"}
        code, out, err = main_in_process(
            capsys, "push", *[argument.format(**names) for argument in arguments]
        )
        assert code == 2, out + err
        assert out == ""
        assert len(lines(err)) == 1, err
        assert err.startswith("runner-storage: ")
        assert message.format(**names) in err
        assert not (tmp_path / "store").exists()

    def test_a_dash_ref_given_apart_is_an_argument_error(
        self, project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--ref -x`` reads as a missing value (argparse's usage), exit 2, nothing written."""
        code, _, err = main_in_process(
            capsys, "push", str(project), str(tmp_path / "store"), "--ref", "-x"
        )
        assert code == 2
        assert "argument --ref: expected one argument" in err
        assert not (tmp_path / "store").exists()

    def test_the_console_script_exits_2_too(self, tmp_path: Path) -> None:
        """The installed ``runner-storage`` exits 2 with the one line, as ``main`` returns."""
        result = cli("push", str(tmp_path / "nope"), str(tmp_path / "store"))
        assert result.returncode == 2
        assert lines(result.stderr) == [
            f"runner-storage: DIRECTORY {tmp_path / 'nope'} does not exist or is not a directory"
        ]

    def test_a_missing_bucket_is_one_line_and_exit_1(self, project: Path, s3_root: S3Root) -> None:
        """A bucket that does not exist: ``push failed``, one line, exit 1, no secret shown."""
        url = "s3://no-such-bucket-snapcli/code"
        result = cli("push", str(project), url, env=s3_root.env())
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout == ""
        assert lines(result.stderr) == [
            "runner-storage: push failed: s3://no-such-bucket-snapcli/code was not found"
            " (FileNotFoundError: The specified bucket does not exist): check the bucket,"
            " container or folder and the path in the URL"
        ]
        assert CANARY not in result.stderr

    def test_wrong_credentials_are_one_line_and_exit_1(
        self, project: Path, s3_server: S3Server, s3_root: S3Root
    ) -> None:
        """A secret moto rejects: one line naming the root, exit 1, the secret nowhere."""
        with s3_server.enable_auth() as (key, _):
            env = {**s3_root.env(), "AWS_ACCESS_KEY_ID": key}
            result = cli("push", str(project), s3_root.url, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout == ""
        (line,) = lines(result.stderr)
        assert line.startswith(f"runner-storage: push failed: access to {s3_root.url} was denied")
        assert CANARY not in result.stdout + result.stderr
        assert s3_root.server.list_keys(s3_root.bucket) == []

    def test_an_upper_case_scheme_writes_where_it_says(self, project: Path, tmp_path: Path) -> None:
        """``FILE:///abs/store`` is that folder: schemes are case-insensitive.

        fsspec's local filesystem strips only a lower-case ``file://``; the scheme is
        lowered first, so nothing lands below the working directory and the printed step
        names the folder that was written.
        """
        work = tmp_path / "work"
        work.mkdir()
        root = tmp_path / "store"
        result = cli("push", str(project), "FILE://" + str(root), cwd=work)
        assert result.returncode == 0, result.stderr
        assert list(work.iterdir()) == [], "the push wrote below the working directory"
        output = yaml.safe_load(result.stdout)
        assert ref_of(root) == output["snapshot"]
        step = output["pull"][0]["runner_storage.deployments.steps.pull_snapshot"]
        assert step["root"] == root.as_uri()


#: A pyftpdlib server whose users may write: ``alice`` (password from the environment)
#: and anonymous. The suite's own FTP server is read-only.
_WRITABLE_FTP = """
import os, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
authorizer = DummyAuthorizer()
authorizer.add_user("alice", os.environ["RS_FTP_PASSWORD"], sys.argv[2], perm="elradfmw")
authorizer.add_anonymous(sys.argv[2], perm="elradfmw")
FTPHandler.authorizer = authorizer
FTPServer(("127.0.0.1", int(sys.argv[1])), FTPHandler).serve_forever()
"""


@dataclass
class WritableFTP:
    """A running writable FTP server: its port, the folder it serves, alice's password."""

    port: int
    root: Path
    password: str


@pytest.fixture
def writable_ftp(tmp_path: Path) -> Iterator[WritableFTP]:
    """A writable FTP server on 127.0.0.1 for one test; stopped (and checked gone) after."""
    root = tmp_path / "ftp-root"
    root.mkdir()
    password = "pw-" + secrets.token_hex(8)
    process = start_process(
        "pyftpdlib-writable",
        lambda port: [sys.executable, "-c", _WRITABLE_FTP, str(port), str(root)],
        ready=lambda port: can_log_in(port, password),
        log_dir=tmp_path,
        env={**os.environ, "RS_FTP_PASSWORD": password},
    )
    try:
        yield WritableFTP(process.port, root, password)
    finally:
        process.stop()


class TestPushToFTP:
    """``push`` to an FTP root (writable: the store.py code paths for FTP exist)."""

    def test_a_fresh_ftp_root_can_be_pushed_to(
        self, project: Path, writable_ftp: WritableFTP
    ) -> None:
        """An empty FTP folder takes a push like any other root: exit 0, the ref written.

        FTP (like sftp, smb) needs the folders ``blobs/sha256/ab``, ``snapshots`` and
        ``refs`` made before files are written into them; object stores need none.
        """
        (writable_ftp.root / "fresh").mkdir()
        url = f"ftp://127.0.0.1:{writable_ftp.port}/fresh"
        result = cli("push", str(project), url, "--format", "json")
        assert result.returncode == 0, result.stderr
        snapshot = json.loads(result.stdout)["snapshot"]
        assert ref_of(writable_ftp.root / "fresh") == snapshot

    def test_a_password_in_the_root_is_refused_before_the_ref_moves(
        self, project: Path, writable_ftp: WritableFTP
    ) -> None:
        """A password in the root URL: exit 2 with one line, before anything is written.

        The pull step printed after a push could not hold it, and a ref moved by a push
        reported as failed would still be followed by runners.
        """
        store = writable_ftp.root / "snap"
        store.mkdir()
        url = f"ftp://alice:{writable_ftp.password}@127.0.0.1:{writable_ftp.port}/snap"
        result = cli("push", str(project), url, "--format", "json")
        assert writable_ftp.password not in result.stdout + result.stderr
        assert result.returncode == 2
        (line,) = lines(result.stderr)
        assert "ROOT holds a password" in line
        assert list(store.rglob("*")) == []


def run_with_stderr_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run ``runner-storage ARGS`` with stderr on a pseudo-terminal; code, stdout, stderr."""
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [RUNNER_STORAGE, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
        )
    finally:
        os.close(secondary)
    try:
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


class TestProgress:
    """The progress line of ``push``."""

    def test_a_terminal_gets_a_progress_line_and_stdout_stays_clean(self, tmp_path: Path) -> None:
        """On a terminal stderr shows a bar of files hashed, then clears it; stdout is YAML."""
        files = {f"pkg/mod{i:03}.py": f"VALUE = {i}\n".encode() for i in range(40)}
        project = write_tree(tmp_path / "project", files)
        code, stdout, stderr = run_with_stderr_on_terminal(
            "push", str(project), str(tmp_path / "store")
        )
        assert code == 0, stderr
        assert "files" in stderr
        assert "[" in stderr
        assert "#" in stderr
        assert stderr.endswith("\r\x1b[K")  # the line is cleared before the result prints
        assert "\r" not in stdout
        assert "\x1b" not in stdout
        assert yaml.safe_load(stdout)["files"] == 40


@pytest.fixture
def three_snapshots(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A root where ``prod`` names A, ``latest`` names C, and B (pushed between) is unnamed."""
    root = tmp_path / "store"
    directory = write_tree(tmp_path / "project", TREE_A)
    ids = {"A": push_snapshot(directory, root, ref="prod").id}
    ids["B"] = push_snapshot(rewrite(directory, TREE_B), root).id
    ids["C"] = push_snapshot(rewrite(directory, TREE_C), root).id
    return root, ids


def blob_of(data: bytes) -> str:
    """The key of the blob holding ``data``."""
    return blob_key(hashlib.sha256(data).hexdigest())


class TestGC:
    """``runner-storage gc ROOT --keep N``."""

    def test_dry_run_lists_and_deletes_nothing(
        self, three_snapshots: tuple[Path, dict[str, str]]
    ) -> None:
        """``--dry-run`` names B as what would go, and the store is byte for byte the same."""
        root, ids = three_snapshots
        before = store_listing(root)
        result = cli(
            "gc", str(root), "--keep", "1", "--grace", "0", "--dry-run", "--format", "json"
        )
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output == {
            "dry_run": True,
            "refs": {"latest": ids["C"], "prod": ids["A"]},
            "kept_snapshots": [ids["C"], ids["A"]],
            "deleted_snapshots": [ids["B"]],
            "deleted_blobs": 2,
            "bytes_freed": len(TREE_B["only_b.txt"]) + len(TREE_B["flows/etl.py"]),
        }
        assert store_listing(root) == before

    def test_deletes_the_old_unnamed_snapshot_and_only_its_own_blobs(
        self, three_snapshots: tuple[Path, dict[str, str]], tmp_path: Path
    ) -> None:
        """``--keep 1 --grace 0``: B's manifest and the blobs only B used go; A, C pull whole."""
        root, ids = three_snapshots
        before = set(store_listing(root))
        result = cli("gc", str(root), "--keep", "1", "--grace", "0")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        output = yaml.safe_load(result.stdout)
        assert output["dry_run"] is False
        assert output["deleted_snapshots"] == [ids["B"]]
        assert output["deleted_blobs"] == 2
        gone = before - set(store_listing(root))
        assert gone == {
            manifest_key(ids["B"]),
            blob_of(TREE_B["only_b.txt"]),
            blob_of(TREE_B["flows/etl.py"]),
        }
        for label, files in (("A", TREE_A), ("C", TREE_C)):
            storage = SnapshotStorage(root, snapshot=ids[label], name=label)
            storage.set_base_path(tmp_path / "base")
            pulled = pull_once(storage)
            assert pulled == files

    def test_the_default_grace_keeps_what_was_just_pushed(
        self, three_snapshots: tuple[Path, dict[str, str]]
    ) -> None:
        """Without ``--grace``, snapshots and blobs younger than an hour stay, even at keep 0."""
        root, ids = three_snapshots
        before = store_listing(root)
        result = cli("gc", str(root), "--keep", "0", "--format", "json")
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output["deleted_snapshots"] == []
        assert output["deleted_blobs"] == 0
        assert set(output["kept_snapshots"]) == set(ids.values())
        assert store_listing(root) == before

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            pytest.param(["--keep", "-1"], "argument --keep: '-1' is negative", id="keep-negative"),
            pytest.param(
                ["--keep", "x"], "argument --keep: 'x' is not a whole number", id="keep-x"
            ),
            pytest.param(
                ["--keep", "1", "--grace", "soon"],
                "argument --grace: 'soon' is not a number of seconds",
                id="grace-word",
            ),
        ],
    )
    def test_bad_options_exit_2(
        self,
        three_snapshots: tuple[Path, dict[str, str]],
        option: list[str],
        message: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A negative or non-number --keep (or --grace) is refused, exit 2, nothing deleted."""
        root, _ = three_snapshots
        before = store_listing(root)
        code, out, err = main_in_process(capsys, "gc", str(root), *option)
        assert code == 2
        assert out == ""
        assert message in lines(err)[-1]
        assert store_listing(root) == before

    def test_a_dangling_ref_is_reported_and_nothing_is_lost(
        self, three_snapshots: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A ref naming a missing snapshot: one line on stderr, exit 0, nothing deleted."""
        root, _ = three_snapshots
        missing = "f" * 64
        (root / "refs" / "broken").write_text(f"{missing}\n")
        before = store_listing(root)
        code, out, err = main_in_process(
            capsys, "gc", str(root), "--keep", "5", "--grace", "0", "--format", "json"
        )
        assert code == 0, err
        assert lines(err) == [
            f"runner-storage: ref 'broken' names {missing}, which is not in the store"
        ]
        output = json.loads(out)
        assert output["refs"]["broken"] == missing
        assert output["deleted_snapshots"] == []
        assert store_listing(root) == before

    def test_an_http_root_is_one_line_and_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An HTTP root cannot be listed or deleted from: one line saying so, exit 2."""
        code, _, err = main_in_process(capsys, "gc", "http://127.0.0.1:9/code", "--keep", "1")
        assert code == 2
        assert lines(err) == [
            "runner-storage: collect_garbage needs a root it can list and write; http:// roots"
            " are read-only: give the store behind it (s3://, gs://, az://, a path...)"
        ]


def pull_once(storage: SnapshotStorage) -> dict[str, bytes]:
    """Pull ``storage`` once in process; return the published tree."""
    anyio.run(storage.pull_code)
    return contents(storage.destination)


class TestPull:
    """``runner-storage pull snapshot+URL --ref/--snapshot``."""

    def test_a_file_root_by_ref_then_by_snapshot(self, tmp_path: Path) -> None:
        """``--ref`` publishes what the ref names; ``--snapshot`` switches to the pinned id."""
        root = tmp_path / "store"
        directory = write_tree(tmp_path / "project", TREE_A)
        first = push_snapshot(directory, root, ref="prod").id
        second = push_snapshot(rewrite(directory, TREE_B), root, ref="prod").id
        dest = tmp_path / "dest"
        source = f"snapshot+{root.as_uri()}"
        by_ref = cli(
            "pull", source, "--ref", "prod", "--dest", str(dest), "--name", "code", "--json"
        )
        assert by_ref.returncode == 0, by_ref.stderr
        output = json.loads(by_ref.stdout)
        assert output["revision"] == second
        assert output["destination"] == str(dest / "code")
        assert contents(dest / "code") == TREE_B
        pinned = cli("pull", source, "--snapshot", first, "--dest", str(dest), "--name", "code")
        assert pinned.returncode == 0, pinned.stderr
        assert pinned.stdout.startswith(f"published: {dest / 'code'} at {first[:12]}")
        assert contents(dest / "code") == TREE_A

    def test_an_s3_root_by_ref_and_by_snapshot(self, tmp_path: Path, s3_root: S3Root) -> None:
        """From S3 with AWS_* variables: the ref's tree, and the pinned one; no secret shown.

        (The two pulls run side by side, into two folders.)
        """
        directory = write_tree(tmp_path / "project", TREE_A)
        first = s3_root.push(directory)
        second = s3_root.push(rewrite(directory, TREE_B))
        source = f"snapshot+{s3_root.url}"
        env = s3_root.env()
        pulls = {
            "ref": ("--ref", "latest", "--dest", str(tmp_path / "by-ref")),
            "pin": ("--snapshot", first, "--dest", str(tmp_path / "pinned")),
        }
        with ThreadPoolExecutor(2) as pool:
            jobs = {
                k: pool.submit(cli, "pull", source, *a, "--json", env=env) for k, a in pulls.items()
            }
            by_ref, pinned = jobs["ref"].result(), jobs["pin"].result()
        assert by_ref.returncode == 0, by_ref.stderr
        assert json.loads(by_ref.stdout)["revision"] == second
        assert contents(tmp_path / "by-ref" / s3_root.bucket / "code") == TREE_B
        assert pinned.returncode == 0, pinned.stderr
        assert json.loads(pinned.stdout)["revision"] == first
        assert contents(tmp_path / "pinned" / s3_root.bucket / "code") == TREE_A
        assert CANARY not in by_ref.stdout + by_ref.stderr + pinned.stdout + pinned.stderr

    def test_an_unknown_snapshot_is_one_line_and_exit_1(self, tmp_path: Path) -> None:
        """A well-formed id the store does not hold: ``pull failed``, one line, exit 1."""
        root = tmp_path / "store"
        push_snapshot(write_tree(tmp_path / "project", TREE_A), root)
        unknown = "a" * 64
        result = cli(
            "pull",
            f"snapshot+{root.as_uri()}",
            "--snapshot",
            unknown,
            "--dest",
            str(tmp_path / "d"),
        )
        assert result.returncode == 1
        assert result.stdout == ""
        assert lines(result.stderr) == [
            f"runner-storage: pull failed: snapshot {unknown[:12]} at {root.as_uri()} does not"
            f" exist (no snapshots/{unknown}.json): check the id, or push the tree again"
        ]

    def test_an_unknown_ref_is_one_line_and_exit_1(self, tmp_path: Path) -> None:
        """A ref never pushed: one line that says how to push it, exit 1."""
        root = tmp_path / "store"
        push_snapshot(write_tree(tmp_path / "project", TREE_A), root)
        result = cli(
            "pull", f"snapshot+{root.as_uri()}", "--ref", "prod", "--dest", str(tmp_path / "d")
        )
        assert result.returncode == 1
        assert lines(result.stderr) == [
            f"runner-storage: pull failed: there is no ref 'prod' at {root.as_uri()}: push a"
            f" snapshot first (runner-storage push DIRECTORY {root.as_uri()} --ref prod)"
        ]

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            pytest.param(
                ["--snapshot", "abc"],
                "snapshot must be a snapshot id, 64 lowercase hex digits",
                id="short-id",
            ),
            pytest.param(["--ref", "bad ref"], "ref must be a name of letters", id="bad-ref"),
        ],
    )
    def test_a_bad_id_or_ref_is_one_line_and_exit_2(
        self, tmp_path: Path, option: list[str], message: str
    ) -> None:
        """A malformed id or ref is bad input: one line naming it, exit 2, nothing written."""
        root = tmp_path / "store"
        dest = tmp_path / "dest"
        result = cli("pull", f"snapshot+{root.as_uri()}", *option, "--dest", str(dest))
        assert result.returncode == 2
        (line,) = lines(result.stderr)
        assert message in line
        assert not dest.exists()


class TestDaemon:
    """``runner-storage run --once`` with snapshot sources, then ``status``."""

    def test_publishes_follows_and_pins(self, tmp_path: Path, s3_root: S3Root) -> None:
        """``kind = "snapshot"`` and ``snapshot+`` sources publish; a pinned one stays put.

        After a new push, the next run moves the followers to the new id and leaves the
        source pinned by ``snapshot =`` on its id; ``status`` shows each revision = id.
        """
        directory = write_tree(tmp_path / "project", TREE_A)
        local = tmp_path / "store"
        first = push_snapshot(directory, local).id
        s3_first = s3_root.push(directory)
        body = (
            f'[[sources]]\nname = "plain"\nkind = "snapshot"\nsource = "{local}"\n'
            f'[[sources]]\nname = "prefixed"\nsource = "snapshot+{local.as_uri()}"\n'
            f'[[sources]]\nname = "pinned"\nsource = "snapshot+{local.as_uri()}"\n'
            f'snapshot = "{first}"\n'
            f'[[sources]]\nname = "bucket"\nsource = "snapshot+{s3_root.url}"\n'
        )
        config = config_file(tmp_path, body)
        base = tmp_path / "root"
        env = s3_root.env()

        def run_and_status() -> dict[str, str]:
            run = cli("run", "--once", "--config", str(config), env=env)
            assert run.returncode == 0, run.stdout + run.stderr
            assert CANARY not in run.stdout + run.stderr
            status = cli("status", "--root", str(base), "--json")
            assert status.returncode == 0, status.stderr
            return {s["name"]: s["revision"] for s in json.loads(status.stdout)["sources"]}

        assert run_and_status() == {
            "plain": first,
            "prefixed": first,
            "pinned": first,
            "bucket": s3_first,
        }
        for name in ("plain", "prefixed", "pinned", "bucket"):
            assert contents(base / name) == TREE_A, name

        rewrite(directory, TREE_B)
        second = push_snapshot(directory, local).id
        s3_second = s3_root.push(directory)
        assert run_and_status() == {
            "plain": second,
            "prefixed": second,
            "pinned": first,
            "bucket": s3_second,
        }
        assert contents(base / "pinned") == TREE_A
        for name in ("plain", "prefixed", "bucket"):
            assert contents(base / name) == TREE_B, name

    def test_an_option_of_another_kind_is_one_line_and_exit_2(self, tmp_path: Path) -> None:
        """``branch = "main"`` on a snapshot source: one line naming both kinds, exit 2."""
        source = f"snapshot+{(tmp_path / 'store').as_uri()}"
        config = config_file(tmp_path, f'[[sources]]\nsource = "{source}"\nbranch = "main"\n')
        result = cli("run", "--once", "--config", str(config))
        assert result.returncode == 2
        assert lines(result.stderr) == [
            f"runner-storage: sources[0].branch: only applies to git sources, and '{source}' is"
            f" snapshot (from {config})"
        ]
        assert not (tmp_path / "root").exists()

    def test_a_bad_pin_is_one_line_and_exit_2(self, tmp_path: Path) -> None:
        """``snapshot = "abc"`` is refused before anything runs: one line, exit 2."""
        store = tmp_path / "store"
        body = f'[[sources]]\nkind = "snapshot"\nsource = "{store}"\nsnapshot = "abc"\n'
        result = cli("run", "--once", "--config", str(config_file(tmp_path, body)))
        assert result.returncode == 2
        assert lines(result.stderr) == [
            f"runner-storage: sources[0] ({store}): snapshot must be a snapshot id, 64 lowercase"
            " hex digits (runner-storage push prints it), got 'abc'"
        ]

    def test_ref_and_snapshot_together_are_one_line_and_exit_2(self, tmp_path: Path) -> None:
        """A source giving both a ref to follow and an id to pin is refused, as the step is."""
        store = tmp_path / "store"
        body = (
            f'[[sources]]\nkind = "snapshot"\nsource = "{store}"\nref = "prod"\n'
            f'snapshot = "{"a" * 64}"\n'
        )
        result = cli("check", "--config", str(config_file(tmp_path, body)))
        assert result.returncode == 2
        (line,) = lines(result.stderr)
        assert "ref and snapshot exclude each other" in line
        assert not (tmp_path / "root").exists()


class TestSteps:
    """``runner-storage steps --config F`` for snapshot sources."""

    def test_pinned_steps_with_secret_placeholders(self, tmp_path: Path, s3_root: S3Root) -> None:
        """Each step pins an id; ``{ env = ... }`` settings are placeholders, values nowhere.

        A pinned source gives its pin, one following a ref what the ref names now.
        """
        directory = write_tree(tmp_path / "project", TREE_A)
        local = tmp_path / "store"
        pinned = push_snapshot(directory, local).id
        following = push_snapshot(rewrite(directory, TREE_B), local, ref="prod").id
        in_bucket = s3_root.push(directory)
        body = (
            f'[[sources]]\nname = "pinned"\nsource = "snapshot+{local.as_uri()}"\n'
            f'snapshot = "{pinned}"\n'
            f'[[sources]]\nname = "prod"\nkind = "snapshot"\nsource = "{local}"\nref = "prod"\n'
            f'[[sources]]\nname = "bucket"\nsource = "snapshot+{s3_root.url}"\n'
            "settings = { key = { env = 'RS_SNAP_KEY' }, secret = { env = 'RS_SNAP_SECRET' },"
            f" endpoint_url = '{s3_root.server.endpoint_url}' }}\n"
        )
        config = config_file(tmp_path, body)
        env = {"RS_SNAP_KEY": s3_root.server.key, "RS_SNAP_SECRET": CANARY}
        result = cli("steps", "--config", str(config), "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {
            "pull": [
                step_of(local.as_uri(), pinned),
                step_of(local.as_uri(), following),
                step_of(
                    s3_root.url,
                    in_bucket,
                    package="s3fs",
                    key="{{ $RS_SNAP_KEY }}",
                    secret="{{ $RS_SNAP_SECRET }}",
                    endpoint_url=s3_root.server.endpoint_url,
                ),
            ]
        }
        assert CANARY not in result.stdout + result.stderr
        assert not (tmp_path / "root").exists()  # printing steps publishes nothing


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, made the current one for the test."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


class TestPullSnapshotStep:
    """``runner_storage.deployments.steps.pull_snapshot``, as Prefect's worker runs it."""

    def test_twice_in_one_process_the_second_is_a_no_op(
        self, tmp_path: Path, workdir: Path, s3_root: S3Root
    ) -> None:
        """The same directory both times; pinned, the second call makes no request at all."""
        snapshot = s3_root.push(write_tree(tmp_path / "project", TREE_A))
        settings = s3_root.settings()
        first = pull_snapshot(s3_root.url, snapshot=snapshot, **settings)
        assert first == {"directory": f"{s3_root.bucket}/code"}
        link = workdir / first["directory"]
        assert contents(link) == TREE_A
        version = link.resolve()
        state = workdir / ".runner-storage" / first["directory"] / "state.json"
        published_at = json.loads(state.read_text())["published_at"]
        s3_root.server.reset_requests()
        second = pull_snapshot(s3_root.url, snapshot=snapshot, **settings)
        assert second == first
        assert s3_root.server.requests() == []
        assert link.resolve() == version
        assert json.loads(state.read_text())["published_at"] == published_at

    def test_following_a_ref_reads_only_the_ref_and_picks_up_a_new_push(
        self, tmp_path: Path, workdir: Path, s3_root: S3Root
    ) -> None:
        """``ref=``: unchanged, only the ref is read (no manifest, no blob); then the new tree.

        (That the read is one request, not a HEAD and a GET, is ``tests/test_snapshots.py``'s.)
        """
        directory = write_tree(tmp_path / "project", TREE_A)
        s3_root.push(directory, ref="prod")
        settings = s3_root.settings()
        first = pull_snapshot(s3_root.url, ref="prod", **settings)
        version = (workdir / first["directory"]).resolve()
        s3_root.server.reset_requests()
        assert pull_snapshot(s3_root.url, ref="prod", **settings) == first
        requests = {(r.method, r.path) for r in s3_root.server.requests()}
        assert ("GET", f"/{s3_root.bucket}/code/refs/prod") in requests
        assert {path for _, path in requests} == {f"/{s3_root.bucket}/code/refs/prod"}
        assert (workdir / first["directory"]).resolve() == version
        s3_root.push(rewrite(directory, TREE_B), ref="prod")
        assert pull_snapshot(s3_root.url, ref="prod", **settings) == first
        assert contents(workdir / first["directory"]) == TREE_B

    def test_snapshot_and_ref_together_are_refused(self, tmp_path: Path, workdir: Path) -> None:
        """Both a pin and a ref: a ConfigurationError before anything is read or written."""
        root = tmp_path / "store"
        snapshot = push_snapshot(write_tree(tmp_path / "project", TREE_A), root).id
        with pytest.raises(ConfigurationError, match=r"snapshot .* or ref .*, not both"):
            pull_snapshot(root.as_uri(), snapshot=snapshot, ref="latest")
        assert list(workdir.iterdir()) == []

    def test_from_a_fresh_interpreter(self, tmp_path: Path) -> None:
        """``python -c`` in a working directory publishes there and prints the directory."""
        root = tmp_path / "store"
        snapshot = push_snapshot(write_tree(tmp_path / "project", TREE_A), root).id
        work = tmp_path / "fresh"
        work.mkdir()
        code = (
            "import json, sys\n"
            "from runner_storage.deployments.steps import pull_snapshot\n"
            "print(json.dumps(pull_snapshot(sys.argv[1], snapshot=sys.argv[2])))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, root.as_uri(), snapshot],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        directory = json.loads(result.stdout)["directory"]
        assert not Path(directory).is_absolute()
        assert contents(work / directory) == TREE_A


class TestFactory:
    """``snapshot+`` sources in create_storage_from_source and classify_source."""

    def test_a_snapshot_plus_s3_source_follows_latest(self) -> None:
        """``snapshot+s3://b/p`` is a SnapshotStorage of ``s3://b/p`` following ``latest``."""
        storage = create_storage_from_source("snapshot+s3://b/p", pull_interval=30)
        assert type(storage) is SnapshotStorage
        assert storage.root == "s3://b/p"
        assert storage.ref == "latest"
        assert storage.snapshot is None
        assert storage.pull_interval == 30
        assert storage.name == "b/p"

    def test_an_unknown_inner_scheme_is_one_line(self) -> None:
        """``snapshot+s4://x``: a one-line ConfigurationError naming the scheme."""
        with pytest.raises(ConfigurationError) as caught:
            create_storage_from_source("snapshot+s4://x")
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("unknown scheme 'snapshot+s4' in source 'snapshot+s4://x'")
        assert "snapshot+s3://" in message

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ("snapshot+s3://b/p", ("snapshot", "s3://b/p")),
            ("snapshot+gs://b/p", ("snapshot", "gs://b/p")),
            ("snapshot+az://c/p", ("snapshot", "az://c/p")),
            ("snapshot+file:///srv/store", ("snapshot", "file:///srv/store")),
            ("snapshot+https://host.example/store", ("snapshot", "https://host.example/store")),
            ("snapshot+memory://x/y", ("snapshot", "memory://x/y")),
            ("SNAPSHOT+s3://b/p", ("snapshot", "s3://b/p")),
            ("s3://b/p", ("remote", "s3://b/p")),
        ],
    )
    def test_classify_source(self, source: str, expected: tuple[str, str]) -> None:
        """The ``snapshot+`` prefix, in any case, picks snapshots and is dropped."""
        assert classify_source(source) == expected

    def test_a_password_in_a_snapshot_source_is_not_echoed(self) -> None:
        """An unknown inner scheme with a login: the line names the source without it."""
        with pytest.raises(ConfigurationError) as caught:
            classify_source("snapshot+s4://user:pw-CANARY-7@bucket/x")
        assert "pw-CANARY-7" not in str(caught.value)
