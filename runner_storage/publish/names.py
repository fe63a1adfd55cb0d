"""Destination names: a source's folder under the base path, checked before anything runs."""

from __future__ import annotations

from pathlib import PurePosixPath

from runner_storage.exceptions import ConfigurationError

__all__ = ["validate_name"]


def validate_name(name: str) -> str:
    """Check that a destination name stays inside the base path; return it normalised.

    Raises:
        ConfigurationError: empty, absolute, ``..``, hidden or control characters.
    """
    if not name or not name.strip():
        raise ConfigurationError("the destination name is empty: give the source a name")
    if "\0" in name or any(ord(c) < 32 for c in name) or "\\" in name:
        raise ConfigurationError(
            f"destination name {name!r} contains control characters or backslashes: use a"
            " plain relative name such as 'flows' or 'team/flows'"
        )
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", ".") for part in path.parts):
        raise ConfigurationError(
            f"destination name {name!r} would leave the base path: use a relative name"
            " without '.' or '..'"
        )
    if path.parts[0].startswith((".", "-")):
        raise ConfigurationError(
            f"destination name {name!r} starts with '.' or '-': those names are reserved;"
            " choose another name"
        )
    return str(path)
