"""``git daemon``: the unauthenticated ``git://`` protocol over ``git_project_root``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from servers.gitrepo import UpstreamRepo, git_env, repo_relpath
from servers.procs import LOOPBACK, ManagedProcess, port_is_open, start_process


class GitDaemon:
    """A running ``git daemon`` exporting every repository under the project root.

    Attributes: ``port``, ``base_url`` (``git://127.0.0.1:PORT``), ``process`` (the
    :class:`~servers.procs.ManagedProcess`; ``process.output()`` is its log).
    """

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.port = process.port
        self.base_url = f"git://{LOOPBACK}:{self.port}"

    def url_for(self, repo: UpstreamRepo | str) -> str:
        """``git://127.0.0.1:PORT/NAME.git`` for a repository or a name."""
        return f"{self.base_url}/{quote(repo_relpath(repo))}"

    def stop(self) -> None:
        """Stop the daemon and its per-connection children; assert they are gone."""
        self.process.stop()


def start_git_daemon(project_root: Path, log_dir: Path, *, port: int | None = None) -> GitDaemon:
    """Start ``git daemon`` on a free loopback port (or ``port``) serving ``project_root``."""
    process = start_process(
        "git-daemon",
        lambda port: [
            "git",
            "daemon",
            "--reuseaddr",
            f"--listen={LOOPBACK}",
            f"--port={port}",
            f"--base-path={project_root}",
            "--export-all",
            "--informative-errors",
            str(project_root),
        ],
        ready=port_is_open,
        log_dir=log_dir,
        env=git_env(),
        port=port,
    )
    return GitDaemon(process)


@pytest.fixture(scope="session")
def git_daemon(
    git_project_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitDaemon]:
    """Session-wide ``git daemon`` over ``git_project_root`` (no authentication)."""
    daemon = start_git_daemon(git_project_root, tmp_path_factory.mktemp("git-daemon-log"))
    yield daemon
    daemon.stop()
