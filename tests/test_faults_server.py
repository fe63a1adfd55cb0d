"""Server faults against the running daemon: errors, resets, stalls, a server killed mid-pull.

Every scenario runs the real daemon (``runner-storage run``) against a real server, with
the fault either injected by the server itself (``git_http_server.fail_next``), by the
fault proxy in front of moto (S3 ``503 SlowDown``, connection resets, a stall), or by
killing a server process of the test's own mid-pull and starting it again on the same port.

Each time: the last good version stays published and intact, the source backs off
(``consecutive_failures`` and ``pulls_total{result="error"}`` grow), ``/readyz`` stays
ready until ``max_staleness`` has passed and only then turns false, and the same daemon
process publishes the new upstream revision once the server is healthy again.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from daemon_process import DaemonFactory, RunningDaemon, wait_for
from fault_tools import (
    TreeListing,
    content_listing,
    metric,
    published_version,
    tree_listing,
    upstream_listing,
)
from servers.fault_proxy import FaultProxy, Mode
from servers.git_daemon import GitDaemon, start_git_daemon
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory
from servers.procs import descendants, process_table
from servers.s3 import S3Server, start_s3_server

NAME = "code"
TOKEN_ENV = "FAULT_SERVER_GIT_TOKEN"
#: Fast backoff so that a few failures happen in a second or two.
DAEMON = 'root = "{root}"\nbackoff_initial = 0.2\nbackoff_max = 1.0\n'


def source_table(
    source: str, *, staleness: float = 120, interval: float = 0.5, extra: str = ""
) -> str:
    """The ``[[sources]]`` table of the one source every scenario runs."""
    return (
        f'[[sources]]\nname = "{NAME}"\nsource = "{source}"\npull_interval = {interval}\n'
        f"max_staleness = {staleness}\n{extra}\n"
    )


@dataclass
class Observed:
    """What the daemon reports about the source, from /sources and /metrics together."""

    revision: str | None
    failures: int
    errors: float
    ready: bool
    age: float | None
    last_error: str | None


def observe(daemon: RunningDaemon) -> Observed:
    """Read /sources, /metrics and /readyz once."""
    source = daemon.sources()[NAME]
    _, body = daemon.request("/metrics")
    errors = metric(body, f'runner_storage_pulls_total{{result="error",source="{NAME}"}}')
    status, _ = daemon.request("/readyz")
    return Observed(
        revision=source["revision"],
        failures=source["consecutive_failures"],
        errors=errors or 0.0,
        ready=status == 200,
        age=source["last_success_age_seconds"],
        last_error=source["last_error"],
    )


def assert_tree(daemon: RunningDaemon, expected: TreeListing) -> None:
    """The published tree is exactly ``expected``."""
    version = published_version(daemon.root, NAME)
    assert version is not None, "nothing is published"
    assert tree_listing(version) == expected


def wait_backing_off(daemon: RunningDaemon, revision: str, *, failures: int = 3) -> Observed:
    """Wait for ``failures`` failed pulls in a row; the old revision must stay published."""

    def failing() -> Observed | None:
        seen = observe(daemon)
        return seen if seen.failures >= failures else None

    seen: Observed = wait_for(failing, timeout=60, what=f"{failures} consecutive failures")
    assert seen.revision == revision
    assert seen.errors >= seen.failures
    return seen


def assert_ready_until_stale(daemon: RunningDaemon, limit: float) -> None:
    """/readyz says ready while the last success is younger than ``limit``, then not.

    Readiness and the age come from two requests a few milliseconds apart, hence the
    small tolerance.
    """
    tolerance = 0.3
    saw_ready_while_failing = False
    deadline = time.monotonic() + limit + 30
    while True:
        seen = observe(daemon)
        assert seen.age is not None
        if seen.ready:
            assert seen.age <= limit + tolerance, f"ready although stale ({seen.age:.2f}s)"
            saw_ready_while_failing = saw_ready_while_failing or seen.failures > 0
        else:
            assert seen.age >= limit - tolerance, f"not ready {seen.age:.2f}s after success"
            break
        assert time.monotonic() < deadline, "readiness never turned false"
        time.sleep(0.1)
    assert saw_ready_while_failing, "the fault made the source unready before max_staleness"
    _, verbose = daemon.request("/readyz?verbose")
    assert f"[-]{NAME} stale" in verbose


def wait_recovered(daemon: RunningDaemon, expected: TreeListing, revision: str | None) -> None:
    """The same daemon publishes ``expected`` (at ``revision``) and is ready and healthy again.

    Upstream changes that take several requests (S3 uploads) may be published in steps;
    each step is a real upstream state, and the last one must be ``expected``.
    """

    def recovered() -> Observed | None:
        seen = observe(daemon)
        if not seen.ready or seen.failures or seen.revision is None:
            return None
        version = published_version(daemon.root, NAME)
        return seen if version is not None and tree_listing(version) == expected else None

    seen: Observed = wait_for(recovered, timeout=60, what="recovery")
    if revision is not None:
        assert seen.revision == revision
    assert seen.last_error is None
    assert daemon.process.popen.poll() is None, "the daemon had to be restarted"
    assert daemon.events("sync_recovered")


# --- git over smart HTTP: the server answers 500 / 503 -------------------------------------


@pytest.fixture
def git_source(
    git_http_server: GitHTTPServer, upstream_repo: UpstreamRepoFactory
) -> tuple[UpstreamRepo, str, dict[str, str]]:
    """An upstream repository, its source table on the HTTP server, and the token env."""
    repo = upstream_repo()
    credentials = f'credentials = {{ username = "alice", token = {{ env = "{TOKEN_ENV}" }} }}'
    table = source_table(git_http_server.url_for(repo), extra=credentials)
    return repo, table, {TOKEN_ENV: git_http_server.password}


class TestGitServerErrors:
    """The git server answering 500 or 503 for a while."""

    @pytest.mark.parametrize("status", [500, 503])
    def test_error_answers_back_off_and_recover(
        self,
        start_daemon: DaemonFactory,
        git_http_server: GitHTTPServer,
        git_source: tuple[UpstreamRepo, str, dict[str, str]],
        status: int,
    ) -> None:
        """Failed pulls back off and keep the old version; the daemon recovers by itself."""
        repo, table, env = git_source
        daemon = start_daemon(DAEMON + table, env=env, wait_ready=True)
        old = repo.head()
        assert observe(daemon).revision == old
        git_http_server.fail_next(8, status)
        new = repo.commit({"flows/a.py": "A = 'new'\n"})
        seen = wait_backing_off(daemon, old)
        assert f"error: {status}" in (seen.last_error or "")
        assert seen.ready, "a short outage must not make the source unready"
        assert_tree(daemon, upstream_listing(repo.path, old))
        wait_recovered(daemon, upstream_listing(repo.path, new), new)


# --- S3 behind the fault proxy: SlowDown, resets, a stall ----------------------------------


@dataclass
class Bucket:
    """A bucket prefix at revision v1 or v2 (v2 changes one object and adds one)."""

    server: S3Server
    name: str

    V1: ClassVar[dict[str, bytes]] = {
        "flows/a.py": b"A = 1\n",
        "flows/b.py": b"B = 1\n",
        "README.md": b"v1\n",
    }
    V2: ClassVar[dict[str, bytes]] = {**V1, "flows/a.py": b"A = 2\n", "flows/new.py": b"N = 2\n"}

    def write(self, files: dict[str, bytes]) -> None:
        """Upload ``files`` under the prefix."""
        for path, data in files.items():
            self.server.put(self.name, f"{NAME}/{path}", data)


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    """A fresh bucket holding v1."""
    made = Bucket(s3_server, s3_server.new_bucket("faults"))
    made.write(Bucket.V1)
    return made


def s3_table(
    bucket: str,
    endpoint: str,
    *,
    staleness: float = 120,
    timeout: float = 30,
    interval: float = 0.5,
) -> str:
    """The source table of an S3 prefix at ``endpoint``.

    s3fs and botocore retry throttling and resets 25 times over half a minute inside one
    pull; one botocore attempt per s3fs try keeps the scenarios short (users tune the same
    setting).
    """
    settings = (
        f'settings = {{ endpoint_url = "{endpoint}", key = "testing", secret = "testing",'
        " config_kwargs = { retries = { max_attempts = 1 } } }\n"
        f"timeout = {timeout}"
    )
    return source_table(
        f"s3://{bucket}/{NAME}", staleness=staleness, interval=interval, extra=settings
    )


@dataclass(frozen=True)
class S3Fault:
    """A proxy mode, the per-pull timeout and max_staleness to run it with, and the error."""

    mode: Mode
    timeout: float
    staleness: float
    message: str


class TestS3ServerFaults:
    """S3 throttling, connection resets and a stalled server, through the fault proxy."""

    @pytest.mark.parametrize(
        "fault",
        [
            # s3fs sleeps ~2 s between its own five tries of each call: one pull takes ~4 s.
            S3Fault("slow_down", timeout=30, staleness=8, message="reduce your request rate"),
            S3Fault("reset", timeout=30, staleness=4, message="cannot reach"),
            S3Fault("stall", timeout=1, staleness=4, message="timed out after 1s"),
        ],
        ids=["slow-down-503", "connection-reset", "stall"],
    )
    def test_fault_back_off_stale_recover(
        self,
        start_daemon: DaemonFactory,
        fault_proxy: Callable[[int], FaultProxy],
        bucket: Bucket,
        fault: S3Fault,
    ) -> None:
        """Failing pulls keep v1; readiness holds until max_staleness; healing publishes v2."""
        mode, staleness, message = fault.mode, fault.staleness, fault.message
        timeout = fault.timeout
        proxy = fault_proxy(bucket.server.port)
        table = s3_table(bucket.name, proxy.url, staleness=staleness, timeout=timeout)
        daemon = start_daemon(DAEMON + table, wait_ready=True)
        old = observe(daemon).revision
        assert old is not None
        proxy.set_mode(mode)
        bucket.write(Bucket.V2)
        assert_ready_until_stale(daemon, staleness)
        seen = wait_backing_off(daemon, old)
        assert message in (seen.last_error or ""), seen.last_error
        assert_tree(daemon, content_listing(Bucket.V1))
        if mode == "stall":
            # The timeout ended the pull: no transfer of it is left running in the daemon.
            assert not descendants(daemon.process.pid)
        proxy.set_mode("forward")
        wait_recovered(daemon, content_listing(Bucket.V2), None)
        # Calls abandoned by the timeout may still hang in threads: SIGTERM exits promptly.
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=10) == 0
        assert time.monotonic() - started < 5


# --- servers killed mid-pull and started again on the same port ---------------------------


def _kill_group(pid: int) -> None:
    """SIGKILL a server's whole process group (the server is its leader)."""
    os.killpg(pid, signal.SIGKILL)


def _stop_all(stops: list[Callable[[], None]]) -> None:
    """Stop every server, newest first (a restarted one holds the port of the one before).

    Each is stopped even if stopping another failed; the first failure is raised at the end.
    """
    failures: list[AssertionError] = []
    for stop in stops:
        try:
            stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[list[S3Server]]:
    """Room for the test's own moto servers; each is stopped (and checked) at teardown."""
    servers: list[S3Server] = []
    yield servers
    _stop_all([server.stop for server in reversed(servers)])


@pytest.fixture
def own_git_daemon() -> Iterator[list[GitDaemon]]:
    """Room for the test's own git daemons; each is stopped (and checked) at teardown."""
    daemons: list[GitDaemon] = []
    yield daemons
    _stop_all([git_daemon.stop for git_daemon in reversed(daemons)])


class TestServerKilledMidPull:
    """The server process dies in the middle of a pull, then comes back."""

    def test_moto_killed_while_objects_download(
        self, start_daemon: DaemonFactory, own_moto: list[S3Server], tmp_path: Path
    ) -> None:
        """Killed after 20 object GETs: v1 stays, readiness goes stale, v2 follows the restart."""
        moto = start_s3_server(tmp_path)
        own_moto.append(moto)
        bucket = moto.new_bucket("killed")
        v1 = {f"obj/{i:03}.txt": f"v1 {i}\n".encode() * 50 for i in range(150)}
        v2 = {path: data.replace(b"v1", b"v2") for path, data in v1.items()}
        for path, data in v1.items():
            moto.put(bucket, f"{NAME}/{path}", data)
        staleness = 10.0
        # A long interval: the pull of v2 starts on SIGHUP, once all of v2 is uploaded.
        table = s3_table(bucket, moto.endpoint_url, staleness=staleness, interval=3600)
        daemon = start_daemon(DAEMON + table, wait_ready=True)
        old = observe(daemon).revision
        assert old is not None
        for path, data in v2.items():
            moto.put(bucket, f"{NAME}/{path}", data)
        moto.reset_requests()
        daemon.signal(signal.SIGHUP)
        wait_for(
            lambda: moto.request_count("GET", f"/{bucket}/{NAME}/") >= 20,
            timeout=30,
            what="20 object downloads",
        )
        _kill_group(moto.process.pid)
        moto.process.popen.wait(10)
        assert_ready_until_stale(daemon, staleness)
        seen = wait_backing_off(daemon, old)
        assert "cannot reach" in (seen.last_error or ""), seen.last_error
        assert_tree(daemon, content_listing(v1))

        again = start_s3_server(tmp_path, port=moto.port)  # an empty moto on the same port
        own_moto.append(again)
        again.client().create_bucket(Bucket=bucket)
        for path, data in v2.items():
            again.put(bucket, f"{NAME}/{path}", data)
        daemon.signal(signal.SIGHUP)  # the daemon may have published part of the upload
        wait_recovered(daemon, content_listing(v2), None)

    def test_git_daemon_killed_while_packing(
        self,
        start_daemon: DaemonFactory,
        own_git_daemon: list[GitDaemon],
        upstream_repo: UpstreamRepoFactory,
        git_project_root: Path,
        tmp_path: Path,
    ) -> None:
        """Killed while upload-pack runs for the daemon: v1 stays; v2 follows the restart."""
        repo = upstream_repo()
        server = start_git_daemon(git_project_root, tmp_path)
        own_git_daemon.append(server)
        staleness = 4.0
        daemon = start_daemon(
            DAEMON + source_table(server.url_for(repo), staleness=staleness), wait_ready=True
        )
        old = repo.head()
        # Several MB of random data keep upload-pack busy long enough to be caught at work.
        new = repo.commit({"data/blob.bin": secrets.token_bytes(6 * 1024 * 1024)})

        def packing() -> bool:
            table = process_table()
            return any(
                table[pid].command in ("git-upload-pack", "git") and table[pid].ppid != 1
                for pid in descendants(server.process.pid, table)
            )

        wait_for(packing, timeout=30, what="upload-pack serving the daemon")
        _kill_group(server.process.pid)
        server.process.popen.wait(10)
        assert_ready_until_stale(daemon, staleness)
        seen = wait_backing_off(daemon, old)
        assert "Connection refused" in (seen.last_error or ""), seen.last_error
        assert_tree(daemon, upstream_listing(repo.path, old))

        again = start_git_daemon(git_project_root, tmp_path, port=server.port)
        own_git_daemon.append(again)
        wait_recovered(daemon, upstream_listing(repo.path, new), new)
