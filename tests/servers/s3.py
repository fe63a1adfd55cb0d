"""S3: moto's standalone server (``moto_server``) as a subprocess.

One server runs per session; tests stay apart by using fresh buckets from
:meth:`S3Server.new_bucket`. moto accepts any credentials until :meth:`S3Server.enable_auth`
switches its IAM checks on for a block.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from servers.procs import (
    LOOPBACK,
    AccessLog,
    LoggedRequest,
    ManagedProcess,
    http_status,
    start_process,
)

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
DEFAULT_KEY = "testing"
DEFAULT_SECRET = "testing"  # moto accepts anything until auth is enabled
_buckets = itertools.count(1)


class S3Server:
    """A running ``moto_server`` on 127.0.0.1.

    Attributes: ``endpoint_url``, ``port``, ``key``, ``secret`` (the credentials the
    helpers use; any value works unless auth is enabled), ``process`` (its ``output()`` is
    moto's log). Request counting reads moto's access log: see :meth:`requests`.
    """

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.port = process.port
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.key = DEFAULT_KEY
        self.secret = DEFAULT_SECRET
        self._log = AccessLog(process, ignore_prefixes=("/moto-api/",))
        self._clients: dict[tuple[str, str, str], Any] = {}

    def stop(self) -> None:
        """Stop moto; assert nothing of it is left and the port is closed."""
        self.process.stop()

    # --- settings for the code under test --------------------------------------------------

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs settings: ``{"key", "secret", "endpoint_url"}`` (no region on purpose)."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url}

    def client(self, service: str = "s3", key: str | None = None, secret: str | None = None) -> Any:
        """A botocore client for ``service`` at this endpoint (cached per credentials)."""
        creds = (service, key or self.key, secret or self.secret)
        if creds not in self._clients:
            self._clients[creds] = botocore.session.get_session().create_client(
                service,
                endpoint_url=self.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id=creds[1],
                aws_secret_access_key=creds[2],
            )
        return self._clients[creds]

    # --- data helpers ----------------------------------------------------------------------

    def new_bucket(self, prefix: str = "b") -> str:
        """Create a bucket with a fresh name starting with ``prefix``; return the name."""
        name = f"{prefix.lower()}-{next(_buckets)}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> str:
        """Upload one object; return its ETag (quoted MD5, as S3 reports it)."""
        body = data.encode() if isinstance(data, str) else data
        etag: str = self.client().put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
        return etag

    def get(self, bucket: str, key: str) -> bytes:
        """Download one object's content."""
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object."""
        self.client().delete_object(Bucket=bucket, Key=key)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All keys in ``bucket`` under ``prefix``, sorted."""
        keys: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_bucket(self, bucket: str) -> None:
        """Delete ``bucket`` and everything in it."""
        for key in self.list_keys(bucket):
            self.delete(bucket, key)
        self.client().delete_bucket(Bucket=bucket)

    # --- request counting ------------------------------------------------------------------

    def reset_requests(self) -> None:
        """Start counting requests from now (helpers' own requests count too)."""
        self._log.reset()

    def requests(self) -> list[LoggedRequest]:
        """S3 requests moto answered since :meth:`reset_requests` (``/moto-api/`` excluded)."""
        return self._log.requests()

    def request_count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """Count :meth:`requests` by method and/or path prefix (e.g. ``"/BUCKET/"``)."""
        return self._log.count(method, path_prefix)

    # --- authentication --------------------------------------------------------------------

    def _set_auth_count(self, value: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=value.encode(),
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, str] = json.load(response)
        return answer["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    @contextlib.contextmanager
    def enable_auth(self) -> Iterator[tuple[str, str]]:
        """Context manager: moto checks credentials inside the block.

        Creates an IAM user allowed everything and yields its ``(key, secret)``; inside the
        block ``self.key``/``self.secret`` (hence :meth:`storage_options` and the helpers)
        use them, and any other secret is rejected (s3fs raises ``PermissionError``).
        Afterwards moto accepts anything again.
        """
        iam = self.client("iam")
        user = f"tester-{secrets.token_hex(4)}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        access = iam.create_access_key(UserName=user)["AccessKey"]
        key, secret = access["AccessKeyId"], access["SecretAccessKey"]
        previous = self._set_auth_count("0")
        self.key, self.secret = key, secret
        try:
            yield key, secret
        finally:
            self.key, self.secret = DEFAULT_KEY, DEFAULT_SECRET
            self._set_auth_count(previous)


def start_s3_server(workdir: Path, *, port: int | None = None) -> S3Server:
    """Start ``moto_server`` on a free loopback port, or ``port`` (cwd and log in ``workdir``)."""
    process = start_process(
        "moto",
        lambda port: [MOTO_SERVER, "-H", LOOPBACK, "-p", str(port)],
        ready=lambda port: http_status("/moto-api/data.json", port) == 200,
        log_dir=workdir,
        cwd=workdir,
        port=port,
    )
    return S3Server(process)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Session-wide moto S3 server; use ``new_bucket()`` per test."""
    server = start_s3_server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
