"""Turn source settings into library storages, checking options against the source kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from runner_storage.credentials import strip_url_credentials
from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import create_storage_from_source
from runner_storage.local import LocalStorage
from runner_storage.managed import ManagedStorage
from service.config import DaemonSettings, SourceSettings

__all__ = ["Kind", "build_storage", "detect_kind"]

Kind = Literal["git", "remote", "local"]

_GIT_ONLY = (
    "branch",
    "commit_sha",
    "directories",
    "credentials",
    "ssh_key_file",
    "known_hosts_file",
)


def detect_kind(source: str) -> Kind:
    """The kind of storage ``create_storage_from_source`` picks for ``source``."""
    storage = create_storage_from_source(source)
    if isinstance(storage, LocalStorage):
        return "local"
    from runner_storage.git import GitRepository  # noqa: PLC0415 - keep start-up light

    return "git" if isinstance(storage, GitRepository) else "remote"


def build_storage(source: SourceSettings, daemon: DaemonSettings) -> ManagedStorage | LocalStorage:
    """Build the storage for one source, based at ``daemon.root``.

    Raises:
        ConfigurationError: the options do not fit the source (one line, naming the option).
    """
    kind: Kind = detect_kind(source.source) if source.kind == "auto" else source.kind
    _check_options(source, kind)
    retention: dict[str, Any] = {
        "keep_versions": daemon.keep_versions,
        "grace_period": daemon.grace_period,
    }
    storage: ManagedStorage | LocalStorage
    if kind == "local":
        if source.hooks.check or source.hooks.exec or source.hooks.webhook:
            raise ConfigurationError("hooks need a source that publishes; local sources do not")
        if source.name is not None:
            raise ConfigurationError(
                "name does not apply to local sources: they are used where they are"
            )
        return LocalStorage(_local_path(source.source), pull_interval=_interval(source))
    if kind == "git":
        from runner_storage.git import GitRepository  # noqa: PLC0415 - lazy backend import

        credentials = None
        if source.credentials is not None:
            credentials = {
                "username": source.credentials.username,
                "access_token": source.credentials.token.to_secret(),
            }
            if credentials["username"] is None:
                del credentials["username"]
        url = source.source.removeprefix("git+")
        storage = GitRepository(
            url,
            credentials=credentials,
            name=source.name,
            branch=source.branch,
            commit_sha=source.commit_sha,
            include_submodules=source.include_submodules,
            pull_interval=_interval(source),
            directories=source.directories,
            depth=source.depth,
            ssh_key_file=source.ssh_key_file,
            known_hosts_file=source.known_hosts_file,
            **retention,
        )
    else:
        from runner_storage.remote import RemoteStorage  # noqa: PLC0415 - lazy backend import

        if urlsplit(source.source).password is not None:
            raise ConfigurationError(
                f"source URL {strip_url_credentials(source.source)!r} has credentials in it:"
                " remove them from the URL and give them as settings, e.g. secret = { env ="
                ' "VAR" }, so they never reach files or logs'
            )
        storage = RemoteStorage(
            source.source,
            pull_interval=_interval(source),
            name=source.name,
            **retention,
            **source.fsspec_settings(),
        )
    storage.set_base_path(Path(daemon.root))
    return storage


def _check_options(source: SourceSettings, kind: Kind) -> None:
    """Refuse options that do not apply to this kind of source."""
    shown = strip_url_credentials(source.source)  # never echo credentials given in a URL
    if kind != "git":
        for option in _GIT_ONLY:
            if getattr(source, option):
                raise ConfigurationError(
                    f"{option} only applies to git sources, and {shown!r} is {kind}"
                )
        if source.include_submodules or source.depth != 1:
            raise ConfigurationError(
                f"include_submodules and depth only apply to git sources, and {shown!r} is {kind}"
            )
    if kind != "remote" and source.settings:
        raise ConfigurationError(f"settings only apply to object-store sources, not {kind}")


def _local_path(source: str) -> str:
    """The folder of a local source; a URL of another scheme is a mistake, not a path."""
    scheme, separator, rest = source.partition("://")
    if separator and scheme.lower() not in ("file", "local"):
        raise ConfigurationError(
            f"unsupported scheme {scheme!r} in source {source!r}: use a git URL (https, ssh,"
            " git, file), an object-store URL (s3, gs, az, http...) or a path"
        )
    return rest if separator else source


def _interval(source: SourceSettings) -> int | None:
    return None if source.pull_interval is None else max(1, round(source.pull_interval))
