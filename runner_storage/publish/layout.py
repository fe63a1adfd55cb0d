"""Every path under ``BASE/.runner-storage``, named once, and the list of published sources.

For a source ``NAME`` under ``BASE``::

    BASE/NAME                      symlink -> .runner-storage/NAME/versions/VERSION
    BASE/.runner-storage/NAME/
      versions/VERSION/            complete trees, never modified once published
      manifests/VERSION.json       what a backend knows about each kept version
      staging/                     trees being built; removed on the next start if killed
      state.json                   what is published and how the last attempt went
      lock                         one writer per NAME, across processes (flock)
    BASE/.runner-storage/.repos/   git object stores, shared by the sources of a repository

``NAME`` may hold slashes (``team/flows``), so the metadata of one source can sit inside
another's folder; :func:`list_states` tells them apart by their ``state.json`` and never
looks inside the folders a source keeps for itself (``versions/``, ``staging/``,
``manifests/``), whatever the published trees contain.
"""

from __future__ import annotations

import os
from pathlib import Path

from runner_storage.publish.state import SourceState, read_state

__all__ = [
    "METADATA_DIR",
    "REPOS_DIR",
    "SourceLayout",
    "list_states",
    "metadata_root",
    "repos_dir",
]

METADATA_DIR = ".runner-storage"
REPOS_DIR = ".repos"
STATE_FILE = "state.json"
#: The folders of a source's metadata that hold its own files, never another source's.
_OWN_FOLDERS = frozenset({"versions", "staging", "manifests"})


def metadata_root(base: Path) -> Path:
    """``BASE/.runner-storage``."""
    return base / METADATA_DIR


def repos_dir(base: Path) -> Path:
    """``BASE/.runner-storage/.repos``: the git object stores."""
    return metadata_root(base) / REPOS_DIR


class SourceLayout:
    """The paths of one source ``name`` under ``base``.

    Attributes:
        base: ``BASE``.
        name: ``NAME``, possibly with slashes.
        link: ``BASE/NAME``, the symlink runners use.
        root: ``BASE/.runner-storage/NAME``, everything else about the source.
        versions: the complete, immutable versions.
        staging: where versions are built; emptied at the start of every pull.
        manifests: the backend manifests of kept versions, one JSON file per version.
        state_file: ``state.json``.
        lock_file: the flock that makes one process at a time the source's writer.
        link_tmp: the temporary symlink renamed over ``link`` to publish.
    """

    __slots__ = (
        "base",
        "link",
        "link_tmp",
        "lock_file",
        "manifests",
        "name",
        "root",
        "staging",
        "state_file",
        "versions",
    )

    def __init__(self, base: Path, name: str) -> None:
        self.base, self.name = base, name
        self.link = base / name
        self.root = metadata_root(base) / name
        self.versions, self.staging = self.root / "versions", self.root / "staging"
        self.manifests = self.root / "manifests"
        self.state_file, self.lock_file = self.root / STATE_FILE, self.root / "lock"
        self.link_tmp = self.root / "link.tmp"

    def version(self, version: str) -> Path:
        """The directory of ``version``."""
        return self.versions / version

    def manifest(self, version: str) -> Path:
        """The manifest file of ``version``."""
        return self.manifests / f"{version}.json"

    def __repr__(self) -> str:
        return f"SourceLayout({str(self.base)!r}, {self.name!r})"


def list_states(base: Path) -> list[tuple[str, SourceState]]:
    """Every source published or attempted under ``base``, by name, with its state.

    A source is a folder of ``BASE/.runner-storage`` holding a ``state.json``; names
    starting with ``.`` (the object stores) are not sources, and nothing inside a source's
    own folders is looked at, so a file named ``state.json`` in a published tree is never
    taken for one.

    Raises:
        PublishError: a source's ``state.json`` cannot be read or is not a state file.
    """
    found: list[tuple[str, SourceState]] = []
    pending = [metadata_root(base)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                children = sorted(
                    entry.name
                    for entry in listing
                    if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                )
        except (FileNotFoundError, NotADirectoryError):
            continue
        is_source = folder != metadata_root(base) and (folder / STATE_FILE).is_file()
        if is_source:
            name = folder.relative_to(metadata_root(base)).as_posix()
            state = read_state(SourceLayout(base, name).state_file)
            if state is not None:
                found.append((name, state))
        pending.extend(
            folder / child for child in children if not (is_source and child in _OWN_FOLDERS)
        )
    return sorted(found, key=lambda item: item[0])
