"""Prefect 2.0's cloud storage blocks, on s3fs, gcsfs and adlfs instead of the cloud SDKs.

Each writes one object per call, named ``uuid4().hex`` at the top of its bucket or
container, in one request (atomic there). A block whose package is missing is refused
when it is made, naming the extra to install (``pip install 'runner-storage[s3]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner_storage.blocks.storage import FsspecStorageBlock
from runner_storage.blocks.storage_block import check_name, check_secret, json_or_none
from runner_storage.exceptions import ConfigurationError
from runner_storage.fs.protocols import check_protocol
from runner_storage.secrets import SecretValue, resolve_secret, resolve_settings

__all__ = ["AzureBlobStorageBlock", "GoogleCloudStorageBlock", "S3StorageBlock"]

#: Fields of a Google credentials file that are secrets on their own.
_GOOGLE_SECRET_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token")


def _without_none(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in settings.items() if value is not None}


class S3StorageBlock(FsspecStorageBlock):
    """Store data in an AWS S3 bucket (or any S3 API), through s3fs.

    Example::

        block = S3StorageBlock(
            "acme-results",
            aws_access_key_id=Secret.from_env("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=Secret.from_file("/run/secrets/aws-secret"),
        )
        key = await block.write(b"data")  # uuid4().hex, at the top of the bucket

    Without credentials, botocore's own chain applies (environment, ``~/.aws``, instance
    roles), as with Prefect's boto3 session.

    Args:
        bucket: the bucket's name.
        aws_access_key_id: the access key id (text or a Secret).
        aws_secret_access_key: the secret key (text, ``SecretStr`` or a Secret).
        aws_session_token: a session token for temporary credentials.
        profile_name: a profile of the AWS config and credentials files.
        region_name: the bucket's region.
        endpoint_url: another S3 API (MinIO, Ceph, moto...).

    Raises:
        MissingDependencyError: s3fs is not installed.
        ConfigurationError: no bucket name, or a secret of the wrong type.
    """

    _fields = (
        "bucket",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "profile_name",
        "region_name",
        "endpoint_url",
    )
    _secret_fields = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})

    def __init__(
        self,
        bucket: str,
        *,
        aws_access_key_id: SecretValue | None = None,
        aws_secret_access_key: SecretValue | None = None,
        aws_session_token: SecretValue | None = None,
        profile_name: str | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        name = type(self).__name__
        self.bucket = check_name(bucket, "bucket", name)
        check_secret(aws_access_key_id, "aws_access_key_id", name)
        check_secret(aws_secret_access_key, "aws_secret_access_key", name)
        check_secret(aws_session_token, "aws_session_token", name)
        self.aws_access_key_id = aws_access_key_id
        self.aws_secret_access_key = aws_secret_access_key
        self.aws_session_token = aws_session_token
        self.profile_name = profile_name
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        root = f"s3://{bucket}/"
        super().__init__(protocol=check_protocol(root, user=name), root=root, key_type="uuid")

    def _settings(self) -> dict[str, Any]:
        region = {"region_name": self.region_name} if self.region_name else None
        return _without_none(
            {
                "key": self.aws_access_key_id,
                "secret": self.aws_secret_access_key,
                "token": self.aws_session_token,
                "profile": self.profile_name,
                "endpoint_url": self.endpoint_url,
                "client_kwargs": region,
            }
        )


class GoogleCloudStorageBlock(FsspecStorageBlock):
    """Store data in a Google Cloud Storage bucket, through gcsfs.

    Example::

        block = GoogleCloudStorageBlock(
            "acme-results", service_account_info=Secret.from_file("/run/secrets/sa.json")
        )

    Without ``service_account_info``, gcsfs's own chain applies (application default
    credentials, the metadata server, then anonymous access).

    Args:
        bucket: the bucket's name.
        project: the project; by default the service account's ``project_id``.
        service_account_info: a service-account key: a mapping (its values may be
            Secrets), or the key file's JSON as text or a Secret
            (``Secret.from_file(path)`` re-reads the file at every call).
        endpoint_url: another GCS API (an emulator, a proxy).

    Raises:
        MissingDependencyError: gcsfs is not installed.
        ConfigurationError: no bucket name, or ``service_account_info`` of the wrong type.
    """

    _fields = ("bucket", "project", "service_account_info", "endpoint_url")
    _secret_fields = frozenset({"service_account_info"})

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        service_account_info: Mapping[str, Any] | SecretValue | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        name = type(self).__name__
        self.bucket = check_name(bucket, "bucket", name)
        if not isinstance(service_account_info, Mapping):
            check_secret(service_account_info, "service_account_info", name)
        self.project = project
        self.service_account_info = service_account_info
        self.endpoint_url = endpoint_url
        root = f"gs://{bucket}/"
        super().__init__(protocol=check_protocol(root, user=name), root=root, key_type="uuid")

    def _resolved_settings(self, found: list[str]) -> dict[str, Any]:
        info = self._service_account(found)
        project = self.project or (info or {}).get("project_id")
        return _without_none({"project": project, "token": info, "endpoint_url": self.endpoint_url})

    def _service_account(self, found: list[str]) -> dict[str, Any] | None:
        value = self.service_account_info
        if value is None:
            return None
        if isinstance(value, Mapping):
            resolved: dict[str, Any] = resolve_settings(dict(value), found=found)
            return resolved
        text = resolve_secret(value)  # the key file's JSON
        found.append(text)
        info = json_or_none(text)
        if not isinstance(info, dict):
            raise ConfigurationError(
                f"{type(self).__name__} service_account_info is not the JSON object of a"
                " service-account key: give the key file's content, or a mapping"
            ) from None
        return info

    def _extra_secrets(self, settings: Mapping[str, Any]) -> list[str]:
        info = settings.get("token")
        if not isinstance(info, Mapping):
            return []
        return [str(info[field]) for field in _GOOGLE_SECRET_FIELDS if info.get(field)]


class AzureBlobStorageBlock(FsspecStorageBlock):
    """Store data in an Azure Blob Storage container, through adlfs.

    Example::

        block = AzureBlobStorageBlock(
            "results", Secret.from_env("AZURE_STORAGE_CONNECTION_STRING")
        )

    Args:
        container: the container's name.
        connection_string: the storage account's connection string (text, ``SecretStr``
            or a Secret); its account key and signature are redacted everywhere.

    Raises:
        MissingDependencyError: adlfs is not installed.
        ConfigurationError: no container name, or a connection string of the wrong type.
    """

    _fields = ("container", "connection_string")
    _secret_fields = frozenset({"connection_string"})

    def __init__(self, container: str, connection_string: SecretValue) -> None:
        name = type(self).__name__
        self.container = check_name(container, "container", name)
        if connection_string is None:
            raise ConfigurationError(
                f"{name} needs a connection_string, such as"
                " Secret.from_env('AZURE_STORAGE_CONNECTION_STRING')"
            )
        check_secret(connection_string, "connection_string", name)
        self.connection_string = connection_string
        root = f"az://{container}/"
        super().__init__(protocol=check_protocol(root, user=name), root=root, key_type="uuid")

    def _settings(self) -> dict[str, Any]:
        return {"connection_string": self.connection_string}
