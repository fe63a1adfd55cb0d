"""PackageManifest: where a packaged flow script is, how to check it, how to get it back.

A manifest is plain JSON (:meth:`PackageManifest.to_dict`): the packager's type, the flow's
name, the script's file name, the key it was stored under, the sha256 of its bytes, and
the storage described by its class name and constructor arguments, every secret replaced
by its pull-step placeholder (``{{ $VAR }}``, ``{{ prefect.blocks.secret.NAME }}``). A
manifest never holds a secret's value, so it can go into a deployment, a log or a pull
step as it is.

Rebuilding the storage from a manifest only ever builds one of the known block classes
(:data:`BLOCK_TYPES`): a manifest can come from anywhere, and naming any other class in it
must not make us import or run it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread

from runner_storage._lazy import lazy_exports
from runner_storage.exceptions import ConfigurationError, SourceError
from runner_storage.fs.entries import path_problem
from runner_storage.publish.tree import write_file_atomic
from runner_storage.secrets import DESCEND, secret_from_placeholder, walk
from runner_storage.steps import with_placeholders

__all__ = ["BLOCK_TYPES", "MANIFEST_FORMAT", "PULL_PACKAGE_STEP", "PackageManifest"]

#: The version of the layout :meth:`PackageManifest.to_dict` writes.
MANIFEST_FORMAT = 1

#: The pull step that unpackages a manifest (``runner_storage.deployments.steps``).
PULL_PACKAGE_STEP = "runner_storage.deployments.steps.pull_package"

#: The storages a manifest may name, and the module of each.
BLOCK_TYPES: Mapping[str, str] = {
    **dict.fromkeys(
        (
            "FileStorageBlock",
            "LocalStorageBlock",
            "TempStorageBlock",
            "S3StorageBlock",
            "GoogleCloudStorageBlock",
            "AzureBlobStorageBlock",
            "KVServerStorageBlock",
        ),
        "runner_storage.blocks",
    ),
    **dict.fromkeys(("LocalFileSystem", "RemoteFileSystem"), "runner_storage.blocks"),
}

_find_block, _ = lazy_exports("runner_storage.blocks", BLOCK_TYPES)


def describe_storage(storage: Any) -> dict[str, Any]:
    """``storage`` as a manifest records it: type and arguments, secrets as placeholders.

    Raises:
        ConfigurationError: ``storage`` is not one of :data:`BLOCK_TYPES`, or holds a
            secret that has no placeholder (a literal, or a URL's password), which a
            manifest would expose.
    """
    kind = type(storage).__name__
    if kind not in BLOCK_TYPES:
        raise ConfigurationError(
            f"a package cannot be stored in a {kind}: use one of {', '.join(sorted(BLOCK_TYPES))}"
        )
    arguments: dict[str, Any] = {}
    for name in _parameters(type(storage)):
        value = getattr(storage, name, None)
        if value is not None:
            arguments[name] = value if not isinstance(value, Path) else str(value)
    walk(arguments, _refuse_url_passwords, path=kind)
    described: dict[str, Any] = with_placeholders(arguments, path=kind)
    return {"type": kind, **described}


def _refuse_url_passwords(value: Any, _key: str | None, path: str) -> Any:
    """Refuse a URL with a password in it (``http://user:pw@host``): a manifest is shown."""
    if isinstance(value, str) and "://" in value and urlsplit(value).password:
        raise ConfigurationError(
            f"{path} is a URL with a password in it, which the manifest would expose: give"
            " the credentials as settings with Secret.from_env(...) instead"
        )
    return DESCEND


def rebuild_storage(description: Mapping[str, Any]) -> Any:
    """The storage a manifest describes; placeholders become secrets read at each call.

    Raises:
        ConfigurationError: the description names no known block type, or arguments that
            type does not take.
        CredentialsError: a Prefect Secret block placeholder, which only Prefect resolves.
    """
    kind = description.get("type")
    if not isinstance(kind, str) or kind not in BLOCK_TYPES:
        raise ConfigurationError(
            f"the manifest's storage type {kind!r} is not one of"
            f" {', '.join(sorted(BLOCK_TYPES))}: it was not written by runner-storage"
        )
    cls = _find_block(kind)
    arguments = {k: v for k, v in description.items() if k != "type"}
    unknown = sorted(set(arguments) - set(_parameters(cls)))
    if unknown:
        raise ConfigurationError(
            f"the manifest gives the {kind} arguments it does not take: {', '.join(unknown)}"
        )
    return cls(**walk(arguments, _placeholder_to_secret))


def _placeholder_to_secret(value: Any, _key: str | None, _path: str) -> Any:
    if isinstance(value, str):
        secret = secret_from_placeholder(value)
        return value if secret is None else secret
    return DESCEND


def _parameters(cls: type) -> list[str]:
    parameters = list(inspect.signature(cls).parameters.values())
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in keyword]


@dataclass(frozen=True)
class PackageManifest:
    """Describes a packaged flow script: what it is, where it is, and how to check it.

    Attributes:
        type: the packager that made it (``script`` or ``file``).
        flow_name: the flow's name, as the deployment gave it.
        flow_file: the script's file name (where :meth:`unpackage` writes it).
        key: the key the storage returned, or the path under the filesystem block.
        sha256: the hex sha256 of the script's bytes.
        storage: the storage's description (see :func:`describe_storage`).
    """

    type: str
    flow_name: str
    flow_file: str
    key: str
    sha256: str
    storage: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-serialisable data (no secret values in it)."""
        return {"format": MANIFEST_FORMAT, **asdict(self), "storage": dict(self.storage)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PackageManifest:
        """Read a manifest written by :meth:`to_dict`.

        Raises:
            ConfigurationError: not a manifest of this format, a field missing or of the
                wrong type, or a script file name that is not a plain name.
        """
        if not isinstance(data, Mapping) or data.get("format") != MANIFEST_FORMAT:
            raise ConfigurationError(
                f"not a runner-storage package manifest of format {MANIFEST_FORMAT}: make it"
                " again with runner-storage package"
            )
        fields = {}
        for name in ("type", "flow_name", "flow_file", "key", "sha256"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"the package manifest's {name} is missing or not text")
            fields[name] = value
        storage = data.get("storage")
        if not isinstance(storage, Mapping):
            raise ConfigurationError("the package manifest's storage is missing or not a table")
        if path_problem(fields["flow_file"]) is not None or "/" in fields["flow_file"]:
            raise ConfigurationError(
                f"the package manifest's flow_file {fields['flow_file']!r} is not a plain file name"
            )
        return cls(**fields, storage=dict(storage))

    async def unpackage(self, local_path: str | os.PathLike[str]) -> Path:
        """Fetch the script, check its sha256, and write it at ``local_path`` atomically.

        Args:
            local_path: the file to write, or an existing folder to write
                :attr:`flow_file` into.

        Returns:
            The path written.

        Raises:
            SourceError: the fetched bytes are not those packaged (their sha256 differs);
                nothing is written.
            RunnerStorageError: the storage failed (missing key, credentials...).
        """
        data = await self.fetch()
        return await anyio.to_thread.run_sync(self._write, Path(local_path), data)

    def _write(self, target: Path, data: bytes) -> Path:
        if target.is_dir():
            target = target / self.flow_file
        write_file_atomic(target, data)
        return target

    async def fetch(self) -> bytes:
        """The script's bytes, checked against :attr:`sha256`.

        Raises:
            SourceError: the bytes fetched are not those packaged.
            RunnerStorageError: the storage failed.
        """
        storage = rebuild_storage(self.storage)
        if hasattr(storage, "read_path"):
            data = storage.read_path(self.key)
            if inspect.isawaitable(data):
                data = await data
        else:
            data = await storage.read(self.key)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise SourceError(
                f"the package {self.key!r} of flow {self.flow_name!r} does not hold the"
                " script that was packaged (its sha256 differs): package the flow again"
            )
        return bytes(data)

    def to_pull_step(self) -> dict[str, Any]:
        """The pull step that unpackages this manifest into the working directory.

        ``requires`` makes Prefect's worker install runner-storage when it is missing.
        """
        return {PULL_PACKAGE_STEP: {"requires": "runner-storage", "manifest": self.to_dict()}}
