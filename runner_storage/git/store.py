"""The object store of one remote, shared by every source of that repository.

``BASE/.runner-storage/.repos/<sha256(url)[:16]>.git`` is a bare repository whose only
remote, ``origin``, is the URL without credentials; its configuration never holds a
secret. Fetched commits are kept alive by refs under ``refs/runner-storage/``, one per
wanted ref, named by a hash so that branch names never clash (``a`` vs ``a/b``).
``<key>.lock`` beside it is an flock held while fetching and exporting, so the sources
sharing the store take turns. Names starting with ``.`` are reserved by
:func:`runner_storage.publish.names.validate_name`, so no source can be called ``.repos``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import anyio
from anyio.lowlevel import RunVar

from runner_storage.exceptions import disk_error
from runner_storage.git.command import Git
from runner_storage.git.refs import RefusedError, list_refs
from runner_storage.git.url import RemoteURL
from runner_storage.publish.layout import repos_dir
from runner_storage.publish.lock import file_lock

__all__ = ["REF_PREFIX", "ObjectStore", "TreeEntry"]

REF_PREFIX = "refs/runner-storage/"
_BLOB_MODES = frozenset({"100644", "100755", "120000"})


class TreeEntry(NamedTuple):
    """One entry of ``git ls-tree -r``: a file, a symlink or a submodule (gitlink).

    A tuple, not a dataclass: a large repository lists tens of thousands per commit.
    """

    mode: str
    oid: str
    path: str

    @property
    def is_gitlink(self) -> bool:
        """Whether this is a submodule commit rather than a file."""
        return self.mode == "160000"

    @property
    def is_blob(self) -> bool:
        """Whether git stores this entry's content as a blob (files and symlinks)."""
        return self.mode in _BLOB_MODES


#: How many commits' file lists :meth:`ObjectStore.list_tree` keeps: the new commit, the
#: previous one (each pull compares them) and the one before, which the previous pull's
#: comparison made the most recently used.
_RECENT_TREES = 3
_recent_trees: OrderedDict[tuple[Path, str], tuple[TreeEntry, ...]] = OrderedDict()


#: Per object store: a commit, and the ``directories`` whose file contents are all there.
#: Lets the sources of one repository skip asking git what is missing, one after another.
_complete_cones: dict[Path, tuple[str, set[tuple[str, ...]]]] = {}


class _Flight:
    """One ``ls-remote`` in progress, whose answer others may wait for."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: list[tuple[str, str]] | None = None
        self.error: Exception | None = None


#: Per event loop (an ``anyio.Event`` belongs to the loop that made it): the ref lookups in
#: flight, by store, question and login.
_ls_remote_flights: RunVar[dict[tuple[Path, tuple[str, ...], str], _Flight]] = RunVar(
    "runner_storage_ls_remote_flights"
)


def _flights() -> dict[tuple[Path, tuple[str, ...], str], _Flight]:
    try:
        return _ls_remote_flights.get()
    except LookupError:
        table: dict[tuple[Path, tuple[str, ...], str], _Flight] = {}
        _ls_remote_flights.set(table)
        return table


def ref_for(selection: str) -> str:
    """The ref under :data:`REF_PREFIX` that keeps the commit of ``selection`` alive."""
    return REF_PREFIX + hashlib.sha256(selection.encode()).hexdigest()[:20]


class ObjectStore:
    """The bare repository holding every object fetched from one remote.

    Args:
        base: the base path (``BASE``).
        remote: the repository.
        git: the runner for this pull's git commands.
    """

    def __init__(self, base: Path, remote: RemoteURL, git: Git) -> None:
        key = hashlib.sha256(remote.fetch_url.encode()).hexdigest()[:16]
        repos = repos_dir(base.absolute())  # absolute: git runs elsewhere
        self.path = repos / f"{key}.git"
        self.lock_path = repos / f"{key}.lock"
        self.remote = remote
        self.git = git

    @property
    def where(self) -> str:
        """The repository, for messages."""
        return self.git.redact(self.remote.url)

    # --- lifecycle ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the store's flock; the store exists and has no stale git locks inside."""
        async with file_lock(self.lock_path):
            # We hold the lock, so any git lock file left inside is from a killed pull.
            await anyio.to_thread.run_sync(self._remove_stale_git_locks)
            if not (self.path / "HEAD").is_file():
                await self._create()
            try:
                yield
            except BaseException:
                # A failed fetch (a full disk, a timeout) gives its space back now, not at
                # the next pull: that one might never come if the disk stays full.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._remove_stale_git_locks)
                raise

    async def ensure(self) -> None:
        """Create the store if it does not exist yet (takes the lock only then)."""
        if not (self.path / "HEAD").is_file():
            async with self.locked():
                pass

    async def _create(self) -> None:
        # A store made anew (its folder was removed) holds none of what we remembered.
        _complete_cones.pop(self.path, None)
        # Built aside and renamed, so a killed creation never leaves a half-made store.
        temporary = self.path.with_name(self.path.name + ".new")
        await anyio.to_thread.run_sync(shutil.rmtree, temporary, True)
        what = f"create the object store {self.path}"
        await self.git.check("init", "--quiet", "--bare", str(temporary), what=what)
        await self.git.check(
            "config", "remote.origin.url", self.remote.fetch_url, what=what, git_dir=temporary
        )
        try:
            os.replace(temporary, self.path)
        except OSError as exc:
            raise disk_error(f"cannot create {self.path}", exc) from None

    def _remove_stale_git_locks(self) -> None:
        candidates = [self.path / name for name in ("shallow.lock", "packed-refs.lock")]
        candidates += [self.path / "config.lock", self.path / "HEAD.lock"]
        candidates += self.path.glob("index-*")  # throwaway checkout indexes
        # Objects and packs a killed or failed (disk full) fetch was still writing: git
        # never reuses or removes them, so without this the space never comes back.
        objects = self.path / "objects"
        candidates += objects.glob("??/tmp_obj_*")
        candidates += objects.glob("pack/tmp_pack_*")
        candidates += objects.glob("pack/tmp_idx_*")
        candidates += objects.glob("pack/tmp_rev_*")
        refs = self.path / "refs"
        if refs.is_dir():
            candidates += refs.rglob("*.lock")
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    # --- talking to the remote -------------------------------------------------------------

    async def ls_remote(self, *patterns: str, symref: bool = False) -> list[tuple[str, str]]:
        """``(object id or "ref: TARGET", refname)`` pairs of the refs named ``patterns``.

        Patterns are full ref names (``HEAD``, ``refs/heads/main``, ``refs/tags/v1^{}``).

        Sources of this store asking the same question with the same credentials while
        one of them is already asking share its answer (one request for all).
        """
        key = (self.path, (*patterns, str(symref)), self.git.identity)
        flights = _flights()
        flight = flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.result is not None:
                return list(flight.result)
            # The asking pull was cancelled: ask ourselves.
        flight = flights[key] = _Flight()
        try:
            flight.result = await self._ls_remote(patterns, symref)
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            if flights.get(key) is flight:
                del flights[key]
            flight.done.set()
        return list(flight.result)

    async def _ls_remote(self, names: tuple[str, ...], symref: bool) -> list[tuple[str, str]]:
        if self.remote.http_origin is not None:
            # Without starting git when the server allows (see refs.py); else git answers.
            ask = functools.partial(
                list_refs,
                self.remote.fetch_url,
                names,
                symrefs=symref,
                authorization=self.git.http_authorization,
                env=self.git.environment,
                user_agent=self.git.user_agent,
            )
            refusal = None
            try:
                answer = await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)
            except RefusedError as exc:
                refusal, answer = exc.stderr, None
            if refusal is not None:  # raised out here, so that no context is attached
                raise self.git.failure("list refs", self.where, refusal)
            if answer is not None:
                return answer
        args = ("ls-remote", *(["--symref"] if symref else []), "origin", *names)
        out = await self.git.check(*args, what="list refs", where=self.where, git_dir=self.path)
        pairs = []
        for line in out.decode("utf-8", "replace").splitlines():
            value, _, name = line.partition("\t")
            if name:
                pairs.append((value, name))
        return pairs

    async def fetch(
        self, *refspecs: str, depth: int, blobless: bool, what: str, refetch: bool = False
    ) -> None:
        """Fetch ``refspecs`` from origin, shallow to ``depth`` (0 = all history)."""
        args = self._fetch_args(depth=depth, blobless=blobless, refetch=refetch)
        await self.git.check(*args, "origin", *refspecs, what=what, where=self.where,
                             git_dir=self.path)  # fmt: skip

    async def fetch_commit(
        self, sha: str, ref: str, *, depth: int, blobless: bool, what: str
    ) -> bool:
        """Fetch commit ``sha`` into ``ref``; False if the server refuses it by id.

        Fetching a full id, git asks the server for no ref list (one request fewer than a
        branch name), and gets exactly that commit. A protocol v0 server without
        ``uploadpack.allowReachableSHA1InWant`` sends only what its refs point at, so it
        refuses a commit that a push has just moved a branch past.
        """
        args = self._fetch_args(depth=depth, blobless=blobless, refetch=False)
        result = await self.git.run(*args, "origin", f"+{sha}:{ref}", git_dir=self.path)
        if result.returncode == 0:
            return True
        if is_unadvertised_refusal(result.stderr):
            return False
        raise self.git.failure(what, self.where, result.stderr) from None

    def _fetch_args(self, *, depth: int, blobless: bool, refetch: bool) -> list[str]:
        args = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
        args.append("--no-recurse-submodules")
        if depth > 0:
            args.append(f"--depth={depth}")
        elif (self.path / "shallow").exists():
            args.append("--unshallow")
        args.append("--filter=blob:none" if blobless else "--no-filter")
        if refetch:
            args.append("--refetch")
        return args

    async def fetch_objects(self, oids: Iterable[str]) -> bool:
        """Fetch missing objects by id; False if the server refuses unadvertised objects.

        Protocol v2 servers send any object asked for; a protocol v0 server does only with
        ``uploadpack.allowAnySHA1InWant``.
        """
        wanted = "".join(f"{oid}\n" for oid in sorted(set(oids))).encode()
        if not wanted:
            return True
        # No negotiation: told that we have a commit, the server would leave out its blobs.
        result = await self.git.run(
            "-c", "fetch.negotiationAlgorithm=noop", "fetch", "--quiet", "--no-tags",
            "--no-write-fetch-head", "--no-recurse-submodules", "--filter=blob:none", "--stdin",
            "origin", git_dir=self.path, input=wanted,
        )  # fmt: skip
        if result.returncode == 0:
            return True
        if is_unadvertised_refusal(result.stderr):
            return False
        raise self.git.failure("fetch file contents", self.where, result.stderr) from None

    # --- local queries ----------------------------------------------------------------------

    async def rev_parse(self, revision: str) -> str | None:
        """The object id ``revision`` names in the store, or None."""
        result = await self.git.run(
            "rev-parse", "--verify", "--quiet", "--end-of-options", revision, git_dir=self.path
        )
        if result.returncode != 0:
            return None
        return result.stdout.decode().strip() or None

    def loose_ref(self, ref: str) -> str | None:
        """What the loose file of ``ref`` holds (an object id, or ``ref: ...``), if there is one.

        No git process: a hint only. A ref may be packed instead, and a loose one is not
        peeled (it may name a tag, or a missing object); ask :meth:`rev_parse` to know.
        """
        try:
            return (self.path / ref).read_text(encoding="ascii").strip() or None
        except (OSError, ValueError):
            return None

    async def has_commit(self, sha: str) -> bool:
        """Whether commit ``sha`` is here, without asking the remote for it."""
        if not (self.path / "HEAD").is_file():
            return False
        # --missing=print turns off the lazy fetching of partial clones.
        result = await self.git.run(
            "rev-list", "--missing=print", "--no-walk", sha, git_dir=self.path
        )
        return result.returncode == 0

    def complete_cones(self, sha: str) -> set[tuple[str, ...]]:
        """The ``directories`` of commit ``sha`` known to have all their contents here."""
        known, cones = _complete_cones.get(self.path, ("", set()))
        return set(cones) if known == sha else set()

    def remember_complete(self, sha: str, cones: set[tuple[str, ...]]) -> None:
        """Record that ``cones`` of commit ``sha`` have all their contents here."""
        _complete_cones[self.path] = (sha, self.complete_cones(sha) | cones)

    def is_partial(self) -> bool:
        """Whether a blobless fetch ever came here (git keeps those in promisor packs)."""
        return any((self.path / "objects" / "pack").glob("*.promisor"))

    async def missing_objects(self, sha: str, paths: Sequence[str] | None = None) -> set[str]:
        """Objects of commit ``sha``'s tree not present locally (a blobless fetch's blobs).

        ``paths`` (files or directories, taken literally) limits the walk to them: far
        cheaper than walking a large tree when only a sparse cone matters.
        """
        if not await anyio.to_thread.run_sync(self.is_partial):
            return set()
        limit = ["--", *paths] if paths is not None else []
        out = await self.git.check(
            "--literal-pathspecs", "rev-list", "--objects", "--missing=print", "--no-walk", sha,
            *limit, what=f"list the missing objects of commit {sha}", git_dir=self.path,
        )  # fmt: skip
        return {line[1:].strip() for line in out.decode().splitlines() if line.startswith("?")}

    async def list_tree(self, sha: str) -> list[TreeEntry]:
        """Every file, symlink and submodule of commit ``sha``, recursively.

        A commit's tree never changes, so the last few are kept in memory: the sources of
        one repository list each commit once between them.
        """
        key = (self.path, sha)
        cached = _recent_trees.get(key)
        if cached is not None:
            _recent_trees.move_to_end(key)
            return list(cached)
        entries = await self._list_tree(sha)
        _recent_trees[key] = tuple(entries)
        while len(_recent_trees) > _RECENT_TREES:
            _recent_trees.popitem(last=False)
        return entries

    async def _list_tree(self, sha: str) -> list[TreeEntry]:
        out = await self.git.check(
            "ls-tree", "-r", "-z", "--full-tree", sha,
            what=f"list the files of commit {sha}", git_dir=self.path,
        )  # fmt: skip
        entries = []
        for record in out.decode("utf-8", "surrogateescape").split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, _, oid = meta.split(" ")
            entries.append(TreeEntry(mode, oid, path))
        return entries

    async def update_ref(self, ref: str, sha: str) -> None:
        """Point ``ref`` at ``sha`` (keeps it from garbage collection)."""
        await self.git.check(
            "update-ref", ref, sha, what=f"keep commit {sha} in {self.path}", git_dir=self.path
        )

    async def delete_refs(self, prefix: str) -> None:
        """Delete every ref under ``prefix``."""
        out = await self.git.check(
            "for-each-ref", "--format=delete %(refname)", prefix,
            what=f"list the refs of {self.path}", git_dir=self.path,
        )  # fmt: skip
        if out.strip():
            await self.git.check(
                "update-ref", "--stdin", input=out, what=f"delete refs in {self.path}",
                git_dir=self.path,
            )  # fmt: skip

    def objects_size(self) -> int:
        """Bytes of all objects in the store (the difference is what a fetch brought)."""
        total = 0
        for directory, _, files in os.walk(self.path / "objects"):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(directory, name)).st_size
        return total


def is_unadvertised_refusal(stderr: str) -> bool:
    """Whether git failed because the server refused to send an unadvertised object."""
    lowered = stderr.lower()
    return "unadvertised object" in lowered or "allow-tip-sha1-in-want" in lowered
