"""The errors runner-storage raises, split by what the caller should do about them.

```
RunnerStorageError                  root: catch this to catch everything we raise
├── ConfigurationError (ValueError)  bad input; retrying will not help; fix the settings
│   ├── CredentialsError             a secret is missing: unset variable, unreadable file
│   ├── MissingDependencyError       a protocol needs an extra that is not installed
│   └── DeploymentValidationError    a deployment cannot work with its storage
├── SourceError                      the upstream side failed
│   ├── TransientSourceError         network, 5xx, timeouts: retry with backoff
│   ├── AuthenticationError          credentials were rejected or are needed
│   ├── NotFoundError                repository, ref, bucket, prefix or path is missing
│   ├── UnsafeContentError           upstream content would escape the new version
│   └── CheckFailedError             a pre-publish check refused the new version
└── PublishError                     the local side failed: disk, permissions, lock
    └── DestinationConflictError     the destination holds something we do not manage
```

Messages are one line: what failed, where (redacted), and a hint. Third-party errors are
translated once per transport (``fs/errors.py``, ``git/errors.py``, the block adapter) and
chained with ``raise ... from``, unless the original could carry a secret, in which case
the chain is cut. What every transport shares is here: the meaning of an HTTP status
(:func:`status_error`), local-disk errors (:func:`disk_error`), and one-line descriptions
(:func:`one_line`, :func:`describe_error`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

__all__ = [
    "DISK_ERRNOS",
    "AuthenticationError",
    "CheckFailedError",
    "ConfigurationError",
    "CredentialsError",
    "DeploymentValidationError",
    "DestinationConflictError",
    "MissingDependencyError",
    "NotFoundError",
    "PublishError",
    "RunnerStorageError",
    "SourceError",
    "TransientSourceError",
    "UnsafeContentError",
    "describe_error",
    "disk_error",
    "exception_chain",
    "one_line",
    "status_error",
]


class RunnerStorageError(Exception):
    """The root of every error runner-storage raises.

    ``retryable`` tells a scheduler whether trying again later may succeed.
    """

    retryable: bool = False


class ConfigurationError(RunnerStorageError, ValueError):
    """Input that can never work: fix the settings, do not retry.

    Also a ``ValueError``, so code written against Prefect's storages keeps working.
    """


class CredentialsError(ConfigurationError):
    """A secret could not be read: its variable is unset or its file is unreadable.

    Retryable, because files mounted from a secret store appear and rotate at runtime.
    """

    retryable = True


class MissingDependencyError(ConfigurationError, ImportError):
    """A protocol needs a package that is not installed; the message names the extra."""


class DeploymentValidationError(ConfigurationError):
    """A deployment cannot work with the storage it was given (a packager's check).

    As Prefect's: local storage for infrastructure that runs elsewhere, or no storage.
    """


class SourceError(RunnerStorageError):
    """The upstream source (git server, object store, block) failed."""

    retryable = True


class TransientSourceError(SourceError):
    """A failure that may pass: network, server errors, throttling, timeouts."""


class AuthenticationError(SourceError):
    """The source rejected the credentials, or needs some and none were given."""


class NotFoundError(SourceError):
    """The repository, ref, bucket, prefix or path does not exist."""


class UnsafeContentError(SourceError):
    """Upstream content would write outside the new version (``..``, absolute, symlinks)."""

    retryable = False


class CheckFailedError(SourceError):
    """A pre-publish check (``verify``, the daemon's check hook) refused the new version.

    Retryable: a later revision upstream may pass.
    """


class PublishError(RunnerStorageError):
    """Building or publishing the local version failed: disk full, permissions, lock."""

    retryable = True


class DestinationConflictError(PublishError):
    """The destination holds something runner-storage does not manage, or another source."""

    retryable = False


#: errnos that always mean the local disk failed, even without a file name (a failed
#: ``write()`` carries none).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def disk_error(what: str, exc: OSError) -> PublishError:
    """Translate a local ``OSError`` into a one-line :class:`PublishError` with a hint."""
    hints = {
        errno.ENOSPC: "the disk is full: free space or lower retention",
        errno.EDQUOT: "the disk quota is exceeded: free space or lower retention",
        errno.EACCES: "permission denied: make the base path writable for this user",
        errno.EPERM: "permission denied: make the base path writable for this user",
        errno.EROFS: "the file system is read-only: use a writable base path",
        errno.ENOTDIR: (
            "a component of the path is a file, not a directory: move that file away or"
            " choose another base path"
        ),
        errno.EFBIG: (
            "a file is too large to write (File too large): raise the file-size limit"
            " (ulimit -f, RLIMIT_FSIZE) or use a file system that takes larger files"
        ),
    }
    hint = hints.get(exc.errno or 0, exc.strerror or str(exc))
    return PublishError(f"{what}: {hint}")


def status_error(status: int) -> type[SourceError] | None:
    """What an HTTP answer with ``status`` means, for every transport that speaks HTTP.

    401 and 403 are authentication, 404 and 410 not found, 408, 425, 429 and 5xx
    transient; anything else (a success, a redirect, another client error) says nothing
    on its own, and None lets the caller decide.
    """
    if status in (401, 403):
        return AuthenticationError
    if status in (404, 410):
        return NotFoundError
    if status in (408, 425, 429) or 500 <= status < 600:
        return TransientSourceError
    return None


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, and so on, as a traceback would show them.

    Each once; ``__cause__`` first, and ``__context__`` unless ``raise ... from None``
    suppressed it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        cause = current.__cause__
        current = (
            cause if cause is not None or current.__suppress_context__ else current.__context__
        )


def one_line(text: str, limit: int = 200, *, redact: Callable[[str], str] | None = None) -> str:
    """The first non-blank line of ``text``, stripped, redacted, cut to ``limit`` characters.

    Redacting before cutting matters: a secret cut in half would no longer be recognised.
    """
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if redact is not None:
        line = redact(line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_error(
    exc: BaseException, limit: int = 200, *, redact: Callable[[str], str] | None = None
) -> str:
    """``Type: first line of the message`` (or the type alone), for a one-line message.

    Pass ``redact`` whenever the result is shown: a third-party message may quote a secret.
    """
    text = one_line(str(exc), limit, redact=redact)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
