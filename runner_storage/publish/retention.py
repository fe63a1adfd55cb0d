"""Retention: which versions of a source go, decided from its history alone (pure).

Keep the newest ``keep`` versions, and never delete one that was live less than a grace
period ago, so running work keeps its files. A version directory the history does not
know (a publish killed before it wrote ``state.json``) is kept for the grace period too,
counted from its modification time, in case a runner entered it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner_storage.publish.state import timestamp_seconds

__all__ = ["DEFAULT_GRACE_SECONDS", "DEFAULT_KEEP", "versions_to_delete"]

DEFAULT_KEEP = 3
DEFAULT_GRACE_SECONDS = 600.0


def versions_to_delete(
    history: Sequence[Mapping[str, Any]],
    present: Mapping[str, float],
    *,
    live: str | None,
    keep: int,
    grace_seconds: float,
    now: float,
) -> list[str]:
    """The version directories to delete, sorted.

    Args:
        history: ``state.json``'s history, newest first: ``version`` and ``retired_at``
            (an ISO 8601 time, or None while live) of each published version.
        present: the version directories on disk, with their modification times.
        live: the version ``BASE/NAME`` points to; never deleted.
        keep: how many of the newest versions to keep.
        grace_seconds: never delete a version retired (or, unknown, modified) more recently.
        now: the current time, in seconds since the epoch.
    """
    kept = {entry["version"] for entry in history[:keep]}
    for entry in history:
        retired = entry.get("retired_at")
        if retired is None or now - timestamp_seconds(retired) < grace_seconds:
            kept.add(entry["version"])
    known = {entry["version"] for entry in history}
    return sorted(
        name
        for name, modified in present.items()
        if name not in kept and name != live and (name in known or now - modified >= grace_seconds)
    )
