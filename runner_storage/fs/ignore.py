"""Ignore rules in gitignore syntax (``.prefectignore``), and the local tree they filter.

:class:`IgnoreRules` decides, as git does, which files of a local tree are left out: the
patterns of an ignore file (through :mod:`pathspec`), the last matching pattern winning,
and an ignored directory hiding everything below it, so that no ``!pattern`` brings back
a file inside it. ``.git`` (a repository's folder, or the file of a worktree) is always
left out, whatever the patterns say: it holds history and, often, credentials.

:meth:`IgnoreRules.walk` lists the files of a local tree that the rules keep, never
descending into an ignored directory, and refuses what cannot be copied safely (a
symlink that leaves the tree, a name that is not a safe relative path, a special file).
The filesystem blocks use both; the snapshot format reuses them.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pathspec

from runner_storage.exceptions import ConfigurationError, UnsafeContentError
from runner_storage.fs.entries import path_problem

__all__ = ["ALWAYS_IGNORED", "DEFAULT_IGNORE_FILE", "IgnoreRules", "LocalFile"]

#: The ignore file a tree may carry at its top, as Prefect names it.
DEFAULT_IGNORE_FILE = ".prefectignore"
#: Names never copied, at any depth, whatever the patterns say.
ALWAYS_IGNORED = frozenset({".git"})


@dataclass(frozen=True, order=True)
class LocalFile:
    """One file of a local tree, kept by the rules.

    Attributes:
        path: the relative POSIX path inside the tree (safe: see
            :func:`~runner_storage.fs.entries.path_problem`).
        local: the file to read: the path itself, or where a symlink inside the tree
            points.
        size: its size in bytes when it was listed (0 for a symlink kept as one).
        link: for a symlink kept as one (``walk(symlinks=True)``), its target relative
            to the symlink's folder, POSIX, inside the tree; None for a file.
    """

    path: str
    local: Path
    size: int
    link: str | None = None


class IgnoreRules:
    """Which relative paths of a tree are ignored, in gitignore syntax, as git decides.

    Args:
        lines: the patterns, one per line, as an ignore file holds them (comments, blank
            lines, ``!negations``, ``dir/``, ``/anchored``, ``**``).
        origin: where the lines came from, for messages.

    Example::

        rules = IgnoreRules(["build/", "*.log", "!keep.log"])
        rules.matches("build/x.py")   # True: its directory is ignored
        rules.filter(["a.py", "x.log", "keep.log"])  # ["a.py", "keep.log"]
    """

    def __init__(self, lines: Iterable[str] = (), *, origin: str | None = None) -> None:
        patterns = [line.rstrip("\r\n") for line in lines]
        self._lines = tuple(patterns)
        self.origin = origin
        # Files: pathspec's own gitignore semantics. Directories: the same patterns with a
        # trailing "/" dropped (a directory-only pattern applies, and nothing else
        # changes), matched against the directory's own path, so that "docs/**" does not
        # match "docs" itself and "!*/" brings a directory back, as in git.
        self._files = pathspec.GitIgnoreSpec.from_lines(patterns)
        self._directories = pathspec.GitIgnoreSpec.from_lines(map(_directory_pattern, patterns))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> IgnoreRules:
        """The rules of the ignore file at ``path``.

        Raises:
            ConfigurationError: the file cannot be read or is not UTF-8 text.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
            raise ConfigurationError(
                f"cannot read the ignore file {os.fspath(path)}: {reason}; give a readable"
                " file in gitignore syntax"
            ) from None
        return cls(text.splitlines(), origin=os.fspath(path))

    @classmethod
    def for_tree(
        cls, root: str | os.PathLike[str], ignore_file: str | os.PathLike[str] | None = None
    ) -> IgnoreRules:
        """The rules for the tree at ``root``: ``ignore_file``, else its ``.prefectignore``.

        Without either, nothing but ``.git`` is ignored.

        Raises:
            ConfigurationError: the ignore file cannot be read.
        """
        if ignore_file is not None:
            return cls.from_file(ignore_file)
        default = Path(root) / DEFAULT_IGNORE_FILE
        return cls.from_file(default) if default.is_file() else cls()

    @property
    def lines(self) -> tuple[str, ...]:
        """The patterns, as given."""
        return self._lines

    def matches(self, relative_path: str, *, directory: bool = False) -> bool:
        """Whether ``relative_path`` (POSIX, relative to the tree) is ignored.

        A path is ignored when one of its parent directories is, whatever the patterns
        say of the path itself, as git never looks inside an ignored directory.

        Args:
            relative_path: the path; a trailing ``/`` marks a directory.
            directory: whether the path is a directory.
        """
        directory = directory or relative_path.endswith("/")
        parts = relative_path.strip("/").split("/")
        for depth in range(1, len(parts)):
            if self._directory_ignored("/".join(parts[:depth])):
                return True
        path = "/".join(parts)
        return self._directory_ignored(path) if directory else self._file_ignored(path)

    def filter(self, paths: Iterable[str]) -> list[str]:
        """The file paths of ``paths`` that are not ignored, in their order."""
        return [path for path in paths if not self.matches(path)]

    def walk(self, root: str | os.PathLike[str], *, symlinks: bool = False) -> list[LocalFile]:
        """The files under ``root`` that the rules keep, sorted by path.

        Ignored directories are not entered. A symlink is read as what it points to when
        that is inside ``root``; a symlink to a directory is not followed (what it points
        to is listed where it is). With ``symlinks``, every kept symlink (to a file or a
        directory) is listed as itself instead, with its target (:attr:`LocalFile.link`).

        Raises:
            UnsafeContentError: a kept symlink points outside ``root`` or nowhere, a kept
                name is not a safe relative path, or a kept entry is not a regular file;
                the message names it and says to ignore or fix it.
            OSError: a directory or file cannot be read.
        """
        top = Path(root)
        real_root = os.path.realpath(top)
        found: list[LocalFile] = []
        for directory, dirnames, filenames in os.walk(top, onerror=_raise):
            base = os.path.relpath(directory, top)
            prefix = "" if base == "." else base.replace(os.sep, "/") + "/"
            kept_dirs = []
            for name in sorted(dirnames):
                relative = prefix + name
                if self.matches(relative, directory=True):
                    continue
                _check_name(relative)
                if os.path.islink(os.path.join(directory, name)):
                    target = _inside(os.path.join(directory, name), real_root, relative)
                    if symlinks:
                        found.append(_link(Path(directory, name), relative, target))
                else:
                    kept_dirs.append(name)
            dirnames[:] = kept_dirs
            for name in sorted(filenames):
                relative = prefix + name
                if self.matches(relative):
                    continue
                path = Path(directory, name)
                if symlinks and path.is_symlink():
                    _check_name(relative)
                    target = _inside(os.fspath(path), real_root, relative)
                    found.append(_link(path, relative, target))
                else:
                    found.append(_local_file(path, relative, real_root))
        return sorted(found)

    def __repr__(self) -> str:
        origin = f", origin={self.origin!r}" if self.origin else ""
        return f"IgnoreRules({list(self._lines)!r}{origin})"

    def _file_ignored(self, path: str) -> bool:
        return _always_ignored(path) or self._files.match_file(path)

    def _directory_ignored(self, path: str) -> bool:
        return _always_ignored(path) or self._directories.match_file(path)


def _always_ignored(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ALWAYS_IGNORED


def _directory_pattern(line: str) -> str:
    """``line`` as it applies to a directory: a trailing ``/`` (directory only) dropped."""
    if line.endswith("\\ "):  # an escaped trailing space is part of the name
        return line
    stripped = line.rstrip(" \t")
    return stripped[:-1] if stripped.endswith("/") and stripped.strip("/") else line


def _check_name(relative: str) -> None:
    problem = path_problem(relative)
    if problem:
        raise UnsafeContentError(
            f"local path {relative!r} {problem}, so it cannot be copied as it is; rename it,"
            f" or ignore it in {DEFAULT_IGNORE_FILE}"
        )


def _inside(path: str, real_root: str, relative: str) -> str:
    """Where the symlink at ``path`` points, checked to be inside the tree."""
    target = os.path.realpath(path)
    if target != real_root and not target.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafeContentError(
            f"symlink {relative} -> {os.readlink(path)} points outside the folder, so"
            f" copying it would copy what is not in the tree; remove it, or ignore it in"
            f" {DEFAULT_IGNORE_FILE}"
        )
    return target


def _local_file(path: Path, relative: str, real_root: str) -> LocalFile:
    _check_name(relative)
    local = Path(_inside(os.fspath(path), real_root, relative)) if path.is_symlink() else path
    try:
        info = os.stat(local)
    except FileNotFoundError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        what = "a broken symlink" if info is None else "not a regular file"
        raise UnsafeContentError(
            f"local path {relative!r} is {what}, so it cannot be copied; remove it, or"
            f" ignore it in {DEFAULT_IGNORE_FILE}"
        )
    return LocalFile(relative, local, info.st_size)


def _link(path: Path, relative: str, resolved: str) -> LocalFile:
    """A symlink kept as one: its target as written when that stays in the tree as text.

    A target that is absolute, or that climbs out of the tree before coming back in
    (``../tree/x``), is rewritten relative to the symlink's folder: a reader of the copy
    must not have to leave it to resolve it.
    """
    written = os.readlink(path).replace(os.sep, "/")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(relative), written))
    if posixpath.isabs(written) or lexical == ".." or lexical.startswith("../"):
        written = os.path.relpath(resolved, os.path.realpath(path.parent)).replace(os.sep, "/")
    return LocalFile(relative, path, 0, written)


def _raise(error: OSError) -> None:
    raise error
