"""runner-storage: keep workers' code in sync with where it lives.

The public names follow ``prefect.runner.storage``, so switching is an import change::

    from runner_storage import GitRepository, create_storage_from_source

:class:`GitRepository`, :class:`RemoteStorage` and :class:`BlockStorageAdapter` are imported
on first use, so importing this package loads no backend (git, fsspec), and neither anyio
nor pydantic; ``tests/test_imports.py`` keeps it so. The modules of the library are laid
out by family (``git/``, ``remote/``, ``blocks/``, ``snapshots/``) over shared machinery
(``secrets/``, ``publish/``, ``fs/``, ``steps/``); see the README's "Layout".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner_storage import _moved
from runner_storage._lazy import lazy_exports
from runner_storage.exceptions import (
    AuthenticationError,
    CheckFailedError,
    ConfigurationError,
    CredentialsError,
    DeploymentValidationError,
    DestinationConflictError,
    MissingDependencyError,
    NotFoundError,
    PublishError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
)
from runner_storage.factory import classify_source, create_storage_from_source
from runner_storage.local import LocalStorage
from runner_storage.secrets import GitCredentials, Secret
from runner_storage.types import RunnerStorage, SyncResult

if TYPE_CHECKING:
    from runner_storage.blocks import (
        AzureBlobStorageBlock,
        BlockStorageAdapter,
        FileStorageBlock,
        GoogleCloudStorageBlock,
        KVServerStorageBlock,
        LocalStorageBlock,
        S3StorageBlock,
        StorageBlock,
        TempStorageBlock,
    )
    from runner_storage.git import GitRepository
    from runner_storage.remote import RemoteStorage
    from runner_storage.snapshots import (
        SnapshotInfo,
        SnapshotStorage,
        collect_garbage,
        push_snapshot,
    )

    __version__: str

__all__ = [
    "AuthenticationError",
    "AzureBlobStorageBlock",
    "BlockStorageAdapter",
    "CheckFailedError",
    "ConfigurationError",
    "CredentialsError",
    "DeploymentValidationError",
    "DestinationConflictError",
    "FileStorageBlock",
    "GitCredentials",
    "GitRepository",
    "GoogleCloudStorageBlock",
    "KVServerStorageBlock",
    "LocalStorage",
    "LocalStorageBlock",
    "MissingDependencyError",
    "NotFoundError",
    "PublishError",
    "RemoteStorage",
    "RunnerStorage",
    "RunnerStorageError",
    "S3StorageBlock",
    "Secret",
    "SnapshotInfo",
    "SnapshotStorage",
    "SourceError",
    "StorageBlock",
    "SyncResult",
    "TempStorageBlock",
    "TransientSourceError",
    "UnsafeContentError",
    "classify_source",
    "collect_garbage",
    "create_storage_from_source",
    "push_snapshot",
]

_moved.install()

#: Prefect 2.0's storage blocks, importable from here as from runner_storage.blocks.
STORAGE_BLOCKS = (
    "AzureBlobStorageBlock",
    "FileStorageBlock",
    "GoogleCloudStorageBlock",
    "KVServerStorageBlock",
    "LocalStorageBlock",
    "S3StorageBlock",
    "StorageBlock",
    "TempStorageBlock",
)

_lazy_getattr, __dir__ = lazy_exports(
    __name__,
    {
        "BlockStorageAdapter": "runner_storage.blocks.adapter",
        **dict.fromkeys(STORAGE_BLOCKS, "runner_storage.blocks"),
        "GitRepository": "runner_storage.git.repository",
        "RemoteStorage": "runner_storage.remote.storage",
        "SnapshotInfo": "runner_storage.snapshots.push",
        "SnapshotStorage": "runner_storage.snapshots.storage",
        "collect_garbage": "runner_storage.snapshots.gc",
        "push_snapshot": "runner_storage.snapshots.push",
    },
)


def __getattr__(name: str) -> Any:
    if name != "__version__":
        return _lazy_getattr(name)
    # importlib.metadata costs more to import than the rest of the package
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        value = version("runner-storage")
    except PackageNotFoundError:
        value = "0+unknown"
    globals()[name] = value  # later lookups skip __getattr__
    return value
