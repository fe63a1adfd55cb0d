"""Content-addressed snapshots of a project tree: push, :class:`SnapshotStorage`, gc.

* :mod:`~runner_storage.snapshots.format`: the format (blobs, manifests, refs) and the
  checks that treat a fetched manifest as untrusted input (pure);
* :mod:`~runner_storage.snapshots.store`: one root, read and written through ``fs/``;
* :mod:`~runner_storage.snapshots.push`: :func:`push_snapshot`: only the missing blobs,
  then the manifest, then the ref;
* :mod:`~runner_storage.snapshots.storage`: :class:`SnapshotStorage`, a RunnerStorage;
* :mod:`~runner_storage.snapshots.gc`: :func:`collect_garbage`;
* :mod:`~runner_storage.snapshots.provenance`: the git checkout a tree was pushed from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.snapshots.gc import GCResult, acollect_garbage, collect_garbage
    from runner_storage.snapshots.push import SnapshotInfo, apush_snapshot, push_snapshot
    from runner_storage.snapshots.storage import SnapshotStorage

__all__ = [
    "GCResult",
    "SnapshotInfo",
    "SnapshotStorage",
    "acollect_garbage",
    "apush_snapshot",
    "collect_garbage",
    "push_snapshot",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GCResult": "runner_storage.snapshots.gc",
        "acollect_garbage": "runner_storage.snapshots.gc",
        "collect_garbage": "runner_storage.snapshots.gc",
        "SnapshotInfo": "runner_storage.snapshots.push",
        "apush_snapshot": "runner_storage.snapshots.push",
        "push_snapshot": "runner_storage.snapshots.push",
        "SnapshotStorage": "runner_storage.snapshots.storage",
    },
)
