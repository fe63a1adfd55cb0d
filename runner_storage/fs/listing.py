"""Listing a tree through fsspec: one recursive listing, each key checked, no object read.

The result is a :class:`Listing`: the :class:`~runner_storage.fs.entries.Entry` of every
file (a safe relative path, its size and a content token) and the remote name of each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fsspec.asyn import AsyncFileSystem
from fsspec.asyn import sync as run_on_loop
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import SourceError
from runner_storage.fs import ftp
from runner_storage.fs.entries import Entry, is_directory_marker, safe_relative_path

__all__ = ["TOKEN_FIELDS", "Listing", "list_tree"]

#: Info fields that identify an object's content, best first: S3 ETag, adlfs etag, GCS
#: md5Hash (crc32c for composite objects), HTTP validators, local and memory timestamps,
#: and FTP's MLSD ``modify`` fact (last, so that no other store's token changes).
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
    "modify",
)


@dataclass(frozen=True)
class Listing:
    """A resolved listing: the entries to publish and the remote name of each path."""

    entries: tuple[Entry, ...]
    remote: Mapping[str, str]


def list_tree(fs: AbstractFileSystem, url: str, concurrency: int) -> Listing:
    """List everything under ``url`` with one recursive listing; no object is read.

    A URL that names a single object lists that object, published under its basename.
    HTTP directory pages carry no sizes, so those are completed with one HEAD each. FTP is
    listed with MLSD, one command per folder (:func:`runner_storage.fs.ftp.list_ftp`).

    Raises:
        UnsafeContentError: a key would leave the version, or keys conflict.
        SourceError: the source does not report an object's size, or an FTP server lacks
            MLSD or modification times.
        Exception: whatever the filesystem raised (translate with :func:`translate_error`).
    """
    path = fs._strip_protocol(url)
    found: Any
    if ftp.is_ftp(fs):
        # An FTP URL's path is percent-encoded (RFC 1738); the server's names are not.
        path = unquote(path)
        found = ftp.list_ftp(fs, path)
    else:
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
