"""Local trees: the containment check before a publish, digests, and atomic file writes."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from runner_storage.exceptions import UnsafeContentError

__all__ = [
    "check_contained",
    "file_digest",
    "link_or_copy",
    "replace_atomically",
    "tree_digest",
    "write_file_atomic",
]


def check_contained(root: Path) -> None:
    """Raise UnsafeContentError if a symlink under ``root`` resolves outside it."""
    real_root = os.path.realpath(root)
    pending = [os.fspath(root)]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:
            continue  # as os.walk: what cannot be listed holds nothing to follow
        with listing as entries:
            for entry in entries:
                if not entry.is_symlink():  # from the directory listing: no stat per file
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    continue
                resolved = os.path.realpath(entry.path)
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    relative = os.path.relpath(entry.path, root)
                    raise UnsafeContentError(
                        f"symlink {relative} -> {os.readlink(entry.path)} points outside the"
                        " source tree; remove it upstream (nothing was published)"
                    )


def tree_digest(root: Path) -> tuple[str, int, int]:
    """Digest a tree: sorted relative paths, file modes and contents, symlink targets.

    Returns:
        ``(sha256 hex digest, number of files, total bytes of the files)``.

    Raises:
        OSError: the tree cannot be read.
    """
    digest = hashlib.sha256()
    files = size = 0
    for directory, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames.sort()
        relative_dir = os.path.relpath(directory, root)
        for entry in sorted((*dirnames, *filenames)):
            path = os.path.join(directory, entry)
            relative = entry if relative_dir == "." else f"{relative_dir}/{entry}"
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            record: tuple[object, ...]
            if stat.S_ISLNK(info.st_mode):
                record = ("link", relative, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                record = ("dir", relative, mode)
            elif stat.S_ISREG(info.st_mode):
                record = ("file", relative, mode, info.st_size, file_digest(path))
                files += 1
                size += info.st_size
            else:
                record = ("other", relative, stat.S_IFMT(info.st_mode))
            # repr quotes every field, so no name can be confused with a separator
            digest.update(repr(record).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest(), files, size


def _raise(error: OSError) -> None:
    raise error


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file's contents (``sha256`` unless told otherwise), read in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


#: errnos of os.link that mean "these two places cannot share an inode": copy instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard-link ``source`` at ``target``; copy it (with its mode) where a link cannot be.

    Raises:
        OSError: neither worked.
    """
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        shutil.copy2(source, target)


def replace_atomically(
    path: str | os.PathLike[str], write: Callable[[str], object], *, executable: bool = False
) -> None:
    """Make the file at ``path`` anew so that no reader ever sees part of it.

    ``write`` fills a temporary file beside ``path`` (given its name); it is flushed to
    disk and renamed over ``path``, readable by all (``0644``, or ``0755`` when
    ``executable``) less the process's umask. The parent folder is created if missing; on
    failure the temporary is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, (0o755 if executable else 0o644) & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_file_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` at ``path`` atomically (see :func:`replace_atomically`)."""
    replace_atomically(path, lambda temporary: Path(temporary).write_bytes(data))


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would race threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
