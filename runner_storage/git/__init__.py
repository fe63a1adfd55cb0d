"""Git: :class:`GitRepository` and the engine under it.

* :mod:`~runner_storage.git.repository`: :class:`GitRepository`, Prefect's names;
* :mod:`~runner_storage.git.sync`: one pull: resolve the commit, then build its tree;
* :mod:`~runner_storage.git.store`: the object store shared by the sources of a remote;
* :mod:`~runner_storage.git.refs`: ref lookups over http(s) without starting git;
* :mod:`~runner_storage.git.export`: a commit's (sparse) tree written as plain files;
* :mod:`~runner_storage.git.submodules`: submodule URLs, ``.gitmodules``, their export;
* :mod:`~runner_storage.git.command`, :mod:`~runner_storage.git.environment`,
  :mod:`~runner_storage.git.errors`: running git, its hardened environment, its errors;
* :mod:`~runner_storage.git.url`: remote URLs, refs, SHAs and directories (pure).

git runs as cancellable subprocesses with an environment we build, not through
GitPython: GitPython's own documentation says it is not suited to long-running processes
such as daemons, since it leaks system resources, and its calls cannot be cancelled,
where a timed-out or stopped pull here kills git and everything it started at once.

:class:`GitRepository` loads on first use, so :mod:`runner_storage.git.url` can be used
(by the source classifier) without loading the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.git.repository import GitRepository

__all__ = ["GitRepository"]

__getattr__, __dir__ = lazy_exports(__name__, {"GitRepository": "runner_storage.git.repository"})
