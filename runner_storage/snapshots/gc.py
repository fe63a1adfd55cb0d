"""Retention in a snapshot store: delete what no ref and none of the newest N snapshots need.

A snapshot is kept when a ref names it, when it is among the ``keep`` newest (by
``created_at``), or when it is younger than the grace period (a push may be about to
point a ref at it). A blob is kept when a kept snapshot lists it, or when it is younger
than the grace period (a push may be uploading the blobs of a manifest it has not written
yet). Manifests go first, then blobs, so a run killed halfway leaves only unreferenced
blobs for the next run, never a kept snapshot without its blobs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.to_thread

from runner_storage.exceptions import ConfigurationError, SourceError
from runner_storage.secrets import redact, secret_values
from runner_storage.snapshots.format import (
    SnapshotManifest,
    check_ref_name,
    parse_manifest,
    parse_ref,
)
from runner_storage.snapshots.store import SnapshotStore, root_url

__all__ = ["DEFAULT_GC_GRACE_SECONDS", "GCResult", "acollect_garbage", "collect_garbage"]

#: Objects younger than this are never deleted: a push may still be writing them.
DEFAULT_GC_GRACE_SECONDS = 3600.0

_MANIFEST_SUFFIX = ".json"


@dataclass(frozen=True)
class GCResult:
    """What a gc run kept and deleted (or, with ``dry_run``, would delete).

    Attributes:
        kept_snapshots: ids kept, newest first.
        deleted_snapshots: ids deleted.
        deleted_blobs: sha256 digests of the blobs deleted.
        bytes_freed: their total size, where the store reported it.
        refs: each ref and the id it names.
        dangling_refs: refs naming a snapshot that is not in the store.
        dry_run: whether nothing was actually deleted.
        deleted_temporaries: keys of temporaries killed writes left (file, ftp, sftp roots).
    """

    kept_snapshots: tuple[str, ...]
    deleted_snapshots: tuple[str, ...]
    deleted_blobs: tuple[str, ...]
    bytes_freed: int
    refs: dict[str, str]
    dangling_refs: tuple[str, ...]
    dry_run: bool
    deleted_temporaries: tuple[str, ...] = ()


def collect_garbage(
    root: str | os.PathLike[str],
    *,
    keep: int,
    dry_run: bool = False,
    grace_period: float = DEFAULT_GC_GRACE_SECONDS,
    **settings: Any,
) -> GCResult:
    """Delete the snapshots no ref names beyond the ``keep`` newest, then unreferenced blobs.

    Never deletes a blob a kept snapshot needs. Run it from one place: a push that reuses
    a blob this is deleting at that moment would point its ref at an incomplete snapshot
    (the grace period protects everything a push writes, not what it reuses).

    Example::

        result = collect_garbage("s3://my-bucket/code", keep=10, dry_run=True)
        print(result.deleted_snapshots)

    Args:
        root: the snapshot root (an fsspec URL that can be listed and written, or a path).
        keep: how many of the newest snapshots to keep besides those refs name (0 or more).
        dry_run: only say what would be deleted.
        grace_period: seconds; nothing younger is deleted.
        **settings: settings of the root's fsspec filesystem.

    Raises:
        ConfigurationError: a bad root or option, or a read-only (http) root.
        SourceError: the store failed, or a manifest is unreadable (nothing was deleted:
            its blobs cannot be told apart from garbage).
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        raise ConfigurationError(f"keep must be a whole number of 0 or more, got {keep!r}")
    if grace_period < 0:
        raise ConfigurationError(f"grace_period must not be negative, got {grace_period!r}")
    url, protocol = root_url(root, user="collect_garbage")
    values = secret_values(settings, protocol=protocol)
    store = SnapshotStore(url, protocol, settings, lambda text: redact(text, values))
    store.check_writable("collect_garbage")
    return _collect(store, keep=keep, dry_run=dry_run, grace_period=grace_period)


async def acollect_garbage(
    root: str | os.PathLike[str],
    *,
    keep: int,
    dry_run: bool = False,
    grace_period: float = DEFAULT_GC_GRACE_SECONDS,
    **settings: Any,
) -> GCResult:
    """:func:`collect_garbage`, run in a worker thread."""

    def run() -> GCResult:
        return collect_garbage(
            root, keep=keep, dry_run=dry_run, grace_period=grace_period, **settings
        )

    return await anyio.to_thread.run_sync(run)


def _collect(store: SnapshotStore, *, keep: int, dry_run: bool, grace_period: float) -> GCResult:
    now = time.time()
    where = store.where
    refs: dict[str, str] = {}
    temporaries: list[str] = []
    ref_listing = store.list("refs")
    for listed in ref_listing:
        name = listed.key.removeprefix("refs/")
        try:
            check_ref_name(name)
        except ConfigurationError:
            continue  # not a ref of ours (a killed write's temporary: below)
        data = store.read_if_present(listed.key)
        if data is not None:
            refs[name] = parse_ref(data, name=name, where=where)
    manifests: dict[str, tuple[SnapshotManifest, float | None]] = {}
    snapshot_listing = store.list("snapshots")
    for listed in (*ref_listing, *snapshot_listing):
        if _temporary(listed.key) and _old(listed.modified, now, grace_period):
            temporaries.append(listed.key)
    for listed in snapshot_listing:
        snapshot_id = listed.key.removeprefix("snapshots/").removesuffix(_MANIFEST_SUFFIX)
        if not listed.key.endswith(_MANIFEST_SUFFIX) or "/" in snapshot_id:
            continue
        data = store.read_if_present(listed.key)
        if data is None:
            continue  # deleted meanwhile
        try:
            manifest = parse_manifest(data, snapshot_id=snapshot_id, where=where)
        except SourceError as exc:
            raise SourceError(
                f"{exc}; gc deleted nothing, since the blobs of an unreadable manifest cannot"
                f" be told from garbage: remove {listed.key} by hand if it is garbage"
            ) from None
        manifests[snapshot_id] = (manifest, listed.modified)
    newest = sorted(
        manifests, key=lambda i: (_created(manifests[i][0], manifests[i][1]), i), reverse=True
    )
    kept = set(refs.values()) & set(manifests) | set(newest[:keep])
    kept |= {
        i for i in manifests if now - _created(manifests[i][0], manifests[i][1]) < grace_period
    }
    doomed = [i for i in newest if i not in kept]
    needed = {record.sha256 for i in kept for record in manifests[i][0].files}
    blobs = [
        listed
        for listed in store.list("blobs/sha256")
        if listed.key.rsplit("/", 1)[-1] not in needed and _old(listed.modified, now, grace_period)
    ]
    if not dry_run:
        store.delete([f"snapshots/{i}{_MANIFEST_SUFFIX}" for i in doomed])
        store.delete([listed.key for listed in blobs])
        store.delete(temporaries)
    return GCResult(
        kept_snapshots=tuple(i for i in newest if i in kept),
        deleted_snapshots=tuple(doomed),
        deleted_blobs=tuple(listed.key.rsplit("/", 1)[-1] for listed in blobs),
        bytes_freed=sum(listed.size or 0 for listed in blobs),
        refs=dict(sorted(refs.items())),
        dangling_refs=tuple(sorted(name for name, i in refs.items() if i not in manifests)),
        dry_run=dry_run,
        deleted_temporaries=tuple(temporaries),
    )


def _temporary(key: str) -> bool:
    """Whether ``key`` is the temporary of a write that was killed (``.NAME.….tmp``).

    Atomic writes on filesystems without an atomic PUT (file, ftp, sftp) go to such a name
    beside the target and are renamed over it; a killed push can leave one behind.
    """
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _old(modified: float | None, now: float, grace_period: float) -> bool:
    """Past the grace period; an object of unknown age only when there is no grace period."""
    if modified is None:
        return grace_period == 0
    return now - modified >= grace_period


def _created(manifest: SnapshotManifest, modified: float | None) -> float:
    """When a snapshot was pushed: its ``created_at``, else when its manifest was written."""
    try:
        return datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return modified if modified is not None else 0.0
