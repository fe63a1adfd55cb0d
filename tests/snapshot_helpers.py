"""Helpers of the snapshot tests: a snapshot root on every kind of source, trees, manifests.

A :class:`SnapshotRoot` is a snapshot root on one :class:`~remote_sources.Source`: where a
push writes (the source itself, or, for the read-only HTTP kind, the folder the HTTP
server serves, as a ``file://`` root), where a pull reads, and how to change one object of
it by hand (to damage it) or write a manifest by hand (to attack a pull).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from remote_sources import (
    AzureSource,
    FileSource,
    GCSSource,
    HTTPSource,
    MemorySource,
    S3Source,
    Source,
)

from runner_storage.snapshots import SnapshotInfo, SnapshotStorage, push_snapshot
from runner_storage.snapshots.format import blob_key, manifest_key, ref_key
from runner_storage.types import SyncResult

#: Where the root sits inside each test's source.
PREFIX = "snap"


@dataclass
class SnapshotRoot:
    """A snapshot root on ``source``: push there, pull from there, damage it by hand.

    Attributes:
        source: the upstream (a fresh bucket, container, folder...).
        push_url: the root a push and gc write to (for HTTP: the served folder).
        pull_url: the root a pull reads (for HTTP: the server's URL).
        settings: the filesystem settings of both.
    """

    source: Source
    push_url: str
    pull_url: str
    settings: dict[str, Any]

    @classmethod
    def on(cls, source: Source) -> SnapshotRoot:
        """The root ``snap`` on ``source``."""
        if isinstance(source, HTTPSource):
            folder = source.server.root / PREFIX
            folder.mkdir(parents=True, exist_ok=True)
            return cls(source, folder.as_uri(), source.url(PREFIX), {})
        url = source.url(PREFIX)
        return cls(source, url, url, source.settings())

    def push(self, directory: Path, **options: Any) -> SnapshotInfo:
        """Push ``directory`` to this root."""
        return push_snapshot(directory, self.push_url, **{**self.settings, **options})

    def storage(self, **options: Any) -> SnapshotStorage:
        """A SnapshotStorage pulling from this root with its settings."""
        return SnapshotStorage(self.pull_url, **{**self.settings, **options})

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` below the root, behind runner-storage's back."""
        self.source.put(f"{PREFIX}/{key}", data)

    def delete(self, key: str) -> None:
        """Delete ``key`` below the root, behind runner-storage's back."""
        self.source.delete(f"{PREFIX}/{key}")

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` as a blob by hand; return its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        self.put(blob_key(digest), data)
        return digest

    def put_manifest(self, document: Mapping[str, Any]) -> str:
        """Store ``document`` as a canonical manifest named by its own sha256; return the id."""
        data = canonical(document)
        snapshot_id = hashlib.sha256(data).hexdigest()
        self.put(manifest_key(snapshot_id), data)
        return snapshot_id

    def set_ref(self, snapshot_id: str, name: str = "latest") -> None:
        """Point ``name`` at ``snapshot_id`` by hand."""
        self.put(ref_key(name), f"{snapshot_id}\n".encode())

    def object_keys(self) -> list[str]:
        """Every object key below the root, sorted, asked of the store itself."""
        source, prefix = self.source, f"{PREFIX}/"
        if isinstance(source, S3Source | GCSSource):
            found = source.server.list_keys(source.bucket, prefix)
        elif isinstance(source, AzureSource):
            found = source.server.list_names(source.container, prefix)
        elif isinstance(source, MemorySource):
            top = f"/{source.top}/"
            found = [key.removeprefix(top) for key in source.fs.store if key.startswith(top)]
        else:
            folder = self.folder()
            found = [
                f"{prefix}{path.relative_to(folder).as_posix()}"
                for path in folder.rglob("*")
                if not path.is_dir()
            ]
        return sorted(key.removeprefix(prefix) for key in found if key.startswith(prefix))

    def writes(self) -> list[str] | None:
        """Write requests (PUT, POST, DELETE) the server saw since ``reset_counts()``.

        None for the kinds whose server keeps no log (file, HTTP's folder, memory): compare
        :meth:`stamps` instead.
        """
        source = self.source
        if isinstance(source, S3Source | GCSSource):
            return [
                f"{r.method} {r.path}"
                for r in source.server.requests()
                if r.method in ("PUT", "POST", "DELETE")
            ]
        if isinstance(source, AzureSource) and source.log is not None:
            return [f"{m} {url}" for m, url in source.log.seen if m in ("PUT", "POST", "DELETE")]
        return None

    def stamps(self) -> dict[str, object]:
        """What changes when an object is written again, even with the same bytes.

        A local file's inode and modification time (a write is a new file renamed over
        it), a memory object's identity; empty for the kinds :meth:`writes` covers.
        """
        source = self.source
        if isinstance(source, MemorySource):
            top = f"/{source.top}/{PREFIX}/"
            return {k: id(v) for k, v in source.fs.store.items() if k.startswith(top)}
        if isinstance(source, HTTPSource | FileSource):
            return {
                path.as_posix(): (path.stat().st_ino, path.stat().st_mtime_ns)
                for path in self.folder().rglob("*")
                if path.is_file()
            }
        return {}

    def folder(self) -> Path:
        """The local folder of the root (file and HTTP kinds only)."""
        if isinstance(self.source, HTTPSource):
            return self.source.server.root / PREFIX
        if isinstance(self.source, FileSource):
            return self.source.root / PREFIX
        raise TypeError(f"a {self.source.kind} root has no local folder")

    def requests(self) -> int | None:
        """Requests the server answered since ``reset_counts()``; None without a server."""
        if isinstance(self.source, HTTPSource):
            with self.source.server.lock:
                return len(self.source.server.requests)
        return self.source.requests()

    def reads(self) -> list[str] | None:
        """Keys below the root read since the source's ``reset_counts()``."""
        found = self.source.reads()
        if found is None:
            return None
        prefix = f"{PREFIX}/"
        return sorted(path.removeprefix(prefix) for path in found if path.startswith(prefix))


def canonical(document: Mapping[str, Any]) -> bytes:
    """``document`` as the format's canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def manifest_document(
    files: list[dict[str, Any]] | None = None, symlinks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A manifest document as a push writes it, with ``files`` and ``symlinks`` as given."""
    return {
        "format": "runner-storage-snapshot",
        "version": 1,
        "created_at": "2024-01-01T00:00:00.000000Z",
        "files": files or [],
        "symlinks": symlinks or [],
        "provenance": {},
    }


def file_record(path: str, data: bytes, mode: int = 0o644, **override: Any) -> dict[str, Any]:
    """A manifest's record of a file holding ``data``; ``override`` replaces fields."""
    record: dict[str, Any] = {
        "path": path,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "mode": mode,
    }
    record.update(override)
    return record


def write_tree(
    directory: Path,
    files: Mapping[str, bytes],
    *,
    executable: tuple[str, ...] = (),
    links: Mapping[str, str] | None = None,
) -> Path:
    """Create ``directory`` with ``files`` (mode 0644, or 0755 if listed) and ``links``."""
    directory.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, 0o755 if path in executable else 0o644)
    for path, link_target in (links or {}).items():
        link = directory / path
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link_target, link)
    return directory


#: What :func:`describe` says of a tree: ``("file", bytes, mode)`` or ``("link", target)``.
Entry = tuple[Any, ...]


def describe(root: Path) -> dict[str, Entry]:
    """Every file (bytes and permission bits) and symlink (target) under ``root``.

    ``root`` itself is resolved (it is the published symlink); nothing below is followed.
    """
    real = root.resolve()
    found: dict[str, Entry] = {}
    for directory, dirnames, filenames in os.walk(real):
        for name in (*dirnames, *filenames):
            path = Path(directory, name)
            relative = path.relative_to(real).as_posix()
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_file():
                found[relative] = ("file", path.read_bytes(), path.stat().st_mode & 0o7777)
    return dict(sorted(found.items()))


def pull(storage: SnapshotStorage) -> SyncResult:
    """Run one pull of ``storage``."""
    return anyio.run(storage.pull_code)
