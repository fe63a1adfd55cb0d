"""Upstream git repositories for the tests: bare repositories that every git server serves.

:class:`UpstreamRepo` is a bare repository ``<git_project_root>/<name>.git`` plus a private
working clone (outside the served root) used to make commits. Tests change "the remote"
through its methods and then check what the code under test fetched.

Every git command here runs with :data:`GIT_TEST_ENV` (see :func:`git_env`), so neither the
host's system/global configuration nor a credential helper or prompt can interfere.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pytest

GIT_TEST_ENV: dict[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.com",
}
"""Variables every git command of the tests runs with: no system or global config, no
prompting, fixed author and committer identity."""

_DROPPED_PREFIXES = ("GIT_",)
_DROPPED_NAMES = frozenset({"SSH_AUTH_SOCK", "SSH_ASKPASS"})

INITIAL_FILES: dict[str, str] = {
    "README.md": "# upstream\n",
    "flows/a.py": "A = 1\n",
    "flows/sub/b.py": "B = 2\n",
    "lib/c.py": "C = 3\n",
    "docs/x.md": "x\n",
}
"""The tree of every new upstream repository's first commit on ``main``."""

DEFAULT_BRANCH = "main"


def git_env(**extra: str) -> dict[str, str]:
    """Return ``os.environ`` made safe for git: :data:`GIT_TEST_ENV` plus ``extra``.

    Inherited ``GIT_*`` variables (``GIT_DIR`` from a hook, a host ``GIT_SSH_COMMAND``, ...)
    and the host's ssh agent are dropped first, so tests are hermetic.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED_NAMES
    }
    env.update(GIT_TEST_ENV)
    env.update(extra)
    return env


def run_git(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` with :func:`git_env` and return the completed process (text output).

    With ``check`` (the default) a failure raises :class:`AssertionError` quoting git's
    stderr, which reads better in a test report than ``CalledProcessError``.
    """
    proc = subprocess.run(
        ["git", *(os.fspath(a) for a in args)],
        cwd=cwd,
        env=dict(env) if env is not None else git_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(map(str, args))} failed ({proc.returncode}) in {cwd}:\n"
            f"{proc.stderr.strip()}"
        )
    return proc


class UpstreamRepo:
    """A bare repository served by the git fixtures, with a private clone to commit from.

    ``path`` is the bare repository (``…/NAME.git``) inside the shared project root;
    ``name`` is ``NAME``; ``relpath`` is ``NAME.git`` (its path relative to the project
    root, which is what the servers' URLs use). All methods returning a SHA return the full
    40-hex commit id.
    """

    def __init__(self, root: Path, work_root: Path, name: str) -> None:
        self.name = name
        self.relpath = f"{name}.git"
        self.path = root / self.relpath
        self.work_path = work_root / name
        if self.path.exists() or self.work_path.exists():
            raise ValueError(f"upstream repository {name!r} already exists")
        self._create()

    def __repr__(self) -> str:
        return f"UpstreamRepo({self.name!r}, path={str(self.path)!r})"

    @property
    def file_url(self) -> str:
        """``file://`` URL of the bare repository (no server involved)."""
        return self.path.as_uri()

    # --- plumbing --------------------------------------------------------------------------

    def git(self, *args: str | os.PathLike[str]) -> str:
        """Run a git command in the bare repository; return its stripped stdout."""
        return run_git(*args, cwd=self.path).stdout.strip()

    def _work(self, *args: str | os.PathLike[str]) -> str:
        return run_git(*args, cwd=self.work_path).stdout.strip()

    def _create(self) -> None:
        run_git("init", "-q", "--bare", "-b", DEFAULT_BRANCH, self.path)
        for key, value in (
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("http.receivepack", "true"),
        ):
            self.git("config", key, value)
        run_git("init", "-q", "-b", DEFAULT_BRANCH, self.work_path)
        self._work("remote", "add", "origin", self.path)
        self._write(INITIAL_FILES)
        self._work("add", "-A")
        self._work("commit", "-q", "-m", "initial commit")
        self._work("push", "-q", "origin", f"HEAD:refs/heads/{DEFAULT_BRANCH}")

    def _write(self, files: Mapping[str, bytes | str | None]) -> None:
        for rel, content in files.items():
            target = self.work_path / rel
            if content is None:
                if target.is_symlink() or target.exists():
                    self._work("rm", "-q", "-r", "--", rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():
                target.unlink()
            target.write_bytes(content.encode() if isinstance(content, str) else content)

    def _checkout(self, branch: str) -> None:
        """Make the work clone's ``branch`` match the bare repository (create it from main)."""
        self._work("fetch", "-q", "--prune", "--force", "origin")
        exists = run_git(
            "rev-parse",
            "-q",
            "--verify",
            f"refs/remotes/origin/{branch}",
            cwd=self.work_path,
            check=False,
        ).returncode
        start = f"origin/{branch}" if exists == 0 else f"origin/{DEFAULT_BRANCH}"
        self._work("checkout", "-q", "-f", "-B", branch, start)
        self._work("clean", "-q", "-f", "-f", "-d", "-x")

    def _commit_and_push(self, message: str, branch: str) -> str:
        self._work("add", "-A")
        self._work("commit", "-q", "--allow-empty", "-m", message)
        self._work("push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return self._work("rev-parse", "HEAD")

    # --- what tests call -------------------------------------------------------------------

    def commit(
        self,
        files: Mapping[str, bytes | str | None],
        message: str = "update",
        branch: str = DEFAULT_BRANCH,
    ) -> str:
        """Write ``files`` (``None`` deletes one), commit on ``branch``, push; return the SHA.

        Paths are relative to the repository root, with ``/`` separators; parent
        directories are created. A branch that does not exist yet is started from main.
        An empty ``files`` makes an empty commit.
        """
        self._checkout(branch)
        self._write(files)
        return self._commit_and_push(message, branch)

    def symlink(self, path: str, target: str, branch: str = DEFAULT_BRANCH) -> str:
        """Commit a symbolic link ``path -> target`` on ``branch``; return the new SHA."""
        self._checkout(branch)
        link = self.work_path / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        return self._commit_and_push(f"link {path} -> {target}", branch)

    def add_submodule(
        self,
        path: str,
        url: str,
        branch: str = DEFAULT_BRANCH,
        *,
        clone_from: str | None = None,
    ) -> str:
        """Commit a submodule at ``path`` whose ``.gitmodules`` URL is ``url``; return the SHA.

        The submodule is cloned from ``clone_from`` (default: ``url``), so a server URL
        that needs credentials can be recorded while cloning from the bare repository's
        local path or ``file_url`` (allowed here with ``protocol.file.allow=always``).
        """
        self._checkout(branch)
        source = clone_from or url
        self._work("-c", "protocol.file.allow=always", "submodule", "add", "-q", source, path)
        if source != url:
            self._work("config", "-f", ".gitmodules", f"submodule.{path}.url", url)
        return self._commit_and_push(f"add submodule {path}", branch)

    def head(self, ref: str = DEFAULT_BRANCH) -> str:
        """Return the commit SHA that ``ref`` (branch, tag, SHA...) points to upstream."""
        return self.git("rev-parse", "--verify", f"{ref}^{{commit}}")

    def create_branch(self, name: str, from_ref: str = DEFAULT_BRANCH) -> str:
        """Create (or move) branch ``name`` at ``from_ref``; return its SHA."""
        sha = self.head(from_ref)
        self.git("update-ref", f"refs/heads/{name}", sha)
        return sha

    def delete_branch(self, name: str) -> None:
        """Delete branch ``name`` upstream."""
        self.git("update-ref", "-d", f"refs/heads/{name}")

    def tag(
        self,
        name: str,
        ref: str = DEFAULT_BRANCH,
        *,
        annotated: bool = False,
        message: str | None = None,
    ) -> str:
        """Create (or move) tag ``name`` at ``ref``; return the tagged commit's SHA.

        ``annotated=True`` makes an annotated tag object (its own SHA differs; the commit's
        is returned).
        """
        sha = self.head(ref)
        if annotated:
            self.git("tag", "-f", "-a", "-m", message or f"tag {name}", name, sha)
        else:
            self.git("tag", "-f", name, sha)
        return sha

    def delete_tag(self, name: str) -> None:
        """Delete tag ``name`` upstream."""
        self.git("tag", "-d", name)

    def force_reset(self, branch: str, to_sha: str) -> None:
        """Rewrite history: point ``branch`` at ``to_sha`` as a force-push would."""
        self.git("update-ref", f"refs/heads/{branch}", self.head(to_sha))

    def set_default_branch(self, name: str) -> None:
        """Make ``name`` the branch a clone checks out by default (the bare repo's HEAD)."""
        self.git("symbolic-ref", "HEAD", f"refs/heads/{name}")

    def branches(self) -> dict[str, str]:
        """Return ``{branch: sha}`` of the upstream branches."""
        return self._refs("refs/heads/")

    def tags(self) -> dict[str, str]:
        """Return ``{tag: commit sha}`` of the upstream tags (annotated tags peeled)."""
        out = self.git("for-each-ref", "--format=%(refname:short) %(*objectname)", "refs/tags/")
        result = self._refs("refs/tags/")
        for line in out.splitlines():
            name, _, peeled = line.partition(" ")
            if peeled:
                result[name] = peeled
        return result

    def _refs(self, prefix: str) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname:short) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)


def repo_relpath(repo: UpstreamRepo | str) -> str:
    """``NAME.git`` for a repository, a name, or a name already ending in ``.git``."""
    if isinstance(repo, UpstreamRepo):
        return repo.relpath
    name = repo.strip("/")
    return name if name.endswith(".git") else f"{name}.git"


class UpstreamRepoFactory(Protocol):
    """Type of the ``upstream_repo`` fixture's value."""

    def __call__(self, name: str | None = None) -> UpstreamRepo:
        """Create a fresh upstream repository named ``NAME-N`` (``NAME`` from the test)."""
        ...


_counter = itertools.count(1)


@pytest.fixture
def safe_git_environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Make ``os.environ`` itself safe for git for one test; return the applied variables.

    For code under test that runs git with the inherited environment: drops
    inherited ``GIT_*`` variables and the ssh agent, then sets :data:`GIT_TEST_ENV`.
    """
    for name in list(os.environ):
        if name.startswith(_DROPPED_PREFIXES) or name in _DROPPED_NAMES:
            monkeypatch.delenv(name)
    for name, value in GIT_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(GIT_TEST_ENV)


@pytest.fixture(scope="session")
def git_project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding every upstream bare repository; all git servers serve it."""
    return tmp_path_factory.mktemp("git-project-root")


@pytest.fixture(scope="session")
def _git_work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory for the upstream repositories' private working clones (not served)."""
    return tmp_path_factory.mktemp("git-upstream-work")


@pytest.fixture
def upstream_repo(
    git_project_root: Path, _git_work_root: Path, request: pytest.FixtureRequest
) -> UpstreamRepoFactory:
    """Factory ``upstream_repo(name=None) -> UpstreamRepo`` making fresh upstream repos.

    Each call creates a uniquely named bare repository in ``git_project_root`` with one
    commit on ``main`` holding :data:`INITIAL_FILES`. A given ``name`` is used as a prefix,
    so names never clash between tests.
    """
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(name: str | None = None) -> UpstreamRepo:
        return UpstreamRepo(
            git_project_root, _git_work_root, f"{name or base or 'repo'}-{next(_counter)}"
        )

    return make
