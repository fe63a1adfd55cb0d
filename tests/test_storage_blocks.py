"""Prefect 2.0's storage blocks on the fsspec stack, against real servers.

Round trips on local disk, the memory filesystem, moto (S3), the GCS emulator and Azurite;
keys (hash written once, uuid, timestamp); writes a concurrent reader never sees half
done; missing keys and keys that would escape; wrong credentials, one line and nothing
leaked; missing extras refused when a block is made; secrets read at every call. The KV
block's protocol is in ``test_storage_blocks_kv.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

import fsspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from http_peers import QuietHandler, serving
from pydantic import SecretStr
from servers.azurite import AzuriteServer
from servers.gcs import GCSServer
from servers.s3 import S3Server

from runner_storage.blocks.storage import (
    AzureBlobStorageBlock,
    FileStorageBlock,
    GoogleCloudStorageBlock,
    LocalStorageBlock,
    S3StorageBlock,
    StorageBlock,
    TempStorageBlock,
)
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    MissingDependencyError,
    NotFoundError,
    exception_chain,
)
from runner_storage.secrets import Secret

pytestmark = pytest.mark.anyio

#: Text, every byte value, and nothing at all.
DATA = [b"print('hello')\n", bytes(range(256)) * 8, b""]
TIMESTAMP = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
#: What a token request signed with a service-account key asks for (RFC 7523).
JWT_GRANT = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"


def one_line(error: BaseException) -> str:
    """The message of ``error``, which must be a single line."""
    text = str(error)
    assert text
    assert "\n" not in text, text
    return text


def leaked(secret: str, error: BaseException, block: StorageBlock) -> list[str]:
    """Where ``secret`` shows: the error's chain (text, repr, traceback) or the block's repr."""
    chain = list(exception_chain(error))
    texts = [*map(str, chain), *map(repr, chain), repr(block)]
    texts.append("".join(traceback.format_exception(error)))
    return [text for text in texts if secret in text]


class TokenEndpoint(QuietHandler):
    """Google's OAuth token endpoint: a token for every signed request, each body recorded."""

    def __init__(self, grants: list[bytes], *args: Any) -> None:
        self.grants = grants
        super().__init__(*args)

    def do_POST(self) -> None:
        """Record the request body; answer a bearer token valid for an hour."""
        self.grants.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        body = json.dumps({"access_token": "ya29.test", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def s3_block(s3_server: S3Server) -> S3StorageBlock:
    """An S3StorageBlock on a fresh moto bucket (credentials as Secret and SecretStr)."""
    return S3StorageBlock(
        s3_server.new_bucket("blocks"),
        aws_access_key_id=Secret(s3_server.key),
        aws_secret_access_key=SecretStr(s3_server.secret),
        endpoint_url=s3_server.endpoint_url,
    )


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh folder of fsspec's memory filesystem, removed afterwards."""
    url = f"memory://blocks-{uuid.uuid4().hex[:12]}"
    yield url
    memory = fsspec.filesystem("memory")
    if memory.exists(url):
        memory.rm(url, recursive=True)


BlockFactory = Callable[[], StorageBlock]


@pytest.fixture(params=["local", "memory", "s3", "gcs", "azure", "file-s3", "local-block"])
def any_block(
    request: pytest.FixtureRequest, tmp_path: Path, memory_url: str
) -> tuple[str, StorageBlock]:
    """``(kind, block)`` for each kind of storage the fsspec-backed blocks reach."""
    kind: str = request.param
    if kind == "local":
        return kind, FileStorageBlock(tmp_path / "blocks")
    if kind == "memory":
        return kind, FileStorageBlock(memory_url, key_type="uuid")
    if kind == "local-block":
        return kind, LocalStorageBlock(tmp_path / "store")
    if kind in ("s3", "file-s3"):
        s3: S3Server = request.getfixturevalue("s3_server")
        if kind == "file-s3":
            bucket = s3.new_bucket("file")
            return kind, FileStorageBlock(f"s3://{bucket}/blocks", options=s3.storage_options())
        return kind, request.getfixturevalue("s3_block")
    if kind == "gcs":
        gcs: GCSServer = request.getfixturevalue("gcs_server")
        block = GoogleCloudStorageBlock(
            gcs.new_bucket("blocks"), project=gcs.project, endpoint_url=gcs.endpoint_url
        )
        return kind, block
    azurite: AzuriteServer = request.getfixturevalue("azurite_server")
    return kind, AzureBlobStorageBlock(
        azurite.new_container("blocks"), Secret(azurite.connection_string)
    )


class TestRoundTrips:
    """What is written is read back byte for byte, wherever the block keeps it."""

    async def test_bytes_come_back_exactly(self, any_block: tuple[str, StorageBlock]) -> None:
        """Text, every byte value and empty data read back identical."""
        kind, block = any_block
        for data in DATA:
            if kind == "gcs" and not data:
                continue  # the emulator drops the connection on empty objects
            key = await block.write(data)
            assert await block.read(key) == data
        assert type(block).__name__ in repr(block)

    async def test_another_block_of_the_same_place_reads_it(self, s3_server: S3Server) -> None:
        """Keys are the objects' names: a new block of the same bucket reads them."""
        bucket = s3_server.new_bucket("same")
        options = s3_server.storage_options()
        key = await FileStorageBlock(f"s3://{bucket}/blocks", options=options).write(b"x")
        assert s3_server.get(bucket, f"blocks/{key}") == b"x"
        again = FileStorageBlock(f"s3://{bucket}/blocks/", options=options)
        assert await again.read(key) == b"x"

    async def test_data_must_be_bytes(self, tmp_path: Path) -> None:
        """Text is refused with a line saying to encode it; bytearray and memoryview work."""
        block = FileStorageBlock(tmp_path)
        with pytest.raises(ConfigurationError, match=r"takes bytes, not str") as caught:
            await block.write("text")  # type: ignore[arg-type]
        one_line(caught.value)
        # Typed as bytes, as Prefect's; other bytes-like objects are taken at run time.
        assert await block.read(await block.write(bytearray(b"ab"))) == b"ab"  # type: ignore[arg-type]
        assert await block.read(await block.write(memoryview(b"cd"))) == b"cd"  # type: ignore[arg-type]

    def test_storage_block_is_the_abstract_interface(self) -> None:
        """StorageBlock cannot be made; a class with write and read is one."""
        with pytest.raises(TypeError):
            StorageBlock()  # type: ignore[abstract]

        class Echo(StorageBlock):
            async def write(self, data: bytes) -> str:
                return data.decode()

            async def read(self, key: str) -> bytes:
                return key.encode()

        assert repr(Echo()) == "Echo()"


class TestKeys:
    """How FileStorageBlock names what it writes, and where the cloud blocks put it."""

    async def test_hash_key_is_the_sha256_and_is_written_once(self, s3_server: S3Server) -> None:
        """The key is the data's sha256; writing it again costs one HEAD and no PUT."""
        bucket = s3_server.new_bucket("hash")
        block = FileStorageBlock(f"s3://{bucket}/blocks", options=s3_server.storage_options())
        data = b"def flow(): ...\n"
        s3_server.reset_requests()
        key = await block.write(data)
        assert key == hashlib.sha256(data).hexdigest()
        assert s3_server.request_count("PUT") == 1
        s3_server.reset_requests()
        assert await block.write(data) == key
        assert [r.method for r in s3_server.requests()] == ["HEAD"]
        assert s3_server.list_keys(bucket) == [f"blocks/{key}"]

    async def test_hash_key_leaves_an_existing_local_file_alone(self, tmp_path: Path) -> None:
        """The second write of the same data does not replace the file."""
        block = FileStorageBlock(tmp_path)
        key = await block.write(b"same")
        before = os.stat(tmp_path / key)
        await block.write(b"same")
        after = os.stat(tmp_path / key)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    async def test_uuid_keys(self, memory_url: str) -> None:
        """Keys of type uuid are uuid4 hex strings, new at every write, even of the same data."""
        block = FileStorageBlock(memory_url, key_type="uuid")
        keys = [await block.write(b"same") for _ in range(3)]
        assert len(set(keys)) == 3
        assert all(uuid.UUID(hex=k).hex == k and uuid.UUID(hex=k).version == 4 for k in keys)

    async def test_timestamp_keys_sort_in_writing_order(self, tmp_path: Path) -> None:
        """Timestamp keys are UTC ISO 8601 without ':', distinct and sorted even when fast."""
        block = FileStorageBlock(tmp_path, key_type="timestamp")
        start = datetime.now(timezone.utc)
        keys = [await block.write(b"x") for _ in range(50)]
        assert all(TIMESTAMP.fullmatch(k) for k in keys)
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        first = datetime.strptime(keys[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc)
        assert start - timedelta(seconds=1) <= first <= start + timedelta(seconds=60)
        assert sorted(os.listdir(tmp_path)) == keys

    def test_unknown_key_type_is_refused(self, tmp_path: Path) -> None:
        """A key type other than hash, uuid and timestamp is refused when the block is made."""
        with pytest.raises(ConfigurationError, match=r"'hash', 'uuid' or 'timestamp'") as caught:
            FileStorageBlock(tmp_path, key_type="md5")  # type: ignore[arg-type]
        assert "'md5'" in one_line(caught.value)

    def test_base_path_gains_its_separator(self, tmp_path: Path) -> None:
        """A local base path gains os.sep, a URL gains '/', and one already there stays."""
        assert FileStorageBlock(tmp_path).base_path == f"{tmp_path}{os.sep}"
        assert FileStorageBlock("memory://a/b").base_path == "memory://a/b/"
        assert FileStorageBlock("memory://a/b/").base_path == "memory://a/b/"

    @pytest.mark.parametrize(
        "base_path", ["", "  ", "s3://", "s4://bucket/x", "simplecache::s3://b"]
    )
    def test_base_paths_that_name_no_folder_are_refused(self, base_path: str) -> None:
        """Empty, bucketless, unknown and chained base paths are refused in one line."""
        with pytest.raises(ConfigurationError) as caught:
            FileStorageBlock(base_path)
        assert "RemoteStorage" not in one_line(caught.value)

    async def test_cloud_blocks_write_uuid_keys_at_the_top(self, s3_block: S3StorageBlock) -> None:
        """S3StorageBlock names each object uuid4().hex, at the top of its bucket."""
        key = await s3_block.write(b"data")
        assert uuid.UUID(hex=key).version == 4
        assert s3_block.bucket in repr(s3_block)


class TestAtomicity:
    """A reader sees the old content or the new, never part of it."""

    async def test_a_concurrent_reader_never_sees_part_of_a_file(self, tmp_path: Path) -> None:
        """While a 4 MiB key is written again and again, a reader sees it whole or not at all.

        No temporary file is left beside it.
        """
        block = FileStorageBlock(tmp_path)
        data = os.urandom(4 << 20)
        target = tmp_path / hashlib.sha256(data).hexdigest()
        partial: list[int] = []
        whole = 0
        stop = threading.Event()

        def reader() -> None:
            nonlocal whole
            while not stop.is_set():
                try:
                    content = target.read_bytes()
                except FileNotFoundError:
                    continue
                if content == data:
                    whole += 1
                else:
                    partial.append(len(content))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for _ in range(15):
                target.unlink(missing_ok=True)
                await block.write(data)
        finally:
            stop.set()
            thread.join()
        assert partial == []
        assert whole > 0
        assert os.listdir(tmp_path) == [target.name]


class TestMissingKeys:
    """Reading a key that holds nothing raises NotFoundError naming it."""

    async def test_missing_key(self, any_block: tuple[str, StorageBlock]) -> None:
        """On every kind of storage, the error is one line naming the key."""
        _, block = any_block
        key = uuid.uuid4().hex
        with pytest.raises(NotFoundError) as caught:
            await block.read(key)
        assert f"'{key}'" in one_line(caught.value)

    async def test_missing_bucket(self, s3_server: S3Server) -> None:
        """A bucket that does not exist is NotFoundError too, naming the key and the bucket."""
        block = S3StorageBlock(
            f"missing-{uuid.uuid4().hex[:8]}",
            aws_access_key_id=s3_server.key,
            aws_secret_access_key=s3_server.secret,
            endpoint_url=s3_server.endpoint_url,
        )
        with pytest.raises(NotFoundError) as caught:
            await block.read("abc")
        assert "'abc'" in one_line(caught.value)
        assert block.bucket in str(caught.value)


class TestKeyEscapes:
    """A key read back never reaches outside the block's folder."""

    @pytest.mark.parametrize(
        "key", ["../secret.txt", "a/../../secret.txt", "/etc/passwd", "s3://other/x", "", "a\\b"]
    )
    async def test_file_block_refuses_keys_that_leave_it(self, tmp_path: Path, key: str) -> None:
        """``..``, absolute paths, other schemes and odd characters are refused in one line."""
        (tmp_path / "secret.txt").write_text("not yours")
        block = FileStorageBlock(tmp_path / "blocks")
        with pytest.raises(ConfigurationError, match="give a key that write"):
            await block.read(key)

    async def test_local_block_reads_only_its_own_absolute_paths(self, tmp_path: Path) -> None:
        """Its keys are absolute paths inside it; others, and a sibling with its prefix, are not."""
        block = LocalStorageBlock(tmp_path / "store")
        key = await block.write(b"mine")
        assert key == str(tmp_path / "store" / Path(key).name)
        assert await block.read(key) == b"mine"
        assert await block.read(Path(key).name) == b"mine"
        (tmp_path / "store-evil").mkdir()
        (tmp_path / "store-evil" / "x").write_text("not yours")
        for escape in (str(tmp_path / "store-evil" / "x"), f"{tmp_path}/store/../store-evil/x"):
            with pytest.raises(ConfigurationError) as caught:
                await block.read(escape)
            assert repr(escape) in one_line(caught.value)


class TestLocalFolders:
    """Where LocalStorageBlock and TempStorageBlock keep their files."""

    def test_default_folder_is_under_the_user_data_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$XDG_DATA_HOME when absolute, else ~/.local/share, holds runner-storage/storage."""
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert LocalStorageBlock().basepath() == tmp_path / "data" / "runner-storage" / "storage"
        monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        expected = tmp_path / "home" / ".local" / "share" / "runner-storage" / "storage"
        assert LocalStorageBlock().basepath() == expected
        assert repr(LocalStorageBlock()) == "LocalStorageBlock()"

    def test_storage_path_expands_the_home_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``~`` is expanded, as Prefect did; the given path is kept as given."""
        monkeypatch.setenv("HOME", str(tmp_path))
        block = LocalStorageBlock("~/flows")
        assert block.basepath() == tmp_path / "flows"
        assert block.storage_path == "~/flows"

    async def test_temp_block_writes_under_the_temp_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """TempStorageBlock keeps files in runner-storage/storage under the temp directory."""
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        block = TempStorageBlock()
        key = await block.write(b"tmp")
        assert Path(key).parent == tmp_path / "runner-storage" / "storage"
        assert await TempStorageBlock().read(key) == b"tmp"
        assert repr(block) == "TempStorageBlock()"


class TestCredentials:
    """Wrong credentials give one line, and no secret shows anywhere."""

    async def test_wrong_s3_secret(self, s3_server: S3Server) -> None:
        """With moto checking IAM credentials: AuthenticationError, the secret in no text."""
        bucket = s3_server.new_bucket("auth")
        wrong = f"wrong-{uuid.uuid4().hex}"
        with s3_server.enable_auth() as (key, _):
            block = S3StorageBlock(
                bucket,
                aws_access_key_id=key,
                aws_secret_access_key=wrong,
                endpoint_url=s3_server.endpoint_url,
            )
            with pytest.raises(AuthenticationError) as caught:
                await block.write(b"data")
        assert "denied" in one_line(caught.value)
        assert leaked(wrong, caught.value, block) == []

    async def test_wrong_azure_key(self, azurite_server: AzuriteServer) -> None:
        """Azurite with a wrong account key: AuthenticationError, the key in no text."""
        container = azurite_server.new_container("auth")
        connection_string = azurite_server.wrong_connection_string()
        block = AzureBlobStorageBlock(container, connection_string)
        with pytest.raises(AuthenticationError) as caught:
            await block.write(b"data")
        one_line(caught.value)
        account_key = connection_string.split("AccountKey=")[1].split(";")[0]
        assert leaked(account_key, caught.value, block) == []

    async def test_secret_from_env_is_read_at_every_call(
        self, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rotating the variable between two writes changes what the next write sends.

        The block never holds the resolved value.
        """
        bucket = s3_server.new_bucket("rotate")
        wrong = f"wrong-{uuid.uuid4().hex}"
        with s3_server.enable_auth() as (key, secret):
            monkeypatch.setenv("RS_TEST_BLOCK_SECRET", secret)
            block = S3StorageBlock(
                bucket,
                aws_access_key_id=key,
                aws_secret_access_key=Secret.from_env("RS_TEST_BLOCK_SECRET"),
                endpoint_url=s3_server.endpoint_url,
            )
            first = await block.write(b"one")
            monkeypatch.setenv("RS_TEST_BLOCK_SECRET", wrong)
            with pytest.raises(AuthenticationError) as caught:
                await block.write(b"two")
            monkeypatch.setenv("RS_TEST_BLOCK_SECRET", secret)
            assert await block.read(first) == b"one"
        assert leaked(wrong, caught.value, block) == []
        assert secret not in repr(vars(block))
        monkeypatch.delenv("RS_TEST_BLOCK_SECRET")
        with pytest.raises(CredentialsError, match="RS_TEST_BLOCK_SECRET"):
            await block.read(first)

    async def test_profile_and_region(
        self, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """profile_name reads the credentials of that profile; region_name is passed on."""
        credentials = tmp_path / "credentials"
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        bucket = s3_server.new_bucket("profile")
        with s3_server.enable_auth() as (key, secret):
            credentials.write_text(
                f"[deploy]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
            )
            block = S3StorageBlock(
                bucket,
                profile_name="deploy",
                region_name="eu-west-3",
                endpoint_url=s3_server.endpoint_url,
            )
            assert await block.read(await block.write(b"by profile")) == b"by profile"
            credentials.write_text(
                f"[deploy]\naws_access_key_id = {key}\naws_secret_access_key = not-it\n"
            )
            with pytest.raises(AuthenticationError):
                await S3StorageBlock(
                    bucket, profile_name="deploy", endpoint_url=s3_server.endpoint_url
                ).write(b"x")

    async def test_service_account_key_is_used_and_never_shown(self, gcs_server: GCSServer) -> None:
        """A service-account mapping signs token requests to its token_uri.

        Its values may be Secrets. A read that fails (a missing bucket) is one line with
        neither the private key nor its id in any text.
        """
        pem = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )
        key_id = uuid.uuid4().hex
        grants: list[bytes] = []
        with serving("token", partial(TokenEndpoint, grants)) as token_url:
            info = {
                "type": "service_account",
                "project_id": gcs_server.project,
                "private_key_id": key_id,
                "private_key": Secret(pem),
                "client_email": "ci@test.iam.gserviceaccount.com",
                "token_uri": f"{token_url}/token",
            }
            block = GoogleCloudStorageBlock(
                gcs_server.new_bucket("sa"),
                service_account_info=info,
                endpoint_url=gcs_server.endpoint_url,
            )
            assert await block.read(await block.write(b"signed")) == b"signed"
            missing = GoogleCloudStorageBlock(
                f"missing-{uuid.uuid4().hex[:8]}",
                service_account_info=info,
                endpoint_url=gcs_server.endpoint_url,
            )
            with pytest.raises(NotFoundError) as caught:
                await missing.read("abc")
        assert grants
        assert all(JWT_GRANT in grant for grant in grants)
        one_line(caught.value)
        for secret in (pem.splitlines()[1], key_id):
            assert leaked(secret, caught.value, missing) == []
            assert secret not in repr(block)

    def test_repr_shows_no_secret_value(self) -> None:
        """Secret fields show where a Secret is read from, or a mask; URL logins are cut."""
        values = ["s3cr3t-one", "s3cr3t-two", "s3cr3t-three", "s3cr3t-four", "s3cr3t-five"]
        blocks: list[StorageBlock] = [
            S3StorageBlock(
                "b",
                aws_access_key_id=values[0],
                aws_secret_access_key=SecretStr(values[1]),
                aws_session_token=Secret.from_env("AWS_SESSION_TOKEN"),
                endpoint_url=f"http://user:{values[2]}@127.0.0.1:9000",
            ),
            FileStorageBlock("memory://b", options={"secret": values[3], "key": values[0]}),
            GoogleCloudStorageBlock("b", service_account_info={"private_key": values[4]}),
            AzureBlobStorageBlock("c", Secret(f"AccountKey={values[1]}")),
        ]
        texts = " ".join(map(repr, blocks))
        assert not any(value in texts for value in values), texts
        assert "Secret(env='AWS_SESSION_TOKEN')" in texts
        assert "options=['key', 'secret']" in texts

    def test_secret_fields_take_text_or_secrets_only(self) -> None:
        """A number as a secret is refused when the block is made, naming the field."""
        with pytest.raises(ConfigurationError, match="aws_secret_access_key") as caught:
            S3StorageBlock("b", aws_secret_access_key=1234)
        one_line(caught.value)

    async def test_service_account_info_that_is_not_json(self, gcs_server: GCSServer) -> None:
        """A service-account Secret that holds no JSON object fails at the call, unquoted."""
        block = GoogleCloudStorageBlock(
            gcs_server.new_bucket("sa"),
            service_account_info=Secret("not-json-s3cr3t"),
            endpoint_url=gcs_server.endpoint_url,
        )
        with pytest.raises(ConfigurationError, match="service_account_info") as caught:
            await block.write(b"x")
        assert leaked("not-json-s3cr3t", caught.value, block) == []


class TestMissingExtras:
    """A block whose fsspec package is missing is refused when it is made."""

    @pytest.mark.parametrize(
        ("module", "extra", "make"),
        [
            ("s3fs", "s3", lambda: S3StorageBlock("b")),
            ("s3fs", "s3", lambda: FileStorageBlock("s3://b/blocks")),
            ("gcsfs", "gcs", lambda: GoogleCloudStorageBlock("b")),
            ("adlfs", "azure", lambda: AzureBlobStorageBlock("c", "UseDevelopmentStorage=true")),
        ],
    )
    def test_the_extra_to_install_is_named(
        self,
        monkeypatch: pytest.MonkeyPatch,
        module: str,
        extra: str,
        make: Callable[[], StorageBlock],
    ) -> None:
        """MissingDependencyError (an ImportError too), one line: pip install the extra."""
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(MissingDependencyError) as caught:
            make()
        assert f"pip install 'runner-storage[{extra}]'" in one_line(caught.value)
        assert isinstance(caught.value, ImportError)
