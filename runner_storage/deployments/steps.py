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

__all__ = ["apull_package", "apull_snapshot", "pull_package", "pull_snapshot"]


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


async def apull_snapshot(
    root: str, snapshot: str | None = None, ref: str | None = None, **settings: Any
) -> dict[str, str]:
    """The async form of :func:`pull_snapshot`.

    Raises:
        ConfigurationError: a bad root, id or ref, or both ``snapshot`` and ``ref``.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    from runner_storage.exceptions import ConfigurationError  # noqa: PLC0415
    from runner_storage.snapshots.storage import SnapshotStorage  # noqa: PLC0415 - fsspec

    if snapshot is not None and ref is not None:
        raise ConfigurationError(
            "pull_snapshot takes snapshot (an id to pin) or ref (a name to follow), not both"
        )
    storage = SnapshotStorage(
        root, ref=ref or "latest", snapshot=snapshot, pull_interval=None, **settings
    )
    return await _publish_here(storage)


def pull_snapshot(
    root: str, snapshot: str | None = None, ref: str | None = None, **settings: Any
) -> dict[str, str]:
    """Publish a snapshot under the working directory; return the ``directory`` to run from.

    The snapshot (``snapshot``, an id, as ``to_pull_step()`` and ``runner-storage push``
    write it; else the ref ``ref``, default ``latest``) is published as runner-storage
    publishes every source: an immutable version and a symlink swapped atomically, under
    ``<netloc>/<path>`` of the root. Called again in the same process (a long-lived
    worker), a published snapshot costs no request (a pin) or one read of the ref.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_snapshot:
              requires: [runner-storage, s3fs]
              root: s3://my-bucket/code
              snapshot: 3f2a...e9

    Raises:
        ConfigurationError: a bad root, id or ref, or both ``snapshot`` and ``ref``.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    return anyio.run(lambda: apull_snapshot(root, snapshot, ref, **settings))


async def _publish_here(storage: Any) -> dict[str, str]:
    """Publish ``storage`` under the working directory; its destination, relative to it."""
    storage.set_base_path(Path.cwd())
    await storage.pull_code()
    return {"directory": str(storage.name)}
