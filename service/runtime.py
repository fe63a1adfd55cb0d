"""A source as the daemon runs it: its settings, its storage, and how its pulls have gone.

For a source that publishes, what is published and how its pulls went is what its
``state.json`` says. The library records every pull there, a timed-out one included;
``runner-storage status`` reads it, and so does the daemon after each attempt, so
``/sources``, ``/readyz``, the metrics and ``status`` tell the same story. Only a failure
the library could not record (before it held the source's lock, or with an unreadable
``state.json``) is counted in memory, until the next attempt it records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from runner_storage.exceptions import PublishError
from runner_storage.local import LocalStorage
from runner_storage.publish import SourceState
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.state import timestamp_seconds
from runner_storage.types import SyncResult
from service.sources import SourceBase

__all__ = ["AttemptStamp", "SourceRuntime"]

#: What changes in ``state.json`` with every attempt the library records.
AttemptStamp = tuple[str | None, int] | None


@dataclass
class SourceRuntime:
    """A source as the daemon runs it.

    Attributes:
        revision, last_success, last_error, consecutive_failures: what is published and
            how pulls have gone, as ``state.json`` says (local sources: this process).
        failed_attempts: this process's failed pulls in a row, for the backoff,
            ``max_failures`` and ``--once`` (``consecutive_failures`` counts earlier runs).
    """

    settings: SourceBase
    storage: ManagedStorage | LocalStorage
    wake: anyio.Event = field(default_factory=anyio.Event)
    pulling: bool = False
    push_pending: bool = False
    attempted: bool = False
    next_pull_at: float | None = None
    failed_attempts: int = 0
    logged_error: str | None = None
    revision: str | None = None
    last_success: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0

    @property
    def name(self) -> str:
        """The source's name (its destination under the root, or its local path)."""
        storage = self.storage
        return storage.name if isinstance(storage, ManagedStorage) else str(storage.destination)

    def load_state(self) -> bool:
        """Take the published revision and the pulls' record from ``state.json``.

        Returns:
            False when there is none to read: a local source, nothing attempted yet, or an
            unreadable file (which the next pull reports).
        """
        state = self._read_state()
        if state is None:
            return False
        self._take(state)
        return True

    def attempt_stamp(self) -> AttemptStamp:
        """What tells, after a pull, whether the library recorded it."""
        state = self._read_state()
        return None if state is None else (state.last_attempt_at, state.consecutive_failures)

    def record_success(self, result: SyncResult) -> None:
        """After a successful pull: ``state.json`` has it (local sources: keep it here)."""
        self.failed_attempts = 0
        self.logged_error = None
        if self.load_state():
            return
        self.revision = result.revision
        self.last_success = time.time()
        self.last_error = None
        self.consecutive_failures = 0

    def record_failure(self, message: str, *, before: AttemptStamp) -> None:
        """After a failed pull: take what the library recorded, or count it here.

        Args:
            message: the failure, redacted, for when the library could not record it.
            before: :meth:`attempt_stamp` from before the pull.
        """
        self.failed_attempts += 1
        state = self._read_state()
        if state is not None and (state.last_attempt_at, state.consecutive_failures) != before:
            self._take(state)
            return
        self.last_error = message
        self.consecutive_failures += 1

    def readiness(self, now: float) -> tuple[bool, str]:
        """Whether this source is ready, and why."""
        if isinstance(self.storage, LocalStorage):
            exists = self.storage.destination.is_dir()
            return exists, "ok" if exists else f"{self.storage.destination} does not exist"
        if self.last_success is None or self.revision is None:
            return False, self.last_error or "not published yet"
        limit = self.settings.staleness_limit
        age = now - self.last_success
        if limit is not None and age > limit:
            return False, f"stale: last successful pull {age:.0f}s ago (limit {limit:g}s)"
        return True, "ok"

    def _read_state(self) -> SourceState | None:
        if not isinstance(self.storage, ManagedStorage):
            return None
        try:
            return self.storage.publisher.state()
        except PublishError:
            return None

    def _take(self, state: SourceState) -> None:
        assert isinstance(self.storage, ManagedStorage)  # noqa: S101 - only they have a state
        published = self.storage.publisher.current_version() is not None
        self.revision = state.revision if published else None
        self.last_success = (
            timestamp_seconds(state.last_success_at) if state.last_success_at else None
        )
        self.last_error = state.last_error
        self.consecutive_failures = state.consecutive_failures
