"""Listing a tree through fsspec: one recursive listing, each key checked, no object read.

The result is a :class:`Listing`: the :class:`~runner_storage.fs.entries.Entry` of every
file (a safe relative path, its size and a content token) and the remote name of each.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fsspec.asyn import AsyncFileSystem
from fsspec.asyn import sync as run_on_loop
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import SourceError, TransientSourceError
from runner_storage.fs import ftp
from runner_storage.fs.checksums import listed_md5
from runner_storage.fs.entries import Entry, is_directory_marker, safe_relative_path

__all__ = ["TOKEN_FIELDS", "Listing", "find_all", "list_tree"]

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
    """A resolved listing: the entries to publish and the remote name of each path.

    ``md5`` holds, by path, the hex MD5 of the content where the store's listing promises
    one (:func:`~runner_storage.fs.checksums.listed_md5`).
    """

    entries: tuple[Entry, ...]
    remote: Mapping[str, str]
    md5: Mapping[str, str] = dataclasses.field(default_factory=dict)


def list_tree(
    fs: AbstractFileSystem, url: str, concurrency: int, *, single_object: bool = False
) -> Listing:
    """List everything under ``url`` with one recursive listing; no object is read.

    A URL that names a single object lists that object, published under its basename.
    With ``single_object`` the URL names one object whatever else is below it (a key
    ``K`` beside keys ``K/...``): only that object is asked for (one request).
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
    if single_object:
        # One request for the object itself: whatever is below the key is not it.
        info = fs.info(path)
        found = {} if info.get("type", "file") == "directory" else {path: info}
    elif ftp.is_ftp(fs):
        # An FTP URL's path is percent-encoded (RFC 1738); the server's names are not.
        path = unquote(path)
        found = ftp.list_ftp(fs, path)
    else:
        found = find_all(fs, path)
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
    md5: dict[str, str] = {}
    protocols = _protocols(fs)
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
        promised = listed_md5(protocols, info)
        if promised is not None:
            md5[relative] = promised
    return Listing(tuple(entries), remote, md5)


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, tuple | list) else (fs.protocol,)


def _is_http(fs: AbstractFileSystem) -> bool:
    return "http" in _protocols(fs)


def _same(text: str) -> str:
    return text


def find_all(fs: AbstractFileSystem, path: str) -> Any:
    """Everything below ``path``, with details: the filesystem's own recursive listing.

    One paginated listing on object stores; fsspec's generic walk (file, memory, http...)
    made to fail when a subfolder cannot be listed (:func:`_find_raising`).

    Raises:
        Exception: whatever the filesystem raised (translate with :func:`translate_error`).
    """
    return _find_raising(fs, path) if _generic_find(fs) else fs.find(path, detail=True)


def _find_raising(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """The generic ``find`` of fsspec, except that a folder that cannot be listed fails.

    fsspec's generic walk (file://, memory://, http(s)://, sftp://...) leaves out a folder
    whose listing fails, and its ``on_error="raise"`` reaches the top folder only: a
    subfolder that answered 404 or "permission denied" once would read as empty, and its
    files as deleted upstream.

    Raises:
        TransientSourceError: a subfolder vanished between its parent's listing and its own.
        Exception: whatever the filesystem raised listing a folder.
    """
    found: dict[str, Any] = {}
    top = path.rstrip("/")
    pending, seen = [path], {top}
    while pending:
        folder = pending.pop()
        try:
            listing = fs.ls(folder, detail=True)
        except FileNotFoundError:
            if folder == path:
                raise
            raise TransientSourceError(
                f"the folder {folder!r} vanished while its parent was being listed: the next"
                " pull lists again (nothing was published)"
            ) from None
        for info in listing:
            name = str(info["name"]).rstrip("/")
            if info.get("type") != "directory":
                found[info["name"]] = info
            elif name not in seen:  # a link back up (HTTP pages) is listed once
                seen.add(name)
                pending.append(info["name"])
    if not found and fs.isfile(path):
        found[path] = {}  # the URL names one object; its details are completed below
    return found


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
