"""Object stores and any fsspec URL: :class:`RemoteStorage`, synced by listing diff.

* :mod:`~runner_storage.remote.storage`: :class:`RemoteStorage`, Prefect's names;
* :mod:`~runner_storage.remote.backend`: one pull: list, plan, link and download;
* :mod:`~runner_storage.remote.plan`: two listings in, a plan out (pure);
* :mod:`~runner_storage.remote.verify`: downloads re-checked against the listing (size,
  MD5, ETag) before anything is published.

Everything fsspec-specific is below, in :mod:`runner_storage.fs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.remote.storage import RemoteStorage

__all__ = ["RemoteStorage"]

__getattr__, __dir__ = lazy_exports(__name__, {"RemoteStorage": "runner_storage.remote.storage"})
