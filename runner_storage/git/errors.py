"""git's failures, translated once into the error tree, with one-line redacted messages.

git says what went wrong on stderr (``LC_ALL=C``, so it can be matched). An HTTP status
in it (``The requested URL returned error: 503``) means what
:func:`runner_storage.exceptions.status_error` says for every transport; the rest is
matched against the rows of :data:`_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from runner_storage.exceptions import (
    AuthenticationError,
    NotFoundError,
    PublishError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
    one_line,
    status_error,
)

__all__ = ["git_failure", "refusal_stderr"]

# (substrings of lower-cased stderr, error class, hint); the first matching row wins, so
# authentication rows come before "permission denied" on the local disk.
_RULES: tuple[tuple[tuple[str, ...], type[RunnerStorageError], str], ...] = (
    (
        (
            "authentication failed",
            "could not read username",
            "could not read password",
            "terminal prompts disabled",
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
            "early eof",
            "rpc failed",
            "remote end hung up",
            "broken pipe",
            "operation too slow",
            "unable to access",
            "could not read from remote repository",
        ),
        TransientSourceError,
        "the server or the network failed; try again later",
    ),
)

#: The hint of each class: that of its first row.
_HINTS = {error: hint for _, error, hint in reversed(_RULES)}

#: How git reports the HTTP status of an answer it could not use.
_HTTP_STATUS = re.compile(r"returned error: (\d{3})")

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
    kind, needle = _classify(stderr.lower())
    hint = _HINTS.get(kind, "see git's message")
    if needle in _PROMPT_NEEDLES:
        # git wanted to prompt: the server answered 401 to what we sent (or to nothing).
        detail = "the server asked for credentials (HTTP 401): none were given, or it rejected them"
    else:
        detail = _decisive_line(stderr, needle, redact)
    reason = f": {detail}" if detail else ""
    source = f" from {where}" if where else ""
    return kind(redact(f"git cannot {what}{source}{reason}; {hint}"))


def refusal_stderr(url: str, status: int) -> str:
    """What git prints when the first request of a fetch from ``url`` gets ``status``.

    For answers obtained without git (:mod:`runner_storage.git.refs`), so that they are
    reported exactly as git's own would be.
    """
    shown = url.rstrip("/") + "/"
    if status == 401:  # git would ask for a password, and may not
        return f"fatal: could not read Username for '{shown}': terminal prompts disabled"
    if status == 404:
        return f"fatal: repository '{shown}' not found"
    return f"fatal: unable to access '{shown}': The requested URL returned error: {status}"


def _classify(lowered: str) -> tuple[type[RunnerStorageError], str | None]:
    """The error class for git's lower-cased stderr, and the text that decided it."""
    status = _HTTP_STATUS.search(lowered)
    if status is not None:
        by_status = status_error(int(status[1]))
        if by_status is not None:
            return by_status, status[0]
    for needles, error, _ in _RULES:
        needle = next((n for n in needles if n in lowered), None)
        if needle is not None:
            return error, needle
    return SourceError, None


def _decisive_line(stderr: str, needle: str | None, redact: Callable[[str], str]) -> str:
    """The line saying what went wrong: the one a rule matched, else the last fatal one."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    matched = [line for line in lines if needle and needle in line.lower()]
    fatal = [line for line in lines if line.lower().startswith(("fatal:", "error:"))]
    line = matched[0] if matched else (fatal or lines or [""])[-1]
    return one_line(
        re.sub(r"^(fatal|error):\s*", "", line, flags=re.IGNORECASE), 300, redact=redact
    )
