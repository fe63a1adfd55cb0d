"""Pull steps for Prefect's worker: ``runner_storage.deployments.steps.<name>`` in prefect.yaml.

Each returns what Prefect's steps return, a mapping with the ``directory`` the flow runs
from, relative to the working directory as Prefect gives it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from runner_storage._lazy import lazy_exports
from runner_storage.packaging.manifest import PackageManifest

if TYPE_CHECKING:
    from runner_storage.storage.docker import pull_docker_image
    from runner_storage.storage.webhook import pull_webhook

__all__ = [
    "agit_clone",
    "apull_package",
    "apull_snapshot",
    "git_clone",
    "pull_codecommit",
    "pull_docker_image",
    "pull_from_remote_storage",
    "pull_package",
    "pull_snapshot",
    "pull_webhook",
    "pull_with_block",
    "set_working_directory",
]


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


def set_working_directory(directory: str) -> dict[str, str]:
    """Change the working directory to ``directory``; return ``{"directory": <absolute>}``.

    As Prefect's: a relative path is relative to the folder the worker's pull started in
    (Prefect's runner may run the steps in a fresh folder of its own), else to the current
    working directory; a later step, and the flow, then run there.

    Raises:
        ConfigurationError: ``directory`` does not exist or is not a directory.
    """
    from runner_storage.exceptions import ConfigurationError  # noqa: PLC0415

    target = Path(directory).expanduser()
    started = _worker_start_directory()
    if started is not None and not target.is_absolute():
        target = started / target
    try:
        os.chdir(target)
    except OSError as exc:
        raise ConfigurationError(
            f"set_working_directory: cannot enter {directory!r} ({exc.strerror or exc}):"
            " give a folder an earlier step published"
        ) from None
    return {"directory": os.getcwd()}


def _worker_start_directory() -> Path | None:
    """Where Prefect's worker started this pull, when a Prefect that records it runs us.

    Prefect 3 keeps it in a context variable of its step runner; without Prefect (or with
    one that does not record it) there is none, and relative paths mean the working
    directory.
    """
    try:
        from prefect.deployments.steps import core  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        return None
    variable = getattr(core, "_PULL_STEP_SOURCE_CWD", None)
    value = variable.get() if variable is not None and hasattr(variable, "get") else None
    return Path(value) if isinstance(value, str | os.PathLike) else None


async def agit_clone(  # noqa: PLR0917 - Prefect's signature, positional as there
    repository: str,
    branch: str | None = None,
    commit_sha: str | None = None,
    include_submodules: bool = False,
    access_token: str | None = None,
    credentials: Any = None,
    directories: list[str] | None = None,
    clone_directory_name: str | None = None,
) -> dict[str, str]:
    """The async form of :func:`git_clone`.

    Raises:
        ConfigurationError: ``access_token`` and ``credentials`` both given, or bad options.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    from runner_storage.exceptions import ConfigurationError  # noqa: PLC0415
    from runner_storage.git import GitRepository  # noqa: PLC0415 - the engine, when used

    if access_token and credentials:
        # Prefect's rule and wording; ours is also a ValueError.
        raise ConfigurationError(
            "Please provide either an access token or credentials but not both."
        )
    storage = GitRepository(
        repository,
        credentials={"access_token": access_token} if access_token else credentials,
        name=clone_directory_name,
        branch=branch,
        commit_sha=commit_sha,
        include_submodules=include_submodules,
        pull_interval=None,
        directories=directories,
    )
    return await _publish_here(storage)


def git_clone(  # noqa: PLR0917 - Prefect's signature, positional as there
    repository: str,
    branch: str | None = None,
    commit_sha: str | None = None,
    include_submodules: bool = False,
    access_token: str | None = None,
    credentials: Any = None,
    directories: list[str] | None = None,
    clone_directory_name: str | None = None,
) -> dict[str, str]:
    """Publish a git repository under the working directory; return its ``directory``.

    Prefect's ``git_clone`` with its arguments and result, on runner-storage's engine: the
    first call clones (blobless, sparse when ``directories`` are given) and publishes
    ``<name>`` (Prefect's ``<repo>-<branch>`` unless ``clone_directory_name``) as a
    symlink to an immutable version; a later call in the same worker fetches only what
    changed, or does nothing, and never fails because the folder exists. A failed pull
    keeps the last good tree. The token (``access_token``, or ``credentials``: a mapping
    or a Prefect credentials block with ``token``/``access_token``, ``username``,
    ``password``) is sent as an HTTP header, never written into ``.git/config``, argv or
    the logs.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.git_clone:
              requires: runner-storage
              repository: https://github.com/acme/flows.git
              branch: main
              access_token: "{{ prefect.blocks.secret.github-token }}"

    Raises:
        ConfigurationError: ``access_token`` and ``credentials`` both given, or bad options.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    return anyio.run(
        lambda: agit_clone(
            repository,
            branch=branch,
            commit_sha=commit_sha,
            include_submodules=include_submodules,
            access_token=access_token,
            credentials=credentials,
            directories=directories,
            clone_directory_name=clone_directory_name,
        )
    )


async def pull_from_remote_storage(url: str, **settings: Any) -> dict[str, str]:
    """Publish an fsspec URL under the working directory; return its ``directory``.

    Prefect's ``pull_from_remote_storage`` (async, as Prefect's): ``settings`` go to the
    fsspec filesystem; the destination is ``<netloc>/<path>``. Called again, it lists once
    and downloads only new and changed objects, or nothing.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_from_remote_storage:
              requires: [runner-storage, s3fs]
              url: s3://acme/flows
              key: "{{ prefect.blocks.secret.aws-key-id }}"
              secret: "{{ prefect.blocks.secret.aws-secret }}"

    Raises:
        ConfigurationError: a bad URL or setting.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    from runner_storage.remote import RemoteStorage  # noqa: PLC0415 - fsspec, when used

    return await _publish_here(RemoteStorage(url, pull_interval=None, **settings))


async def pull_codecommit(
    repo: str,
    path: str,
    commit: str | None = None,
    client_options: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, str]:
    """Publish a CodeCommit repository's flow folder here, as Prefect 1's ``CodeCommit``.

    The step :class:`runner_storage.storage.CodeCommit` writes: the worker signs the git
    login with its own AWS credentials (the standard chain), so the step holds no secret.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_codecommit:
              requires: runner-storage
              repo: flows
              path: etl/flow.py
              client_options: {region_name: eu-west-1}

    Raises:
        ConfigurationError: a bad argument or no region.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    from runner_storage.storage.codecommit import CodeCommit  # noqa: PLC0415

    storage = CodeCommit(repo, path, commit, client_options, name=name, pull_interval=None)
    return await _publish_here(storage)


async def pull_with_block(block_document_name: str, block_type_slug: str) -> dict[str, str]:
    """Publish what a saved block holds under the working directory.

    As Prefect's: the block ``block_type_slug/block_document_name`` is pulled with
    :class:`~runner_storage.BlockStorageAdapter` under ``<slug>-<name>``. The block comes
    from the local block file when one holds it (the one ``runner-storage steps --run`` was
    given, else the file ``RUNNER_STORAGE_BLOCKS_FILE`` names: a ``local-file-system`` or
    ``remote-file-system`` block), else from Prefect (``Block.aload``, as its worker does).

    Raises:
        ConfigurationError: the block is in no block file and Prefect is not importable,
            or the block file's block is not a filesystem block.
        RunnerStorageError: the pull failed; what was published before stays.
        Exception: what Prefect raised loading the block (it does not exist, no API).
    """
    from runner_storage.blocks.adapter import BlockStorageAdapter  # noqa: PLC0415
    from runner_storage.blocks.filesystems import from_block_document  # noqa: PLC0415
    from runner_storage.exceptions import ConfigurationError  # noqa: PLC0415

    blocks = _block_file()
    try:
        fields = blocks.document(block_type_slug, block_document_name)
    except KeyError as exc:
        fields, missing = None, str(exc.args[0])
    if fields is not None:
        block = from_block_document(block_type_slug, block_document_name, fields)
    else:
        try:
            from prefect.blocks.core import Block  # type: ignore[import-not-found]  # noqa: PLC0415
        except ImportError:
            raise ConfigurationError(
                f"pull_with_block: {missing}, and Prefect, which could load it, is not"
                " installed here: add the block to a block file (RUNNER_STORAGE_BLOCKS_FILE)"
                " or run the step under Prefect's worker"
            ) from None
        block = await Block.aload(f"{block_type_slug}/{block_document_name}")
    storage = BlockStorageAdapter(
        block, pull_interval=None, name=f"{block_type_slug}-{block_document_name}"
    )
    return await _publish_here(storage)


def _block_file() -> Any:
    """The block file in effect: the runner's, else ``RUNNER_STORAGE_BLOCKS_FILE``'s, else none.

    Raises:
        ConfigurationError: the file named cannot be read.
    """
    from runner_storage.steps.blockfile import BlockFile  # noqa: PLC0415
    from runner_storage.steps.prefect_yaml import BLOCK_FILE  # noqa: PLC0415

    current = BLOCK_FILE.get()
    if current is not None:
        return current
    path = os.environ.get("RUNNER_STORAGE_BLOCKS_FILE")
    secrets = os.environ.get("RUNNER_STORAGE_SECRETS_DIR") or os.environ.get(
        "CREDENTIALS_DIRECTORY"
    )
    return BlockFile.load(
        Path(path) if path else None, secrets_dir=Path(secrets) if secrets else None
    )


async def _publish_here(storage: Any) -> dict[str, str]:
    """Publish ``storage`` under the working directory; its destination, relative to it."""
    storage.set_base_path(Path.cwd())
    await storage.pull_code()
    return {"directory": str(storage.name)}


# Steps of Prefect 1's storages, defined with them and loaded when first named.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "pull_docker_image": "runner_storage.storage.docker",
        "pull_webhook": "runner_storage.storage.webhook",
    },
)
