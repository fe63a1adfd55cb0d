"""The ``git_clone`` pull step for a user's checkout, proposed as ``prefect deploy`` does.

``prefect deploy`` proposes ``repository`` (the ``origin`` remote's configured URL) and
``branch`` (the current branch) for the folder it runs in. We read the same facts with
GitPython (the project's library for a user's checkout; the pull engine never uses it),
and add what Prefect leaves to the user to discover on the worker:

* credentials in the origin URL are never copied into the step (Prefect copies them);
* a detached HEAD pins ``commit_sha`` instead of writing the branch ``HEAD``;
* a folder inside the checkout becomes ``directories``;
* warnings for uncommitted changes and for a commit that origin does not have.

"Pushed" is judged by the remote-tracking refs known locally (``origin/<branch>`` as last
fetched): nothing here talks to the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from runner_storage.exceptions import ConfigurationError, one_line
from runner_storage.secrets import chain_may_leak, public_url, redact
from runner_storage.steps.emit import git_clone_step

if TYPE_CHECKING:
    import git

__all__ = ["CheckoutProposal", "propose_git_clone"]

#: How much of a SHA the warnings show: enough to find the commit, short enough to read.
_SHORT = 12


@dataclass(frozen=True)
class CheckoutProposal:
    """The git_clone step proposed for a checkout, and what the user should know.

    Attributes:
        step: one pull step, as :func:`runner_storage.steps.emit.git_clone_step` builds it.
        warnings: one line each (no trailing period): a detached HEAD, uncommitted
            changes, a commit the worker would not get, credentials left out of the URL.
    """

    step: dict[str, Any]
    warnings: tuple[str, ...]


def propose_git_clone(directory: Path) -> CheckoutProposal:
    """Propose the ``git_clone`` pull step that gets a worker the code in ``directory``.

    ``repository`` is the ``origin`` remote's configured URL without credentials: an
    http(s) URL loses its whole userinfo, any other ``scheme://`` URL its password (an
    ``ssh://git@host/...`` user is kept), and an scp-style ``git@host:org/repo.git`` or a
    local path is kept as it is. ``branch`` is the current branch; with a detached HEAD it
    is None and ``commit_sha`` pins HEAD's commit. ``directories`` names ``directory``
    relative to the top of the checkout (POSIX separators) unless it is the top.

    Uncommitted changes are looked for in ``directory`` only (modified, staged or
    untracked files; ignored ones do not count): the worker's sparse checkout of
    ``directories`` holds nothing else, so changes elsewhere cannot change what it runs.

    Args:
        directory: the top of a git checkout or any folder inside it.

    Returns:
        The step and the warnings the user should read before deploying it.

    Raises:
        ConfigurationError: one line saying what is wrong and how to fix it: the folder is
            missing, in no checkout, in a bare repository or a ``.git`` folder, the
            repository has no commits or no ``origin`` remote, git is not installed, or
            git could not read the checkout.
    """
    if not directory.exists():
        raise ConfigurationError(
            f"{directory} does not exist: pass the folder of a git checkout to deploy from"
        )
    if not directory.is_dir():
        raise ConfigurationError(
            f"{directory} is a file, not a folder: pass the folder of a git checkout"
        )
    try:
        # GitPython looks for the git executable when imported and raises ImportError
        # without it.
        import git  # noqa: PLC0415 - only proposing a step needs GitPython
    except ImportError:
        raise ConfigurationError(
            "git is not installed or not on PATH, so the checkout cannot be read: install git"
        ) from None
    try:
        repo = git.Repo(directory, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise ConfigurationError(
            f"{directory} is not inside a git checkout: pass a folder of a clone whose"
            " origin the worker can reach (or git init, commit and push this one)"
        ) from None
    raw_url: str | None = None
    try:
        top = _working_tree(repo, directory)
        head = _head_commit(repo, top)
        raw_url = _origin_url(repo, top)
        return _proposal(repo, directory=directory.resolve(), top=top, head=head, url=raw_url)
    except git.GitCommandError as exc:
        raise _read_failure(directory, exc, raw_url) from (
            None if chain_may_leak(exc, lambda text: redact(text, [raw_url or ""])) else exc
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the git checkout around {directory}: {exc.strerror or exc}"
        ) from None
    finally:
        repo.close()


def _working_tree(repo: git.Repo, directory: Path) -> Path:
    """The resolved top of the checkout, after refusing bare repositories and ``.git``."""
    if repo.bare or repo.working_tree_dir is None:
        raise ConfigurationError(
            f"{directory} is in a bare git repository, which has no checkout: pass a folder"
            " of a clone of it"
        )
    git_dir = Path(repo.git_dir).resolve()
    if directory.resolve().is_relative_to(git_dir):
        raise ConfigurationError(
            f"{directory} is inside the .git folder of {git_dir.parent}: pass a folder of"
            " the checkout itself"
        )
    return Path(repo.working_tree_dir).resolve()


def _head_commit(repo: git.Repo, top: Path) -> str:
    try:
        return str(repo.head.commit.hexsha)
    except ValueError:  # GitPython's word for an unborn branch
        raise ConfigurationError(
            f"the git checkout at {top} has no commits yet: commit and push the flow code first"
        ) from None


def _origin_url(repo: git.Repo, top: Path) -> str:
    """The URL ``origin`` is configured with, read as Prefect reads it (``git config``)."""
    import git  # noqa: PLC0415 - see propose_git_clone

    try:
        url = str(repo.git.config("--get", "remote.origin.url")).strip()
    except git.GitCommandError as exc:
        if exc.status != 1:  # 1 is "no such key"; anything else is a real failure
            raise
        url = ""
    if not url:
        raise ConfigurationError(
            f"the git checkout at {top} has no origin remote to clone from: add one with"
            " git remote add origin URL"
        )
    return url


def _proposal(
    repo: git.Repo, *, directory: Path, top: Path, head: str, url: str
) -> CheckoutProposal:
    warnings: list[str] = []
    repository = _clone_url(url)
    if repository != url:
        warnings.append(
            "the origin URL holds credentials, which the step leaves out: give the worker"
            " a token through the step's credentials (a Secret block) instead"
        )
    relative = os.path.relpath(directory, top).replace(os.sep, "/")
    scope = None if relative == "." else relative
    detached = repo.head.is_detached
    branch = None if detached else str(repo.active_branch.name)
    if detached:
        warnings.append(
            f"HEAD is detached at {head[:_SHORT]}: the step pins this commit (commit_sha)"
            " instead of following a branch; check out a branch to follow it"
        )
    dirty = _uncommitted_changes(repo, scope)
    if dirty:
        where = f"in {scope}/" if scope else "in the checkout"
        warnings.append(
            f"{len(dirty)} uncommitted change(s) {where} (first: {dirty[0]}): the worker"
            " clones commits only; commit and push them"
        )
    warnings.extend(_push_warnings(repo, head=head, branch=branch))
    step = git_clone_step(
        repository=repository,
        branch=branch,
        directories=[scope] if scope else None,
        commit_sha=head if detached else None,
    )
    return CheckoutProposal(step=step, warnings=tuple(warnings))


def _clone_url(url: str) -> str:
    """``url`` without the credentials a worker must not receive in a pull step.

    http(s) URLs lose their whole userinfo (a token often stands alone as the user name),
    and their query and fragment, where a token can hide too; other ``scheme://`` URLs
    (``ssh://git@host/...``) keep their user name and lose only a password. scp-style
    addresses and local paths cannot carry a password and are kept as they are.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return public_url(url)
    if parts.scheme.lower() in ("http", "https"):
        return public_url(url)
    if parts.password is None:
        return url
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))


def _uncommitted_changes(repo: git.Repo, scope: str | None) -> list[str]:
    """Paths (from the top) changed, staged or untracked under ``scope``; ignored ones not."""
    pathspec = [f":(literal){scope}"] if scope else []
    status = str(repo.git.status("--porcelain", "-z", "--untracked-files=normal", "--", *pathspec))
    entries = iter(status.split("\0"))
    paths: list[str] = []
    for entry in entries:
        if len(entry) < 4:
            continue
        paths.append(_printable(entry[3:]))
        if entry[0] in "RC":  # a rename or copy: its source path follows; skip it
            next(entries, None)
    return paths


def _push_warnings(repo: git.Repo, *, head: str, branch: str | None) -> list[str]:
    """What the worker would get instead of HEAD's commit, judged by local remote refs."""
    short = head[:_SHORT]
    if branch is None:
        containing = str(
            repo.git.for_each_ref("--contains", head, "--format=%(refname)", "refs/remotes/origin")
        )
        if containing.strip():
            return []
        return [
            f"HEAD {short} is on no branch of origin (as last fetched): the worker would not"
            " get this commit; git push origin HEAD:refs/heads/NAME to push it to a branch"
        ]
    tip = _resolve(repo, f"refs/remotes/origin/{branch}")
    if tip is None:
        return [
            f"branch {branch} was never pushed (there is no origin/{branch} here): the worker"
            f" would not get this commit; git push -u origin {branch}"
        ]
    if tip == head:
        return []
    if not repo.is_ancestor(repo.commit(head), repo.commit(tip)):
        return [
            f"HEAD {short} is not on origin/{branch} (as last fetched): the worker would not"
            f" get this commit; git push origin {branch}"
        ]
    return [
        f"HEAD {short} is behind origin/{branch} (as last fetched): the worker would run"
        f" origin's newer commit {tip[:_SHORT]}; git pull to run the same code"
    ]


def _resolve(repo: git.Repo, ref: str) -> str | None:
    """The commit ``ref`` points to, or None when there is no such ref."""
    import git  # noqa: PLC0415 - see propose_git_clone

    try:
        return str(repo.git.rev_parse("--verify", "-q", f"{ref}^{{commit}}")).strip()
    except git.GitCommandError as exc:
        if exc.status == 1:
            return None
        raise


def _printable(path: str) -> str:
    # A file name may hold a newline or a control character; a warning stays one line.
    return "".join(c if c.isprintable() else "?" for c in path)


def _read_failure(directory: Path, exc: git.GitCommandError, url: str | None) -> Exception:
    """A one-line ConfigurationError for a git command that failed while reading."""
    stderr = str(exc.stderr or "").strip()
    # GitPython wraps stderr as "stderr: '...'"; show git's own words.
    stderr = stderr.removeprefix("stderr:").strip().strip("'").strip()
    reason = one_line(stderr, redact=lambda text: redact(text, [url or ""])) or (
        f"exit status {exc.status}"
    )
    return ConfigurationError(
        f"git could not read the checkout around {directory}: {reason}; fix the checkout"
        " (git status shows the problem) and try again"
    )
