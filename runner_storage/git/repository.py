"""GitRepository: publish a branch, tag or commit of a git repository as a plain tree.

Names, arguments, defaults and the destination naming rule are Prefect's
(``prefect.runner.storage.GitRepository``). What differs is underneath: every source of one
repository shares a bare object store under ``BASE/.runner-storage/.repos/``; a pull asks
the remote for exactly one ref (protocol v2 ``ls-refs``, in process over http(s), else
``git ls-remote``), fetches only that ref, shallow and, with ``directories``, blobless;
and the commit's tree is exported without any ``.git`` into a new immutable version that
the publisher swaps in atomically.
"""

from __future__ import annotations

import base64
import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.git.command import Git
from runner_storage.git.environment import authorization, git_environment, ssh_command
from runner_storage.git.sync import GitBackend, GitSource, Interest
from runner_storage.git.url import (
    check_branch_name,
    check_commit_sha,
    check_directories,
    default_name,
    parse_remote_url,
)
from runner_storage.publish import Backend
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import basic_auth, check_credentials, secret_values
from runner_storage.steps import git_clone_step

__all__ = ["GitRepository"]


class GitRepository(ManagedStorage):
    """Pulls a git repository's branch, tag or commit and publishes it as a plain tree.

    Args:
        url: ``https``, ``http``, ``ssh``, ``git`` or ``file`` URL, scp-style
            ``user@host:path``, or a local path. Must not contain credentials.
        credentials: ``{"username": ..., "access_token": ...}`` (values may be
            :class:`~runner_storage.Secret`), or a Prefect credentials block. Sent to the
            repository's own scheme, host and port only, over http(s).
        name: the destination name; default ``<repo>[-<branch with / as ->]``.
        branch: a branch or tag (a branch wins when both exist); None is the remote's
            default branch.
        commit_sha: a commit (4 to 64 hex digits; short SHAs are resolved upstream).
        include_submodules: also publish submodules (https/http/ssh/git URLs only).
        pull_interval: seconds between pulls; None pulls once.
        directories: publish only these directories (and the files at the top level and
            in their parents), as a cone-mode sparse checkout does.
        depth: history to fetch; 1 by default, 0 for all of it.
        ssh_key_file: private key for ssh remotes (with ``IdentitiesOnly``).
        known_hosts_file: the only known_hosts file ssh trusts (strict checking).
        keep_versions: how many newest versions to keep.
        grace_period: seconds an old version is kept after it was replaced.

    Raises:
        ConfigurationError: invalid settings (also a ``ValueError``).

    Example::

        storage = GitRepository(
            "https://github.com/org/flows.git",
            credentials={"access_token": Secret.from_env("GITHUB_TOKEN")},
            branch="main",
            directories=["flows"],
        )
        result = await storage.pull_code()  # result.revision is the commit SHA
    """

    def __init__(  # noqa: PLR0917 - Prefect's positional signature
        self,
        url: str,
        credentials: Any = None,
        name: str | None = None,
        branch: str | None = None,
        commit_sha: str | None = None,
        include_submodules: bool = False,
        pull_interval: float | None = 60,
        directories: list[str] | None = None,
        *,
        depth: int = 1,
        ssh_key_file: str | os.PathLike[str] | None = None,
        known_hosts_file: str | os.PathLike[str] | None = None,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        remote = parse_remote_url(url)
        branch = branch or None
        if branch and commit_sha:
            raise ConfigurationError(
                "give either branch or commit_sha, not both: a commit already fixes the tree"
            )
        if branch is not None:
            check_branch_name(branch)
        sha = check_commit_sha(commit_sha) if commit_sha else None
        sparse = check_directories(directories)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ConfigurationError(f"depth must be 0 (all history) or more, got {depth!r}")
        check_credentials(credentials)
        super().__init__(
            name=name or default_name(url, branch),
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
        self._url = url
        self._remote = remote
        self._branch = branch
        self._commit_sha = commit_sha
        self._credentials = credentials if credentials is not None else {}
        self._include_submodules = include_submodules
        self._directories = list(directories) if directories else None
        self._source = GitSource(
            remote=remote,
            branch=branch,
            commit_sha=sha,
            directories=sparse,
            include_submodules=bool(include_submodules),
            depth=depth,
        )
        self._interest = Interest(self._source, lambda: self._storage_base_path)
        self._ssh_key_file = _absolute(ssh_key_file)
        self._known_hosts_file = _absolute(known_hosts_file)
        if self._credentials and remote.kind == "http":
            warnings.warn(
                f"credentials for {url} travel in clear text over http://: use https://",
                UserWarning,
                stacklevel=2,
            )
        elif self._credentials and remote.kind not in ("http", "https"):
            warnings.warn(
                f"credentials are ignored for {url}: they are only sent over http(s); for"
                " ssh use ssh_key_file=...",
                UserWarning,
                stacklevel=2,
            )

    @property
    def url(self) -> str:
        """The repository URL as given (it never holds a password)."""
        return self._url

    @property
    def branch(self) -> str | None:
        """The branch or tag followed; None is the remote's default branch."""
        return self._branch

    @property
    def commit_sha(self) -> str | None:
        """The commit the source is pinned to, if any."""
        return self._commit_sha

    # --- Prefect's public surface -----------------------------------------------------------

    def to_pull_step(self) -> dict[str, Any]:
        """A ``git_clone`` pull step; secrets appear only as placeholders.

        Raises:
            ConfigurationError: a credential is a plain value, which the step would expose.
        """
        name = self.name if self.name != default_name(self._url, self._branch) else None
        return git_clone_step(
            repository=self._url,
            branch=self._branch,
            clone_directory_name=name,
            directories=self._directories,
            include_submodules=self._include_submodules,
            commit_sha=self._commit_sha,
            credentials=self._step_credentials(),
        )

    def _step_credentials(self) -> Any:
        """The credentials a pull step carries (secrets become placeholders there)."""
        return self._credentials or None

    async def is_sparsely_checked_out(self) -> bool:
        """Whether the published version holds only ``directories``."""
        return bool(self._source.directories) and self.publisher.current_version() is not None

    async def is_shallow_clone(self) -> bool:
        """Whether pulls fetch limited history (``depth`` > 0)."""
        return self._source.depth > 0

    async def is_current_commit(self) -> bool:
        """Whether the published version is ``commit_sha``.

        Raises:
            ConfigurationError: no ``commit_sha`` was given.
        """
        wanted = self._source.commit_sha
        if not wanted:
            raise ConfigurationError("No commit SHA provided")
        state = self.publisher.state()
        return bool(state and state.revision and state.revision.startswith(wanted))

    def __repr__(self) -> str:
        return (
            f"GitRepository(name={self.name!r} repository={self._url!r}, branch={self._branch!r})"
        )

    def _identity(self) -> tuple[Any, ...]:
        return (self._url, self._branch)

    # --- ManagedStorage hooks ---------------------------------------------------------------

    def backend(self) -> Backend:
        """A backend for one pull: one ref lookup, then the fetch and export if needed."""
        return GitBackend(
            self._source,
            self._storage_base_path,
            make_git=self._git,
            redact=self.redact,
            interest=self._interest,
        )

    def _source_label(self) -> str:
        where = self._remote.fetch_url if self._remote.kind == "local" else self._remote.url
        return f"git+{where}"

    def _secret_values(self) -> list[str]:
        values = secret_values(self._credentials)
        # Credentials that sign each login (CodeCommit) know what they have sent.
        extra = getattr(self._credentials, "secret_values", None)
        if callable(extra):
            values += [str(value) for value in extra()]
        with contextlib.suppress(RunnerStorageError):
            header = self._authorization()
            scheme, _, credential = (header or "").partition(" ")
            if scheme == "Basic":
                user, _, password = base64.b64decode(credential).decode().partition(":")
                values.append(password or user)
            if credential:
                values.append(credential)
        return [value for value in values if value]

    def _basic_auth(self) -> tuple[str, str] | None:
        """``(username, password)`` for the repository's host, read now (rotation works)."""
        if not self._credentials or self._remote.http_origin is None:
            return None
        return basic_auth(self._remote.url, self._credentials)

    def _authorization(self) -> str | None:
        """The ``Authorization`` header value for the repository's host, read now.

        Credentials with ``git_authorization(url)`` (a Bearer token, say) give it
        themselves; otherwise it is HTTP Basic from Prefect's credential rules.
        """
        if not self._credentials or self._remote.http_origin is None:
            return None
        custom = getattr(self._credentials, "git_authorization", None)
        if callable(custom):
            header = custom(self._remote.url)
            return str(header) if header else None
        basic_auth = self._basic_auth()
        return authorization(basic_auth) if basic_auth is not None else None

    def _git(self) -> Git:
        """A git runner with this pull's environment (credentials read now)."""
        header = self._authorization()
        env = git_environment(
            basic_auth=None,
            header=header,
            http_origin=self._remote.http_origin,
            ssh=ssh_command(self._ssh_key_file, self._known_hosts_file),
        )
        return Git(env, redact=self.redact, http_authorization=header)


def _absolute(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else Path(path).expanduser().absolute()
