"""The demo behind ``make demo``: the daemon on an embedded default, no account, no config.

It makes a local git repository from ``examples/flows`` and uses ``examples/shared`` as a
plain folder, writes a config for both under ``.demo/``, and runs ``runner-storage run``
with HTTP on loopback. Extra arguments go to ``run`` (``--once`` pulls once and exits).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = Path(os.environ.get("DEMO_DIR") or HERE.parent / ".demo").resolve()
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "runner-storage demo",
    "GIT_AUTHOR_EMAIL": "demo@example.invalid",
    "GIT_COMMITTER_NAME": "runner-storage demo",
    "GIT_COMMITTER_EMAIL": "demo@example.invalid",
}


def make_repository(upstream: Path) -> None:
    """Create (or refresh) a git repository holding ``examples/flows``."""
    work = DEMO / "work"
    if not (upstream / "HEAD").exists():
        subprocess.run(
            ["git", "init", "-q", "--bare", "-b", "main", str(upstream)], check=True, env=GIT_ENV
        )
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=GIT_ENV)
    shutil.copytree(HERE / "flows", work / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "README.md").write_text("Example flows published by runner-storage.\n")
    for command in (
        ["add", "-A"],
        ["commit", "-q", "-m", "example flows"],
        ["push", "-q", "-f", str(upstream), "main"],
    ):
        subprocess.run(["git", "-C", str(work), *command], check=True, env=GIT_ENV)
    shutil.rmtree(work)


def free_port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def main() -> int:
    """Set the demo up and run the daemon in the foreground."""
    DEMO.mkdir(exist_ok=True)
    upstream = DEMO / "upstream" / "flows.git"
    upstream.parent.mkdir(exist_ok=True)
    make_repository(upstream)
    root = DEMO / "root"
    port = free_port(int(os.environ.get("DEMO_PORT", "8080")))
    config = DEMO / "config.toml"
    config.write_text(
        f"""root = "{root}"
http_port = {port}

[[sources]]
name = "flows"
source = "{upstream.as_uri()}"
pull_interval = 10

[[sources]]
name = "shared"
kind = "remote"
source = "{(HERE / "shared").as_uri()}"
pull_interval = 10
"""
    )
    print(
        f"""runner-storage demo
  git source:    {upstream.as_uri()}   (from examples/flows)
  folder source: {(HERE / "shared").as_uri()}
  published under {root}:  ls -l {root}
  health:        curl -s 'http://127.0.0.1:{port}/readyz?verbose'
  metrics:       curl -s http://127.0.0.1:{port}/metrics | grep runner_storage_
  state:         .venv/bin/runner-storage status --root {root}
  pull steps:    .venv/bin/runner-storage steps --config {config}
Edit examples/flows and run `make demo` again to publish a new version. Ctrl-C stops.
""",
        flush=True,
    )
    runner = Path(sys.executable).parent / "runner-storage"
    command = [str(runner), "run", "--config", str(config), *sys.argv[1:]]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
