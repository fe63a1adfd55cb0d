"""runner-storage: keep workers' code in sync with where it lives.

The public names follow ``prefect.runner.storage``, so switching is an import change::

    from runner_storage import GitRepository, create_storage_from_source

:class:`GitRepository`, :class:`RemoteStorage` and :class:`BlockStorageAdapter` are imported
on first use, so importing this package loads no backend (git, fsspec), and neither anyio
nor pydantic; ``tests/test_imports.py`` keeps it so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from runner_storage.base import RunnerStorage, SyncResult
from runner_storage.credentials import GitCredentials, Secret
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    DestinationConflictError,
    MissingDependencyError,
    NotFoundError,
    PublishError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
)
from runner_storage.factory import create_storage_from_source
from runner_storage.local import LocalStorage

if TYPE_CHECKING:
    from runner_storage.block import BlockStorageAdapter
    from runner_storage.git import GitRepository
    from runner_storage.remote import RemoteStorage

    __version__: str

__all__ = [
    "AuthenticationError",
    "BlockStorageAdapter",
    "ConfigurationError",
    "CredentialsError",
    "DestinationConflictError",
    "GitCredentials",
    "GitRepository",
    "LocalStorage",
    "MissingDependencyError",
    "NotFoundError",
    "PublishError",
    "RemoteStorage",
    "RunnerStorage",
    "RunnerStorageError",
    "Secret",
    "SourceError",
    "SyncResult",
    "TransientSourceError",
    "UnsafeContentError",
    "create_storage_from_source",
]

# name -> module, for the names loaded on first access (PEP 562)
_LAZY = {
    "BlockStorageAdapter": "runner_storage.block",
    "GitRepository": "runner_storage.git",
    "RemoteStorage": "runner_storage.remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "__version__":
        # importlib.metadata costs more to import than the rest of the package
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value = version("runner-storage")
        except PackageNotFoundError:
            value = "0+unknown"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
