"""Prefect 1's ``S3``, ``GCS`` and ``Azure`` storages: one flow script in a bucket.

Each is a :class:`~runner_storage.RemoteStorage` of the one object, so a no-op pull is one
listing whose etag (S3, Azure) or MD5 (GCS) is unchanged, and the object is published
under its base name. The write side (``add_flow`` and ``build``) uploads scripts the same
way Prefect 1 registered them; pickled flows are refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from runner_storage.exceptions import ConfigurationError, NotFoundError, PublishError
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.remote.backend import RemoteBackend
from runner_storage.remote.storage import RemoteStorage
from runner_storage.storage.secrets import NamedSecret
from runner_storage.types import SyncResult

#: Our ``pull_from_remote_storage``, which publishes a single object as a folder.
PULL_OBJECT_STEP = "runner_storage.deployments.steps.pull_from_remote_storage"

__all__ = ["GCS", "PULL_OBJECT_STEP", "S3", "Azure", "ObjectFlowStorage", "refuse_pickles"]

#: boto3 client options and the s3fs settings they are.
_S3_OPTIONS = {
    "aws_access_key_id": "key",
    "aws_secret_access_key": "secret",
    "aws_session_token": "token",
    "endpoint_url": "endpoint_url",
}


def refuse_pickles(stored_as_script: bool) -> None:
    """Refuse ``stored_as_script=False``: a pickled flow cannot be loaded safely.

    Raises:
        ConfigurationError: the flow is stored pickled.
    """
    if not stored_as_script:
        raise ConfigurationError(
            "pickled flows are not supported (unpickling fetched bytes runs arbitrary code):"
            " store the flow as a script with stored_as_script=True"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "flow"


class ObjectFlowStorage(RemoteStorage):
    """A flow script stored as one object in a bucket or container.

    Subclasses give the URL scheme, the bucket and the filesystem settings; this class
    keeps the key, the flow file and the write side.
    """

    _scheme = ""
    #: Whether ``build`` may replace an object that is already there.
    _overwrite = True

    def __init__(
        self,
        bucket: str,
        key: str | None,
        settings: Mapping[str, Any],
        *,
        what: str,
        name: str | None,
        pull_interval: float | None,
        keep_versions: int,
        grace_period: float,
    ) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket.strip("/"):
            raise ConfigurationError(f"{what} must be one name, got {bucket!r}")
        self._bucket = bucket.strip("/")
        self._key = _check_key(key) if key is not None else None
        self._object_settings = dict(settings)
        self._options: dict[str, Any] = {
            "name": name,
            "pull_interval": pull_interval,
            "keep_versions": keep_versions,
            "grace_period": grace_period,
        }
        #: flow name -> the object key ``add_flow`` chose for it.
        self.flows: dict[str, str] = {}
        self._scripts: dict[str, Path] = {}
        self._target(self._key)

    def _target(self, key: str | None) -> None:
        """Point the storage at ``key`` (None: nothing to pull until ``build``)."""
        self._key = key
        url = f"{self._scheme}://{self._bucket}/{key or ''}"
        name = self._options["name"] or (None if key else f"{self._bucket}/unbuilt")
        # Re-initialising resets the base path to the cwd: keep the one already set.
        base = getattr(self, "_storage_base_path", None)
        RemoteStorage.__init__(
            self,
            url,
            pull_interval=self._options["pull_interval"],
            keep_versions=self._options["keep_versions"],
            grace_period=self._options["grace_period"],
            name=name,
            **self._object_settings,
        )
        if base is not None:
            self._storage_base_path = base

    @property
    def flow_path(self) -> Path:
        """The flow script's absolute path inside the published tree.

        Raises:
            ConfigurationError: no key yet (give ``key``, or ``add_flow`` then ``build``).
        """
        return self.destination / PurePosixPath(self._need_key()).name

    def _need_key(self) -> str:
        if self._key is None:
            raise ConfigurationError(
                f"no key names the flow's object in {self._scheme}://{self._bucket}: give"
                " key=..., or add_flow(...) then build()"
            )
        return self._key

    async def pull_code(self, **options: Any) -> SyncResult:
        """Pull the object (a no-op while its etag is unchanged).

        Raises:
            ConfigurationError: no key names the object yet.
        """
        self._need_key()
        return await super().pull_code(**options)

    def backend(self) -> RemoteBackend:
        """A backend for one pull of the object.

        Raises:
            ConfigurationError: no key names the object yet (it would list the bucket).
        """
        self._need_key()
        # The key names the flow's object, even with keys below it ("K" beside "K/...").
        return dataclasses.replace(super().backend(), single_object=True)

    def to_pull_step(self) -> dict[str, Any]:
        """Our ``pull_from_remote_storage`` step of the one object (Prefect's signature).

        Ours, not Prefect's: Prefect's copies a single object to the file where its
        ``directory`` result points, so the flow run could not enter it; ours publishes a
        folder holding the object.

        Raises:
            ConfigurationError: no key names the object yet, or a secret is plain text.
        """
        self._need_key()
        ((_, inputs),) = super().to_pull_step().items()
        package = inputs.pop("requires", None)
        inputs["requires"] = ["runner-storage", package] if package else "runner-storage"
        return {PULL_OBJECT_STEP: inputs}

    def add_flow(self, flow_file: str | os.PathLike[str], name: str | None = None) -> str:
        """Register a flow script for :meth:`build` to upload; return its object key.

        The key is ``key`` when one was given, else ``<flow name>/<UTC time>.py``, as
        Prefect 1 chose it.

        Raises:
            ConfigurationError: the script is not a readable file, or the name is taken.
        """
        path = Path(flow_file)
        if not path.is_file():
            raise ConfigurationError(f"flow_file {str(path)!r} is not a file: give a script")
        flow_name = name or path.stem
        if flow_name in self.flows:
            raise ConfigurationError(f"a flow named {flow_name!r} is already in this storage")
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dt%H-%M-%S-%f")
        location = self._key or f"{_slug(flow_name)}/{stamp}{path.suffix or '.py'}"
        self.flows[flow_name] = location
        self._scripts[location] = path
        return location

    def build(self) -> ObjectFlowStorage:
        """Upload every added script (atomically) and point the storage at the last one.

        Returns:
            This storage, whose pulls now fetch the uploaded script.

        Raises:
            PublishError: a script cannot be read.
            SourceError, AuthenticationError: the store refused the upload.
        """
        from runner_storage.blocks.filesystems import RemoteFileSystem  # noqa: PLC0415

        store = RemoteFileSystem(f"{self._scheme}://{self._bucket}", self._object_settings)
        location = None
        for location, script in self._scripts.items():
            try:
                content = script.read_bytes()
            except OSError as exc:
                raise PublishError(
                    f"cannot read flow script {script}: {exc.strerror or exc}"
                ) from None
            if not self._overwrite and _exists(store, location):
                raise ConfigurationError(
                    f"{self._scheme}://{self._bucket}/{location} exists and overwrite is"
                    " False: pass overwrite=True to replace it"
                )
            store.write_path(location, content)
        if location is not None and location != self._key:
            self._target(location)
        return self


def _exists(store: Any, location: str) -> bool:
    try:
        store.read_path(location)
    except NotFoundError:
        return False
    return True


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip("/") or key.endswith("/"):
        raise ConfigurationError(f"key must name one object, got {key!r}")
    if ".." in PurePosixPath(key).parts:
        raise ConfigurationError(f"key {key!r} contains '..'")
    return key.lstrip("/")


class S3(ObjectFlowStorage):
    """Prefect 1's ``S3`` storage: one flow script in an S3 bucket.

    ``client_options`` are boto3's client options: ``endpoint_url``, ``region_name``,
    ``aws_access_key_id``, ``aws_secret_access_key`` and ``aws_session_token`` (values may
    be :class:`~runner_storage.Secret` or :class:`NamedSecret`); without keys, the
    standard AWS credential chain applies. Scripts only: ``stored_as_script`` defaults
    to True here, and False (a pickled flow) is refused.

    Example::

        storage = S3(bucket="flows", key="etl/flow.py")
        await storage.pull_code()
        storage.flow_path  # BASE/flows/etl/flow.py/flow.py

    Raises:
        ConfigurationError: a bad bucket or key, an unknown client option, a pickled flow.
    """

    _scheme = "s3"

    def __init__(
        self,
        bucket: str,
        key: str | None = None,
        stored_as_script: bool = True,
        local_script_path: str | None = None,
        client_options: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        refuse_pickles(stored_as_script)
        self.bucket, self.key, self.client_options = bucket, key, dict(client_options or {})
        self.local_script_path = local_script_path
        settings: dict[str, Any] = {}
        client_kwargs: dict[str, Any] = {}
        for option, value in self.client_options.items():
            if option in _S3_OPTIONS:
                settings[_S3_OPTIONS[option]] = value
            elif option in ("region_name", "verify", "config"):
                client_kwargs[option] = value
            else:
                raise ConfigurationError(
                    f"client_options has {option!r}, which S3 does not take: use endpoint_url,"
                    " region_name, verify, aws_access_key_id, aws_secret_access_key or"
                    " aws_session_token"
                )
        if client_kwargs:
            settings["client_kwargs"] = client_kwargs
        super().__init__(
            bucket,
            key,
            settings,
            what="bucket",
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
        if local_script_path and key is None:
            self.add_flow(local_script_path)


class GCS(ObjectFlowStorage):
    """Prefect 1's ``GCS`` storage: one flow script in a Google Cloud Storage bucket.

    Credentials are Google's default ones (``GOOGLE_APPLICATION_CREDENTIALS``...);
    ``project`` is the billing project. ``settings`` are more gcsfs settings
    (``endpoint_url``, ``token``). Scripts only, as for :class:`S3`.

    Example::

        storage = GCS(bucket="flows", key="etl/flow.py", project="acme")

    Raises:
        ConfigurationError: a bad bucket or key, a pickled flow.
    """

    _scheme = "gs"

    def __init__(
        self,
        bucket: str,
        key: str | None = None,
        project: str | None = None,
        stored_as_script: bool = True,
        local_script_path: str | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        refuse_pickles(stored_as_script)
        self.bucket, self.key, self.project = bucket, key, project
        self.local_script_path = local_script_path
        given = dict(settings or {})
        if project:
            given["project"] = project
        super().__init__(
            bucket,
            key,
            given,
            what="bucket",
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
        if local_script_path and key is None:
            self.add_flow(local_script_path)


class Azure(ObjectFlowStorage):
    """Prefect 1's ``Azure`` storage: one flow script in an Azure Blob container.

    The connection string is the secret ``connection_string_secret``, by default
    ``AZURE_STORAGE_CONNECTION_STRING``, read at every pull. ``settings`` are more adlfs
    settings. Scripts only, as for :class:`S3`.

    Example::

        storage = Azure(container="flows", blob_name="etl/flow.py")

    Raises:
        ConfigurationError: a bad container or blob name, a pickled flow.
    """

    _scheme = "az"

    def __init__(
        self,
        container: str,
        connection_string_secret: str | None = None,
        blob_name: str | None = None,
        stored_as_script: bool = True,
        overwrite: bool = False,
        *,
        settings: Mapping[str, Any] | None = None,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        refuse_pickles(stored_as_script)
        self.container, self.blob_name, self.overwrite = container, blob_name, overwrite
        self._overwrite = overwrite
        self.connection_string_secret = connection_string_secret
        secret = NamedSecret(connection_string_secret or "AZURE_STORAGE_CONNECTION_STRING")
        super().__init__(
            container,
            blob_name,
            {"connection_string": secret, **(settings or {})},
            what="container",
            name=name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )
