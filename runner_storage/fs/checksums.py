"""What a listing proves about an object's content: the MD5 some stores promise, and more.

S3 gives a single-part object's MD5 as its ETag, GCS every object's as ``md5Hash``, and
Azure a blob's uploaded in one request as ``content_md5``: :func:`listed_md5` reads it from
a listing's details. Where no store promises
anything but the bytes are cheap to read (the local disk, fsspec's memory store),
:func:`same_content` compares sha256 digests instead. Used to check downloads
(``remote/``) and to skip uploads of unchanged files (``blocks/``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from fsspec.spec import AbstractFileSystem

from runner_storage.fs.entries import Entry
from runner_storage.publish.tree import file_digest

__all__ = ["READABLE_PROTOCOLS", "listed_md5", "same_content"]

#: Protocols whose objects are compared by reading them (sha256): nothing is promised, and
#: a read costs no request.
READABLE_PROTOCOLS = frozenset({"file", "local", "memory"})

_CHUNK = 1 << 20
#: An MD5 in hex, as a single-part S3 ETag holds it (checked once per listed object).
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_S3 = frozenset({"s3", "s3a"})
_GCS = frozenset({"gs", "gcs"})
_AZURE = frozenset({"az", "abfs", "abfss"})


def listed_md5(protocols: Iterable[str], info: Mapping[str, Any]) -> str | None:
    """The hex MD5 an object's listing ``info`` promises, on a filesystem of ``protocols``.

    S3's single-part ETag, GCS's ``md5Hash`` (its ``etag`` is opaque), and the
    ``content_md5`` Azure keeps for blobs uploaded in one request; None elsewhere.
    """
    names = set(protocols)
    etag, md5_hash = info.get("ETag"), info.get("md5Hash")
    if names & _S3 and isinstance(etag, str):
        return _etag_md5(etag)
    if names & _GCS and isinstance(md5_hash, str):
        return _base64_md5(md5_hash)
    content = info.get("content_settings")  # azure's ContentSettings, or a plain dict
    if names & _AZURE and content is not None:
        digest = content.get("content_md5") if isinstance(content, Mapping) else None
        digest = getattr(content, "content_md5", digest)
        if isinstance(digest, bytes | bytearray) and len(digest) == 16:
            return bytes(digest).hex()
    return None


def _etag_md5(etag: str) -> str | None:
    value = etag.strip('"').lower()
    if _MD5_HEX.fullmatch(value):
        return value  # a multipart ETag ends in -N: not an MD5
    return None


def _base64_md5(text: str) -> str | None:
    with contextlib.suppress(ValueError, binascii.Error):
        digest = base64.b64decode(text, validate=True)
        return digest.hex() if len(digest) == 16 else None
    return None


def same_content(
    fs: AbstractFileSystem,
    protocol: str,
    entry: Entry,
    remote: str,
    local: str | os.PathLike[str],
    *,
    md5: str | None = None,
) -> bool:
    """Whether the listed object ``entry`` (at ``remote``) holds the bytes of the file ``local``.

    Sizes first; then ``md5``, the MD5 the listing promises (:attr:`Listing.md5
    <runner_storage.fs.listing.Listing.md5>`), or, on :data:`READABLE_PROTOCOLS`, the
    sha256 of both. Anything else proves nothing, so the answer is False: uploading an
    unchanged file again is safe, skipping a changed one is not.

    Raises:
        OSError: ``local`` cannot be read.
        Exception: what the filesystem raised reading ``remote`` (translate it).
    """
    if entry.size != os.stat(local).st_size:
        return False
    if md5 is not None:
        return file_digest(local, "md5") == md5
    if protocol in READABLE_PROTOCOLS:
        return _remote_sha256(fs, remote) == file_digest(local)
    return False


def _remote_sha256(fs: AbstractFileSystem, remote: str) -> str:
    digest = hashlib.sha256()
    with fs.open(remote, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
