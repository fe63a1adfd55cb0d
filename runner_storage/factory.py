"""Which storage a source string names: the one classifier, and create_storage_from_source.

:func:`classify_source` is the only place that decides; the daemon's settings use it too,
so a source means the same to the library and to ``runner-storage``. The git and
object-store backends are imported only when a source needs them, so ``import
runner_storage`` stays cheap: it loads neither the git engine nor fsspec.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlparse

from runner_storage.exceptions import ConfigurationError
from runner_storage.git.url import split_scp
from runner_storage.local import LocalStorage
from runner_storage.secrets import strip_url_credentials
from runner_storage.types import RunnerStorage

__all__ = ["SourceKind", "classify_source", "create_storage_from_source"]

#: What kind of storage a source is.
SourceKind = Literal["git", "remote", "local", "snapshot"]

#: ``git+<scheme>://`` forces git for URLs that do not end in ``.git`` (pip's spelling).
_GIT_PLUS_SCHEMES = ("http", "https", "ssh", "file")
#: ``snapshot+<scheme>://`` names a snapshot root (the snapshot format).
_SNAPSHOT_PREFIX = "snapshot+"
#: Schemes that name a folder on this machine (Prefect's rule).
_LOCAL_SCHEMES = ("file", "local")


def classify_source(source: str) -> tuple[SourceKind, str]:
    """The kind of storage ``source`` names and what that storage is given, by Prefect's rules.

    * ``git``, when the scheme is ``git``, the path ends in ``.git`` (URLs, local paths and
      scp-like ``git@host:org/repo.git``; a trailing ``/`` is allowed and dropped), or the
      URL starts with ``git+https://``, ``git+http://``, ``git+ssh://`` or ``git+file://``
      in any case (the ``git+`` is dropped);
    * ``snapshot``, the root URL, for ``snapshot+<scheme>://`` (``snapshot+s3://bucket/code``;
      the ``snapshot+`` is dropped), the snapshot format's root;
    * ``local``, the path, for ``file://`` and ``local://``;
    * ``remote``, the URL, for any other scheme fsspec knows (``s3://``, ``gs://``,
      ``az://``, ``memory://``, ``https://``...);
    * ``local``, the source itself, for anything without ``://`` (plain paths).

    Raises:
        ConfigurationError: ``source`` is empty, or its ``scheme://`` is unknown both to
            git and to fsspec (a typo such as ``s4://``, not a folder name).
    """
    source = source.strip()
    if not source:
        raise ConfigurationError("the source is empty: give a git URL, a storage URL or a path")
    git_url = _git_url(source)
    if git_url is not None:
        # git treats "repo.git/" as "repo.git"; the default destination name needs the latter.
        return "git", git_url.rstrip("/") or git_url
    scheme, separator, rest = source.partition("://")
    if not separator:
        return "local", source
    if scheme.lower() in _LOCAL_SCHEMES:
        return "local", rest
    from runner_storage.fs.protocols import is_known  # noqa: PLC0415 - fsspec is heavy

    inner = scheme.lower().removeprefix(_SNAPSHOT_PREFIX)
    if scheme.lower().startswith(_SNAPSHOT_PREFIX) and (is_known(inner) or inner in _LOCAL_SCHEMES):
        return "snapshot", source[len(_SNAPSHOT_PREFIX) :]
    if is_known(scheme.lower()):
        return "remote", source
    raise ConfigurationError(
        f"unknown scheme {scheme!r} in source {strip_url_credentials(source)!r}: use a git"
        " URL (https, ssh, git, file), an object-store URL (s3, gs, az, http...), a snapshot"
        " root (snapshot+s3://...), or a path"
    )


def create_storage_from_source(source: str, pull_interval: float | None = 60) -> RunnerStorage:
    """Create the storage for ``source``; :func:`classify_source` says which.

    Args:
        source: the URL or path to pull from.
        pull_interval: seconds between pulls; None pulls once.

    Returns:
        A :class:`~runner_storage.GitRepository`, :class:`~runner_storage.RemoteStorage`,
        :class:`~runner_storage.SnapshotStorage` (following ``latest``) or
        :class:`LocalStorage`, which all satisfy :class:`RunnerStorage`.

    Raises:
        ConfigurationError: ``source`` is empty or its scheme unknown, or the chosen
            storage rejects it.
        MissingDependencyError: the protocol needs an extra that is not installed.
    """
    kind, target = classify_source(source)
    if kind == "git":
        from runner_storage.git import GitRepository  # noqa: PLC0415 - the engine, when used

        return GitRepository(url=target, pull_interval=pull_interval)
    if kind == "remote":
        from runner_storage.remote import RemoteStorage  # noqa: PLC0415 (fsspec is heavy)

        return RemoteStorage(url=target, pull_interval=pull_interval)
    if kind == "snapshot":
        from runner_storage.snapshots.storage import SnapshotStorage  # noqa: PLC0415 (fsspec)

        return SnapshotStorage(target, pull_interval=pull_interval)
    return LocalStorage(path=target, pull_interval=pull_interval)


def _git_url(source: str) -> str | None:
    """The URL to clone if ``source`` names a git repository, else None."""
    lowered = source.lower()
    for scheme in _GIT_PLUS_SCHEMES:
        if lowered.startswith(f"git+{scheme}://"):
            return source[len("git+") :]
    scp = split_scp(source)
    if scp is not None:
        # urlparse gives scp-like addresses no scheme (or the host as one): decide here.
        return source if _ends_in_dot_git(scp[2]) else None
    parsed = urlparse(source)
    if parsed.scheme.lower() == "git" or _ends_in_dot_git(parsed.path):
        return source
    return None


def _ends_in_dot_git(path: str) -> bool:
    return path.rstrip("/").endswith(".git")
