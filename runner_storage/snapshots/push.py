"""Pushing a directory as a snapshot: hash, upload only the missing blobs, manifest, ref.

Writes happen in the format's order (blobs, then the manifest, then the ref), each one
atomic, so whatever is killed when, a ref only ever points at a complete snapshot. What
the store already has is found with one listing of ``blobs/``, never a request per file,
and a tree equal to the one the ref points at uploads nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio.to_thread

from runner_storage.exceptions import ConfigurationError, SourceError
from runner_storage.fs.ignore import IgnoreRules, LocalFile
from runner_storage.fs.transfer import check_concurrency
from runner_storage.secrets import redact, secret_values
from runner_storage.snapshots.format import (
    EXECUTABLE_MODE,
    REGULAR_MODE,
    FileRecord,
    LinkRecord,
    SnapshotManifest,
    blob_key,
    check_ref_name,
    manifest_key,
    parse_manifest,
    parse_ref,
    ref_key,
)
from runner_storage.snapshots.provenance import git_provenance
from runner_storage.snapshots.store import SnapshotStore, root_url

__all__ = [
    "DEFAULT_PUSH_CONCURRENCY",
    "Progress",
    "SnapshotInfo",
    "apush_snapshot",
    "push_snapshot",
]

#: The most blobs uploaded at once.
DEFAULT_PUSH_CONCURRENCY = 16

#: Told how a push is going: ``(phase, done, total)``; phase is ``hashing`` (files) or
#: ``uploading`` (bytes).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SnapshotInfo:
    """What a push did.

    Attributes:
        id: the snapshot id (the sha256 of its manifest).
        ref: the ref now pointing at it.
        root: the root, as messages show it (no credentials).
        files: how many files the snapshot holds.
        bytes_uploaded: bytes of blobs uploaded by this push.
        blobs_uploaded: blobs uploaded by this push (0 when the store had them all).
        manifest_uploaded: whether a new manifest was written (False when the ref already
            pointed at the same tree, or at another snapshot of it).
        ref_moved: whether the ref was written.
    """

    id: str
    ref: str
    root: str
    files: int
    bytes_uploaded: int
    blobs_uploaded: int
    manifest_uploaded: bool = True
    ref_moved: bool = True


def push_snapshot(
    directory: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    ref: str = "latest",
    ignore_file: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    concurrency: int = DEFAULT_PUSH_CONCURRENCY,
    **settings: Any,
) -> SnapshotInfo:
    """Push ``directory`` to the snapshot root ``root`` and point ``ref`` at it.

    Files are kept or left out by ``ignore_file`` (gitignore syntax), else the directory's
    ``.prefectignore``; ``.git`` is always left out. Symlinks inside the tree are kept as
    symlinks; one that leaves the tree is refused (ignore it, or remove it). Provenance
    (commit, branch, dirty, origin without credentials) is recorded when the directory is
    inside a git checkout.

    Example::

        info = push_snapshot("./project", "s3://my-bucket/code", ref="prod")
        print(info.id)  # pin a deployment to it: SnapshotStorage(root, snapshot=info.id)

    Args:
        directory: the project folder to push.
        root: the snapshot root: any fsspec URL that can be listed and written (s3, gs,
            az, file, memory...), or a local path.
        ref: the ref to point at the snapshot.
        ignore_file: the ignore file to use instead of the tree's ``.prefectignore``.
        progress: told how the push is going (see :data:`Progress`).
        concurrency: the most blobs uploaded at once.
        **settings: settings of the root's fsspec filesystem (secrets may be
            :class:`~runner_storage.Secret`).

    Raises:
        ConfigurationError: the directory, root, ref or ignore file is bad, or the root is
            read-only (http).
        UnsafeContentError: a kept entry cannot be pushed safely (a symlink out of the tree,
            a special file, an unsafe name); the message names it.
        SourceError: the store failed, or a file changed while it was being pushed.
    """
    return _Push(
        directory,
        root,
        ref=ref,
        ignore_file=ignore_file,
        progress=progress,
        concurrency=concurrency,
        settings=settings,
    ).run()


async def apush_snapshot(
    directory: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    ref: str = "latest",
    ignore_file: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    concurrency: int = DEFAULT_PUSH_CONCURRENCY,
    **settings: Any,
) -> SnapshotInfo:
    """:func:`push_snapshot`, run in a worker thread so an event loop keeps running."""
    push = _Push(
        directory,
        root,
        ref=ref,
        ignore_file=ignore_file,
        progress=progress,
        concurrency=concurrency,
        settings=settings,
    )
    return await anyio.to_thread.run_sync(push.run)


class _Push:
    """One push: the checks up front, then :meth:`run` in the format's order."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        root: str | os.PathLike[str],
        *,
        ref: str,
        ignore_file: str | os.PathLike[str] | None,
        progress: Progress | None,
        concurrency: int,
        settings: dict[str, Any],
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigurationError(
                f"{os.fspath(directory)} is not a directory: give the project folder to push"
            )
        check_concurrency(concurrency, what="concurrency")
        self.ref = check_ref_name(ref)
        self.rules = IgnoreRules.for_tree(self.directory, ignore_file)
        url, protocol = root_url(root, user="push_snapshot")
        values = secret_values(settings, protocol=protocol)
        self.store = SnapshotStore(url, protocol, settings, lambda text: redact(text, values))
        self.store.check_writable("push_snapshot")
        self.progress = progress
        self.concurrency = concurrency

    def run(self) -> SnapshotInfo:
        entries = self._walk()
        files, locals_by_sha = self._hash([e for e in entries if e.link is None])
        symlinks = tuple(LinkRecord(e.path, e.link) for e in entries if e.link is not None)
        if not files and not symlinks:
            raise ConfigurationError(
                f"nothing to push in {self.directory}: every file is ignored or the folder is empty"
            )
        provenance = git_provenance(self.directory)
        store = self.store
        current = self._current()
        candidate = SnapshotManifest(files, symlinks, "", provenance)
        # Even for the tree the ref names: a blob lost or damaged since is uploaded again,
        # so pushing again repairs a store.
        missing = self._missing(locals_by_sha)
        uploaded = sum(size for _, size, _ in missing)
        total = [0]

        def uploaded_bytes(size: int) -> None:
            total[0] += size
            if self.progress is not None:
                self.progress("uploading", total[0], uploaded)

        store.write_all(
            [(blob_key(sha), self._reader(sha, size, local)) for sha, size, local in missing],
            self.concurrency,
            uploaded_bytes,
        )
        if current is not None and current[1].same_tree(candidate):
            # The ref already points at this tree: no manifest to write, nor the ref.
            return self._info(
                current[0], files, uploaded, len(missing), manifest=False, moved=False
            )
        manifest = SnapshotManifest(files, symlinks, _now(), provenance)
        store.write(manifest_key(manifest.id), manifest.to_bytes())
        store.write(ref_key(self.ref), f"{manifest.id}\n".encode("ascii"))
        return self._info(manifest.id, files, uploaded, len(missing), manifest=True, moved=True)

    def _info(
        self,
        snapshot_id: str,
        files: tuple[FileRecord, ...],
        uploaded: int,
        blobs: int,
        *,
        manifest: bool,
        moved: bool,
    ) -> SnapshotInfo:
        return SnapshotInfo(
            id=snapshot_id,
            ref=self.ref,
            root=self.store.where,
            files=len(files),
            bytes_uploaded=uploaded,
            blobs_uploaded=blobs,
            manifest_uploaded=manifest,
            ref_moved=moved,
        )

    def _walk(self) -> list[LocalFile]:
        try:
            return self.rules.walk(self.directory, symlinks=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read {exc.filename or self.directory}: {exc.strerror or exc}; make"
                " the folder readable, or ignore that path"
            ) from None

    def _hash(self, entries: list[LocalFile]) -> tuple[tuple[FileRecord, ...], dict[str, _Content]]:
        """Each file's record, and one local file per distinct content (for uploads)."""
        records = []
        by_sha: dict[str, _Content] = {}
        for index, entry in enumerate(entries, 1):
            sha256, md5, size, executable = _digest(entry)
            mode = EXECUTABLE_MODE if executable else REGULAR_MODE
            records.append(FileRecord(entry.path, sha256, size, mode))
            by_sha.setdefault(sha256, _Content(size, md5, entry.local))
            if self.progress is not None:
                self.progress("hashing", index, len(entries))
        return tuple(records), by_sha

    def _current(self) -> tuple[str, SnapshotManifest] | None:
        """The snapshot the ref points at now; None for no ref, or a damaged or dangling one.

        A damaged ref or manifest is rewritten by this push; a store that fails is an error.
        """
        store = self.store
        data = store.read_if_present(ref_key(self.ref))
        if data is None:
            return None
        try:
            snapshot_id = parse_ref(data, name=self.ref, where=store.where)
        except SourceError:
            return None
        manifest = store.read_if_present(manifest_key(snapshot_id))
        if manifest is None:
            return None
        try:
            return snapshot_id, parse_manifest(manifest, snapshot_id=snapshot_id, where=store.where)
        except SourceError:  # UnsafeContentError included
            return None

    def _missing(self, by_sha: dict[str, _Content]) -> list[tuple[str, int, Path]]:
        """The blobs to upload: those the store lacks, or holds with other content.

        Other content: another size, or another MD5 where the listing promises one (S3,
        GCS, Azure), so a damaged blob is replaced by the next push of its file.
        """
        present = {
            listed.key.rsplit("/", 1)[-1]: listed for listed in self.store.list("blobs/sha256")
        }
        wanted = []
        for sha, content in sorted(by_sha.items()):
            listed = present.get(sha)
            if (
                listed is None
                or listed.size != content.size
                or (listed.md5 is not None and listed.md5 != content.md5)
            ):
                wanted.append((sha, content.size, content.local))
        return wanted

    def _reader(self, sha256: str, size: int, local: Path) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                data = local.read_bytes()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read {local}: {exc.strerror or exc}; it changed while pushing"
                ) from None
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
                raise SourceError(
                    f"{local} changed while it was being pushed; push again once it is"
                    " written (nothing points at the new snapshot)"
                )
            return data

        return read


@dataclass(frozen=True)
class _Content:
    """One distinct content of the tree: its size, MD5, and a local file holding it."""

    size: int
    md5: str
    local: Path


def _digest(entry: LocalFile) -> tuple[str, str, int, bool]:
    """The sha256 and MD5 of a file, its size, and whether it is executable."""
    digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    try:
        with open(entry.local, "rb") as handle:
            executable = bool(stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o111)
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                md5.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read {entry.path}: {exc.strerror or exc}; make it readable, or ignore it"
        ) from None
    return digest.hexdigest(), md5.hexdigest(), size, executable


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
