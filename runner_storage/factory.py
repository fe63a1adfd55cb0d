"""create_storage_from_source: pick the storage class for a source string, as Prefect does.

The git and object-store backends are imported only when a source needs them, so
``import runner_storage`` stays cheap: it loads neither the git backend nor fsspec.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

from runner_storage.base import RunnerStorage
from runner_storage.exceptions import ConfigurationError
from runner_storage.local import LocalStorage

__all__ = ["create_storage_from_source"]

#: ``git+<scheme>://`` forces git for URLs that do not end in ``.git`` (pip's spelling).
_GIT_PLUS_SCHEMES = ("http", "https", "ssh", "file")

#: scp-like git addresses: ``[user@]host:path``, with no ``://``.
_SCP_LIKE = re.compile(r"^(?:[^@/:\s]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:(?!//)(?P<path>\S+)$")


def create_storage_from_source(source: str, pull_interval: int | None = 60) -> RunnerStorage:
    """Create the storage for ``source``, with Prefect's rules.

    * git, when the scheme is ``git``, the path ends in ``.git`` (URLs, local paths and
      scp-like ``git@host:org/repo.git``; a trailing ``/`` is allowed and dropped), or the
      URL starts with ``git+https://``, ``git+http://``, ``git+ssh://`` or ``git+file://``
      (the ``git+`` is dropped);
    * :class:`LocalStorage` of the path, for ``file://`` and ``local://``;
    * :class:`RemoteStorage`, for any other scheme fsspec knows (``s3://``, ``gs://``,
      ``az://``, ``memory://``, ``https://``...);
    * :class:`LocalStorage` otherwise: plain paths and unknown schemes.

    Args:
        source: the URL or path to pull from.
        pull_interval: seconds between pulls; None pulls once.

    Returns:
        A storage that satisfies :class:`RunnerStorage`.

    Raises:
        ConfigurationError: ``source`` is empty, or the chosen storage rejects it.
        MissingDependencyError: the protocol needs an extra that is not installed.
    """
    source = source.strip()
    if not source:
        raise ConfigurationError("the source is empty: give a git URL, a storage URL or a path")

    git_url = _git_url(source)
    if git_url is not None:
        # git treats "repo.git/" as "repo.git"; the default destination name needs the latter.
        git_url = git_url.rstrip("/") or git_url
        from runner_storage.git import GitRepository  # noqa: PLC0415 - load the backend only when used

        return GitRepository(url=git_url, pull_interval=pull_interval)

    scheme = urlparse(source).scheme
    if scheme in ("file", "local"):
        return LocalStorage(path=source.split("://", 1)[-1], pull_interval=pull_interval)
    if scheme and _fsspec_knows(scheme):
        from runner_storage.remote import RemoteStorage  # noqa: PLC0415 (fsspec is heavy)

        return RemoteStorage(url=source, pull_interval=pull_interval)
    return LocalStorage(path=source, pull_interval=pull_interval)


def _git_url(source: str) -> str | None:
    """The URL to clone if ``source`` names a git repository, else None."""
    lowered = source.lower()
    for scheme in _GIT_PLUS_SCHEMES:
        prefix = f"git+{scheme}://"
        if lowered.startswith(prefix):
            return source[len("git+") :]
    if "://" not in source and (match := _SCP_LIKE.match(source)):
        # urlparse gives scp-like addresses no scheme (or the host as one): decide here.
        return source if _ends_in_dot_git(match["path"]) else None
    parsed = urlparse(source)
    if parsed.scheme == "git" or _ends_in_dot_git(parsed.path):
        return source
    return None


def _ends_in_dot_git(path: str) -> bool:
    return path.rstrip("/").endswith(".git")


def _fsspec_knows(scheme: str) -> bool:
    """Whether fsspec has an implementation registered or known for ``scheme``."""
    import fsspec  # noqa: PLC0415 (only sources with a scheme pay for it)

    return scheme in fsspec.available_protocols()
