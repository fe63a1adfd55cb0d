"""The CLI classifies a source exactly as ``create_storage_from_source`` does.

The daemon's settings pick a source's kind with :func:`runner_storage.classify_source`,
so a URL means the same storage to ``runner-storage`` as to the library: ``GIT+https://``
in any case, a trailing ``/`` after ``.git``, and an unknown scheme refused with the
library's own line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest
from daemon_process import cli, config_file
from http_peers import QuietHandler, serving
from servers.gitrepo import UpstreamRepoFactory

from runner_storage import GitRepository, create_storage_from_source

TOKEN = "listed-token-0123"


def sources(*urls: str) -> str:
    """One ``[[sources]]`` table per URL."""
    return "".join(f'[[sources]]\nsource = "{url}"\n' for url in urls)


class TestClassification:
    """Sources the daemon once classified differently from the library."""

    def test_steps_match_the_library(self, tmp_path: Path) -> None:
        """``GIT+https://`` and ``repo.git/`` give the pull steps the library's storages give."""
        urls = ("GIT+https://host.example/org/one", "https://host.example/org/two.git/")
        result = cli(
            "steps", "--format", "json", "--config", str(config_file(tmp_path, sources(*urls)))
        )
        assert result.returncode == 0, result.stderr
        expected = [create_storage_from_source(url).to_pull_step() for url in urls]
        assert json.loads(result.stdout) == {"pull": expected}

    def test_published_where_the_library_publishes(
        self, tmp_path: Path, upstream_repo: UpstreamRepoFactory
    ) -> None:
        """A ``GIT+file://`` URL and a ``.git/`` URL publish under the library's names."""
        repo = upstream_repo()
        plain = tmp_path / "plain"
        plain.symlink_to(repo.path)  # a repository path that does not end in .git
        urls = (f"GIT+{plain.as_uri()}", repo.file_url + "/")
        storages = [create_storage_from_source(url) for url in urls]
        names = [storage.name for storage in storages if isinstance(storage, GitRepository)]
        assert names == ["plain", repo.name]
        result = cli("run", "--once", "--config", str(config_file(tmp_path, sources(*urls))))
        assert result.returncode == 0, result.stdout + result.stderr
        for name in names:
            assert (tmp_path / "root" / name / "README.md").is_file(), name

    def test_unknown_scheme_is_the_librarys_line(self, tmp_path: Path) -> None:
        """``s4://`` is refused as a settings problem with the classifier's message, exit 2."""
        path = config_file(tmp_path, sources("s4://bucket/x"))
        result = cli("check", "--config", str(path))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "runner-storage: sources[0].source: unknown scheme 's4' in source 's4://bucket/x':"
            " use a git URL (https, ssh, git, file), an object-store URL (s3, gs, az, http...),"
            f" a snapshot root (snapshot+s3://...), or a path (from {path})"
        ]
        assert not (tmp_path / "root").exists()

    def test_credentials_in_an_unclassifiable_source_are_not_echoed(self, tmp_path: Path) -> None:
        """The classifier's line names the source without the password given in it."""
        path = config_file(tmp_path, sources("s4://user:pw-CANARY-9@bucket/x"))
        result = cli("run", "--once", "--config", str(path))
        assert result.returncode == 2
        assert "unknown scheme 's4'" in result.stderr
        assert "pw-CANARY-9" not in result.stdout + result.stderr


@pytest.fixture
def token_file_server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP folder that answers only requests with ``X-Token: TOKEN``; the values seen."""
    served = tmp_path / "served"
    (served / "flows").mkdir(parents=True)
    (served / "flows" / "a.py").write_text("A = 1\n")
    seen: list[str] = []

    class Handler(QuietHandler, SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self._authorised():
                super().do_GET()

        def do_HEAD(self) -> None:
            if self._authorised():
                super().do_HEAD()

        def _authorised(self) -> bool:
            seen.append(self.headers.get("X-Token", ""))
            if self.headers.get("X-Token") == TOKEN:
                return True
            self.send_error(403)
            return False

    with serving("token-files", partial(Handler, directory=str(served))) as base:
        yield f"{base}/flows/", seen


class TestSettingsSecrets:
    """Secret tables in fsspec settings reach the filesystem as their values."""

    def test_a_secret_inside_a_list_reaches_the_filesystem_resolved(
        self, tmp_path: Path, token_file_server: tuple[str, list[str]]
    ) -> None:
        """A ``{ env = ... }`` table inside a list is sent as the variable's value, not a dict.

        The HTTP client takes its session's headers as a list of pairs; the server
        refuses any request without the token.
        """
        url, seen = token_file_server
        path = config_file(
            tmp_path,
            f'[[sources]]\nname = "code"\nsource = "{url}"\n'
            "settings = { client_kwargs = { headers ="
            ' [["X-Token", { env = "LISTED_TOKEN" }]] } }\n',
        )
        result = cli("run", "--once", "--config", str(path), env={"LISTED_TOKEN": TOKEN})
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "root" / "code" / "a.py").read_text() == "A = 1\n"
        assert seen
        assert set(seen) == {TOKEN}
        assert TOKEN not in result.stdout + result.stderr
