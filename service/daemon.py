"""The daemon: one task group, one loop per source, health, signals and systemd.

Each source loops: pull, then sleep ``pull_interval`` with jitter. Failures back off
exponentially with jitter up to a cap; they never stop other sources or the daemon, unless
``max_failures`` asks for an exit. ``--once`` pulls every source once and exits.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from runner_storage.base import Revision, SyncResult
from runner_storage.exceptions import RunnerStorageError, TransientSourceError
from runner_storage.local import LocalStorage
from runner_storage.managed import ManagedStorage
from runner_storage.state import age_seconds
from service.config import DaemonSettings, SourceSettings
from service.hooks import HookError, PublishEvent, post_webhook, run_check, run_exec
from service.logging import get_logger
from service.metrics import Metrics
from service.notify import Notifier

__all__ = ["Daemon", "SourceRuntime"]

HEARTBEAT_SECONDS = 1.0
LIVENESS_LIMIT_SECONDS = 15.0


@dataclass
class SourceRuntime:
    """A source as the daemon runs it: its storage and how its pulls have gone."""

    settings: SourceSettings
    storage: ManagedStorage | LocalStorage
    wake: anyio.Event = field(default_factory=anyio.Event)
    pulling: bool = False
    attempted: bool = False
    revision: str | None = None
    last_success: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    next_pull_at: float | None = None

    @property
    def name(self) -> str:
        """The source's name (its destination under the root, or its local path)."""
        storage = self.storage
        return storage.name if isinstance(storage, ManagedStorage) else str(storage.destination)

    def load_published(self) -> None:
        """Start from what an earlier run published, so a restart keeps serving ready."""
        if not isinstance(self.storage, ManagedStorage):
            return
        state = self.storage.publisher.state()
        if state is None or self.storage.publisher.current_version() is None:
            return
        self.revision = state.revision
        success_age = age_seconds(state.last_success_at)
        if success_age is not None:
            self.last_success = time.time() - success_age

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


class Daemon:
    """Runs every source's loop, the HTTP endpoints, signal handling and systemd notify."""

    def __init__(
        self,
        settings: DaemonSettings,
        runtimes: list[SourceRuntime],
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.runtimes = {runtime.name: runtime for runtime in runtimes}
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier()
        self.log = get_logger("runner_storage.daemon")
        self.last_tick = time.monotonic()
        self.exit_code = 0
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._task_group: TaskGroup | None = None
        self._ready_sent = False
        for runtime in runtimes:
            self.metrics.add_source(runtime.name)
            runtime.load_published()
            if runtime.revision:
                self.metrics.set_revision(runtime.name, runtime.revision)
                if runtime.last_success is not None:
                    self.metrics.last_success.labels(runtime.name).set(runtime.last_success)

    async def run(
        self,
        *,
        once: bool = False,
        serve_http: Callable[..., Coroutine[Any, Any, Any]] | None = None,
    ) -> int:
        """Run until a signal (or, with ``once``, until every source was pulled once).

        Returns:
            The process exit code: 0, or 1 when ``once`` saw a failure or a source
            reached ``max_failures``.
        """
        async with anyio.create_task_group() as outer:
            self._task_group = outer
            outer.start_soon(self._handle_signals, outer.cancel_scope)
            outer.start_soon(self._heartbeat)
            if serve_http is not None and self.settings.http_port is not None:
                await outer.start(serve_http, self)
            async with anyio.create_task_group() as loops:
                for runtime in self.runtimes.values():
                    loops.start_soon(self._source_loop, runtime, once)
            if once:
                failed = [r.name for r in self.runtimes.values() if r.consecutive_failures]
                self.exit_code = 1 if failed else 0
                outer.cancel_scope.cancel()
        self.notifier.stopping()
        self.notifier.close()
        self.log.info("daemon_stopped", exit_code=self.exit_code)
        return self.exit_code

    def request_sync(self, name: str | None = None) -> bool:
        """Wake one source (or all) to pull now; False if there is no such source."""
        targets = list(self.runtimes.values()) if name is None else [self.runtimes.get(name)]
        if None in targets:
            return False
        for runtime in targets:
            assert runtime is not None  # noqa: S101 - filtered above
            runtime.wake.set()
        return True

    def readiness(self) -> tuple[bool, dict[str, tuple[bool, str]]]:
        """Whether every source is ready, with each source's check."""
        now = time.time()
        checks = {name: runtime.readiness(now) for name, runtime in self.runtimes.items()}
        return all(ok for ok, _ in checks.values()), checks

    def live(self) -> bool:
        """Whether the event loop is making progress."""
        return time.monotonic() - self.last_tick < LIVENESS_LIMIT_SECONDS

    async def _source_loop(self, runtime: SourceRuntime, once: bool) -> None:
        while True:
            runtime.wake = anyio.Event()
            await self._pull(runtime)
            runtime.attempted = True
            self._after_attempt()
            if once or (
                runtime.settings.pull_interval is None and not runtime.consecutive_failures
            ):
                runtime.next_pull_at = None
                if not once:
                    await runtime.wake.wait()
                    continue
                return
            limit = runtime.settings.max_failures
            if limit is not None and runtime.consecutive_failures >= limit:
                self.log.error(
                    "source_gave_up", source=runtime.name, failures=runtime.consecutive_failures
                )
                self.exit_code = 1
                if self._task_group is not None:
                    self._task_group.cancel_scope.cancel()
                return
            delay = self._next_delay(runtime)
            runtime.next_pull_at = time.time() + delay
            with anyio.move_on_after(delay):
                await runtime.wake.wait()

    def _next_delay(self, runtime: SourceRuntime) -> float:
        if runtime.consecutive_failures:
            exponent = min(runtime.consecutive_failures - 1, 30)
            ceiling = min(self.settings.backoff_max, self.settings.backoff_initial * 2.0**exponent)
            # "Equal jitter": never shorter than half the step, so a broken source is not hammered.
            return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic
        interval = runtime.settings.pull_interval or 0.0
        return interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not cryptographic

    async def _pull(self, runtime: SourceRuntime) -> None:
        started = time.monotonic()
        runtime.pulling = True
        old_revision = runtime.revision
        try:
            result = await self._pull_with_timeout(runtime)
        except Exception as exc:  # noqa: BLE001 - one broken source must never stop the daemon
            self._record_failure(runtime, exc, time.monotonic() - started)
            return
        finally:
            runtime.pulling = False
        self._record_success(runtime, result, old_revision)

    async def _pull_with_timeout(self, runtime: SourceRuntime) -> SyncResult:
        timeout = runtime.settings.timeout
        try:
            with anyio.fail_after(timeout):
                async with self._limiter:
                    storage = runtime.storage
                    if isinstance(storage, LocalStorage):
                        return await storage.pull_code()
                    return await storage.pull_code(verify=self._verifier(runtime))
        except TimeoutError:
            raise TransientSourceError(
                f"pull of {runtime.name} timed out after {timeout:g}s; nothing was published"
            ) from None

    def _verifier(
        self, runtime: SourceRuntime
    ) -> Callable[[Path, Revision], Awaitable[None]] | None:
        command = runtime.settings.hooks.check
        if not command:
            return None
        timeout = runtime.settings.hooks.timeout

        async def verify(tree: Path, revision: Revision) -> None:
            try:
                await run_check(command, tree, source=runtime.name, timeout=timeout)
            except RunnerStorageError:
                self.metrics.hook_failures.labels(runtime.name, "check").inc()
                raise

        return verify

    def _record_success(
        self, runtime: SourceRuntime, result: SyncResult, old_revision: str | None
    ) -> None:
        now = time.time()
        if runtime.last_error is not None:
            self.log.info(
                "sync_recovered", source=runtime.name, failures=runtime.consecutive_failures
            )
        runtime.revision = result.revision
        runtime.last_success = now
        runtime.last_error = None
        runtime.consecutive_failures = 0
        self.metrics.pull_succeeded(runtime.name, result, now)
        self.log.info(
            "sync_finished",
            source=runtime.name,
            revision=result.revision,
            changed=result.changed,
            files=result.files_fetched,
            bytes=result.bytes_fetched,
            duration_s=round(result.duration, 3),
        )
        if result.changed and self._task_group is not None:
            event = PublishEvent(
                runtime.name, old_revision, result.revision, runtime.storage.destination
            )
            self._task_group.start_soon(self._run_post_hooks, runtime, event)

    def _record_failure(self, runtime: SourceRuntime, exc: Exception, duration: float) -> None:
        runtime.consecutive_failures += 1
        if isinstance(exc, RunnerStorageError):
            message = str(exc)
        else:
            # Not ours: its text may hold anything, so log the type and keep the text out.
            message = f"unexpected {type(exc).__name__} during pull"
        if isinstance(runtime.storage, ManagedStorage):
            message = runtime.storage.redact(message)
        self.metrics.pull_failed(runtime.name, duration, runtime.consecutive_failures)
        fields = {
            "source": runtime.name,
            "error": message,
            "error_type": type(exc).__name__,
            "failures": runtime.consecutive_failures,
        }
        if message != runtime.last_error:
            self.log.error("sync_failed", **fields)
        else:
            self.log.debug("sync_failed_again", **fields)
        runtime.last_error = message

    async def _run_post_hooks(self, runtime: SourceRuntime, event: PublishEvent) -> None:
        hooks = runtime.settings.hooks
        if hooks.exec:
            try:
                await run_exec(hooks.exec, event, timeout=hooks.timeout, retries=hooks.retries)
            except HookError as exc:
                self.metrics.hook_failures.labels(runtime.name, "exec").inc()
                self.log.error("hook_failed", source=runtime.name, hook="exec", error=str(exc))
        if hooks.webhook:
            try:
                await post_webhook(
                    hooks.webhook, event, timeout=hooks.timeout, retries=hooks.retries
                )
            except HookError as exc:
                self.metrics.hook_failures.labels(runtime.name, "webhook").inc()
                self.log.error("hook_failed", source=runtime.name, hook="webhook", error=str(exc))

    def _after_attempt(self) -> None:
        self.notifier.status(self._status_line())
        if not self._ready_sent and all(r.attempted for r in self.runtimes.values()):
            self._ready_sent = True
            self.notifier.ready(self._status_line())
            self.log.info("daemon_ready", sources=len(self.runtimes))

    def _status_line(self) -> str:
        total = len(self.runtimes)
        _, checks = self.readiness()
        good = sum(1 for ok, _ in checks.values() if ok)
        failing = sorted(n for n, r in self.runtimes.items() if r.consecutive_failures)
        line = f"{good}/{total} sources ready"
        if failing:
            line += f"; failing: {', '.join(failing[:3])}" + ("..." if len(failing) > 3 else "")
        return line

    async def _heartbeat(self) -> None:
        interval = HEARTBEAT_SECONDS
        if self.notifier.watchdog_interval is not None:
            interval = min(interval, self.notifier.watchdog_interval)
        while True:
            self.last_tick = time.monotonic()
            if self.notifier.watchdog_interval is not None:
                self.notifier.watchdog()
            await anyio.sleep(interval)

    async def _handle_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    break
                self.log.info("sync_requested", trigger="SIGHUP")
                self.request_sync()
        self.log.info("daemon_stopping", signal=signal.Signals(signum).name)
        self.notifier.stopping()
        # The receiver restored the default handlers; a second signal now exits at once.
        for again in (signal.SIGTERM, signal.SIGINT):
            signal.signal(again, _exit_now)
        scope.cancel()


def _exit_now(signum: int, frame: object) -> None:
    os._exit(128 + signum)
