"""Transfers through fsspec: downloads and uploads, concurrent and bounded, and atomic writes.

An FTP filesystem is one connection: its files are downloaded one at a time, whatever the
concurrency asked for. A write is atomic wherever it lands (:func:`write_atomic`): a reader
sees the old object or the new one, never part of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import ConfigurationError
from runner_storage.fs import ftp
from runner_storage.publish.tree import replace_atomically

__all__ = [
    "check_concurrency",
    "download_all",
    "make_parents",
    "read_whole",
    "upload_all",
    "upload_atomic",
    "write_atomic",
]

#: Protocols whose single-object PUT is atomic: a reader sees the old object or the new one.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})

#: Extra ``get`` options per implementation package. gcsfs's default path asks for each
#: object's metadata twice before reading it (3 requests instead of 1); its chunked reads
#: only start above 100 MB anyway, far beyond the files of a code tree.
_GET_OPTIONS: dict[str, dict[str, Any]] = {"gcsfs": {"concurrency": 1}}
#: Extra ``cat_file`` options per implementation package. s3fs asks for an object's size
#: (a HEAD) before reading it whole, to split large reads into ranges; the objects read
#: whole here (refs, manifests, block contents) are small, and one GET is what they cost.
_CAT_OPTIONS: dict[str, dict[str, Any]] = {"s3fs": {"max_concurrency": 1}}


def check_concurrency(value: object, *, what: str = "transfer_concurrency") -> int:
    """``value`` if it is a whole number of at least 1.

    Raises:
        ConfigurationError: it is not; the message names ``what``.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{what} must be a whole number of at least 1, got {value!r}")
    return value


def download_all(
    fs: AbstractFileSystem, pairs: Sequence[tuple[str, str]], concurrency: int
) -> None:
    """Download ``(remote, local)`` pairs, at most ``concurrency`` at a time.

    Async filesystems get one ``get`` call that fsspec runs concurrently on its own loop,
    reusing the filesystem's connection pool; FTP downloads one file after the other over
    its single connection; others get a thread pool.
    """
    if not pairs:
        return
    if ftp.is_ftp(fs):
        ftp.download_files(fs, pairs)
        return
    remote = [r for r, _ in pairs]
    local = [lp for _, lp in pairs]
    if isinstance(fs, AsyncFileSystem):
        options = _GET_OPTIONS.get(type(fs).__module__.split(".", 1)[0], {})
        fs.get(remote, local, batch_size=concurrency, **options)
        return
    # A local file keeps its mode (an executable script stays one); fsspec's copy does not.
    get = _copy_local if _is_local(fs) else fs.get_file
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rs-get") as pool:
        futures = [pool.submit(get, r, lp) for r, lp in pairs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # raises the first failure


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, tuple | list) else (fs.protocol,)


def _is_local(fs: AbstractFileSystem) -> bool:
    return "file" in _protocols(fs) or "local" in _protocols(fs)


def read_whole(fs: AbstractFileSystem, path: str) -> bytes:
    """The whole content of an object in one request (no size lookup first).

    Raises:
        Exception: what the filesystem raised (translate with
            :func:`runner_storage.fs.errors.translate_error`).
    """
    options = _CAT_OPTIONS.get(type(fs).__module__.split(".", 1)[0], {})
    return bytes(fs.cat_file(path, **options))


def make_parents(fs: AbstractFileSystem, paths: Sequence[str]) -> None:
    """Create the folders ``paths`` will be written into, where the filesystem needs it.

    Object stores have no folders (and s3fs would create a missing bucket), and local
    writes make their own; other filesystems (ftp, sftp, smb...) need them first.

    Raises:
        Exception: what the filesystem raised (translate with
            :func:`runner_storage.fs.errors.translate_error`).
    """
    if set(_protocols(fs)) & ATOMIC_PUT_PROTOCOLS or _is_local(fs):
        return
    for parent in sorted({path.rsplit("/", 1)[0] for path in paths}):
        fs.makedirs(parent, exist_ok=True)


def write_atomic(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` so that no reader ever sees part of it.

    Object stores put the object in one request (atomic there); a local file is written
    to a temporary name beside it, flushed to disk and renamed over ``path``; any other
    filesystem (sftp, ftp...) gets a temporary name beside ``path``, then a move.

    Raises:
        Exception: what the filesystem raised (translate with
            :func:`runner_storage.fs.errors.translate_error`); no temporary is left behind.
    """
    _atomically(fs, path, lambda target: _put_bytes(fs, target, data))


def upload_atomic(fs: AbstractFileSystem, local: str | os.PathLike[str], path: str) -> None:
    """Upload the local file ``local`` to ``path``, atomically as :func:`write_atomic`.

    On local disk the copy keeps whether the file is executable.
    """
    executable = bool(os.stat(local).st_mode & 0o100)
    _atomically(
        fs, path, lambda target: _put_file(fs, os.fspath(local), target), executable=executable
    )


def upload_all(fs: AbstractFileSystem, pairs: Sequence[tuple[str, str]], concurrency: int) -> None:
    """Upload ``(local, remote)`` pairs atomically, at most ``concurrency`` at a time.

    FTP uploads one file after the other over its single connection.
    """
    if not pairs:
        return
    if ftp.is_ftp(fs):
        for local, remote in pairs:
            upload_atomic(fs, local, remote)
        return
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rs-put") as pool:
        futures = [pool.submit(upload_atomic, fs, local, remote) for local, remote in pairs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # raises the first failure


def _atomically(
    fs: AbstractFileSystem,
    path: str,
    write: Callable[[str], object],
    *,
    executable: bool = False,
) -> None:
    if set(_protocols(fs)) & ATOMIC_PUT_PROTOCOLS:
        write(path)
        return
    if _is_local(fs):
        replace_atomically(fs._strip_protocol(path), write, executable=executable)
        return
    parent, _, name = path.rstrip("/").rpartition("/")
    temporary = f"{parent}/.{name}.runner-storage-{uuid.uuid4().hex[:12]}.tmp"
    try:
        write(temporary)
        fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            fs.rm_file(temporary)
        raise


def _copy_local(source: str, target: str) -> None:
    shutil.copyfile(source, target)
    if os.stat(source).st_mode & 0o100:  # executable: so for everyone who may read it
        os.chmod(target, os.stat(target).st_mode | ((os.stat(target).st_mode & 0o444) >> 2))


def _put_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    if _is_local(fs):
        Path(path).write_bytes(data)
    else:
        fs.pipe_file(path, data)


def _put_file(fs: AbstractFileSystem, local: str, path: str) -> None:
    if _is_local(fs):
        shutil.copyfile(local, path)
    else:
        fs.put_file(local, path)
