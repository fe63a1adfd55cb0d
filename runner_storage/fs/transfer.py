"""Downloads through fsspec, concurrent and bounded, on the filesystem's own connections.

An FTP filesystem is one connection: its files are downloaded one at a time, whatever the
concurrency asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem

from runner_storage.fs import ftp

__all__ = ["download_all"]

#: Extra ``get`` options per implementation package. gcsfs's default path asks for each
#: object's metadata twice before reading it (3 requests instead of 1); its chunked reads
#: only start above 100 MB anyway, far beyond the files of a code tree.
_GET_OPTIONS: dict[str, dict[str, Any]] = {"gcsfs": {"concurrency": 1}}


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
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rs-get") as pool:
        futures = [pool.submit(fs.get_file, r, lp) for r, lp in pairs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # raises the first failure
