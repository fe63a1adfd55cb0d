"""Secrets never leak, the HTTP endpoints are closed by default, git ignores foreign config.

A canary token (``CANARY-<uuid>``) is the real password of a git server of this module and
the real IAM secret of moto's S3 (moto generates it; it is just as unique). It is configured
from the environment, from a file and as a literal, and used through successes, a wrong
password, a missing repository or bucket, server errors and a kill -9 in the middle of a
fetch. Afterwards every place a secret could end up is scanned for the canary, raw,
URL-quoted and base64-encoded (alone, as ``user:token`` and at every alignment inside a
longer base64 text): the daemon's and CLI's output, every file under the root (git's
object store configuration and refs included), ``steps``, ``status`` and ``check`` output,
``/sources``, ``/metrics``, ``/readyz?verbose``, and the command lines of every child
process, sampled while pulls run. It must find nothing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from daemon_process import DaemonFactory, RunningDaemon, cli, wait_for
from fault_tools import published_version, run_cli, start_cli, stopped_on_exit
from servers.fault_proxy import FaultProxy
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepoFactory
from servers.procs import LOOPBACK, descendants
from servers.s3 import S3Server

CANARY = f"CANARY-{uuid.uuid4().hex}"
WRONG = f"CANARY-WRONG-{uuid.uuid4().hex}"
SYNC_TOKEN = f"SYNC-{uuid.uuid4().hex}"


# --- finding a secret in any form ------------------------------------------------------------


def secret_forms(secret: str, username: str = "alice") -> set[bytes]:
    """Every form in which ``secret`` could be written down.

    Base64 of a longer text that contains the secret shows it in one of three alignments;
    for each, the characters that do not depend on the neighbours are searched.
    """
    raw = secret.encode()
    forms = {raw, quote(secret, safe="").encode(), quote_plus(secret).encode()}
    for text in (raw, f"{username}:{secret}".encode(), f"{secret}:".encode()):
        forms.add(base64.b64encode(text).rstrip(b"="))
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0\0")
        start = -(-offset * 4 // 3)  # characters touched by the prefix
        forms.add(encoded[start + 1 : -8])
    return {form for form in forms if len(form) >= 12}


@dataclass
class Scanner:
    """Collects texts from everywhere and reports where a secret shows up."""

    secrets: list[str]
    texts: dict[str, bytes] = field(default_factory=dict)

    def add(self, where: str, text: str | bytes) -> None:
        """Remember ``text`` found at ``where``."""
        self.texts[where] = text.encode() if isinstance(text, str) else text

    def add_tree(self, root: Path, label: str = "") -> None:
        """Every file (and symlink target) under ``root``."""
        count = 0
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                self.add(f"{label}symlink {path}", os.readlink(path))
            elif path.is_file():
                self.add(f"{label}{path}", path.read_bytes())
                count += 1
        assert count, f"nothing under {root}"

    def add_daemon(self, daemon: RunningDaemon, label: str) -> None:
        """Everything the daemon's endpoints answer."""
        for path in ("/sources", "/metrics", "/readyz?verbose", "/livez"):
            self.add(f"{label} {path}", daemon.request(path)[1])

    def leaks(self) -> list[str]:
        """Where any form of any secret was found."""
        found = []
        for secret in self.secrets:
            forms = secret_forms(secret)
            for where, text in self.texts.items():
                if any(form in text for form in forms):
                    found.append(f"{secret[:14]}... in {where}")
        return found


def test_scanner_finds_every_form() -> None:
    """The scan is not vacuous: raw, quoted and base64 forms at any alignment are found."""
    basic = base64.b64encode(f"alice:{CANARY}".encode()).decode()
    samples = [
        f"token={CANARY}",
        f"url=https://alice:{quote(CANARY, safe='')}@host/r.git",
        f"Authorization: Basic {basic}",
        *(base64.b64encode(b"x" * pad + CANARY.encode() + b"y").decode() for pad in range(3)),
    ]
    for sample in samples:
        scanner = Scanner([CANARY])
        scanner.add("sample", sample)
        assert scanner.leaks(), sample
    clean = Scanner([CANARY])
    clean.add("sample", f"CANARY-{uuid.uuid4().hex} and ***")
    assert clean.leaks() == []


class CommandLines:
    """Samples the command lines of every descendant of some processes, in a thread."""

    def __init__(self) -> None:
        self.roots: set[int] = set()
        self.seen: set[bytes] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample(self) -> None:
        """Read the command lines of the roots and all their descendants once."""
        for root in list(self.roots):
            for pid in {root} | descendants(root):
                try:
                    self.seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    continue
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.sample()

    def git_commands(self) -> set[str]:
        """The git subcommands seen (``fetch``, ``ls-remote``...)."""
        commands = set()
        for line in self.seen:
            argv = line.split(b"\0")
            if argv and argv[0].endswith(b"git"):
                words = [a.decode(errors="replace") for a in argv[1:] if not a.startswith(b"-")]
                commands.update(words[:1])
        return commands


# --- servers whose secret is the canary ------------------------------------------------------


@pytest.fixture(scope="module")
def canary_server(git_project_root: Path) -> Iterator[GitHTTPServer]:
    """A git smart-HTTP server whose password is the canary."""
    server = GitHTTPServer(git_project_root)
    server.password = CANARY
    server.start()
    yield server
    server.stop()


def git_table(name: str, url: str, token: str, extra: str = "") -> str:
    """A git source with credentials ``{ username = "alice", token = TOKEN }``."""
    return (
        f'[[sources]]\nname = "{name}"\nsource = "{url}"\npull_interval = 0.5\n'
        f'credentials = {{ username = "alice", token = {token} }}\n{extra}'
    )


DAEMON = 'root = "{root}"\nbackoff_initial = 0.2\nbackoff_max = 0.5\n'


class TestCanaryNeverLeaks:
    """The canary appears nowhere, whatever happens to the pulls that use it."""

    def test_git_credentials_from_env_file_and_literal(
        self,
        start_daemon: DaemonFactory,
        canary_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """Token by env, file, literal; a wrong one; a missing repo; 500s: no trace anywhere."""
        repos = {name: upstream_repo() for name in ("env", "file", "literal", "wrong")}
        token_file = tmp_path / "token"
        token_file.write_text(CANARY + "\n")
        config = DAEMON + "".join(
            [
                git_table("env", canary_server.url_for(repos["env"]), '{ env = "CANARY_TOKEN" }'),
                git_table(
                    "file", canary_server.url_for(repos["file"]), f'{{ file = "{token_file}" }}'
                ),
                git_table("literal", canary_server.url_for(repos["literal"]), f'"{CANARY}"'),
                git_table("wrong", canary_server.url_for(repos["wrong"]), '{ env = "WRONG" }'),
                git_table(
                    "missing", canary_server.url_for("no-such-repo"), '{ env = "CANARY_TOKEN" }'
                ),
            ]
        )
        env = {"CANARY_TOKEN": CANARY, "WRONG": WRONG, "RUNNER_STORAGE_SYNC_TOKEN": SYNC_TOKEN}
        scanner = Scanner([CANARY, WRONG, SYNC_TOKEN])
        with CommandLines() as lines:
            daemon = start_daemon(config, env=env)
            lines.roots.add(daemon.process.pid)

            def published() -> bool:
                sources = daemon.sources()
                return all(sources[n]["revision"] for n in ("env", "file", "literal"))

            wait_for(published, what="the three good sources published")
            canary_server.fail_next(6, 500)
            for repo in (repos["env"], repos["file"], repos["literal"]):
                repo.commit({"flows/new.py": "NEW = 1\n"})

            def settled() -> bool:
                sources = daemon.sources()
                good = all(
                    sources[n]["revision"] == repos[n].head() for n in ("env", "file", "literal")
                )
                failing = all(sources[n]["consecutive_failures"] >= 3 for n in ("wrong", "missing"))
                return good and failing

            wait_for(settled, what="new commits published, bad sources failing")
            scanner.add_daemon(daemon, "daemon")
            sources = daemon.sources()
            assert "credentials" in (sources["wrong"]["last_error"] or "")
            assert "check the URL" in (sources["missing"]["last_error"] or "")
            config_path = daemon.config
            scanner.add("steps", _cli_output("steps", "--config", str(config_path), env=env))
            scanner.add("check", _cli_output("check", "--config", str(config_path), env=env))
            scanner.add("status", _cli_output("status", "--root", str(daemon.root)))
            daemon.signal(signal.SIGTERM)
            assert daemon.wait_exit() == 0
        scanner.add("daemon output", daemon.process.output())
        scanner.add_tree(daemon.root)
        scanner.add("command lines", b"\n".join(lines.seen))
        # Ref lookups over http are made in process (no command line); fetches run git.
        assert "fetch" in lines.git_commands(), lines.git_commands()
        assert scanner.leaks() == []
        assert _repo_configs(daemon.root), "the object stores were not scanned"

    def test_steps_with_placeholders_only(self, tmp_path: Path) -> None:
        """``steps`` prints placeholders for env and file secrets and refuses a literal."""
        token_file = tmp_path / "token"
        token_file.write_text(CANARY)
        path = tmp_path / "config.toml"
        good = git_table("a", "https://git.example/a.git", '{ env = "CANARY_TOKEN" }')
        good += git_table(
            "b", "https://git.example/b.git", f'{{ file = "{token_file}", name = "git-token" }}'
        )
        path.write_text(good)
        env = {"CANARY_TOKEN": CANARY}
        result = cli("steps", "--config", str(path), env=env)
        assert result.returncode == 0, result.stderr
        assert "{{ $CANARY_TOKEN }}" in result.stdout
        assert "{{ prefect.blocks.secret.git-token }}" in result.stdout
        literal = good + git_table("c", "https://git.example/c.git", f'"{CANARY}"')
        path.write_text(literal)
        refused = cli("steps", "--config", str(path), env=env)
        assert refused.returncode == 2
        scanner = Scanner([CANARY])
        scanner.add("steps", result.stdout + result.stderr)
        scanner.add("steps refused", refused.stdout + refused.stderr)
        assert scanner.leaks() == []

    def test_git_kill_mid_fetch(
        self,
        canary_server: GitHTTPServer,
        fault_proxy: Callable[[int], FaultProxy],
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """Frozen mid-fetch: no child's argv, no file holds the canary; nor after kill -9."""
        proxy = fault_proxy(canary_server.port)
        repo = upstream_repo()
        repo.commit({f"data/{i}.bin": secrets.token_bytes(20_000) for i in range(20)})
        root = tmp_path / "root"
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n'
            + git_table("code", f"{proxy.url}/{repo.relpath}", '{ env = "CANARY_TOKEN" }')
        )
        env = {"CANARY_TOKEN": CANARY}
        hold = proxy.hold(
            lambda m, p: m == "POST" and p.endswith("git-upload-pack"), after_bytes=2048
        )
        scanner = Scanner([CANARY])
        lines = CommandLines()
        run = start_cli(["run", "--once", "--config", str(config)], workdir=tmp_path, env=env)
        with stopped_on_exit(run):
            hold.wait()
            lines.roots.add(run.pid)
            lines.sample()  # everything is frozen mid-transfer: a complete picture
            assert "fetch" in lines.git_commands(), lines.git_commands()
            scanner.add_tree(root, "mid-fetch: ")
            run.kill()
            hold.release()
        scanner.add("killed run", run.output())
        scanner.add_tree(root, "after kill: ")
        code, output = run_cli(
            ["run", "--once", "--config", str(config)], workdir=tmp_path, env=env
        )
        assert code == 0, output
        assert published_version(root, "code") is not None
        scanner.add("restart", output)
        scanner.add_tree(root)
        scanner.add("command lines", b"\n".join(lines.seen))
        assert scanner.leaks() == []

    def test_s3_secret(
        self, start_daemon: DaemonFactory, s3_server: S3Server, tmp_path: Path
    ) -> None:
        """The real S3 secret by env and literal, a wrong one, a missing bucket: no trace."""
        with s3_server.enable_auth() as (key, secret):
            bucket = s3_server.new_bucket("secret")
            for index in range(5):
                s3_server.put(bucket, f"code/f{index}.txt", f"{index}\n")
            endpoint = s3_server.endpoint_url

            def table(name: str, url: str, secret_value: str) -> str:
                return (
                    f'[[sources]]\nname = "{name}"\nsource = "{url}"\npull_interval = 0.5\n'
                    f'settings = {{ endpoint_url = "{endpoint}", key = "{key}",'
                    f" secret = {secret_value} }}\n"
                )

            config = DAEMON + "".join(
                [
                    table("env", f"s3://{bucket}/code", '{ env = "S3_SECRET" }'),
                    table("literal", f"s3://{bucket}/code", f'"{secret}"'),
                    table("wrong", f"s3://{bucket}/code", '{ env = "WRONG" }'),
                    table("missing", "s3://no-such-bucket-anywhere/code", '{ env = "S3_SECRET" }'),
                ]
            )
            env = {"S3_SECRET": secret, "WRONG": WRONG, "RUNNER_STORAGE_SYNC_TOKEN": SYNC_TOKEN}
            scanner = Scanner([secret, WRONG, SYNC_TOKEN])
            daemon = start_daemon(config, env=env)

            def settled() -> bool:
                sources = daemon.sources()
                good = all(sources[n]["revision"] for n in ("env", "literal"))
                failing = all(sources[n]["consecutive_failures"] >= 2 for n in ("wrong", "missing"))
                return good and failing

            wait_for(settled, what="good sources published, bad ones failing")
            s3_server.put(bucket, "code/f0.txt", "changed\n")
            daemon.signal(signal.SIGHUP)
            wait_for(
                lambda: (daemon.root / "env" / "f0.txt").read_text() == "changed\n",
                what="the change published",
            )
            assert "denied" in (daemon.sources()["wrong"]["last_error"] or "")
            scanner.add_daemon(daemon, "daemon")
            scanner.add("check", _cli_output("check", "--config", str(daemon.config), env=env))
            scanner.add("status", _cli_output("status", "--root", str(daemon.root)))
            daemon.signal(signal.SIGTERM)
            assert daemon.wait_exit() == 0
        scanner.add("daemon output", daemon.process.output())
        scanner.add_tree(daemon.root)
        assert scanner.leaks() == []

    def test_blocks_and_packages(
        self, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Storage blocks, filesystem blocks and packages: the secret shows nowhere.

        With the real S3 secret and a wrong one, through a package, an upload and three
        failures: no error, traceback, repr, manifest, pull step, file or output holds it.
        """
        import anyio

        from runner_storage import Secret
        from runner_storage.blocks import RemoteFileSystem, S3StorageBlock
        from runner_storage.exceptions import RunnerStorageError
        from runner_storage.packaging import DeploymentSpec, ScriptPackager

        flow = tmp_path / "project" / "etl.py"
        flow.parent.mkdir()
        flow.write_text("print('etl')\n")
        with s3_server.enable_auth() as (key, secret):
            scanner = Scanner([secret, WRONG])
            bucket = s3_server.new_bucket("blocks")
            monkeypatch.setenv("RS_TEST_BLOCK_SECRET", secret)

            def s3(value: object) -> S3StorageBlock:
                return S3StorageBlock(
                    bucket,
                    aws_access_key_id=key,
                    aws_secret_access_key=value,
                    endpoint_url=s3_server.endpoint_url,
                )

            good = s3(Secret.from_env("RS_TEST_BLOCK_SECRET"))
            spec = DeploymentSpec("etl", str(flow), infrastructure="kubernetes-job")
            manifest = anyio.run(ScriptPackager(good).package, spec)
            scanner.add("manifest", json.dumps(manifest.to_dict()))
            scanner.add("pull step", json.dumps(manifest.to_pull_step()))
            scanner.add("repr", repr(good) + repr(s3(secret)))
            settings = {"key": key, "secret": Secret.from_env("RS_TEST_BLOCK_SECRET"),
                        "client_kwargs": {"endpoint_url": s3_server.endpoint_url}}  # fmt: skip
            filesystem = RemoteFileSystem(f"s3://{bucket}/fs", settings=settings)
            filesystem.put_directory(str(flow.parent), "up")
            scanner.add("filesystem repr", repr(filesystem))
            failures: list[Callable[[], object]] = [
                lambda: anyio.run(s3(WRONG).write, b"data"),
                lambda: anyio.run(s3(secret).read, "missing-key"),
                lambda: RemoteFileSystem(
                    f"s3://{bucket}/fs", settings={**settings, "secret": WRONG}
                ).read_path("up/etl.py"),
            ]
            for index, fail in enumerate(failures):
                with pytest.raises(RunnerStorageError) as caught:
                    fail()
                chain = "".join(traceback.format_exception(caught.value))
                scanner.add(f"failure {index}", chain + repr(caught.value))
            env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                   "AWS_ENDPOINT_URL": s3_server.endpoint_url}  # fmt: skip
            packaged = cli("package", str(flow), "--storage", f"s3://{bucket}/pkg", env=env)
            assert packaged.returncode == 0, packaged.stderr
            scanner.add("package command", packaged.stdout + packaged.stderr)
        scanner.add_tree(tmp_path)
        assert scanner.leaks() == []

    def test_s3_kill_mid_download(self, s3_server: S3Server, tmp_path: Path) -> None:
        """Frozen mid-download with the secret in settings: no file or argv holds it.

        Nor after kill -9, nor after the restart that cleans up and publishes.
        """
        with s3_server.enable_auth() as (key, secret):
            bucket = s3_server.new_bucket("killed")
            for index in range(40):
                s3_server.put(bucket, f"code/f{index:02}.bin", secrets.token_bytes(4096))
            root = tmp_path / "root"
            config = tmp_path / "config.toml"
            config.write_text(
                f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n'
                f'[[sources]]\nname = "code"\nsource = "s3://{bucket}/code"\n'
                f'settings = {{ endpoint_url = "{s3_server.endpoint_url}", key = "{key}",'
                ' secret = { env = "S3_SECRET" } }\n'
            )
            env = {"S3_SECRET": secret}
            scanner = Scanner([secret])
            lines = CommandLines()
            run = start_cli(
                ["run", "--once", "--config", str(config)],
                workdir=tmp_path,
                env=env,
                pause_at="open|/staging/|10",
            )
            with stopped_on_exit(run):
                run.wait_paused()
                lines.roots.add(run.pid)
                lines.sample()
                scanner.add_tree(root, "mid-download: ")
                run.kill()
            scanner.add("killed run", run.output())
            scanner.add_tree(root, "after kill: ")
            code, output = run_cli(
                ["run", "--once", "--config", str(config)], workdir=tmp_path, env=env
            )
            assert code == 0, output
            assert published_version(root, "code") is not None
        scanner.add("restart", output)
        scanner.add_tree(root)
        scanner.add("command lines", b"\n".join(lines.seen))
        assert lines.seen  # the frozen CLI's own command line was read
        assert scanner.leaks() == []


def _cli_output(*args: str, env: dict[str, str] | None = None) -> str:
    result = cli(*args, env=env)
    return result.stdout + result.stderr


def _repo_configs(root: Path) -> list[Path]:
    return list((root / ".runner-storage" / ".repos").glob("*.git/config"))


# --- the HTTP endpoints ------------------------------------------------------------------


def _local_addresses() -> set[str]:
    """This host's IPv4 addresses other than loopback (from the kernel's routing table)."""
    found = set()
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    for previous, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            address = previous.strip().removeprefix("|-- ").strip()
            if not address.startswith("127."):
                found.add(address)
    return found


def _listening_addresses(port: int) -> set[str]:
    """``ip:port`` of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(f"v6:{address}")
    return found


class TestHTTPEndpoints:
    """Loopback only by default; the sync endpoint needs the token; nothing else answers."""

    def test_binds_loopback_only_by_default(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """The listening socket is 127.0.0.1: other addresses of the host refuse connections."""
        repo = upstream_repo()
        daemon = start_daemon(
            f'root = "{{root}}"\n[[sources]]\nname = "code"\nsource = "{repo.file_url}"\n',
            wait_ready=True,
        )
        assert _listening_addresses(daemon.port) == {LOOPBACK}
        assert daemon.events("http_listening")[0]["host"] == LOOPBACK
        for address in _local_addresses():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, daemon.port), timeout=2).close()

    def test_sync_token_and_refused_requests(
        self, start_daemon: DaemonFactory, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """Only the exact bearer token triggers a pull; other methods and paths are refused."""
        repo = upstream_repo()
        daemon = start_daemon(
            'root = "{root}"\n[[sources]]\nname = "code"\n'
            f'source = "{repo.file_url}"\npull_interval = 3600\n',
            env={"RUNNER_STORAGE_SYNC_TOKEN": SYNC_TOKEN},
            wait_ready=True,
        )
        wrong = [
            None,
            "",
            f"Bearer {SYNC_TOKEN[:-1]}",
            f"Bearer {SYNC_TOKEN}x",
            f"Bearer {SYNC_TOKEN[:-1]}{'0' if SYNC_TOKEN[-1] != '0' else '1'}",
            f"Basic {SYNC_TOKEN}",
            f"Token {SYNC_TOKEN}",
            SYNC_TOKEN,
        ]
        for header in wrong:
            headers = {} if header is None else {"Authorization": header}
            status, body = daemon.request("/sync/code", method="POST", headers=headers)
            assert status == 401, (header, status, body)
            assert SYNC_TOKEN not in body
        good = {"Authorization": f"Bearer {SYNC_TOKEN}"}
        new = repo.commit({"flows/new.py": "N = 1\n"})
        assert daemon.request("/sync/code", method="POST", headers=good)[0] == 202
        wait_for(lambda: daemon.sources()["code"]["revision"] == new, what="the triggered pull")
        for method, path in [
            ("GET", "/sync/code"),
            ("PUT", "/sync/code"),
            ("DELETE", "/sync/code"),
            ("POST", "/livez"),
            ("POST", "/sources"),
            ("PUT", "/metrics"),
            ("DELETE", "/readyz"),
        ]:
            assert daemon.request(path, method=method, headers=good)[0] == 405, (method, path)
        for path in ("/", "/admin", "/sources/code", "/sync", "/../etc/passwd", "/config"):
            assert daemon.request(path, headers=good)[0] == 404, path
        assert daemon.request("/sync/nope", method="POST", headers=good)[0] == 404
        scanner = Scanner([SYNC_TOKEN])
        scanner.add_daemon(daemon, "daemon")
        scanner.add("daemon output", daemon.process.output())
        assert scanner.leaks() == []


# --- git's own configuration ----------------------------------------------------------------


def _hostile_git_config(tmp_path: Path, marker: Path, rewrite_to: str, rewrite_from: str) -> str:
    """A git config whose credential helper writes ``marker`` and that rewrites URLs."""
    helper = tmp_path / "helper.sh"
    helper.write_text(f"#!/bin/sh\ntouch {marker}\necho username=alice\necho password={CANARY}\n")
    helper.chmod(0o755)
    return (
        f"[credential]\n\thelper = {helper}\n"
        f'[url "{rewrite_to}"]\n\tinsteadOf = {rewrite_from}\n'
        f"[core]\n\tsshCommand = touch {marker}\n"
        f"[protocol]\n\tallow = always\n"
    )


class TestGitEnvironment:
    """git runs with the configuration runner-storage gives it, and nothing else."""

    def test_user_and_system_git_config_are_ignored(
        self,
        canary_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """A credential helper and URL rewrites in ~/.gitconfig, XDG and system config: unused."""
        repo = upstream_repo()
        marker = tmp_path / "helper-ran"
        home = tmp_path / "home"
        (home / ".config" / "git").mkdir(parents=True)
        dead = f"http://{LOOPBACK}:9/"  # a rewrite would send git to a closed port
        text = _hostile_git_config(tmp_path, marker, dead, f"{canary_server.base_url}/")
        for path in (home / ".gitconfig", home / ".config" / "git" / "config"):
            path.write_text(text)
        system = tmp_path / "gitconfig-system"
        system.write_text(text)
        env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_SYSTEM": str(system),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
            "GIT_ASKPASS": str(tmp_path / "helper.sh"),
            "SSH_ASKPASS": str(tmp_path / "helper.sh"),
            "GIT_CONFIG_PARAMETERS": f"'credential.helper'='{tmp_path / 'helper.sh'}'",
            "CANARY_TOKEN": CANARY,
        }
        root = tmp_path / "root"

        def run(name: str, credentials: str) -> tuple[int, str]:
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f'root = "{root}"\nhttp_port = 0\n'
                f'[[sources]]\nname = "{name}"\nsource = "{canary_server.url_for(repo)}"\n'
                f"{credentials}\n"
            )
            result = cli("run", "--once", "--config", str(config), env=env)
            return result.returncode, result.stdout + result.stderr

        # Without credentials the server asks (401): a helper would be consulted here, by
        # git. An https proxy (never used for this http:// server) keeps the ref lookup
        # from being answered without git, and a logging git on PATH shows that git ran.
        calls = tmp_path / "git-calls.log"
        shim = tmp_path / "shim"
        shim.mkdir()
        real_git = shutil.which("git")
        (shim / "git").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{real_git}" "$@"\n')
        (shim / "git").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{os.environ['PATH']}"
        env["https_proxy"] = f"http://{LOOPBACK}:9"
        code, output = run("anonymous", "")
        assert code == 1, output
        assert "asked for credentials" in output
        assert "ls-remote" in calls.read_text(), "git itself must have met the 401"
        assert not marker.exists()
        # With them, the pull reaches the real server: no rewrite to the dead port.
        code, output = run(
            "authenticated",
            'credentials = { username = "alice", token = { env = "CANARY_TOKEN" } }',
        )
        assert code == 0, output
        assert not marker.exists()
        assert (root / "authenticated" / "README.md").is_file()

    @pytest.mark.parametrize("transport", ["file", "ext", "path"])
    def test_local_submodule_transports_are_refused(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path, transport: str
    ) -> None:
        """A submodule pointing at this machine (file://, ext::, a path) is never fetched."""
        private = upstream_repo()
        private.commit({"secret.txt": f"{CANARY}\n"})
        marker = tmp_path / "ext-ran"
        url = {
            "file": private.file_url,
            "ext": f"ext::sh -c touch% {marker}",
            "path": str(private.path),
        }[transport]
        repo = upstream_repo()
        repo.add_submodule("vendor/dep", url, clone_from=private.file_url)
        root = tmp_path / "root"
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n[[sources]]\nname = "code"\n'
            f'source = "{repo.file_url}"\ninclude_submodules = true\n'
        )
        result = cli("run", "--once", "--config", str(config))
        assert result.returncode == 1
        assert "only https, http, ssh and git submodule URLs are allowed" in result.stdout
        assert not marker.exists()
        assert not os.path.lexists(root / "code")
        scanner = Scanner([CANARY])
        scanner.add("output", result.stdout + result.stderr)
        if root.exists():
            for path in root.rglob("*"):
                if path.is_file():
                    scanner.add(str(path), path.read_bytes())
        assert scanner.leaks() == []
