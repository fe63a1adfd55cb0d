"""The daemon: one task group, one loop per source, hooks, health, signals and systemd.

Each source loops: pull, then sleep its storage's ``pull_interval`` with jitter. Failures
back off exponentially with jitter up to a cap; they never stop other sources or the
daemon, unless ``max_failures`` asks for an exit. ``--once`` pulls every source once,
waits for the post-publish hooks of those pulls, and exits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeAlias

import anyio
from anyio.abc import TaskGroup

from runner_storage.exceptions import RunnerStorageError
from runner_storage.local import LocalStorage
from runner_storage.publish.managed import ManagedStorage
from runner_storage.types import Revision, SyncResult
from service.config import DaemonSettings
from service.hooks import HookError, PublishEvent, post_webhook, run_check, run_exec
from service.logging import get_logger
from service.metrics import Metrics
from service.notify import Notifier
from service.runtime import SourceRuntime
from service.webhooks import Push, wants

__all__ = ["Daemon", "OpenEndpoints", "SourceRuntime", "StartupError"]

HEARTBEAT_SECONDS = 1.0
LIVENESS_LIMIT_SECONDS = 15.0


class StartupError(Exception):
    """The daemon cannot start as configured (its HTTP port is taken): one line, exit 2."""


#: Opens the HTTP endpoints for a daemon, for as long as the context lasts; the context
#: gives the bound port and raises :class:`StartupError` if it cannot listen.
OpenEndpoints: TypeAlias = "Callable[[Daemon], AbstractAsyncContextManager[int]]"


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
        self._hooks: TaskGroup | None = None
        self._hook_failures = 0
        for runtime in runtimes:
            self.metrics.add_source(runtime.name)
            # Start from what an earlier run published, so a restart keeps serving ready.
            runtime.load_state()
            self.metrics.failures.labels(runtime.name).set(runtime.consecutive_failures)
            if runtime.revision:
                self.metrics.set_revision(runtime.name, runtime.revision)
                if runtime.last_success is not None:
                    self.metrics.last_success.labels(runtime.name).set(runtime.last_success)

    async def run(self, *, once: bool = False, open_endpoints: OpenEndpoints | None = None) -> int:
        """Run until a signal (or, with ``once``, until every source was pulled once).

        Args:
            once: pull every source once, wait for the post-publish hooks, and return.
            open_endpoints: serves the HTTP endpoints while the daemon runs, when
                ``http_port`` is set; opened before any pull.

        Returns:
            The process exit code: 0, or 1 when ``once`` saw a failed pull or hook, or a
            source reached ``max_failures``.

        Raises:
            StartupError: the endpoints cannot listen; nothing was pulled.
        """
        async with contextlib.AsyncExitStack() as stack:
            if open_endpoints is not None and self.settings.http_port is not None:
                await stack.enter_async_context(open_endpoints(self))
            async with anyio.create_task_group() as outer:
                self._task_group = outer
                outer.start_soon(self._handle_signals, outer.cancel_scope)
                outer.start_soon(self._heartbeat)
                # Post-publish hooks run beside the loops, so a slow webhook never delays
                # the next pull; with --once this group is what the exit waits for.
                async with anyio.create_task_group() as hooks:
                    self._hooks = hooks
                    async with anyio.create_task_group() as loops:
                        for runtime in self.runtimes.values():
                            loops.start_soon(self._source_loop, runtime, once)
                if once:
                    failed = any(r.failed_attempts for r in self.runtimes.values())
                    self.exit_code = 1 if failed or self._hook_failures else 0
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

    def sources_for(self, push: Push) -> list[str]:
        """The git sources a push changes: same repository, and the branch or tag they follow."""
        from runner_storage.git import GitRepository  # noqa: PLC0415 - the git family

        return sorted(
            name
            for name, runtime in self.runtimes.items()
            if isinstance(runtime.storage, GitRepository)
            and wants(push, runtime.storage.url, runtime.storage.branch, runtime.storage.commit_sha)
        )

    def request_push(self, names: list[str], delay: float) -> None:
        """Wake ``names`` to pull after ``delay`` seconds; a burst of pushes is one pull.

        A wake already pending for a source is kept as it is. A push that arrives while
        the source pulls wakes it again afterwards: that pull may have read the ref first.
        """
        for name in names:
            runtime = self.runtimes[name]
            if runtime.push_pending:
                continue
            runtime.push_pending = True
            if self._task_group is None or delay <= 0:
                runtime.push_pending = False
                runtime.wake.set()
            else:
                self._task_group.start_soon(self._wake_later, runtime, delay)

    @staticmethod
    async def _wake_later(runtime: SourceRuntime, delay: float) -> None:
        await anyio.sleep(delay)
        runtime.push_pending = False
        runtime.wake.set()

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
            failure = await self._pull(runtime)
            runtime.attempted = True
            gave_up = (
                runtime.settings.max_failures is not None
                and runtime.failed_attempts >= runtime.settings.max_failures
            )
            retrying = failure is not None and not once and not gave_up
            delay = self._next_delay(runtime)
            if failure is not None:
                self._log_failure(runtime, failure, retry_in=delay if retrying else None)
            self._after_attempt()
            if once or (runtime.storage.pull_interval is None and not runtime.failed_attempts):
                runtime.next_pull_at = None
                if not once:
                    await runtime.wake.wait()
                    continue
                return
            if gave_up:
                self.log.error(
                    "source_gave_up", source=runtime.name, failures=runtime.failed_attempts
                )
                self.exit_code = 1
                if self._task_group is not None:
                    self._task_group.cancel_scope.cancel()
                return
            runtime.next_pull_at = time.time() + delay
            with anyio.move_on_after(delay):
                await runtime.wake.wait()

    def _next_delay(self, runtime: SourceRuntime) -> float:
        if runtime.failed_attempts:
            exponent = min(runtime.failed_attempts - 1, 30)
            ceiling = min(self.settings.backoff_max, self.settings.backoff_initial * 2.0**exponent)
            # "Equal jitter": never shorter than half the step, so a broken source is not hammered.
            return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic
        # The storage's own interval: the one value the settings gave it, fractions kept.
        interval = runtime.storage.pull_interval or 0.0
        return interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not cryptographic

    async def _pull(self, runtime: SourceRuntime) -> Exception | None:
        """One pull, recorded; the exception it ended with, or None."""
        started = time.monotonic()
        old_revision = runtime.revision
        before = runtime.attempt_stamp()
        runtime.pulling = True
        try:
            # The limiter's wait is not part of the pull: only the pull counts against timeout.
            async with self._limiter:
                storage = runtime.storage
                if isinstance(storage, LocalStorage):
                    result = await storage.pull_code()
                else:
                    # The library ends a pull past its timeout and records it in state.json.
                    result = await storage.pull_code(
                        verify=self._verifier(runtime), timeout=runtime.settings.timeout
                    )
        except Exception as exc:  # noqa: BLE001 - one broken source must never stop the daemon
            runtime.record_failure(self._describe(runtime, exc), before=before)
            self.metrics.pull_failed(
                runtime.name, time.monotonic() - started, runtime.consecutive_failures
            )
            return exc
        finally:
            runtime.pulling = False
        self._record_success(runtime, result, old_revision)
        return None

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
        if runtime.logged_error is not None:
            self.log.info("sync_recovered", source=runtime.name, failures=runtime.failed_attempts)
        runtime.record_success(result)
        self.metrics.pull_succeeded(runtime.name, result, runtime.last_success or time.time())
        self.log.info(
            "sync_finished",
            source=runtime.name,
            revision=result.revision,
            changed=result.changed,
            files=result.files_fetched,
            bytes=result.bytes_fetched,
            duration_s=round(result.duration, 3),
        )
        if result.changed and self._hooks is not None:
            event = PublishEvent(
                runtime.name, old_revision, result.revision, runtime.storage.destination
            )
            self._hooks.start_soon(self._run_post_hooks, runtime, event)

    @staticmethod
    def _describe(runtime: SourceRuntime, exc: Exception) -> str:
        """The failure in one line, redacted."""
        if isinstance(exc, RunnerStorageError):
            message = str(exc)
        else:
            # Not ours: its text may hold anything, so log the type and keep the text out.
            message = f"unexpected {type(exc).__name__} during pull"
        if isinstance(runtime.storage, ManagedStorage):
            message = runtime.storage.redact(message)
        return message

    def _log_failure(
        self, runtime: SourceRuntime, exc: Exception, *, retry_in: float | None
    ) -> None:
        """``sync_failed`` once per distinct error (then ``sync_failed_again``, at debug)."""
        message = self._describe(runtime, exc)
        fields: dict[str, object] = {
            "source": runtime.name,
            "error": message,
            "error_type": type(exc).__name__,
            "failures": runtime.consecutive_failures,
        }
        if retry_in is not None:
            fields["retry_in_s"] = round(retry_in, 3)
        if message != runtime.logged_error:
            self.log.error("sync_failed", **fields)
        else:
            self.log.debug("sync_failed_again", **fields)
        runtime.logged_error = message

    async def _run_post_hooks(self, runtime: SourceRuntime, event: PublishEvent) -> None:
        """The exec hook, then the webhook; a failure is counted, logged, and not raised."""
        hooks = runtime.settings.hooks
        options: dict[str, Any] = {"timeout": hooks.timeout, "retries": hooks.retries}
        calls: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if hooks.exec:
            calls.append(("exec", functools.partial(run_exec, hooks.exec, event, **options)))
        if hooks.webhook:
            calls.append(
                ("webhook", functools.partial(post_webhook, hooks.webhook, event, **options))
            )
        for hook, call in calls:
            try:
                await call()
            except HookError as exc:
                self._hook_failures += 1
                self.metrics.hook_failures.labels(runtime.name, hook).inc()
                self.log.error("hook_failed", source=runtime.name, hook=hook, error=str(exc))

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
        failing = sorted(n for n, r in self.runtimes.items() if r.failed_attempts)
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
