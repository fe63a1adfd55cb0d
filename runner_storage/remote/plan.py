"""Pure sync planning for object stores: two listings in, a :class:`SyncPlan` out; no I/O.

A listing is a sequence of :class:`Entry` (relative path, size, content token). The plan
pairs it with the manifest of the published version, as rclone's ``march`` pairs a source
and a destination: entries present in both with the same size and token are linked from
the published version, the rest are downloaded, and paths only in the manifest are gone.

Object keys are untrusted: the listing's paths were made safe when it was read
(:func:`runner_storage.fs.entries.safe_relative_path`), and :func:`plan_sync` refuses
listings in which one path would be both a file and a directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner_storage.exceptions import UnsafeContentError
from runner_storage.fs.entries import Entry, path_problem

__all__ = [
    "MANIFEST_FORMAT",
    "SyncPlan",
    "check_tree",
    "entries_from_manifest",
    "listing_revision",
    "manifest_for",
    "plan_sync",
]

#: The version of the manifest layout written by :func:`manifest_for`.
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class SyncPlan:
    """What to do to build a new version from a listing and the published version.

    Attributes:
        link: unchanged entries, to hard-link from the published version.
        download: new or changed entries, to fetch from the source.
        removed: paths of the published version that are gone upstream (for reporting:
            a new version simply does not contain them).
    """

    link: tuple[Entry, ...]
    download: tuple[Entry, ...]
    removed: tuple[str, ...]

    @property
    def download_bytes(self) -> int:
        """The bytes the downloads will move, as listed."""
        return sum(entry.size for entry in self.download)


def listing_revision(entries: Iterable[Entry]) -> str:
    """The revision of a listing: sha256 over its sorted ``(path, size, token)`` triples.

    The order of ``entries`` does not matter; one JSON line per entry keeps it unambiguous.
    """
    digest = hashlib.sha256()
    for entry in sorted(entries):
        line = json.dumps([entry.path, entry.size, entry.token], ensure_ascii=False)
        digest.update(line.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_tree(entries: Iterable[Entry]) -> None:
    """Check that the entries form a tree: no duplicate path, no file that is also a directory.

    Raises:
        UnsafeContentError: two keys map to one path, or key ``a`` and key ``a/b`` both
            exist (``a`` would have to be a file and a directory).
    """
    files: set[str] = set()
    directories: dict[str, str] = {}
    for entry in entries:
        if entry.path in files:
            raise UnsafeContentError(
                f"the listing holds {entry.path!r} twice; nothing was published"
            )
        files.add(entry.path)
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            directories.setdefault("/".join(parts[:depth]), entry.path)
    conflicts = sorted(files & directories.keys())
    if conflicts:
        path = conflicts[0]
        raise UnsafeContentError(
            f"object keys {path!r} and {directories[path]!r} conflict: {path!r} would be both"
            " a file and a directory; rename one upstream (nothing was published)"
        )


def manifest_for(entries: Iterable[Entry]) -> dict[str, Any]:
    """The JSON-serialisable manifest of a version: its sorted listing, compactly."""
    return {
        "format": MANIFEST_FORMAT,
        "entries": [[e.path, e.size, e.token] for e in sorted(entries)],
    }


def entries_from_manifest(manifest: Any) -> dict[str, Entry]:
    """The entries a manifest records, by path; empty when it is missing or unreadable.

    An unreadable manifest only costs downloads (every file is fetched again), so it is
    ignored rather than reported.
    """
    if not isinstance(manifest, Mapping) or manifest.get("format") != MANIFEST_FORMAT:
        return {}
    rows = manifest.get("entries")
    if not isinstance(rows, list):
        return {}
    entries: dict[str, Entry] = {}
    for row in rows:
        if (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], str)
            and isinstance(row[1], int)
            and isinstance(row[2], str)
            and path_problem(row[0]) is None
        ):
            entries[row[0]] = Entry(row[0], row[1], row[2])
    return entries


def plan_sync(listing: Iterable[Entry], previous_manifest: Any) -> SyncPlan:
    """Pair a listing with the published version's manifest.

    Args:
        listing: the entries of the new version, with safe paths.
        previous_manifest: the manifest of the published version (from
            :func:`manifest_for`), or None when nothing is published.

    Returns:
        The plan: entries with the same path, size and token as before are linked, the
        others downloaded; paths only in the manifest are reported as removed. An entry
        with an empty token is never linked, since nothing proves it unchanged.

    Raises:
        UnsafeContentError: the listing does not form a tree (see :func:`check_tree`).
    """
    entries = sorted(listing)
    check_tree(entries)
    previous = entries_from_manifest(previous_manifest)
    link: list[Entry] = []
    download: list[Entry] = []
    for entry in entries:
        if entry.token and previous.get(entry.path) == entry:
            link.append(entry)
        else:
            download.append(entry)
    current = {entry.path for entry in entries}
    removed = tuple(sorted(path for path in previous if path not in current))
    return SyncPlan(link=tuple(link), download=tuple(download), removed=removed)
