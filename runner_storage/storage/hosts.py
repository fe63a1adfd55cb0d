"""Prefect 1's ``GitHub``, ``GitLab`` and ``Bitbucket`` storages, fetched over git.

Prefect 1 read one file through each host's REST API. Every one of these hosts serves the
same repository over git with the same token, so here a pull is a sparse, blobless fetch
of the flow file's folder through the shared object store, and a no-op costs one ref
lookup. The destination holds the flow file's folder (and the files above it).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    status_error,
)
from runner_storage.publish import Backend, Materialized, PreviousVersion
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.storage.git import GitFlowStorage, HostLogin, flow_file
from runner_storage.storage.secrets import NamedSecret
from runner_storage.types import Revision

__all__ = ["Bitbucket", "GitHub", "GitLab", "host_url"]


def host_url(host: str, *, what: str = "host") -> str:
    """``https://HOST`` for a bare host name, the URL as given otherwise, without a ``/``.

    Raises:
        ConfigurationError: not an http(s) URL or host name, or it holds credentials.
    """
    text = host.strip().rstrip("/") if isinstance(host, str) else ""
    if text and "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"{what} {host!r} is not a host name or an https:// URL")
    if parts.username or parts.password:
        raise ConfigurationError(f"{what} must not hold credentials: name a secret instead")
    return text


def _secret(name: str | None, default: str) -> tuple[NamedSecret, bool]:
    """The named secret, or the documented default (optional: public repositories)."""
    return (NamedSecret(name), False) if name else (NamedSecret(default), True)


def _flow(path: str | None) -> Any:
    if not path:
        raise ConfigurationError("path must name the flow file in the repository")
    return flow_file(path)


class GitHub(GitFlowStorage):
    """Prefect 1's ``GitHub`` storage: the flow file of a GitHub repository at a ref.

    ``ref`` is a branch, a tag or a full commit SHA; by default the repository's default
    branch. The token comes from the secret ``access_token_secret``, by default
    ``GITHUB_ACCESS_TOKEN`` (unset: the repository is pulled anonymously).
    ``base_url`` is GitHub Enterprise's API (``https://HOST/api/v3``); the repository is
    then cloned from ``https://HOST/{repo}.git``.

    Example::

        storage = GitHub(repo="org/flows", path="flows/etl.py", ref="main")
        await storage.pull_code()
        storage.flow_path  # BASE/flows-main/flows/etl.py

    Raises:
        ConfigurationError: ``repo`` is not ``owner/name``, no ``path``, a bad ref or URL.
    """

    def __init__(
        self,
        repo: str,
        path: str,
        ref: str | None = None,
        access_token_secret: str | None = None,
        base_url: str | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if not isinstance(repo, str) or repo.strip("/").count("/") != 1:
            raise ConfigurationError(f"repo must be 'owner/name', got {repo!r}")
        self.repo, self.path, self.ref = repo.strip("/"), path, ref
        self.access_token_secret, self.base_url = access_token_secret, base_url
        web = "https://github.com"
        if base_url:
            web = host_url(base_url, what="base_url")
            web = web.removesuffix("/api/v3")
        token, optional = _secret(access_token_secret, "GITHUB_ACCESS_TOKEN")
        super().__init__(
            f"{web}/{self.repo}.git",
            flow=_flow(path),
            login=HostLogin(token=token, optional=optional),
            ref=ref,
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )


class GitLab(GitFlowStorage):
    """Prefect 1's ``GitLab`` storage: the flow file of a GitLab project at a ref.

    ``repo`` is the project's path (``group/project``) or its numeric id, which is resolved
    once, at the first pull, through ``GET {host}/api/v4/projects/{id}``. ``host`` is a
    self-managed GitLab (by default gitlab.com); ``ref`` defaults to ``master`` as in
    Prefect 1. The token (``access_token_secret``, by default ``GITLAB_ACCESS_TOKEN``;
    unset: anonymous) logs in as ``oauth2``, as GitLab asks.

    Example::

        storage = GitLab(repo="group/flows", host="gitlab.example.com", path="etl.py")

    Raises:
        ConfigurationError: no ``repo`` or ``path``, a bad host or ref.
    """

    def __init__(
        self,
        repo: str | int,
        host: str | None = None,
        path: str | None = None,
        ref: str | None = None,
        access_token_secret: str | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        if isinstance(repo, int) and not isinstance(repo, bool) and repo > 0:
            repo = str(repo)  # a numeric id, as TOML or YAML give it
        if not isinstance(repo, str) or not repo.strip("/"):
            raise ConfigurationError("repo must be a project path (group/project) or its id")
        self.repo, self.host, self.path = str(repo).strip("/"), host, path
        self.ref = ref or "master"
        self.access_token_secret = access_token_secret
        self._web = host_url(host or "https://gitlab.com")
        token, optional = _secret(access_token_secret, "GITLAB_ACCESS_TOKEN")
        self._settings: dict[str, Any] = {
            "flow": _flow(path),
            "login": HostLogin(token=token, optional=optional, host_username="oauth2"),
            "ref": self.ref,
            "pull_interval": pull_interval,
            "keep_versions": keep_versions,
            "grace_period": grace_period,
        }
        self._project_id = self.repo if self.repo.isdigit() else None
        self._numeric_id = self._project_id
        project = f"project-{self.repo}" if self._project_id else self.repo
        url = f"{self._web}/{project}.git"
        if self._project_id and name is None:
            name = f"project-{self.repo}-{self.ref.replace('/', '-')}"
        self._settings["name"] = name
        super().__init__(url, **self._settings)

    async def _resolve_project(self) -> None:
        """Turn a numeric project id into the project's path, once."""
        if self._project_id is None:
            return
        login = self._settings["login"]
        token = login.token_value()
        api = f"{self._web}/api/v4/projects/{quote(self._project_id)}"
        project = await _gitlab_project(api, token)
        path = project.get("path_with_namespace")
        if not isinstance(path, str) or not path:
            raise SourceError(f"GitLab project {self._project_id} at {api}: no path in reply")
        base = self._storage_base_path
        GitFlowStorage.__init__(self, f"{self._web}/{path}.git", **self._settings)
        self.set_base_path(base)
        self._project_id = None

    def to_pull_step(self) -> dict[str, Any]:
        """Prefect 3's ``git_clone`` of the project.

        Raises:
            ConfigurationError: ``repo`` is a numeric id not resolved yet (by a pull).
        """
        if self._project_id is not None:
            raise ConfigurationError(
                f"GitLab project {self._project_id} has not been looked up yet: pull once"
                " first, or give repo as the project's path (group/project)"
            )
        return super().to_pull_step()

    def backend(self) -> Backend:
        """The git backend; for a numeric id, one that looks the project up first.

        The lookup runs inside the publisher, so its failure is recorded in ``state.json``
        like any other.
        """
        if self._project_id is None:
            return super().backend()
        return _LookupFirst(self)

    def _source_label(self) -> str:
        # Stable across the lookup: state.json's source must not change when it resolves.
        if self._numeric_id is not None:
            return f"git+{self._web}/api/v4/projects/{self._numeric_id}"
        return super()._source_label()


class _LookupFirst:
    """A GitLab backend that resolves the numeric project id, then is the git backend."""

    def __init__(self, storage: GitLab) -> None:
        self._storage = storage
        self._inner: Backend | None = None

    async def resolve(self) -> Revision | None:
        await self._storage._resolve_project()
        self._inner = GitFlowStorage.backend(self._storage)
        return await self._inner.resolve()

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        assert self._inner is not None  # noqa: S101 - resolve() runs first
        return await self._inner.materialize(revision, staging, previous)


async def _gitlab_project(api: str, token: str | None) -> dict[str, Any]:
    """``GET`` a GitLab project; errors as our error classes, the token never shown."""
    import aiohttp  # noqa: PLC0415 - only numeric project ids need it

    headers = {"Accept": "application/json"}
    if token:
        headers["PRIVATE-TOKEN"] = token
    cafile = os.environ.get("GIT_SSL_CAINFO") or os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile or None)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(api, headers=headers, ssl=context) as reply,
        ):
            body = await reply.read()
            status = reply.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TransientSourceError(
            f"cannot reach GitLab at {api}: {type(exc).__name__}; check the host"
        ) from None
    if status != 200:
        hint = {
            AuthenticationError: "check the token secret",
            NotFoundError: "check the project id",
            TransientSourceError: "it is retried",
        }
        error = status_error(status) or SourceError
        raise error(
            f"GitLab answered HTTP {status} for the project lookup {api}:"
            f" {hint.get(error, 'check the host')}"
        )
    try:
        project = json.loads(body)
    except ValueError:
        raise SourceError(f"GitLab's answer for {api} is not JSON") from None
    if not isinstance(project, dict):
        raise SourceError(f"GitLab's answer for {api} is not a project")
    return project


class Bitbucket(GitFlowStorage):
    """Prefect 1's ``Bitbucket`` storage: Bitbucket Server, or Bitbucket Cloud with a workspace.

    Bitbucket Server (``host`` given, no ``workspace``): ``{host}/scm/{project}/{repo}.git``
    with the token (``access_token_secret``, by default ``BITBUCKET_ACCESS_TOKEN``) sent as
    ``Authorization: Bearer``, or as a Basic login when the secret holds ``user:token``.
    Bitbucket Cloud (``workspace`` given): ``https://bitbucket.org/{workspace}/{repo}.git``
    (``host`` replaces ``https://bitbucket.org``) with the username and app password from
    ``cloud_username_secret`` and ``cloud_app_password_secret`` (by default
    ``BITBUCKET_CLOUD_USERNAME`` and ``BITBUCKET_CLOUD_APP_PASSWORD``). ``ref`` defaults to
    ``master`` as in Prefect 1. Unset default secrets mean an anonymous pull.

    Example::

        storage = Bitbucket(project="ETL", repo="flows", host="https://bitbucket.example.com",
                            path="flows/etl.py", ref="main")

    Raises:
        ConfigurationError: neither ``host`` nor ``workspace``; no ``path``; a bad ref.
    """

    def __init__(  # noqa: PLR0917 - Prefect 1's signature
        self,
        project: str,
        repo: str,
        workspace: str | None = None,
        host: str | None = None,
        path: str | None = None,
        ref: str | None = None,
        access_token_secret: str | None = None,
        cloud_username_secret: str | None = None,
        cloud_app_password_secret: str | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        for label, value in (("project", project), ("repo", repo), ("workspace", workspace)):
            if value is not None and (not isinstance(value, str) or not value or "/" in value):
                raise ConfigurationError(f"{label} must be one name without '/', got {value!r}")
        self.project, self.repo, self.workspace = project, repo, workspace
        self.host, self.path, self.ref = host, path, ref or "master"
        self.access_token_secret = access_token_secret
        self.cloud_username_secret = cloud_username_secret
        self.cloud_app_password_secret = cloud_app_password_secret
        if workspace:
            web = host_url(host or "https://bitbucket.org")
            url = f"{web}/{workspace}/{repo}.git"
            username, _ = _secret(cloud_username_secret, "BITBUCKET_CLOUD_USERNAME")
            password, optional = _secret(cloud_app_password_secret, "BITBUCKET_CLOUD_APP_PASSWORD")
            login = HostLogin(token=password, username=username, optional=optional)
        elif host:
            url = f"{host_url(host)}/scm/{project}/{repo}.git"
            token, optional = _secret(access_token_secret, "BITBUCKET_ACCESS_TOKEN")
            login = HostLogin(token=token, optional=optional, bearer=True)
        else:
            raise ConfigurationError(
                "give host (Bitbucket Server) or workspace (Bitbucket Cloud) to say where"
                f" {project}/{repo} is"
            )
        super().__init__(
            url,
            flow=_flow(path),
            login=login,
            ref=self.ref,
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
