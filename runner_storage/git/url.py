"""Git remote URLs, ref names, commit SHAs and sparse directories: parsing and checks.

Pure functions, no I/O and no git: everything here runs at construction time, so a bad
setting fails before the first pull, with a
:class:`~runner_storage.exceptions.ConfigurationError`. Light enough for the source
classifier (:mod:`runner_storage.factory`) to use without loading the git engine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse, urlsplit

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets import redact

__all__ = [
    "RemoteURL",
    "check_branch_name",
    "check_commit_sha",
    "check_directories",
    "default_name",
    "parse_remote_url",
    "split_scp",
]

#: Kinds of remote that reach the network; the others read the local disk.
NETWORK_KINDS = frozenset({"https", "http", "ssh", "git", "scp"})
_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
_HELPER_SYNTAX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]/]+\]|[^:/\[\]]+):(?P<path>.*)$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")
_REF_FORBIDDEN = frozenset(" ~^:?*[\\")


@dataclass(frozen=True)
class RemoteURL:
    """A validated git remote.

    Attributes:
        url: the URL as given (it never holds a password).
        kind: ``https``, ``http``, ``ssh``, ``git``, ``scp`` (``[user@]host:path``),
            ``file`` or ``local`` (a path).
        fetch_url: what git is given: the URL, or the absolute path of a local one.
        host: the lower-cased host name of a network remote, else None.
        port: the explicit port, if any.
    """

    url: str
    kind: str
    fetch_url: str
    host: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        """Whether the remote is on this machine (``file://`` or a path)."""
        return self.kind not in NETWORK_KINDS

    @property
    def http_origin(self) -> str | None:
        """``scheme://host[:port]/`` of an http(s) remote, the scope of its credentials."""
        if self.kind not in ("http", "https") or self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.kind}://{host}{port}/"


def split_scp(address: str) -> tuple[str | None, str, str] | None:
    """``(user, lower-cased host, path)`` of an scp-style ``[user@]host:path``, else None.

    git's rule: an address without ``://`` whose first ``:`` comes before any ``/`` names
    a host (``[::1]:repo`` too); a path such as ``./a:b`` or ``dir/a:b`` stays a path.
    """
    if "://" in address:
        return None
    match = _SCP_LIKE.match(address)
    if match is None:
        return None
    return match["user"], match["host"].strip("[]").lower(), match["path"]


def parse_remote_url(url: str, *, base_dir: Path | None = None) -> RemoteURL:
    """Validate a repository URL and classify it.

    Args:
        url: ``https``/``http``/``ssh``/``git``/``file`` URL, scp-style ``user@host:path``,
            or a local path.
        base_dir: what a relative local path is relative to (the current directory).

    Raises:
        ConfigurationError: empty, unparseable, unsupported scheme, option-like, or with
            credentials in it.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the repository URL is empty: give an https, ssh or git URL")
    shown = redact(url)
    if url != url.strip() or any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigurationError(
            f"repository URL {shown!r} contains whitespace or control characters"
        )
    if url.startswith("-"):
        raise ConfigurationError(
            f"repository URL {shown!r} starts with '-' and looks like an option"
        )
    if _HELPER_SYNTAX.match(url):
        raise ConfigurationError(
            f"repository URL {shown!r} uses git's transport::address syntax, which is not"
            " supported: use an https, http, ssh, git or file URL"
        )
    if "://" in url:
        return _parse_scheme_url(url, shown)
    scp = split_scp(url)
    if scp is not None:
        user, host, path = scp
        if not path or host.startswith("-") or (user or "").startswith("-"):
            raise ConfigurationError(
                f"repository URL {shown!r} is not a valid user@host:path address"
            )
        return RemoteURL(url=url, kind="scp", fetch_url=url, host=host)
    absolute = os.path.normpath(os.path.join(base_dir or os.getcwd(), url))
    return RemoteURL(url=url, kind="local", fetch_url=absolute)


def _parse_scheme_url(url: str, shown: str) -> RemoteURL:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unsupported scheme {scheme!r} in repository URL {shown!r}: use https, http,"
            " ssh, git or file"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"cannot parse repository URL {shown!r}") from None
    if parts.password is not None or (scheme in ("http", "https") and parts.username):
        raise ConfigurationError(
            f"repository URL {shown!r} has credentials in it: remove them from the URL and"
            " pass credentials={'access_token': Secret.from_env('TOKEN')} instead, so they"
            " never reach files or logs"
        )
    if scheme != "file" and any(character.isspace() for character in url):
        raise ConfigurationError(
            f"repository URL {shown!r} contains whitespace: percent-encode it (a space is"
            " %20) or remove it"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError(
                f"repository URL {shown!r} is not a valid file:///absolute/path URL"
            )
        return RemoteURL(url=url, kind="file", fetch_url=url)
    host = parts.hostname
    if not host or host.startswith("-") or (parts.username or "").startswith("-"):
        raise ConfigurationError(f"repository URL {shown!r} has no valid host")
    if not parts.path.strip("/"):
        raise ConfigurationError(f"repository URL {shown!r} names no repository path")
    return RemoteURL(url=url, kind=scheme, fetch_url=url, host=host, port=port)


def check_branch_name(branch: str) -> str:
    """Apply ``git check-ref-format --branch``'s rules to a branch or tag name.

    Raises:
        ConfigurationError: the name could never name a branch or tag.
    """
    if not isinstance(branch, str) or not branch:
        raise ConfigurationError("branch is empty: give a branch or tag name, or None")
    if branch.startswith("-"):
        raise ConfigurationError(
            f"branch {branch!r} starts with '-' and would be read as an option"
        )
    if branch in ("HEAD", "@"):
        raise ConfigurationError(
            f"branch {branch!r} is not a branch name: use branch=None for the default branch"
        )
    bad = sorted({c for c in branch if ord(c) < 32 or ord(c) == 127 or c in _REF_FORBIDDEN})
    problem = None
    if bad:
        problem = f"contains {', '.join(repr(c) for c in bad)}"
    elif ".." in branch or "@{" in branch:
        problem = "contains '..' or '@{'"
    elif branch.startswith("/") or branch.endswith(("/", ".")) or "//" in branch:
        problem = "starts or ends with '/', ends with '.', or contains '//'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in branch.split("/")):
        problem = "has a part starting with '.' or ending with '.lock'"
    if problem:
        raise ConfigurationError(f"branch {branch!r} is not a valid git ref name: it {problem}")
    return branch


def check_commit_sha(commit_sha: str) -> str:
    """Return the lower-cased SHA after checking it is 4 to 64 hex digits.

    Raises:
        ConfigurationError: not a hex commit SHA.
    """
    if not isinstance(commit_sha, str) or not _SHA.match(commit_sha):
        raise ConfigurationError(
            f"invalid commit SHA {commit_sha!r}: expected 4 to 64 hex digits; use branch=..."
            " for a branch or tag name"
        )
    return commit_sha.lower()


def check_directories(directories: Sequence[str] | None) -> tuple[str, ...]:
    """Normalise the sparse-checkout directories; an empty list means the whole tree.

    Raises:
        ConfigurationError: a string instead of a list, or a path that is empty, absolute,
            contains ``..`` or control characters, or starts with ``-``.
    """
    if directories is None:
        return ()
    if isinstance(directories, str):
        raise ConfigurationError(
            f"directories must be a list of paths, not the string {directories!r}"
        )
    normalised: list[str] = []
    for directory in directories:
        if not isinstance(directory, str) or not directory.strip():
            raise ConfigurationError("directories contains an empty path")
        path = PurePosixPath(directory)
        problem = None
        if any(ord(c) < 32 or ord(c) == 127 for c in directory) or "\\" in directory:
            problem = "contains control characters or backslashes"
        elif directory.startswith("-"):
            problem = "starts with '-'"
        elif path.is_absolute():
            problem = "is absolute"
        elif ".." in path.parts:
            problem = "contains '..'"
        elif str(path) == ".":
            problem = "is the whole repository (use directories=None)"
        if problem:
            raise ConfigurationError(
                f"directory {directory!r} {problem}: give paths relative to the repository root"
            )
        normalised.append(str(path))
    return tuple(dict.fromkeys(normalised))


def default_name(url: str, branch: str | None) -> str:
    """Prefect's destination name: ``<repo>[-<branch with '/' as '-'>]``."""
    repo_name = urlparse(url).path.split("/")[-1].replace(".git", "")
    safe_branch = branch.replace("/", "-") if branch else None
    return f"{repo_name}-{safe_branch}" if safe_branch else repo_name
