"""Pull steps for Prefect's worker: ``runner_storage.deployments.steps.<name>`` in prefect.yaml.

Each returns what Prefect's steps return, a mapping with the ``directory`` the flow runs
from, relative to the working directory as Prefect gives it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from runner_storage.packaging.manifest import PackageManifest

__all__ = ["apull_package", "pull_package"]


async def apull_package(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The async form of :func:`pull_package`.

    Raises:
        ConfigurationError: ``manifest`` is not a package manifest.
        SourceError: the stored script is not the one packaged.
        RunnerStorageError: the storage failed.
    """
    package = PackageManifest.from_dict(manifest)
    await package.unpackage(Path.cwd())
    return {"directory": "."}


def pull_package(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Unpackage ``manifest`` into the working directory and return ``{"directory": "."}``.

    The script lands under its own file name; its sha256 is checked first, and it is
    written atomically, so a flow never starts from a partial or foreign script.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_package:
              requires: runner-storage
              manifest: {format: 1, type: script, ...}

    Raises:
        ConfigurationError: ``manifest`` is not a package manifest.
        SourceError: the stored script is not the one packaged.
        RunnerStorageError: the storage failed.
    """
    return anyio.run(apull_package, manifest)
