"""Local faults: a full disk, a read-only or unusable base path, writers and readers at once.

* A pull that runs out of space or hits a read-only file system fails with exit code 1 and
  one line that says so and what to do; the published version stays intact and the space
  the failed pull used is given back (no partial files are left).
* Two daemons and CLI pulls working on the same root and source at once never corrupt it.
* A reader walking ``BASE/NAME`` during 100 publishes never sees a missing, partial or
  mixed file: every file of a version it entered carries that version's marker.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from daemon_process import RUNNER_STORAGE, DaemonFactory, RunningDaemon, cli, wait_for
from fault_tools import (
    content_listing,
    leftovers,
    published_version,
    state_of,
    tree_listing,
    upstream_listing,
)
from servers.git_daemon import GitDaemon
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory, run_git
from servers.s3 import S3Server

from runner_storage.git import GitRepository

NAME = "code"


# --- a small file system -------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A directory on a 2 MiB file system (tmpfs), or a stand-in for one.

    When mounting is not permitted, ``path`` is a plain directory and the CLI runs with
    RLIMIT_FSIZE instead (no single file over 2 MiB).
    """

    path: Path
    mounted: bool

    def free(self) -> int:
        """Free bytes (tmpfs) or 0 (fallback)."""
        if not self.mounted:
            return 0
        info = os.statvfs(self.path)
        return info.f_bavail * info.f_frsize

    def remount(self, mode: str) -> None:
        """Remount read-only (``"ro"``) or read-write (``"rw"``)."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)


LIMIT = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 2 MiB tmpfs at a fresh directory, unmounted at teardown (skips remounting if not root)."""
    path = tmp_path / "small"
    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={LIMIT}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    disk = SmallDisk(path, mount.returncode == 0)
    yield disk
    if disk.mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def limited_cli(disk: SmallDisk, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI; without a mounted small disk, a file-size limit stands in for it."""

    def limit() -> None:  # pragma: no cover - runs in the child
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    result = subprocess.run(
        [RUNNER_STORAGE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=None if disk.mounted else limit,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stderr


def one_line(stderr: str, *phrases: str) -> str:
    """The single line of ``stderr``; it contains one of ``phrases``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert any(phrase in lines[0] for phrase in phrases), lines[0]
    return lines[0]


def staging_bytes(root: Path) -> int:
    """Bytes of files left in the source's staging directory."""
    staging = root / ".runner-storage" / NAME / "staging"
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


FULL = ("the disk is full", "free space", "File too large")
READ_ONLY = ("read-only",)


class TestFullDisk:
    """Running out of space: a clear error, the old version intact, the space given back."""

    def test_git_pull_that_does_not_fit(
        self,
        small_disk: SmallDisk,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """A commit bigger than the disk: exit 1, one line, v1 published, staging empty."""
        root, repo, old, _ = _git_disk_overflow(small_disk, git_daemon, upstream_repo)
        version = published_version(root, NAME)
        assert version is not None
        assert tree_listing(version) == upstream_listing(repo.path, old)
        assert staging_bytes(root) == 0
        assert leftovers(root, NAME) == []

    def test_git_failed_pull_gives_the_space_back(
        self,
        small_disk: SmallDisk,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """After the failed pull, the space it used is free again (no partial git objects)."""
        if not small_disk.mounted:
            pytest.skip("needs root to mount a file system")
        _, _, _, free_before = _git_disk_overflow(small_disk, git_daemon, upstream_repo)
        assert small_disk.free() >= free_before - 64 * 1024

    def test_s3_pull_that_does_not_fit(self, small_disk: SmallDisk, s3_server: S3Server) -> None:
        """Objects bigger than the disk: exit 1, one line, v1 published, no partial files."""
        bucket = s3_server.new_bucket("full")
        s3_server.put(bucket, f"{NAME}/a.txt", b"v1\n")
        root = small_disk.path / "root"
        env = {
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        }
        args = ("pull", f"s3://{bucket}/{NAME}", "--dest", str(root), "--name", NAME)
        code, stderr = limited_cli(small_disk, *args, env=env)
        assert code == 0, stderr
        free_before = small_disk.free()
        for index in range(3):
            s3_server.put(bucket, f"{NAME}/big{index}.bin", secrets.token_bytes(900 * 1024))
        s3_server.put(bucket, f"{NAME}/huge.bin", secrets.token_bytes(LIMIT + 1024))
        code, stderr = limited_cli(small_disk, *args, env=env)
        assert code == 1
        one_line(stderr, *FULL)
        version = published_version(root, NAME)
        assert version is not None
        assert tree_listing(version) == content_listing({"a.txt": b"v1\n"})
        assert staging_bytes(root) == 0
        assert leftovers(root, NAME) == []
        if small_disk.mounted:
            assert small_disk.free() >= free_before - 64 * 1024


def _git_disk_overflow(
    disk: SmallDisk, git_daemon: GitDaemon, upstream_repo: UpstreamRepoFactory
) -> tuple[Path, UpstreamRepo, str, int]:
    """Publish v1 on the small disk, then fail to pull a commit that does not fit.

    Returns the root, the repository, v1's SHA and the free bytes before the failed pull.
    """
    repo = upstream_repo()
    root = disk.path / "root"
    url = git_daemon.url_for(repo)
    code, stderr = limited_cli(disk, "pull", url, "--dest", str(root), "--name", NAME)
    assert code == 0, stderr
    old = repo.head()
    free_before = disk.free()
    repo.commit({"data/big.bin": secrets.token_bytes(3 * 1024 * 1024)})
    code, stderr = limited_cli(disk, "pull", url, "--dest", str(root), "--name", NAME)
    assert code == 1
    one_line(stderr, *FULL)
    return root, repo, old, free_before


class TestUnwritableBasePath:
    """A read-only file system, or a base path that cannot be a directory."""

    def test_read_only_file_system(
        self,
        small_disk: SmallDisk,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """The base path turned read-only: exit 1, one line saying so; v1 stays readable."""
        if not small_disk.mounted:
            pytest.skip("needs root to mount a file system")
        repo = upstream_repo()
        root = small_disk.path / "root"
        url = git_daemon.url_for(repo)
        assert cli("pull", url, "--dest", str(root), "--name", NAME).returncode == 0
        old = repo.head()
        repo.commit({"flows/a.py": "A = 2\n"})
        small_disk.remount("ro")
        try:
            result = cli("pull", url, "--dest", str(root), "--name", NAME)
            assert result.returncode == 1
            one_line(result.stderr, *READ_ONLY)
            version = published_version(root, NAME)
            assert version is not None
            assert tree_listing(version) == upstream_listing(repo.path, old)
        finally:
            small_disk.remount("rw")
        assert leftovers(root, NAME) == []

    def test_base_path_below_a_file(
        self, git_daemon: GitDaemon, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """--dest inside a regular file: one line naming the file; nothing is created."""
        repo = upstream_repo()
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("x")
        result = cli("pull", git_daemon.url_for(repo), "--dest", str(blocker / "root"))
        assert result.returncode == 2
        one_line(result.stderr, f"{blocker} is not a directory")
        assert blocker.read_text() == "x"


# --- contention ----------------------------------------------------------------------------


def _check_versions_complete(root: Path, repo: UpstreamRepo) -> None:
    """Every kept version is a whole upstream commit (named by its SHA)."""
    for version in (root / ".runner-storage" / NAME / "versions").iterdir():
        sha = version.name.split("-")[0]
        assert tree_listing(version) == upstream_listing(repo.path, sha), version.name


class TestContention:
    """Several writers on one root, and readers while versions are swapped."""

    def test_two_daemons_and_cli_pulls_on_one_root(
        self,
        start_daemon: DaemonFactory,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """Two daemons and a CLI loop publish the same source while upstream moves: no damage."""
        repo = upstream_repo()
        root = tmp_path / "shared"
        url = git_daemon.url_for(repo)
        config = (
            f'root = "{root}"\ngrace_period = 1\nkeep_versions = 2\n'
            f'[[sources]]\nname = "{NAME}"\nsource = "{url}"\npull_interval = 0.2\n'
        )
        first = start_daemon(config)
        second = start_daemon(config)
        cli_codes: list[int] = []
        stop = threading.Event()

        def cli_loop() -> None:
            while not stop.is_set():
                cli_codes.append(cli("pull", url, "--dest", str(root), "--name", NAME).returncode)

        puller = threading.Thread(target=cli_loop)
        puller.start()
        try:
            for index in range(12):
                repo.commit({"flows/a.py": f"A = {index}\n", f"flows/n{index}.py": "N = 1\n"})
                time.sleep(0.25)  # let the writers overlap with upstream changes
        finally:
            stop.set()
            puller.join()
        head = repo.head()
        for daemon in (first, second):
            daemon.signal(signal.SIGHUP)

            def at_head(watched: RunningDaemon = daemon) -> bool:
                return bool(watched.sources()[NAME]["revision"] == head)

            wait_for(at_head, what="both daemons at the head")
        assert cli("pull", url, "--dest", str(root), "--name", NAME).returncode == 0
        assert cli_codes, "the CLI loop never ran"
        assert set(cli_codes) == {0}, cli_codes
        for daemon in (first, second):
            assert daemon.process.popen.poll() is None
            assert not daemon.events("sync_failed"), daemon.events("sync_failed")
            daemon.signal(signal.SIGTERM)  # no writer may run while the disk is checked
            assert daemon.wait_exit() == 0
        version = published_version(root, NAME)
        assert version is not None
        assert tree_listing(version) == upstream_listing(repo.path, head)
        state = state_of(root, NAME)
        assert state is not None
        assert state["revision"] == head
        assert leftovers(root, NAME) == []
        _check_versions_complete(root, repo)

    def test_reader_never_sees_a_missing_or_mixed_file(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """100 publishes while a reader walks the tree: whole files, one version per walk."""
        repo = upstream_repo()
        files = [f"pkg{d}/m{i}.py" for d in range(3) for i in range(10)]
        shas = _marker_commits(repo, files, 100)
        root = tmp_path / "root"
        storage = GitRepository(repo.file_url, name=NAME, branch="main", grace_period=1)
        storage.set_base_path(root)
        run_git("update-ref", "refs/heads/main", shas[0], cwd=repo.path)
        anyio.run(storage.pull_code)
        reader = _Reader(root / NAME, files)
        reader.start()
        try:
            for sha in shas[1:]:
                run_git("update-ref", "refs/heads/main", sha, cwd=repo.path)
                assert anyio.run(storage.pull_code).changed
        finally:
            reader.stop()
        assert reader.errors == []
        assert reader.walks >= 20, reader.walks
        assert len(reader.markers) >= 10, "the reader saw too few versions to prove anything"
        assert leftovers(root, NAME) == []


def _marker_commits(repo: UpstreamRepo, files: list[str], count: int) -> list[str]:
    """``count`` commits on branch ``markers``; commit i writes ``version i`` into every file."""
    stream = bytearray()
    for index in range(count):
        message = f"version {index}".encode()
        stream += b"commit refs/heads/markers\n"
        stream += b"committer T <t@example.com> 1700000000 +0000\n"
        stream += b"data %d\n%s\n" % (len(message), message)
        for path in files:
            data = f"VERSION = {index}  # {path}\n".encode() + b"#" * 200 + b"\n"
            stream += f"M 100644 inline {path}\n".encode()
            stream += b"data %d\n%s\n" % (len(data), data)
    subprocess.run(
        ["git", "fast-import", "--quiet"], input=bytes(stream), cwd=repo.path, check=True
    )
    out = run_git("rev-list", "--reverse", "markers", cwd=repo.path).stdout.split()
    return out[-count:]


class _Reader:
    """Walks the published tree in a loop, two ways, recording every inconsistency.

    * by version: resolve ``BASE/NAME`` once, then read every file of that version; all must
      exist and carry the same marker (what a runner that ``chdir``-ed in sees);
    * by path: open ``BASE/NAME/FILE`` afresh for each file; each must be whole.
    """

    def __init__(self, link: Path, files: list[str]) -> None:
        self.link = link
        self.files = files
        self.errors: list[str] = []
        self.markers: set[str] = set()
        self.walks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start walking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop walking and wait for the thread."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()

    @staticmethod
    def _marker(text: str, path: str) -> str | None:
        first = text.split("\n", 1)[0]
        if not first.startswith("VERSION = ") or not first.endswith(f"# {path}"):
            return None
        if len(text) != len(first) + 1 + 201:
            return None
        return first.split()[2]

    def _run(self) -> None:
        while not self._stop.is_set():
            version = os.path.realpath(self.link)
            seen = set()
            for path in self.files:
                try:
                    text = Path(version, path).read_text()
                except OSError as exc:
                    self.errors.append(f"{path} missing in {version}: {exc}")
                    continue
                marker = self._marker(text, path)
                if marker is None:
                    self.errors.append(f"{path} is partial in {version}")
                seen.add(marker)
            if len(seen) != 1:
                self.errors.append(f"mixed versions in {version}: {sorted(map(str, seen))}")
            self.markers |= {m for m in seen if m}
            for path in self.files:
                with contextlib.suppress(FileNotFoundError):
                    text = (self.link / path).read_text()
                    if self._marker(text, path) is None:
                        self.errors.append(f"{path} read through the link is partial")
                    continue
                self.errors.append(f"{path} missing through the link")
            self.walks += 1
            time.sleep(0.005)  # leave the publisher (same interpreter) room to run
