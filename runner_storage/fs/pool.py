"""Filesystems for pulls: built with resolved settings, checked, and pooled between pulls.

Everything that knows how s3fs, gcsfs, adlfs or fsspec's HTTP and FTP filesystems behave
lives in this package (``runner_storage.fs``), so the storages above it read as list -> plan ->
apply. Here: :func:`filesystem` (pooled, for pulls) and :func:`open_filesystem` (one of
its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import fsspec
from fsspec.spec import AbstractFileSystem

from runner_storage.fs import ftp
from runner_storage.fs.protocols import SINGLE_CONNECTION, missing_dependency
from runner_storage.fs.s3 import prepare_s3fs
from runner_storage.fs.s3_direct import direct_settings, open_direct_s3
from runner_storage.fs.settings import building_error, check_settings

__all__ = [
    "POOL_IDLE_SECONDS",
    "POOL_SIZE",
    "close_filesystem",
    "filesystem",
    "open_filesystem",
]


def open_filesystem(
    protocol: str,
    settings: Mapping[str, Any],
    *,
    redact: Callable[[str], str] | None = None,
    reads_only: str | None = None,
) -> AbstractFileSystem:
    """A new filesystem: resolved settings, no fsspec instance cache, no listings cache.

    With ``reads_only`` (the URL to be read), a caller that only lists, reads and
    downloads may get a filesystem that can do only that, where one exists for the
    settings: ``s3://`` through botocore's own client
    (:class:`~runner_storage.fs.s3_direct.DirectS3FileSystem`), without s3fs's stack.

    The settings are checked before the filesystem is built (a required one missing, a
    credential that is not text), and s3fs builds its client here, so that what botocore
    rejects (an unknown name, a bad endpoint, a missing profile) is reported now, as
    configuration, rather than on the first request as a failure of the store.

    Args:
        protocol: the URL's protocol, checked by :func:`check_protocol`.
        settings: the resolved settings (secrets are plain text here).
        redact: removes secret values from text; without it no message text of the
            filesystem's own is shown, only the names of the settings.
        reads_only: the URL the caller will only list, read and download (see above).

    Raises:
        MissingDependencyError: the protocol's package, or a module it needs, is not
            installed; the message says what to install.
        ConfigurationError: the filesystem rejected the settings; the message names them.
        Exception: building the filesystem failed otherwise (some connect when built, like
            sftp://); translate it with :func:`translate_error`.
    """
    direct = reads_only is not None and direct_settings(protocol, reads_only, settings)
    return _open(protocol, settings, redact, direct=direct)


def _open(
    protocol: str,
    settings: Mapping[str, Any],
    redact: Callable[[str], str] | None,
    *,
    direct: bool,
) -> AbstractFileSystem:
    """:func:`open_filesystem` once it is decided whether the direct S3 reader serves it."""
    if direct:
        try:
            return open_direct_s3(settings)
        except Exception as exc:  # noqa: BLE001 - translated, as below
            _building_failed(protocol, settings, exc, redact)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise missing_dependency(protocol, exc) from None
    check_settings(protocol, cls, settings)
    fs: AbstractFileSystem | None = None
    try:
        # Never fsspec's instance cache (it ignores how settings were resolved) and never a
        # listings cache: every pull must see the store as it is now.
        fs = cls(**{**settings, "skip_instance_cache": True, "use_listings_cache": False})
        prepare_s3fs(protocol, fs)
    except Exception as exc:  # noqa: BLE001 - translated
        if fs is not None:
            close_filesystem(fs)
        _building_failed(protocol, settings, exc, redact)
    return fs


def _building_failed(
    protocol: str,
    settings: Mapping[str, Any],
    exc: Exception,
    redact: Callable[[str], str] | None,
) -> NoReturn:
    """Raise what building a filesystem raised, as ours when a setting or package is to blame."""
    error = building_error(protocol, settings, exc, redact)
    if error is exc:
        raise exc
    raise error from None


@contextlib.contextmanager
def filesystem(
    protocol: str,
    settings: Mapping[str, Any],
    *,
    redact: Callable[[str], str] | None = None,
    reads_only: str | None = None,
) -> Iterator[AbstractFileSystem]:
    """A filesystem for one phase of a pull, kept open for the next pulls with the same settings.

    Creating a filesystem client is what a small pull mostly costs: for s3fs a new botocore
    session parses ~1 MB of service-model JSON and builds a TLS context (about 0.1 s of CPU,
    more than listing a few hundred objects), and a new connection pool means new
    connections. So filesystems are pooled by protocol and *resolved* settings: a pull
    reuses the client and the warm connections of the previous one, while a rotated secret
    resolves to other settings, hence another filesystem. Listings are never cached, so a
    reused filesystem still sees the store as it is now.

    A filesystem whose block raised is closed and dropped (the next pull starts afresh);
    one idle for :data:`POOL_IDLE_SECONDS` is closed; at most :data:`POOL_SIZE` are kept.
    Settings that cannot be fingerprinted (arbitrary objects) get a filesystem of their
    own, closed when the block ends, and so does every block of a protocol whose
    filesystem is a single connection (``ftp://``, see
    :data:`~runner_storage.fs.protocols.SINGLE_CONNECTION`): two pulls must never share it.

    ``reads_only``: see :func:`open_filesystem`; such filesystems are pooled apart.

    Raises:
        MissingDependencyError, ConfigurationError, Exception: see :func:`open_filesystem`.
    """
    direct = reads_only is not None and direct_settings(protocol, reads_only, settings)
    key = None if protocol in SINGLE_CONNECTION else _pool_key(protocol, settings, direct=direct)
    if key is None:
        fs = _open(protocol, settings, redact, direct=direct)
        try:
            yield fs
        finally:
            close_filesystem(fs)
        return
    entry = _POOL.acquire(key, lambda: _open(protocol, settings, redact, direct=direct))
    failed = True
    try:
        yield entry.fs
        failed = False
    finally:
        _POOL.release(key, entry, failed=failed)


def close_filesystem(fs: AbstractFileSystem) -> None:
    """Close a filesystem's connections now.

    fsspec's async filesystems hold themselves in a reference cycle and close their HTTP
    sessions from ``weakref.finalize`` callbacks, so without this the connections would
    stay open until the garbage collector finds the cycle. Running those callbacks here is
    what collection would do later; each runs at most once. fsspec's FTP filesystem closes
    its connection only when it is collected: that is done here too.
    """
    if ftp.is_ftp(fs):
        ftp.close_connection(fs)
    registry: Mapping[Any, Any] = getattr(weakref.finalize, "_registry", {})
    for finalizer, info in list(registry.items()):
        if info.weakref() is fs:
            with contextlib.suppress(Exception):
                finalizer()


#: Most filesystems kept open between pulls (distinct protocol + resolved settings).
POOL_SIZE = 8
#: Seconds after which an unused pooled filesystem is closed.
POOL_IDLE_SECONDS = 300.0


class _Unpoolable(TypeError):
    """A setting value that has no stable fingerprint."""


def _fingerprint_value(value: Any) -> Any:
    raise _Unpoolable(type(value).__name__)


def _pool_key(protocol: str, settings: Mapping[str, Any], *, direct: bool = False) -> str | None:
    """A digest of the protocol and the resolved settings, or None if they have no stable one.

    Secret values take part in the digest (a rotated secret must not reuse the old client)
    but only their hash is kept. A direct (read-only) filesystem has keys of its own.
    """
    try:
        text = json.dumps([protocol, settings, direct], sort_keys=True, default=_fingerprint_value)
    except (TypeError, ValueError):  # _Unpoolable, or keys that are not text (or mixed)
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(eq=False)
class _Pooled:
    fs: AbstractFileSystem
    users: int = 0
    last_used: float = 0.0
    retired: bool = False


class _FilesystemPool:
    """Open filesystems by key, shared by concurrent pulls, bounded and expiring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Pooled] = OrderedDict()

    def acquire(self, key: str, open_new: Callable[[], AbstractFileSystem]) -> _Pooled:
        with self._lock:
            # Expired entries go first: one idle for longer than POOL_IDLE_SECONDS is never
            # handed out again (its connections are gone, its credentials may be stale).
            expired = self._evict()
            entry = self._entries.get(key)
            if entry is not None:
                entry.users += 1
                self._entries.move_to_end(key)
        self._close(expired)
        if entry is not None:
            return entry
        # Outside the lock: opening may import a package, or connect.
        fresh = _Pooled(open_new(), users=1, last_used=time.monotonic())
        with self._lock:
            pooled = self._entries.get(key)
            if pooled is None:
                self._entries[key] = pooled = fresh
                doomed = []
            else:  # another pull pooled one meanwhile; use that one
                pooled.users += 1
                doomed = [fresh.fs]
            doomed += self._evict()
        self._close(doomed)
        return pooled

    def release(self, key: str, entry: _Pooled, *, failed: bool) -> None:
        with self._lock:
            entry.users -= 1
            entry.last_used = time.monotonic()
            if failed and self._entries.get(key) is entry:
                del self._entries[key]
                entry.retired = True
            doomed = [entry.fs] if entry.retired and entry.users == 0 else []
            doomed += self._evict()
        self._close(doomed)

    def _evict(self) -> list[AbstractFileSystem]:
        """Under the lock: drop idle and surplus entries; return the ones to close now."""
        now = time.monotonic()
        doomed: list[AbstractFileSystem] = []
        for key, entry in list(self._entries.items()):
            idle = now - entry.last_used > POOL_IDLE_SECONDS
            surplus = len(self._entries) > POOL_SIZE
            if entry.users == 0 and (idle or surplus):
                del self._entries[key]
                doomed.append(entry.fs)
            elif surplus:  # in use: retire it, the last user closes it
                del self._entries[key]
                entry.retired = True
        return doomed

    @staticmethod
    def _close(filesystems: list[AbstractFileSystem]) -> None:
        for fs in filesystems:
            close_filesystem(fs)


_POOL = _FilesystemPool()
