"""Hostile and bad input, one table: every case runs the real CLI in a sandbox.

Each case asserts the exit code (2 for bad input, 1 for a refusal at runtime, such as unsafe
upstream content), that the error is ONE line saying what is wrong and what to do (a key
phrase of it), and that nothing was written outside the destination's own directories
(``ROOT/NAME``, ``ROOT/.runner-storage/NAME`` and, for git, the object stores in
``ROOT/.runner-storage/.repos``). Bad input writes nothing at all. The sandbox also holds
the CLI's working directory and ``HOME``, and the canary file that injected commands would
create.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_process import RUNNER_STORAGE
from fault_tools import snapshot
from servers.git_daemon import GitDaemon
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory
from servers.s3 import S3Server

NAME = "code"
SECRET = "hunter2-in-the-url"

#: Object keys that must never become paths, each under its own prefix.
HOSTILE_KEYS = {
    "dotdot": ["dotdot/ok.txt", "dotdot/../escaped.txt"],
    "deep-dotdot": ["deep-dotdot/a/../../escaped.txt"],
    "absolute": ["absolute//etc/escaped.txt"],
    "backslash": ["backslash/a\\..\\escaped.txt"],
    "control": ["control/a\x01b.txt"],
    "delete-char": ["delete-char/a\x7fb.txt"],
    "dot": ["dot/./a.txt"],
    "file-and-dir": ["file-and-dir/a", "file-and-dir/a/b"],
}


@pytest.fixture(scope="module")
def hostile_bucket(s3_server: S3Server) -> str:
    """A bucket holding every hostile key, once for the module."""
    bucket = s3_server.new_bucket("hostile")
    for keys in HOSTILE_KEYS.values():
        for key in keys:
            s3_server.put(bucket, key, b"x\n")
    return bucket


@dataclass
class Sandbox:
    """Everything a case may touch, and the servers and repositories it may use."""

    path: Path
    inputs: Path
    upstream_repo: UpstreamRepoFactory
    git_daemon: GitDaemon
    s3: S3Server
    bucket: str

    @property
    def root(self) -> Path:
        """ROOT: where sources publish."""
        return self.path / "root"

    @property
    def pwned(self) -> Path:
        """The canary an injected command would create."""
        return self.path / "pwned"

    def pull(self, source: str, *options: str, name: str | None = NAME) -> list[str]:
        """``pull SOURCE --dest ROOT [--name NAME] OPTIONS``."""
        named = ["--name", name] if name is not None else []
        return ["pull", source, "--dest", str(self.root), *named, *options]

    def repo(self) -> UpstreamRepo:
        """A fresh upstream repository (outside the sandbox)."""
        return self.upstream_repo()

    def config(self, body: str, *, port: int = 0) -> str:
        """A config file with the root, HTTP port and JSON logs set; its path."""
        path = self.inputs / f"config-{len(list(self.inputs.iterdir()))}.toml"
        path.write_text(f'root = "{self.root}"\nhttp_port = {port}\nlog_format = "json"\n{body}')
        return str(path)

    def source(self, url: str, extra: str = "") -> str:
        """A config with one source named NAME."""
        return self.config(f'[[sources]]\nname = "{NAME}"\nsource = "{url}"\n{extra}\n')


@pytest.fixture
def sandbox(
    tmp_path: Path,
    upstream_repo: UpstreamRepoFactory,
    git_daemon: GitDaemon,
    s3_server: S3Server,
    hostile_bucket: str,
) -> Sandbox:
    """A fresh sandbox directory with its inputs, home and working directory."""
    path = tmp_path / "sandbox"
    for directory in ("inputs", "home", "cwd"):
        (path / directory).mkdir(parents=True)
    return Sandbox(path, path / "inputs", upstream_repo, git_daemon, s3_server, hostile_bucket)


def _submodule_repo(box: Sandbox, url: Callable[[Sandbox, UpstreamRepo], str]) -> str:
    """A config pulling (with submodules) a repository whose submodule has a hostile URL."""
    repo, other = box.repo(), box.repo()
    repo.add_submodule("vendor/dep", url(box, other), clone_from=other.file_url)
    return box.source(repo.file_url, "include_submodules = true")


def _symlink_repo(box: Sandbox, target: str) -> list[str]:
    repo = box.repo()
    repo.symlink("escape", target)
    return box.pull(repo.file_url)


@dataclass(frozen=True)
class Case:
    """One hostile input and what must come of it.

    ``args`` builds the command line (after ``runner-storage``); a ``config``-only case
    runs ``check --config FILE``; ``once`` runs ``run --once`` (the refusal is then in the
    ``sync_failed`` log line, and stderr stays empty).
    """

    code: int
    phrase: str
    args: Callable[[Sandbox], list[str]] | None = None
    config: Callable[[Sandbox], str] | None = None
    once: bool = False


def s3_key_case(prefix: str, phrase: str) -> Case:
    """A pull of one hostile prefix of the bucket."""
    return Case(1, phrase, lambda b: b.pull(f"s3://{b.bucket}/{prefix}"))


CASES: dict[str, Case] = {
    # --- URLs -------------------------------------------------------------------------------
    "url-empty": Case(2, "SOURCE is empty", lambda b: b.pull("")),
    "url-whitespace": Case(2, "the source is empty", lambda b: b.pull("   ")),
    "url-unsupported-scheme": Case(
        2, "unknown scheme 'gopher'", lambda b: b.pull("gopher://example.com/flows", name=None)
    ),
    "url-missing-bucket": Case(2, "names no bucket", lambda b: b.pull("s3://")),
    "url-git-credentials": Case(
        2,
        "has credentials in it",
        lambda b: b.pull(f"https://alice:{SECRET}@127.0.0.1:9/r.git"),
    ),
    "url-s3-credentials": Case(
        2, "has credentials in it", lambda b: b.pull(f"s3://key:{SECRET}@bucket/flows")
    ),
    "url-option-like": Case(2, "looks like an option", lambda b: ["pull", "--", "-oops.git"]),
    "url-ext-transport": Case(
        2,
        "transport::address syntax",
        lambda b: b.pull(f"ext::sh -c touch% {b.pwned}.git"),
    ),
    "url-ssh-option-host": Case(
        2, "has no valid host", lambda b: b.pull(f"ssh://-oProxyCommand=touch%20{b.pwned}/r.git")
    ),
    "url-spaces": Case(
        2, "contains whitespace", lambda b: b.pull("https://127.0.0.1:9/my repo.git")
    ),
    "url-non-ascii": Case(
        1, "check the URL", lambda b: b.pull(f"{b.git_daemon.base_url}/dépôt-ünïcode.git")
    ),
    "url-missing-local-folder": Case(
        2, "does not exist", lambda b: b.pull(str(b.path / "no-such-folder"), name=None)
    ),
    "url-control-character": Case(
        2, "control characters", lambda b: b.pull("https://127.0.0.1:9/r\x01.git")
    ),
    # --- refs ----------------------------------------------------------------------------
    "branch-option": Case(2, "starts with '-'", lambda b: b.pull(b.repo().file_url, "--branch=-x")),
    "branch-upload-pack": Case(
        2,
        "would be read as an option",
        lambda b: b.pull(b.repo().file_url, f"--branch=--upload-pack=touch {b.pwned}"),
    ),
    "branch-dotdot": Case(
        2, "not a valid git ref name", lambda b: b.pull(b.repo().file_url, "--branch=a..b")
    ),
    "branch-refs-dotdot": Case(
        2, "not a valid git ref name", lambda b: b.pull(b.repo().file_url, "--branch=refs/../x")
    ),
    "branch-reflog-syntax": Case(
        2, "not a valid git ref name", lambda b: b.pull(b.repo().file_url, "--branch=main@{1}")
    ),
    "branch-lock-suffix": Case(
        2, "ending with '.lock'", lambda b: b.pull(b.repo().file_url, "--branch=x.lock")
    ),
    "branch-missing": Case(
        1, "does not exist", lambda b: b.pull(b.repo().file_url, "--branch=no-such-branch")
    ),
    # --- commit SHAs ------------------------------------------------------------------------
    "sha-not-hex": Case(
        2, "expected 4 to 64 hex digits", lambda b: b.pull(b.repo().file_url, "--commit-sha=zzzz")
    ),
    "sha-three-digits": Case(
        2, "expected 4 to 64 hex digits", lambda b: b.pull(b.repo().file_url, "--commit-sha=abc")
    ),
    "sha-65-digits": Case(
        2,
        "expected 4 to 64 hex digits",
        lambda b: b.pull(b.repo().file_url, "--commit-sha=" + "a" * 65),
    ),
    "sha-and-branch": Case(
        2,
        "either branch or commit_sha",
        lambda b: b.pull(b.repo().file_url, "--branch=main", "--commit-sha=" + "a" * 40),
    ),
    "sha-unknown": Case(
        1, "on no branch or tag", lambda b: b.pull(b.repo().file_url, "--commit-sha=abcdef12")
    ),
    # --- directories ------------------------------------------------------------------------
    "dir-parent": Case(2, "contains '..'", lambda b: b.pull(b.repo().file_url, "--directories=..")),
    "dir-absolute": Case(
        2, "is absolute", lambda b: b.pull(b.repo().file_url, "--directories=/etc")
    ),
    "dir-option": Case(
        2, "starts with '-'", lambda b: b.pull(b.repo().file_url, "--directories=-x")
    ),
    "dir-escape": Case(
        2, "contains '..'", lambda b: b.pull(b.repo().file_url, "--directories=a/../../b")
    ),
    "dir-backslash": Case(
        2, "backslashes", lambda b: b.pull(b.repo().file_url, "--directories=a\\..\\b")
    ),
    "dir-empty": Case(
        2, "empty path", config=lambda b: b.source(b.repo().file_url, 'directories = [""]')
    ),
    # --- destination names ------------------------------------------------------------------
    "name-parent": Case(
        2, "would leave the base path", lambda b: b.pull(b.repo().file_url, name="../x")
    ),
    "name-absolute": Case(
        2, "would leave the base path", lambda b: b.pull(b.repo().file_url, name="/abs")
    ),
    "name-reserved": Case(
        2, "reserved", lambda b: b.pull(b.repo().file_url, name=".runner-storage")
    ),
    "name-escape": Case(
        2, "would leave the base path", lambda b: b.pull(b.repo().file_url, name="a/../../b")
    ),
    "name-newline": Case(2, "control characters", lambda b: b.pull(b.repo().file_url, name="a\nb")),
    "name-in-config-escapes": Case(
        2,
        "would leave the base path",
        config=lambda b: b.config(f'[[sources]]\nname = "../x"\nsource = "{b.repo().file_url}"\n'),
    ),
    # --- object keys ------------------------------------------------------------------------
    "key-dotdot": s3_key_case("dotdot", "has a '..' component"),
    "key-deep-dotdot": s3_key_case("deep-dotdot", "has a '..' component"),
    "key-leading-slash": s3_key_case("absolute", "is absolute below the prefix"),
    "key-backslash": s3_key_case("backslash", "contains a backslash"),
    "key-control": s3_key_case("control", "control characters"),
    "key-delete-char": s3_key_case("delete-char", "control characters"),
    "key-dot": s3_key_case("dot", "has a '.' component"),
    "key-file-and-dir": s3_key_case("file-and-dir", "would be both a file and a directory"),
    "bucket-missing": Case(1, "was not found", lambda b: b.pull("s3://no-such-bucket-here/x")),
    # --- upstream content ----------------------------------------------------------------
    "symlink-to-etc": Case(1, "points outside the source tree", lambda b: _symlink_repo(b, "/etc")),
    "symlink-to-parent": Case(
        1, "points outside the source tree", lambda b: _symlink_repo(b, "..")
    ),
    "submodule-ext": Case(
        1,
        "only https, http, ssh and git submodule URLs are allowed",
        config=lambda b: _submodule_repo(b, lambda box, _: f"ext::sh -c touch% {box.pwned}"),
        once=True,
    ),
    "submodule-file-url": Case(
        1,
        "only https, http, ssh and git submodule URLs are allowed",
        config=lambda b: _submodule_repo(b, lambda _, other: other.file_url),
        once=True,
    ),
    "submodule-local-path": Case(
        1,
        "only https, http, ssh and git submodule URLs are allowed",
        config=lambda b: _submodule_repo(b, lambda _, other: str(other.path)),
        once=True,
    ),
    "submodule-relative-to-local": Case(
        1,
        "only https, http, ssh and git submodule URLs are allowed",
        config=lambda b: _submodule_repo(b, lambda _, other: f"../{other.path.name}"),
        once=True,
    ),
    # --- config files -------------------------------------------------------------------
    "config-wrong-type": Case(
        2,
        "sources[0].pull_interval: Input should be a valid number",
        config=lambda b: b.source("s3://b/p", 'pull_interval = "soon"'),
    ),
    "config-wrong-type-list": Case(
        2,
        "sources[0].directories",
        config=lambda b: b.source(b.repo().file_url, "directories = 7"),
    ),
    "config-unknown-key": Case(
        2,
        "colour: Extra inputs are not permitted (an unknown setting",
        config=lambda b: b.config('colour = "blue"\n[[sources]]\nsource = "s3://b/p"\n'),
    ),
    "config-unknown-source-key": Case(
        2, "sources[0].brnach: Extra inputs", config=lambda b: b.source("s3://b/p", 'brnach = "x"')
    ),
    "config-duplicate-names": Case(
        2,
        "names must be unique",
        config=lambda b: b.config(
            '[[sources]]\nname = "a"\nsource = "s3://b/p"\n'
            '[[sources]]\nname = "a"\nsource = "s3://b/q"\n'
        ),
    ),
    "config-syntax": Case(2, "cannot be parsed", config=lambda b: b.config("[[sources]\n")),
    "config-secret-two-origins": Case(
        2,
        "give exactly one of env, file or value",
        config=lambda b: b.source(
            b.repo().file_url, 'credentials = { token = { env = "A", value = "b" } }'
        ),
    ),
    "config-git-option-on-s3": Case(
        2,
        "branch: only applies to git sources",
        config=lambda b: b.source("s3://b/p", 'branch = "x"'),
    ),
    "config-webhook-scheme": Case(
        2,
        "webhook must be an http:// or https:// URL",
        config=lambda b: b.source("s3://b/p", f'hooks = {{ webhook = "file://{b.pwned}" }}'),
    ),
    "config-port-out-of-range": Case(
        2,
        "http_port: Input should be less than or equal to 65535",
        config=lambda b: b.config('[[sources]]\nsource = "s3://b/p"\n', port=70000),
    ),
}


def _args(box: Sandbox, case: Case) -> list[str]:
    """Build the case's input (repositories, config files) and its command line."""
    if case.args is not None:
        return case.args(box)
    assert case.config is not None
    path = case.config(box)
    return ["run", "--once", "--config", path] if case.once else ["check", "--config", path]


def args_run(box: Sandbox, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``runner-storage ARGS`` in the sandbox: its own cwd and HOME, S3 at moto."""
    env = {
        **os.environ,
        "HOME": str(box.path / "home"),
        "AWS_ENDPOINT_URL": box.s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": box.s3.key,
        "AWS_SECRET_ACCESS_KEY": box.s3.secret,
    }
    return subprocess.run(
        [RUNNER_STORAGE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=box.path / "cwd",
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _error_line(result: subprocess.CompletedProcess[str], case: Case) -> str:
    """The one line that reports the problem."""
    if case.once:
        assert result.stderr == "", result.stderr
        failures = [
            json.loads(line)
            for line in result.stdout.splitlines()
            if line.startswith("{") and '"sync_failed"' in line
        ]
        assert len(failures) == 1, result.stdout
        message: str = failures[0]["error"]
        assert "\n" not in message
        return message
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    return lines[0]


def _allowed(path: str) -> bool:
    """Whether a new path is inside the destination's own directories."""
    parts = Path(path).parts
    if parts[:1] != ("root",):
        return False
    inside = parts[1:]
    return (
        inside in ((), (".runner-storage",))
        or inside[:1] == (NAME,)
        or inside[:2] in ((".runner-storage", NAME), (".runner-storage", ".repos"))
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hostile_input(sandbox: Sandbox, case: Case) -> None:
    """Bad input exits 2, unsafe upstream content 1; one line says what and how; no escape."""
    args = _args(sandbox, case)
    before = snapshot(sandbox.path)
    result = args_run(sandbox, args)
    after = snapshot(sandbox.path)

    assert result.returncode == case.code, (args, result.stdout, result.stderr)
    line = _error_line(result, case)
    assert case.phrase in line, line
    assert SECRET not in result.stdout + result.stderr
    assert not os.path.lexists(sandbox.pwned)
    changed = {path for path in after if before.get(path) != after[path]}
    changed |= set(before) - set(after)
    if case.code == 2:
        assert changed == set(), f"bad input wrote {sorted(changed)}"
    else:
        outside = sorted(path for path in changed if not _allowed(path))
        assert outside == [], f"written outside the destination: {outside}"
    # Refused means refused: nothing is published.
    assert not os.path.lexists(sandbox.root / NAME)
