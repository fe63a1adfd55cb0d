"""Where a pushed tree came from: the git checkout around it, read with GitPython.

GitPython is the project's library for inspecting a user's checkout on the deploy side; the
pull engine never uses it (it runs git as cancellable subprocesses, see the README). A
directory outside any checkout, a repository without commits, or a machine without git
simply has no provenance: a push never fails for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner_storage.secrets import public_url

__all__ = ["git_provenance"]


def git_provenance(directory: Path) -> dict[str, Any]:
    """``{"git": {...}}`` for a directory inside a git checkout, else ``{}``.

    The record holds ``commit`` (the HEAD commit), ``branch`` (None when detached),
    ``dirty`` (whether the pushed directory differs from HEAD, untracked files included,
    ignored ones not), ``path`` (the directory inside the checkout, ``.`` for its top) and
    ``origin`` (the ``origin`` remote's URL with any credentials, query and fragment
    removed; None without that remote).
    """
    try:
        # GitPython looks for the git executable when imported and raises ImportError
        # without it: no provenance to read, which is not an error for a push. (The
        # process's environment is the user's: nothing here changes it.)
        import git  # noqa: PLC0415 - only pushes read provenance
    except ImportError:
        return {}
    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError):
        return {}
    try:
        if repo.bare or repo.working_tree_dir is None:
            return {}
        top = Path(repo.working_tree_dir).resolve()
        relative = os.path.relpath(directory.resolve(), top).replace(os.sep, "/")
        try:
            commit = repo.head.commit.hexsha
        except ValueError:  # no commit yet
            return {}
        branch = None if repo.head.is_detached else repo.active_branch.name
        scope = None if relative == "." else relative
        dirty = repo.is_dirty(untracked_files=True, path=scope)
        origin = next((r for r in repo.remotes if r.name == "origin"), None)
        origin_url = _origin_url(origin)
    except (git.GitCommandError, OSError, TypeError):
        return {}
    finally:
        repo.close()
    return {
        "git": {
            "commit": commit,
            "branch": branch,
            "dirty": bool(dirty),
            "path": relative,
            "origin": origin_url,
        }
    }


def _origin_url(origin: Any) -> str | None:
    if origin is None:
        return None
    try:
        url = str(next(iter(origin.urls)))
    except (StopIteration, Exception):  # noqa: BLE001 - a remote without a URL has none
        return None
    return public_url(url) if "://" in url else url
