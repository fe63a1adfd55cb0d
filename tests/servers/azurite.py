"""Azure Blob: Azurite's blob service from the project's ``node_modules`` (``npm ci``).

The node binary runs Azurite's script directly (no shell, no npm wrapper), so signalling
its process group stops it. Data lives in memory; tests stay apart by using fresh
containers from :meth:`AzuriteServer.new_container`.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from servers.procs import LOOPBACK, ManagedProcess, http_status, start_process

PROJECT_DIR = Path(__file__).resolve().parents[2]
AZURITE_BLOB = PROJECT_DIR / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""Azurite's well-known development account key (public, not a secret)."""

_containers = itertools.count(1)


def connection_string(endpoint: str, account_key: str = ACCOUNT_KEY) -> str:
    """Connection string for the dev account at a blob ``endpoint`` (``…/devstoreaccount1``)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
        f"AccountKey={account_key};BlobEndpoint={endpoint};"
    )


class AzuriteServer:
    """A running Azurite blob service on 127.0.0.1.

    Attributes: ``port``, ``blob_endpoint`` (``http://127.0.0.1:P/devstoreaccount1``),
    ``account_name``, ``account_key``, ``connection_string``, ``process``.
    """

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.port = process.port
        self.account_name = ACCOUNT_NAME
        self.account_key = ACCOUNT_KEY
        self.blob_endpoint = f"http://{LOOPBACK}:{self.port}/{ACCOUNT_NAME}"
        self.connection_string = connection_string(self.blob_endpoint)
        self._service: BlobServiceClient | None = None

    def stop(self) -> None:
        """Stop Azurite; assert nothing of it is left and the port is closed."""
        if self._service is not None:
            self._service.close()
        self.process.stop()

    def storage_options(self) -> dict[str, Any]:
        """fsspec/adlfs settings: ``{"connection_string": ...}``."""
        return {"connection_string": self.connection_string}

    def wrong_connection_string(self) -> str:
        """A connection string with a wrong account key (Azurite answers 403)."""
        wrong = "A" * (len(ACCOUNT_KEY) - 2) + "=="
        return connection_string(self.blob_endpoint, wrong)

    @property
    def service(self) -> BlobServiceClient:
        """An azure-storage-blob service client for the dev account."""
        if self._service is None:
            self._service = BlobServiceClient.from_connection_string(self.connection_string)
        return self._service

    def new_container(self, prefix: str = "c") -> str:
        """Create a container with a fresh name starting with ``prefix``; return the name."""
        name = f"{prefix.lower()}-{next(_containers)}-{secrets.token_hex(4)}"
        self.service.create_container(name)
        return name

    def put(self, container: str, name: str, data: bytes | str) -> str:
        """Upload (overwrite) one blob; return its ETag."""
        body = data.encode() if isinstance(data, str) else data
        result = self.service.get_blob_client(container, name).upload_blob(body, overwrite=True)
        etag: str = result["etag"]
        return etag

    def delete(self, container: str, name: str) -> None:
        """Delete one blob."""
        self.service.get_blob_client(container, name).delete_blob()

    def list_names(self, container: str, prefix: str = "") -> list[str]:
        """All blob names in ``container`` under ``prefix``, sorted."""
        client = self.service.get_container_client(container)
        return sorted(b.name for b in client.list_blobs(name_starts_with=prefix or None))

    def delete_container(self, container: str) -> None:
        """Delete ``container`` and everything in it."""
        self.service.delete_container(container)


def azurite_command() -> list[str]:
    """``[node, <azurite blob script>]``, or fail the test saying how to install Azurite."""
    node = shutil.which("node")
    if not AZURITE_BLOB.exists() or node is None:
        pytest.fail(
            f"Azurite is not installed ({AZURITE_BLOB} or node missing): run `npm ci` in "
            f"{PROJECT_DIR} (`make test` does it)",
            pytrace=False,
        )
    return [node, os.path.realpath(AZURITE_BLOB)]


def start_azurite(workdir: Path) -> AzuriteServer:
    """Start Azurite's blob service in memory on a free loopback port (cwd: ``workdir``)."""
    command = azurite_command()
    process = start_process(
        "azurite",
        lambda port: [
            *command,
            "--blobHost",
            LOOPBACK,
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ],
        ready=lambda port: http_status(f"/{ACCOUNT_NAME}?comp=list", port) != 0,
        log_dir=workdir,
        cwd=workdir,
    )
    return AzuriteServer(process)


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Session-wide Azurite blob service; use ``new_container()`` per test."""
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()
