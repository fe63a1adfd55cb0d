"""Running git: cancellable processes in a process group of their own, and git's version.

A pull's git commands run through one :class:`Git`, which holds the child environment
(see :mod:`runner_storage.git.environment`) and turns failures into the error tree (see
:mod:`runner_storage.git.errors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream

from runner_storage.exceptions import ConfigurationError, PublishError, RunnerStorageError
from runner_storage.git.errors import git_failure

__all__ = ["MIN_GIT_VERSION", "Git", "GitOutput", "check_git_version"]

logger = logging.getLogger("runner_storage.git")

#: ``GIT_CONFIG_COUNT`` (credentials by environment) appeared in git 2.31.
MIN_GIT_VERSION = (2, 31)


@dataclass(frozen=True)
class GitOutput:
    """A finished git command."""

    returncode: int
    stdout: bytes
    stderr: str


class Git:
    """Runs git commands for one pull, and turns failures into the error tree.

    Args:
        env: the child environment (see :func:`git_environment`); it may hold a secret,
            so it is never logged.
        redact: applied to everything that leaves this class as text.
        http_authorization: the ``Authorization`` header the environment gives git for
            the repository's origin, for requests made without git (see
            :mod:`runner_storage.git.refs`).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        redact: Callable[[str], str],
        http_authorization: str | None = None,
    ) -> None:
        self._env = dict(env)
        self.redact = redact
        self.http_authorization = http_authorization

    @property
    def environment(self) -> Mapping[str, str]:
        """The child environment (it may hold a secret: never log it)."""
        return self._env

    @property
    def user_agent(self) -> str:
        """The ``User-Agent`` git sends (known once :func:`check_git_version` has run)."""
        return f"git/{_installed_version_text or 'unknown'}"

    @property
    def identity(self) -> str:
        """A digest of the environment: equal for runners that log in the same way."""
        return hashlib.sha256(repr(sorted(self._env.items())).encode()).hexdigest()

    async def run(
        self,
        *args: str,
        git_dir: Path | None = None,
        input: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> GitOutput:
        """Run ``git [--git-dir=DIR] ARGS``; never raises for a non-zero exit.

        Cancelling the calling task kills git and everything it started (its own process
        group), so a timeout or shutdown never leaves a transfer running.
        """
        argv = ["git"]
        if git_dir is not None:
            argv.append(f"--git-dir={git_dir}")
        argv.extend(args)
        env = {**self._env, **(extra_env or {})}
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("git %s", self.redact(" ".join(args[:6])))
        # Outside any repository unless one is named: a work tree around the current
        # directory must not lend its configuration to our commands.
        cwd = git_dir if git_dir is not None else Path("/")
        try:
            code, out, err = await _run_process(argv, env=env, cwd=cwd, input=input)
        except FileNotFoundError as exc:
            if exc.filename != "git":
                raise PublishError(f"cannot run git in {cwd}: it does not exist") from None
            raise ConfigurationError(
                "git is not installed or not on PATH: install git"
                f" >= {'.'.join(map(str, MIN_GIT_VERSION))}"
            ) from None
        return GitOutput(code, out, err.decode("utf-8", "replace"))

    async def check(
        self,
        *args: str,
        what: str,
        where: str = "",
        git_dir: Path | None = None,
        input: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> bytes:
        """Like :meth:`run`, returning stdout; a failure raises via :func:`git_failure`."""
        result = await self.run(*args, git_dir=git_dir, input=input, extra_env=extra_env)
        if result.returncode != 0:
            raise self.failure(what, where, result.stderr)
        return result.stdout

    def failure(self, what: str, where: str, stderr: str) -> RunnerStorageError:
        """The translated error for a failed command (see :func:`git_failure`)."""
        return git_failure(what, where, stderr, redact=self.redact)


async def _run_process(
    argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None, input: bytes | None
) -> tuple[int, bytes, bytes]:
    process = await anyio.open_process(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        # A session of its own: no terminal to prompt on, and one group to kill.
        start_new_session=True,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_drain, process.stdout, out)
            group.start_soon(_drain, process.stderr, err)
            if process.stdin is not None and input is not None:
                async with process.stdin:
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await process.stdin.send(input)
        code = await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await process.aclose()
    return code, b"".join(out), b"".join(err)


async def _drain(stream: ByteReceiveStream | None, into: list[bytes]) -> None:
    if stream is None:
        return
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        async for chunk in stream:
            into.append(chunk)


_installed_version: tuple[int, int] | None = None
_installed_version_text: str | None = None


async def check_git_version(git: Git) -> tuple[int, int]:
    """Return git's ``(major, minor)``, once per process.

    Raises:
        ConfigurationError: git is missing or older than :data:`MIN_GIT_VERSION`.
    """
    global _installed_version, _installed_version_text  # noqa: PLW0603 - once per process
    if _installed_version is None:
        result = await git.run("--version")
        match = re.search(r"git version ((\d+)\.(\d+)\S*)", result.stdout.decode(errors="replace"))
        if result.returncode != 0 or match is None:
            raise ConfigurationError("cannot tell the installed git version: is git installed?")
        _installed_version = (int(match[2]), int(match[3]))
        _installed_version_text = match[1]
    if _installed_version < MIN_GIT_VERSION:
        needed = ".".join(map(str, MIN_GIT_VERSION))
        found = ".".join(map(str, _installed_version))
        raise ConfigurationError(f"git {found} is too old: runner-storage needs git >= {needed}")
    return _installed_version
