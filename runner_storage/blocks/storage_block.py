"""The storage-block interface, and what every storage block shares: keys, checks, errors.

:class:`StorageBlock` is Prefect 2.0's interface (``key = await block.write(data)``,
``await block.read(key)``); the blocks themselves are in :mod:`runner_storage.blocks.storage`.
Here: how keys are made (:func:`new_key`) and checked (:func:`check_key`: a key read back
never leaves its block), the checks of constructor arguments, and the one way a block's
failure becomes an error of the tree (:func:`raise_translated`).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal, NoReturn, get_args

from runner_storage.exceptions import ConfigurationError, NotFoundError, describe_error
from runner_storage.fs.entries import path_problem
from runner_storage.fs.errors import raise_from, translate_error
from runner_storage.secrets import Secret, is_secret_like, strip_url_credentials

__all__ = [
    "KEY_TYPES",
    "KeyType",
    "StorageBlock",
    "check_key",
    "check_name",
    "check_secret",
    "data_bytes",
    "json_or_none",
    "key_problem",
    "new_key",
    "raise_translated",
]

#: How a block names what it writes (see :func:`new_key`).
KeyType = Literal["hash", "uuid", "timestamp"]
KEY_TYPES: tuple[str, ...] = get_args(KeyType)

_MASKED = "'**********'"


class StorageBlock(abc.ABC):
    """Prefect 2.0's storage block: persist bytes, get a key back, read them by that key.

    Every block is a plain class built from keyword arguments named as Prefect's fields.
    Secret fields take a :class:`~runner_storage.Secret`, a pydantic ``SecretStr`` or plain
    text; they are resolved at every call and never kept resolved, and ``repr`` shows
    none of their values.
    """

    #: The constructor's arguments, in order, as ``repr`` shows them.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: The ones that hold secrets: ``repr`` shows where a Secret is read from, no value.
    _secret_fields: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    async def write(self, data: bytes) -> str:
        """Persist ``data``; return the key that :meth:`read` takes to get it back.

        Raises:
            ConfigurationError: ``data`` is not bytes, or this block cannot hold it.
            RunnerStorageError: the storage failed; no reader sees part of the data.
        """

    @abc.abstractmethod
    async def read(self, key: str) -> bytes:
        """The bytes that a :meth:`write` of this block stored under ``key``.

        Raises:
            ConfigurationError: ``key`` could point outside the block (``..``, absolute,
                another scheme).
            NotFoundError: nothing is stored under ``key``.
        """

    def __repr__(self) -> str:
        shown = ((name, self._shown(name)) for name in self._fields)
        fields = ", ".join(f"{name}={text}" for name, text in shown if text is not None)
        return f"{type(self).__name__}({fields})"

    def _shown(self, name: str) -> str | None:
        """How ``repr`` shows the field ``name``; None leaves it out."""
        value = getattr(self, name)
        if value is None:
            return None
        if name in self._secret_fields:
            return repr(value) if isinstance(value, Secret) else _MASKED
        if isinstance(value, str) and "://" in value:
            return repr(strip_url_credentials(value))
        return repr(value)


def data_bytes(data: object, block: str) -> bytes:
    """``data`` as bytes, or a ConfigurationError saying that ``block.write`` takes bytes."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise ConfigurationError(
        f"{block}.write() takes bytes, not {type(data).__name__}: encode text first (text.encode())"
    )


def json_or_none(text: str | bytes) -> Any:
    """The JSON value ``text`` holds, or None when it holds no JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def key_problem(key: object) -> str | None:
    """What makes ``key`` unsafe as a relative path inside a block, or None if it is safe."""
    if not isinstance(key, str):
        return f"is a {type(key).__name__}, not text"
    if not key:
        return "is empty"
    if "://" in key or "::" in key:
        return "names another location"
    if key.startswith(("/", "\\")) or os.path.isabs(key):
        return "is an absolute path"
    return path_problem(key)


def check_key(relative: object, key: object, where: str, *, segment: bool = False) -> None:
    """Refuse ``key`` (whose part inside the block is ``relative``) if it could leave it.

    With ``segment``, a key must also be a single path segment (no ``/``).

    Raises:
        ConfigurationError: one line naming the key and what is wrong with it.
    """
    problem = key_problem(relative)
    if not problem and segment and "/" in str(relative):
        problem = "holds a '/'"
    if problem:
        raise ConfigurationError(
            f"the key {key!r} {problem}, so it could read outside"
            f" {strip_url_credentials(where)}: give a key that write() returned"
        )


def check_secret(value: object, field: str, block: str) -> None:
    """Refuse a secret field that is neither None, text nor a secret holder."""
    if value is not None and not (isinstance(value, str) or is_secret_like(value)):
        raise ConfigurationError(
            f"{block} {field} must be text or a Secret (Secret.from_env('VAR')), not"
            f" {type(value).__name__}"
        )


def check_name(value: object, field: str, block: str) -> str:
    """A bucket or container name: text, not empty, no ``/`` or scheme."""
    if not isinstance(value, str) or not value.strip() or "/" in value or ":" in value:
        raise ConfigurationError(
            f"{block} needs a {field} name without '/' or a scheme, like 'acme-flows'; got"
            f" {value!r}"
        )
    return value


def raise_translated(
    exc: Exception,
    *,
    where: str,
    doing: str,
    redact: Callable[[str], str],
    settings: Mapping[str, Any] | None = None,
    key: str | None = None,
    location: str = "",
) -> NoReturn:
    """Raise the error of the tree for ``exc``, through the one translation table.

    A read (``key`` given) of what is not there names the key; the chain to ``exc`` is cut
    when its text could carry a secret.
    """
    error, chain = translate_error(
        exc, where=where, redact=redact, settings=settings or {}, doing=doing
    )
    if key is not None and type(error) is NotFoundError:
        error = NotFoundError(
            f"nothing is stored under the key {key!r} in {location or where}"
            f" ({describe_error(exc, redact=redact)}): give a key that write() of this"
            " block returned"
        )
    raise_from(error, exc, chain=chain)


class _Clock:
    """UTC timestamps for keys, strictly increasing within the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=timezone.utc)

    def key(self) -> str:
        with self._lock:
            now = max(datetime.now(timezone.utc), self._last + timedelta(microseconds=1))
            self._last = now
        return now.strftime("%Y%m%dT%H%M%S.%fZ")


_CLOCK = _Clock()


def new_key(key_type: KeyType, data: bytes) -> str:
    """A key for ``data``: its sha256 hex digest, ``uuid4().hex``, or a UTC timestamp.

    Timestamps are ISO 8601 in the basic format, to the microsecond
    (``20240501T120000.123456Z``): they sort in writing order, hold no ``:`` (safe in
    any path), and strictly increase within the process, so two writes never share one.
    """
    if key_type == "hash":
        return hashlib.sha256(data).hexdigest()
    if key_type == "timestamp":
        return _CLOCK.key()
    return uuid.uuid4().hex
