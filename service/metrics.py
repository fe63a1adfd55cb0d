"""Prometheus metrics for the daemon, in a registry of its own (no process-global state)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from runner_storage.types import SyncResult

__all__ = ["Metrics"]

_Family = TypeVar("_Family", bound=MetricWrapperBase)

#: Pull durations, in seconds: from a no-op against a warm cache to the default timeout.
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The daemon's metric families and the events that update them.

    Every family is labelled by ``source``; the name, the help text and any further
    label are all that tells them apart, so each is one line below.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        family = self._family
        self.pulls = family(
            Counter,
            "pulls",
            "Pulls by source and result (changed, unchanged, error).",
            "result",
        )
        self.duration = family(
            Histogram,
            "pull_duration_seconds",
            "Duration of pulls, lock wait included.",
            buckets=_DURATION_BUCKETS,
        )
        self.last_success = family(
            Gauge,
            "last_success_timestamp_seconds",
            "Unix time of the last successful pull (changed or not).",
        )
        self.revision = family(
            Gauge,
            "published_revision_info",
            "The revision currently published (value is always 1).",
            "revision",
        )
        self.failures = family(
            Gauge, "consecutive_failures", "Failed pulls since the last success."
        )
        self.fetched_bytes = family(Counter, "fetched_bytes", "Bytes transferred from sources.")
        self.fetched_objects = family(
            Counter, "fetched_objects", "Files or objects transferred from sources."
        )
        self.hook_failures = family(
            Counter,
            "hook_failures",
            "Hooks (check, exec, webhook) that failed after their retries.",
            "hook",
        )
        self.webhook_deliveries = Counter(
            "runner_storage_webhook_deliveries",
            "Push webhook deliveries by provider and result (accepted, ping, or why refused).",
            ["provider", "result"],
            registry=self.registry,
        )
        self._revisions: dict[str, str] = {}

    def _family(
        self,
        kind: type[_Family],
        name: str,
        documentation: str,
        *labels: str,
        **options: Any,
    ) -> _Family:
        """A family named ``runner_storage_NAME``, labelled by source (then ``labels``)."""
        return kind(
            f"runner_storage_{name}",
            documentation,
            ["source", *labels],
            registry=self.registry,
            **options,
        )

    def add_source(self, source: str) -> None:
        """Create the series of a source so they exist before its first pull."""
        for result in ("changed", "unchanged", "error"):
            self.pulls.labels(source, result)
        self.failures.labels(source).set(0)
        self.fetched_bytes.labels(source)
        self.fetched_objects.labels(source)

    def pull_succeeded(self, source: str, result: SyncResult, now: float) -> None:
        """Record a successful pull."""
        self.pulls.labels(source, "changed" if result.changed else "unchanged").inc()
        self.duration.labels(source).observe(result.duration)
        self.last_success.labels(source).set(now)
        self.failures.labels(source).set(0)
        self.fetched_bytes.labels(source).inc(result.bytes_fetched)
        self.fetched_objects.labels(source).inc(result.files_fetched)
        self.set_revision(source, result.revision)

    def pull_failed(self, source: str, duration: float, consecutive_failures: int) -> None:
        """Record a failed pull."""
        self.pulls.labels(source, "error").inc()
        self.duration.labels(source).observe(duration)
        self.failures.labels(source).set(consecutive_failures)

    def set_revision(self, source: str, revision: str) -> None:
        """Point the revision info series of ``source`` at ``revision``."""
        previous = self._revisions.get(source)
        if previous == revision:
            return
        if previous is not None:
            self.revision.remove(source, previous)
        self.revision.labels(source, revision).set(1)
        self._revisions[source] = revision

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
