"""GCS: gcp-storage-emulator as a subprocess, with the settings gcsfs needs.

Two settings are mandatory, or tests take minutes: ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
in the environment before gcsfs is imported (otherwise gcsfs tries a gRPC-over-TLS bucket-type
lookup that stalls about a minute per call; ``tests/conftest.py`` sets it), and a larger listen
backlog, set by :data:`LAUNCHER` before the emulator's ``main`` runs (its backlog of 5 drops
gcsfs's concurrent connections). The emulator checks no credentials.
"""

from __future__ import annotations

import itertools
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from servers.procs import (
    LOOPBACK,
    AccessLog,
    LoggedRequest,
    ManagedProcess,
    http_status,
    start_process,
)

PROJECT = "test"
LAUNCHER = (
    "import sys, http.server\n"
    "http.server.HTTPServer.request_queue_size = 1024\n"
    "from gcp_storage_emulator.__main__ import main\n"
    "main(sys.argv[1:])\n"
)
"""``python -c`` program: raise the listen backlog (5 drops gcsfs's connections), then run
the emulator's command line."""

_buckets = itertools.count(1)


class GCSServer:
    """A running gcp-storage-emulator (in-memory) on 127.0.0.1.

    Attributes: ``endpoint_url``, ``port``, ``project`` ("test"), ``process``. Helpers use
    the emulator's JSON API directly.
    """

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.port = process.port
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.project = PROJECT
        self._http = requests.Session()
        self._log = AccessLog(process)

    def stop(self) -> None:
        """Stop the emulator; assert nothing of it is left and the port is closed."""
        self._http.close()
        self.process.stop()

    def storage_options(self) -> dict[str, Any]:
        """fsspec/gcsfs settings: ``{"endpoint_url", "token": "anon", "project"}``."""
        return {"endpoint_url": self.endpoint_url, "token": "anon", "project": self.project}

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._http.request(method, self.endpoint_url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def new_bucket(self, prefix: str = "b") -> str:
        """Create a bucket with a fresh name starting with ``prefix``; return the name."""
        name = f"{prefix.lower()}-{next(_buckets)}-{secrets.token_hex(4)}"
        self._call("POST", f"/storage/v1/b?project={self.project}", json={"name": name})
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> dict[str, Any]:
        """Upload one object; return its metadata (``md5Hash``, ``generation``, ...)."""
        body = data.encode() if isinstance(data, str) else data
        response = self._call(
            "POST",
            f"/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": key},
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        meta: dict[str, Any] = response.json()
        return meta

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object."""
        self._call("DELETE", f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}")

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All object names in ``bucket`` under ``prefix``, sorted."""
        items = self._call("GET", f"/storage/v1/b/{bucket}/o", params={"prefix": prefix}).json()
        return sorted(item["name"] for item in items.get("items", []))

    def delete_bucket(self, bucket: str) -> None:
        """Delete ``bucket`` and everything in it."""
        for key in self.list_keys(bucket):
            self.delete(bucket, key)
        self._call("DELETE", f"/storage/v1/b/{bucket}")

    def reset_requests(self) -> None:
        """Start counting requests from now (helpers' own requests count too)."""
        self._log.reset()

    def requests(self) -> list[LoggedRequest]:
        """Requests the emulator answered since :meth:`reset_requests`."""
        return self._log.requests()

    def request_count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Count :meth:`requests` by method and/or path prefix."""
        return self._log.count(method, path_prefix)


def start_gcs_server(workdir: Path) -> GCSServer:
    """Start the emulator (in memory) on a free loopback port (cwd and log in ``workdir``)."""
    process = start_process(
        "gcs-emulator",
        lambda port: [
            sys.executable,
            "-c",
            LAUNCHER,
            "start",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--in-memory",
        ],
        ready=lambda port: http_status(f"/storage/v1/b?project={PROJECT}", port) == 200,
        log_dir=workdir,
        cwd=workdir,
    )
    return GCSServer(process)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """Session-wide GCS emulator; use ``new_bucket()`` per test."""
    server = start_gcs_server(tmp_path_factory.mktemp("gcs"))
    yield server
    server.stop()
