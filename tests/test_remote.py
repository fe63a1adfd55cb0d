"""RemoteStorage against real servers: moto (S3), the GCS emulator, Azurite, HTTP, file, memory.

Behaviours that every object store must share run once per source kind (the ``source``
fixture of ``remote_sources.py``); behaviours that need a particular server (credentials,
request counts, failure injection) run where that server can show them.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest
from remote_sources import (
    OUTSIDE,
    TREE,
    AzureSource,
    CountingMemoryFileSystem,
    HTTPSource,
    MemorySource,
    S3Source,
    Source,
    leftovers,
    make_source,
    pull,
    state_text,
    sync_racing,
    tree,
    under,
    upload,
)
from servers.azurite import AzuriteServer
from servers.http_files import HTTPFileServer

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    MissingDependencyError,
    NotFoundError,
    PublishError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
)
from runner_storage.publish.layout import METADATA_DIR
from runner_storage.remote import RemoteStorage
from runner_storage.secrets import Secret

# --- behaviour on every kind of source -----------------------------------------------------


class TestPullEverywhere:
    """The sync contract, on s3, gs, az, http, file and memory alike."""

    def test_cold_pull_publishes_the_exact_tree(self, source: Source, base: Path) -> None:
        """A first pull publishes exactly the objects under the prefix, nothing beside it."""
        stored = upload(source, {**TREE, **OUTSIDE})
        if source.has_markers:
            source.put("flows/marker/", b"")
        storage = source.storage()
        storage.set_base_path(base)

        result = pull(storage)

        expected = under(stored, "flows")
        assert tree(storage.destination) == expected
        assert storage.destination.is_symlink()
        assert result.changed
        assert result.files_fetched == len(expected)
        assert result.bytes_fetched == sum(len(v) for v in expected.values())
        assert leftovers(base, storage) == []

    def test_noop_pull_reads_no_object(self, source: Source, base: Path) -> None:
        """A pull with nothing changed upstream lists once, reads nothing, publishes nothing."""
        upload(source, TREE)
        storage = source.storage()
        storage.set_base_path(base)
        first = pull(storage)
        live = storage.destination.resolve()
        source.reset_counts()

        again = pull(storage)

        assert not again.changed
        assert (again.revision, again.files_fetched, again.bytes_fetched) == (first.revision, 0, 0)
        assert storage.destination.resolve() == live
        assert source.reads() == []
        if source.kind in ("s3", "gs"):
            assert source.requests() == 1  # exactly one listing request
        if source.kind == "az":
            assert source.requests() == 2  # adlfs asks whether the URL is a blob, then lists

    def test_small_change_moves_only_what_changed(self, source: Source, base: Path) -> None:
        """Modified and added objects are downloaded, deleted ones vanish, the rest is linked."""
        stored = upload(source, TREE)
        storage = source.storage()
        storage.set_base_path(base)
        pull(storage)
        old = storage.destination.resolve()
        old_tree = tree(old)
        source.put("flows/a.txt", b"alpha, second edition\n")
        source.put("flows/sub/new.py", b"NEW = True\n")
        source.delete("flows/gone.txt")
        source.reset_counts()

        result = pull(storage)

        new = storage.destination.resolve()
        expected = under(stored, "flows")
        expected.update({"a.txt": b"alpha, second edition\n", "sub/new.py": b"NEW = True\n"})
        del expected["gone.txt"]
        assert result.changed
        assert new != old
        assert tree(new) == expected
        assert (result.files_fetched, result.bytes_fetched) == (2, 22 + 11)
        assert source.reads() == ["flows/a.txt", "flows/sub/new.py"]
        for unchanged in set(expected) - {"a.txt", "sub/new.py"}:
            assert (new / unchanged).stat().st_ino == (old / unchanged).stat().st_ino
        assert tree(old) == old_tree  # the previous version is untouched

    def test_single_object_url_publishes_that_file(self, source: Source, base: Path) -> None:
        """A URL naming one object publishes that object alone, under its basename."""
        upload(source, TREE)
        storage = source.storage("flows/sub/b.py")
        storage.set_base_path(base)

        result = pull(storage)

        assert tree(storage.destination) == {"b.py": b"B = 1\n"}
        assert result.files_fetched == 1
        assert storage.destination == base / storage.name
        assert storage.name.endswith("flows/sub/b.py")

    def test_emptied_prefix_keeps_the_published_tree(self, source: Source, base: Path) -> None:
        """When every object is gone the pull fails as not found; the last tree stays live."""
        upload(source, {"flows/a.txt": b"alpha\n"})
        storage = source.storage()
        storage.set_base_path(base)
        pull(storage)
        live = storage.destination.resolve()
        source.delete("flows/a.txt")

        with pytest.raises(NotFoundError, match="never published"):
            pull(storage)

        assert storage.destination.resolve() == live
        assert tree(live) == {"a.txt": b"alpha\n"}
        assert "not" in json.loads(state_text(storage, base))["last_error"]

    def test_missing_bucket_or_folder_is_not_found(self, source: Source, base: Path) -> None:
        """A bucket, container or folder that does not exist raises NotFoundError."""
        storage = RemoteStorage(source.missing_root_url(), **source.settings())
        storage.set_base_path(base)

        with pytest.raises(NotFoundError) as caught:
            pull(storage)

        assert "\n" not in str(caught.value)
        assert not os.path.lexists(storage.destination)


# --- memory:// itself, and the version-building details ------------------------------------


class TestMemoryProtocol:
    """The plain ``memory://`` protocol, as Prefect users write it."""

    def test_memory_url_publishes_under_the_folder_name(self, base: Path) -> None:
        """``memory://folder`` publishes at BASE/folder."""
        folder = f"m{uuid.uuid4().hex[:10]}"
        fs = fsspec.filesystem("memory")
        fs.pipe(f"/{folder}/x/y.py", b"Y = 1\n")
        storage = RemoteStorage(f"memory://{folder}")
        storage.set_base_path(base)

        pull(storage)

        assert storage.destination == base / folder
        assert tree(storage.destination) == {"x/y.py": b"Y = 1\n"}


class TestBuildingVersions:
    """How a new version is assembled: links, copies, verification."""

    def test_cross_device_link_falls_back_to_copy(
        self, memory: MemorySource, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When hard links are impossible unchanged files are copied, not downloaded."""
        upload(memory, {"flows/a.txt": b"a\n", "flows/b.txt": b"b\n"})
        storage = memory.storage()
        storage.set_base_path(base)
        pull(storage)
        old = storage.destination.resolve()
        memory.put("flows/b.txt", b"b2\n")

        def no_links(source: Any, target: Any) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr("runner_storage.remote.backend.os.link", no_links)
        memory.reset_counts()
        result = pull(storage)

        new = storage.destination.resolve()
        assert tree(new) == {"a.txt": b"a\n", "b.txt": b"b2\n"}
        assert (new / "a.txt").stat().st_ino != (old / "a.txt").stat().st_ino
        assert result.files_fetched == 1
        assert memory.reads() == ["flows/b.txt"]

    def test_damaged_previous_file_is_downloaded_again(
        self, memory: MemorySource, base: Path
    ) -> None:
        """A previous file whose size no longer matches is fetched, not linked."""
        upload(memory, {"flows/a.txt": b"alpha\n", "flows/b.txt": b"b\n"})
        storage = memory.storage()
        storage.set_base_path(base)
        pull(storage)
        old = storage.destination.resolve()
        (old / "a.txt").write_bytes(b"tampered with locally\n")
        memory.put("flows/b.txt", b"b2\n")

        result = pull(storage)

        assert tree(storage.destination) == {"a.txt": b"alpha\n", "b.txt": b"b2\n"}
        assert result.files_fetched == 2

    def test_transfer_concurrency_one_still_fetches_everything(
        self, memory: MemorySource, base: Path
    ) -> None:
        """With one transfer at a time every object still arrives."""
        files = {f"flows/d{i % 3}/f{i}.txt": f"{i}\n".encode() for i in range(20)}
        upload(memory, files)
        storage = memory.storage(transfer_concurrency=1)
        storage.set_base_path(base)

        result = pull(storage)

        assert tree(storage.destination) == under(files, "flows")
        assert result.files_fetched == 20


# --- untrusted keys -------------------------------------------------------------------------

#: Keys each server really stores: moto keeps anything; the GCS emulator refuses '..'; the
#: Azure SDK rewrites backslashes to '/' and refuses '..'; a file name cannot hold '/'.
HOSTILE = [
    pytest.param("s3", "flows/../x.txt", id="s3-dotdot"),
    pytest.param("s3", "flows//abs.txt", id="s3-absolute"),
    pytest.param("s3", "flows/a\\b.txt", id="s3-backslash"),
    pytest.param("s3", "flows/sub/../../x.txt", id="s3-nested-dotdot"),
    pytest.param("gs", "flows//abs.txt", id="gs-absolute"),
    pytest.param("gs", "flows/a\\b.txt", id="gs-backslash"),
    pytest.param("az", "flows//abs.txt", id="az-absolute"),
    pytest.param("file", "flows/a\\b.txt", id="file-backslash"),
    pytest.param("memory", "flows/../x.txt", id="memory-dotdot"),
]


class TestHostileKeys:
    """Object keys are untrusted: nothing is ever written outside the new version."""

    @pytest.mark.parametrize(("kind", "key"), HOSTILE)
    def test_hostile_key_is_refused(
        self, kind: str, key: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """A key with '..', an absolute part or a backslash fails the pull, writing nothing."""
        source = make_source(kind, request, tmp_path)
        upload(source, {"flows/ok.txt": b"ok\n", key: b"evil\n"})
        base = tmp_path / "deep" / "base"
        storage = source.storage()
        storage.set_base_path(base)
        before = sorted(p for p in tmp_path.rglob("*") if "upstream" not in p.parts)

        with pytest.raises(UnsafeContentError, match="nothing was published"):
            pull(storage)

        after = sorted(p for p in tmp_path.rglob("*") if "upstream" not in p.parts)
        created = [p for p in after if p not in before]
        ours = base / METADATA_DIR
        assert all(p.is_relative_to(ours) or ours.is_relative_to(p) for p in created), created
        assert not any(p.name in ("x.txt", "abs.txt") for p in after)
        assert not os.path.lexists(storage.destination)

    def test_file_and_directory_conflict_is_refused(self, s3: S3Source, base: Path) -> None:
        """Keys ``a`` and ``a/b`` cannot both be published: the pull names them and stops."""
        upload(s3, {"flows/a": b"file\n", "flows/a/b": b"nested\n"})
        storage = s3.storage()
        storage.set_base_path(base)

        with pytest.raises(UnsafeContentError, match="'a' and 'a/b' conflict"):
            pull(storage)


# --- races with the upstream -----------------------------------------------------------------


class TestUpstreamChangesDuringPull:
    """An object that changes between the listing and its download never gets published."""

    @pytest.mark.parametrize(("status", "error"), [(404, TransientSourceError), (500, SourceError)])
    def test_a_subfolder_that_fails_to_list_drops_no_file(
        self, status: int, error: type[Exception], http_file_server: HTTPFileServer, base: Path
    ) -> None:
        """A subfolder whose listing fails while its parent lists it fails the pull.

        Read as empty, its files would look deleted upstream and vanish from the tree.
        """
        source = HTTPSource(http_file_server)
        upload(source, TREE)
        storage = source.storage()
        storage.set_base_path(base)
        pull(storage)
        published = tree(storage.destination)
        with http_file_server.answering(status, "/flows/sub/"), pytest.raises(error):
            pull(storage)
        assert tree(storage.destination) == published
        assert "sub/deep/c.cfg" in published

    @pytest.mark.parametrize("kind", ["s3", "memory"])
    def test_size_change_while_downloading_publishes_nothing(
        self, kind: str, request: pytest.FixtureRequest, tmp_path: Path, base: Path
    ) -> None:
        """An object rewritten after the listing fails the pull; the last tree stays live."""
        source = make_source(kind, request, tmp_path)
        upload(source, {"flows/a.txt": b"alpha\n", "flows/b.txt": b"b\n"})
        storage = source.storage()
        storage.set_base_path(base)
        pull(storage)
        live = storage.destination.resolve()
        source.put("flows/b.txt", b"b, edited\n")

        def rewrite() -> None:
            source.put("flows/b.txt", b"b, edited again and longer\n")

        with pytest.raises(TransientSourceError, match="changed while downloading"):
            sync_racing(storage, rewrite)

        assert storage.destination.resolve() == live
        assert tree(live) == {"a.txt": b"alpha\n", "b.txt": b"b\n"}
        assert leftovers(base, storage) == []

    @pytest.mark.parametrize("kind", ["s3", "gs", "az"])
    def test_same_size_rewrite_after_listing_is_caught_by_the_listed_md5(
        self, kind: str, request: pytest.FixtureRequest, tmp_path: Path, base: Path
    ) -> None:
        """A same-size rewrite between listing and download fails the pull; nothing shows.

        S3, GCS and Azure listings promise each object's MD5, which the download must have.
        """
        source = make_source(kind, request, tmp_path)
        upload(source, {"flows/a.txt": b"alpha\n", "flows/b.txt": b"b-one\n"})
        storage = source.storage()
        storage.set_base_path(base)
        pull(storage)
        live = storage.destination.resolve()
        source.put("flows/b.txt", b"b-two\n")

        with pytest.raises(TransientSourceError, match="does not match the listed checksum"):
            sync_racing(storage, lambda: source.put("flows/b.txt", b"b-3x3\n"))

        assert storage.destination.resolve() == live
        assert tree(live) == {"a.txt": b"alpha\n", "b.txt": b"b-one\n"}
        assert leftovers(base, storage) == []

    def test_object_deleted_while_downloading_is_transient(self, s3: S3Source, base: Path) -> None:
        """An object deleted after the listing fails the pull as transient; nothing appears."""
        upload(s3, {"flows/a.txt": b"alpha\n", "flows/b.txt": b"b\n"})
        storage = s3.storage()
        storage.set_base_path(base)

        with pytest.raises(TransientSourceError, match="disappeared while downloading"):
            sync_racing(storage, lambda: s3.delete("flows/b.txt"))

        assert not os.path.lexists(storage.destination)
        assert leftovers(base, storage) == []


# --- credentials ------------------------------------------------------------------------------


class TestCredentials:
    """Credentials are resolved at every pull and never shown."""

    def test_wrong_s3_secret_is_an_authentication_error(
        self,
        s3: S3Source,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A wrong secret is rejected by moto; the secret is absent from error, state and logs."""
        upload(s3, {"flows/a.txt": b"alpha\n"})
        wrong = "WrongSecret-" + uuid.uuid4().hex
        monkeypatch.setenv("RS_TEST_S3_SECRET", wrong)
        caplog.set_level(logging.DEBUG)
        with s3.server.enable_auth() as (key, _):
            storage = RemoteStorage(
                s3.url("flows"),
                key=key,
                secret=Secret.from_env("RS_TEST_S3_SECRET"),
                endpoint_url=s3.server.endpoint_url,
            )
            storage.set_base_path(base)
            with pytest.raises(AuthenticationError) as caught:
                pull(storage)

        message = str(caught.value)
        assert s3.url("flows") in message
        assert "\n" not in message
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__
        for text in (message, state_text(storage, base), caplog.text, repr(storage)):
            assert wrong not in text
        assert not os.path.lexists(storage.destination)

    def test_secret_from_env_is_read_at_every_pull(
        self, s3: S3Source, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rotating the variable between pulls takes effect without a new storage."""
        upload(s3, {"flows/a.txt": b"alpha\n"})
        with s3.server.enable_auth() as (key, secret):
            storage = RemoteStorage(
                s3.url("flows"),
                key=key,
                secret=Secret.from_env("RS_TEST_S3_SECRET"),
                endpoint_url=s3.server.endpoint_url,
            )
            storage.set_base_path(base)
            monkeypatch.setenv("RS_TEST_S3_SECRET", "not-the-secret")
            with pytest.raises(AuthenticationError):
                pull(storage)
            monkeypatch.setenv("RS_TEST_S3_SECRET", secret)
            assert pull(storage).changed
            s3.put("flows/a.txt", b"alpha 2\n")
            monkeypatch.setenv("RS_TEST_S3_SECRET", "rotated-away")
            with pytest.raises(AuthenticationError):
                pull(storage)

        assert tree(storage.destination) == {"a.txt": b"alpha\n"}

    def test_unset_secret_variable_fails_before_any_request(
        self, s3: S3Source, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A secret whose variable is unset raises CredentialsError and contacts nobody."""
        monkeypatch.delenv("RS_TEST_UNSET", raising=False)
        storage = RemoteStorage(
            s3.url("flows"),
            key="k",
            secret=Secret.from_env("RS_TEST_UNSET"),
            endpoint_url=s3.server.endpoint_url,
        )
        storage.set_base_path(base)
        s3.reset_counts()

        with pytest.raises(CredentialsError, match="RS_TEST_UNSET"):
            pull(storage)

        assert s3.requests() == 0

    def test_wrong_azure_key_is_an_authentication_error(
        self,
        azurite_server: AzuriteServer,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Azurite rejects a wrong account key; the key is absent from error, state and logs."""
        source = AzureSource(azurite_server)
        upload(source, {"flows/a.txt": b"alpha\n"})
        wrong = azurite_server.wrong_connection_string()
        wrong_key = wrong.split("AccountKey=", 1)[1].split(";", 1)[0]
        monkeypatch.setenv("RS_TEST_AZURE", wrong)
        caplog.set_level(logging.DEBUG)
        storage = RemoteStorage(
            source.url("flows"), connection_string=Secret.from_env("RS_TEST_AZURE")
        )
        storage.set_base_path(base)

        with pytest.raises(AuthenticationError) as caught:
            pull(storage)

        assert caught.value.__cause__ is None
        for text in (str(caught.value), state_text(storage, base), caplog.text):
            assert wrong_key not in text
            assert wrong not in text

    def test_plain_secret_settings_are_redacted(self, base: Path) -> None:
        """A secret passed as plain text is still kept out of messages and state."""
        storage = RemoteStorage(
            "s3://bucket/flows",
            key="AKIAEXAMPLE",
            secret="plain-secret-value",
            endpoint_url="http://127.0.0.1:9",
        )
        assert storage.redact("boom plain-secret-value boom") == "boom *** boom"
        assert "plain-secret-value" not in repr(storage)


# --- failures of the network and the local disk -----------------------------------------------


class TestFailures:
    """Failures are translated once, into errors that say what to do."""

    def test_unreachable_s3_endpoint_is_transient(self, base: Path) -> None:
        """A closed port raises TransientSourceError, so the daemon retries with backoff."""
        closed = "http://127.0.0.1:9"
        storage = RemoteStorage(
            "s3://bucket/flows",
            key="k",
            secret="s",
            endpoint_url=closed,
            config_kwargs={"retries": {"max_attempts": 1}},
        )
        storage.set_base_path(base)

        with pytest.raises(TransientSourceError, match="cannot reach s3://bucket/flows"):
            pull(storage)

    def test_unreachable_http_server_is_transient(self, base: Path) -> None:
        """An HTTP source that refuses connections raises TransientSourceError."""
        storage = RemoteStorage("http://127.0.0.1:9/flows/")
        storage.set_base_path(base)

        with pytest.raises(TransientSourceError):
            pull(storage)

    def test_full_disk_is_a_publish_error(self, memory: MemorySource, base: Path) -> None:
        """A local write failure while downloading is a PublishError with a hint."""
        upload(memory, {"flows/a.txt": b"alpha\n"})
        storage = memory.storage()
        storage.set_base_path(base)
        CountingMemoryFileSystem.fail_downloads_with = errno.ENOSPC

        with pytest.raises(PublishError, match="disk is full"):
            pull(storage)

        assert not os.path.lexists(storage.destination)
        assert leftovers(base, storage) == []

    def test_missing_package_names_the_extra(
        self, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When s3fs cannot be imported the pull says which extra to install."""
        registry = importlib.import_module("fsspec.registry")
        monkeypatch.delitem(registry._registry, "s3", raising=False)
        monkeypatch.setitem(
            registry.known_implementations,
            "s3",
            {"class": "s3fs.not_installed_here.S3FileSystem", "err": "Install s3fs"},
        )
        storage = RemoteStorage("s3://bucket/flows")
        storage.set_base_path(base)

        with pytest.raises(MissingDependencyError) as caught:
            pull(storage)

        assert "pip install 'runner-storage[s3]'" in str(caught.value)
        assert isinstance(caught.value, ConfigurationError)


# --- construction, identity, pull steps --------------------------------------------------------


class TestConstruction:
    """What a RemoteStorage accepts, and where it publishes."""

    @pytest.mark.parametrize(
        ("url", "name"),
        [
            pytest.param("s3://bucket/flows", "bucket/flows", id="s3"),
            pytest.param("s3://bucket/flows/", "bucket/flows", id="trailing-slash"),
            pytest.param("s3://bucket", "bucket", id="bucket-only"),
            pytest.param("gs://bucket/a/b", "bucket/a/b", id="gs"),
            pytest.param("az://container/flows", "container/flows", id="az"),
            pytest.param("memory://folder", "folder", id="memory"),
            pytest.param("memory:///folder/sub", "folder/sub", id="memory-absolute"),
            pytest.param("file:///srv/flows", "srv/flows", id="file-absolute"),
            pytest.param("https://u:pw@host:8443/code/", "host:8443/code", id="no-credentials"),
        ],
    )
    def test_destination_follows_prefects_rule(self, url: str, name: str, base: Path) -> None:
        """The destination is BASE/<netloc>/<path>, without any credentials."""
        storage = RemoteStorage(url)
        storage.set_base_path(base)
        assert storage.name == name
        assert storage.destination == base / name

    def test_name_overrides_the_destination(self, base: Path) -> None:
        """``name=`` publishes under BASE/NAME instead of BASE/<netloc>/<path>."""
        storage = RemoteStorage("s3://bucket/deep/prefix", name="models")
        storage.set_base_path(base)
        assert storage.destination == base / "models"

    def test_prefect_defaults(self) -> None:
        """pull_interval defaults to 60 seconds, and None means pull once."""
        assert RemoteStorage("memory://x").pull_interval == 60
        assert RemoteStorage("memory://x", pull_interval=None).pull_interval is None

    @pytest.mark.parametrize(
        ("url", "fragment"),
        [
            pytest.param("", "empty", id="empty"),
            pytest.param("   ", "empty", id="blank"),
            pytest.param("bucket/path", "no scheme", id="no-scheme"),
            pytest.param("nosuchproto://bucket/x", "unknown protocol", id="unknown-protocol"),
            pytest.param("http://[::1/x", "cannot parse", id="unparseable"),
            pytest.param("simplecache::s3://b/x", "chained", id="chained"),
            pytest.param("memory://", "names no bucket", id="names-nothing"),
            pytest.param("file:///", "names no bucket", id="root"),
            pytest.param("memory://.hidden", "reserved", id="reserved-name"),
        ],
    )
    def test_bad_urls_fail_at_construction(self, url: str, fragment: str) -> None:
        """Unusable URLs raise ConfigurationError (a ValueError) before any pull."""
        with pytest.raises(ConfigurationError, match=fragment) as caught:
            RemoteStorage(url)
        assert isinstance(caught.value, ValueError)

    @pytest.mark.parametrize("url", ["s3://", "memory://", "file:///"])
    def test_a_url_naming_no_folder_is_refused_even_with_a_name(self, url: str) -> None:
        """``name=`` sets where to publish; it does not make a whole store a folder to sync."""
        with pytest.raises(ConfigurationError, match="names no bucket"):
            RemoteStorage(url, name="code")

    @pytest.mark.parametrize(
        "options",
        [
            pytest.param({"transfer_concurrency": 0}, id="no-transfers"),
            pytest.param({"keep_versions": 0}, id="keep-nothing"),
            pytest.param({"grace_period": -1.0}, id="negative-grace"),
            pytest.param({"pull_interval": -5}, id="negative-interval"),
        ],
    )
    def test_bad_options_fail_at_construction(self, options: dict[str, Any]) -> None:
        """Out-of-range options raise ConfigurationError at construction."""
        with pytest.raises(ConfigurationError):
            RemoteStorage("memory://folder", **options)

    def test_our_options_cannot_collide_with_filesystem_settings(self) -> None:
        """No fsspec filesystem we support takes a setting named like our own options."""
        classes = [fsspec.get_filesystem_class(p) for p in ("s3", "gs", "az", "http", "file")]
        ours = {"keep_versions", "grace_period", "transfer_concurrency", "pull_interval"}
        for cls in classes:
            assert ours.isdisjoint(inspect.signature(cls.__init__).parameters), cls

    def test_equality_is_url_and_settings(self) -> None:
        """Two storages are equal when URL and settings are, as in Prefect."""
        secret = Secret.from_env("RS_TEST_S3_SECRET")
        first = RemoteStorage("s3://b/flows", key="k", secret=secret)
        assert first == RemoteStorage("s3://b/flows", key="k", secret=secret)
        assert first != RemoteStorage("s3://b/flows", key="other", secret=secret)
        assert first != RemoteStorage("s3://b/other", key="k", secret=secret)
        assert hash(first) == hash(RemoteStorage("s3://b/flows", key="k", secret=secret))

    def test_equal_storages_hash_alike(self) -> None:
        """Storages of one URL published under other names differ, so hashes stay consistent.

        A set or dict of storages relies on equal objects having equal hashes.
        """
        first = RemoteStorage("memory://flows", name="one")
        second = RemoteStorage("memory://flows", name="two")
        assert first != second
        assert len({first, second, RemoteStorage("memory://flows", name="one")}) == 2
        for a in (first, second):
            for b in (first, second, RemoteStorage("memory://flows", name="one")):
                assert a != b or hash(a) == hash(b)

    def test_repr_shows_no_secret(self) -> None:
        """The repr names the URL without credentials and no setting values."""
        storage = RemoteStorage("https://user:pw-123@host/code/", token="tok-456")
        assert repr(storage) == "RemoteStorage(url='https://host/code/')"


class TestPullStep:
    """to_pull_step writes Prefect's step, with placeholders instead of secrets."""

    def test_s3_step_with_placeholders(self) -> None:
        """Secrets become env or block placeholders; requires names s3fs."""
        storage = RemoteStorage(
            "s3://bucket/flows",
            key=Secret.from_env("AWS_ACCESS_KEY_ID"),
            secret=Secret("unused", name="aws-secret"),
            endpoint_url="https://s3.example.com",
        )
        assert storage.to_pull_step() == {
            "prefect.deployments.steps.pull_from_remote_storage": {
                "url": "s3://bucket/flows",
                "key": "{{ $AWS_ACCESS_KEY_ID }}",
                "secret": "{{ prefect.blocks.secret.aws-secret }}",
                "endpoint_url": "https://s3.example.com",
                "requires": "s3fs",
            }
        }

    @pytest.mark.parametrize(
        ("url", "requires"),
        [
            pytest.param("gs://bucket/flows", "gcsfs", id="gs"),
            pytest.param("gcs://bucket/flows", "gcsfs", id="gcs"),
            pytest.param("az://container/flows", "adlfs", id="az"),
            pytest.param("abfs://container/flows", "adlfs", id="abfs"),
            pytest.param("memory://folder", None, id="memory"),
            pytest.param("https://host/code/", None, id="https"),
        ],
    )
    def test_requires_names_the_implementation_package(
        self, url: str, requires: str | None
    ) -> None:
        """``requires`` is the package of the protocol's implementation, absent for fsspec's own."""
        step = RemoteStorage(url).to_pull_step()[
            "prefect.deployments.steps.pull_from_remote_storage"
        ]
        assert step.get("requires") == requires
        assert step["url"] == url

    def test_plain_secret_setting_is_refused(self) -> None:
        """A plain-text secret setting cannot be written into a step: ConfigurationError."""
        storage = RemoteStorage("s3://bucket/flows", key="AKIA", secret="plain")
        with pytest.raises(ConfigurationError, match=r"Secret\.from_env"):
            storage.to_pull_step()

    @pytest.mark.parametrize("mode", ["anon", "google_default", "cloud", "cache", "browser"])
    def test_a_gcs_token_mode_is_written_as_it_is(self, mode: str) -> None:
        """The gcsfs ``token="anon"`` (and its other modes) says how to log in: no secret."""
        step = RemoteStorage("gs://bucket/flows", token=mode, project="p").to_pull_step()
        assert step == {
            "prefect.deployments.steps.pull_from_remote_storage": {
                "url": "gs://bucket/flows",
                "token": mode,
                "project": "p",
                "requires": "gcsfs",
            }
        }

    def test_a_gcs_token_mode_is_not_redacted(self) -> None:
        """Messages keep ``anon`` in ``anonymous.py``; on S3 a token "anon" is still hidden."""
        message = "cannot read {}://bucket/flows/anonymous.py"
        gcs = RemoteStorage("gs://bucket/flows", token="anon")
        assert gcs.redact(message.format("gs")) == message.format("gs")
        s3 = RemoteStorage("s3://bucket/flows", token="anon")
        assert "anonymous" not in s3.redact(message.format("s3"))

    def test_a_token_mode_is_still_a_secret_elsewhere(self) -> None:
        """On S3 ``token`` is the session token: "anon" there is plain text, refused."""
        with pytest.raises(ConfigurationError, match=r"settings\['token'\]"):
            RemoteStorage("s3://bucket/flows", token="anon").to_pull_step()
        with pytest.raises(ConfigurationError, match=r"settings\['token'\]"):
            RemoteStorage("gs://bucket/flows", token={"client_email": "x"}).to_pull_step()

    def test_password_in_url_is_refused(self) -> None:
        """A URL carrying a password cannot be written into a step either."""
        with pytest.raises(ConfigurationError, match="password"):
            RemoteStorage("https://user:pw@host/code/").to_pull_step()
