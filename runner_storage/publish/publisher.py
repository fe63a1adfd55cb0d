"""The publisher: resolve, build off to the side, check, swap one symlink, keep state.

A backend only resolves revisions and materialises trees (:class:`Backend`); everything
else about the on-disk contract (:mod:`runner_storage.publish.layout`) lives here, once:
the lock, the staging tree, the containment check, the atomic swap, ``state.json``,
retention, and the clean-up after a failed or killed pull.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread

from runner_storage.exceptions import (
    ConfigurationError,
    DestinationConflictError,
    PublishError,
    RunnerStorageError,
    TransientSourceError,
    disk_error,
)
from runner_storage.publish.layout import SourceLayout
from runner_storage.publish.lock import file_lock
from runner_storage.publish.names import validate_name
from runner_storage.publish.retention import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_KEEP,
    versions_to_delete,
)
from runner_storage.publish.state import SourceState, read_state, utcnow
from runner_storage.publish.tree import check_contained
from runner_storage.types import Revision, SyncResult

__all__ = [
    "Backend",
    "Materialized",
    "PreviousVersion",
    "Publisher",
    "Verifier",
]


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
        self.layout = SourceLayout(base, self.name)
        self.source = source
        self.keep = keep
        self.grace_seconds = grace_seconds
        self._redact = redact

    @property
    def link(self) -> Path:
        """``BASE/NAME``: the symlink runners use."""
        return self.layout.link

    def state(self) -> SourceState | None:
        """The current ``state.json``, if any."""
        return read_state(self.layout.state_file)

    def current_version(self) -> Path | None:
        """The version directory ``BASE/NAME`` points to, if it is one of ours."""
        link = self.layout.link
        try:
            target = os.readlink(link)
        except OSError:
            return None
        resolved = Path(os.path.normpath(link.parent / target))
        if resolved.parent != self.layout.versions or not resolved.is_dir():
            return None
        return resolved

    async def sync(
        self,
        backend: Backend,
        *,
        verify: Verifier | None = None,
        timeout: float | None = None,
    ) -> SyncResult:
        """Pull through ``backend`` and publish a new version if the revision changed.

        Args:
            backend: resolves and materialises the source.
            verify: awaited with the complete new tree and its revision before it is
                published; raising stops the publish (a pre-publish check).
            timeout: seconds the pull may take, waiting for the lock included; past it
                the pull is abandoned (nothing is published) and, once the lock was held,
                recorded in ``state.json`` as failed, like any other failure.

        Raises:
            TransientSourceError: the pull took longer than ``timeout``.
            RunnerStorageError: anything else that went wrong; the published tree is
                untouched.
        """
        started = time.monotonic()
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            async with file_lock(self.layout.lock_file):
                state = self._checked_state()
                try:
                    await anyio.to_thread.run_sync(self._remove_leftovers)
                    return await self._pull(backend, state, self.current_version(), started, verify)
                except BaseException as exc:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._remove_leftovers)
                        if isinstance(exc, Exception):
                            self._record_failure(state, exc)
                        elif scope.cancel_called and anyio.current_time() >= deadline:
                            self._record_failure(state, self._timed_out(timeout))
                    raise
        raise self._timed_out(timeout)

    def _timed_out(self, timeout: float | None) -> TransientSourceError:
        return TransientSourceError(
            f"pull of {self.name} timed out after {timeout or 0:g}s; nothing was published"
        )

    async def _pull(
        self,
        backend: Backend,
        state: SourceState,
        current: Path | None,
        started: float,
        verify: Verifier | None,
    ) -> SyncResult:
        layout = self.layout
        revision = await backend.resolve()
        if revision is not None and self._is_published(state, current, revision):
            return self._record_unchanged(state, revision, started)
        files = size = 0
        if revision is None or not layout.version(revision.version_name).is_dir():
            staging = layout.staging / uuid.uuid4().hex
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
            target = layout.version(revision.version_name)
            if target.is_dir():
                # The same tree was published before and is still kept: reuse it.
                await anyio.to_thread.run_sync(shutil.rmtree, staging)
            else:
                self._write_manifest(revision.version_name, built.manifest)
                _rename(staging, target)
        with anyio.CancelScope(shield=True):
            self._swap_link(layout.version(revision.version_name))
            self._record_published(state, revision)
            await anyio.to_thread.run_sync(self._apply_retention, state)
        return SyncResult(revision.id, True, files, size, time.monotonic() - started)

    def _previous(self, current: Path | None) -> PreviousVersion | None:
        if current is None:
            return None
        try:
            text = self.layout.manifest(current.name).read_text(encoding="utf-8")
            manifest = json.loads(text)
        except (OSError, ValueError):
            manifest = None
        return PreviousVersion(current, manifest)

    def _write_manifest(self, version: str, manifest: Any) -> None:
        if manifest is None:
            return
        path = self.layout.manifest(version)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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

    def _checked_state(self) -> SourceState:
        state = self.state()
        link, root = self.layout.link, self.layout.root
        if (
            state is not None
            and state.source != self.source
            and state.version is None
            and not os.path.lexists(link)
        ):
            # Only failed attempts of another source (a mistyped URL, since corrected):
            # nothing of it was ever published, so there is nothing to protect.
            state = None
        if state is not None and state.source != self.source:
            raise DestinationConflictError(
                f"{link} is published from {state.source}, not {self.source}: use another"
                f" name, or remove {link} and {root} to switch sources"
            )
        if os.path.lexists(link) and (
            not link.is_symlink() or (state is None and self.current_version() is None)
        ):
            raise DestinationConflictError(
                f"{link} exists and is not managed by runner-storage: move it away or"
                " choose another name or base path"
            )
        return state or SourceState(source=self.source)

    def _remove_leftovers(self) -> None:
        shutil.rmtree(self.layout.staging, ignore_errors=True)
        for leftover in (self.layout.link_tmp, _temporary(self.layout.state_file)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _swap_link(self, version: Path) -> None:
        link, temporary = self.layout.link, self.layout.link_tmp
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(version, link.parent), temporary)
            os.replace(temporary, link)
            _fsync_dir(link.parent)
        except OSError as exc:
            raise disk_error(f"cannot publish {link}", exc) from None

    def _write_state(self, state: SourceState) -> None:
        path = self.layout.state_file
        temporary = _temporary(path)
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
        """Delete the versions :func:`versions_to_delete` names, then their manifests."""
        layout = self.layout
        present: dict[str, float] = {}
        with contextlib.suppress(FileNotFoundError):
            for child in layout.versions.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    present[child.name] = child.lstat().st_mtime
        doomed = versions_to_delete(
            state.history,
            present,
            live=state.version,
            keep=self.keep,
            grace_seconds=self.grace_seconds,
            now=time.time(),
        )
        for version in doomed:
            self._discard(layout.version(version))
            layout.manifest(version).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            # Manifests of versions that never made it into versions/ (a killed pull).
            for manifest in layout.manifests.iterdir():
                if not layout.version(manifest.name.removesuffix(".json")).is_dir():
                    manifest.unlink(missing_ok=True)
        history = [e for e in state.history if layout.version(e["version"]).exists()]
        if doomed or history != state.history:
            # Otherwise state.json already says this (written just before, with an fsync).
            state.history = history
            self._write_state(state)

    def _discard(self, version: Path) -> None:
        """Delete a version without ever leaving part of it under ``versions/``.

        It is first renamed into ``staging/`` (atomically), so a pull killed while deleting
        leaves the rest where the next pull removes it, never a half-deleted version that a
        later pull of the same revision would reuse as if it were complete.
        """
        staging = self.layout.staging
        doomed = staging / f"retired-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True, exist_ok=True)
            os.rename(version, doomed)
        except OSError:
            return  # kept for now; the next retention tries again
        shutil.rmtree(doomed, ignore_errors=True)


def _temporary(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


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
