"""RemoteStorage's pooled filesystems, seen from the server's side.

Pulls whose resolved settings are equal share one s3fs client (``runner_storage.fs.pool``
pools them), so a pull after the first sends its requests over connections that are
already open. A rotated secret resolves to other settings, hence a new client; a pull that
fails drops its client, and so does a client left idle too long, so the next pull starts
afresh.

Every S3 request here goes through a proxy in front of moto that counts the connections
clients open: a reused client opens none, a new client opens its own. The tests that
expect reuse sit beside controls showing that the count does move for a new client.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiobotocore.session
import anyio
import pytest
from daemon_process import wait_for
from servers.fault_proxy import FaultProxy
from servers.s3 import S3Server

from runner_storage.exceptions import AuthenticationError, TransientSourceError
from runner_storage.fs import pool
from runner_storage.remote import RemoteStorage
from runner_storage.secrets import Secret
from runner_storage.types import SyncResult

#: botocore retries a 5xx itself; one attempt makes a failed pull fail at once.
ONE_ATTEMPT = {"retries": {"total_max_attempts": 1}}


class CountingProxy(FaultProxy):
    """The fault proxy in front of moto, also counting the client connections it accepted."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.handlers: list[threading.Thread] = []

    def track(self, thread: threading.Thread, connection: Any) -> None:
        """Count the connection (one handler thread each), then track it as usual."""
        self.handlers.append(thread)
        super().track(thread, connection)

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        return len(self.handlers)

    def open_connections(self) -> int:
        """Client connections not closed yet (their handler thread still runs)."""
        return sum(thread.is_alive() for thread in self.handlers)

    def listings(self) -> int:
        """ListObjectsV2 requests forwarded so far."""
        return sum("list-type=2" in r.path for r in self.requests("GET") if not r.fault)


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[CountingProxy]:
    """A connection-counting proxy in front of the session's moto server."""
    started = CountingProxy(s3_server.port)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh bucket."""
    return s3_server.new_bucket("pool")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    path = tmp_path / "base"
    path.mkdir()
    return path


def storage_at(
    url: str, base: Path, proxy: CountingProxy, s3_server: S3Server, **settings: Any
) -> RemoteStorage:
    """A RemoteStorage of ``url`` reaching moto through ``proxy``, publishing under ``base``.

    The credentials are the server's current ones unless ``settings`` give others.
    """
    options: dict[str, Any] = {
        "key": s3_server.key,
        "secret": s3_server.secret,
        "endpoint_url": proxy.url,
        **settings,
    }
    storage = RemoteStorage(url, pull_interval=None, **options)
    storage.set_base_path(base)
    return storage


def pull(storage: RemoteStorage) -> SyncResult:
    """Run one pull."""
    return anyio.run(storage.pull_code)


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (symlink followed), by relative POSIX path."""
    real = root.resolve()
    return {
        path.relative_to(real).as_posix(): path.read_bytes()
        for path in sorted(real.rglob("*"))
        if path.is_file()
    }


def access_key_owner(s3_server: S3Server, key: str) -> str:
    """The IAM user that owns access key ``key``."""
    answer: dict[str, Any] = s3_server.client("iam").get_access_key_last_used(AccessKeyId=key)
    return str(answer["UserName"])


def rotate_access_key(s3_server: S3Server, key: str) -> tuple[str, str]:
    """Give the owner of ``key`` a new access key, revoke ``key``; return the new pair."""
    iam = s3_server.client("iam")
    user = access_key_owner(s3_server, key)
    new = iam.create_access_key(UserName=user)["AccessKey"]
    iam.delete_access_key(UserName=user, AccessKeyId=key)
    return new["AccessKeyId"], new["SecretAccessKey"]


class TestReuse:
    """Pulls with equal resolved settings share one client and its connections."""

    def test_repeated_pulls_of_one_source_open_no_new_connection(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path
    ) -> None:
        """After the first pull, pulls (a change, then a no-op) reuse its open connections.

        Each pull still lists the bucket: a reused client never serves a cached listing.
        """
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        s3_server.put(bucket, "flows/b.py", "B = 1\n")
        storage = storage_at(f"s3://{bucket}/flows", base, proxy, s3_server)
        assert pull(storage).changed
        opened = proxy.connections
        assert opened >= 1

        s3_server.put(bucket, "flows/a.py", "A = 2\n")
        assert pull(storage).changed
        assert not pull(storage).changed

        assert proxy.connections == opened
        assert proxy.open_connections() >= 1
        assert proxy.listings() == 3
        assert tree(storage.destination) == {"a.py": b"A = 2\n", "b.py": b"B = 1\n"}

    def test_two_sources_with_equal_settings_share_one_client(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path
    ) -> None:
        """A second source with the same settings pulls over the first one's connections."""
        s3_server.put(bucket, "one/a.py", "A = 1\n")
        s3_server.put(bucket, "one/b.py", "B = 1\n")
        s3_server.put(bucket, "two/c.py", "C = 1\n")
        first = storage_at(f"s3://{bucket}/one", base, proxy, s3_server)
        second = storage_at(f"s3://{bucket}/two", base, proxy, s3_server)
        pull(first)
        opened = proxy.connections

        assert pull(second).changed

        assert proxy.connections == opened
        assert tree(second.destination) == {"c.py": b"C = 1\n"}

    def test_other_settings_get_a_client_of_their_own(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path
    ) -> None:
        """Control: a source whose settings differ opens connections of its own."""
        s3_server.put(bucket, "one/a.py", "A = 1\n")
        s3_server.put(bucket, "two/c.py", "C = 1\n")
        pull(storage_at(f"s3://{bucket}/one", base, proxy, s3_server))
        opened = proxy.connections

        other = storage_at(
            f"s3://{bucket}/two", base, proxy, s3_server, config_kwargs={"connect_timeout": 7}
        )
        assert pull(other).changed

        assert proxy.connections > opened

    def test_settings_without_a_fingerprint_get_a_client_per_pull(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path
    ) -> None:
        """A setting that is an object (here a botocore session) is never pooled.

        Each pull builds its own client and closes its connections when it ends.
        """
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        storage = storage_at(
            f"s3://{bucket}/flows", base, proxy, s3_server, session=aiobotocore.session.AioSession()
        )
        pull(storage)
        wait_for(lambda: proxy.open_connections() == 0, timeout=10, what="connections closed")
        opened = proxy.connections

        assert not pull(storage).changed

        assert proxy.connections > opened
        wait_for(lambda: proxy.open_connections() == 0, timeout=10, what="connections closed")


class TestRotation:
    """A secret read from a file is resolved at every pull; a new value means a new client."""

    def test_rotated_secret_file_takes_effect_on_the_next_pull(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path, tmp_path: Path
    ) -> None:
        """After the key is rotated and the old one revoked, the next pull uses the new key.

        A client kept from before would sign with the revoked key and be refused: the pull
        succeeds, over a new connection, and the revoked key is indeed refused.
        """
        key_file, secret_file = tmp_path / "key", tmp_path / "secret"
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        with s3_server.enable_auth() as (key, secret):
            key_file.write_text(key + "\n")
            secret_file.write_text(secret + "\n")
            storage = storage_at(
                f"s3://{bucket}/flows",
                base,
                proxy,
                s3_server,
                key=Secret.from_file(key_file),
                secret=Secret.from_file(secret_file),
            )
            assert pull(storage).changed
            opened = proxy.connections
            s3_server.put(bucket, "flows/a.py", "A = 2\n")

            new_key, new_secret = rotate_access_key(s3_server, key)
            key_file.write_text(new_key + "\n")
            secret_file.write_text(new_secret + "\n")
            assert pull(storage).changed
            assert proxy.connections > opened

            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            revoked = storage_at(
                f"s3://{bucket}/flows", elsewhere, proxy, s3_server, key=key, secret=secret
            )
            with pytest.raises(AuthenticationError):
                pull(revoked)

        assert tree(storage.destination) == {"a.py": b"A = 2\n"}

    def test_wrong_secret_in_the_file_fails_and_the_right_one_recovers(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path, tmp_path: Path
    ) -> None:
        """A wrong secret written to the file fails the next pull; the right one heals it.

        The published tree stays as it was while the secret is wrong.
        """
        secret_file = tmp_path / "secret"
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        with s3_server.enable_auth() as (_, secret):
            secret_file.write_text(secret)
            storage = storage_at(
                f"s3://{bucket}/flows", base, proxy, s3_server, secret=Secret.from_file(secret_file)
            )
            pull(storage)
            s3_server.put(bucket, "flows/a.py", "A = 2\n")

            secret_file.write_text("not-" + secret)
            with pytest.raises(AuthenticationError) as caught:
                pull(storage)
            assert "not-" + secret not in str(caught.value)
            assert tree(storage.destination) == {"a.py": b"A = 1\n"}

            secret_file.write_text(secret)
            assert pull(storage).changed

        assert tree(storage.destination) == {"a.py": b"A = 2\n"}


class TestFailedPulls:
    """A pull that fails drops its client: the next pull of those settings starts afresh."""

    def test_server_error_drops_the_client(
        self, s3_server: S3Server, proxy: CountingProxy, bucket: str, base: Path
    ) -> None:
        """After a 500 the failed client's connections close and the next pull opens new ones.

        Control: before the failure a no-op pull opened no connection.
        """
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        storage = storage_at(
            f"s3://{bucket}/flows", base, proxy, s3_server, config_kwargs=ONE_ATTEMPT
        )
        pull(storage)
        opened = proxy.connections
        assert not pull(storage).changed
        assert proxy.connections == opened

        proxy.fail_next(1, status=500)
        with pytest.raises(TransientSourceError):
            pull(storage)
        wait_for(lambda: proxy.open_connections() == 0, timeout=10, what="connections closed")

        s3_server.put(bucket, "flows/a.py", "A = 2\n")
        assert pull(storage).changed
        assert proxy.connections > opened
        assert tree(storage.destination) == {"a.py": b"A = 2\n"}

    def test_refused_ambient_credentials_cost_one_failed_pull(
        self,
        s3_server: S3Server,
        proxy: CountingProxy,
        bucket: str,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Credentials from the AWS credentials file, rotated: one pull fails, the next works.

        The settings do not change, so the pooled client, which read the file when it was
        built, is reused and refused once; that failure drops it, and the next client reads
        the rotated file.
        """
        credentials = base.parent / "aws-credentials"
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        with s3_server.enable_auth() as (key, secret):
            credentials.write_text(
                f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
            )
            storage = RemoteStorage(
                f"s3://{bucket}/flows", pull_interval=None, endpoint_url=proxy.url
            )
            storage.set_base_path(base)
            pull(storage)
            s3_server.put(bucket, "flows/a.py", "A = 2\n")
            new_key, new_secret = rotate_access_key(s3_server, key)
            credentials.write_text(
                f"[default]\naws_access_key_id = {new_key}\naws_secret_access_key = {new_secret}\n"
            )

            with pytest.raises(AuthenticationError):
                pull(storage)
            assert tree(storage.destination) == {"a.py": b"A = 1\n"}
            assert pull(storage).changed

        assert tree(storage.destination) == {"a.py": b"A = 2\n"}


class TestExpiry:
    """A client left unused for longer than ``POOL_IDLE_SECONDS`` is closed, not reused."""

    def test_idle_client_is_replaced(
        self,
        s3_server: S3Server,
        proxy: CountingProxy,
        bucket: str,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A pull after the idle limit opens new connections; the idle client's are closed.

        Control: a pull right after the first one opened no connection.
        """
        monkeypatch.setattr(pool, "POOL_IDLE_SECONDS", 0.5)
        s3_server.put(bucket, "flows/a.py", "A = 1\n")
        storage = storage_at(f"s3://{bucket}/flows", base, proxy, s3_server)
        pull(storage)
        opened = proxy.connections
        assert not pull(storage).changed
        assert proxy.connections == opened

        time.sleep(1.0)
        assert not pull(storage).changed

        assert proxy.connections > opened
        idle = proxy.handlers[:opened]
        wait_for(lambda: not any(t.is_alive() for t in idle), timeout=10, what="idle client closed")
