"""Pulls of s3:// through botocore's own client list, read and fail exactly as s3fs does.

The revision of a RemoteStorage is the digest of its listing, so the direct filesystem
(:class:`runner_storage.fs.s3_direct.DirectS3FileSystem`) must list what s3fs lists,
field for field. Each comparison here asks both of the same bucket on the session's real
S3 server (moto): trees with folders, folder markers, empty objects, non-ASCII keys and
more than one page of keys, single objects, missing buckets and refused credentials.
Settings the direct client does not understand completely go through s3fs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.utils import parse_timestamp
from servers.fault_proxy import FaultProxy
from servers.s3 import S3Server
from test_imports import OBJECT_STORES, loaded, run_child, run_cli

from runner_storage.fs.listing import list_tree
from runner_storage.fs.pool import close_filesystem, filesystem, open_filesystem
from runner_storage.fs.s3 import _parse_timestamp
from runner_storage.fs.s3_direct import DirectS3FileSystem, direct_settings, open_direct_s3
from runner_storage.remote import RemoteStorage

#: The objects of the shared tree: folders, a folder marker, an empty object, a key that
#: only shares a prefix with ``flows``, non-ASCII and spaces.
TREE = {
    "flows/a.py": b"A = 1\n",
    "flows/pkg/b.py": b"B = 2\n" * 100,
    "flows/pkg/": b"",
    "flows/empty.txt": b"",
    "flows/deep/x/y/z.py": b"Z = 3\n",
    "flows/\u00fcnicode/\u00e7a va.py": "\u00e7 = 4\n".encode(),
    "flows/space name.txt": b"space\n",
    "flowsuffix/d.py": b"D = 5\n",
    "other/c.py": b"C = 6\n",
}
#: Keys under ``many/``: more than one ListObjectsV2 page (1,000 keys).
MANY = 1_005
#: The info fields s3fs gives for a listed object (the listing's digest reads them).
FIELDS = ("name", "Key", "size", "Size", "ETag", "LastModified", "StorageClass", "type")


@pytest.fixture(scope="module")
def tree_bucket(s3_server: S3Server) -> str:
    """A bucket holding :data:`TREE` and :data:`MANY` objects under ``many/``."""
    bucket = s3_server.new_bucket("direct")
    for key, data in TREE.items():
        s3_server.put(bucket, key, data)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3_server.put(bucket, f"many/{i:05d}.txt", str(i)), range(MANY)))
    return bucket


@pytest.fixture
def both(s3_server: S3Server) -> Iterator[tuple[DirectS3FileSystem, Any]]:
    """The direct filesystem and s3fs's, with the same settings; closed afterwards."""
    settings = s3_server.storage_options()
    direct = open_direct_s3(settings)
    s3fs = open_filesystem("s3", settings)
    assert type(s3fs).__module__.startswith("s3fs")
    yield direct, s3fs
    close_filesystem(direct)
    close_filesystem(s3fs)


def fields(info: dict[str, Any]) -> dict[str, Any]:
    """The :data:`FIELDS` of one info dictionary."""
    return {name: info.get(name) for name in FIELDS}


def error_of(call: Any) -> BaseException:
    """What ``call()`` raised (it must raise)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - compared by the caller
        call()
    return caught.value


class TestListing:
    """``find`` and ``list_tree`` answer as s3fs's do."""

    @pytest.mark.parametrize(
        "path",
        [
            "",
            "/flows",
            "/flows/",
            "/flows/pkg",
            "/flows/a.py",
            "/flows/empty.txt",
            "/many",
            "/no-such-prefix",
        ],
    )
    def test_find_lists_what_s3fs_lists(
        self, both: tuple[DirectS3FileSystem, Any], tree_bucket: str, path: str
    ) -> None:
        """Same names, and for each object the same name, key, size, ETag, time and class."""
        direct, s3fs = both
        ours = direct.find(f"s3://{tree_bucket}{path}", detail=True)
        theirs = s3fs.find(f"s3://{tree_bucket}{path}", detail=True)
        assert sorted(ours) == sorted(theirs)
        assert {n: fields(i) for n, i in ours.items()} == {n: fields(i) for n, i in theirs.items()}
        if path == "/many":
            assert len(ours) == MANY  # both pages

    @pytest.mark.parametrize(
        ("path", "single_object"),
        [("", False), ("/flows", False), ("/flows/a.py", False), ("/flows/pkg/b.py", True)],
    )
    def test_the_listing_and_its_digest_are_s3fs_ones(
        self,
        both: tuple[DirectS3FileSystem, Any],
        tree_bucket: str,
        path: str,
        single_object: bool,
    ) -> None:
        """``list_tree`` gives equal entries, remote names and listed MD5s through either."""
        direct, s3fs = both
        url = f"s3://{tree_bucket}{path}"
        ours = list_tree(direct, url, 4, single_object=single_object)
        assert ours == list_tree(s3fs, url, 4, single_object=single_object)
        assert ours.entries

    @pytest.mark.parametrize("path", ["/flows/a.py", "/flows/pkg", "/flows/pkg/", ""])
    def test_info_is_s3fs_info(
        self, both: tuple[DirectS3FileSystem, Any], tree_bucket: str, path: str
    ) -> None:
        """An object, a folder (listed) and the bucket itself are described alike."""
        direct, s3fs = both
        ours, theirs = direct.info(tree_bucket + path), s3fs.info(tree_bucket + path)
        names = ("name", "type", "size", "ETag", "StorageClass")
        assert {n: ours.get(n) for n in names} == {n: theirs.get(n) for n in names}


class TestRequesterPays:
    """``requester_pays`` reaches every operation that takes it, and no other."""

    def test_a_requester_pays_source_lists_looks_up_and_downloads(
        self, s3_server: S3Server, tree_bucket: str, tmp_path: Path
    ) -> None:
        """The bucket itself (HeadBucket takes no RequestPayer), a listing and a download.

        Control: s3fs with the same settings describes the bucket the same way.
        """
        settings = {**s3_server.storage_options(), "requester_pays": True}
        direct = open_direct_s3(settings)
        s3fs = open_filesystem("s3", settings)
        try:
            assert direct.info(tree_bucket)["type"] == s3fs.info(tree_bucket)["type"]
            assert sorted(direct.find(f"{tree_bucket}/flows")) == sorted(
                s3fs.find(f"{tree_bucket}/flows")
            )
            direct.get_file(f"{tree_bucket}/flows/a.py", str(tmp_path / "a.py"))
        finally:
            close_filesystem(direct)
            close_filesystem(s3fs)
        assert (tmp_path / "a.py").read_bytes() == TREE["flows/a.py"]


class TestErrors:
    """Missing things and refused credentials raise what s3fs raises, with its message."""

    @pytest.mark.parametrize("path", ["no-such-bucket-direct/flows", "{bucket}/missing.py"])
    def test_missing_raise_file_not_found(
        self, both: tuple[DirectS3FileSystem, Any], tree_bucket: str, path: str
    ) -> None:
        """A missing bucket (listing) or object (lookup): FileNotFoundError, same text."""
        direct, s3fs = both
        target = path.format(bucket=tree_bucket)
        call = direct.find if "no-such-bucket" in target else direct.info
        theirs_call = s3fs.find if "no-such-bucket" in target else s3fs.info
        ours = error_of(lambda: call(target))
        theirs = error_of(lambda: theirs_call(target))
        assert type(ours) is type(theirs) is FileNotFoundError
        assert str(ours) == str(theirs)

    def test_a_wrong_secret_raises_permission_error(
        self, s3_server: S3Server, tree_bucket: str
    ) -> None:
        """A refused signature: PermissionError with the store's message, through either."""
        with s3_server.enable_auth():
            settings = {**s3_server.storage_options(), "secret": "not-the-secret"}
            direct = open_direct_s3(settings)
            s3fs = open_filesystem("s3", settings)
            try:
                ours = error_of(lambda: direct.find(f"{tree_bucket}/flows"))
                theirs = error_of(lambda: s3fs.find(f"{tree_bucket}/flows"))
            finally:
                close_filesystem(direct)
                close_filesystem(s3fs)
        assert type(ours) is type(theirs) is PermissionError
        assert str(ours) == str(theirs)
        assert "not-the-secret" not in str(ours)


class TestDownloads:
    """``get_file`` writes the object's bytes, resuming a body cut short."""

    def test_downloads_are_the_objects(
        self, both: tuple[DirectS3FileSystem, Any], tree_bucket: str, tmp_path: Path
    ) -> None:
        """Every object of the tree, empty and non-ASCII ones included, arrives whole."""
        direct, _ = both
        files = {key: data for key, data in TREE.items() if not key.endswith("/")}
        for index, (key, data) in enumerate(files.items()):
            target = tmp_path / str(index)
            direct.get_file(f"{tree_bucket}/{key}", str(target))
            assert target.read_bytes() == data

    def test_a_missing_object_is_file_not_found(
        self, both: tuple[DirectS3FileSystem, Any], tree_bucket: str, tmp_path: Path
    ) -> None:
        """Downloading a key that is gone raises FileNotFoundError."""
        direct, _ = both
        with pytest.raises(FileNotFoundError):
            direct.get_file(f"{tree_bucket}/flows/gone.py", str(tmp_path / "gone"))

    def test_a_body_cut_short_is_resumed_where_it_stopped(
        self, s3_server: S3Server, tmp_path: Path
    ) -> None:
        """The connection is reset after 1 MB of 3 MB: a ranged GET fetches the rest.

        Control: the proxy saw two GETs of the object, the first one cut.
        """
        bucket = s3_server.new_bucket("cut")
        data = os.urandom(3 * 1024 * 1024)
        s3_server.put(bucket, "big.bin", data)
        proxy = FaultProxy(s3_server.port)
        proxy.start()
        direct = open_direct_s3({**s3_server.storage_options(), "endpoint_url": proxy.url})
        try:
            cut = proxy.hold(
                lambda method, path: method == "GET", after_bytes=1024 * 1024, cut=True
            )
            direct.get_file(f"{bucket}/big.bin", str(tmp_path / "big"))
            assert cut.reached.is_set()
            gets = [r for r in proxy.requests("GET") if "big.bin" in r.path]
        finally:
            close_filesystem(direct)
            proxy.stop()
        assert (tmp_path / "big").read_bytes() == data
        assert [r.fault for r in gets] == ["cut", ""]


class TestChoice:
    """Which settings a pull takes through the direct client, and which through s3fs."""

    @pytest.mark.parametrize(
        "settings",
        [
            {},
            {"key": "k", "secret": "s", "token": "t", "endpoint_url": "http://127.0.0.1:1"},
            {"anon": True, "use_ssl": False, "requester_pays": True, "profile": "p"},
            {"client_kwargs": {"region_name": "eu-west-1"}, "config_kwargs": {"retries": {}}},
        ],
    )
    def test_settings_s3fs_gives_botocore_go_direct(self, settings: dict[str, Any]) -> None:
        """Credentials, endpoint, anon, TLS, requester pays, profile, client and config."""
        assert direct_settings("s3", "s3://bucket/flows", settings)

    @pytest.mark.parametrize(
        ("url", "settings"),
        [
            ("s3://bucket/flows", {"version_aware": True}),
            ("s3://bucket/flows", {"s3_additional_kwargs": {"SSECustomerKey": "x"}}),
            ("s3://bucket/flows", {"key": 5}),
            ("s3://bucket/flows", {"client_kwargs": "region"}),
            ("s3://bucket/flows", {"anon": "yes"}),
            ("s3://bucket/a.py?versionId=1", {}),
            ("gs://bucket/flows", {}),
        ],
    )
    def test_other_settings_go_through_s3fs(self, url: str, settings: dict[str, Any]) -> None:
        """s3fs-only settings, wrongly typed values, object versions, other protocols."""
        assert not direct_settings(url.split(":", 1)[0], url, settings)

    def test_an_s3_pull_lists_and_downloads_directly(
        self, s3_server: S3Server, tree_bucket: str, tmp_path: Path
    ) -> None:
        """A RemoteStorage pull of s3:// publishes the tree; its filesystem is the direct one."""
        storage = RemoteStorage(f"s3://{tree_bucket}/flows", **s3_server.storage_options())
        storage.set_base_path(tmp_path)
        anyio.run(storage.pull_code)
        published = {
            str(p.relative_to(storage.destination)): p.read_bytes()
            for p in storage.destination.rglob("*")
            if p.is_file()
        }
        expected = {k.removeprefix("flows/"): v for k, v in TREE.items() if k.startswith("flows/")}
        del expected["pkg/"]
        assert published == expected
        with filesystem(
            "s3", s3_server.storage_options(), reads_only=f"s3://{tree_bucket}/flows"
        ) as fs:
            assert isinstance(fs, DirectS3FileSystem)

    def test_the_pull_command_loads_no_s3fs_stack(
        self, s3_server: S3Server, tree_bucket: str, tmp_path: Path, monkeypatch: Any
    ) -> None:
        """``runner-storage pull s3://...`` loads neither s3fs, aiobotocore nor aiohttp."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
        modules, output = run_child(
            run_cli("pull", f"s3://{tree_bucket}/flows", "--dest", str(tmp_path))
        )
        assert "exit 0" in output
        assert [p.read_bytes() for p in tmp_path.rglob("a.py")] == [TREE["flows/a.py"]]
        assert loaded(modules, ["s3fs", "aiobotocore", "aiohttp"]) == []
        assert set(loaded(modules, OBJECT_STORES)) == {"fsspec", "botocore"}


class TestTimestamps:
    """Response headers' HTTP dates and listings' ISO 8601 times, read fast and exactly."""

    @pytest.mark.parametrize(
        "value",
        [
            "Fri, 04 Dec 2026 01:20:33 GMT",
            "Mon, 29 Feb 2016 23:59:59 GMT",
            "2024-05-01T12:00:00.000Z",
            "2024-05-01T12:00:00+02:00",
            "1714564800",
        ],
    )
    def test_timestamps_are_botocores(self, value: str) -> None:
        """Every form S3 uses gives the datetime botocore's own parser gives."""
        parsed = _parse_timestamp(value)
        assert parsed == parse_timestamp(value)
        assert parsed.tzinfo is not None
