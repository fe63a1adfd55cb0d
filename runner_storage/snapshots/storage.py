"""SnapshotStorage: follow a ref (or pin an id) of a snapshot root, publish atomically.

A pull of a ref reads ``refs/<name>``, one small GET, and stops there when that id is
published; a pull pinned by ``snapshot=`` makes no request at all once published.
Otherwise the manifest is fetched and checked against its id, files whose content a kept
version already holds are hard-linked from it, only the other blobs are downloaded, each
checked (size and sha256) before it is placed, and the tree is published through
:class:`~runner_storage.publish.Publisher`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from runner_storage.exceptions import (
    ConfigurationError,
    NotFoundError,
    SourceError,
    disk_error,
)
from runner_storage.fs.paths import destination_name
from runner_storage.fs.protocols import required_package
from runner_storage.fs.transfer import check_concurrency
from runner_storage.publish import Backend, Materialized, PreviousVersion
from runner_storage.publish.layout import SourceLayout
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.publish.tree import link_or_copy
from runner_storage.secrets import public_url, secret_values
from runner_storage.snapshots.format import (
    EXECUTABLE_MODE,
    MAX_MANIFEST_BYTES,
    REGULAR_MODE,
    FileRecord,
    SnapshotManifest,
    blob_key,
    check_ref_name,
    check_snapshot_id,
    manifest_key,
    parse_manifest,
    parse_ref,
    ref_key,
)
from runner_storage.snapshots.store import SnapshotStore, root_url
from runner_storage.steps.emit import with_placeholders
from runner_storage.types import Revision, fingerprint

__all__ = [
    "DEFAULT_TRANSFER_CONCURRENCY",
    "PULL_SNAPSHOT_STEP",
    "SnapshotBackend",
    "SnapshotStorage",
]

DEFAULT_TRANSFER_CONCURRENCY = 16
#: The pull step of a snapshot: ours, runnable by Prefect's worker.
PULL_SNAPSHOT_STEP = "runner_storage.deployments.steps.pull_snapshot"


class SnapshotStorage(ManagedStorage):
    """Pull a snapshot (the README's snapshot format) and publish it atomically.

    Follows ``ref`` (``latest`` by default), or stays on the snapshot ``snapshot`` names:
    the revision is the snapshot id. The destination is ``BASE/<netloc>/<path>`` of the
    root, as for :class:`~runner_storage.RemoteStorage`, unless ``name`` is given.

    Example::

        storage = SnapshotStorage("s3://my-bucket/code", ref="prod")
        storage.set_base_path(Path("/srv/code"))
        await storage.pull_code()   # /srv/code/my-bucket/code -> the tree "prod" names

    Args:
        root: the snapshot root: an fsspec URL (s3, gs, az, file, memory, http(s)) or a
            local path.
        ref: the ref to follow; ignored when ``snapshot`` is given.
        snapshot: a snapshot id to pin (64 hex digits).
        pull_interval: seconds between pulls; None pulls once.
        keep_versions: how many published versions to keep.
        grace_period: seconds a retired version is kept at least, for running work.
        transfer_concurrency: the most blobs downloaded at once.
        name: the destination name under the base path.
        **settings: settings of the root's fsspec filesystem (secrets resolved per pull).

    Raises:
        ConfigurationError: the root, ref, snapshot id or an option is bad.
        MissingDependencyError: the protocol needs an extra that is not installed.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        ref: str = "latest",
        snapshot: str | None = None,
        pull_interval: float | None = 60,
        *,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
        transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        self._root, self._protocol = root_url(root, user="SnapshotStorage")
        self._ref = check_ref_name(ref)
        self._snapshot = None if snapshot is None else check_snapshot_id(snapshot)
        check_concurrency(transfer_concurrency)
        self._settings = settings
        self._transfer_concurrency = transfer_concurrency
        super().__init__(
            name=name or destination_name(self._root),
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    @property
    def root(self) -> str:
        """The root URL (a local path given becomes a ``file://`` URL)."""
        return self._root

    @property
    def ref(self) -> str:
        """The ref followed (when no snapshot is pinned)."""
        return self._ref

    @property
    def snapshot(self) -> str | None:
        """The pinned snapshot id, if any."""
        return self._snapshot

    def to_pull_step(self) -> dict[str, Any]:
        """A ``pull_snapshot`` step pinned to one snapshot id, secrets as placeholders.

        The id is the pinned one, else the published one, else what the ref names now
        (one read of the ref). ``requires`` names runner-storage and the protocol's fsspec
        package (``s3fs``...), as Prefect imports them to tell whether to install them.

        Raises:
            ConfigurationError: a secret setting is plain text, or the root holds a password.
            SourceError: the ref had to be read and could not be.
        """
        if urlsplit(self._root).password:
            raise ConfigurationError(
                "the root URL holds a password, which would be written into the pull step:"
                " pass credentials as settings with Secret.from_env(...) instead"
            )
        settings = with_placeholders(self._settings, path="settings", protocol=self._protocol)
        snapshot = self._snapshot or self._published() or self._backend().read_ref()
        package = required_package(self._protocol)
        step: dict[str, Any] = {
            # Importable names: Prefect imports each to decide whether to pip install it
            # (``runner-storage[s3]`` never imports, so it would install at every run).
            "requires": ["runner-storage", package] if package else "runner-storage",
            "root": self._root,
            "snapshot": snapshot,
            **settings,
        }
        return {PULL_SNAPSHOT_STEP: step}

    def __repr__(self) -> str:
        pin = f"snapshot={self._snapshot!r}" if self._snapshot else f"ref={self._ref!r}"
        return f"SnapshotStorage(root={public_url(self._root)!r}, {pin})"

    def _published(self) -> str | None:
        state = self.publisher.state()
        return state.revision if state is not None and state.version else None

    def _identity(self) -> tuple[Any, ...]:
        return (self._root, self._ref, self._snapshot, self._settings)

    def _source_label(self) -> str:
        # The ref or pin is part of the source: switching it is not a conflict of sources,
        # but state.json shows what is followed.
        return public_url(self._root)

    def _secret_values(self) -> list[str]:
        return secret_values(self._settings, protocol=self._protocol)

    def backend(self) -> Backend:
        """A backend for one pull: read the ref (or take the pin), then fetch what is new."""
        return self._backend()

    def _backend(self) -> SnapshotBackend:
        return SnapshotBackend(
            store=SnapshotStore(self._root, self._protocol, self._settings, self.redact),
            ref=self._ref,
            snapshot=self._snapshot,
            concurrency=self._transfer_concurrency,
            layout=SourceLayout(self._storage_base_path, self.name),
        )


@dataclass(frozen=True)
class SnapshotBackend:
    """One pull of a snapshot: the ref (or the pin), then the manifest and missing blobs.

    Attributes:
        store: the root.
        ref: the ref to read when no snapshot is pinned.
        snapshot: the pinned id, or None.
        concurrency: the most blobs downloaded at once.
        layout: the destination's layout, to find content kept versions already hold.
    """

    store: SnapshotStore
    ref: str
    snapshot: str | None
    concurrency: int
    layout: SourceLayout

    async def resolve(self) -> Revision:
        """The snapshot id: the pin (no request), or the ref's content (one read).

        Raises:
            NotFoundError: the ref does not exist.
            SourceError: the ref does not hold an id, or the store failed.
        """
        snapshot = self.snapshot
        if snapshot is None:
            snapshot = await anyio.to_thread.run_sync(self.read_ref, abandon_on_cancel=True)
        return Revision(id=snapshot, digest=fingerprint("snapshot", snapshot))

    def read_ref(self) -> str:
        """Read the ref once (blocking) and return the id it holds.

        Raises:
            NotFoundError: the ref does not exist.
            SourceError: the ref does not hold an id, or the store failed.
        """
        where = self.store.where
        data = self.store.read(
            ref_key(self.ref),
            missing=(
                f"there is no ref {self.ref!r} at {where}: push a snapshot first"
                f" (runner-storage push DIRECTORY {where} --ref {self.ref})"
            ),
        )
        return parse_ref(data, name=self.ref, where=where)

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Build the snapshot's tree in ``staging``: link what is kept, download the rest.

        Raises:
            NotFoundError: the snapshot or one of its blobs is not in the store.
            SourceError: the manifest does not match its id, or a blob its digest or size.
            UnsafeContentError: the manifest is hostile (see :func:`parse_manifest`).
            PublishError: the local disk failed.
        """
        if revision is None:  # resolve() always returns one; kept for the protocol
            revision = await self.resolve()
        build = _Build(self, revision.id, staging)
        cancelled = threading.Event()
        try:
            await anyio.to_thread.run_sync(build.run, cancelled, abandon_on_cancel=True)
        finally:
            cancelled.set()
        return Materialized(
            revision,
            files_fetched=build.fetched_files,
            bytes_fetched=build.fetched_bytes,
            manifest=build.manifest.to_json() if build.manifest else None,
        )


class _Build:
    """Building one snapshot's tree in a staging directory (blocking; in a worker thread)."""

    def __init__(self, backend: SnapshotBackend, snapshot_id: str, staging: Path) -> None:
        self.backend = backend
        self.id = snapshot_id
        self.staging = staging
        self.label = f"snapshot {snapshot_id[:12]} at {backend.store.where}"
        self.manifest: SnapshotManifest | None = None
        self.fetched_files = 0
        self.fetched_bytes = 0

    def run(self, cancelled: threading.Event) -> None:
        manifest = self._manifest()
        self.manifest = manifest
        placed: dict[tuple[str, bool], Path] = {}
        kept = _kept_content(self.backend.layout)
        fetch: dict[str, list[FileRecord]] = {}
        try:
            paths = [r.path for r in manifest.files] + [r.path for r in manifest.symlinks]
            for directory in sorted({PurePosixPath(path).parent for path in paths}):
                (self.staging / directory).mkdir(parents=True, exist_ok=True)
            for record in manifest.files:
                source = placed.get((record.sha256, record.executable)) or _kept(kept, record)
                if source is not None:
                    _link_or_copy(source, self.staging / record.path, record)
                    placed.setdefault(
                        (record.sha256, record.executable), self.staging / record.path
                    )
                else:
                    fetch.setdefault(record.sha256, []).append(record)
        except OSError as exc:
            raise disk_error(f"cannot build the new version in {self.staging}", exc) from None
        if cancelled.is_set():
            return
        self._download(fetch)
        try:
            for link in manifest.symlinks:
                os.symlink(link.target, self.staging / link.path)
        except OSError as exc:
            raise disk_error(f"cannot build the new version in {self.staging}", exc) from None

    def _manifest(self) -> SnapshotManifest:
        store = self.backend.store
        data = store.read(
            manifest_key(self.id),
            missing=(
                f"{self.label} does not exist (no snapshots/{self.id}.json): check the id,"
                " or push the tree again"
            ),
        )
        if len(data) > MAX_MANIFEST_BYTES:
            raise SourceError(
                f"{self.label}: its manifest is larger than {MAX_MANIFEST_BYTES} bytes"
            )
        return parse_manifest(data, snapshot_id=self.id, where=store.where)

    def _download(self, fetch: dict[str, list[FileRecord]]) -> None:
        if not fetch:
            return
        temporary = self.staging / f".runner-storage-download-{uuid.uuid4().hex}"
        shas = sorted(fetch)
        pairs = [(blob_key(sha), str(temporary / str(i))) for i, sha in enumerate(shas)]
        try:
            temporary.mkdir()
        except OSError as exc:
            raise disk_error(f"cannot create {temporary}", exc) from None
        try:
            self.backend.store.download(pairs, self.backend.concurrency, self.staging)
        except NotFoundError:
            raise NotFoundError(
                f"{self.label} names a blob that is not in the store"
                f"{self._which_missing(shas)}: the store is damaged (a blob deleted by hand?);"
                " push the tree again (nothing was published)"
            ) from None
        for sha, (_, local) in zip(shas, pairs, strict=True):
            self._check_blob(sha, fetch[sha][0].size, Path(local))
        try:
            for sha, (_, local) in zip(shas, pairs, strict=True):
                first, *others = fetch[sha]
                target = self.staging / first.path
                os.chmod(local, EXECUTABLE_MODE if first.executable else REGULAR_MODE)
                os.rename(local, target)
                for record in others:
                    _link_or_copy(target, self.staging / record.path, record)
                self.fetched_files += 1
                self.fetched_bytes += first.size
            temporary.rmdir()
        except OSError as exc:
            raise disk_error(f"cannot place downloads in {self.staging}", exc) from None

    def _check_blob(self, sha256: str, size: int, local: Path) -> None:
        digest = hashlib.sha256()
        got = 0
        try:
            with open(local, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                    got += len(chunk)
        except OSError as exc:
            raise disk_error(f"cannot read the download {local}", exc) from None
        if got != size or digest.hexdigest() != sha256:
            raise SourceError(
                f"{self.label}: blob {sha256[:12]} is corrupt (got {got} bytes, sha256"
                f" {digest.hexdigest()[:12]}; expected {size} bytes): the store is damaged;"
                " push the tree again (nothing was published)"
            )

    def _which_missing(self, shas: list[str]) -> str:
        store = self.backend.store
        if store.read_only:
            return ""
        with contextlib.suppress(SourceError):
            present = {listed.key.rsplit("/", 1)[-1] for listed in store.list("blobs/sha256")}
            missing = [sha for sha in shas if sha not in present]
            if missing:
                return f" ({blob_key(missing[0])})"
        return ""


def _kept_content(layout: SourceLayout) -> dict[str, list[tuple[Path, str]]]:
    """Content kept versions hold, by sha256: ``(version folder, path)`` pairs, newest first.

    Read from each kept version's manifest, which the publisher keeps beside it; a
    manifest that cannot be read just offers nothing.
    """
    found: dict[str, list[tuple[Path, str]]] = {}
    try:
        manifests = sorted(layout.manifests.iterdir(), key=_mtime, reverse=True)
    except OSError:
        return found
    for path in manifests:
        version = layout.version(path.name.removesuffix(".json"))
        if not version.is_dir():
            continue
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            files = document["files"]
            for item in files:
                found.setdefault(str(item["sha256"]), []).append((version, str(item["path"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _kept(kept: Mapping[str, list[tuple[Path, str]]], record: FileRecord) -> Path | None:
    """A kept file with the record's content: checked (a regular file of its size), not trusted."""
    for version, path in kept.get(record.sha256, ()):
        candidate = version / path
        try:
            info = os.lstat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size == record.size:
            return candidate
    return None


def _link_or_copy(source: Path, target: Path, record: FileRecord) -> None:
    """Hard-link ``source`` at ``target`` when its mode is the record's, else copy it.

    Links share one mode, so a file wanted with another mode (the same content, once
    executable and once not) is a copy of its own.
    """
    mode = EXECUTABLE_MODE if record.executable else REGULAR_MODE
    if stat.S_IMODE(os.lstat(source).st_mode) == mode:
        link_or_copy(source, target)
        return
    shutil.copyfile(source, target)
    os.chmod(target, mode)
