"""The on-disk contract: immutable versions, one atomic symlink swap, retention, lock, state.

For a source ``NAME`` under ``BASE``::

    BASE/NAME                      symlink -> .runner-storage/NAME/versions/VERSION
    BASE/.runner-storage/NAME/
      versions/VERSION/            complete trees, never modified once published
      staging/                     trees being built; removed on the next start if killed
      state.json                   what is published and how the last attempt went
      lock                         one writer per NAME, across processes (flock)

A backend only resolves revisions and materialises trees (:class:`Backend`); everything
else lives here, once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anyio
import anyio.to_thread

from runner_storage._lock import file_lock
from runner_storage.base import Revision, SyncResult
from runner_storage.exceptions import (
    ConfigurationError,
    DestinationConflictError,
    PublishError,
    RunnerStorageError,
    UnsafeContentError,
    disk_error,
)
from runner_storage.state import METADATA_DIR, SourceState, age_seconds, read_state, utcnow

__all__ = [
    "METADATA_DIR",
    "Backend",
    "Materialized",
    "PreviousVersion",
    "Publisher",
    "Verifier",
    "disk_error",
    "validate_name",
]

DEFAULT_KEEP = 3
DEFAULT_GRACE_SECONDS = 600.0


@dataclass(frozen=True)
class Materialized:
    """A tree a backend built in the staging directory, and what it cost.

    ``manifest`` is optional JSON-serialisable data about the tree (an object listing)
    that the publisher keeps beside the version and hands back on the next pull.
    """

    revision: Revision
    files_fetched: int = 0
    bytes_fetched: int = 0
    manifest: Any = None


@dataclass(frozen=True)
class PreviousVersion:
    """The published version a new one may reuse files from, with its manifest."""

    path: Path
    manifest: Any = None


#: A pre-publish check: awaited with the new tree and its revision; raising stops the publish.
Verifier = Callable[[Path, Revision], Awaitable[None]]


class Backend(Protocol):
    """What a storage supplies to the publisher: resolve, then materialise."""

    async def resolve(self) -> Revision | None:
        """Resolve the upstream revision cheaply, or None if only fetching can tell."""
        ...

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Build the complete tree for ``revision`` in the empty directory ``staging``.

        ``previous`` is the published version (to hard-link unchanged files from), or None.
        Files in ``previous`` must never be modified: replace, do not write through links.
        """
        ...


def validate_name(name: str) -> str:
    """Check that a destination name stays inside the base path; return it normalised.

    Raises:
        ConfigurationError: empty, absolute, ``..``, hidden or control characters.
    """
    if not name or not name.strip():
        raise ConfigurationError("the destination name is empty: give the source a name")
    if "\0" in name or any(ord(c) < 32 for c in name) or "\\" in name:
        raise ConfigurationError(
            f"destination name {name!r} contains control characters or backslashes: use a"
            " plain relative name such as 'flows' or 'team/flows'"
        )
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", ".") for part in path.parts):
        raise ConfigurationError(
            f"destination name {name!r} would leave the base path: use a relative name"
            " without '.' or '..'"
        )
    if path.parts[0].startswith((".", "-")):
        raise ConfigurationError(
            f"destination name {name!r} starts with '.' or '-': those names are reserved;"
            " choose another name"
        )
    return str(path)


class Publisher:
    """Publishes versions of one source under a base path, per the on-disk contract.

    Args:
        base: the base path (``BASE``).
        name: the destination name (``NAME``), possibly with slashes.
        source: the redacted description of the source, recorded in ``state.json`` and
            compared on every pull so one destination never mixes two sources.
        keep: how many newest versions to keep.
        grace_seconds: never delete a version that was live less than this long ago.
        redact: applied to every error message written to ``state.json``.
    """

    def __init__(
        self,
        base: Path,
        name: str,
        *,
        source: str,
        keep: int = DEFAULT_KEEP,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        redact: Callable[[str], str] = str,
    ) -> None:
        if keep < 1:
            raise ConfigurationError(f"keep must be at least 1, got {keep}")
        if grace_seconds < 0:
            raise ConfigurationError(f"grace period must not be negative, got {grace_seconds}")
        self.base = base
        self.name = validate_name(name)
        self.source = source
        self.keep = keep
        self.grace_seconds = grace_seconds
        self._redact = redact

    @property
    def link(self) -> Path:
        """``BASE/NAME``: the symlink runners use."""
        return self.base / self.name

    @property
    def root(self) -> Path:
        """``BASE/.runner-storage/NAME``: everything else about this source."""
        return self.base / METADATA_DIR / self.name

    @property
    def versions(self) -> Path:
        """The directory of complete, immutable versions."""
        return self.root / "versions"

    @property
    def staging(self) -> Path:
        """Where versions are built; emptied at the start of every pull."""
        return self.root / "staging"

    def state(self) -> SourceState | None:
        """The current ``state.json``, if any."""
        return read_state(self.base, self.name)

    def current_version(self) -> Path | None:
        """The version directory ``BASE/NAME`` points to, if it is one of ours."""
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        resolved = Path(os.path.normpath(self.link.parent / target))
        if resolved.parent != self.versions or not resolved.is_dir():
            return None
        return resolved

    async def sync(self, backend: Backend, *, verify: Verifier | None = None) -> SyncResult:
        """Pull through ``backend`` and publish a new version if the revision changed.

        Args:
            backend: resolves and materialises the source.
            verify: awaited with the complete new tree and its revision before it is
                published; raising stops the publish (a pre-publish check).

        Raises:
            RunnerStorageError: anything that went wrong; the published tree is untouched.
        """
        started = time.monotonic()
        async with self._locked():
            state = self._checked_state()
            await anyio.to_thread.run_sync(self._remove_leftovers)
            current = self.current_version()
            try:
                result = await self._pull(backend, state, current, started, verify)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._remove_leftovers)
                    if isinstance(exc, Exception):
                        self._record_failure(state, exc)
                raise
        return result

    async def _pull(
        self,
        backend: Backend,
        state: SourceState,
        current: Path | None,
        started: float,
        verify: Verifier | None,
    ) -> SyncResult:
        revision = await backend.resolve()
        if revision is not None and self._is_published(state, current, revision):
            return self._record_unchanged(state, revision, started)
        files = size = 0
        if revision is None or not (self.versions / revision.version_name).is_dir():
            staging = self.staging / uuid.uuid4().hex
            await anyio.to_thread.run_sync(_make_dirs, staging)
            built = await backend.materialize(revision, staging, self._previous(current))
            revision, files, size = built.revision, built.files_fetched, built.bytes_fetched
            if self._is_published(state, current, revision):
                # Only fetching could tell (blocks): drop the identical copy now, not at the
                # next pull, so an unchanged source never holds a second tree on disk.
                await anyio.to_thread.run_sync(shutil.rmtree, staging, True)
                return self._record_unchanged(state, revision, started)
            await anyio.to_thread.run_sync(check_contained, staging)
            if verify is not None:
                await verify(staging, revision)
            target = self.versions / revision.version_name
            if target.is_dir():
                # The same tree was published before and is still kept: reuse it.
                await anyio.to_thread.run_sync(shutil.rmtree, staging)
            else:
                self._write_manifest(revision.version_name, built.manifest)
                _rename(staging, target)
        with anyio.CancelScope(shield=True):
            self._swap_link(self.versions / revision.version_name)
            self._record_published(state, revision)
            await anyio.to_thread.run_sync(self._apply_retention, state)
        return SyncResult(revision.id, True, files, size, time.monotonic() - started)

    @property
    def manifests(self) -> Path:
        """Backend manifests of kept versions, one JSON file per version."""
        return self.root / "manifests"

    def _previous(self, current: Path | None) -> PreviousVersion | None:
        if current is None:
            return None
        try:
            text = (self.manifests / f"{current.name}.json").read_text(encoding="utf-8")
            manifest = json.loads(text)
        except (OSError, ValueError):
            manifest = None
        return PreviousVersion(current, manifest)

    def _write_manifest(self, version: str, manifest: Any) -> None:
        if manifest is None:
            return
        path = self.manifests / f"{version}.json"
        try:
            self.manifests.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
        except OSError as exc:
            raise disk_error(f"cannot write {path}", exc) from None

    @staticmethod
    def _is_published(state: SourceState, current: Path | None, revision: Revision) -> bool:
        return (
            current is not None
            and current.name == state.version
            and state.digest == revision.digest
        )

    def _locked(self) -> contextlib.AbstractAsyncContextManager[None]:
        return file_lock(self.root / "lock")

    def _checked_state(self) -> SourceState:
        state = self.state()
        if (
            state is not None
            and state.source != self.source
            and state.version is None
            and not os.path.lexists(self.link)
        ):
            # Only failed attempts of another source (a mistyped URL, since corrected):
            # nothing of it was ever published, so there is nothing to protect.
            state = None
        if state is not None and state.source != self.source:
            raise DestinationConflictError(
                f"{self.link} is published from {state.source}, not {self.source}: use another"
                f" name, or remove {self.link} and {self.root} to switch sources"
            )
        if os.path.lexists(self.link) and (
            not self.link.is_symlink() or (state is None and self.current_version() is None)
        ):
            raise DestinationConflictError(
                f"{self.link} exists and is not managed by runner-storage: move it away or"
                " choose another name or base path"
            )
        return state or SourceState(source=self.source)

    def _remove_leftovers(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.root / "link.tmp").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "state.json.tmp").unlink()

    def _swap_link(self, version: Path) -> None:
        temporary = self.root / "link.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        try:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(version, self.link.parent), temporary)
            os.replace(temporary, self.link)
            _fsync_dir(self.link.parent)
        except OSError as exc:
            raise disk_error(f"cannot publish {self.link}", exc) from None

    def _write_state(self, state: SourceState) -> None:
        path = self.root / "state.json"
        temporary = path.with_name("state.json.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(state.to_json(), handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            raise disk_error(f"cannot write {path}", exc) from None

    def _record_unchanged(
        self, state: SourceState, revision: Revision, started: float
    ) -> SyncResult:
        now = utcnow()
        state.last_attempt_at = state.last_success_at = now
        state.last_error = None
        state.consecutive_failures = 0
        self._write_state(state)
        return SyncResult(revision.id, False, 0, 0, time.monotonic() - started)

    def _record_published(self, state: SourceState, revision: Revision) -> None:
        now = utcnow()
        for entry in state.history:
            if entry.get("retired_at") is None:
                entry["retired_at"] = now
        state.history = [e for e in state.history if e["version"] != revision.version_name]
        state.history.insert(
            0,
            {
                "version": revision.version_name,
                "revision": revision.id,
                "published_at": now,
                "retired_at": None,
            },
        )
        state.revision, state.digest = revision.id, revision.digest
        state.version = revision.version_name
        state.published_at = state.last_attempt_at = state.last_success_at = now
        state.last_error = None
        state.consecutive_failures = 0
        self._write_state(state)

    def _record_failure(self, state: SourceState, exc: Exception) -> None:
        state.last_attempt_at = utcnow()
        message = str(exc) if isinstance(exc, RunnerStorageError) else f"{type(exc).__name__}"
        state.last_error = self._redact(message)
        state.consecutive_failures += 1
        with contextlib.suppress(PublishError):
            self._write_state(state)

    def _apply_retention(self, state: SourceState) -> None:
        """Delete versions beyond the newest ``keep`` that were retired over grace ago."""
        live = state.version
        keep = {entry["version"] for entry in state.history[: self.keep]}
        for entry in state.history:
            retired = age_seconds(entry.get("retired_at"))
            if retired is None or retired < self.grace_seconds:
                keep.add(entry["version"])
        known = {entry["version"] for entry in state.history}
        try:
            children = list(self.versions.iterdir())
        except FileNotFoundError:
            return
        for child in children:
            if child.name in keep or child.name == live:
                continue
            if child.name not in known:
                # Not in our history: a publish that died before writing state. Keep it
                # for the grace period in case a runner entered it.
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - child.lstat().st_mtime < self.grace_seconds:
                        continue
            self._discard(child)
            with contextlib.suppress(FileNotFoundError):
                (self.manifests / f"{child.name}.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            # Manifests of versions that never made it into versions/ (a killed pull).
            for manifest in self.manifests.iterdir():
                if not (self.versions / manifest.name.removesuffix(".json")).is_dir():
                    manifest.unlink(missing_ok=True)
        state.history = [e for e in state.history if (self.versions / e["version"]).exists()]
        self._write_state(state)

    def _discard(self, version: Path) -> None:
        """Delete a version without ever leaving part of it under ``versions/``.

        It is first renamed into ``staging/`` (atomically), so a pull killed while deleting
        leaves the rest where the next pull removes it, never a half-deleted version that a
        later pull of the same revision would reuse as if it were complete.
        """
        doomed = self.staging / f"retired-{uuid.uuid4().hex}"
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            os.rename(version, doomed)
        except OSError:
            return  # kept for now; the next retention tries again
        shutil.rmtree(doomed, ignore_errors=True)


def check_contained(root: Path) -> None:
    """Raise UnsafeContentError if a symlink under ``root`` resolves outside it."""
    real_root = os.path.realpath(root)
    pending = [os.fspath(root)]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:
            continue  # as os.walk: what cannot be listed holds nothing to follow
        with listing as entries:
            for entry in entries:
                if not entry.is_symlink():  # from the directory listing: no stat per file
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    continue
                resolved = os.path.realpath(entry.path)
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    relative = os.path.relpath(entry.path, root)
                    raise UnsafeContentError(
                        f"symlink {relative} -> {os.readlink(entry.path)} points outside the"
                        " source tree; remove it upstream (nothing was published)"
                    )


def _make_dirs(path: Path) -> None:
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise disk_error(f"cannot create {path}", exc) from None


def _rename(source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    except OSError as exc:
        raise disk_error(f"cannot move the new version into {target.parent}", exc) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
