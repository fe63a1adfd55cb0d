"""Packagers: push a flow's script to storage and return the manifest that finds it again.

Prefect 2.0's ``Packager`` and ``ScriptPackager``, without a Prefect server: a deployment
is the small :class:`DeploymentSpec`, and where Prefect registered the storage block with
its API, the manifest here describes it (secrets as placeholders, see
:mod:`runner_storage.packaging.manifest`).
"""

from __future__ import annotations

import abc
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from runner_storage.exceptions import (
    DeploymentValidationError,
    NotFoundError,
    SourceError,
    describe_error,
)
from runner_storage.packaging.manifest import PackageManifest, describe_storage

__all__ = [
    "LOCAL_INFRASTRUCTURE",
    "DeploymentSpec",
    "FilePackager",
    "Packager",
    "ScriptPackager",
]

#: The infrastructure that runs flows on this machine (Prefect 2.0's subprocess runner).
LOCAL_INFRASTRUCTURE = "process"


@dataclass(frozen=True)
class DeploymentSpec:
    """What a packager needs to know of a deployment.

    Attributes:
        name: the deployment's name.
        flow_location: the flow's script: a local path or any fsspec URL.
        flow_name: the flow's name; the script's stem when not given.
        infrastructure: where flows run: ``process`` (this machine) or another kind
            (``docker-container``, ``kubernetes-job``...), which needs remote storage.
        parameters: the flow's default parameters.
        tags: the deployment's tags.
    """

    name: str
    flow_location: str
    flow_name: str | None = None
    infrastructure: str = LOCAL_INFRASTRUCTURE
    parameters: Mapping[str, Any] | None = None
    tags: Sequence[str] | None = field(default=None)

    @property
    def resolved_flow_name(self) -> str:
        """The flow's name: ``flow_name``, or the script's file name without its suffix."""
        return self.flow_name or PurePosixPath(urlsplit(self.flow_location).path).stem


class Packager(abc.ABC):
    """Pushes a flow's code somewhere and says how to get it back."""

    @abc.abstractmethod
    async def check_compat(self, deployment: DeploymentSpec) -> None:
        """Check that ``deployment`` can run from what this packager writes.

        Raises:
            DeploymentValidationError: it cannot, and why.
        """

    @abc.abstractmethod
    async def package(self, deployment: DeploymentSpec) -> PackageManifest:
        """Push the flow's code; return the manifest that finds it again.

        Raises:
            DeploymentValidationError: see :meth:`check_compat`.
            RunnerStorageError: the flow's script or the storage failed.
        """


class ScriptPackager(Packager):
    """Writes the flow's script to a storage block (Prefect 2.0's ``ScriptPackager``).

    Example::

        packager = ScriptPackager(S3StorageBlock("flows", aws_secret_access_key=...))
        manifest = await packager.package(DeploymentSpec("etl", "flows/etl.py",
                                                         infrastructure="kubernetes-job"))

    Args:
        storage: a storage block (``write(bytes) -> key``); None for local storage, which
            only the local ``process`` infrastructure can use.
    """

    def __init__(self, storage: Any = None) -> None:
        self.storage = storage

    async def check_compat(self, deployment: DeploymentSpec) -> None:
        """Prefect's rules: local storage only for flows that run on this machine.

        With the ``process`` infrastructure and no storage, warns and falls back to a
        :class:`~runner_storage.blocks.storage.LocalStorageBlock`; with local storage,
        warns. With any other infrastructure, no storage or local storage is refused.

        Raises:
            DeploymentValidationError: the infrastructure needs remote storage.
        """
        from runner_storage.blocks.storage import (  # noqa: PLC0415 - blocks load on use
            LocalStorageBlock,
            TempStorageBlock,
        )

        local = self.storage is None or isinstance(
            self.storage, LocalStorageBlock | TempStorageBlock
        )
        machine = "this deployment will only be usable from the current machine"
        if deployment.infrastructure == LOCAL_INFRASTRUCTURE:
            if self.storage is None:
                warnings.warn(
                    f"no storage was given for deployment {deployment.name!r}, so it is"
                    f" written to local storage: {machine}",
                    UserWarning,
                    stacklevel=2,
                )
                self.storage = LocalStorageBlock()
            elif local:
                warnings.warn(
                    f"deployment {deployment.name!r} uses local storage: {machine}",
                    UserWarning,
                    stacklevel=2,
                )
            return
        if local:
            given = "no storage" if self.storage is None else "local storage"
            raise DeploymentValidationError(
                f"deployment {deployment.name!r} has {given}, but its"
                f" {deployment.infrastructure!r} infrastructure runs flows elsewhere and"
                " needs remote storage: give an S3StorageBlock, GoogleCloudStorageBlock,"
                " AzureBlobStorageBlock or a FileStorageBlock of a remote URL"
            )

    async def package(self, deployment: DeploymentSpec) -> PackageManifest:
        """Check, read the script, write it to the storage, return the manifest.

        Raises:
            DeploymentValidationError: see :meth:`check_compat`.
            ConfigurationError: the storage holds a secret that has no placeholder.
            NotFoundError: the flow's script does not exist.
            RunnerStorageError: the storage failed.
        """
        await self.check_compat(deployment)
        description = describe_storage(self.storage)  # before writing: refuse literals first
        data = await read_flow(deployment.flow_location)
        key = await self.storage.write(data)
        return _manifest("script", deployment, key, data, description)


class FilePackager(Packager):
    """Writes the flow's script to a filesystem block, at its content's hash.

    Prefect 2.0's ``FilePackager``: the key is the sha256 of the script, so packaging the
    same script twice writes it once.

    Args:
        filesystem: a filesystem block (``write_path``, ``read_path``):
            :class:`~runner_storage.blocks.filesystems.LocalFileSystem` or
            :class:`~runner_storage.blocks.filesystems.RemoteFileSystem`.
    """

    def __init__(self, filesystem: Any) -> None:
        self.filesystem = filesystem

    async def check_compat(self, deployment: DeploymentSpec) -> None:
        """A local filesystem serves only flows that run on this machine.

        Raises:
            DeploymentValidationError: a ``LocalFileSystem`` for infrastructure that runs
                flows elsewhere.
        """
        local = type(self.filesystem).__name__ == "LocalFileSystem"
        if local and deployment.infrastructure != LOCAL_INFRASTRUCTURE:
            raise DeploymentValidationError(
                f"deployment {deployment.name!r} writes to a LocalFileSystem, but its"
                f" {deployment.infrastructure!r} infrastructure runs flows elsewhere: use a"
                " RemoteFileSystem"
            )

    async def package(self, deployment: DeploymentSpec) -> PackageManifest:
        """Check, read the script, write it at its hash, return the manifest.

        Raises:
            DeploymentValidationError: see :meth:`check_compat`.
            NotFoundError: the flow's script does not exist.
            RunnerStorageError: the filesystem failed.
        """
        await self.check_compat(deployment)
        description = describe_storage(self.filesystem)
        data = await read_flow(deployment.flow_location)
        key = hashlib.sha256(data).hexdigest()
        written = self.filesystem.write_path(key, data)
        if hasattr(written, "__await__"):
            await written
        return _manifest("file", deployment, key, data, description)


async def read_flow(location: str) -> bytes:
    """The bytes of the flow script at ``location`` (a path or an fsspec URL).

    Raises:
        NotFoundError: nothing is there.
        SourceError: it cannot be read.
    """

    def read() -> bytes:
        import fsspec  # noqa: PLC0415 - only packaging reads flows through fsspec

        try:
            with fsspec.open(location, "rb") as handle:
                data: bytes = handle.read()
                return data
        except FileNotFoundError:
            raise NotFoundError(
                f"the flow script {location} does not exist: check flow_location"
            ) from None
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"cannot read the flow script {location}: {describe_error(exc)}"
            ) from None

    return await anyio.to_thread.run_sync(read)


def _manifest(
    kind: str, deployment: DeploymentSpec, key: str, data: bytes, storage: Mapping[str, Any]
) -> PackageManifest:
    return PackageManifest(
        type=kind,
        flow_name=deployment.resolved_flow_name,
        flow_file=PurePosixPath(urlsplit(deployment.flow_location).path).name,
        key=key,
        sha256=hashlib.sha256(data).hexdigest(),
        storage=storage,
    )
