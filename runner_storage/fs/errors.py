"""fsspec's errors, translated once into the error tree, with one-line redacted messages.

s3fs, gcsfs, adlfs, fsspec's HTTP and FTP filesystems and the local disk raise what their
own stack raises (botocore, aiohttp, azure-core, google-auth, ftplib, ``OSError``). They are
matched here by class name and error code, so that no optional package (nor ftplib) is
imported, HTTP statuses mean what :func:`runner_storage.exceptions.status_error` says for
every transport, and FTP replies what their code says (RFC 959: 4xx transient, 530 login).
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NoReturn

from runner_storage.exceptions import (
    DISK_ERRNOS,
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
    describe_error,
    disk_error,
    exception_chain,
    status_error,
)
from runner_storage.secrets import chain_may_leak

__all__ = [
    "CONFIG_TYPES",
    "error_class",
    "raise_from",
    "translate_error",
    "type_names",
]


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
CONFIG_TYPES = _words(
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


#: ftplib's errors carry the server's reply, which starts with its code.
_FTP_LOGIN_CODES = ("530", "532")  # not logged in; need an account
_FTP_NOT_FOUND_CODES = ("550",)  # no such file or folder, or not accessible


def _ftp_kind(exc: BaseException) -> type[RunnerStorageError] | None:
    """What an ftplib error means, by its class (matched by name) and reply code."""
    if not any(cls.__module__ == "ftplib" for cls in type(exc).__mro__):
        return None
    names = type_names(exc)
    reply = str(exc)
    if "error_temp" in names:  # 4xx: 421 closing, 425 no data connection, 450, 451
        return TransientSourceError
    if "error_perm" in names and reply.startswith(_FTP_LOGIN_CODES):
        return AuthenticationError
    if "error_perm" in names and reply.startswith(_FTP_NOT_FOUND_CODES):
        return NotFoundError
    return None  # another permanent reply, or one ftplib did not expect


def type_names(exc: BaseException) -> set[str]:
    """The names of the classes of ``exc``: optional packages are matched without imports."""
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


def error_class(exc: BaseException) -> type[RunnerStorageError] | None:
    """Which error of the tree ``exc`` (or what it chains) stands for, or None if unknown.

    One of :class:`AuthenticationError`, :class:`NotFoundError`,
    :class:`TransientSourceError` or :class:`ConfigurationError` (a setting of the wrong
    type reached the filesystem).
    """
    return next((k for k in map(_kind_of, exception_chain(exc)) if k is not None), None)


def _kind_of(exc: BaseException) -> type[RunnerStorageError] | None:
    ftp = _ftp_kind(exc)
    if ftp is not None:
        return ftp
    names = type_names(exc)
    code = _error_code(exc)
    status = _status(exc)
    by_status = status_error(status) if status is not None else None
    if (
        names & _AUTH_TYPES
        or code in _AUTH_CODES
        or by_status is AuthenticationError
        or isinstance(exc, PermissionError)
        or (isinstance(exc, OSError) and str(exc).startswith("Forbidden"))  # gcsfs's 403
    ):
        return AuthenticationError
    if (
        names & _NOT_FOUND_TYPES
        or code in _NOT_FOUND_CODES
        or by_status is NotFoundError
        or isinstance(exc, FileNotFoundError)
    ):
        return NotFoundError
    if (
        names & _TRANSIENT_TYPES
        or code in _TRANSIENT_CODES
        or by_status is TransientSourceError
        # EOFError: ftplib's answer to a server that closed the connection (idle, 421).
        or isinstance(exc, TimeoutError | ConnectionError | asyncio.TimeoutError | EOFError)
        or (isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS)
    ):
        return TransientSourceError
    if names & CONFIG_TYPES or type(exc) is TypeError:
        # A plain TypeError from a filesystem means a setting of the wrong type reached it
        # (``config_kwargs={"connect_timeout": "5"}`` fails on the first request);
        # retrying cannot fix it.
        return ConfigurationError
    return None


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
    doing: str = "pulling",
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
        doing: what was being done to ``where``, for the message (``pulling``, ``writing``).

    Returns:
        The error to raise, and whether chaining ``exc`` to it is safe (False when the
        original could carry a secret).
    """
    if isinstance(exc, RunnerStorageError):
        return exc, True
    if isinstance(exc, OSError):
        local = _local_path(exc, staging)
        if local is not None or exc.errno in DISK_ERRNOS:
            return disk_error(f"cannot write {local or 'the new version'}", exc), True
    kind = error_class(exc)
    detail = describe_error(exc, redact=redact)
    error: RunnerStorageError
    if kind is AuthenticationError:
        error = AuthenticationError(
            f"access to {where} was denied ({detail}): check the credentials and the"
            " permissions on the bucket, container or folder"
        )
        return error, False
    if kind is ConfigurationError:
        names = ", ".join(sorted(settings)) or "(none)"
        error = ConfigurationError(
            f"{doing} {where} failed ({detail}): the filesystem rejected the value of a"
            f" setting; check the types and values of the settings: {names}"
        )
    elif kind is NotFoundError and downloading:
        error = TransientSourceError(
            f"an object under {where} disappeared while downloading ({detail}): the next"
            " pull lists again (nothing was published)"
        )
    elif kind is NotFoundError:
        error = NotFoundError(
            f"{where} was not found ({detail}): check the bucket, container or folder and the path"
            " in the URL"
        )
    elif kind is TransientSourceError:
        error = TransientSourceError(
            f"cannot reach {where} ({detail}): the source may be down or throttling; try"
            " again later"
        )
    else:
        error = SourceError(f"{doing} {where} failed ({detail})")
    return error, not chain_may_leak(exc, redact)


def raise_from(error: RunnerStorageError, cause: Exception, *, chain: bool) -> NoReturn:
    """Raise ``error`` in place of ``cause``, chained to it only when ``chain`` says safe.

    The chain is cut (``from None``) when ``cause`` could carry a secret: a traceback
    would print it. ``error`` may be ``cause`` itself (already one of ours).
    """
    if error is cause:
        raise error
    if chain:
        raise error from cause
    raise error from None
