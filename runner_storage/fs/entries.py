"""One file of a listing, and the checks that make an untrusted key a safe relative path.

Object keys, manifest paths and snapshot paths come from upstream and are untrusted:
:func:`safe_relative_path` turns one into a relative POSIX path that cannot leave the
directory it is joined to, and :func:`path_problem` says what is wrong with one that
would. Pure: no I/O and no fsspec, so every family can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner_storage.exceptions import UnsafeContentError

__all__ = ["Entry", "is_directory_marker", "path_problem", "safe_relative_path"]


@dataclass(frozen=True, order=True)
class Entry:
    """One file of a listing.

    Attributes:
        path: the relative POSIX path inside the version (from :func:`safe_relative_path`).
        size: the size in bytes, as listed.
        token: what identifies the content upstream (ETag, MD5, generation, mtime); an
            empty string when the source has none, in which case only the size is compared.
    """

    path: str
    size: int
    token: str


def is_directory_marker(key: str, size: int | None) -> bool:
    """Whether a listed key is a "folder" placeholder (``a/b/``, no content), to skip.

    Consoles and tools create them on S3 and GCS; they hold nothing to publish, and the
    directories they stand for appear anyway when a file below them does.
    """
    return key.endswith("/") and not size


def safe_relative_path(key: str, prefix: str) -> str:
    """Turn an object key listed under ``prefix`` into a safe relative POSIX path.

    Args:
        key: the full key or path as the listing returned it (``bucket/folder/a/b.py``).
        prefix: the listed path (``bucket/folder``); a trailing ``/`` is ignored.

    Returns:
        The part of ``key`` below ``prefix`` (``a/b.py``), guaranteed to stay inside any
        directory it is joined to.

    Raises:
        UnsafeContentError: the key is not below ``prefix``, or the rest is absolute, has
            empty, ``.`` or ``..`` components, backslashes, NUL or control characters.
    """
    base = prefix.rstrip("/")
    if not key.startswith(base + "/"):
        raise UnsafeContentError(
            f"listed key {key!r} is not below {prefix!r}; refusing to place it (nothing was"
            " published)"
        )
    relative = key[len(base) + 1 :]
    problem = path_problem(relative)
    if problem:
        raise UnsafeContentError(
            f"object key {key!r} {problem}, so it could be written outside the new version;"
            " rename it upstream (nothing was published)"
        )
    return relative


#: The longest name one path component may have on Linux file systems (NAME_MAX).
_NAME_MAX = 255
#: NUL, the other C0 control characters and DEL.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def path_problem(relative: str) -> str | None:
    """What makes ``relative`` unsafe as a path inside a version, or None if it is safe."""
    if not relative:
        return "names the listed prefix itself"
    if _CONTROL.search(relative):  # one scan in C: this runs for every listed key
        return "contains NUL or control characters"
    try:
        encoded = relative.encode("utf-8")
    except UnicodeEncodeError:  # a local name's undecodable bytes (surrogate escapes)
        return "is not valid UTF-8"
    if len(encoded) > _NAME_MAX and any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
        return f"has a component longer than {_NAME_MAX} bytes"
    if "\\" in relative:
        return "contains a backslash"
    if relative.startswith("/"):
        return "is absolute below the prefix"
    parts = relative.split("/")
    if "" in parts:
        return "has an empty path component"
    if ".." in parts:
        return "has a '..' component"
    if "." in parts:
        return "has a '.' component"
    return None
