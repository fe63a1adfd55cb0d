"""The on-disk contract, owned here for every backend: every byte written under ``BASE``.

* :mod:`~runner_storage.publish.layout`: every path under ``BASE/.runner-storage``, and
  :func:`list_states`;
* :mod:`~runner_storage.publish.publisher`: :class:`Publisher` (resolve, build aside,
  check, swap, record) and the :class:`Backend` protocol a storage implements;
* :mod:`~runner_storage.publish.managed`: :class:`ManagedStorage`, the half of every
  publishing storage that is the same for all;
* :mod:`~runner_storage.publish.state`, :mod:`~runner_storage.publish.retention`,
  :mod:`~runner_storage.publish.lock`, :mod:`~runner_storage.publish.names`,
  :mod:`~runner_storage.publish.tree`: ``state.json``, which versions go, the writer's
  lock, destination names, and local trees.

This package imports no storage family. The publisher and the managed storage need anyio,
so they load on first use: reading the layout and the states (``runner-storage status``)
loads neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports
from runner_storage.exceptions import disk_error
from runner_storage.publish.layout import METADATA_DIR, SourceLayout, list_states
from runner_storage.publish.names import validate_name
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.publish.state import SourceState, read_state

if TYPE_CHECKING:
    from runner_storage.publish.managed import ManagedStorage
    from runner_storage.publish.publisher import (
        Backend,
        Materialized,
        PreviousVersion,
        Publisher,
        Verifier,
    )

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_KEEP",
    "METADATA_DIR",
    "Backend",
    "ManagedStorage",
    "Materialized",
    "PreviousVersion",
    "Publisher",
    "SourceLayout",
    "SourceState",
    "Verifier",
    "disk_error",
    "list_states",
    "read_state",
    "validate_name",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ManagedStorage": "runner_storage.publish.managed",
        **dict.fromkeys(
            ("Backend", "Materialized", "PreviousVersion", "Publisher", "Verifier"),
            "runner_storage.publish.publisher",
        ),
    },
)
