"""Module paths that moved, kept importable: ``runner_storage.base`` is now ``types``...

Until 0.1 the library was a flat package; its modules now live by family. An import of
an old path still works and gives the new module, with a ``DeprecationWarning`` that
names it. Installed by ``runner_storage/__init__.py``; costs nothing until such an
import happens.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

__all__ = ["MOVED", "install"]

#: Old module path -> the module it is now.
MOVED = {
    "runner_storage.base": "runner_storage.types",
    "runner_storage.block": "runner_storage.blocks.adapter",
    "runner_storage.credentials": "runner_storage.secrets",
    "runner_storage.managed": "runner_storage.publish.managed",
    "runner_storage.plan": "runner_storage.remote.plan",
    "runner_storage.state": "runner_storage.publish.state",
}


class _MovedFinder:
    """Finds the old paths of :data:`MOVED` and loads them as their new modules.

    A meta path finder and loader by protocol (``find_spec``; ``create_module`` and
    ``exec_module``), not by ``importlib.abc``, whose import costs every process that
    imports the package 20 ms (it loads ``importlib.resources``).
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return ModuleSpec(fullname, self)  # type: ignore[arg-type]  # a loader by protocol

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} is now {new}: import it from there (or from runner_storage)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is complete already."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
