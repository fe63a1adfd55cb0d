"""Prefect 1's ``CodeCommit`` storage, fetched over git with CodeCommit's SigV4 login.

The repository is cloned from ``https://git-codecommit.{region}.amazonaws.com/v1/repos/
{repo}`` (or ``{endpoint_url}/v1/repos/{repo}``) with the password git-remote-codecommit
computes from the standard AWS credential chain, signed afresh at every pull
(:mod:`runner_storage.storage.sigv4`), so no credential helper and no long-lived git
password is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner_storage.exceptions import ConfigurationError
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.storage.git import GitFlowStorage, flow_file
from runner_storage.storage.sigv4 import CodeCommitCredentials, codecommit_region, codecommit_url

__all__ = ["PULL_CODECOMMIT_STEP", "CodeCommit"]

#: The step :meth:`CodeCommit.to_pull_step` writes.
PULL_CODECOMMIT_STEP = "runner_storage.deployments.steps.pull_codecommit"

_OPTIONS = frozenset({"region_name", "endpoint_url", "profile_name"})


class CodeCommit(GitFlowStorage):
    """Prefect 1's ``CodeCommit`` storage: the flow file of an AWS CodeCommit repository.

    ``commit`` is a branch, a tag or a full commit SHA; by default the repository's default
    branch. ``client_options`` are boto3's: ``region_name`` (else ``AWS_REGION``,
    ``AWS_DEFAULT_REGION`` or the profile's region), ``endpoint_url`` (a VPC endpoint, or a
    test server) and ``profile_name``. AWS credentials come from the standard chain
    (environment, shared files, SSO, instance roles); nothing secret is configured here.

    Example::

        storage = CodeCommit(repo="flows", path="etl/flow.py",
                             client_options={"region_name": "eu-west-1"})

    Raises:
        ConfigurationError: no ``path``, an unknown client option, no region.
    """

    def __init__(
        self,
        repo: str,
        path: str | None = None,
        commit: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        options = dict(client_options or {})
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"client_options has {', '.join(map(repr, unknown))}, which CodeCommit does"
                " not take: use region_name, endpoint_url or profile_name"
            )
        if not path:
            raise ConfigurationError("path must name the flow file in the repository")
        self.repo, self.path, self.commit, self.client_options = repo, path, commit, options
        profile = options.get("profile_name")
        region = codecommit_region(options, profile)
        self._region = region
        super().__init__(
            codecommit_url(repo, region, options.get("endpoint_url")),
            flow=flow_file(path),
            login=None,
            ref=commit,
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
        # The login is signed for each pull; GitRepository takes it as credentials.
        self._credentials = CodeCommitCredentials(region, profile=profile)

    def to_pull_step(self) -> dict[str, Any]:
        """Our own ``pull_codecommit`` step: Prefect 3 has no CodeCommit login.

        Its inputs are this class's arguments; the worker signs with its own AWS
        credentials, so the step holds no secret.
        """
        inputs: dict[str, Any] = {"repo": self.repo, "path": self.path}
        if self.commit:
            inputs["commit"] = self.commit
        if self.client_options:
            inputs["client_options"] = dict(self.client_options)
        if self.name != self._default_name():
            inputs["name"] = self.name
        return {PULL_CODECOMMIT_STEP: inputs}

    def _default_name(self) -> str:
        from runner_storage.git.url import default_name  # noqa: PLC0415

        return default_name(self._url, self._branch or (self._commit_sha or "")[:12] or None)
