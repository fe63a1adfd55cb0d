"""A real OpenSSH server for ``ssh://`` git sources, logging in as the current user.

The server has its own host key and only accepts the generated client key; git runs
``git-upload-pack`` on the bare repositories in ``git_project_root`` through it. Clients
get a ``GIT_SSH_COMMAND`` that ignores the host's ssh configuration and agent.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers.gitrepo import UpstreamRepo, repo_relpath
from servers.procs import LOOPBACK, ManagedProcess, start_process, tcp_banner_starts_with

SSHD = Path("/usr/sbin/sshd")
HOST_ALIAS = "runner-storage-test-sshd"
"""Host name that only ``SSHServer.ssh_config_file`` resolves (for scp-style URLs)."""


def make_ssh_key(path: Path, comment: str) -> str:
    """Generate an unencrypted ed25519 key pair at ``path``; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.with_name(path.name + ".pub").read_text(encoding="utf-8").strip()


def _key_body(public_line: str) -> str:
    """``TYPE BASE64`` of a public key line (drops the comment)."""
    kind, body, *_ = public_line.split()
    return f"{kind} {body}"


class SSHServer:
    """A running ``sshd -D -e`` on 127.0.0.1 that lets the current user in by key.

    Attributes: ``port``; ``user``; ``project_root``; ``client_key_file`` (authorized
    private key); ``wrong_client_key_file`` (a key that is *not* authorized);
    ``known_hosts_file`` (``[127.0.0.1]:PORT <host key>``); ``wrong_known_hosts_file``
    (same host entry with a different key); ``ssh_config_file`` (defines ``HOST_ALIAS``
    for scp-style URLs); ``process`` (its ``output()`` is sshd's log).
    """

    def __init__(self, project_root: Path, workdir: Path) -> None:
        self.project_root = project_root
        self.workdir = workdir
        self.user = pwd.getpwuid(os.getuid()).pw_name
        keys = workdir / "keys"
        keys.mkdir(mode=0o700)
        self.host_key_file = keys / "ssh_host_ed25519_key"
        self._host_public = make_ssh_key(self.host_key_file, "test-host")
        self._wrong_host_public = make_ssh_key(keys / "wrong_host_key", "wrong-host")
        self.client_key_file = keys / "client_key"
        client_public = make_ssh_key(self.client_key_file, "test-client")
        self.wrong_client_key_file = keys / "wrong_client_key"
        make_ssh_key(self.wrong_client_key_file, "not-authorized")
        self.authorized_keys_file = keys / "authorized_keys"
        self.authorized_keys_file.write_text(client_public + "\n", encoding="utf-8")
        self.known_hosts_file = workdir / "known_hosts"
        self.wrong_known_hosts_file = workdir / "wrong_known_hosts"
        self.ssh_config_file = workdir / "ssh_config"
        self.process: ManagedProcess | None = None
        self.port = 0

    def _write_config(self, port: int) -> Path:
        config = self.workdir / f"sshd_config.{port}"
        lines = [
            f"Port {port}",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {self.host_key_file}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys_file}",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "AcceptEnv GIT_PROTOCOL",
            "SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "LogLevel INFO",
        ]
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return config

    def start(self) -> None:
        """Start sshd on a free port and wait for its ``SSH-2.0-`` banner."""
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.process = start_process(
            "sshd",
            lambda port: [SSHD, "-D", "-e", "-f", self._write_config(port)],
            ready=lambda port: tcp_banner_starts_with(port, b"SSH-2.0-"),
            log_dir=self.workdir,
        )
        self.port = self.process.port
        host = f"[{LOOPBACK}]:{self.port}"
        self.known_hosts_file.write_text(
            f"{host} {_key_body(self._host_public)}\n", encoding="utf-8"
        )
        self.wrong_known_hosts_file.write_text(
            f"{host} {_key_body(self._wrong_host_public)}\n", encoding="utf-8"
        )
        self.ssh_config_file.write_text(
            "\n".join(
                [
                    f"Host {HOST_ALIAS}",
                    f"  HostName {LOOPBACK}",
                    f"  Port {self.port}",
                    f"  User {self.user}",
                    f"  IdentityFile {self.client_key_file}",
                    "  IdentitiesOnly yes",
                    "  BatchMode yes",
                    f"  UserKnownHostsFile {self.known_hosts_file}",
                    "  StrictHostKeyChecking yes",
                    "  IdentityAgent none",
                ]
            )
            + "\n",
            encoding="utf-8",
        )

    def stop(self) -> None:
        """Stop sshd and any session process it started; assert they are gone."""
        if self.process is not None:
            self.process.stop()

    def output(self) -> str:
        """Return sshd's log so far (useful in failure messages)."""
        return self.process.output() if self.process else ""

    def repo_path(self, repo: UpstreamRepo | str) -> Path:
        """Absolute path of the bare repository on the server."""
        return self.project_root / repo_relpath(repo)

    def url_for(self, repo: UpstreamRepo | str) -> str:
        """``ssh://USER@127.0.0.1:PORT/ABS/PATH/NAME.git``."""
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{self.repo_path(repo)}"

    def scp_url_for(self, repo: UpstreamRepo | str) -> str:
        """``USER@HOST_ALIAS:/ABS/PATH/NAME.git``, scp-style.

        scp-style URLs cannot carry a port, so the host is an alias that only resolves with
        ``ssh -F ssh_config_file`` (see :meth:`config_env`).
        """
        return f"{self.user}@{HOST_ALIAS}:{self.repo_path(repo)}"

    def git_ssh_command(
        self, key_file: Path | None = None, known_hosts_file: Path | None = None
    ) -> str:
        """``GIT_SSH_COMMAND`` value: given (default: right) key and known_hosts, no host config."""
        return shlex.join(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(key_file or self.client_key_file),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={known_hosts_file or self.known_hosts_file}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        )

    def env(
        self, key_file: Path | None = None, known_hosts_file: Path | None = None
    ) -> dict[str, str]:
        """``{"GIT_SSH_COMMAND": git_ssh_command(...)}`` to merge into ``git_env()``."""
        return {"GIT_SSH_COMMAND": self.git_ssh_command(key_file, known_hosts_file)}

    def config_env(self) -> dict[str, str]:
        """``GIT_SSH_COMMAND`` using ``ssh_config_file`` (needed for :meth:`scp_url_for`)."""
        return {"GIT_SSH_COMMAND": shlex.join(["ssh", "-F", str(self.ssh_config_file)])}


@pytest.fixture(scope="session")
def sshd_server(
    git_project_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SSHServer]:
    """Session-wide OpenSSH server letting the current user in with ``.client_key_file``."""
    if not SSHD.exists():
        pytest.fail(
            f"{SSHD} is missing: install openssh-server (`make system-deps` does it)",
            pytrace=False,
        )
    server = SSHServer(git_project_root, tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()
