"""RemoteStorage: code in an object store or any fsspec filesystem, synced by listing diff.

A pull lists the URL once; when the listing's digest is the published one, that is all it
costs. Otherwise the new version is planned against the published one
(:mod:`runner_storage.plan`): unchanged files are hard-linked from it, new and changed
objects downloaded concurrently, removed ones simply left out, and the result published
atomically by :class:`~runner_storage.publish.Publisher`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import string
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread
from fsspec.spec import AbstractFileSystem

from runner_storage import _fsspec
from runner_storage.base import Revision, fingerprint
from runner_storage.credentials import (
    resolve_settings,
    secret_values,
    strip_url_credentials,
)
from runner_storage.exceptions import (
    ConfigurationError,
    NotFoundError,
    TransientSourceError,
)
from runner_storage.managed import ManagedStorage
from runner_storage.plan import Entry, listing_revision, manifest_for, plan_sync
from runner_storage.publish import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_KEEP,
    Backend,
    Materialized,
    PreviousVersion,
    disk_error,
)
from runner_storage.steps import SENSITIVE_SETTING_KEYS, pull_from_remote_storage_step

__all__ = ["RemoteStorage"]

DEFAULT_TRANSFER_CONCURRENCY = 16

#: errnos of os.link that mean "these two places cannot share an inode": copy instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


class RemoteStorage(ManagedStorage):
    """Pull the contents of an fsspec URL, as Prefect's ``RemoteStorage`` does.

    The destination follows Prefect's rule, ``BASE/<netloc>/<path>``: ``s3://bucket/flows``
    publishes at ``BASE/bucket/flows``, ``memory://folder`` at ``BASE/folder``, and
    ``file:///srv/flows`` (no netloc) at ``BASE/srv/flows``. Credentials in the URL are
    never part of the name.

    Settings are passed to the fsspec filesystem with secrets
    (:class:`~runner_storage.Secret`, Prefect ``Secret`` blocks) resolved at every pull, so
    rotated credentials take effect on the next pull. Pulls whose resolved settings are
    equal share one filesystem and its warm connections; a rotated secret gets a new one,
    and so does the pull after a failed one.

    What a pull costs: one recursive listing, then one read per new or changed object.
    A no-op is the listing alone: one request on S3 and GCS, two on Azure (adlfs first
    asks whether the URL is a blob). HTTP has no listing API: each directory page is
    fetched and each file answered with a HEAD, for its size and validator.

    An object counts as changed when its size or content token changes: the ETag (S3,
    Azure), the MD5 (GCS), the ETag or else Last-Modified (HTTP), the mtime (file).

    Example::

        storage = RemoteStorage(
            "s3://my-bucket/flows",
            key=Secret.from_env("AWS_ACCESS_KEY_ID"),
            secret=Secret.from_env("AWS_SECRET_ACCESS_KEY"),
        )
        result = await storage.pull_code()

    Args:
        url: the fsspec URL of a folder (or of a single object, published under its
            basename).
        pull_interval: seconds between pulls; None pulls once.
        keep_versions: how many published versions to keep.
        grace_period: seconds a retired version is kept at least, for running work.
        transfer_concurrency: the most objects downloaded at once.
        name: the destination name under the base path; Prefect's
            ``<netloc>/<path>`` when not given.
        **settings: settings of the fsspec filesystem (``key``, ``secret``,
            ``endpoint_url``, ``token``, ``connection_string``...).

    Raises:
        ConfigurationError: the URL is empty or unparseable, its protocol unknown, it
            names no folder, or an option is out of range.
    """

    def __init__(
        self,
        url: str,
        pull_interval: int | None = 60,
        *,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
        transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        self._protocol = _fsspec.check_protocol(url)
        if not isinstance(transfer_concurrency, int) or transfer_concurrency < 1:
            raise ConfigurationError(
                f"transfer_concurrency must be a whole number of at least 1, got"
                f" {transfer_concurrency!r}"
            )
        self._url = url
        self._settings = settings
        self._transfer_concurrency = transfer_concurrency
        super().__init__(
            name=name or _destination_name(url),
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    def to_pull_step(self) -> dict[str, Any]:
        """A ``pull_from_remote_storage`` step, with secret settings as placeholders.

        ``requires`` names the package of the protocol's fsspec implementation (``s3fs``,
        ``gcsfs``, ``adlfs``); it is left out for fsspec's own protocols.

        Raises:
            ConfigurationError: a secret setting is plain text, or the URL holds a password.
        """
        if urlsplit(self._url).password:
            raise ConfigurationError(
                "the URL holds a password, which would be written into the pull step: pass"
                " credentials as settings with Secret.from_env(...) instead"
            )
        return pull_from_remote_storage_step(
            url=self._url,
            settings=self._settings,
            requires=_fsspec.required_package(self._protocol),
        )

    def __repr__(self) -> str:
        return f"RemoteStorage(url={_public_url(self._url)!r})"

    def _identity(self) -> tuple[Any, ...]:
        return (self._url, self._settings)

    def _source_label(self) -> str:
        return _public_url(self._url)

    def _secret_values(self) -> list[str]:
        values = secret_values(self._settings)
        values.extend(_sensitive_plain_values(self._settings))
        password = urlsplit(self._url).password
        if password:
            values.append(password)
        for value in list(values):
            values.extend(_connection_string_secrets(value))
        return values

    def _backend(self) -> Backend:
        return _RemoteBackend(self)


def _public_url(url: str) -> str:
    """``url`` as messages and ``state.json`` show it: no userinfo, query or fragment.

    A query may hold a signature (presigned URLs), and leaving it out keeps the label
    stable when such a signature is renewed.
    """
    parts = urlsplit(strip_url_credentials(url))
    return urlunsplit(parts._replace(query="", fragment=""))


def _destination_name(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    name = str(PurePosixPath(host) / parts.path.lstrip("/")).strip("/")
    if not name or name == ".":
        raise ConfigurationError(
            f"{_public_url(url)} names no bucket or folder to publish under: add"
            " one, like memory://folder or s3://bucket/path"
        )
    return name


def _sensitive_plain_values(settings: Any, key: str | None = None) -> list[str]:
    if isinstance(settings, Mapping):
        return [v for k, item in settings.items() for v in _sensitive_plain_values(item, k)]
    if isinstance(settings, list | tuple):
        return [v for item in settings for v in _sensitive_plain_values(item, key)]
    if isinstance(settings, str) and key in SENSITIVE_SETTING_KEYS and settings:
        return [settings]
    return []


def _connection_string_secrets(value: str) -> list[str]:
    """The key and SAS parts of an Azure connection string, redacted on their own too."""
    found = []
    for part in value.split(";"):
        name, sep, secret = part.partition("=")
        if sep and name.strip().lower() in ("accountkey", "sharedaccesssignature") and secret:
            found.append(secret)
    return found


class _RemoteBackend:
    """One pull of a RemoteStorage: one listing, then the transfers.

    Each phase takes a filesystem from :func:`runner_storage._fsspec.filesystem` and gives
    it back when done, since the publisher does not tell a backend when a pull ends (a
    no-op never reaches :meth:`materialize`). Building one is inside the translation
    boundary: some filesystems connect when built, and settings are checked then.
    """

    def __init__(self, storage: RemoteStorage) -> None:
        self._storage = storage
        self._where = _public_url(storage._url)

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
        listing: _fsspec.Listing = revision.detail
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
        # Secrets are resolved now, for this phase of this pull, and never kept.
        settings = resolve_settings(self._storage._settings)
        return _fsspec.filesystem(self._storage._protocol, settings, redact=self._storage.redact)

    def _list(self) -> _fsspec.Listing:
        try:
            with self._filesystem() as fs:
                return _fsspec.list_tree(
                    fs, self._storage._url, self._storage._transfer_concurrency
                )
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self._raise_translated(exc)

    def _download(self, entries: list[Entry], listing: _fsspec.Listing, staging: Path) -> None:
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
                _fsspec.download_all(fs, pairs, self._storage._transfer_concurrency)
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            self._raise_translated(exc, staging=staging, downloading=True)
        for entry, (_, local) in zip(entries, pairs, strict=True):
            try:
                size = os.stat(local).st_size
            except FileNotFoundError:
                size = -1
            if size != entry.size:
                raise TransientSourceError(
                    f"object {entry.path!r} under {self._where} changed while downloading"
                    f" (listed {entry.size} bytes, got {max(size, 0)}): the next pull lists"
                    " again (nothing was published)"
                )
        self._check_checksums(entries, pairs)
        try:
            for entry, (_, local) in zip(entries, pairs, strict=True):
                os.rename(local, staging / entry.path)
            temporary.rmdir()
        except OSError as exc:
            raise disk_error(f"cannot place downloads in {staging}", exc) from None

    def _check_checksums(self, entries: list[Entry], pairs: list[tuple[str, str]]) -> None:
        """Catch an object rewritten with the same size after the listing.

        Where the listing promises the content's MD5 (S3 single-part ETags, GCS md5Hash),
        the download must match it. An S3 object encrypted with SSE-KMS or SSE-C has an
        ETag that is not an MD5: when its ETag is still the listed one, it did not change.
        """
        suspects = [
            (entry, remote)
            for entry, (remote, local) in zip(entries, pairs, strict=True)
            if (promised := _promised_md5(self._storage._protocol, entry.token)) is not None
            and _md5_of(local) != promised
        ]
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
        for entry, remote in suspects:
            if remote in etags and f"ETag={etags[remote]}" == entry.token:
                continue
            raise TransientSourceError(
                f"object {entry.path!r} under {self._where} changed while downloading"
                " (its content does not match the listed checksum): the next pull lists"
                " again (nothing was published)"
            )

    def _raise_translated(
        self, exc: Exception, *, staging: Path | None = None, downloading: bool = False
    ) -> NoReturn:
        error, chain = _fsspec.translate_error(
            exc,
            where=self._where,
            redact=self._storage.redact,
            staging=staging,
            downloading=downloading,
            settings=self._storage._settings,
        )
        if error is exc:
            raise error
        if chain:
            raise error from exc
        raise error from None


def _promised_md5(protocol: str, token: str) -> bytes | None:
    """The MD5 of the content that a listing token stands for, where the store says so."""
    if protocol in ("s3", "s3a") and token.startswith("ETag="):
        value = token.removeprefix("ETag=").strip('"')
        if len(value) == 32 and all(c in string.hexdigits for c in value):
            return bytes.fromhex(value)  # a multipart ETag ends in -N: not an MD5
    if protocol in ("gs", "gcs") and token.startswith("md5Hash="):
        with contextlib.suppress(ValueError):
            digest = base64.b64decode(token.removeprefix("md5Hash="), validate=True)
            return digest if len(digest) == 16 else None
    return None


def _md5_of(path: str) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def _link_unchanged(
    link: tuple[Entry, ...],
    download: tuple[Entry, ...],
    staging: Path,
    previous: PreviousVersion | None,
) -> list[Entry]:
    """Create the directories, hard-link unchanged files; return the entries to download.

    A planned link whose old file is missing, not a regular file or of another size is
    downloaded instead: the published tree is checked, not trusted.
    """
    fetch = list(download)
    try:
        for directory in sorted({PurePosixPath(e.path).parent for e in (*link, *download)}):
            (staging / directory).mkdir(parents=True, exist_ok=True)
        for entry in link:
            if previous is None:  # the plan links only from a previous version
                fetch.append(entry)
                continue
            source = previous.path / entry.path
            try:
                info = os.lstat(source)
            except FileNotFoundError:
                fetch.append(entry)
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
                fetch.append(entry)
                continue
            _link_or_copy(source, staging / entry.path)
    except OSError as exc:
        raise disk_error(f"cannot build the new version in {staging}", exc) from None
    return fetch


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copy2(source, target)
