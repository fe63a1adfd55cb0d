"""Running git: a hardened child environment, cancellable processes, one error translation.

Every git child runs with :func:`git_environment`: no system or global configuration, no
credential helper, no prompt (a missing credential fails at once), no hooks, only the
https/http/ssh/git protocols (and ``file`` when the user asked for it), and ``LC_ALL=C`` so
stderr can be matched. Credentials reach git only as an ``http.<origin>.extraHeader``
passed through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` in the
child's environment (git >= 2.31), scoped to the repository's scheme, host and port.

Failures are translated once, by :func:`git_failure`, into the error tree.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    PublishError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
)

__all__ = [
    "MIN_GIT_VERSION",
    "Git",
    "GitOutput",
    "check_git_version",
    "git_environment",
    "git_failure",
    "ssh_command",
]

logger = logging.getLogger("runner_storage.git")

#: ``GIT_CONFIG_COUNT`` (credentials by environment) appeared in git 2.31.
MIN_GIT_VERSION = (2, 31)

#: Inherited ``GIT_*`` variables that are the user's choice of transport and trust. Every
#: other one (``GIT_DIR``, ``GIT_TRACE*``, ``GIT_CURL_VERBOSE``, ``GIT_SSL_NO_VERIFY``,
#: ``GIT_CONFIG_*``...) is dropped: it could redirect, weaken or log a pull.
_KEPT_GIT_VARIABLES = frozenset(
    {
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_CERT",
        "GIT_SSL_KEY",
        "GIT_SSL_CERT_PASSWORD_PROTECTED",
        "GIT_HTTP_USER_AGENT",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "GIT_PROXY_COMMAND",
        "GIT_PROXY_SSL_CAINFO",
        "GIT_PROXY_SSL_CERT",
        "GIT_PROXY_SSL_KEY",
    }
)

#: Configuration every git child runs with (passed by environment, not argv).
_HARDENED_CONFIG: tuple[tuple[str, str], ...] = (
    ("credential.helper", ""),  # an empty value clears every helper
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.autocrlf", "false"),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.ssh.allow", "always"),
    ("protocol.git.allow", "always"),
    ("protocol.file.allow", "user"),
    ("protocol.ext.allow", "never"),
    ("fetch.recurseSubmodules", "false"),
    ("submodule.recurse", "false"),
    # Automatic housekeeping must run inside our (cancellable) child, not detach from it.
    ("gc.autoDetach", "false"),
    ("maintenance.autoDetach", "false"),
    ("init.defaultBranch", "main"),
    # Abort a transfer that stalls completely for a minute instead of hanging a source.
    ("http.lowSpeedLimit", "1"),
    ("http.lowSpeedTime", "60"),
)


def ssh_command(key_file: Path | None, known_hosts_file: Path | None) -> str | None:
    """``GIT_SSH_COMMAND`` for an explicit key and/or known_hosts file, else None."""
    if key_file is None and known_hosts_file is None:
        return None
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if key_file is not None:
        argv += ["-i", str(key_file), "-o", "IdentitiesOnly=yes"]
    if known_hosts_file is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts_file}"]
    return shlex.join(argv)


def authorization(basic_auth: tuple[str, str]) -> str:
    """The ``Authorization`` header value for ``(username, password)``."""
    return "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()


def git_environment(
    *,
    basic_auth: tuple[str, str] | None,
    http_origin: str | None,
    ssh: str | None,
    inherited: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every git child of one pull.

    Args:
        basic_auth: ``(username, password)`` to send to ``http_origin`` only.
        http_origin: ``scheme://host[:port]/`` of the repository (http and https only).
        ssh: a ``GIT_SSH_COMMAND`` to use (see :func:`ssh_command`); None keeps the user's
            ssh setup, made non-interactive when it is plain ``ssh``.
        inherited: the environment to start from (``os.environ``).
    """
    source = os.environ if inherited is None else inherited
    env = {
        key: value
        for key, value in source.items()
        if (not key.startswith("GIT_") or key in _KEPT_GIT_VARIABLES) and key != "SSH_ASKPASS"
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",  # empty: no askpass program, so git fails instead of asking
        SSH_ASKPASS_REQUIRE="never",
        LC_ALL="C",
        LANGUAGE="C",
    )
    if ssh is not None:
        env["GIT_SSH_COMMAND"] = ssh
        env.pop("GIT_SSH", None)
    elif "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    config = list(_HARDENED_CONFIG)
    if basic_auth is not None and http_origin is not None:
        header = "Authorization: " + authorization(basic_auth)
        config.append((f"http.{http_origin}.extraHeader", header))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


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
            the repository's origin, for requests made without git (see ``_gitrefs``).
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


# (substrings of lower-cased stderr, error class, hint); the first matching row wins, so
# authentication rows come before "permission denied" on the local disk.
_RULES: tuple[tuple[tuple[str, ...], type[RunnerStorageError], str], ...] = (
    (
        (
            "authentication failed",
            "could not read username",
            "could not read password",
            "terminal prompts disabled",
            "returned error: 401",
            "returned error: 403",
            "invalid username or password",
            "permission denied (publickey",
            "permission denied, please try again",
            "host key verification failed",
            "unprotected private key file",
            "no matching host key",
        ),
        AuthenticationError,
        "check the credentials (token, username, ssh key, known_hosts)",
    ),
    (
        (
            "no space left on device",
            "disk quota exceeded",
            "read-only file system",
            "unable to create temporary file",
            "permission denied",
        ),
        PublishError,
        "the local disk failed: free space or make the base path writable",
    ),
    (
        (
            "server certificate verification failed",
            "ssl certificate problem",
            "certificate verify failed",
        ),
        SourceError,
        "the server's TLS certificate is not trusted: set GIT_SSL_CAINFO to its CA bundle",
    ),
    (
        (
            "repository not found",
            "not found",
            "returned error: 404",
            "does not appear to be a git repository",
            "couldn't find remote ref",
            "no such remote ref",
            "not our ref",
            "unknown revision",
            "not a valid object name",
            "repository not exported",
            "no such repository",
        ),
        NotFoundError,
        "check the URL, the branch, tag or commit, and access to the repository",
    ),
    (
        (
            "connection refused",
            "timed out",
            "could not resolve host",
            "temporary failure in name resolution",
            "name or service not known",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "returned error: 5",
            "returned error: 429",
            "early eof",
            "rpc failed",
            "remote end hung up",
            "broken pipe",
            "operation too slow",
            "unable to access",
            "could not read from remote repository",
        ),
        TransientSourceError,
        "the server or the network failed; the pull will be retried",
    ),
)


_PROMPT_NEEDLES = (
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
)


def git_failure(
    what: str, where: str, stderr: str, *, redact: Callable[[str], str]
) -> RunnerStorageError:
    """Translate a failed git command into one error of the tree, with a one-line message.

    Args:
        what: what was being done (``fetch branch 'main'``).
        where: the remote talked to, free of credentials; empty for local work.
        stderr: git's stderr; it is redacted and only its decisive line is kept.
        redact: removes secrets from the message.

    Returns:
        The error to raise; raise it ``from None``, since git's output may hold secrets.
    """
    lowered = stderr.lower()
    kind: type[RunnerStorageError] = SourceError
    hint = "see git's message"
    needle = None
    for needles, error, rule_hint in _RULES:
        needle = next((n for n in needles if n in lowered), None)
        if needle is not None:
            kind, hint = error, rule_hint
            break
    if needle in _PROMPT_NEEDLES:
        # git wanted to prompt: the server answered 401 to what we sent (or to nothing).
        detail = "the server asked for credentials (HTTP 401): none were given, or it rejected them"
    else:
        detail = _decisive_line(stderr, needle)
    reason = f": {detail}" if detail else ""
    source = f" from {where}" if where else ""
    return kind(redact(f"git cannot {what}{source}{reason}; {hint}"))


def _decisive_line(stderr: str, needle: str | None) -> str:
    """The line saying what went wrong: the one a rule matched, else the last fatal one."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    matched = [line for line in lines if needle and needle in line.lower()]
    fatal = [line for line in lines if line.lower().startswith(("fatal:", "error:"))]
    line = matched[0] if matched else (fatal or lines or [""])[-1]
    line = re.sub(r"^(fatal|error):\s*", "", line, flags=re.IGNORECASE)
    return line if len(line) <= 300 else line[:297] + "..."
