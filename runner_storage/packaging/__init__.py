"""Packagers: push a flow's script to a storage block, get a manifest that finds it again.

* :mod:`~runner_storage.packaging.packagers`: :class:`DeploymentSpec`, :class:`Packager`,
  :class:`ScriptPackager` (a storage block) and :class:`FilePackager` (a filesystem
  block, at the script's hash);
* :mod:`~runner_storage.packaging.manifest`: :class:`PackageManifest` (JSON, secrets as
  placeholders): ``unpackage`` it on a runner, or turn it into a pull step.

Example::

    manifest = await ScriptPackager(S3StorageBlock("flows")).package(
        DeploymentSpec("etl", "flows/etl.py", infrastructure="kubernetes-job")
    )
    json.dumps(manifest.to_dict())                        # store it with the deployment
    await PackageManifest.from_dict(data).unpackage(".")  # on the runner: ./etl.py
"""

from __future__ import annotations

from runner_storage.exceptions import DeploymentValidationError
from runner_storage.packaging.manifest import PackageManifest
from runner_storage.packaging.packagers import (
    DeploymentSpec,
    FilePackager,
    Packager,
    ScriptPackager,
)

__all__ = [
    "DeploymentSpec",
    "DeploymentValidationError",
    "FilePackager",
    "PackageManifest",
    "Packager",
    "ScriptPackager",
]
