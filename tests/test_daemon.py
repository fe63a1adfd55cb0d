"""The daemon end to end: a real ``runner-storage run`` process, read over HTTP, signalled."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_process import DaemonFactory, RunningDaemon, cli, wait_for
from fault_tools import leftovers, run_cli, start_cli, stopped_on_exit
from http_peers import QuietHandler, serving
from servers.fault_proxy import FaultProxy
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepoFactory
from servers.procs import LOOPBACK

TOKEN = "sync-token-0123456789"


def git_source(url: str, name: str, extra: str = "") -> str:
    """A [[sources]] table for a git source."""
    return f'[[sources]]\nname = "{name}"\nsource = "{url}"\n{extra}\n'


def published_revision(daemon: RunningDaemon, name: str) -> str | None:
    """The revision /sources reports for ``name``."""
    revision: str | None = daemon.sources()[name]["revision"]
    return revision


def metric(daemon: RunningDaemon, sample: str) -> float | None:
    """The value of one sample line (name and labels exactly) in /metrics."""
    _, body = daemon.request("/metrics")
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


class TestHealth:
    """Readiness, liveness and the sources view tell the truth."""

    def test_good_and_broken_sources(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A broken source never stops a good one; readiness says which is which."""
        repo = upstream_repo()
        missing = (tmp_path / "missing.git").as_uri()
        daemon = start_daemon(
            'root = "{root}"\nbackoff_initial = 0.2\nbackoff_max = 0.5\n'
            + git_source(repo.file_url, "good")
            + git_source(missing, "broken")
        )
        wait_for(lambda: published_revision(daemon, "good"), what="good published")
        assert published_revision(daemon, "good") == repo.head()
        assert (daemon.root / "good" / "flows" / "a.py").is_file()

        status, body = daemon.request("/readyz?verbose")
        assert status == 503
        assert "[+]good ok" in body
        assert "[-]broken" in body
        assert daemon.request("/livez")[0] == 200

        # The broken source keeps retrying with backoff, but its error is logged once.
        wait_for(
            lambda: (
                (metric(daemon, 'runner_storage_pulls_total{result="error",source="broken"}') or 0)
                >= 3
            ),
            what="three failed pulls",
        )
        failed = [e for e in daemon.events("sync_failed") if e["source"] == "broken"]
        assert len(failed) == 1
        # The daemon is what retries, so its log says when: half a step to a step of backoff.
        assert 0.1 <= failed[0]["retry_in_s"] <= 0.2
        assert daemon.sources()["broken"]["consecutive_failures"] >= 3
        assert (metric(daemon, 'runner_storage_consecutive_failures{source="broken"}') or 0) >= 3
        assert metric(daemon, 'runner_storage_pulls_total{result="changed",source="good"}') == 1
        assert (
            metric(
                daemon,
                f'runner_storage_published_revision_info{{revision="{repo.head()}",source="good"}}',
            )
            == 1
        )

    def test_staleness_turns_readiness_false(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """Once the last success is older than max_staleness, /readyz fails."""
        repo = upstream_repo()
        daemon = start_daemon(
            'root = "{root}"\n'
            + git_source(repo.file_url, "code", "pull_interval = 3600\nmax_staleness = 1.5"),
            wait_ready=True,
        )
        wait_for(lambda: daemon.request("/readyz")[0] == 503, timeout=10, what="staleness")
        _, body = daemon.request("/readyz?verbose")
        assert "[-]code stale" in body

    def test_restart_keeps_serving_the_published_version(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A restarted daemon whose source is down still reports the version on disk."""
        repo = upstream_repo()
        config = 'root = "' + str(tmp_path / "shared-root") + '"\n'
        first = start_daemon(config + git_source(repo.file_url, "code"), wait_ready=True)
        first.process.stop()
        head = repo.head()
        os.rename(repo.path, repo.path.with_name("gone.git"))
        second = start_daemon(config + "backoff_initial = 5\n" + git_source(repo.file_url, "code"))
        wait_for(lambda: second.sources()["code"]["consecutive_failures"] >= 1, what="a failure")
        assert second.sources()["code"]["revision"] == head
        assert (tmp_path / "shared-root" / "code" / "README.md").is_file()
        assert second.request("/readyz")[0] == 200


class TestTimeouts:
    """A pull ended by the per-pull ``timeout`` is recorded like any other failure."""

    def test_status_and_sources_agree_after_a_timeout(
        self,
        start_daemon: DaemonFactory,
        git_http_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
        fault_proxy: Callable[[int], FaultProxy],
    ) -> None:
        """After a stalled pull times out, ``status --json`` and ``/sources`` say the same.

        The git server is reached through a proxy that stops answering; the long backoff
        keeps the next attempt from changing the state while both are read.
        """
        repo = upstream_repo()
        proxy = fault_proxy(git_http_server.port)
        credentials = 'credentials = { username = "alice", token = { env = "STALL_TOKEN" } }'
        daemon = start_daemon(
            'root = "{root}"\nbackoff_initial = 60\nbackoff_max = 60\n'
            + git_source(
                f"{proxy.url}/{repo.relpath}",
                "code",
                f"pull_interval = 0.5\ntimeout = 1\n{credentials}",
            ),
            env={"STALL_TOKEN": git_http_server.password},
            wait_ready=True,
        )
        proxy.set_mode("stall")
        served = wait_for(
            lambda: (entry := daemon.sources()["code"])["consecutive_failures"] and entry,
            what="the timed-out pull",
        )
        assert "pull of code timed out after 1s; nothing was published" in served["last_error"]
        result = cli("status", "--root", str(daemon.root), "--json")
        assert result.returncode == 0, result.stderr
        (recorded,) = json.loads(result.stdout)["sources"]
        assert (recorded["last_error"], recorded["consecutive_failures"]) == (
            served["last_error"],
            served["consecutive_failures"],
        )
        assert recorded["revision"] == served["revision"] == repo.head()


class TestSyncTriggers:
    """POST /sync/NAME and SIGHUP pull now."""

    def test_post_sync_with_token(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """Only the configured bearer token may trigger a pull; it publishes the new commit."""
        repo = upstream_repo()
        daemon = start_daemon(
            'root = "{root}"\n' + git_source(repo.file_url, "code", "pull_interval = 3600"),
            env={"RUNNER_STORAGE_SYNC_TOKEN": TOKEN},
            wait_ready=True,
        )
        new = repo.commit({"flows/new.py": "x = 1\n"})
        assert daemon.request("/sync/code", method="POST")[0] == 401
        bad = {"Authorization": "Bearer wrong"}
        assert daemon.request("/sync/code", method="POST", headers=bad)[0] == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert daemon.request("/sync/nope", method="POST", headers=good)[0] == 404
        assert daemon.request("/sync/code", method="GET", headers=good)[0] == 405
        assert daemon.request("/nothing-here")[0] == 404
        status, body = daemon.request("/sync/code", method="POST", headers=good)
        assert (status, json.loads(body)) == (202, {"source": "code", "queued": True})
        wait_for(lambda: published_revision(daemon, "code") == new, what="new commit")
        assert (daemon.root / "code" / "flows" / "new.py").read_text() == "x = 1\n"

    def test_sync_disabled_without_token(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """With no token configured the endpoint refuses everyone."""
        repo = upstream_repo()
        daemon = start_daemon('root = "{root}"\n' + git_source(repo.file_url, "code"))
        status, body = daemon.request(
            "/sync/code", method="POST", headers={"Authorization": "Bearer anything"}
        )
        assert status == 403
        assert "disabled" in body

    def test_sighup_pulls_now(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """SIGHUP makes every source pull at once, without waiting for its interval."""
        repo = upstream_repo()
        daemon = start_daemon(
            'root = "{root}"\n' + git_source(repo.file_url, "code", "pull_interval = 3600"),
            wait_ready=True,
        )
        new = repo.commit({"README.md": "changed\n"})
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: published_revision(daemon, "code") == new, what="pull after SIGHUP")


class TestLifecycle:
    """Start-up, --once, shutdown and exit codes."""

    def test_sigterm_exits_zero(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """SIGTERM stops the daemon promptly with exit code 0."""
        repo = upstream_repo()
        daemon = start_daemon(
            'root = "{root}"\n' + git_source(repo.file_url, "code"), wait_ready=True
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=10) == 0
        assert daemon.events("daemon_stopped")

    def test_a_second_signal_exits_at_once(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """When a clean stop is stuck (here: a hung disk call), a second SIGTERM ends it.

        The first SIGTERM waits for the work in flight; the second exits at once with
        128 + signal, publishing nothing; the next start cleans up and publishes.
        """
        repo = upstream_repo()
        root = tmp_path / "root"
        config = tmp_path / "config.toml"
        config.write_text(f'root = "{root}"\nhttp_port = 0\n' + git_source(repo.file_url, "code"))
        run = start_cli(
            ["run", "--config", str(config)],
            workdir=tmp_path,
            pause_at="os.mkdir|/staging/|1",
            hold_thread=True,
        )
        with stopped_on_exit(run):
            assert run.wait_held().startswith("os.mkdir")
            os.kill(run.pid, signal.SIGTERM)
            wait_for(lambda: "daemon_stopping" in run.output(), what="the first signal")
            assert run.popen.poll() is None  # still waiting for the hung call
            os.kill(run.pid, signal.SIGTERM)
            assert run.wait(timeout=10) == 128 + signal.SIGTERM
        assert not (root / "code").exists()
        code, output = run_cli(["run", "--once", "--config", str(config)], workdir=tmp_path)
        assert code == 0, output
        assert (root / "code" / "README.md").is_file()
        assert leftovers(root, "code") == []

    def test_http_port_in_use_is_one_line_and_exit_2(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A taken port is a settings problem: one line naming it, exit 2, nothing published.

        Exit 2 is what a systemd unit's ``RestartPreventExitStatus=2`` stops a restart
        loop on.
        """
        repo = upstream_repo()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind((LOOPBACK, 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = config_file(tmp_path, git_source(repo.file_url, "code"), port=port)
            result = cli("run", "--config", str(config), timeout=30)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"runner-storage: cannot listen on {LOOPBACK}:{port}: ")
        assert "http_port" in line
        assert not (tmp_path / "root" / "code").exists()

    def test_max_failures_exits_non_zero(self, start_daemon: DaemonFactory, tmp_path: Path) -> None:
        """A source that reaches max_failures makes the daemon exit 1, for a restart."""
        missing = (tmp_path / "missing.git").as_uri()
        daemon = start_daemon(
            'root = "{root}"\nbackoff_initial = 0.1\nbackoff_max = 0.2\n'
            + git_source(missing, "broken", "max_failures = 2")
        )
        assert daemon.wait_exit(timeout=20) == 1
        assert daemon.events("source_gave_up")


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, str | None]]]]:
    """A loopback HTTP server collecting JSON POST bodies."""
    received: list[dict[str, str | None]] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

    with serving("webhook", Handler) as base:
        yield f"{base}/hook", received


def config_file(tmp_path: Path, body: str, *, port: int = 0) -> Path:
    """A config for ``runner-storage`` run directly (not by ``start_daemon``)."""
    path = tmp_path / "config.toml"
    path.write_text(f'root = "{tmp_path / "root"}"\nhttp_port = {port}\n{body}')
    return path


class TestHooks:
    """The pre-publish check, the exec hook and the webhook."""

    def test_failing_check_keeps_the_old_version(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A commit that fails the check is never published; the counter shows it."""
        repo = upstream_repo()
        first = repo.head()
        # The check passes while BROKEN is absent from the tree.
        check = "sh -c 'test ! -e BROKEN'"
        daemon = start_daemon(
            'root = "{root}"\nbackoff_initial = 0.2\nbackoff_max = 0.5\n'
            + git_source(
                repo.file_url, "code", f'pull_interval = 0.5\nhooks = {{ check = "{check}" }}'
            ),
            wait_ready=True,
        )
        repo.commit({"BROKEN": "yes\n"})
        wait_for(
            lambda: (
                (
                    metric(daemon, 'runner_storage_hook_failures_total{hook="check",source="code"}')
                    or 0
                )
                >= 1
            ),
            what="a failed check",
        )
        # The counter moves inside the check; the error is recorded when the pull returns.
        wait_for(
            lambda: "pre-publish check" in (daemon.sources()["code"]["last_error"] or ""),
            what="the recorded check failure",
        )
        assert published_revision(daemon, "code") == first
        assert not (daemon.root / "code" / "BROKEN").exists()
        # A refused version is the source's doing, not the local disk's.
        failed = [e for e in daemon.events("sync_failed") if "pre-publish check" in e["error"]]
        assert failed
        assert {e["error_type"] for e in failed} == {"CheckFailedError"}

    def test_exec_and_webhook_after_publish(
        self,
        start_daemon: DaemonFactory,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
        webhook_receiver: tuple[str, list[dict[str, str | None]]],
    ) -> None:
        """After a publish the exec hook runs with the revisions and the webhook gets JSON."""
        url, received = webhook_receiver
        repo = upstream_repo()
        marker = tmp_path / "hook.out"
        command = (
            f"sh -c 'echo $RUNNER_STORAGE_NEW_REVISION $PWD"
            f" ${{RUNNER_STORAGE_SYNC_TOKEN:-no-token}} > {marker}'"
        )
        daemon = start_daemon(
            'root = "{root}"\n'
            + git_source(
                repo.file_url, "code", f'hooks = {{ exec = "{command}", webhook = "{url}" }}'
            ),
            env={"RUNNER_STORAGE_SYNC_TOKEN": TOKEN},
            wait_ready=True,
        )
        wait_for(lambda: received, what="the webhook")
        assert received[0]["source"] == "code"
        assert received[0]["old_revision"] is None
        assert received[0]["new_revision"] == repo.head()
        assert received[0]["path"] == str(daemon.root / "code")
        wait_for(marker.exists, what="the exec hook")
        revision, cwd, token = marker.read_text().split()
        assert revision == repo.head()
        assert token == "no-token"  # the daemon's own secrets stay out of hooks
        assert Path(cwd).resolve() == (daemon.root / "code").resolve()

    def test_once_waits_for_the_post_publish_hooks(
        self,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
        webhook_receiver: tuple[str, list[dict[str, str | None]]],
    ) -> None:
        """``run --once`` (an init container) exits 0 only after the exec hook and webhook ran.

        The exec hook sleeps before it writes its file, so an exit that does not wait for
        it leaves no file, and the webhook (posted after it) is never received.
        """
        url, received = webhook_receiver
        repo = upstream_repo()
        marker = tmp_path / "hook.out"
        command = f"sh -c 'sleep 1; echo $RUNNER_STORAGE_NEW_REVISION > {marker}'"
        hooks = f'hooks = {{ exec = "{command}", webhook = "{url}" }}'
        config = config_file(tmp_path, git_source(repo.file_url, "code", hooks))
        result = cli("run", "--once", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert marker.read_text().split() == [repo.head()]
        assert [body["new_revision"] for body in received] == [repo.head()]

    def test_once_exits_1_when_a_post_publish_hook_fails(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """A failed exec hook makes ``run --once`` exit 1, as git-sync's one-time mode does."""
        repo = upstream_repo()
        hooks = "hooks = { exec = \"sh -c 'sleep 0.5; exit 3'\", retries = 0 }"
        config = config_file(tmp_path, git_source(repo.file_url, "code", hooks))
        result = cli("run", "--once", "--config", str(config))
        assert result.returncode == 1, result.stdout + result.stderr
        assert (tmp_path / "root" / "code" / "README.md").is_file()
        failed = [json.loads(line) for line in result.stdout.splitlines() if "hook_failed" in line]
        assert [(event["hook"], event["source"]) for event in failed] == [("exec", "code")]


class TestSystemd:
    """Type=notify against a real datagram socket."""

    def test_ready_watchdog_stopping(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """READY=1 after the first attempt, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
        repo = upstream_repo()
        path = tmp_path / "notify.sock"
        messages: list[str] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(0.2)
            stop = threading.Event()

            def collect() -> None:
                while not stop.is_set():
                    try:
                        messages.append(sock.recv(4096).decode())
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=collect)
            thread.start()
            try:
                daemon = start_daemon(
                    'root = "{root}"\n' + git_source(repo.file_url, "code"),
                    env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"},
                )
                wait_for(lambda: any("READY=1" in m for m in messages), what="READY=1")
                ready = next(m for m in messages if "READY=1" in m)
                assert "STATUS=1/1 sources ready" in ready
                wait_for(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3, what="pings")
                daemon.signal(signal.SIGTERM)
                assert daemon.wait_exit() == 0
                wait_for(lambda: any("STOPPING=1" in m for m in messages), what="STOPPING=1")
            finally:
                stop.set()
                thread.join()
