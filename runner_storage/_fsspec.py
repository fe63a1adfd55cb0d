"""The fsspec boundary of RemoteStorage: protocols, filesystems, listings, transfers, errors.

Everything that knows how s3fs, gcsfs, adlfs or fsspec's HTTP filesystem behave lives
here, so :mod:`runner_storage.remote` reads as list -> plan -> apply. Third-party errors
are translated in one place, :func:`translate_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import difflib
import errno
import hashlib
import inspect
import json
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.asyn import sync as run_on_loop
from fsspec.registry import known_implementations
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    MissingDependencyError,
    NotFoundError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
)
from runner_storage.plan import Entry, is_directory_marker, safe_relative_path
from runner_storage.publish import disk_error

__all__ = [
    "Listing",
    "check_protocol",
    "close_filesystem",
    "download_all",
    "filesystem",
    "list_tree",
    "open_filesystem",
    "required_package",
    "translate_error",
]

#: The extra of runner-storage that installs each cloud protocol's package.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}

#: Info fields that identify an object's content, best first: S3 ETag, adlfs etag, GCS
#: md5Hash (crc32c for composite objects), HTTP validators, local and memory timestamps.
TOKEN_FIELDS = (
    "ETag",
    "etag",
    "md5Hash",
    "crc32c",
    "generation",
    "Content-MD5",
    "Last-Modified",
    "LastModified",
    "last_modified",
    "mtime",
    "created",
)


@dataclass(frozen=True)
class Listing:
    """A resolved listing: the entries to publish and the remote name of each path."""

    entries: tuple[Entry, ...]
    remote: Mapping[str, str]


# --- protocols and filesystems -------------------------------------------------------------


_WRAPS = "it wraps another filesystem; give the storage URL itself, like s3://bucket/path"
#: Protocols fsspec knows that RemoteStorage refuses, and why.
_UNSUPPORTED = {
    **dict.fromkeys(
        (
            "async_wrapper",
            "asyncwrapper",
            "blockcache",
            "cached",
            "dir",
            "filecache",
            "generic",
            "reference",
            "simplecache",
        ),
        _WRAPS,
    ),
    "ftp": (
        "fsspec's FTP filesystem has one connection, which concurrent downloads would share,"
        " and its listings cannot tell a changed file of the same size; serve the files over"
        " https:// or from an object store"
    ),
}


def _known(protocol: str) -> bool:
    return protocol in fsspec.registry or protocol in known_implementations


def check_protocol(url: str) -> str:
    """Return the protocol of ``url`` after checking that fsspec knows it.

    Raises:
        ConfigurationError: the URL is empty, unparseable, chained, has no scheme, names a
            protocol fsspec does not know, or one RemoteStorage does not support.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the RemoteStorage URL is empty: give one like s3://bucket/path")
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise ConfigurationError(f"cannot parse the RemoteStorage URL: {exc}") from None
    if "::" in url.split("://", 1)[0]:
        raise ConfigurationError(
            f"chained fsspec URLs like {url.split('::', 1)[0]}::... are not supported: give"
            " the storage URL itself"
        )
    if not scheme:
        raise ConfigurationError(
            "the RemoteStorage URL has no scheme: give one like s3://bucket/path, or use"
            " LocalStorage for a local folder"
        )
    if scheme in _UNSUPPORTED:
        raise ConfigurationError(
            f"{scheme}:// is not supported by RemoteStorage: {_UNSUPPORTED[scheme]}"
        )
    if not _known(scheme):
        raise ConfigurationError(
            f"unknown protocol {scheme}:// for RemoteStorage: use one fsspec knows, such as"
            " s3://, gs://, az://, https:// or memory://"
        )
    return scheme


def required_package(protocol: str) -> str | None:
    """The package that implements ``protocol``, for a pull step's ``requires``.

    Prefect's rule (the top-level package of the fsspec implementation), made independent
    of what happens to be imported; None for fsspec's own implementations, which every
    Prefect installation has.
    """
    known = known_implementations.get(protocol)
    if known is not None:
        package = str(known["class"]).split(".", 1)[0]
    elif protocol in fsspec.registry:
        package = fsspec.registry[protocol].__module__.split(".", 1)[0]
    else:
        return None
    return None if package == "fsspec" else package


def open_filesystem(
    protocol: str, settings: Mapping[str, Any], *, redact: Callable[[str], str] | None = None
) -> AbstractFileSystem:
    """A new filesystem: resolved settings, no fsspec instance cache, no listings cache.

    The settings are checked before the filesystem is built (a required one missing, a
    credential that is not text), and s3fs builds its client here, so that what botocore
    rejects (an unknown name, a bad endpoint, a missing profile) is reported now, as
    configuration, rather than on the first request as a failure of the store.

    Args:
        protocol: the URL's protocol, checked by :func:`check_protocol`.
        settings: the resolved settings (secrets are plain text here).
        redact: removes secret values from text; without it no message text of the
            filesystem's own is shown, only the names of the settings.

    Raises:
        MissingDependencyError: the protocol's package, or a module it needs, is not
            installed; the message says what to install.
        ConfigurationError: the filesystem rejected the settings; the message names them.
        Exception: building the filesystem failed otherwise (some connect when built, like
            sftp://); translate it with :func:`translate_error`.
    """
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise _missing_dependency(protocol, exc) from None
    _check_settings(protocol, cls, settings)
    fs: AbstractFileSystem | None = None
    try:
        # Never fsspec's instance cache (it ignores how settings were resolved) and never a
        # listings cache: every pull must see the store as it is now.
        fs = cls(**{**settings, "skip_instance_cache": True, "use_listings_cache": False})
        _prepare_s3fs(protocol, fs)
    except Exception as exc:
        if fs is not None:
            close_filesystem(fs)
        error = _building_error(protocol, settings, exc, redact)
        if error is exc:
            raise
        raise error from None
    return fs


@contextlib.contextmanager
def filesystem(
    protocol: str, settings: Mapping[str, Any], *, redact: Callable[[str], str] | None = None
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
    own, closed when the block ends.

    Raises:
        MissingDependencyError, ConfigurationError, Exception: see :func:`open_filesystem`.
    """
    key = _pool_key(protocol, settings)
    if key is None:
        fs = open_filesystem(protocol, settings, redact=redact)
        try:
            yield fs
        finally:
            close_filesystem(fs)
        return
    entry = _POOL.acquire(key, lambda: open_filesystem(protocol, settings, redact=redact))
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
    what collection would do later; each runs at most once.
    """
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


def _pool_key(protocol: str, settings: Mapping[str, Any]) -> str | None:
    """A digest of the protocol and the resolved settings, or None if they have no stable one.

    Secret values take part in the digest (a rotated secret must not reuse the old client)
    but only their hash is kept.
    """
    try:
        text = json.dumps([protocol, settings], sort_keys=True, default=_fingerprint_value)
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


# --- settings: what a filesystem would reject later, checked when it is built ---------------

#: Settings each package takes as text only; another type would fail only on the first
#: request (``key=5`` when it is signed), as a failure of the store.
_TEXT_SETTINGS: dict[str, frozenset[str]] = {
    "s3fs": frozenset(
        {"key", "secret", "token", "endpoint_url", "username", "password", "profile"}
    ),
    "adlfs": frozenset(
        {
            "account_name",
            "account_key",
            "connection_string",
            "sas_token",
            "client_id",
            "client_secret",
            "tenant_id",
            "account_host",
        }
    ),
}


def _package_of(cls: type) -> str:
    return cls.__module__.split(".", 1)[0]


def _named_parameters(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``function`` after ``self``, with their defaults.

    Empty when the signature cannot be read (then nothing is checked against it).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters if p.kind in keyword}


def _check_settings(
    protocol: str, cls: type[AbstractFileSystem], settings: Mapping[str, Any]
) -> None:
    """Raise ConfigurationError for a missing or wrongly typed setting, by name.

    Checked before the filesystem is built: a half-built one can fail again in ``__del__``
    and print a traceback when it is collected. Values are never shown.
    """
    # Unknown names cannot be told here: every fsspec filesystem takes **kwargs, and most
    # ignore the ones they do not know (s3fs's are checked by _prepare_s3fs).
    for name, default in _named_parameters(cls.__init__).items():
        if default is inspect.Parameter.empty and name not in settings:
            raise ConfigurationError(
                f"{protocol}:// needs the setting {name!r}: add it to the source's settings"
                f" ({cls.__name__} does not read it from the URL)"
            )
    for name in sorted(_TEXT_SETTINGS.get(_package_of(cls), frozenset())):
        value = settings.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(
                f"the {protocol}:// setting {name!r} must be text, not {type(value).__name__}:"
                " quote it, or give a Secret"
            )


def _unknown_setting(
    protocol: str, cls: type, name: str, accepted: Iterable[str]
) -> ConfigurationError:
    close = difflib.get_close_matches(name, [a for a in accepted if not a.startswith("_")], n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigurationError(
        f"{protocol}:// has no setting {name!r}{guess}: check the setting names against the"
        f" documentation of {_package_of(cls)}'s {cls.__name__}"
    )


def _building_error(
    protocol: str,
    settings: Mapping[str, Any],
    exc: Exception,
    redact: Callable[[str], str] | None,
) -> Exception:
    """What building a filesystem raised, as ours when a setting or a package is to blame."""
    if isinstance(exc, RunnerStorageError):
        return exc
    if isinstance(exc, ImportError):  # e.g. hdfs:// imports pyarrow only when it is built
        return _missing_dependency(protocol, exc)
    if isinstance(exc, TypeError | ValueError | AttributeError) or _type_names(exc) & _CONFIG_TYPES:
        return _rejected_settings(protocol, settings, exc, redact)
    return exc  # a network failure of a filesystem that connects when built


def _rejected_settings(
    protocol: str,
    settings: Mapping[str, Any],
    exc: Exception,
    redact: Callable[[str], str] | None,
) -> ConfigurationError:
    # Without a redactor only the type is shown: the filesystem's text may quote a value.
    detail = redact(_describe(exc)) if redact is not None else type(exc).__name__
    names = ", ".join(sorted(settings)) or "(none)"
    return ConfigurationError(
        f"{protocol}:// rejected the settings {names} ({detail}): check their names, types"
        " and values against the filesystem's documentation"
    )


def _missing_dependency(protocol: str, exc: ImportError) -> MissingDependencyError:
    """What to install for ``protocol``, after importing (or building) its filesystem failed."""
    extra = EXTRAS.get(protocol)
    if extra is not None:
        package = required_package(protocol) or protocol
        return MissingDependencyError(
            f"the {protocol}:// protocol needs the {package} package, which is not installed:"
            f" pip install 'runner-storage[{extra}]'"
        )
    missing = next(
        (e.name for e in _chain(exc) if isinstance(e, ModuleNotFoundError) and e.name), None
    )
    if missing is None:  # installed, but it does not import: a broken or mismatched version
        package = required_package(protocol) or protocol
        return MissingDependencyError(
            f"the {protocol}:// protocol cannot load its implementation"
            f" ({_describe(exc.__cause__ or exc)}): reinstall {package} in a version that"
            " matches the installed fsspec"
        )
    module = missing.split(".", 1)[0]
    # fsspec's own advice names the distribution to install, which the module may not.
    advice = known_implementations.get(protocol, {}).get("err")
    install = advice or f"pip install {module}"
    return MissingDependencyError(
        f"the {protocol}:// protocol needs the {module} module, which is not installed: {install}"
    )


# --- s3fs: what every new botocore session would redo ------------------------------------------

_BOTOCORE_LOADERS: dict[Any, Any] = {}
_BOTOCORE_LOCK = threading.Lock()


def _prepare_s3fs(protocol: str, fs: AbstractFileSystem) -> None:
    """Check what s3fs passes on to botocore, share botocore's data, and build the client.

    s3fs hands every setting it does not know to botocore's session, which rejects an
    unknown name only when the first request builds it. Building the client now makes a
    misspelled setting, a bad endpoint or a missing profile a configuration error here
    instead of a failed (and retried) request; it is built on first use anyway.
    """
    if _package_of(type(fs)) != "s3fs":
        return
    if getattr(fs, "session", True) is None:
        import aiobotocore.session  # noqa: PLC0415 - only when s3fs is in use

        taken = [
            *_named_parameters(aiobotocore.session.AioSession.__init__),
            *_named_parameters(type(fs).__init__),
        ]
        for name in sorted(getattr(fs, "kwargs", {})):
            if name not in taken:
                raise _unknown_setting(protocol, type(fs), name, taken)
        _share_botocore_data(fs)
    fs.connect()


def _share_botocore_data(fs: AbstractFileSystem) -> None:
    """Give a new s3fs filesystem a botocore session that reuses what never changes.

    Every botocore session loads and parses the same service models, endpoint rules and
    partitions (~1 MB of JSON, ~50 ms of CPU) and parses every listed ``LastModified``
    with dateutil (~50 us each: 0.1 s for 2,000 objects). Here all sessions of the process
    share one data loader (its cache holds the parsed models), and timestamps in ISO 8601
    (what S3 listings carry) are read with :meth:`datetime.datetime.fromisoformat`, falling
    back to botocore's parser for anything else. Credentials are still resolved per
    session. A session the caller passed in is left alone.
    """
    if type(fs).__module__.split(".", 1)[0] != "s3fs" or getattr(fs, "session", True) is not None:
        return
    try:
        import aiobotocore.session  # noqa: PLC0415 - only when s3fs is in use
        from botocore.loaders import create_loader  # noqa: PLC0415
    except ImportError:  # pragma: no cover - s3fs depends on both
        return
    session = aiobotocore.session.AioSession(**getattr(fs, "kwargs", {}))
    data_path = session.get_config_variable("data_path")
    with _BOTOCORE_LOCK:
        loader = _BOTOCORE_LOADERS.get(data_path)
        if loader is None:
            loader = _BOTOCORE_LOADERS[data_path] = create_loader(data_path)
    session.register_component("data_loader", loader)
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_parse_timestamp
    )
    fs.session = session


def _parse_timestamp(value: Any) -> Any:
    """``2024-05-01T12:00:00.000Z`` -> an aware datetime, fast; anything else: botocore's."""
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                return parsed
    from botocore.utils import parse_timestamp  # noqa: PLC0415 - s3fs is in use

    return parse_timestamp(value)


# --- listing -------------------------------------------------------------------------------


def list_tree(fs: AbstractFileSystem, url: str, concurrency: int) -> Listing:
    """List everything under ``url`` with one recursive listing; no object is read.

    A URL that names a single object lists that object, published under its basename.
    HTTP directory pages carry no sizes, so those are completed with one HEAD each.

    Raises:
        UnsafeContentError: a key would leave the version, or keys conflict.
        SourceError: the source does not report an object's size.
        Exception: whatever the filesystem raised (translate with :func:`translate_error`).
    """
    path = fs._strip_protocol(url)
    kwargs: dict[str, Any] = {}
    if _generic_find(fs):
        # The generic walker swallows listing errors (a 403 would read as "empty").
        kwargs["on_error"] = "raise"
    found = fs.find(path, detail=True, **kwargs)
    if isinstance(found, list):
        # adlfs answers a blob's own URL with a list of names, whatever ``detail`` says.
        found = {name: fs.info(name) for name in found}
    infos = {
        name: info
        for name, info in found.items()
        if info.get("type", "file") != "directory"
        and not is_directory_marker(name, info.get("size"))
    }
    _complete_sizes(fs, infos, concurrency)

    single = len(infos) == 1 and next(iter(infos)).rstrip("/") == path.rstrip("/")
    if single and _is_http(fs) and str(next(iter(infos.values())).get("url", "")).endswith("/"):
        # fsspec's HTTP listing takes any page that answers for a file; a page we were
        # redirected to as a folder is an empty directory listing, not content.
        infos, single = {}, False
    prefix = path.rstrip("/").rsplit("/", 1)[0] if single else path
    # HTTP listings hold links, percent-encoded; other stores list keys as they are.
    decode = unquote if _is_http(fs) else _same
    entries: list[Entry] = []
    remote: dict[str, str] = {}
    for name, info in sorted(infos.items()):
        relative = safe_relative_path(decode(name), decode(prefix))
        size = info.get("size")
        if not isinstance(size, int):
            raise SourceError(
                f"the source does not report the size of {relative!r}, so a download cannot"
                " be checked; serve it with a Content-Length"
            )
        entries.append(Entry(relative, size, _token(info)))
        remote[relative] = name
    return Listing(tuple(entries), remote)


def _is_http(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "http" in protocols


def _same(text: str) -> str:
    return text


def _generic_find(fs: AbstractFileSystem) -> bool:
    if isinstance(fs, AsyncFileSystem):
        return type(fs)._find is AsyncFileSystem._find
    return type(fs).find is AbstractFileSystem.find


def _token(info: Mapping[str, Any]) -> str:
    for field in TOKEN_FIELDS:
        value = info.get(field)
        if value not in (None, ""):
            return f"{field}={value}"
    return ""


def _complete_sizes(fs: AbstractFileSystem, infos: dict[str, Any], concurrency: int) -> None:
    missing = [name for name, info in infos.items() if info.get("size") is None]
    if not missing:
        return
    if isinstance(fs, AsyncFileSystem):
        details = run_on_loop(fs.loop, _info_all, fs, missing, concurrency)
    else:
        details = [fs.info(name) for name in missing]
    for name, detail in zip(missing, details, strict=True):
        infos[name] = {**infos[name], **detail}


async def _info_all(fs: AsyncFileSystem, names: Sequence[str], concurrency: int) -> list[Any]:
    limit = asyncio.Semaphore(concurrency)

    async def one(name: str) -> Any:
        async with limit:
            return await fs._info(name)

    return list(await asyncio.gather(*(one(name) for name in names)))


# --- transfers -----------------------------------------------------------------------------

#: Extra ``get`` options per implementation package. gcsfs's default path asks for each
#: object's metadata twice before reading it (3 requests instead of 1); its chunked reads
#: only start above 100 MB anyway, far beyond the files of a code tree.
_GET_OPTIONS: dict[str, dict[str, Any]] = {"gcsfs": {"concurrency": 1}}


def download_all(
    fs: AbstractFileSystem, pairs: Sequence[tuple[str, str]], concurrency: int
) -> None:
    """Download ``(remote, local)`` pairs, at most ``concurrency`` at a time.

    Async filesystems get one ``get`` call that fsspec runs concurrently on its own loop,
    reusing the filesystem's connection pool; others get a thread pool.
    """
    if not pairs:
        return
    remote = [r for r, _ in pairs]
    local = [lp for _, lp in pairs]
    if isinstance(fs, AsyncFileSystem):
        options = _GET_OPTIONS.get(type(fs).__module__.split(".", 1)[0], {})
        fs.get(remote, local, batch_size=concurrency, **options)
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rs-get") as pool:
        futures = [pool.submit(fs.get_file, r, lp) for r, lp in pairs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # raises the first failure


# --- errors --------------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Error codes (S3, Azure) and exception type names (botocore, aiohttp, azure-core,
# google-auth), matched by name so that no optional package has to be imported here.
_AUTH_CODES = _words(
    "AccessDenied AccountProblem AllAccessDisabled AuthenticationFailed AuthorizationFailure"
    " AuthorizationPermissionMismatch ExpiredToken InvalidAccessKeyId InvalidAuthenticationInfo"
    " InvalidClientTokenId InvalidToken NotSignedUp RequestTimeTooSkewed SignatureDoesNotMatch"
)
_NOT_FOUND_CODES = _words("NoSuchBucket NoSuchKey ContainerNotFound BlobNotFound ResourceNotFound")
_TRANSIENT_CODES = _words(
    "InternalError OperationTimedOut RequestTimeout ServerBusy ServiceUnavailable SlowDown"
    " Throttling ThrottlingException"
)
_AUTH_TYPES = _words(
    "ClientAuthenticationError DefaultCredentialsError NoCredentialsError"
    " PartialCredentialsError RefreshError"
)
_NOT_FOUND_TYPES = frozenset({"ResourceNotFoundError"})
_TRANSIENT_TYPES = _words(
    "ClientConnectionError ClientPayloadError ConnectTimeoutError ConnectionClosedError"
    " EndpointConnectionError ReadTimeoutError ServerDisconnectedError ServiceRequestError"
    " ServiceResponseError"
)
#: botocore's errors about the local configuration (a missing profile, an unreadable file)
#: and about request parameters, which come from settings such as ``s3_additional_kwargs``.
_CONFIG_TYPES = _words(
    "ConfigNotFound ConfigParseError InvalidConfigError ParamValidationError ProfileNotFound"
)
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EBUSY,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EPIPE,
        errno.ETIMEDOUT,
        getattr(errno, "EREMOTEIO", errno.EIO),
    }
)
#: Local-disk errnos even without a file name (a failed write() carries none).
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    for attribute in ("status", "status_code", "code"):  # aiohttp, azure, gcsfs
        value = getattr(exc, attribute, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    code = getattr(exc, "error_code", None)  # azure
    return str(code) if code else None


def _kind_of(exc: BaseException) -> str | None:
    names = _type_names(exc)
    code = _error_code(exc)
    status = _status(exc)
    if names & _AUTH_TYPES or code in _AUTH_CODES or status in (401, 403):
        return "auth"
    if isinstance(exc, PermissionError):
        return "auth"
    if isinstance(exc, OSError) and str(exc).startswith("Forbidden"):  # gcsfs's 403
        return "auth"
    if names & _NOT_FOUND_TYPES or code in _NOT_FOUND_CODES or status == 404:
        return "not_found"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if names & _TRANSIENT_TYPES or code in _TRANSIENT_CODES:
        return "transient"
    if status is not None and (status in (408, 429) or status >= 500):
        return "transient"
    if isinstance(exc, TimeoutError | ConnectionError | asyncio.TimeoutError):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"
    if names & _CONFIG_TYPES or type(exc) is TypeError:
        # A plain TypeError from a filesystem means a setting of the wrong type reached it
        # (``config_kwargs={"connect_timeout": "5"}`` fails on the first request);
        # retrying cannot fix it.
        return "config"
    return None


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _local_path(exc: OSError, staging: Path | None) -> str | None:
    if staging is None:
        return None
    root = os.fspath(staging)
    for name in (exc.filename, exc.filename2):
        if isinstance(name, str | os.PathLike) and os.fspath(name).startswith(root):
            return os.fspath(name)
    return None


def translate_error(
    exc: Exception,
    *,
    where: str,
    redact: Callable[[str], str],
    staging: Path | None = None,
    downloading: bool = False,
    settings: Iterable[str] = (),
) -> tuple[RunnerStorageError, bool]:
    """Translate a filesystem error into ours, once, with a one-line redacted message.

    Args:
        exc: what the filesystem (or the local disk) raised.
        where: the redacted URL of the source.
        redact: removes secret values from text.
        staging: the directory being built; an OSError about a path inside it is local.
        downloading: whether the error happened while downloading listed objects (a
            missing object then means it changed upstream, which is transient).
        settings: the names of the source's settings, named when one of them is to blame.

    Returns:
        The error to raise, and whether chaining ``exc`` to it is safe (False when the
        original could carry a secret).
    """
    if isinstance(exc, RunnerStorageError):
        return exc, True
    if isinstance(exc, OSError):
        local = _local_path(exc, staging)
        if local is not None or exc.errno in _DISK_ERRNOS:
            return disk_error(f"cannot write {local or 'the new version'}", exc), True
    kind = next((k for k in map(_kind_of, _chain(exc)) if k is not None), None)
    detail = redact(_describe(exc))
    leaks = any(redact(str(e)) != str(e) for e in _chain(exc))
    error: RunnerStorageError
    if kind == "auth":
        error = AuthenticationError(
            f"access to {where} was denied ({detail}): check the credentials and the"
            " permissions on the bucket or container"
        )
        return error, False
    if kind == "config":
        names = ", ".join(sorted(settings)) or "(none)"
        error = ConfigurationError(
            f"pulling {where} failed ({detail}): the filesystem rejected the value of a"
            f" setting; check the types and values of the settings: {names}"
        )
    elif kind == "not_found" and downloading:
        error = TransientSourceError(
            f"an object under {where} disappeared while downloading ({detail}): the next"
            " pull lists again (nothing was published)"
        )
    elif kind == "not_found":
        error = NotFoundError(
            f"{where} was not found ({detail}): check the bucket or container and the path"
            " in the URL"
        )
    elif kind == "transient":
        error = TransientSourceError(
            f"cannot reach {where} ({detail}): the source may be down or throttling; the"
            " pull will be retried"
        )
    else:
        error = SourceError(f"pulling {where} failed ({detail})")
    return error, not leaks
