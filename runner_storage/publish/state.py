"""``state.json``: what a source has published and how its pulls have gone.

Written only by the publisher, under the source's lock, atomically (temp file + rename);
read by anyone (the daemon's status, the CLI) without the lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner_storage.exceptions import PublishError

__all__ = ["SourceState", "age_seconds", "read_state", "timestamp_seconds", "utcnow"]

STATE_VERSION = 1


@dataclass
class SourceState:
    """The contents of ``state.json``: what is published and how pulls have gone."""

    source: str
    revision: str | None = None
    digest: str | None = None
    version: str | None = None
    published_at: str | None = None
    last_attempt_at: str | None = None
    last_success_at: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document written to ``state.json``."""
        return {"state_version": STATE_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, data: Any) -> SourceState:
        """Parse a ``state.json`` document, ignoring unknown keys.

        Raises:
            TypeError: the document is not a state (not an object, or no source in it).
        """
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            raise TypeError("not a runner-storage state file")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def utcnow() -> str:
    """Now, as an ISO 8601 UTC timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def age_seconds(timestamp: str | None) -> float | None:
    """Seconds since an ISO 8601 timestamp from ``state.json``, or None."""
    if not timestamp:
        return None
    return (datetime.now(timezone.utc) - datetime.fromisoformat(timestamp)).total_seconds()


def timestamp_seconds(timestamp: str) -> float:
    """An ISO 8601 timestamp from ``state.json``, in seconds since the epoch."""
    return datetime.fromisoformat(timestamp).timestamp()


def read_state(path: Path) -> SourceState | None:
    """Read the ``state.json`` at ``path`` without taking the lock; None if there is none.

    Raises:
        PublishError: the file cannot be read or is not a state file.
    """
    try:
        return SourceState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise PublishError(f"cannot read {path}: {reason}; delete it to start over") from None
