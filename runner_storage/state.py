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

__all__ = ["SourceState", "age_seconds", "read_state", "state_path", "utcnow"]

METADATA_DIR = ".runner-storage"
STATE_VERSION = 1


def state_path(base: Path, name: str) -> Path:
    """Where the state of source ``name`` under ``base`` lives."""
    return base / METADATA_DIR / name / "state.json"


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
    def from_json(cls, data: dict[str, Any]) -> SourceState:
        """Parse a ``state.json`` document, ignoring unknown keys."""
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


def read_state(base: Path, name: str) -> SourceState | None:
    """Read the state of source ``name`` under ``base`` without taking the lock."""
    path = state_path(base, name)
    try:
        return SourceState.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise PublishError(f"cannot read {path}: {exc}; delete it to start over") from None
