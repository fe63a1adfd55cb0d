"""The snapshot format: where things live under a root, the manifest, and its checks.

Under a root URL ``ROOT``::

    ROOT/blobs/sha256/<first 2 hex>/<64 hex>   file contents, written once, never changed
    ROOT/snapshots/<id>.json                   a manifest; <id> is the sha256 of its bytes
    ROOT/refs/<name>                           the id of the snapshot the ref points at

A manifest is canonical JSON (sorted keys, no spaces, UTF-8), so its id names its content:
a pinned id can only ever mean one tree. Manifests and refs are untrusted input for a pull:
:func:`parse_manifest` checks the id against the bytes and refuses paths that would leave
the tree, duplicate paths, symlinks out of the tree, sizes and modes out of range. Pure:
no I/O and no fsspec.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from runner_storage.exceptions import ConfigurationError, SourceError, UnsafeContentError
from runner_storage.fs.entries import path_problem

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_FILE_SIZE",
    "MAX_MANIFEST_BYTES",
    "FileRecord",
    "LinkRecord",
    "SnapshotManifest",
    "blob_key",
    "check_ref_name",
    "check_snapshot_id",
    "manifest_key",
    "parse_manifest",
    "parse_ref",
    "ref_key",
]

#: The ``format`` field of every manifest.
FORMAT = "runner-storage-snapshot"
#: The version of the format this code writes and reads.
FORMAT_VERSION = 1
#: The largest file a manifest may describe (1 TiB): anything larger is a hostile manifest.
MAX_FILE_SIZE = 1 << 40
#: The largest manifest a pull reads (64 MiB: about 300,000 files).
MAX_MANIFEST_BYTES = 64 << 20
#: The modes a manifest may give: permission bits only (no setuid, setgid or sticky).
MAX_MODE = 0o777
#: The mode of a file written by a pull: 0644, or 0755 when the manifest's has an x bit.
REGULAR_MODE, EXECUTABLE_MODE = 0o644, 0o755

_HEX64 = re.compile(r"[0-9a-f]{64}")
_REF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def blob_key(sha256: str) -> str:
    """The key of a blob below the root: ``blobs/sha256/ab/ab...``."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def manifest_key(snapshot_id: str) -> str:
    """The key of a manifest below the root: ``snapshots/<id>.json``."""
    return f"snapshots/{snapshot_id}.json"


def ref_key(name: str) -> str:
    """The key of a ref below the root: ``refs/<name>``."""
    return f"refs/{name}"


def check_snapshot_id(value: object, *, what: str = "snapshot") -> str:
    """``value`` if it is a snapshot id (64 lowercase hex digits).

    Raises:
        ConfigurationError: it is not one; the message says what an id looks like.
    """
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be a snapshot id, 64 lowercase hex digits (runner-storage push"
            f" prints it), got {_shown(value)}"
        )
    return value


def check_ref_name(value: object) -> str:
    """``value`` if it is a ref name: parts of letters, digits, ``.``, ``_``, ``-``, and ``/``.

    Raises:
        ConfigurationError: it is empty, starts a part with ``.`` or ``-``, or holds other
            characters.
    """
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 200
        or not all(_REF_PART.fullmatch(part) for part in value.split("/"))
    ):
        raise ConfigurationError(
            f"ref must be a name of letters, digits, '.', '_' and '-' (parts joined by '/',"
            f" none starting with '.' or '-'), like latest or team/prod; got {_shown(value)}"
        )
    return value


def parse_ref(data: bytes, *, name: str, where: str) -> str:
    """The snapshot id a ref's bytes hold (one id, optionally followed by a newline).

    Raises:
        SourceError: the ref holds anything else.
    """
    text = data.decode("ascii", "replace").strip()
    if not _HEX64.fullmatch(text):
        raise SourceError(
            f"ref {name!r} at {where} does not hold a snapshot id: the store is damaged or"
            " was not written by runner-storage; push again to rewrite it"
        )
    return text


@dataclass(frozen=True, order=True)
class FileRecord:
    """One file of a snapshot: its path in the tree, content digest, size and mode."""

    path: str
    sha256: str
    size: int
    mode: int = REGULAR_MODE

    @property
    def executable(self) -> bool:
        """Whether a pull makes it executable (any x bit in ``mode``)."""
        return bool(self.mode & 0o111)

    def to_json(self) -> dict[str, Any]:
        """The record as the manifest holds it."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mode": self.mode}


@dataclass(frozen=True, order=True)
class LinkRecord:
    """One symlink of a snapshot: its path and its relative target, inside the tree."""

    path: str
    target: str

    def to_json(self) -> dict[str, Any]:
        """The record as the manifest holds it."""
        return {"path": self.path, "target": self.target}


@dataclass(frozen=True)
class SnapshotManifest:
    """A snapshot's manifest: the files and symlinks of a tree, when, and from what.

    Attributes:
        files: every file, sorted by path.
        symlinks: every symlink, sorted by path; each target stays inside the tree.
        created_at: when it was pushed (ISO 8601, UTC).
        provenance: where the tree came from (``{"git": {...}}``), or empty.
    """

    files: tuple[FileRecord, ...]
    symlinks: tuple[LinkRecord, ...] = ()
    created_at: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created_at": self.created_at,
            "files": [record.to_json() for record in self.files],
            "symlinks": [record.to_json() for record in self.symlinks],
            "provenance": dict(self.provenance),
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes: sorted keys, no spaces, UTF-8. Their sha256 is the id."""
        return json.dumps(
            self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    @property
    def id(self) -> str:
        """The snapshot id: the sha256 of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def same_tree(self, other: SnapshotManifest) -> bool:
        """Whether ``other`` describes the same tree from the same place (not the same time)."""
        return (self.files, self.symlinks, dict(self.provenance)) == (
            other.files,
            other.symlinks,
            dict(other.provenance),
        )

    @property
    def size(self) -> int:
        """The total bytes of the files."""
        return sum(record.size for record in self.files)


def parse_manifest(data: bytes, *, snapshot_id: str, where: str) -> SnapshotManifest:
    """Check a fetched manifest against its id and parse it, as untrusted input.

    Args:
        data: the bytes of ``snapshots/<id>.json``.
        snapshot_id: the id it was fetched by; the sha256 of ``data`` must equal it.
        where: the redacted root, for messages.

    Raises:
        SourceError: the bytes are not the manifest the id names, not a manifest, or of a
            format version this code does not read.
        UnsafeContentError: a path would leave the tree, is listed twice or under a file,
            a symlink points out of the tree, a size or mode is out of range.
    """
    label = f"snapshot {snapshot_id[:12]} at {where}"
    if hashlib.sha256(data).hexdigest() != snapshot_id:
        raise SourceError(
            f"{label}: its manifest does not match its id (corrupt or replaced); nothing was"
            " published"
        )
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SourceError(f"{label}: its manifest is not JSON; nothing was published") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SourceError(f"{label}: not a runner-storage snapshot manifest; nothing was published")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise SourceError(
            f"{label}: manifest format version {version!r} is not one this runner-storage"
            f" reads ({FORMAT_VERSION}); upgrade runner-storage"
        )
    files = _records(document, "files", label)
    links = _records(document, "symlinks", label)
    provenance = document.get("provenance", {})
    created_at = document.get("created_at", "")
    if not isinstance(provenance, dict) or not isinstance(created_at, str):
        raise SourceError(f"{label}: provenance or created_at is malformed")
    manifest = SnapshotManifest(
        files=tuple(sorted(_file_record(item, label) for item in files)),
        symlinks=tuple(sorted(_link_record(item, label) for item in links)),
        created_at=created_at,
        provenance=provenance,
    )
    check_tree(manifest, label)
    return manifest


def check_tree(manifest: SnapshotManifest, label: str) -> None:
    """Refuse duplicate paths, a path below a file or symlink, and links out of the tree.

    Raises:
        UnsafeContentError: the message names the path.
    """
    leaves: set[str] = set()
    for path in [r.path for r in manifest.files] + [r.path for r in manifest.symlinks]:
        if path in leaves:
            raise UnsafeContentError(
                f"{label}: path {path!r} is listed twice; nothing was published"
            )
        leaves.add(path)
    for path in leaves:
        parent = posixpath.dirname(path)
        while parent:
            if parent in leaves:
                raise UnsafeContentError(
                    f"{label}: path {path!r} is below {parent!r}, which is a file or symlink;"
                    " nothing was published"
                )
            parent = posixpath.dirname(parent)
    for link in manifest.symlinks:
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link.path), link.target))
        if (
            link.target.startswith("/")
            or resolved == ".."
            or resolved.startswith("../")
            or "\0" in link.target
            or not link.target
        ):
            raise UnsafeContentError(
                f"{label}: symlink {link.path!r} -> {link.target!r} points outside the tree;"
                " nothing was published"
            )


def _records(document: Mapping[str, Any], key: str, label: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise SourceError(f"{label}: {key} is not a list")
    return value


def _checked_path(value: object, label: str) -> str:
    if not isinstance(value, str):
        raise UnsafeContentError(f"{label}: a path is not text; nothing was published")
    problem = path_problem(value)
    if problem:
        raise UnsafeContentError(
            f"{label}: path {value!r} {problem}, so it could leave the tree; nothing was published"
        )
    return value


def _file_record(item: object, label: str) -> FileRecord:
    if not isinstance(item, dict):
        raise SourceError(f"{label}: a file record is not an object")
    path = _checked_path(item.get("path"), label)
    sha256, size, mode = item.get("sha256"), item.get("size"), item.get("mode", REGULAR_MODE)
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise UnsafeContentError(f"{label}: file {path!r} has no valid sha256")
    if not _integer_in(size, MAX_FILE_SIZE):
        raise UnsafeContentError(
            f"{label}: file {path!r} has size {size!r}, out of range; nothing was published"
        )
    if not _integer_in(mode, MAX_MODE):
        raise UnsafeContentError(
            f"{label}: file {path!r} has mode {mode!r}, out of range (permission bits only);"
            " nothing was published"
        )
    return FileRecord(path, sha256, size, mode)


def _link_record(item: object, label: str) -> LinkRecord:
    if not isinstance(item, dict):
        raise SourceError(f"{label}: a symlink record is not an object")
    path = _checked_path(item.get("path"), label)
    target = item.get("target")
    if not isinstance(target, str):
        raise UnsafeContentError(f"{label}: symlink {path!r} has no target")
    return LinkRecord(path, target)


def _integer_in(value: object, highest: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= highest


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
