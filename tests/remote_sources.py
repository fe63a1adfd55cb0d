"""The harness of the RemoteStorage tests: one upstream per kind of source, and helpers.

A :class:`Source` is an upstream under test (a fresh bucket on moto or the GCS emulator, a
container on Azurite, a folder behind the HTTP file server, a local folder, or the
in-process memory store read through ``countmem://``), with how to change it and how to
observe the reads and requests it served. The ``source`` fixture runs a test on every
kind; ``s3`` and ``memory`` give one kind. Registered as a plugin in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from servers.azurite import AzuriteServer
from servers.gcs import GCSServer
from servers.http_files import HTTPFileServer
from servers.s3 import S3Server
from typing_extensions import override  # pydantic's dependency; typing has it from 3.12

from runner_storage.publish import Backend, Materialized, PreviousVersion
from runner_storage.publish.layout import METADATA_DIR
from runner_storage.remote import RemoteStorage
from runner_storage.types import Revision, SyncResult

# --- an in-process filesystem that counts object reads -------------------------------------


class CountingMemoryFileSystem(MemoryFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """fsspec's memory filesystem (same store) under ``countmem://``, recording reads.

    ``fail_downloads_with`` makes every download raise that error for the local path, the
    way a full disk would, without mocking the filesystem under test.
    """

    protocol = ("countmem",)
    reads: ClassVar[list[str]] = []
    fail_downloads_with: ClassVar[int | None] = None

    @override
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix("countmem://")
        return super()._strip_protocol(path)

    @override
    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            type(self).reads.append(self._strip_protocol(path))
        return super()._open(path, mode, **kwargs)

    @override
    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kw: Any
    ) -> Any:
        type(self).reads.append(self._strip_protocol(path))
        return super().cat_file(path, start, end, **kw)

    @override
    def get_file(self, rpath: str, lpath: str, *args: Any, **kwargs: Any) -> Any:
        code = type(self).fail_downloads_with
        if code is not None:
            raise OSError(code, os.strerror(code), lpath)
        return super().get_file(rpath, lpath, *args, **kwargs)


fsspec.register_implementation("countmem", CountingMemoryFileSystem, clobber=True)


# --- sources: one upstream per kind, fresh per test ----------------------------------------


class Source:
    """One upstream under test: its URLs, settings, and how to change and observe it.

    Paths are relative to a root of the test's own (a fresh bucket, container, directory).
    """

    kind: str = ""
    #: object stores keep "directory marker" keys (``a/``); file systems cannot
    has_markers: bool = False
    #: whether the server stores empty objects (the GCS emulator drops the connection)
    accepts_empty: bool = True

    def url(self, path: str) -> str:
        """The URL of ``path`` under the root."""
        raise NotImplementedError

    def missing_root_url(self) -> str:
        """A URL whose bucket, container or top folder does not exist."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The fsspec settings that reach the source."""
        return {}

    def put(self, path: str, data: bytes) -> None:
        """Create or overwrite the object at ``path``."""
        raise NotImplementedError

    def delete(self, path: str) -> None:
        """Delete the object at ``path``."""
        raise NotImplementedError

    def reset_counts(self) -> None:
        """Start counting requests and reads from now."""

    def reads(self) -> list[str] | None:
        """Paths of objects read since :meth:`reset_counts`; None if this source cannot tell."""
        return None

    def requests(self) -> int | None:
        """Requests served since :meth:`reset_counts`; None if this source cannot tell."""
        return None

    def storage(self, path: str = "flows", **options: Any) -> RemoteStorage:
        """A RemoteStorage of ``path`` with this source's settings."""
        return RemoteStorage(self.url(path), **{**self.settings(), **options})


class BucketSource(Source):
    """A fresh bucket on a session's object-store server (moto or the GCS emulator)."""

    scheme: str

    def __init__(self, server: S3Server | GCSServer) -> None:
        self.server = server
        self.bucket = server.new_bucket()

    @override
    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.bucket}/{path}"

    @override
    def missing_root_url(self) -> str:
        return f"{self.scheme}://missing-{uuid.uuid4().hex[:12]}/flows"

    @override
    def settings(self) -> dict[str, Any]:
        return self.server.storage_options()

    @override
    def put(self, path: str, data: bytes) -> None:
        self.server.put(self.bucket, path, data)

    @override
    def delete(self, path: str) -> None:
        self.server.delete(self.bucket, path)

    @override
    def reset_counts(self) -> None:
        self.server.reset_requests()

    @override
    def requests(self) -> int:
        return len(self.server.requests())


class S3Source(BucketSource):
    """A fresh bucket on the session's moto server."""

    kind = scheme = "s3"
    has_markers = True
    server: S3Server

    @override
    def reads(self) -> list[str]:
        prefix = f"/{self.bucket}/"
        return sorted(
            r.path[len(prefix) :]
            for r in self.server.requests()
            if r.method == "GET" and r.path.startswith(prefix) and len(r.path) > len(prefix)
        )


class GCSSource(BucketSource):
    """A fresh bucket on the session's GCS emulator."""

    kind = scheme = "gs"
    accepts_empty = False
    server: GCSServer

    @override
    def reads(self) -> list[str]:
        return sorted(
            r.path.split(f"/b/{self.bucket}/o/", 1)[1]
            for r in self.server.requests()
            if "alt=media" in r.query
        )


class AzureRequestLog(logging.Handler):
    """Requests the Azure SDK sends, read from its HTTP logging policy.

    Azurite keeps no access log, so the client's own record of each request stands in.
    """

    LOGGER = "azure.core.pipeline.policies.http_logging_policy"
    _LINE = re.compile(r"Request URL: '(?P<url>[^']*)'\nRequest method: '(?P<method>[A-Z]+)'")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str]] = []

    @override
    def emit(self, record: logging.LogRecord) -> None:
        match = self._LINE.match(record.getMessage())
        if match:
            self.seen.append((match["method"], match["url"]))

    @contextlib.contextmanager
    def installed(self) -> Iterator[AzureRequestLog]:
        """Record requests inside the block."""
        logger = logging.getLogger(self.LOGGER)
        level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


class AzureSource(Source):
    """A fresh container on the session's Azurite."""

    kind = "az"

    def __init__(self, server: AzuriteServer, log: AzureRequestLog | None = None) -> None:
        self.server = server
        self.container = server.new_container()
        self.log = log

    @override
    def url(self, path: str) -> str:
        return f"az://{self.container}/{path}"

    @override
    def missing_root_url(self) -> str:
        return f"az://missing-{uuid.uuid4().hex[:12]}/flows"

    @override
    def settings(self) -> dict[str, Any]:
        return self.server.storage_options()

    @override
    def put(self, path: str, data: bytes) -> None:
        self.server.put(self.container, path, data)

    @override
    def delete(self, path: str) -> None:
        self.server.delete(self.container, path)

    @override
    def reset_counts(self) -> None:
        if self.log is not None:
            self.log.seen.clear()

    @override
    def reads(self) -> list[str] | None:
        if self.log is None:
            return None
        prefix = f"{self.server.blob_endpoint}/{self.container}/"
        return sorted(
            url[len(prefix) :]
            for method, url in self.log.seen
            if method == "GET" and url.startswith(prefix) and "?" not in url
        )

    @override
    def requests(self) -> int | None:
        return None if self.log is None else len(self.log.seen)


class HTTPSource(Source):
    """The test's own HTTP file server, serving a fresh directory."""

    kind = "http"

    def __init__(self, server: HTTPFileServer) -> None:
        self.server = server

    @override
    def url(self, path: str) -> str:
        return self.server.url_for(path)

    @override
    def missing_root_url(self) -> str:
        return self.server.url_for("missing/")

    @override
    def put(self, path: str, data: bytes) -> None:
        self.server.write(path, data)

    @override
    def delete(self, path: str) -> None:
        (self.server.root / path).unlink()

    @override
    def reset_counts(self) -> None:
        self.server.reset_requests()

    @override
    def reads(self) -> list[str]:
        with self.server.lock:
            seen = list(self.server.requests)
        return sorted(
            path.lstrip("/")
            for method, path in seen
            if method == "GET" and (self.server.root / path.lstrip("/")).is_file()
        )


class FileOpens:
    """Files opened for reading under watched folders, seen by a Python audit hook.

    A local folder keeps no access log: what the process itself opens is the record. The
    hook is added once per process (audit hooks cannot be removed) and only records paths
    under a folder being watched.
    """

    _watched: ClassVar[dict[str, list[str]]] = {}
    _installed: ClassVar[bool] = False

    @classmethod
    def watch(cls, root: Path) -> list[str]:
        """Start recording opens under ``root``; returns the (live) list of relative paths."""
        if not cls._installed:
            sys.addaudithook(cls._hook)
            cls._installed = True
        seen: list[str] = []
        cls._watched[os.fspath(root.resolve()) + os.sep] = seen
        return seen

    @classmethod
    def unwatch(cls, root: Path) -> None:
        """Stop recording under ``root``."""
        cls._watched.pop(os.fspath(root.resolve()) + os.sep, None)

    @classmethod
    def _hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not cls._watched or not isinstance(args[0], str | bytes):
            return
        path = os.fsdecode(args[0])
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)
        )
        if writing:
            return
        for prefix, seen in list(cls._watched.items()):
            if path.startswith(prefix):
                seen.append(path[len(prefix) :])


class FileSource(Source):
    """A fresh local directory, read through ``file://``; reads seen by :class:`FileOpens`."""

    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self._opened: list[str] = []

    @override
    def reset_counts(self) -> None:
        self._opened = FileOpens.watch(self.root)

    @override
    def reads(self) -> list[str]:
        return sorted(self._opened)

    def close(self) -> None:
        """Stop watching the folder."""
        FileOpens.unwatch(self.root)

    @override
    def url(self, path: str) -> str:
        return f"file://{self.root}/{path}"

    @override
    def missing_root_url(self) -> str:
        return f"file://{self.root}-missing/flows"

    @override
    def put(self, path: str, data: bytes) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    @override
    def delete(self, path: str) -> None:
        (self.root / path).unlink()


class MemorySource(Source):
    """A fresh folder of fsspec's memory store, read through ``countmem://``."""

    kind = "memory"

    def __init__(self) -> None:
        self.top = f"t{uuid.uuid4().hex[:12]}"
        self.fs = fsspec.filesystem("memory")

    @override
    def url(self, path: str) -> str:
        return f"countmem://{self.top}/{path}"

    @override
    def missing_root_url(self) -> str:
        return f"countmem://missing-{self.top}/flows"

    @override
    def put(self, path: str, data: bytes) -> None:
        self.fs.pipe(f"/{self.top}/{path}", data)

    @override
    def delete(self, path: str) -> None:
        self.fs.rm(f"/{self.top}/{path}")

    @override
    def reset_counts(self) -> None:
        CountingMemoryFileSystem.reads.clear()

    def remove(self) -> None:
        """Drop this source's folder from the process-wide memory store."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"/{self.top}", recursive=True)

    @override
    def reads(self) -> list[str]:
        prefix = f"/{self.top}/"
        return sorted(
            p[len(prefix) :] for p in CountingMemoryFileSystem.reads if p.startswith(prefix)
        )


SOURCE_KINDS = ["s3", "gs", "az", "http", "file", "memory"]


def make_source(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    """A fresh source of ``kind``, starting its server (session-wide) on first use."""
    if kind == "s3":
        return S3Source(request.getfixturevalue("s3_server"))
    if kind == "gs":
        return GCSSource(request.getfixturevalue("gcs_server"))
    if kind == "az":
        log = AzureRequestLog()
        stack = contextlib.ExitStack()
        stack.enter_context(log.installed())
        request.addfinalizer(stack.close)
        return AzureSource(request.getfixturevalue("azurite_server"), log)
    if kind == "http":
        return HTTPSource(request.getfixturevalue("http_file_server"))
    if kind == "file":
        folder = FileSource(tmp_path / "upstream")
        request.addfinalizer(folder.close)
        return folder
    memory = MemorySource()
    request.addfinalizer(memory.remove)
    return memory


@pytest.fixture(params=SOURCE_KINDS)
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Source:
    """Every kind of source in turn."""
    return make_source(request.param, request, tmp_path)


@pytest.fixture
def s3(s3_server: S3Server) -> S3Source:
    """A fresh bucket on the session's moto server."""
    return S3Source(s3_server)


@pytest.fixture
def memory() -> Iterator[MemorySource]:
    """A fresh folder in the in-process memory filesystem, read through ``countmem://``."""
    source = MemorySource()
    yield source
    source.remove()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    return tmp_path / "base"


@pytest.fixture(autouse=True)
def _clean_counting_filesystem() -> Iterator[None]:
    CountingMemoryFileSystem.fail_downloads_with = None
    yield
    CountingMemoryFileSystem.fail_downloads_with = None
    CountingMemoryFileSystem.reads.clear()


# --- helpers -------------------------------------------------------------------------------

TREE = {
    "flows/a.txt": b"alpha\n",
    "flows/keep.py": b"print('keep')\n",
    "flows/sub/b.py": b"B = 1\n",
    "flows/sub/deep/c.cfg": b"[c]\n",
    "flows/gone.txt": b"to be deleted\n",
    "flows/empty.txt": b"",
}
OUTSIDE = {"other/x.txt": b"not ours\n", "flows2/y.txt": b"sibling prefix\n"}


def upload(source: Source, files: dict[str, bytes]) -> dict[str, bytes]:
    """Put every file of ``files`` into ``source``; return what was put.

    Empty files are left out on sources that cannot store them.
    """
    stored = {k: v for k, v in files.items() if v or source.accepts_empty}
    for path, data in stored.items():
        source.put(path, data)
    return stored


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (symlink followed), by relative POSIX path."""
    real = root.resolve()
    return {
        path.relative_to(real).as_posix(): path.read_bytes()
        for path in sorted(real.rglob("*"))
        if path.is_file()
    }


def under(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    """The entries of ``files`` below ``prefix/``, relative to it."""
    return {k[len(prefix) + 1 :]: v for k, v in files.items() if k.startswith(prefix + "/")}


def pull(storage: RemoteStorage) -> SyncResult:
    """Run one pull."""
    return anyio.run(storage.pull_code)


def state_text(storage: RemoteStorage, base: Path) -> str:
    """The raw ``state.json`` of ``storage`` under ``base``."""
    return (base / METADATA_DIR / storage.name / "state.json").read_text(encoding="utf-8")


def leftovers(base: Path, storage: RemoteStorage) -> list[Path]:
    """Anything left in the staging area of ``storage``."""
    staging = base / METADATA_DIR / storage.name / "staging"
    return list(staging.rglob("*")) if staging.exists() else []


class ChangeAfterResolve:
    """A backend that runs ``change`` between resolving and materialising, as a race would."""

    def __init__(self, inner: Backend, change: Callable[[], None]) -> None:
        self.inner = inner
        self.change = change

    async def resolve(self) -> Revision | None:
        """Resolve through the real backend, then change the source."""
        revision = await self.inner.resolve()
        self.change()
        return revision

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Materialise through the real backend."""
        return await self.inner.materialize(revision, staging, previous)


def sync_racing(storage: RemoteStorage, change: Callable[[], None]) -> SyncResult:
    """Pull ``storage`` with ``change`` applied upstream after the listing."""
    backend = ChangeAfterResolve(storage.backend(), change)
    return anyio.run(storage.publisher.sync, backend)
