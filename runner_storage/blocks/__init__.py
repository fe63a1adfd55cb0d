"""Prefect blocks: :class:`BlockStorageAdapter`, a runner storage over a filesystem block.

* :mod:`~runner_storage.blocks.adapter`: :class:`BlockStorageAdapter` (any object with
  ``get_directory``), Prefect's names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.blocks.adapter import BlockStorageAdapter, NotABlockError

__all__ = ["BlockStorageAdapter", "NotABlockError"]

__getattr__, __dir__ = lazy_exports(
    __name__,
    dict.fromkeys(("BlockStorageAdapter", "NotABlockError"), "runner_storage.blocks.adapter"),
)
