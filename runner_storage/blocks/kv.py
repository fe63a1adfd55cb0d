"""KVServerStorageBlock: Prefect 2.0's storage block over a small key-value HTTP API.

The protocol is Prefect's: ``POST {api_address}/{key}`` with the data as a JSON string
stores it, ``GET {api_address}/{key}`` answers that JSON string, and Prefect's reference
server answers ``null`` for a key it does not hold. Since the protocol carries JSON
strings, only UTF-8 text can be stored, and :meth:`KVServerStorageBlock.read` gives back
exactly the bytes that were written (Prefect's gave a Python repr of the JSON value).

Requests go through the standard library in a worker thread, which works under any event
loop anyio runs and is abandoned when the caller is cancelled. Redirects are not
followed: a redirected POST would come back as a GET, and the data would be lost.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import anyio.to_thread

from runner_storage.blocks.storage_block import (
    StorageBlock,
    check_key,
    data_bytes,
    json_or_none,
    raise_translated,
)
from runner_storage.exceptions import ConfigurationError, NotFoundError, SourceError
from runner_storage.secrets import redact, strip_url_credentials

__all__ = ["KV_TIMEOUT_SECONDS", "KVServerStorageBlock"]

#: Seconds a request may take before it fails as transient.
KV_TIMEOUT_SECONDS = 30.0


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as the error it is here, instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Follow no redirect (urllib then raises the 3xx as an HTTPError)."""
        return


class KVServerStorageBlock(StorageBlock):
    """Store UTF-8 text on a key-value server that speaks Prefect's KV protocol.

    Example::

        block = KVServerStorageBlock("http://127.0.0.1:1234/storage")
        key = await block.write(b'{"x": 1}')  # uuid4().hex
        assert await block.read(key) == b'{"x": 1}'

    Args:
        api_address: the API's base URL (``http://`` or ``https://``); a ``user:password@``
            in it is sent as HTTP Basic authentication and redacted everywhere.

    Raises:
        ConfigurationError: ``api_address`` is not an http(s) URL with a host, or has a
            query or fragment.
    """

    _fields = ("api_address",)

    def __init__(self, api_address: str) -> None:
        try:
            parts = urlsplit(api_address) if isinstance(api_address, str) else None
            host = parts.hostname if parts is not None else None
        except ValueError:
            parts, host = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise ConfigurationError(
                "KVServerStorageBlock needs an http:// or https:// api_address with a host,"
                " like http://127.0.0.1:1234/storage"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(
                "the KVServerStorageBlock api_address must not have a query or fragment: keys"
                " are appended to its path"
            )
        self.api_address = api_address
        self._base = strip_url_credentials(api_address).rstrip("/")
        self._login = (
            None
            if parts.username is None
            else (unquote(parts.username), unquote(parts.password or ""))
        )

    async def write(self, data: bytes) -> str:
        """Store ``data`` (UTF-8 text) under a new key, ``uuid4().hex``; return the key.

        Raises:
            ConfigurationError: ``data`` is not bytes, or not UTF-8 text.
            AuthenticationError, NotFoundError, TransientSourceError, SourceError: the
                server refused or failed (one line, credentials redacted).
        """
        payload = data_bytes(data, type(self).__name__)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"KVServerStorageBlock stores text, and this data is not UTF-8 (byte"
                f" 0x{payload[exc.start]:02x} at offset {exc.start}): encode binary data"
                " as text first (base64), or use a FileStorageBlock"
            ) from None
        key = uuid.uuid4().hex
        body = json.dumps(text).encode("ascii")
        await anyio.to_thread.run_sync(self._exchange, "POST", key, body, abandon_on_cancel=True)
        return key

    async def read(self, key: str) -> bytes:
        """The bytes stored under ``key``, exactly as they were written.

        Raises:
            ConfigurationError: ``key`` is not a single path segment.
            NotFoundError: the server answers 404, or ``null`` (or nothing) as Prefect's
                does, for it.
            SourceError: the server answered something other than a JSON string.
            AuthenticationError, TransientSourceError: see :meth:`write`.
        """
        check_key(key, key, self._base, segment=True)
        answer = await anyio.to_thread.run_sync(
            self._exchange, "GET", key, None, abandon_on_cancel=True
        )
        if not answer.strip() or answer.strip() == b"null":
            raise NotFoundError(
                f"nothing is stored under the key {key!r} in {self._base} (the server answered"
                " null): give a key that write() returned"
            )
        value = json_or_none(answer)
        if not isinstance(value, str):
            raise SourceError(
                f"{self._base} answered the key {key!r} with something other than a JSON"
                " string: check that api_address is a KV storage API"
            )
        return value.encode("utf-8", "surrogatepass")

    def _exchange(self, method: str, key: str, body: bytes | None) -> bytes:
        url = f"{self._base}/{quote(key, safe='')}"
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._login is not None:
            login = base64.b64encode(":".join(self._login).encode()).decode("ascii")
            headers["Authorization"] = f"Basic {login}"
        # The scheme is http(s): checked when the block was made.
        request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
        opener = urllib.request.build_opener(_RefuseRedirects)
        try:
            with opener.open(request, timeout=KV_TIMEOUT_SECONDS) as response:
                return bytes(response.read())
        except Exception as exc:  # noqa: BLE001 - the one translation boundary
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # it holds the response open
            raise_translated(
                exc,
                where=url,
                doing="writing" if method == "POST" else "reading",
                redact=self._redact,
                key=key if method == "GET" else None,
                location=self._base,
            )

    def _redact(self, text: str) -> str:
        password = self._login[1] if self._login else ""
        quoted = urlsplit(self.api_address).password or ""
        return redact(text, [password, quoted])
