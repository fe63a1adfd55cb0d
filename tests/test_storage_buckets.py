"""Prefect 1's ``S3``, ``GCS`` and ``Azure`` storages against moto, the GCS emulator and Azurite.

A user describes the flow's object as Prefect 1 did (``S3(bucket, key, client_options)``,
``GCS(bucket, key, project)``, ``Azure(container, blob_name, connection_string_secret)``)
and gets that one object kept current: published under its base name, a no-op while it is
unchanged, a failure that leaves the published version alone. ``add_flow`` + ``build``
upload a script as Prefect 1 registered it, and ``to_pull_step()`` writes Prefect 3's
``pull_from_remote_storage`` with secrets as placeholders. Behaviours every bucket shares
run on all three servers (the ``store`` fixture); credentials, secrets and Azure's
``overwrite`` run where they apply. Buckets and containers are fresh per test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import requests
from remote_sources import AzureSource, GCSSource, S3Source, Source, make_source
from servers.azurite import AzuriteServer, connection_string
from servers.gcs import GCSServer
from servers.s3 import S3Server

from runner_storage.deployments.steps import pull_from_remote_storage
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    NotFoundError,
)
from runner_storage.publish.layout import METADATA_DIR
from runner_storage.secrets import Secret
from runner_storage.storage import GCS, S3, Azure, NamedSecret
from runner_storage.storage.buckets import ObjectFlowStorage
from runner_storage.types import SyncResult

pytestmark = pytest.mark.timeout(120)

STEP = "runner_storage.deployments.steps.pull_from_remote_storage"
FLOW = b"from prefect import flow\n\n@flow\ndef etl():\n    return 1\n"
FLOW_V2 = b"from prefect import flow\n\n@flow\ndef etl():\n    return 2\n"
#: Names of the secret variables these tests set; cleared around every test.
SECRET_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "RUNNER_STORAGE_SECRETS_DIR",
    "CREDENTIALS_DIRECTORY",
)


# --- the stores under test -----------------------------------------------------------------


class Store:
    """A fresh bucket (or container) on one server, and the Prefect 1 storages that read it.

    ``source`` (from ``remote_sources``) writes and deletes objects and reports the object
    reads the server answered; :meth:`get` and :meth:`keys` read the store directly.
    """

    kind = ""

    def __init__(self, source: Source) -> None:
        self.source = source

    @property
    def bucket(self) -> str:
        """The bucket or container name."""
        raise NotImplementedError

    def storage(self, key: str | None = None, **options: Any) -> ObjectFlowStorage:
        """The Prefect 1 storage of ``key`` in this bucket, reaching the server."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object ``key``."""
        self.source.put(key, data)

    def delete(self, key: str) -> None:
        """Delete the object ``key``."""
        self.source.delete(key)

    def get(self, key: str) -> bytes:
        """The content of the object ``key``, read from the server."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        """Every object name in the bucket, sorted."""
        raise NotImplementedError


class S3Store(Store):
    """A fresh bucket on moto, reached through ``client_options`` as boto3 takes them."""

    kind = "s3"
    source: S3Source

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self.source.bucket

    def client_options(self) -> dict[str, Any]:
        """boto3 client options that reach moto."""
        server: S3Server = self.source.server
        return {
            "endpoint_url": server.endpoint_url,
            "aws_access_key_id": server.key,
            "aws_secret_access_key": server.secret,
        }

    def storage(self, key: str | None = None, **options: Any) -> ObjectFlowStorage:
        """``S3(bucket, key, client_options=...)``."""
        options.setdefault("client_options", self.client_options())
        return S3(self.bucket, key=key, **options)

    def get(self, key: str) -> bytes:
        """The object's content."""
        return self.source.server.get(self.bucket, key)

    def keys(self) -> list[str]:
        """Every key in the bucket."""
        return self.source.server.list_keys(self.bucket)


class GCSStore(Store):
    """A fresh bucket on the GCS emulator, reached through ``settings=`` and ``project``."""

    kind = "gs"
    source: GCSSource

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self.source.bucket

    def storage(self, key: str | None = None, **options: Any) -> ObjectFlowStorage:
        """``GCS(bucket, key, project="test", settings={endpoint_url, token="anon"})``."""
        server: GCSServer = self.source.server
        options.setdefault("settings", {"endpoint_url": server.endpoint_url, "token": "anon"})
        options.setdefault("project", server.project)
        return GCS(self.bucket, key=key, **options)

    def get(self, key: str) -> bytes:
        """The object's content, through the emulator's JSON API."""
        server: GCSServer = self.source.server
        response = requests.get(
            f"{server.endpoint_url}/storage/v1/b/{self.bucket}/o/{quote(key, safe='')}",
            params={"alt": "media"},
            timeout=30,
        )
        response.raise_for_status()
        return response.content

    def keys(self) -> list[str]:
        """Every object name in the bucket."""
        return self.source.server.list_keys(self.bucket)


class AzureStore(Store):
    """A fresh container on Azurite, reached through the default connection-string secret."""

    kind = "az"
    source: AzureSource

    @property
    def bucket(self) -> str:
        """The container name."""
        return self.source.container

    @property
    def server(self) -> AzuriteServer:
        """The Azurite server."""
        return self.source.server

    def storage(self, key: str | None = None, **options: Any) -> ObjectFlowStorage:
        """``Azure(container, blob_name=key)``; the connection string is the default secret."""
        return Azure(self.bucket, blob_name=key, **options)

    def get(self, key: str) -> bytes:
        """The blob's content."""
        client = self.server.service.get_blob_client(self.bucket, key)
        return client.download_blob().readall()

    def keys(self) -> list[str]:
        """Every blob name in the container."""
        return self.server.list_names(self.bucket)


STORES: dict[str, type[Store]] = {"s3": S3Store, "gs": GCSStore, "az": AzureStore}


def make_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Store:
    """A fresh store of ``kind``; for Azure, the default connection-string variable is set."""
    store = STORES[kind](make_source(kind, request, tmp_path))
    if isinstance(store, AzureStore):
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", store.server.connection_string)
    return store


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret of the host leaks in, and nothing lands in the working directory."""
    for variable in list(os.environ):
        if variable in SECRET_VARIABLES or variable.startswith("PREFECT__CONTEXT__SECRETS__"):
            monkeypatch.delenv(variable)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Each of S3 (moto), GCS (the emulator) and Azure (Azurite) in turn, a fresh bucket."""
    return make_store(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def s3_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> S3Store:
    """A fresh bucket on moto."""
    store = make_store("s3", request, tmp_path, monkeypatch)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture
def az_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AzureStore:
    """A fresh container on Azurite."""
    store = make_store("az", request, tmp_path, monkeypatch)
    assert isinstance(store, AzureStore)
    return store


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    return tmp_path / "base"


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A flow script on the local disk, as a user registers it."""
    path = tmp_path / "src" / "my_flow.py"
    path.parent.mkdir()
    path.write_bytes(FLOW)
    return path


# --- helpers -------------------------------------------------------------------------------


def pull(storage: ObjectFlowStorage) -> SyncResult:
    """Run one pull."""
    return anyio.run(storage.pull_code)


def one_line(error: BaseException) -> str:
    """The message of ``error``, checked to be one non-empty line."""
    text = str(error)
    assert text.strip(), f"empty message: {error!r}"
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def published(storage: ObjectFlowStorage) -> dict[str, bytes]:
    """Every file of the published version, by relative path."""
    root = storage.destination.resolve()
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def state_text(storage: ObjectFlowStorage, base: Path) -> str:
    """The raw ``state.json`` of ``storage``."""
    return (base / METADATA_DIR / storage.name / "state.json").read_text(encoding="utf-8")


def everything_written(base: Path) -> bytes:
    """The bytes of every regular file under ``base`` (metadata included)."""
    return b"\n".join(
        path.read_bytes()
        for path in sorted(base.rglob("*"))
        if path.is_file() and not path.is_symlink()
    )


def error_text(error: BaseException) -> str:
    """Everything a traceback of ``error`` would print, its whole chain included."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def assert_nowhere(secret: str, base: Path, *errors: BaseException) -> None:
    """``secret`` is in no file under ``base`` and in no printed form of ``errors``."""
    assert secret.encode() not in everything_written(base)
    for error in errors:
        assert secret not in error_text(error)
        assert secret not in repr(error)


# --- pulling the one object, on every store ------------------------------------------------


class TestPull:
    """The object a key names is kept current, and only that object."""

    def test_the_object_is_published_and_flow_path_is_it(self, store: Store, base: Path) -> None:
        """A pull publishes the object; ``flow_path`` is that file, with its content."""
        store.put("etl/flow.py", FLOW)
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        result = pull(storage)
        assert result.changed
        assert result.files_fetched == 1
        assert result.bytes_fetched == len(FLOW)
        assert storage.flow_path.is_absolute()
        assert storage.flow_path == storage.destination / "flow.py"
        assert storage.flow_path.read_bytes() == FLOW
        assert storage.destination.is_symlink()
        assert base in storage.destination.parents

    def test_other_objects_under_the_prefix_are_not_published(
        self, store: Store, base: Path
    ) -> None:
        """Neighbours of the key (same folder, same name prefix) never reach the worker."""
        store.put("etl/flow.py", FLOW)
        for neighbour in ("etl/flow.py.bak", "etl/flow.pyc", "etl/other.py", "etl/sub/x.py"):
            store.put(neighbour, b"not the flow\n")
        store.put("etl.py", b"a sibling of the folder\n")
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        pull(storage)
        assert published(storage) == {"flow.py": FLOW}

    def test_second_pull_is_a_noop_without_reading_the_object(
        self, store: Store, base: Path
    ) -> None:
        """While the object is unchanged a pull changes nothing and downloads nothing."""
        store.put("etl/flow.py", FLOW)
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        store.source.reset_counts()
        first = pull(storage)
        assert store.source.reads() == ["etl/flow.py"]  # what a download looks like
        live = storage.destination.resolve()
        store.source.reset_counts()
        second = pull(storage)
        assert not second.changed
        assert second.files_fetched == 0
        assert second.revision == first.revision
        assert storage.destination.resolve() == live
        assert store.source.reads() == []

    def test_a_rewritten_object_arrives(self, store: Store, base: Path) -> None:
        """A new upload of the object is the next version; the old one stays as it was."""
        store.put("etl/flow.py", FLOW)
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        first = pull(storage)
        old = storage.destination.resolve()
        store.put("etl/flow.py", FLOW_V2)
        second = pull(storage)
        assert second.changed
        assert second.revision != first.revision
        assert storage.flow_path.read_bytes() == FLOW_V2
        assert (old / "flow.py").read_bytes() == FLOW  # a running flow keeps its version

    def test_a_missing_object_is_one_line_and_the_version_is_kept(
        self, store: Store, base: Path
    ) -> None:
        """Deleting the object fails the pull with one line; the worker keeps the last one."""
        store.put("etl/flow.py", FLOW)
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        pull(storage)
        store.delete("etl/flow.py")
        with pytest.raises(NotFoundError) as caught:
            pull(storage)
        text = one_line(caught.value)
        assert "etl/flow.py" in text
        assert storage.flow_path.read_bytes() == FLOW
        state = json.loads(state_text(storage, base))
        assert state["consecutive_failures"] == 1
        assert state["last_error"]

    def test_an_object_that_never_existed_publishes_nothing(self, store: Store, base: Path) -> None:
        """A key with no object is one NotFoundError line, and no destination appears."""
        storage = store.storage("etl/nothing.py")
        storage.set_base_path(base)
        with pytest.raises(NotFoundError) as caught:
            pull(storage)
        one_line(caught.value)
        assert not storage.destination.exists()

    def test_no_key_is_one_configuration_line(self, store: Store, base: Path) -> None:
        """Without a key (and nothing built) pull, check and to_pull_step say what to give."""
        store.put("etl/flow.py", FLOW)
        storage = store.storage()
        storage.set_base_path(base)
        with pytest.raises(ConfigurationError) as caught:
            pull(storage)
        assert "key" in one_line(caught.value)
        assert "build()" in one_line(caught.value)
        with pytest.raises(ConfigurationError):
            anyio.run(storage.check)
        with pytest.raises(ConfigurationError):
            storage.to_pull_step()
        with pytest.raises(ConfigurationError):
            _ = storage.flow_path
        assert not (base / store.bucket).exists()

    @pytest.mark.parametrize("kind", ["s3", "gs"])
    def test_objects_below_the_key_do_not_replace_the_flow(
        self,
        kind: str,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        base: Path,
    ) -> None:
        """Objects named ``<key>/...`` are not the flow: the flow object is what is published."""
        store = make_store(kind, request, tmp_path, monkeypatch)
        store.put("etl/flow.py", FLOW)
        store.put("etl/flow.py/inner.py", b"not the flow\n")
        storage = store.storage("etl/flow.py")
        storage.set_base_path(base)
        pull(storage)
        assert published(storage) == {"flow.py": FLOW}


# --- the write side: add_flow and build ----------------------------------------------------


STAMP = re.compile(r"(?P<flow>[a-z0-9-]+)/(?P<stamp>\d{4}-\d\d-\d\dt\d\d-\d\d-\d\d-\d{6})\.py")


class TestBuild:
    """``add_flow`` + ``build`` upload the script where a later pull finds it."""

    def test_build_uploads_the_script_and_pulls_get_it(
        self, store: Store, base: Path, script: Path
    ) -> None:
        """The built object holds the script's bytes; this storage and a new one pull it."""
        storage = store.storage()
        storage.set_base_path(base)
        location = storage.add_flow(script)
        assert store.keys() == []  # nothing is uploaded before build()
        assert storage.build() is storage
        assert store.keys() == [location]
        assert store.get(location) == FLOW
        assert storage.flows == {"my_flow": location}

        result = pull(storage)
        assert result.changed
        assert storage.flow_path.name == PurePosixPath(location).name
        assert storage.flow_path.read_bytes() == FLOW
        assert base in storage.flow_path.parents  # the base path set before build holds

        later = store.storage(location, name="later")
        later.set_base_path(base)
        pull(later)
        assert later.flow_path.read_bytes() == FLOW

    def test_build_replaces_an_object_of_the_given_key(
        self, store: Store, base: Path, script: Path
    ) -> None:
        """With ``key`` given, the script goes there, replacing what was (Azure: overwrite)."""
        store.put("fixed/etl.py", b"old\n")
        options = {"overwrite": True} if store.kind == "az" else {}
        storage = store.storage("fixed/etl.py", **options)
        storage.set_base_path(base)
        pull(storage)
        assert storage.add_flow(script) == "fixed/etl.py"
        storage.build()
        assert store.keys() == ["fixed/etl.py"]
        assert store.get("fixed/etl.py") == FLOW
        assert pull(storage).changed
        assert storage.flow_path.read_bytes() == FLOW

    def test_a_rebuilt_script_arrives_at_the_next_pull(
        self, store: Store, base: Path, script: Path
    ) -> None:
        """Building a changed script again under the same key is the next pulled version."""
        options = {"overwrite": True} if store.kind == "az" else {}
        storage = store.storage("etl/flow.py", **options)
        storage.set_base_path(base)
        storage.add_flow(script)
        storage.build()
        pull(storage)
        script.write_bytes(FLOW_V2)
        storage.build()
        assert pull(storage).changed
        assert storage.flow_path.read_bytes() == FLOW_V2

    def test_local_script_path_is_registered(
        self, s3_store: S3Store, base: Path, script: Path
    ) -> None:
        """``S3(local_script_path=...)`` registers the script: ``build`` uploads it."""
        storage = s3_store.storage(local_script_path=str(script))
        storage.set_base_path(base)
        (location,) = storage.flows.values()
        storage.build()
        assert s3_store.get(location) == FLOW
        pull(storage)
        assert storage.flow_path.read_bytes() == FLOW


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda **kw: S3("flows", **kw), id="s3"),
        pytest.param(lambda **kw: GCS("flows", project="acme", **kw), id="gs"),
        pytest.param(lambda **kw: Azure("flows", **kw), id="az"),
    ],
)
class TestAddFlow:
    """Where ``add_flow`` puts a script, and what it refuses (no server is contacted)."""

    def test_generated_key_is_flow_name_and_utc_time(
        self, make: Callable[..., ObjectFlowStorage], script: Path
    ) -> None:
        """Without a key the location is ``<slugged flow name>/<UTC timestamp>.py``."""
        storage = make()
        before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        location = storage.add_flow(script)
        named = storage.add_flow(script, name="Nightly ETL: Sales")
        after = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for given, flow in ((location, "my-flow"), (named, "nightly-etl-sales")):
            match = STAMP.fullmatch(given)
            assert match, given
            assert match["flow"] == flow
            when = dt.datetime.strptime(match["stamp"], "%Y-%m-%dt%H-%M-%S-%f")
            assert before <= when <= after
        assert storage.flows == {"my_flow": location, "Nightly ETL: Sales": named}

    def test_a_given_key_is_the_location(
        self, make: Callable[..., ObjectFlowStorage], script: Path
    ) -> None:
        """With ``key`` (``blob_name``) given, ``add_flow`` returns it as the location."""
        keyword = "blob_name" if isinstance(make(), Azure) else "key"
        storage = make(**{keyword: "team/etl.py"})
        assert storage.add_flow(script) == "team/etl.py"

    def test_name_conflicts_are_refused(
        self, make: Callable[..., ObjectFlowStorage], script: Path, tmp_path: Path
    ) -> None:
        """A second flow of the same name is one line; the first registration stands."""
        storage = make()
        first = storage.add_flow(script)
        with pytest.raises(ConfigurationError) as caught:
            storage.add_flow(script)
        assert "my_flow" in one_line(caught.value)
        other = tmp_path / "other.py"
        other.write_bytes(FLOW_V2)
        with pytest.raises(ConfigurationError):
            storage.add_flow(other, name="my_flow")
        assert storage.flows == {"my_flow": first}

    def test_not_a_script_is_refused(
        self, make: Callable[..., ObjectFlowStorage], tmp_path: Path
    ) -> None:
        """A missing file or a folder is one line naming it."""
        storage = make()
        for bad in (tmp_path / "missing.py", tmp_path):
            with pytest.raises(ConfigurationError) as caught:
                storage.add_flow(bad)
            assert str(bad) in one_line(caught.value)
        assert storage.flows == {}

    def test_pickled_flows_are_refused(self, make: Callable[..., ObjectFlowStorage]) -> None:
        """``stored_as_script=False`` is one line saying why and what to do."""
        with pytest.raises(ConfigurationError) as caught:
            make(stored_as_script=False)
        text = one_line(caught.value)
        assert "pickled" in text
        assert "stored_as_script=True" in text


class TestAzureOverwrite:
    """Azure's ``overwrite``: False (Prefect 1's default) never replaces a blob at build."""

    def test_overwrite_false_refuses_an_existing_blob(
        self, az_store: AzureStore, base: Path, script: Path
    ) -> None:
        """Building over an existing blob is one line; the blob keeps its content."""
        az_store.put("etl/flow.py", b"theirs\n")
        storage = az_store.storage("etl/flow.py")
        storage.add_flow(script)
        with pytest.raises(ConfigurationError) as caught:
            storage.build()
        text = one_line(caught.value)
        assert "overwrite" in text
        assert "etl/flow.py" in text
        assert az_store.get("etl/flow.py") == b"theirs\n"

    def test_overwrite_false_uploads_a_new_blob(
        self, az_store: AzureStore, base: Path, script: Path
    ) -> None:
        """With no blob there yet, ``overwrite=False`` uploads."""
        storage = az_store.storage("etl/flow.py")
        storage.add_flow(script)
        storage.build()
        assert az_store.get("etl/flow.py") == FLOW

    def test_overwrite_true_replaces(self, az_store: AzureStore, base: Path, script: Path) -> None:
        """``overwrite=True`` replaces the blob, and the next pull gets the new script."""
        az_store.put("etl/flow.py", b"theirs\n")
        storage = az_store.storage("etl/flow.py", overwrite=True)
        storage.set_base_path(base)
        pull(storage)
        storage.add_flow(script)
        storage.build()
        assert az_store.get("etl/flow.py") == FLOW
        assert pull(storage).changed
        assert storage.flow_path.read_bytes() == FLOW


# --- construction --------------------------------------------------------------------------


class TestConstruction:
    """Bad descriptions are one line at construction (no server is contacted)."""

    def test_unknown_client_option(self) -> None:
        """A ``client_options`` key boto3's S3 client does not take is one line naming it."""
        with pytest.raises(ConfigurationError) as caught:
            S3("flows", key="etl.py", client_options={"profile_name": "dev"})
        text = one_line(caught.value)
        assert "profile_name" in text
        assert "endpoint_url" in text  # the hint lists what is taken

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda: S3("a/b", key="etl.py"), id="bucket-with-slash"),
            pytest.param(lambda: S3("", key="etl.py"), id="empty-bucket"),
            pytest.param(lambda: S3("flows", key="etl/"), id="key-is-a-folder"),
            pytest.param(lambda: GCS("flows", key="a/../b.py"), id="key-with-dotdot"),
            pytest.param(lambda: Azure("flows", blob_name="/"), id="blob-is-root"),
        ],
    )
    def test_bad_bucket_or_key(self, make: Callable[[], object]) -> None:
        """A bucket that is not one name, or a key that names no single object, is one line."""
        with pytest.raises(ConfigurationError) as caught:
            make()
        one_line(caught.value)


# --- credentials and secrets ---------------------------------------------------------------


class TestS3Credentials:
    """S3 ``client_options`` credentials, as text, ``Secret`` or ``NamedSecret``, and checked."""

    def test_secret_values_are_read_at_every_pull(
        self, s3_store: S3Store, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With moto checking keys, ``Secret`` and ``NamedSecret`` values are used per pull."""
        s3_store.put("etl/flow.py", FLOW)
        server = s3_store.source.server
        with server.enable_auth() as (key, secret):
            monkeypatch.setenv("TEST_S3_KEY_ID", key)
            monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__TEST_S3_SECRET", secret)
            storage = S3(
                s3_store.bucket,
                key="etl/flow.py",
                client_options={
                    "endpoint_url": server.endpoint_url,
                    "aws_access_key_id": Secret.from_env("TEST_S3_KEY_ID"),
                    "aws_secret_access_key": NamedSecret("TEST_S3_SECRET"),
                },
            )
            storage.set_base_path(base)
            assert pull(storage).changed
            canary = f"wrong-{uuid.uuid4().hex}"
            monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__TEST_S3_SECRET", canary)
            with pytest.raises(AuthenticationError) as caught:
                pull(storage)
            one_line(caught.value)
            assert storage.flow_path.read_bytes() == FLOW
            assert_nowhere(secret, base, caught.value)
            assert_nowhere(canary, base, caught.value)
            assert canary not in state_text(storage, base)
            assert f"s3://{s3_store.bucket}/etl/flow.py" in state_text(storage, base)

    def test_a_rejected_upload_shows_no_secret(
        self, s3_store: S3Store, base: Path, script: Path
    ) -> None:
        """``build`` with a wrong secret fails with one line that does not quote it."""
        server = s3_store.source.server
        canary = f"wrong-{uuid.uuid4().hex}"
        with server.enable_auth() as (key, _secret):
            storage = S3(
                s3_store.bucket,
                client_options={
                    "endpoint_url": server.endpoint_url,
                    "aws_access_key_id": key,
                    "aws_secret_access_key": Secret(canary),
                },
            )
            storage.set_base_path(base)
            storage.add_flow(script)
            with pytest.raises(AuthenticationError) as caught:
                storage.build()
        one_line(caught.value)
        assert_nowhere(canary, base, caught.value)
        assert s3_store.keys() == []

    def test_missing_named_secret_names_it_and_the_places(
        self, s3_store: S3Store, base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unset ``NamedSecret`` is one line naming the secret and every place looked."""
        secrets_dir = tmp_path / "secrets"
        secrets_dir.mkdir()
        monkeypatch.setenv("RUNNER_STORAGE_SECRETS_DIR", str(secrets_dir))
        s3_store.put("etl/flow.py", FLOW)
        options = {**s3_store.client_options(), "aws_secret_access_key": NamedSecret("NO_S3")}
        storage = s3_store.storage("etl/flow.py", client_options=options)
        storage.set_base_path(base)
        with pytest.raises(CredentialsError) as caught:
            pull(storage)
        text = one_line(caught.value)
        for place in ("$PREFECT__CONTEXT__SECRETS__NO_S3", "$NO_S3", str(secrets_dir / "NO_S3")):
            assert place in text


class TestAzureConnectionString:
    """The connection string is a Prefect 1 named secret, looked up at every pull."""

    @pytest.mark.parametrize(
        "where", ["prefect-context", "environment", "secrets-dir", "credentials-directory"]
    )
    @pytest.mark.parametrize("name", [None, "TEAM_AZ_CONN"])
    def test_each_place_of_the_secret(
        self,
        *,
        az_store: AzureStore,
        base: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        where: str,
        name: str | None,
    ) -> None:
        """The default or a given name, from Prefect 1's context, the env or a file, pulls."""
        secret = name or "AZURE_STORAGE_CONNECTION_STRING"
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
        value = az_store.server.connection_string
        if where == "prefect-context":
            monkeypatch.setenv(f"PREFECT__CONTEXT__SECRETS__{secret}", value)
        elif where == "environment":
            monkeypatch.setenv(secret, value)
        else:
            folder = tmp_path / "credentials"
            folder.mkdir()
            (folder / secret).write_text(value + "\n")
            variable = (
                "RUNNER_STORAGE_SECRETS_DIR" if where == "secrets-dir" else "CREDENTIALS_DIRECTORY"
            )
            monkeypatch.setenv(variable, str(folder))
        az_store.put("etl/flow.py", FLOW)
        storage = az_store.storage("etl/flow.py", connection_string_secret=name)
        storage.set_base_path(base)
        pull(storage)
        assert storage.flow_path.read_bytes() == FLOW

    def test_prefect_context_wins_over_the_plain_variable(
        self, az_store: AzureStore, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``PREFECT__CONTEXT__SECRETS__<NAME>`` is read before ``$<NAME>``."""
        az_store.put("etl/flow.py", FLOW)
        monkeypatch.setenv(
            "AZURE_STORAGE_CONNECTION_STRING", az_store.server.wrong_connection_string()
        )
        monkeypatch.setenv(
            "PREFECT__CONTEXT__SECRETS__AZURE_STORAGE_CONNECTION_STRING",
            az_store.server.connection_string,
        )
        storage = az_store.storage("etl/flow.py")
        storage.set_base_path(base)
        assert pull(storage).changed

    def test_missing_secret_is_one_line_and_the_version_is_kept(
        self, az_store: AzureStore, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once the secret is gone the next pull says which and where; the version stays."""
        az_store.put("etl/flow.py", FLOW)
        storage = az_store.storage("etl/flow.py", connection_string_secret="TEAM_AZ_CONN")
        storage.set_base_path(base)
        monkeypatch.setenv("TEAM_AZ_CONN", az_store.server.connection_string)
        pull(storage)
        monkeypatch.delenv("TEAM_AZ_CONN")
        with pytest.raises(CredentialsError) as caught:
            pull(storage)
        text = one_line(caught.value)
        assert "TEAM_AZ_CONN" in text
        assert "$PREFECT__CONTEXT__SECRETS__TEAM_AZ_CONN" in text
        assert "RUNNER_STORAGE_SECRETS_DIR" in text
        assert storage.flow_path.read_bytes() == FLOW

    def test_default_secret_missing_at_build(
        self, az_store: AzureStore, script: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``build`` without the default secret is one line naming it; nothing is uploaded."""
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
        storage = az_store.storage("etl/flow.py")
        storage.add_flow(script)
        with pytest.raises(CredentialsError) as caught:
            storage.build()
        assert "AZURE_STORAGE_CONNECTION_STRING" in one_line(caught.value)
        assert az_store.keys() == []

    def test_no_account_key_anywhere(
        self, az_store: AzureStore, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither the account key in use nor a rejected one is written or shown."""
        az_store.put("etl/flow.py", FLOW)
        storage = az_store.storage("etl/flow.py")
        storage.set_base_path(base)
        pull(storage)
        canary_key = (uuid.uuid4().bytes * 4).hex()[:86] + "=="
        wrong = connection_string(az_store.server.blob_endpoint, canary_key)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
        with pytest.raises(AuthenticationError) as caught:
            pull(storage)
        one_line(caught.value)
        assert storage.flow_path.read_bytes() == FLOW
        assert_nowhere(az_store.server.account_key, base, caught.value)
        assert_nowhere(canary_key, base, caught.value)
        assert "AccountKey" not in state_text(storage, base)


# --- Prefect 3 pull steps ------------------------------------------------------------------


class TestPullStep:
    """``to_pull_step()`` is our ``pull_from_remote_storage`` (Prefect's signature) of the object.

    Ours, since Prefect's would copy the object to where its ``directory`` points.
    """

    def test_s3_secrets_are_placeholders(self) -> None:
        """Named secrets become block placeholders, ``Secret.from_env`` a ``$VAR``."""
        storage = S3(
            "flows",
            key="etl/flow.py",
            client_options={
                "endpoint_url": "http://127.0.0.1:9000",
                "region_name": "eu-west-1",
                "aws_access_key_id": "AKIAEXAMPLE",
                "aws_secret_access_key": NamedSecret("AWS_SECRET_ACCESS_KEY"),
                "aws_session_token": Secret.from_env("AWS_SESSION_TOKEN"),
            },
        )
        assert storage.to_pull_step() == {
            STEP: {
                "url": "s3://flows/etl/flow.py",
                "endpoint_url": "http://127.0.0.1:9000",
                "key": "AKIAEXAMPLE",
                "secret": "{{ prefect.blocks.secret.aws-secret-access-key }}",
                "token": "{{ $AWS_SESSION_TOKEN }}",
                "client_kwargs": {"region_name": "eu-west-1"},
                "requires": ["runner-storage", "s3fs"],
            }
        }

    def test_plain_text_secret_key_is_refused(self) -> None:
        """A plain-text secret key is one line that does not quote it."""
        canary = f"plain-{uuid.uuid4().hex}"
        storage = S3("flows", key="etl.py", client_options={"aws_secret_access_key": canary})
        with pytest.raises(ConfigurationError) as caught:
            storage.to_pull_step()
        text = one_line(caught.value)
        assert "secret" in text
        assert canary not in error_text(caught.value)

    @pytest.mark.parametrize(
        ("name", "placeholder"),
        [
            (None, "{{ prefect.blocks.secret.azure-storage-connection-string }}"),
            ("TEAM_AZ_CONN", "{{ prefect.blocks.secret.team-az-conn }}"),
        ],
    )
    def test_azure_connection_string_is_a_placeholder(
        self, name: str | None, placeholder: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The connection-string secret is its block placeholder, even when it is set."""
        monkeypatch.setenv(name or "AZURE_STORAGE_CONNECTION_STRING", "AccountKey=c2VjcmV0")
        storage = Azure("flows", connection_string_secret=name, blob_name="etl/flow.py")
        assert storage.to_pull_step() == {
            STEP: {
                "url": "az://flows/etl/flow.py",
                "connection_string": placeholder,
                "requires": ["runner-storage", "adlfs"],
            }
        }
        assert "c2VjcmV0" not in repr(storage.to_pull_step())

    def test_gcs_project(self) -> None:
        """GCS's ``project`` is a setting of the step."""
        storage = GCS("flows", key="etl/flow.py", project="acme")
        assert storage.to_pull_step() == {
            STEP: {
                "url": "gs://flows/etl/flow.py",
                "project": "acme",
                "requires": ["runner-storage", "gcsfs"],
            }
        }

    @pytest.mark.anyio
    async def test_a_public_gcs_buckets_step_runs(
        self,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        script: Path,
    ) -> None:
        """``token="anon"`` is written into the step as it is, and the step pulls the flow."""
        store = make_store("gs", request, tmp_path, monkeypatch)
        storage = store.storage()
        location = storage.add_flow(script)
        storage.build()
        ((name, inputs),) = storage.to_pull_step().items()
        assert name == STEP
        assert inputs["token"] == "anon"
        settings = {key: value for key, value in inputs.items() if key not in {"url", "requires"}}
        result = await pull_from_remote_storage(inputs["url"], **settings)
        published = Path.cwd() / result["directory"]
        assert (published / PurePosixPath(location).name).read_bytes() == FLOW

    def test_built_storage_steps_to_its_location(
        self, s3_store: S3Store, script: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After ``build`` the step pulls the uploaded object."""
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_store.source.server.secret)
        options = {
            **s3_store.client_options(),
            "aws_secret_access_key": Secret.from_env("AWS_SECRET_ACCESS_KEY"),
        }
        storage = s3_store.storage(client_options=options)
        location = storage.add_flow(script)
        storage.build()
        (step,) = storage.to_pull_step().values()
        assert step["url"] == f"s3://{s3_store.bucket}/{location}"
        assert step["secret"] == "{{ $AWS_SECRET_ACCESS_KEY }}"
