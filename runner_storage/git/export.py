"""Export one commit's tree into a directory: plain files, no ``.git``, sparse if asked.

The tree is written with git's own ``checkout-index`` from a throwaway index, so
``.gitattributes`` conversions apply as in a clone. Files unchanged since the previous
version (same path, mode and blob) are hard-linked from it instead of written; nothing is
ever written through such a link, because only absent paths are created.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from runner_storage.exceptions import SourceError, UnsafeContentError, disk_error
from runner_storage.git.store import ObjectStore, TreeEntry

__all__ = [
    "Baseline",
    "ExportedTree",
    "Prelinked",
    "ServerRefusedObjectsError",
    "check_entry_paths",
    "export_tree",
    "link_previous",
    "select_entries",
]

_REGULAR_MODES = frozenset({"100644", "100755"})
#: Substrings that start an empty or dot-led path part.
_DOUBTFUL = re.compile(r"//|/\.")


class ServerRefusedObjectsError(SourceError):
    """The server will not send file contents by id: fetch again without a filter."""


@dataclass(frozen=True)
class Baseline:
    """The previous version of a tree: where it is published and which commit it was."""

    root: Path
    sha: str


@dataclass(frozen=True)
class Prelinked:
    """Files of the previous commit hard-linked into the target before the new tree is known.

    Made by :func:`link_previous` while the new commit is being fetched; :func:`export_tree`
    keeps the links of files that did not change and removes the others.
    """

    previous: tuple[TreeEntry, ...]
    """The previous commit's file list."""
    paths: frozenset[str]
    """The files linked."""
    directories: frozenset[str]
    """The parent directories of every file it tried to link (some may not exist)."""


@dataclass
class ExportedTree:
    """What :func:`export_tree` wrote."""

    sha: str
    files_written: int = 0
    files_linked: int = 0
    gitlinks: list[TreeEntry] = field(default_factory=list)


def select_entries(entries: Sequence[TreeEntry], directories: Sequence[str]) -> list[TreeEntry]:
    """The entries a cone-mode sparse checkout of ``directories`` contains.

    As ``git sparse-checkout set --cone``: everything under each directory, plus the files
    directly inside the root and inside every parent of a listed directory. Submodules count
    as directories. No directories means the whole tree.
    """
    if not directories:
        return list(entries)
    parents = {""}
    for directory in directories:
        parent = directory
        while parent:
            parent = posixpath.dirname(parent)
            parents.add(parent)
    prefixes = tuple(f"{d}/" for d in directories)

    wanted = set(directories)

    def selected(entry: TreeEntry) -> bool:
        path = entry.path
        if path.startswith(prefixes):
            return True
        if entry.mode == "160000":  # a submodule counts as a directory
            return path in wanted
        return path.rpartition("/")[0] in parents

    return [entry for entry in entries if selected(entry)]


def check_entry_paths(entries: Sequence[TreeEntry]) -> None:
    """Refuse paths that would leave the version or write into a ``.git`` directory.

    Raises:
        UnsafeContentError: an absolute path, an empty, ``.`` or ``..`` part, or ``.git``.
    """
    for entry in entries:
        path = entry.path
        # Only a part that is empty or starts with "." can be unsafe: skip the split when
        # no part does (the common case, thousands of times per tree).
        if path[:1] not in ("", "/", ".") and path[-1] != "/" and not _DOUBTFUL.search(path):
            continue
        parts = path.split("/")
        if any(part in ("", ".", "..") or part.lower() == ".git" for part in parts):
            raise UnsafeContentError(
                f"repository path {entry.path!r} would leave the source tree or write into"
                " .git; remove it upstream (nothing was published)"
            )


async def export_tree(
    store: ObjectStore,
    sha: str,
    target: Path,
    *,
    directories: Sequence[str],
    baseline: Baseline | None,
    also: Sequence[Sequence[str]] = (),
    prelinked: Prelinked | None = None,
) -> ExportedTree:
    """Write commit ``sha``'s (sparse) tree into the existing empty directory ``target``.

    Submodules become empty directories; their commits are in ``gitlinks``. ``also`` lists
    the ``directories`` of other sources of this store and commit: the contents they lack
    are fetched in the same request as ours. ``prelinked`` is what :func:`link_previous`
    linked into ``target`` already (from ``baseline``, for the same ``directories``): the
    links of unchanged files are kept, the others removed, and the tree is the same as
    without it.

    Raises:
        UnsafeContentError: a path in the tree is unsafe.
        ServerRefusedObjectsError: missing file contents could not be fetched by id.
        SourceError: git failed.
    """
    entries = await store.list_tree(sha)
    check_entry_paths(entries)
    selected = select_entries(entries, directories)
    if prelinked is not None:
        keep = {entry.path for entry in _unchanged(entries, selected, prelinked.previous)}
        linked = set(prelinked.paths & keep)
        if linked != prelinked.paths:
            await anyio.to_thread.run_sync(_unlink_stale, prelinked, keep, selected, target)
    else:
        reusable = await _reusable_entries(store, entries, selected, baseline)
        linked = set()
        if baseline is not None and reusable:
            linked = await anyio.to_thread.run_sync(_link_files, reusable, baseline.root, target)
    to_write = [entry for entry in selected if entry.path not in linked]
    await _ensure_blobs(store, sha, entries, [tuple(directories), *map(tuple, also)])
    await _checkout(store, to_write, target)
    return ExportedTree(
        sha=sha,
        files_written=sum(1 for entry in to_write if entry.is_blob),
        files_linked=len(linked),
        gitlinks=[entry for entry in selected if entry.is_gitlink],
    )


async def link_previous(
    store: ObjectStore, baseline: Baseline | None, target: Path, *, directories: Sequence[str]
) -> Prelinked | None:
    """Hard-link the previous commit's regular files into ``target``, ahead of the new tree.

    Meant to run while the new commit is fetched: most files of a new commit are those of
    the previous one, and linking thousands of them takes about as long as the fetch.
    None, with nothing linked, when the previous commit is not here to compare with.
    """
    if baseline is None or not await store.has_commit(baseline.sha):
        return None
    try:
        previous = tuple(await store.list_tree(baseline.sha))
        check_entry_paths(previous)
    except SourceError:  # UnsafeContentError too: export_tree decides, as without this
        return None
    candidates = [
        entry
        for entry in select_entries(previous, directories)
        if entry.mode in _REGULAR_MODES and not _is_attributes(entry.path)
    ]
    paths = await anyio.to_thread.run_sync(_link_files, candidates, baseline.root, target)
    parents = frozenset(posixpath.dirname(entry.path) for entry in candidates)
    return Prelinked(previous, frozenset(paths), parents)


def _unlink_stale(
    prelinked: Prelinked, keep: set[str], selected: Sequence[TreeEntry], target: Path
) -> None:
    """Remove the links not in ``keep``, and the directories the new tree does not have.

    Raises:
        PublishError: the local disk failed.
    """
    root = os.fspath(target)
    needed = {""}
    for entry in selected:
        if entry.is_gitlink:
            needed.add(entry.path)  # checkout makes it an empty directory
        parent = posixpath.dirname(entry.path)
        while parent not in needed:
            needed.add(parent)
            parent = posixpath.dirname(parent)
    unneeded: set[str] = set()
    for directory in prelinked.directories:
        parent = directory
        while parent not in needed and parent not in unneeded:
            unneeded.add(parent)
            parent = posixpath.dirname(parent)
    try:
        for path in prelinked.paths - keep:
            os.unlink(os.path.join(root, path))
        for directory in sorted(unneeded, key=len, reverse=True):  # the deepest first
            with contextlib.suppress(FileNotFoundError):  # under a parent never linked from
                os.rmdir(os.path.join(root, directory))
    except OSError as exc:
        raise disk_error(f"cannot build the new version in {target}", exc) from None


async def _reusable_entries(
    store: ObjectStore,
    entries: Sequence[TreeEntry],
    selected: Sequence[TreeEntry],
    baseline: Baseline | None,
) -> list[TreeEntry]:
    """Regular files identical in the previous commit, if its objects are still here."""
    if baseline is None or not await store.has_commit(baseline.sha):
        return []
    return _unchanged(entries, selected, await store.list_tree(baseline.sha))


def _unchanged(
    entries: Sequence[TreeEntry], selected: Sequence[TreeEntry], previous: Sequence[TreeEntry]
) -> list[TreeEntry]:
    """The regular files of ``selected`` that are the same in ``previous`` (path, mode, blob)."""
    before = {entry.path: entry for entry in previous}

    def attributes(tree: dict[str, TreeEntry]) -> dict[str, TreeEntry]:
        return {p: e for p, e in tree.items() if _is_attributes(p)}

    # Changed attributes can change how an unchanged blob is written (eol, ident).
    if attributes({e.path: e for e in entries}) != attributes(before):
        return []
    return [
        entry
        for entry in selected
        if entry.mode in _REGULAR_MODES
        and not _is_attributes(entry.path)
        and before.get(entry.path) == entry
    ]


def _is_attributes(path: str) -> bool:
    return path.endswith(".gitattributes") and path.rpartition("/")[2] == ".gitattributes"


def _link_files(entries: Sequence[TreeEntry], source: Path, target: Path) -> set[str]:
    """Hard-link files from ``source`` into ``target``; return the paths that worked.

    Runs once per file of a new version (thousands): plain strings, not :class:`Path`,
    and one check per directory.
    """
    source_root, target_root = os.fspath(source), os.fspath(target)
    real_source = os.path.realpath(source_root)
    trusted: dict[str, bool] = {}
    linked: set[str] = set()
    for entry in entries:
        path = entry.path
        parent = posixpath.dirname(path)
        try:
            inside = trusted.get(parent)
            if inside is None:
                # A parent reached through a symlink could lead anywhere: never link from it.
                real_parent = os.path.realpath(os.path.join(source_root, parent))
                expected = os.path.normpath(os.path.join(real_source, parent))
                inside = trusted[parent] = real_parent == expected
                if inside:
                    os.makedirs(os.path.join(target_root, parent), exist_ok=True)
            if not inside:
                continue
            origin = os.path.join(source_root, path)
            info = os.lstat(origin)
            if not stat.S_ISREG(info.st_mode) or bool(info.st_mode & 0o100) != (
                entry.mode == "100755"
            ):
                continue
            os.link(origin, os.path.join(target_root, path), follow_symlinks=False)
        except OSError:
            continue  # written by checkout instead
        linked.add(path)
    return linked


async def _ensure_blobs(
    store: ObjectStore, sha: str, entries: Sequence[TreeEntry], cones: Sequence[tuple[str, ...]]
) -> None:
    """Fetch, in one request, the contents a blobless fetch left out of every cone.

    ``cones[0]`` is the tree being exported, the rest belong to other sources of the same
    commit; ``()`` is the whole tree.
    """
    complete = store.complete_cones(sha)
    if cones[0] in complete or () in complete:
        return
    wanted = {cone for cone in cones if cone not in complete}
    chosen = {entry.path: entry for cone in wanted for entry in select_entries(entries, cone)}
    needed = {entry.oid for entry in chosen.values() if entry.is_blob}
    missing = (
        needed & await store.missing_objects(sha, _walk_limit(wanted, chosen)) if needed else set()
    )
    if missing and not await store.fetch_objects(missing):
        raise ServerRefusedObjectsError(
            f"{store.where} refuses to send file contents by id; fetching without a filter"
        )
    store.remember_complete(sha, wanted)


#: Above this many paths, :func:`_ensure_blobs` walks the whole tree rather than list them.
_MAX_WALK_PATHS = 256


def _walk_limit(cones: set[tuple[str, ...]], chosen: Mapping[str, TreeEntry]) -> list[str] | None:
    """Paths covering every chosen entry: the cones' directories and the files beside them.

    None (the whole tree) for a whole-tree cone, or when the list would be long.
    """
    if () in cones:
        return None
    directories = {directory for cone in cones for directory in cone}
    prefixes = tuple(f"{d}/" for d in directories)
    others = [path for path in chosen if not path.startswith(prefixes) and path not in directories]
    limit = sorted(directories) + sorted(others)
    return limit if len(limit) <= _MAX_WALK_PATHS else None


async def _checkout(store: ObjectStore, entries: Sequence[TreeEntry], target: Path) -> None:
    if not entries:
        return
    index = store.path / f"index-{uuid.uuid4().hex}"
    work_tree = os.path.join(os.getcwd(), target)  # git runs in the store, not here
    env = {"GIT_INDEX_FILE": str(index)}
    info = b"".join(
        f"{entry.mode} {entry.oid}\t{entry.path}".encode("utf-8", "surrogateescape") + b"\0"
        for entry in entries
    )
    try:
        await store.git.check(
            "update-index", "-z", "--index-info", input=info, extra_env=env,
            what=f"index the files of {store.where}", git_dir=store.path,
        )  # fmt: skip
        await store.git.check(
            f"--work-tree={work_tree}", "checkout-index", "--all", "--force", extra_env=env,
            what=f"write the files of {store.where}", git_dir=store.path,
        )  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
