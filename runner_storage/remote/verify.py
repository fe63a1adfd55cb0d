"""Downloads re-checked against the listing before anything is published.

An object can change between the listing and its download. Every download must have the
listed size, and where the listing promises the content's MD5 (S3 single-part ETags,
GCS ``md5Hash``, Azure ``content_md5``) the download must have that MD5, unless the
object's ETag is still the listed one (SSE-KMS and SSE-C objects have ETags that are not
MD5s). Anything else is a :class:`~runner_storage.exceptions.TransientSourceError`: the
next pull lists again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from runner_storage.exceptions import TransientSourceError
from runner_storage.fs.entries import Entry
from runner_storage.publish.tree import file_digest

__all__ = ["check_sizes", "check_unchanged", "unproven"]


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


def unproven(
    entries: Sequence[Entry], pairs: Sequence[tuple[str, str]], listed_md5: Mapping[str, str]
) -> list[tuple[Entry, str]]:
    """``(entry, remote name)`` of the downloads whose MD5 is not the one listed.

    ``listed_md5`` is the listing's :attr:`~runner_storage.fs.listing.Listing.md5`: the MD5
    S3 (single-part ETags), GCS (``md5Hash``) and Azure (``content_md5``) promise.
    """
    return [
        (entry, remote)
        for entry, (remote, local) in zip(entries, pairs, strict=True)
        if (promised := listed_md5.get(entry.path)) is not None
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
