"""Submodules: their URLs, ``.gitmodules``, and each one's commit exported, recursively.

Submodule URLs come from upstream content, so they are untrusted: a ``file://`` URL, a
local path or ``ext::`` could read this machine's files or run commands, and is refused
with :class:`~runner_storage.exceptions.UnsafeContentError`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from pathlib import Path

from runner_storage.exceptions import ConfigurationError, SourceError, UnsafeContentError
from runner_storage.git.export import Baseline, ExportedTree
from runner_storage.git.store import ObjectStore, TreeEntry
from runner_storage.git.url import RemoteURL, parse_remote_url, split_scp
from runner_storage.secrets import redact

__all__ = [
    "MAX_SUBMODULE_DEPTH",
    "ExportCommit",
    "export_submodules",
    "read_gitmodules",
    "resolve_submodule_url",
]

#: Submodules inside submodules are followed this deep; a cycle ends here too.
MAX_SUBMODULE_DEPTH = 8

#: Exports commit ``sha`` of ``remote`` into ``target`` (reusing ``baseline``); returns
#: the tree written and the ``{path: url}`` of its own ``.gitmodules``.
ExportCommit = Callable[
    [RemoteURL, str, Path, "Baseline | None"], Awaitable[tuple[ExportedTree, dict[str, str]]]
]


async def export_submodules(
    export: ExportCommit,
    parent: RemoteURL,
    root: Path,
    *,
    gitlinks: Sequence[TreeEntry],
    urls: Mapping[str, str],
    previous_root: Path | None,
    previous: Mapping[str, object],
    exported: MutableMapping[str, str],
) -> None:
    """Export each submodule commit into its directory, then theirs, and so on.

    Args:
        export: exports one commit (see :data:`ExportCommit`).
        parent: the remote whose tree holds ``gitlinks``.
        root: where that tree was exported.
        gitlinks: its submodule entries.
        urls: its ``.gitmodules``, ``{path: url}``.
        previous_root: the previous version of the whole tree, to reuse files from.
        previous: the submodule commits of the previous version, by path.
        exported: filled with the commit of every submodule exported, by path.

    Raises:
        UnsafeContentError: a URL or path is unsafe, or submodules nest too deep.
        SourceError: a submodule has no URL, or git failed.
    """
    # (remote, its exported root, its submodule entries, its .gitmodules, path prefix, level)
    pending = [(parent, root, gitlinks, urls, "", 1)]
    while pending:
        remote, top, links, modules, prefix, level = pending.pop()
        if level > MAX_SUBMODULE_DEPTH:
            raise UnsafeContentError(
                f"submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels at {prefix!r}"
                " (a cycle?); fix the submodules upstream"
            )
        for link in links:
            path = f"{prefix}{link.path}"
            raw_url = modules.get(link.path)
            if raw_url is None:
                raise SourceError(
                    f"submodule {path!r} has no URL in .gitmodules of {redact(remote.url)};"
                    " fix .gitmodules upstream"
                )
            sub_remote = resolve_submodule_url(remote, raw_url, path=path)
            target = _inside(top, link.path)
            old_sha = previous.get(path)
            baseline = None
            if previous_root is not None and isinstance(old_sha, str):
                baseline = Baseline(previous_root / path, old_sha)
            tree, nested = await export(sub_remote, link.oid, target, baseline)
            exported[path] = link.oid
            if tree.gitlinks:
                pending.append((sub_remote, target, tree.gitlinks, nested, f"{path}/", level + 1))


def resolve_submodule_url(parent: RemoteURL, raw: str, *, path: str) -> RemoteURL:
    """The remote of a submodule whose ``.gitmodules`` URL is ``raw``.

    Relative URLs (``./x``, ``../x``) are resolved against the parent's URL as git does.
    Only network remotes are allowed: a ``file://`` URL, a local path or ``ext::`` in
    upstream content could read this machine's files or run commands.

    Raises:
        UnsafeContentError: the URL is not an https, http, ssh, git or scp-style one.
    """
    url = _join_relative(parent.fetch_url, raw) if raw.startswith(("./", "../")) else raw
    refused = UnsafeContentError(
        f"submodule {path!r} has URL {redact(raw)!r}: only https, http, ssh and git"
        " submodule URLs are allowed; fix .gitmodules upstream (nothing was published)"
    )
    try:
        remote = parse_remote_url(url)
    except ConfigurationError:
        raise refused from None
    if remote.is_local:
        raise refused
    return remote


def _join_relative(base: str, relative: str) -> str:
    """Git's rule: each ``../`` drops one path component of the parent URL."""
    prefix, path = _split_base(base)
    lead = "/" if path.startswith("/") else ""
    parts = [part for part in path.split("/") if part]
    while relative.startswith(("./", "../")):
        if relative.startswith("./"):
            relative = relative[2:]
            continue
        relative = relative[3:]
        if not parts:
            raise UnsafeContentError(
                f"relative submodule URL climbs above {redact(base)!r}; fix .gitmodules upstream"
            )
        parts.pop()
    return prefix + lead + "/".join([*parts, relative])


def _split_base(base: str) -> tuple[str, str]:
    """``(scheme://authority or user@host:, path)`` of a parent URL."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        authority, slash, path = rest.partition("/")
        return f"{scheme}://{authority}", slash + path
    scp = split_scp(base)
    if scp is not None:
        path = scp[2]
        return base[: len(base) - len(path)], path
    return "", base


def _inside(root: Path, relative: str) -> Path:
    """``root/relative`` if it is a real directory inside ``root`` (no symlink on the way)."""
    target = root / relative
    expected = os.path.normpath(os.path.join(os.path.realpath(root), relative))
    if os.path.realpath(target) != expected or not target.is_dir():
        raise UnsafeContentError(
            f"submodule path {relative!r} is not a plain directory of the source tree;"
            " fix it upstream (nothing was published)"
        )
    return target


async def read_gitmodules(store: ObjectStore, root: Path) -> dict[str, str]:
    """``{submodule path: url}`` from the exported ``root/.gitmodules`` (a regular file)."""
    path = root / ".gitmodules"
    if path.is_symlink() or not path.is_file():
        return {}
    result = await store.git.run(
        "config", "--file", str(path.absolute()), "--no-includes", "-z", "--get-regexp",
        r"^submodule\..*\.(path|url)$",
    )  # fmt: skip
    if result.returncode == 1:
        return {}  # no submodule entries
    if result.returncode != 0:
        raise store.git.failure(f"read .gitmodules of {store.where}", "", result.stderr) from None
    modules: dict[str, dict[str, str]] = {}
    for record in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        key, _, value = record.partition("\n")
        if not key.startswith("submodule."):
            continue
        name, _, variable = key[len("submodule.") :].rpartition(".")
        modules.setdefault(name, {})[variable] = value
    return {
        posixpath.normpath(module["path"]): module["url"]
        for module in modules.values()
        if module.get("path") and module.get("url")
    }
