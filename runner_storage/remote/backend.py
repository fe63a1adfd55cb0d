"""One pull of an fsspec URL: list once, plan against the published version, transfer.

:class:`RemoteBackend` is the :class:`~runner_storage.publish.Backend` of
:class:`~runner_storage.remote.RemoteStorage`. The listing's digest is the revision, so a
no-op costs the listing alone; otherwise unchanged files are hard-linked from the
published version and only new and changed objects are downloaded, to numbered names
first, placed only once :mod:`runner_storage.remote.verify` accepts them.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio.to_thread
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import NotFoundError, disk_error
from runner_storage.fs.entries import Entry
from runner_storage.fs.errors import raise_from, translate_error
from runner_storage.fs.listing import Listing, list_tree
from runner_storage.fs.pool import filesystem
from runner_storage.fs.protocols import url_settings
from runner_storage.fs.transfer import download_all
from runner_storage.publish import Materialized, PreviousVersion
from runner_storage.publish.tree import link_or_copy
from runner_storage.remote.plan import listing_revision, manifest_for, plan_sync
from runner_storage.remote.verify import check_sizes, check_unchanged, unproven
from runner_storage.secrets import public_url, resolve_settings
from runner_storage.types import Revision, fingerprint

__all__ = ["RemoteBackend", "public_url"]


@dataclass(frozen=True)
class RemoteBackend:
    """One pull of an fsspec URL: one listing, then the transfers.

    Each phase takes a filesystem from :func:`runner_storage.fs.pool.filesystem` and gives
    it back when done, since the publisher does not tell a backend when a pull ends (a
    no-op never reaches :meth:`materialize`). Building one is inside the translation
    boundary: some filesystems connect when built, and settings are checked then.

    Attributes:
        url: the fsspec URL (checked by :func:`runner_storage.fs.protocols.check_protocol`).
        protocol: its protocol.
        settings: the filesystem's settings, secrets unresolved (resolved per phase).
        concurrency: the most objects listed (HEAD) or downloaded at once (FTP downloads
            one at a time over its single connection, whatever this says).
        redact: removes the source's secrets from text.
        single_object: the URL names one object, even with keys below it.
    """

    url: str
    protocol: str
    settings: Mapping[str, Any]
    concurrency: int
    redact: Callable[[str], str]
    single_object: bool = False

    @property
    def _where(self) -> str:
        return public_url(self.url)

    async def resolve(self) -> Revision:
        """List the URL once and digest the listing.

        Raises:
            NotFoundError: nothing is there (missing bucket, prefix, or an empty one).
            AuthenticationError, TransientSourceError, SourceError: the source failed.
            UnsafeContentError: a key would leave the version, or keys conflict.
            CredentialsError, MissingDependencyError: the pull cannot start.
        """
        # A stalled or throttling store can keep fsspec busy for minutes inside the thread;
        # abandon it on cancellation so the caller's timeout holds (it publishes nothing).
        listing = await anyio.to_thread.run_sync(self._list, abandon_on_cancel=True)
        if not listing.entries:
            raise NotFoundError(
                f"nothing to pull at {self._where}: the bucket or folder is missing or empty;"
                " check the URL (an empty tree is never published)"
            )
        revision_id = listing_revision(listing.entries)
        return Revision(id=revision_id, digest=fingerprint(revision_id), detail=listing)

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Build the tree: link unchanged files from ``previous``, download the rest.

        Raises:
            TransientSourceError: an object changed or vanished while downloading.
            PublishError: the local disk failed.
            SourceError: the source failed (see :meth:`resolve`).
        """
        if revision is None:  # resolve() always returns one; kept for the protocol
            revision = await self.resolve()
        listing: Listing = revision.detail
        plan = plan_sync(listing.entries, previous.manifest if previous else None)
        fetch = await anyio.to_thread.run_sync(
            _link_unchanged, plan.link, plan.download, staging, previous
        )
        await anyio.to_thread.run_sync(
            self._download, fetch, listing, staging, abandon_on_cancel=True
        )
        return Materialized(
            revision,
            files_fetched=len(fetch),
            bytes_fetched=sum(entry.size for entry in fetch),
            manifest=manifest_for(listing.entries),
        )

    def _filesystem(self) -> contextlib.AbstractContextManager[AbstractFileSystem]:
        # Secrets are resolved now, for this phase of this pull, and never kept. A pull
        # only lists and downloads: s3:// may go through botocore's client directly.
        settings = {**url_settings(self.protocol, self.url), **resolve_settings(self.settings)}
        return filesystem(self.protocol, settings, redact=self.redact, reads_only=self.url)

    def _list(self) -> Listing:
        try:
            with self._filesystem() as fs:
                return list_tree(fs, self.url, self.concurrency, single_object=self.single_object)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self._raise_translated(exc)

    def _download(self, entries: list[Entry], listing: Listing, staging: Path) -> None:
        if not entries:
            return
        # Keys are untrusted: objects land under numbered names in a directory of ours,
        # and only reach their checked paths by rename once every size is verified.
        temporary = staging / f".runner-storage-download-{uuid.uuid4().hex}"
        pairs = [
            (listing.remote[entry.path], str(temporary / str(index)))
            for index, entry in enumerate(entries)
        ]
        try:
            temporary.mkdir()
            with self._filesystem() as fs:
                download_all(fs, pairs, self.concurrency)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self._raise_translated(exc, staging=staging, downloading=True)
        check_sizes(entries, [local for _, local in pairs], where=self._where)
        self._check_checksums(entries, pairs, listing)
        try:
            for entry, (_, local) in zip(entries, pairs, strict=True):
                os.rename(local, staging / entry.path)
            temporary.rmdir()
        except OSError as exc:
            raise disk_error(f"cannot place downloads in {staging}", exc) from None

    def _check_checksums(
        self, entries: list[Entry], pairs: list[tuple[str, str]], listing: Listing
    ) -> None:
        """Catch an object rewritten with the same size after the listing (see ``verify``)."""
        suspects = unproven(entries, pairs, listing.md5)
        if not suspects:
            return
        try:
            with self._filesystem() as fs:
                etags = {
                    remote: fs.info(remote).get("ETag")
                    for entry, remote in suspects
                    if entry.token.startswith("ETag=")
                }
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self._raise_translated(exc, downloading=True)
        check_unchanged(suspects, etags, where=self._where)

    def _raise_translated(
        self, exc: Exception, *, staging: Path | None = None, downloading: bool = False
    ) -> NoReturn:
        error, chain = translate_error(
            exc,
            where=self._where,
            redact=self.redact,
            staging=staging,
            downloading=downloading,
            settings=self.settings,
        )
        raise_from(error, exc, chain=chain)


def _link_unchanged(
    link: tuple[Entry, ...],
    download: tuple[Entry, ...],
    staging: Path,
    previous: PreviousVersion | None,
) -> list[Entry]:
    """Create the directories, hard-link unchanged files; return the entries to download.

    A planned link whose old file is missing, not a regular file or of another size is
    downloaded instead: the published tree is checked, not trusted. Runs once per file of
    a new version (thousands): plain strings, not :class:`Path`.
    """
    fetch = list(download)
    staging_root = os.fspath(staging)
    try:
        for directory in sorted({posixpath.dirname(e.path) for e in (*link, *download)}):
            os.makedirs(os.path.join(staging_root, directory), exist_ok=True)
        if previous is None:  # the plan links only from a previous version
            return fetch + list(link)
        previous_root = os.fspath(previous.path)
        for entry in link:
            source = os.path.join(previous_root, entry.path)
            try:
                info = os.lstat(source)
            except FileNotFoundError:
                fetch.append(entry)
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
                fetch.append(entry)
                continue
            link_or_copy(source, os.path.join(staging_root, entry.path))
    except OSError as exc:
        raise disk_error(f"cannot build the new version in {staging}", exc) from None
    return fetch
