"""Paths given under a base (a folder or a URL), resolved so that none leads out of it.

A filesystem block takes paths relative to its base path, or full paths inside it. Here
each is checked: ``..`` anywhere, an absolute path outside the base, another scheme or
location, and a sibling that merely shares the base's prefix (``/data/flows-evil`` for
``/data/flows``) are refused as :class:`~runner_storage.exceptions.ConfigurationError`
(the caller's input); a path that leads out only through a symlink stored under the base
is :class:`~runner_storage.exceptions.UnsafeContentError` (what is stored is to blame).
Relative parts are checked by :func:`~runner_storage.fs.entries.path_problem`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from runner_storage.exceptions import ConfigurationError, UnsafeContentError
from runner_storage.fs.entries import path_problem
from runner_storage.secrets import public_url, strip_url_credentials

__all__ = ["BaseURL", "destination_name", "outside_error", "resolve_in_folder"]


def outside_error(path: str, base: str, why: str) -> ConfigurationError:
    """The one line for a path that is not under its base, saying why and what to give."""
    return ConfigurationError(
        f"path {path!r} is not under the base path {base} ({why}): give a path relative to"
        " the base path, without '..'"
    )


@dataclass(frozen=True)
class BaseURL:
    """A base URL, checked as Prefect checks a ``RemoteFileSystem``'s, and paths under it.

    Attributes:
        root: ``scheme://location/path`` without a trailing ``/``.
        scheme: the scheme, lowercased.
        netloc: the location (bucket, container, host; with any userinfo).
        path: the path after the location, without a trailing ``/`` (may be empty).
    """

    root: str
    scheme: str
    netloc: str
    path: str

    @classmethod
    def parse(cls, basepath: object) -> BaseURL:
        """Check ``basepath`` and split it.

        Raises:
            ConfigurationError: it is empty, has no scheme or no location after it, is a
                local URL (``file://``), or has a query or fragment.
        """
        if not isinstance(basepath, str) or not basepath.strip():
            raise ConfigurationError("the basepath is empty: give a URL such as s3://bucket/folder")
        shown = strip_url_credentials(basepath)
        try:
            parts = urlsplit(basepath)
        except ValueError as exc:
            raise ConfigurationError(f"cannot parse the basepath {shown!r}: {exc}") from None
        if not parts.scheme or "://" not in basepath:
            raise ConfigurationError(
                f"the basepath {shown!r} has no scheme: give a URL such as s3://bucket/folder,"
                " or use LocalFileSystem for a local folder"
            )
        if parts.scheme.lower() in ("file", "local"):
            raise ConfigurationError(
                f"the basepath {shown!r} is local: use LocalFileSystem for local files"
            )
        if not parts.netloc:
            raise ConfigurationError(
                f"the basepath {shown!r} names no bucket, container or host after the scheme"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(f"the basepath {shown!r} has a query or fragment: remove it")
        path = parts.path.rstrip("/")
        return cls(
            f"{parts.scheme}://{parts.netloc}{path}", parts.scheme.lower(), parts.netloc, path
        )

    def resolve(self, path: str | None, *, shown: Callable[[str], str]) -> str:
        """The URL of ``path``: relative to the base, or a full URL inside it.

        Args:
            path: the path; None, ``""`` or ``"."`` is the base itself.
            shown: how a URL may appear in a message (credentials and secrets removed).

        Raises:
            ConfigurationError: the path is absolute without a scheme, names another
                scheme or location, is not below the base, or has an unsafe part (``..``,
                also percent-encoded).
        """
        if path is None:
            return self.root
        text = str(path)
        if "://" in text:
            parts = urlsplit(text)
            why = None
            if parts.scheme.lower() != self.scheme:
                why = f"it uses {parts.scheme}://"
            elif parts.netloc != self.netloc:
                why = "it names another location"
            elif parts.query or parts.fragment:
                why = "it has a query or fragment"
            inner = parts.path.rstrip("/")
            if why is None and inner != self.path and not inner.startswith(self.path + "/"):
                why = "its path is not below it"
            if why is not None:
                raise outside_error(shown(text), shown(self.root), why)
            text = inner[len(self.path) + 1 :]
        elif text.startswith("/"):
            raise outside_error(shown(text), shown(self.root), "it is absolute; give it relative")
        relative = text.rstrip("/")
        if relative in ("", "."):
            return self.root
        problem = path_problem(relative) or path_problem(unquote(relative))
        if problem:
            raise outside_error(shown(str(path)), shown(self.root), f"it {problem}")
        return f"{self.root}/{relative}"


def resolve_in_folder(base: Path, path: str | os.PathLike[str] | None) -> Path:
    """The resolved local path of ``path``: relative to ``base``, or absolute inside it.

    ``~`` is expanded, as Prefect's ``LocalFileSystem`` does.

    Args:
        base: the resolved base folder.
        path: the path; None, ``""`` or ``"."`` is the base itself.

    Raises:
        ConfigurationError: the path is a URL, has a ``..`` or another unsafe part, or is
            absolute outside ``base`` (``/data/flows-evil`` is outside ``/data/flows``).
        UnsafeContentError: a relative path leads out through a symlink under ``base``.
    """
    if path is None:
        return base
    text = os.fspath(path)
    if "://" in text:
        raise ConfigurationError(
            f"{strip_url_credentials(text)!r} is a URL: LocalFileSystem takes paths under its"
            f" base path {base}"
        )
    candidate = Path(text).expanduser()
    if ".." in candidate.parts:
        raise outside_error(text, os.fspath(base), "it has a '..' component")
    if candidate.is_absolute():
        resolved = candidate.resolve()
        if not _within(resolved, base):
            raise outside_error(text, os.fspath(base), "it is an absolute path outside it")
        return resolved
    relative = text.rstrip("/")
    if relative in ("", "."):
        return base
    problem = path_problem(relative)
    if problem:
        raise outside_error(text, os.fspath(base), f"it {problem}")
    resolved = (base / relative).resolve()
    if not _within(resolved, base):
        raise UnsafeContentError(
            f"path {text!r} leads outside the base path {base} through a symlink under it;"
            " remove the symlink or give another path"
        )
    return resolved


def _within(path: Path, base: Path) -> bool:
    """Whether ``path`` is ``base`` or below it: by components, never by string prefix."""
    return path == base or base in path.parents


def destination_name(url: str) -> str:
    """Prefect's destination name for a storage URL: ``<netloc>/<path>``, no credentials.

    ``s3://bucket/flows`` gives ``bucket/flows``, ``memory://folder`` gives ``folder``,
    ``file:///srv/flows`` gives ``srv/flows``.

    Raises:
        ConfigurationError: the URL names no bucket or folder.
    """
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    name = str(PurePosixPath(host) / parts.path.lstrip("/")).strip("/")
    if not name or name == ".":
        raise ConfigurationError(
            f"{public_url(url)} names no bucket or folder to publish under: add"
            " one, like memory://folder or s3://bucket/path"
        )
    return name
