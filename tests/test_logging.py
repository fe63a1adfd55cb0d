"""Every line the daemon writes with ``log_format = "json"`` is JSON, warnings included."""

from __future__ import annotations

import json
from pathlib import Path

from daemon_process import cli
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepoFactory


def test_a_library_warning_is_a_json_line(
    git_http_server: GitHTTPServer, upstream_repo: UpstreamRepoFactory, tmp_path: Path
) -> None:
    """Credentials over plain http:// warn: as one JSON line, without the source line.

    (A warning printed as Python prints it is two plain lines in a JSON journal.)
    """
    repo = upstream_repo()
    config = tmp_path / "config.toml"
    config.write_text(
        f'root = "{tmp_path / "root"}"\nhttp_port = 0\nlog_format = "json"\n'
        f'[[sources]]\nname = "code"\nsource = "{git_http_server.url_for(repo)}"\n'
        'credentials = { username = "alice", token = { env = "LOG_GIT_PW" } }\n'
    )
    result = cli(
        "run", "--once", "--config", str(config), env={"LOG_GIT_PW": git_http_server.password}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    (warning,) = [r for r in records if r.get("logger") == "py.warnings"]
    assert warning["level"] == "warning"
    assert "UserWarning: credentials for" in warning["event"]
    assert "clear text" in warning["event"]
    assert git_http_server.password not in result.stdout + result.stderr
