"""Hooks around a publish: a pre-publish check, an exec hook, and a webhook.

The check runs in the new tree before it goes live; a non-zero exit keeps the current
version published. The exec hook and the webhook run after a publish, with a timeout and
retries; their failures are reported to the caller, never hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from runner_storage.exceptions import CheckFailedError

__all__ = ["HookError", "PublishEvent", "post_webhook", "run_check", "run_exec"]

_OUTPUT_LIMIT = 300


class HookError(Exception):
    """A hook failed after its retries; the message is one line."""


@dataclass(frozen=True)
class PublishEvent:
    """What a post-publish hook is told."""

    source: str
    old_revision: str | None
    new_revision: str
    path: Path

    def as_json(self) -> dict[str, str | None]:
        """The webhook body."""
        return {
            "source": self.source,
            "old_revision": self.old_revision,
            "new_revision": self.new_revision,
            "path": str(self.path),
        }

    def as_environment(self) -> dict[str, str]:
        """The variables the exec hook receives."""
        return {
            "RUNNER_STORAGE_SOURCE_NAME": self.source,
            "RUNNER_STORAGE_OLD_REVISION": self.old_revision or "",
            "RUNNER_STORAGE_NEW_REVISION": self.new_revision,
            "RUNNER_STORAGE_PATH": str(self.path),
        }


def _inherited_environment() -> dict[str, str]:
    # The daemon's own settings (tokens among them) are not the hook's business.
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNNER_STORAGE_")}


async def _run(command: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float) -> str:
    """Run ``command``; return "" on success or a one-line description of the failure."""
    try:
        with anyio.fail_after(timeout):
            result = await anyio.run_process(
                command,
                cwd=cwd,
                env={**_inherited_environment(), **env},
                check=False,
                stdin=subprocess.DEVNULL,
            )
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    except OSError as exc:
        return f"cannot start {command[0]!r}: {exc.strerror or exc}"
    if result.returncode == 0:
        return ""
    output = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
    tail = output[-1][:_OUTPUT_LIMIT] if output else "no output"
    return f"exited {result.returncode}: {tail}"


async def run_check(command: list[str], tree: Path, *, source: str, timeout: float) -> None:
    """Run the pre-publish check in ``tree``.

    Raises:
        CheckFailedError: the check refused the new version; it must not be published.
    """
    failure = await _run(
        command, cwd=tree, env={"RUNNER_STORAGE_SOURCE_NAME": source}, timeout=timeout
    )
    if failure:
        raise CheckFailedError(f"pre-publish check {command[0]!r} {failure}; version not published")


async def run_exec(
    command: list[str], event: PublishEvent, *, timeout: float, retries: int
) -> None:
    """Run the post-publish exec hook in the published tree.

    Raises:
        HookError: every attempt failed.
    """
    failure = ""
    for attempt in range(retries + 1):
        if attempt:
            await anyio.sleep(min(2**attempt, 30))
        failure = await _run(command, cwd=event.path, env=event.as_environment(), timeout=timeout)
        if not failure:
            return
    raise HookError(f"exec hook {command[0]!r} {failure} ({retries + 1} attempts)")


async def post_webhook(url: str, event: PublishEvent, *, timeout: float, retries: int) -> None:
    """POST the event as JSON to ``url``; a 2xx answer is success.

    Raises:
        HookError: every attempt failed.
    """
    import aiohttp  # noqa: PLC0415 - only sources with a webhook load the HTTP client

    failure = ""
    body = json.dumps(event.as_json()).encode()
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for attempt in range(retries + 1):
            if attempt:
                await anyio.sleep(min(2**attempt, 30))
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    if 200 <= response.status < 300:
                        return
                    failure = f"answered HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"failed: {type(exc).__name__}"
    # The URL may carry a token in its query: name the host only.
    host = urlsplit(url).hostname
    raise HookError(f"webhook to {host} {failure} ({retries + 1} attempts)")
