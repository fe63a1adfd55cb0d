"""Prefect blocks on our fsspec stack: storage blocks, filesystem blocks, and the adapter.

* :mod:`~runner_storage.blocks.storage` (with :mod:`~runner_storage.blocks.cloud` and
  :mod:`~runner_storage.blocks.kv`): Prefect 2.0's storage blocks, ``key = await
  block.write(data)`` and ``await block.read(key)``;
* :mod:`~runner_storage.blocks.filesystems`: Prefect's filesystem blocks,
  :class:`LocalFileSystem` and :class:`RemoteFileSystem` (``read_path``, ``write_path``,
  ``get_directory``, ``put_directory``);
* :mod:`~runner_storage.blocks.adapter`: :class:`BlockStorageAdapter`, a runner storage
  over any block with ``get_directory``.

Every name loads its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.blocks.adapter import BlockStorageAdapter, NotABlockError
    from runner_storage.blocks.cloud import (
        AzureBlobStorageBlock,
        GoogleCloudStorageBlock,
        S3StorageBlock,
    )
    from runner_storage.blocks.filesystems import (
        FileSystemBlock,
        LocalFileSystem,
        RemoteFileSystem,
    )
    from runner_storage.blocks.kv import KVServerStorageBlock
    from runner_storage.blocks.storage import (
        FileStorageBlock,
        LocalStorageBlock,
        StorageBlock,
        TempStorageBlock,
    )

__all__ = [
    "AzureBlobStorageBlock",
    "BlockStorageAdapter",
    "FileStorageBlock",
    "FileSystemBlock",
    "GoogleCloudStorageBlock",
    "KVServerStorageBlock",
    "LocalFileSystem",
    "LocalStorageBlock",
    "NotABlockError",
    "RemoteFileSystem",
    "S3StorageBlock",
    "StorageBlock",
    "TempStorageBlock",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("BlockStorageAdapter", "NotABlockError"), "runner_storage.blocks.adapter"),
        **dict.fromkeys(
            ("AzureBlobStorageBlock", "GoogleCloudStorageBlock", "S3StorageBlock"),
            "runner_storage.blocks.cloud",
        ),
        **dict.fromkeys(
            ("FileSystemBlock", "LocalFileSystem", "RemoteFileSystem"),
            "runner_storage.blocks.filesystems",
        ),
        "KVServerStorageBlock": "runner_storage.blocks.kv",
        **dict.fromkeys(
            ("FileStorageBlock", "LocalStorageBlock", "StorageBlock", "TempStorageBlock"),
            "runner_storage.blocks.storage",
        ),
    },
)
