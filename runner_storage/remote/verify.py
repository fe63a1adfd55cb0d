"""Downloads re-checked against the listing before anything is published.

An object can change between the listing and its download. Every download must have the
listed size, and where the listing promises the content's MD5 (S3 single-part ETags, GCS
``md5Hash``) the download must have that MD5, unless the object's ETag is still the
listed one (SSE-KMS and SSE-C objects have ETags that are not MD5s). Anything else is a
:class:`~runner_storage.exceptions.TransientSourceError`: the next pull lists again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import string
from collections.abc import Mapping, Sequence

from runner_storage.exceptions import TransientSourceError
from runner_storage.fs.entries import Entry
from runner_storage.publish.tree import file_digest

__all__ = ["check_sizes", "check_unchanged", "promised_md5", "unproven"]


def check_sizes(entries: Sequence[Entry], files: Sequence[str], *, where: str) -> None:
    """Check that each downloaded file has its entry's listed size.

    Raises:
        TransientSourceError: a file is missing or of another size.
    """
    for entry, local in zip(entries, files, strict=True):
        try:
            size = os.stat(local).st_size
        except FileNotFoundError:
            size = -1
        if size != entry.size:
            raise TransientSourceError(
                f"object {entry.path!r} under {where} changed while downloading"
                f" (listed {entry.size} bytes, got {max(size, 0)}): the next pull lists"
                " again (nothing was published)"
            )


def promised_md5(protocol: str, token: str) -> str | None:
    """The hex MD5 of the content a listing token stands for, where the store says so."""
    if protocol in ("s3", "s3a") and token.startswith("ETag="):
        value = token.removeprefix("ETag=").strip('"').lower()
        if len(value) == 32 and all(c in string.hexdigits for c in value):
            return value  # a multipart ETag ends in -N: not an MD5
    if protocol in ("gs", "gcs") and token.startswith("md5Hash="):
        with contextlib.suppress(ValueError, binascii.Error):
            digest = base64.b64decode(token.removeprefix("md5Hash="), validate=True)
            return digest.hex() if len(digest) == 16 else None
    return None


def unproven(
    protocol: str, entries: Sequence[Entry], pairs: Sequence[tuple[str, str]]
) -> list[tuple[Entry, str]]:
    """``(entry, remote name)`` of the downloads whose MD5 is not the one listed."""
    return [
        (entry, remote)
        for entry, (remote, local) in zip(entries, pairs, strict=True)
        if (promised := promised_md5(protocol, entry.token)) is not None
        and file_digest(local, "md5") != promised
    ]


def check_unchanged(
    suspects: Sequence[tuple[Entry, str]], etags: Mapping[str, object], *, where: str
) -> None:
    """Accept a suspect only if the store still gives it the listed ETag.

    Args:
        suspects: from :func:`unproven`.
        etags: the current ``ETag`` of each suspect that was listed with one, by remote name.
        where: the source, for messages.

    Raises:
        TransientSourceError: a suspect changed after the listing.
    """
    for entry, remote in suspects:
        if remote in etags and f"ETag={etags[remote]}" == entry.token:
            continue
        raise TransientSourceError(
            f"object {entry.path!r} under {where} changed while downloading"
            " (its content does not match the listed checksum): the next pull lists"
            " again (nothing was published)"
        )
