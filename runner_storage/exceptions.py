"""The errors runner-storage raises, split by what the caller should do about them.

```
RunnerStorageError                  root: catch this to catch everything we raise
├── ConfigurationError (ValueError)  bad input; retrying will not help; fix the settings
│   ├── CredentialsError             a secret is missing: unset variable, unreadable file
│   └── MissingDependencyError       a protocol needs an extra that is not installed
├── SourceError                      the upstream side failed
│   ├── TransientSourceError         network, 5xx, timeouts: retry with backoff
│   ├── AuthenticationError          credentials were rejected or are needed
│   ├── NotFoundError                repository, ref, bucket, prefix or path is missing
│   └── UnsafeContentError           upstream content would escape the new version
└── PublishError                     the local side failed: disk, permissions, lock
    └── DestinationConflictError     the destination holds something we do not manage
```

Messages are one line: what failed, where (redacted), and a hint. Third-party errors are
translated once per backend and chained with ``raise ... from``, unless the original could
carry a secret, in which case the chain is cut.
"""

from __future__ import annotations

import errno

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "CredentialsError",
    "DestinationConflictError",
    "MissingDependencyError",
    "NotFoundError",
    "PublishError",
    "RunnerStorageError",
    "SourceError",
    "TransientSourceError",
    "UnsafeContentError",
    "disk_error",
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


class PublishError(RunnerStorageError):
    """Building or publishing the local version failed: disk full, permissions, lock."""

    retryable = True


class DestinationConflictError(PublishError):
    """The destination holds something runner-storage does not manage, or another source."""

    retryable = False


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
