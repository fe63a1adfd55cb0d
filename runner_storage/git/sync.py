"""One pull of a git source: resolve the commit (one ref lookup), then build its tree.

:class:`GitBackend` is the :class:`~runner_storage.publish.Backend` of
:class:`~runner_storage.git.GitRepository`. The publisher calls :meth:`GitBackend.resolve`
first and skips the pull when that commit is already published; otherwise
:meth:`GitBackend.materialize` fetches the wanted ref into the shared object store and
exports the commit (and its submodules) into the staging directory.
"""

from __future__ import annotations

import logging
import re
import shutil
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from runner_storage.exceptions import (
    ConfigurationError,
    NotFoundError,
    SourceError,
)
from runner_storage.git.command import Git, check_git_version
from runner_storage.git.export import (
    Baseline,
    ExportedTree,
    Prelinked,
    ServerRefusedObjectsError,
    export_tree,
    link_previous,
)
from runner_storage.git.store import ObjectStore, ref_for
from runner_storage.git.submodules import export_submodules, read_gitmodules
from runner_storage.git.url import RemoteURL, check_branch_name
from runner_storage.publish import Materialized, PreviousVersion
from runner_storage.types import Revision, fingerprint

__all__ = ["GitBackend", "GitSource"]

logger = logging.getLogger("runner_storage.git")

#: Bump when the exported tree for the same inputs changes shape.
_EXPORT_FORMAT = 1
#: ``git fetch --refetch`` (the fallback for servers refusing objects by id).
_REFETCH_VERSION = (2, 36)
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class GitSource:
    """What a :class:`~runner_storage.git.GitRepository` asks for, validated."""

    remote: RemoteURL
    branch: str | None
    commit_sha: str | None
    directories: tuple[str, ...]
    include_submodules: bool
    depth: int

    def revision(self, sha: str, detail: Want | None = None) -> Revision:
        """The revision of commit ``sha`` with this source's tree-shaping options."""
        digest = fingerprint(
            "git", _EXPORT_FORMAT, sha, tuple(sorted(self.directories)), self.include_submodules
        )
        return Revision(id=sha, digest=digest, detail=detail)


@dataclass(frozen=True)
class Want:
    """What to fetch: a ref (``refs/heads/x``, ``refs/tags/x``, ``HEAD``) or a commit."""

    ref: str | None = None
    sha: str | None = None

    @property
    def selection(self) -> str:
        """A stable key for the ref that keeps this commit in the store."""
        return f"ref:{self.ref}" if self.ref else f"commit:{self.sha}"


class Interest:
    """What one :class:`~runner_storage.git.GitRepository` wants from its object store.

    Every repository registers one for its lifetime. When a pull fetches the file contents
    of a commit, it fetches those of every registered sparse source of the same store and
    ref in the same request, so that ten sources of one repository cost one round trip
    for their contents, not ten.

    Args:
        source: the repository's validated source.
        base: returns the repository's current base path.
    """

    def __init__(self, source: GitSource, base: Callable[[], Path]) -> None:
        self.source = source
        self._base = base
        _INTERESTS.add(self)

    def store_key(self) -> tuple[Path, str]:
        """Which object store this is: the absolute base path and the fetch URL."""
        return self._base().absolute(), self.source.remote.fetch_url

    def cones_alike(self) -> list[tuple[str, ...]]:
        """The ``directories`` of every live source sharing this store and ref (self too)."""
        key, mine = self.store_key(), self.source
        return [
            other.source.directories
            for other in list(_INTERESTS)
            if other.source.branch == mine.branch
            and other.source.commit_sha == mine.commit_sha
            and other.store_key() == key
        ]


_INTERESTS: weakref.WeakSet[Interest] = weakref.WeakSet()


@dataclass
class _Pull:
    """What one materialisation has done so far, and what it may reuse."""

    old_root: Path | None
    old_modules: Mapping[str, Any]
    files: int = 0
    bytes: int = 0
    submodules: dict[str, str] = field(default_factory=dict)


class GitBackend:
    """Resolve and materialise one pull of a git source.

    Args:
        source: the validated source.
        base: the base path (the object stores live under it).
        make_git: builds the git runner; called once, at the first git command, so that
            reading a secret fails inside the pull (and is recorded) rather than before it.
        redact: removes secrets from messages.
        interest: the repository's registration, to fetch the contents its siblings need
            along with its own.
    """

    def __init__(
        self,
        source: GitSource,
        base: Path,
        *,
        make_git: Callable[[], Git],
        redact: Callable[[str], str],
        interest: Interest | None = None,
    ) -> None:
        self._source = source
        self._base = base
        self._interest = interest
        self._make_git = make_git
        self._redact = redact
        self._runner: Git | None = None

    async def _store(self, remote: RemoteURL) -> ObjectStore:
        if self._runner is None:
            runner = self._make_git()
            await check_git_version(runner)
            self._runner = runner
        return ObjectStore(self._base, remote, self._runner)

    # --- resolve ---------------------------------------------------------------------------

    async def resolve(self) -> Revision | None:
        """The commit to publish, asking the remote about one ref at most.

        A full commit SHA needs no network; a short one is looked up in the store and
        otherwise left to :meth:`materialize` (None).
        """
        source = self._source
        store = await self._store(source.remote)
        sha = source.commit_sha
        if sha is not None:
            if len(sha) in (40, 64):
                return source.revision(sha, Want(sha=sha))
            if not (store.path / "HEAD").is_file():
                return None
            full = await store.rev_parse(f"{sha}^{{commit}}")
            return source.revision(full, Want(sha=full)) if full else None
        await store.ensure()
        want, sha = await self._resolve_ref(store)
        logger.debug("resolved %s of %s to %s", want.ref, store.where, sha)
        return source.revision(sha, want)

    async def _resolve_ref(self, store: ObjectStore) -> tuple[Want, str]:
        branch = self._source.branch
        if branch is None:
            pairs = await store.ls_remote("HEAD", symref=True)
            target = next((v[5:] for v, n in pairs if n == "HEAD" and v.startswith("ref: ")), None)
            sha = next((v for v, n in pairs if n == "HEAD" and not v.startswith("ref: ")), None)
            if sha is None:
                raise NotFoundError(
                    f"{store.where} has no default branch (empty repository?): push a commit"
                    " or give branch=..."
                )
            return Want(ref=_branch_ref(target)), _object_id(sha, store)
        head, tag = f"refs/heads/{branch}", f"refs/tags/{branch}"
        found = {name: value for value, name in await store.ls_remote(head, tag, f"{tag}^{{}}")}
        if head in found:  # as git clone --branch does: a branch wins over a tag
            return Want(ref=head), _object_id(found[head], store)
        if tag in found:
            return Want(ref=tag), _object_id(found.get(f"{tag}^{{}}", found[tag]), store)
        raise NotFoundError(
            f"branch or tag {branch!r} does not exist in {store.where}: check the name (it may"
            " have been deleted); the published version, if any, is kept"
        )

    # --- materialize -----------------------------------------------------------------------

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Fetch the wanted commit and export its tree (and submodules) into ``staging``."""
        source = self._source
        # No revision only for a short SHA not seen before: an empty Want finds it upstream.
        detail = revision.detail if revision is not None else None
        want = detail if isinstance(detail, Want) else Want()
        manifest = previous.manifest if previous and isinstance(previous.manifest, dict) else {}
        old_sha, old_modules = manifest.get("sha"), manifest.get("submodules")
        pull = _Pull(
            old_root=previous.path if previous else None,
            old_modules=old_modules if isinstance(old_modules, dict) else {},
        )
        baseline = Baseline(previous.path, old_sha) if previous and old_sha else None
        store = await self._store(source.remote)
        resolved = revision.id if revision is not None else None
        cones = self._interest.cones_alike() if self._interest is not None else []
        tree, urls = await self._export(
            store,
            want,
            staging,
            directories=source.directories,
            baseline=baseline,
            pull=pull,
            resolved=resolved,
            also=cones,
        )
        if source.include_submodules and tree.gitlinks:

            async def export(
                remote: RemoteURL, sha: str, target: Path, baseline: Baseline | None
            ) -> tuple[ExportedTree, dict[str, str]]:
                store = await self._store(remote)
                return await self._export(
                    store, Want(sha=sha), target, directories=(), baseline=baseline, pull=pull
                )

            await export_submodules(
                export,
                source.remote,
                staging,
                gitlinks=tree.gitlinks,
                urls=urls,
                previous_root=pull.old_root,
                previous=pull.old_modules,
                exported=pull.submodules,
            )
        logger.debug(
            "exported %s of %s: %d files written, %d reused",
            tree.sha,
            store.where,
            tree.files_written,
            tree.files_linked,
        )
        return Materialized(
            revision=source.revision(tree.sha),
            files_fetched=pull.files,
            bytes_fetched=pull.bytes,
            manifest={"sha": tree.sha, "submodules": pull.submodules},
        )

    async def _export(
        self,
        store: ObjectStore,
        want: Want,
        target: Path,
        *,
        directories: Sequence[str],
        baseline: Baseline | None,
        pull: _Pull,
        resolved: str | None = None,
        also: Sequence[Sequence[str]] = (),
    ) -> tuple[ExportedTree, dict[str, str]]:
        """Under the store's lock: fetch ``want``, export it, read its ``.gitmodules``.

        ``resolved`` is the commit ``want`` resolved to, if known; ``also`` the directories
        of other sources of the same ref, whose file contents are fetched along.
        """
        async with store.locked():
            before = await anyio.to_thread.run_sync(store.objects_size)
            sha, prelinked = await self._fetch_and_link(
                store, want, target, directories=directories, baseline=baseline, resolved=resolved
            )
            try:
                tree = await export_tree(
                    store, sha, target, directories=directories, baseline=baseline, also=also,
                    prelinked=prelinked,
                )  # fmt: skip
            except ServerRefusedObjectsError:
                # A protocol v0 server without allowAnySHA1InWant: fetch whole trees instead.
                await self._check_refetch(store)
                sha = await self._fetch(store, want, blobless=False, refetch=True)
                await anyio.to_thread.run_sync(_empty_directory, target)
                tree = await export_tree(
                    store, sha, target, directories=directories, baseline=baseline
                )
            urls = {}
            if self._source.include_submodules and tree.gitlinks:
                urls = await read_gitmodules(store, target)
            after = await anyio.to_thread.run_sync(store.objects_size)
        pull.files += tree.files_written
        pull.bytes += max(0, after - before)
        return tree, urls

    async def _fetch_and_link(
        self,
        store: ObjectStore,
        want: Want,
        target: Path,
        *,
        directories: Sequence[str],
        baseline: Baseline | None,
        resolved: str | None,
    ) -> tuple[str, Prelinked | None]:
        """Fetch ``want`` while the previous version's files are linked into ``target``.

        Both take about as long for a small change to a large tree (a round trip, and
        thousands of ``link(2)`` calls); :func:`export_tree` then drops the links of the
        files that changed. A failure of either is raised as itself, the fetch's first.
        """
        prelinked: Prelinked | None = None
        errors: list[Exception] = []

        async def link() -> None:
            nonlocal prelinked
            try:
                prelinked = await link_previous(store, baseline, target, directories=directories)
            except Exception as exc:  # noqa: BLE001 - raised below, not in an ExceptionGroup
                errors.append(exc)

        sha = ""
        async with anyio.create_task_group() as group:
            group.start_soon(link)
            try:
                sha = await self._fetch(
                    store, want, blobless=bool(directories), refetch=False, resolved=resolved
                )
            except Exception as exc:  # noqa: BLE001 - as above
                errors.insert(0, exc)
                group.cancel_scope.cancel()
        if errors:
            raise errors[0]
        return sha, prelinked

    async def _check_refetch(self, store: ObjectStore) -> None:
        version = await check_git_version(store.git)
        if version < _REFETCH_VERSION:
            raise SourceError(
                f"{store.where} refuses to send file contents by id and git"
                f" {'.'.join(map(str, version))} cannot refetch whole trees: upgrade git to"
                " 2.36, or enable protocol v2 or uploadpack.allowAnySHA1InWant on the server"
            )

    async def _fetch(
        self,
        store: ObjectStore,
        want: Want,
        *,
        blobless: bool,
        refetch: bool,
        resolved: str | None = None,
    ) -> str:
        """Bring ``want`` into the store; return the commit SHA actually fetched."""
        depth = self._source.depth
        key = ref_for(want.selection)
        # Another source of this ref fetched the resolved commit already (in this sweep,
        # or earlier): its ref points there, so there is nothing to fetch, unless this
        # source asks for more history than a shallow fetch brought.
        history_ok = depth == 1 or (depth == 0 and not (store.path / "shallow").exists())
        if (
            want.ref is not None
            and resolved is not None
            and not refetch
            and history_ok
            and _may_point_at(store, key, want.ref, resolved)
            and await store.rev_parse(f"{key}^{{commit}}") == resolved
        ):
            return resolved
        if want.ref is not None:
            what = f"fetch {_describe(want.ref)}"
            if (
                resolved is not None
                and not refetch
                and await store.fetch_commit(
                    resolved, key, depth=depth, blobless=blobless, what=what
                )
            ):
                # The commit resolve() saw, by id: one request fewer than by the name.
                return resolved
            # A refetch, or a server refusing commits by id (a push moved the branch).
            await store.fetch(
                f"+{want.ref}:{key}", depth=depth, blobless=blobless, refetch=refetch, what=what
            )
            # The SHA fetched, not the one resolved: a push in between must not mislabel it.
            sha = await store.rev_parse(f"{key}^{{commit}}")
            if sha is None:
                raise SourceError(f"{_describe(want.ref)} of {store.where} is not a commit")
            return sha
        if want.sha is None:
            sha = await self._find_short_sha(store)
        else:
            sha = want.sha
            # A commit never changes: when it is here, no network is needed.
            if refetch or not await store.has_commit(sha):
                what = f"fetch commit {sha}"
                await store.fetch(
                    f"+{sha}:{key}", depth=depth, blobless=blobless, refetch=refetch, what=what
                )
        await store.update_ref(ref_for(f"commit:{sha}"), sha)
        return sha

    async def _find_short_sha(self, store: ObjectStore) -> str:
        """Resolve a short SHA: fetch the history of every branch and tag (no contents)."""
        short = self._source.commit_sha or ""
        scan = ref_for(f"scan:{short}")
        try:
            await store.fetch(
                f"+refs/heads/*:{scan}/heads/*",
                f"+refs/tags/*:{scan}/tags/*",
                depth=0,
                blobless=True,
                what=f"fetch the history to find commit {short}",
            )
            sha = await store.rev_parse(f"{short}^{{commit}}")
        finally:
            with anyio.CancelScope(shield=True):
                await store.delete_refs(scan)
        if sha is None:
            raise NotFoundError(
                f"commit {short} is on no branch or tag of {store.where}, or is ambiguous:"
                " check it, or give more hex digits"
            )
        return sha


def _may_point_at(store: ObjectStore, key: str, ref: str, sha: str) -> bool:
    """Whether the store's ``key`` may point at commit ``sha``; False: certainly not.

    Read from the loose ref, without a git process: after a new commit it names the
    previous one. A branch's ref names its commit; a tag's may name the tag object, which
    only ``rev-parse`` can peel, and a packed ref has no loose file.
    """
    if ref != "HEAD" and not ref.startswith("refs/heads/"):
        return True
    return store.loose_ref(key) in (None, sha)


def _branch_ref(target: str | None) -> str:
    """The default branch's ref as the server named it, or ``HEAD`` if it looks odd.

    The name comes from the server and ends up in a refspec, so it must be a plain branch.
    """
    if target and target.startswith("refs/heads/"):
        try:
            check_branch_name(target[len("refs/heads/") :])
        except ConfigurationError:
            return "HEAD"
        return target
    return "HEAD"


def _object_id(value: str, store: ObjectStore) -> str:
    """A commit id from a ref lookup; it names directories, so check it is one."""
    if not _OBJECT_ID.fullmatch(value):
        raise SourceError(f"{store.where} answered {value[:80]!r} where a commit id belongs")
    return value


def _describe(ref: str) -> str:
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix):
            return f"{kind} {ref[len(prefix) :]!r}"
    return "the default branch"


def _empty_directory(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
