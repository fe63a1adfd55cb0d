"""S3 pulls through botocore's own client: the same listing and reads as s3fs, without its stack.

A pull of ``s3://`` needs two operations, ListObjectsV2 (one request per 1,000 keys) and
GetObject. s3fs serves them over aiobotocore and aiohttp, whose import and client cost a
one-shot ``runner-storage pull`` about half a second before its first request can leave,
more than the listing itself costs the store. For settings this module understands
completely (:func:`direct_settings`), a pull lists and downloads through
:class:`DirectS3FileSystem` instead: botocore's synchronous client, which s3fs's own stack
extends, built from the settings exactly as s3fs builds its client (its timeouts, ``anon``
as unsigned requests, ``use_ssl``, ``client_kwargs``, ``config_kwargs``, ``profile``,
``requester_pays``), with s3fs's retries and its translation of S3's error codes into
``OSError`` subclasses. The listing is the one s3fs returns, field for field (the
revision is its digest), which ``tests/test_s3_direct.py`` checks against s3fs itself on a
real server.

Anything else (s3fs-only settings such as ``version_aware`` or ``s3_additional_kwargs``, a
``?versionId=`` URL, fsspec configuration for ``s3``, an ``s3`` implementation registered
by the application, a setting of an unexpected type) goes through s3fs, which also reports
what is wrong with it. Nothing is written: this filesystem lists, reads and downloads.
"""

from __future__ import annotations

import errno
import functools
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
from fsspec.config import conf as fsspec_conf
from fsspec.registry import known_implementations
from fsspec.spec import AbstractFileSystem

from runner_storage.fs.protocols import is_installed
from runner_storage.fs.s3 import share_botocore_data

__all__ = ["DirectS3FileSystem", "direct_settings", "open_direct_s3"]

#: s3fs's defaults, which its client is built with unless ``config_kwargs`` says otherwise.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15
#: Attempts of one call, and the pause before attempt ``i + 1``: s3fs's ``_error_wrapper``.
RETRIES = 5
#: Connections kept open per client (botocore keeps 10).
POOL_CONNECTIONS = 64
#: Bytes read from a response body at a time.
_CHUNK = 1 << 20

#: The settings a direct client takes, with the types it takes them as (None: any value).
_TEXT = (str, type(None))
_SETTING_TYPES: dict[str, tuple[type, ...] | None] = {
    "key": _TEXT,
    "secret": _TEXT,
    "token": _TEXT,
    "endpoint_url": _TEXT,
    "profile": _TEXT,
    "anon": (bool,),
    "use_ssl": (bool,),
    "requester_pays": (bool,),
    "client_kwargs": (dict, type(None)),
    "config_kwargs": (dict, type(None)),
    # Ours, for every filesystem of a pull: there is no cache here to skip.
    "skip_instance_cache": None,
    "use_listings_cache": None,
}

#: S3 error codes and the ``OSError`` s3fs raises for each (others: ``OSError(EIO)``).
_NOT_FOUND_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchBucketPolicy",
        "NoSuchKey",
        "NoSuchLifecycleConfiguration",
        "NoSuchUpload",
        "NoSuchVersion",
        "404",
    }
)
_PERMISSION_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "CrossLocationLoggingProhibited",
        "ExpiredToken",
        "IllegalLocationConstraintException",
        "InvalidAccessKeyId",
        "InvalidObjectState",
        "InvalidPayer",
        "InvalidSecurity",
        "NotSignedUp",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
        "403",
    }
)
#: Client errors s3fs retries, by text of the error.
_RETRIED_TEXT = ("SlowDown", "reduce your request rate", "XAmzContentSHA256Mismatch")


def direct_settings(protocol: str, url: str, settings: Mapping[str, Any]) -> bool:
    """Whether a pull of ``url`` with ``settings`` can go through :class:`DirectS3FileSystem`.

    Only when nothing could make s3fs behave otherwise: every setting is one s3fs gives
    botocore (:data:`_SETTING_TYPES`) with a value of the type it takes, no fsspec
    configuration applies to ``s3``, fsspec's registry names s3fs's ``S3FileSystem`` for
    the protocol, the URL names no object version, and s3fs and botocore are installed.
    """
    if protocol not in ("s3", "s3a") or "?versionId=" in url:
        return False
    for name, value in settings.items():
        if name not in _SETTING_TYPES:
            return False
        types = _SETTING_TYPES[name]
        if types is not None and not isinstance(value, types):
            return False
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            return False
    if fsspec_conf.get(protocol) or fsspec_conf.get("s3"):
        return False
    registered = fsspec.registry.get(protocol)
    if registered is not None and registered.__module__.split(".", 1)[0] != "s3fs":
        return False
    if known_implementations.get(protocol, {}).get("class") != "s3fs.S3FileSystem":
        return False
    return is_installed("s3fs") and is_installed("botocore")


def open_direct_s3(settings: Mapping[str, Any]) -> DirectS3FileSystem:
    """A :class:`DirectS3FileSystem` built from settings :func:`direct_settings` accepted.

    Raises:
        Exception: what botocore raised building the client (a missing profile, a bad
            endpoint, an unknown ``config_kwargs`` name); translate it as s3fs's would be.
    """
    return DirectS3FileSystem(_client(settings), settings)


def _client(settings: Mapping[str, Any]) -> Any:
    """The S3 client of botocore, built from the settings as s3fs's ``set_session`` builds it."""
    import botocore.session  # noqa: PLC0415 - only for s3:// pulls
    from botocore import UNSIGNED  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    client_kwargs = dict(settings.get("client_kwargs") or {})
    init_kwargs = {
        "aws_access_key_id": settings.get("key"),
        "aws_secret_access_key": settings.get("secret"),
        "aws_session_token": settings.get("token"),
        "endpoint_url": settings.get("endpoint_url"),
    }
    init_kwargs = {
        name: value
        for name, value in init_kwargs.items()
        if value is not None and value != client_kwargs.get(name)
    }
    if "use_ssl" not in client_kwargs:
        init_kwargs["use_ssl"] = settings.get("use_ssl", True)
    config_kwargs = {
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        # Downloads run on ``transfer_concurrency`` threads, each with a connection; a
        # connection is only opened when one is needed.
        "max_pool_connections": POOL_CONNECTIONS,
        **(settings.get("config_kwargs") or {}),
    }
    if settings.get("anon"):
        credentials = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
        init_kwargs = {k: v for k, v in init_kwargs.items() if k not in credentials}
        client_kwargs = {k: v for k, v in client_kwargs.items() if k not in credentials}
        config_kwargs["signature_version"] = UNSIGNED
    profile = settings.get("profile")
    session = botocore.session.Session(**({"profile": profile} if profile else {}))
    share_botocore_data(session)
    return session.create_client(
        "s3", config=Config(**config_kwargs), **init_kwargs, **client_kwargs
    )


class DirectS3FileSystem(AbstractFileSystem):  # type: ignore[misc]
    """A read-only S3 filesystem over botocore's client: ``find``, ``info`` and ``get_file``.

    What a pull asks of s3fs, answered as s3fs answers it (same info dictionaries, same
    ``OSError`` subclasses, same retries); everything else is not implemented. Its
    connections are closed by :func:`runner_storage.fs.pool.close_filesystem`.
    """

    protocol = ("s3", "s3a")
    cachable = False
    root_marker = ""

    def __init__(self, client: Any, settings: Mapping[str, Any]) -> None:
        """Wrap ``client``; ``settings`` decide the request options (``requester_pays``)."""
        super().__init__()
        self._client = client
        self._request = {"RequestPayer": "requester"} if settings.get("requester_pays") else {}
        weakref.finalize(self, client.close)

    def split_path(self, path: str) -> tuple[str, str]:
        """``bucket/key`` (any ``s3://`` stripped) -> ``(bucket, key)``."""
        bucket, _, key = self._strip_protocol(path).partition("/")
        return bucket, key

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Every object below ``path`` (one paginated listing), as s3fs's ``find`` lists it.

        A path below which nothing is listed is looked up as one object (s3fs does so too).
        """
        if maxdepth is not None or withdirs or kwargs:
            raise NotImplementedError("DirectS3FileSystem.find lists whole trees of files only")
        bucket, key = self.split_path(path)
        if not bucket:
            raise ValueError("Cannot traverse all of S3")
        found = self._list(bucket, key.lstrip("/") + "/" if key else "")
        if not found and key:
            try:
                found = [self.info(path)]
            except FileNotFoundError:
                found = []
            for info in found:
                info["Key"] = info["name"]  # s3fs's find sets it on a looked-up object too
        files = {o["name"]: o for o in found if o["type"] != "directory"}
        return files if detail else sorted(files)

    def _list(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": ""}
        found: list[dict[str, Any]] = []
        while True:
            page = self._call("list_objects_v2", **request)
            for content in page.get("Contents", ()):
                content["type"] = "file"
                content["size"] = content["Size"]
                content["Key"] = content["name"] = f"{bucket}/{content['Key']}"
                found.append(content)
            if not page.get("IsTruncated"):
                return sorted(found, key=lambda info: info["name"])
            request["ContinuationToken"] = page["NextContinuationToken"]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """One object's details from a HEAD, or a directory's; s3fs's ``info``.

        Raises:
            FileNotFoundError: no object is there, and nothing below it.
        """
        bucket, key = self.split_path(path)
        if not bucket:
            return {"name": path, "size": 0, "type": "directory"}
        if not key:
            out = self._call("head_bucket", Bucket=bucket)
            return {
                "name": bucket,
                "type": "directory",
                "size": 0,
                "StorageClass": "DIRECTORY",
                "VersionId": out.get("VersionId"),
            }
        try:
            out = self._call("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            pass
        else:
            return {
                "ETag": out.get("ETag", ""),
                "LastModified": out.get("LastModified", ""),
                "size": out["ContentLength"],
                "name": f"{bucket}/{key}",
                "type": "file",
                "StorageClass": out.get("StorageClass", "STANDARD"),
                "VersionId": out.get("VersionId"),
                "ContentType": out.get("ContentType"),
            }
        out = self._call(
            "list_objects_v2",
            Bucket=bucket,
            Prefix=key.rstrip("/") + "/",
            Delimiter="/",
            MaxKeys=1,
        )
        if out.get("KeyCount", 0) > 0 or out.get("Contents") or out.get("CommonPrefixes"):
            return {
                "name": f"{bucket}/{key}",
                "type": "directory",
                "size": 0,
                "StorageClass": "DIRECTORY",
            }
        raise FileNotFoundError(path)

    def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        """Download one object to the local file ``lpath`` (created or truncated).

        A body cut short is asked for again from where it stopped (a ranged GET), as s3fs
        does, up to :data:`RETRIES` times.
        """
        bucket, key = self.split_path(rpath)
        with open(lpath, "wb") as out:
            for attempt in range(RETRIES):
                done = out.tell()
                extra = {"Range": f"bytes={done}-"} if done else {}
                body = self._call("get_object", Bucket=bucket, Key=key, **extra)["Body"]
                try:
                    for chunk in body.iter_chunks(_CHUNK):
                        out.write(chunk)
                except _read_errors() as exc:
                    if attempt == RETRIES - 1:
                        failure = OSError(errno.EIO, f"reading {rpath} failed: {exc}")
                        raise failure from exc.with_traceback(None)
                    time.sleep(_pause(attempt))
                else:
                    return
                finally:
                    body.close()

    def _call(self, operation: str, **request: Any) -> Any:
        """One S3 operation, retried and translated as s3fs's ``_call_s3`` does.

        botocore retries connection failures, timeouts, throttling and server errors
        itself (its ``retries`` configuration); what it gives up on is retried here only
        where s3fs retries it on top: an answer it could not parse, and a client error
        that says the request rate was too high.
        """
        from botocore.exceptions import ClientError  # noqa: PLC0415 - loaded with the client
        from botocore.parsers import ResponseParserError  # noqa: PLC0415

        method: Callable[..., Any] = getattr(self._client, operation)
        extra = self._request_options(operation)
        error: Exception | None = None
        for attempt in range(RETRIES):
            try:
                return method(**request, **extra)
            except ResponseParserError as exc:
                error = exc
            except ClientError as exc:
                error = exc
                if not any(text in str(exc) for text in _RETRIED_TEXT):
                    break
            time.sleep(_pause(attempt))
        assert error is not None  # noqa: S101 - the loop ran and failed
        # botocore's frames hold the failed response, and with it a connection that would
        # stay open for as long as this error is kept: the error goes on without them.
        raise translate_client_error(error.with_traceback(None))

    def _request_options(self, operation: str) -> dict[str, Any]:
        """The request-wide options (``RequestPayer``) that ``operation`` takes.

        s3fs filters them by the operation's input in the same way: HeadBucket, for one,
        takes no ``RequestPayer``, and botocore would refuse the call.
        """
        if not self._request:
            return {}
        meta = self._client.meta
        shape = meta.service_model.operation_model(meta.method_to_api_mapping[operation])
        members = shape.input_shape.members if shape.input_shape is not None else {}
        return {name: value for name, value in self._request.items() if name in members}

    def _strip_protocol(self, path: Any) -> Any:
        """``s3://bucket/key/`` -> ``bucket/key``, as fsspec strips it for s3fs."""
        text = str(path)
        for protocol in self.protocol:
            if text.startswith(protocol + "://"):
                text = text[len(protocol) + 3 :]
                break
        return text.rstrip("/") or self.root_marker


def _pause(attempt: int) -> float:
    """Seconds before the next attempt: s3fs's backoff."""
    return min(1.7**attempt * 0.1, 15)


@functools.cache
def _read_errors() -> tuple[type[Exception], ...]:
    """A response body cut short: what reading it raises (botocore cannot retry that)."""
    from http.client import IncompleteRead  # noqa: PLC0415

    from botocore.exceptions import HTTPClientError  # noqa: PLC0415 - loaded with the client
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    return (socket.timeout, ConnectionError, IncompleteRead, HTTPClientError, HTTPError)


def translate_client_error(error: Exception) -> Exception:
    """A botocore error as s3fs raises it: a ``ClientError`` becomes an ``OSError``.

    ``FileNotFoundError`` and ``PermissionError`` for the codes s3fs maps to them,
    ``TimeoutError`` for ``RequestTimeout``, ``OSError(EIO)`` otherwise, each with the
    store's message and the ``ClientError`` as its cause (whose code and HTTP status
    :mod:`runner_storage.fs.errors` reads).
    """
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping):
        return error
    code = response.get("Error", {}).get("Code")
    message = response.get("Error", {}).get("Message") or str(error)
    translated: OSError
    if code in _NOT_FOUND_CODES:
        translated = FileNotFoundError(message)
    elif code in _PERMISSION_CODES:
        translated = PermissionError(message)
    elif code == "RequestTimeout":
        translated = TimeoutError(message)
    else:
        translated = OSError(errno.EIO, str(error))
    translated.__cause__ = error
    return translated
