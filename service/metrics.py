"""Prometheus metrics for the daemon, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runner_storage.base import SyncResult

__all__ = ["Metrics"]


class Metrics:
    """The daemon's metric families and the events that update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pulls = Counter(
            "runner_storage_pulls",
            "Pulls by source and result (changed, unchanged, error).",
            ["source", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "runner_storage_pull_duration_seconds",
            "Duration of pulls, lock wait included.",
            ["source"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.last_success = Gauge(
            "runner_storage_last_success_timestamp_seconds",
            "Unix time of the last successful pull (changed or not).",
            ["source"],
            registry=self.registry,
        )
        self.revision = Gauge(
            "runner_storage_published_revision_info",
            "The revision currently published (value is always 1).",
            ["source", "revision"],
            registry=self.registry,
        )
        self.failures = Gauge(
            "runner_storage_consecutive_failures",
            "Failed pulls since the last success.",
            ["source"],
            registry=self.registry,
        )
        self.fetched_bytes = Counter(
            "runner_storage_fetched_bytes",
            "Bytes transferred from sources.",
            ["source"],
            registry=self.registry,
        )
        self.fetched_objects = Counter(
            "runner_storage_fetched_objects",
            "Files or objects transferred from sources.",
            ["source"],
            registry=self.registry,
        )
        self.hook_failures = Counter(
            "runner_storage_hook_failures",
            "Hooks (check, exec, webhook) that failed after their retries.",
            ["source", "hook"],
            registry=self.registry,
        )
        self._revisions: dict[str, str] = {}

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
