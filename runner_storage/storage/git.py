"""Prefect 1's ``Git`` storage, and the base every Prefect 1 git host storage shares.

Every git host Prefect 1 knew (GitHub, GitLab, Bitbucket, CodeCommit and any host through
``Git``) serves its repositories over git with the same tokens its REST API takes, so each
storage is a :class:`~runner_storage.GitRepository` with Prefect 1's arguments turned into
a URL, a ref and a login: one ref lookup per no-op, one object store per repository, and
the login only in git's environment.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from runner_storage.exceptions import ConfigurationError, CredentialsError, NotFoundError
from runner_storage.git.environment import authorization
from runner_storage.git.repository import GitRepository
from runner_storage.git.url import default_name
from runner_storage.publish.publisher import Verifier
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import host_login, is_secret_like, placeholder_for, resolve_secret
from runner_storage.storage.secrets import NamedSecret
from runner_storage.types import Revision, SyncResult

__all__ = ["Git", "GitFlowStorage", "HostLogin", "flow_file", "split_ref"]

_FULL_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def split_ref(ref: str | None) -> tuple[str | None, str | None]:
    """``(branch or tag, commit)`` of a Prefect 1 ``ref``: a full hex SHA is a commit."""
    if not ref:
        return None, None
    return (None, ref) if _FULL_SHA.fullmatch(ref) else (ref, None)


def flow_file(path: str, *, what: str = "path") -> PurePosixPath:
    """The flow file's path inside the repository (a leading ``/`` is the root, as Prefect 1).

    Raises:
        ConfigurationError: empty, a folder, or leaving the repository.
    """
    if not isinstance(path, str) or not path.strip("/ "):
        raise ConfigurationError(f"{what} must name the flow file in the repository")
    relative = PurePosixPath(path.lstrip("/"))
    if ".." in relative.parts or "\\" in path or any(ord(c) < 32 for c in path):
        raise ConfigurationError(
            f"{what} {path!r} leaves the repository: give the file's path from its root"
        )
    return relative


@dataclass(frozen=True)
class HostLogin:
    """A Prefect 1 git login, read at every pull (rotated secrets are picked up).

    Attributes:
        token: the secret, or None.
        username: the username to send with it (text or a secret); None lets the host's
            rule decide (GitHub the bare token, GitLab ``oauth2``, Bitbucket
            ``x-token-auth``, a ``user:token`` secret split in two).
        optional: an unset secret means no login (the documented default names: a
            public repository needs none) instead of an error.
        bearer: send the token as ``Authorization: Bearer`` unless it is ``user:token``
            (Bitbucket Server's access tokens).
        url_secret: the whole clone URL's secret, whose user and password are the login.
        host_username: the username a bare token goes with on this host (GitLab's
            ``oauth2``), when the host rule cannot tell from the host name.
    """

    token: Any = None
    username: Any = None
    optional: bool = False
    bearer: bool = False
    url_secret: Any = None
    host_username: str | None = None

    def token_value(self) -> str | None:
        """The token now, or None (no token, or an unset optional one)."""
        if self.token is None:
            return None
        if self.optional and isinstance(self.token, NamedSecret):
            try:
                return self.token.get() or None
            except CredentialsError:  # an unset default secret: no login
                return None
        return resolve_secret(self.token) or None

    def login(self, url: str) -> tuple[str, str] | None:
        """``(username, password)`` for ``url``, or None for an anonymous pull."""
        if self.url_secret is not None:
            parts = urlsplit(resolve_secret(self.url_secret))
            if parts.username is None:
                return None
            return unquote(parts.username), unquote(parts.password or "")
        token = self.token_value()
        if token is None:
            return None
        if self.username is not None:
            return str(resolve_secret(self.username)), token
        if self.host_username is not None and ":" not in token:
            return self.host_username, token
        return host_login((urlsplit(url).hostname or "").lower(), token)

    def git_authorization(self, url: str) -> str | None:
        """The ``Authorization`` header value for ``url`` (Bearer or Basic), or None."""
        if self.bearer and self.username is None:
            token = self.token_value()
            if token is None:
                return None
            if ":" not in token:
                return f"Bearer {token}"
            user, _, password = token.partition(":")
            return authorization((user, password))
        login = self.login(url)
        return authorization(login) if login is not None else None

    def format_git_credentials(self, url: str) -> str:
        """``url`` with the login in it, for callers that want a credentialed URL."""
        login = self.login(url)
        parts = urlsplit(url)
        if login is None:
            return url
        user, password = (quote(part, safe="") for part in login)
        netloc = f"{user}:{password}@{parts.netloc}" if password else f"{user}@{parts.netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    def step_credentials(self) -> dict[str, Any] | None:
        """Prefect 3 ``git_clone`` credentials: placeholders, never values."""
        if self.token is None:
            return None
        credentials: dict[str, Any] = {"access_token": self.token}
        if self.host_username is not None:
            credentials["username"] = self.host_username
        if self.username is not None:
            username = self.username
            credentials["username"] = (
                placeholder_for(username) if is_secret_like(username) else username
            )
        return credentials

    def __repr__(self) -> str:
        return f"HostLogin(token={self.token!r}, username={self.username!r})"


class GitFlowStorage(GitRepository):
    """A Prefect 1 git storage: a :class:`~runner_storage.GitRepository` with a flow file.

    Subclasses turn Prefect 1's arguments into the arguments here; everything else (one
    ref lookup per no-op, a shared object store, the login only in git's environment,
    atomic publishing) is the git engine's.

    Args:
        url: the clone URL (no credentials).
        flow: the flow file's path inside the repository.
        login: how the pull logs in, or None.
        ref: a branch, tag or full commit SHA; None is the remote's default branch.
        sparse: publish only the flow file's folder (and the files above it).
        depth: history to fetch (Prefect 1's ``clone_depth``).
        name: the destination name; by default the repository's, with the ref.
        pull_interval, keep_versions, grace_period: as for GitRepository.
    """

    def __init__(
        self,
        url: str,
        *,
        flow: PurePosixPath,
        login: HostLogin | None,
        ref: str | None = None,
        commit: str | None = None,
        sparse: bool = True,
        depth: int = 1,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
        **engine: Any,
    ) -> None:
        branch, sha = split_ref(ref)
        sha = commit or sha
        directories = [str(flow.parent)] if sparse and str(flow.parent) != "." else None
        super().__init__(
            url,
            credentials=login,
            name=name or default_name(url, branch or (sha[:12] if sha else None)),
            branch=branch,
            commit_sha=sha,
            pull_interval=pull_interval,
            directories=directories,
            depth=depth,
            keep_versions=keep_versions,
            grace_period=grace_period,
            **engine,
        )
        self._flow = flow
        self._login = login

    @property
    def flow_path(self) -> Path:
        """The flow file's absolute path inside the published tree."""
        return self.destination / self._flow

    async def pull_code(
        self, *, verify: Verifier | None = None, timeout: float | None = None
    ) -> SyncResult:
        """Pull as every git storage does; a tree without the flow file is not published.

        Raises:
            NotFoundError: the ref's tree has no flow file at the path; the published
                version stays.
            RunnerStorageError: the pull failed otherwise.
        """

        async def has_flow(tree: Path, revision: Revision) -> None:
            if not (tree / self._flow).is_file():
                where = self._branch or self._commit_sha or "the default branch"
                raise NotFoundError(
                    f"{self._flow} is not in {self._url} at {where}: check path and ref"
                )
            if verify is not None:
                await verify(tree, revision)

        return await super().pull_code(verify=has_flow, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, repository={self._url!r})"

    def _step_credentials(self) -> Any:
        """Prefect 3 ``git_clone`` credentials of the login: placeholders, never values."""
        return self._login.step_credentials() if self._login is not None else None


class Git(GitFlowStorage):
    """Prefect 1's ``Git`` storage: a repository on any host, published whole.

    Prefect 1's rules: the URL is ``https://{repo_host}/{repo}.git``; with
    ``format_access_token`` the login is ``{git_token_username or the repo's owner}:{token}``,
    else the token as the secret holds it; ``use_ssh`` clones ``git@{repo_host}:{repo}.git``
    with the environment's ssh setup and ignores the token (with a warning);
    ``git_clone_url_secret_name`` takes the whole URL from a secret, and any credentials in
    it travel like every other login (never in argv, git's config or a log). The whole
    repository is published: Prefect 1's Git loads files next to the flow.

    Example::

        storage = Git(
            flow_path="flows/etl.py",
            repo="org/flows",
            git_token_secret_name="GITHUB_ACCESS_TOKEN",
            branch_name="main",
        )
        await storage.pull_code()
        storage.flow_path  # BASE/flows-main/flows/etl.py

    Raises:
        ConfigurationError: more than one of ``branch_name``, ``tag`` and ``commit``; no
            ``repo`` and no ``git_clone_url_secret_name``; a bad path or ref.
        CredentialsError: ``git_clone_url_secret_name`` names a secret that is not set.
    """

    def __init__(  # noqa: PLR0917 - Prefect 1's signature
        self,
        flow_path: str,
        repo: str | None = None,
        repo_host: str = "github.com",
        flow_name: str | None = None,
        git_token_secret_name: str | None = None,
        git_token_username: str | None = None,
        git_clone_url_secret_name: str | None = None,
        branch_name: str | None = None,
        tag: str | None = None,
        commit: str | None = None,
        clone_depth: int = 1,
        use_ssh: bool = False,
        format_access_token: bool = True,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if sum(1 for given in (branch_name, tag, commit) if given) > 1:
            raise ConfigurationError(
                "give one of branch_name, tag and commit: each alone fixes what is pulled"
            )
        self.repo = repo
        self.repo_host = repo_host
        self.flow_name = flow_name
        self.git_token_secret_name = git_token_secret_name
        self.git_token_username = git_token_username
        self.git_clone_url_secret_name = git_clone_url_secret_name
        self.branch_name, self.tag, self.commit = branch_name, tag, commit
        self.clone_depth = clone_depth
        self.use_ssh = use_ssh
        self.format_access_token = format_access_token
        login: HostLogin | None = None
        if git_clone_url_secret_name:
            url_secret = NamedSecret(git_clone_url_secret_name)
            parts = urlsplit(url_secret.get())
            url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
            login = HostLogin(url_secret=url_secret)
            self._url_secret: NamedSecret | None = url_secret
        else:
            self._url_secret = None
            if not repo or not isinstance(repo, str) or "/" not in repo.strip("/"):
                raise ConfigurationError(
                    f"repo must be 'owner/name' (got {repo!r}), or give git_clone_url_secret_name"
                )
            repo = repo.strip("/")
            if use_ssh:
                url = f"git@{repo_host}:{repo}.git"
                if git_token_secret_name:
                    warnings.warn(
                        "use_ssh=True clones over ssh with the environment's keys:"
                        f" git_token_secret_name={git_token_secret_name!r} is ignored",
                        UserWarning,
                        stacklevel=2,
                    )
            else:
                url = f"https://{repo_host}/{repo}.git"
                if git_token_secret_name:
                    login = HostLogin(
                        token=NamedSecret(git_token_secret_name),
                        username=(git_token_username or repo.split("/")[0])
                        if format_access_token
                        else None,
                    )
        super().__init__(
            url,
            flow=flow_file(flow_path, what="flow_path"),
            login=login,
            ref=branch_name or tag,
            commit=commit,
            sparse=False,
            depth=clone_depth,
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    def to_pull_step(self) -> dict[str, Any]:
        """Prefect 3's ``git_clone``; with a URL secret, the repository is its placeholder.

        Prefect resolves ``{{ prefect.blocks.secret.NAME }}`` before the step runs, so the
        step clones the URL the secret holds.
        """
        step = super().to_pull_step()
        if self._url_secret is not None:
            (inputs,) = step.values()
            inputs["repository"] = self._url_secret.placeholder()
        return step
