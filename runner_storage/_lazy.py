"""Names a package exports without importing their modules until first use (PEP 562).

``import runner_storage`` must not load a backend (git, fsspec), anyio or pydantic:
``tests/test_imports.py`` keeps it so. Each package that exports a heavy name declares it
here once instead of importing it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, loading ``names[name]`` on first access.

    Args:
        package: the ``__name__`` of the package that exports the names.
        names: exported name -> the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
