"""LocalFileSystem and RemoteFileSystem: Prefect's filesystem blocks against real stores.

Every store the suite runs (moto S3, the GCS emulator, Azurite, a local folder, fsspec's
memory store; the HTTP file server for reads) gets the same project tree: a
``.prefectignore`` that leaves out logs and a build folder but brings one file back, and a
``.git`` folder that is never uploaded. Uploads are counted at the server (moto's and the
emulator's request logs).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import fsspec
import pytest
from daemon_process import cli, config_file
from remote_sources import AzureRequestLog, tree
from servers.azurite import AzuriteServer
from servers.gcs import GCSServer
from servers.http_files import HTTPFileServer
from servers.s3 import S3Server

from runner_storage import Secret
from runner_storage.blocks.adapter import BlockStorageAdapter
from runner_storage.blocks.filesystem_base import FileSystemBlock
from runner_storage.blocks.filesystems import LocalFileSystem, RemoteFileSystem
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    UnsafeContentError,
    exception_chain,
)

#: The project on disk, by relative path.
PROJECT = {
    ".prefectignore": b"*.log\nbuild/*\n!build/keep.txt\n",
    "flow.py": b"from pkg.util import run\nrun()\n",
    "pkg/__init__.py": b"# package\n",
    "pkg/util.py": b"def run():\n    return 1\n",
    "data/table.bin": bytes(range(256)) * 64,
    "run.log": b"noise\n",
    "build/out.o": b"\x7fELF",
    "build/keep.txt": b"kept by a negation\n",
    ".git/config": b"[remote]\n\turl = https://token-CANARY@example.com/x\n",
}
#: What the ignore rules keep of it.
KEPT = {
    path: PROJECT[path]
    for path in (
        ".prefectignore",
        "build/keep.txt",
        "data/table.bin",
        "flow.py",
        "pkg/__init__.py",
        "pkg/util.py",
    )
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The project tree, on local disk."""
    root = tmp_path / "project"
    for path, data in PROJECT.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@dataclass
class Store:
    """A block over one store, and how to count the uploads the store received."""

    kind: str
    block: FileSystemBlock
    uploads: Callable[[], int] | None = None

    def fetch(self, tmp_path: Path, from_path: str | None = None) -> dict[str, bytes]:
        """``get_directory`` into a new folder; the tree it holds."""
        out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
        out.mkdir()
        self.block.get_directory(from_path, str(out))
        return tree(out)


def s3_block(s3_server: S3Server, bucket: str, **settings: object) -> RemoteFileSystem:
    """A RemoteFileSystem of ``s3://bucket/flows`` on moto."""
    return RemoteFileSystem(
        f"s3://{bucket}/flows", settings={**s3_server.storage_options(), **settings}
    )


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store of the kind given by ``indirect`` parametrisation."""
    kind = request.param
    if kind == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = s3.new_bucket()
        yield Store(kind, s3_block(s3, bucket), lambda: s3.request_count("PUT", f"/{bucket}/"))
    elif kind == "gs":
        gcs: GCSServer = request.getfixturevalue("gcs_server")
        bucket = gcs.new_bucket()
        block = RemoteFileSystem(f"gs://{bucket}/flows", settings=gcs.storage_options())
        yield Store(
            kind, block, lambda: gcs.request_count("POST", f"/upload/storage/v1/b/{bucket}")
        )
    elif kind == "az":
        azurite: AzuriteServer = request.getfixturevalue("azurite_server")
        container = azurite.new_container()
        block = RemoteFileSystem(f"az://{container}/flows", azurite.storage_options())
        log = AzureRequestLog()  # Azurite keeps no access log: the client's own record
        with log.installed():
            yield Store(
                kind,
                block,
                lambda: sum(
                    method == "PUT" and f"/{container}/" in url for method, url in log.seen
                ),
            )
    elif kind == "memory":
        top = f"t{uuid.uuid4().hex[:12]}"
        yield Store(kind, RemoteFileSystem(f"memory://{top}/flows"))
        with contextlib.suppress(FileNotFoundError):
            fsspec.filesystem("memory").rm(f"/{top}", recursive=True)
    else:
        yield Store(kind, LocalFileSystem(tmp_path / "store" / "flows"))


EVERY_STORE = ["s3", "gs", "az", "memory", "local"]


class TestReadWrite:
    """read_path and write_path."""

    @pytest.mark.parametrize("store", EVERY_STORE, indirect=True)
    def test_round_trip(self, store: Store) -> None:
        """write_path then read_path gives the bytes back; a rewrite replaces them."""
        written = store.block.write_path("etl/config.json", b'{"a": 1}')
        assert written.endswith("/flows/etl/config.json")
        assert store.block.read_path("etl/config.json") == b'{"a": 1}'
        store.block.write_path("etl/config.json", b"{}")
        assert store.block.read_path(written) == b"{}"  # the returned path reads back too

    @pytest.mark.parametrize("store", ["s3", "memory", "local"], indirect=True)
    def test_a_missing_file_is_not_found(self, store: Store) -> None:
        """read_path of a missing file is NotFoundError, one line naming the path."""
        with pytest.raises(NotFoundError) as caught:
            store.block.read_path("etl/missing.json")
        assert str(caught.value).splitlines() == [str(caught.value)]
        assert "flows/etl/missing.json" in str(caught.value)

    def test_text_is_refused(self, tmp_path: Path) -> None:
        """write_path takes bytes: text is a ConfigurationError (a ValueError), nothing written."""
        block = LocalFileSystem(tmp_path)
        with pytest.raises(ValueError, match="takes bytes, not str"):
            block.write_path("a.txt", "text")  # type: ignore[arg-type]
        assert list(tmp_path.iterdir()) == []

    def test_a_local_write_is_never_seen_half_done(self, tmp_path: Path) -> None:
        """A reader racing 40 rewrites of 1 MiB sees only whole versions; no temporary stays."""
        block = LocalFileSystem(tmp_path)
        versions = (b"a" * (1 << 20), b"b" * (1 << 20))
        block.write_path("model.bin", versions[0])
        whole: list[bool] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                whole.append((tmp_path / "model.bin").read_bytes() in versions)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for index in range(40):
                block.write_path("model.bin", versions[index % 2])
        finally:
            done.set()
            reader.join()
        assert whole
        assert all(whole)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]

    def test_async_twins(self, tmp_path: Path, project: Path) -> None:
        """The ``a``-prefixed twins (Prefect 3's async names) do the same work, awaited."""
        block = RemoteFileSystem(f"memory://t{uuid.uuid4().hex[:12]}/flows")
        out = tmp_path / "out"
        out.mkdir()

        async def main() -> bytes:
            assert await block.aput_directory(str(project), "v1") == len(KEPT)
            await block.aget_directory("v1", str(out))
            await block.awrite_path("v1/extra.txt", b"extra")
            return await block.aread_path("v1/extra.txt")

        assert anyio.run(main) == b"extra"
        assert tree(out) == KEPT


class TestDirectories:
    """put_directory and get_directory."""

    @pytest.mark.parametrize("store", EVERY_STORE, indirect=True)
    def test_put_then_get_gives_the_tree_minus_ignored(
        self, store: Store, project: Path, tmp_path: Path
    ) -> None:
        """The tree comes back byte for byte minus ignored files and .git; the count is right."""
        assert store.block.put_directory(str(project), "release") == len(KEPT)
        assert store.fetch(tmp_path, "release") == KEPT

    @pytest.mark.parametrize("store", EVERY_STORE, indirect=True)
    def test_unchanged_files_are_not_uploaded_again(
        self, store: Store, project: Path, tmp_path: Path
    ) -> None:
        """A second put writes nothing; a same-size edit is found by checksum and uploaded alone.

        The listing proves content by the MD5 the store gives (S3's ETag, GCS's md5Hash,
        Azure's content_md5) or, on memory and local disk, by sha256 of both sides. Uploads
        are counted at the server (moto, the emulator) or the Azure client's request log.
        """
        store.block.put_directory(str(project), "release")
        before = store.uploads() if store.uploads else 0
        assert store.block.put_directory(str(project), "release") == 0
        if store.uploads:
            assert store.uploads() == before
        (project / "pkg" / "util.py").write_bytes(b"def run():\n    return 2\n")  # same size
        assert store.block.put_directory(str(project), "release") == 1
        if store.uploads:
            assert store.uploads() == before + 1
        assert store.fetch(tmp_path, "release")["pkg/util.py"] == b"def run():\n    return 2\n"

    @pytest.mark.parametrize("store", ["s3", "local"], indirect=True)
    def test_nothing_is_deleted_at_the_destination(
        self, store: Store, project: Path, tmp_path: Path
    ) -> None:
        """A file removed locally stays at the destination, as Prefect's put_directory leaves it."""
        store.block.put_directory(str(project), "release")
        (project / "flow.py").unlink()
        assert store.block.put_directory(str(project), "release") == 0
        assert store.fetch(tmp_path, "release") == KEPT

    @pytest.mark.parametrize("store", ["s3", "memory"], indirect=True)
    def test_an_ignore_file_given_replaces_the_prefectignore(
        self, store: Store, project: Path, tmp_path: Path
    ) -> None:
        """``ignore_file`` replaces the tree's own; .git stays out even when it says ``!.git``."""
        rules = tmp_path / "deploy-ignore"
        rules.write_text("*.py\n!.git/\n!.git\n")
        store.block.put_directory(str(project), "release", ignore_file=str(rules))
        expected = {p: d for p, d in PROJECT.items() if not p.endswith(".py")}
        del expected[".git/config"]
        assert store.fetch(tmp_path, "release") == expected

    def test_local_get_directory_honours_the_sources_prefectignore(
        self, project: Path, tmp_path: Path
    ) -> None:
        """LocalFileSystem.get_directory leaves out what the source's .prefectignore ignores."""
        out = tmp_path / "out"
        LocalFileSystem(project).get_directory(local_path=str(out))
        assert tree(out) == KEPT

    def test_local_copies_keep_the_executable_bit(self, project: Path, tmp_path: Path) -> None:
        """A script uploaded to or fetched from a LocalFileSystem stays executable."""
        script = project / "run.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o755)
        block = LocalFileSystem(str(tmp_path / "dest"))
        block.put_directory(str(project), "up")
        assert (tmp_path / "dest" / "up" / "run.sh").stat().st_mode & 0o111
        assert not (tmp_path / "dest" / "up" / "flow.py").stat().st_mode & 0o111
        block.get_directory("up", str(tmp_path / "back"))
        assert (tmp_path / "back" / "run.sh").stat().st_mode & 0o111

    def test_local_folder_onto_itself_or_into_itself(self, project: Path) -> None:
        """A folder copied onto itself is a no-op, as in Prefect; into itself, one refusing line."""
        block = LocalFileSystem(project)
        assert block.put_directory(str(project)) == 0
        with pytest.raises(ConfigurationError, match="is inside"):
            block.put_directory(str(project.parent), "inner")
        with pytest.raises(ConfigurationError, match="is inside"):
            block.get_directory(local_path=str(project / "copy"))

    @pytest.mark.parametrize("store", ["s3", "memory", "local"], indirect=True)
    def test_a_missing_folder_is_not_found(self, store: Store, tmp_path: Path) -> None:
        """get_directory of a missing folder is NotFoundError naming it; nothing is written."""
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(NotFoundError, match="nothing-here") as caught:
            store.block.get_directory("nothing-here", str(out))
        assert str(caught.value).splitlines() == [str(caught.value)]
        assert list(out.iterdir()) == []

    def test_a_symlink_out_of_the_tree_is_not_uploaded(
        self, s3_server: S3Server, project: Path, tmp_path: Path
    ) -> None:
        """A symlink to a file outside the folder is UnsafeContentError and nothing is uploaded."""
        (tmp_path / "credentials").write_text("aws_secret=CANARY\n")
        (project / "pkg" / "creds").symlink_to(tmp_path / "credentials")
        bucket = s3_server.new_bucket()
        with pytest.raises(UnsafeContentError, match=r"symlink pkg/creds -> .* points outside"):
            s3_block(s3_server, bucket).put_directory(str(project))
        assert s3_server.list_keys(bucket) == []

    def test_http_is_read_through_the_same_methods(
        self, http_file_server: HTTPFileServer, tmp_path: Path
    ) -> None:
        """A RemoteFileSystem over plain HTTP reads files and copies folders."""
        http_file_server.write("site/flows/a.py", "A = 1\n")
        http_file_server.write("site/flows/sub/b.py", "B = 2\n")
        block = RemoteFileSystem(http_file_server.url_for("site"))
        assert block.read_path("flows/a.py") == b"A = 1\n"
        assert Store("http", block).fetch(tmp_path, "flows/") == {
            "a.py": b"A = 1\n",
            "sub/b.py": b"B = 2\n",
        }


#: Paths that would leave ``s3://BUCKET/flows``, by the trick they use.
REMOTE_TRICKS = {
    "dot-dot": "../elsewhere/x",
    "deep-dot-dot": "a/../../x",
    "encoded-dot-dot": "a/%2e%2e/%2E%2E/x",
    "backslash": "a\\..\\x",
    "absolute": "/etc/passwd",
    "other-scheme": "gs://{bucket}/flows/x",
    "other-bucket": "s3://other-{bucket}/flows/x",
    "sibling-prefix": "s3://{bucket}/flows-evil/x",
    "dot-dot-in-url": "s3://{bucket}/flows/../x",
}


class TestEscapes:
    """Paths resolve under the base path; every way out is refused before any request."""

    @pytest.mark.parametrize("trick", REMOTE_TRICKS.values(), ids=REMOTE_TRICKS.keys())
    def test_remote_tricks_are_refused(
        self, trick: str, s3_server: S3Server, project: Path, tmp_path: Path
    ) -> None:
        """Each method refuses the path with one ConfigurationError line; moto sees no request."""
        bucket = s3_server.new_bucket()
        block = s3_block(s3_server, bucket)
        path = trick.format(bucket=bucket)
        s3_server.reset_requests()
        calls: list[Callable[[], object]] = [
            lambda: block.read_path(path),
            lambda: block.write_path(path, b"x"),
            lambda: block.get_directory(path, str(tmp_path)),
            lambda: block.put_directory(str(project), path),
        ]
        for call in calls:
            with pytest.raises(ConfigurationError) as caught:
                call()
            message = str(caught.value)
            assert message.splitlines() == [message]
            assert f"is not under the base path s3://{bucket}/flows" in message
        assert s3_server.requests() == []
        assert s3_server.list_keys(bucket) == []

    def test_local_tricks_are_refused(self, tmp_path: Path) -> None:
        """``..``, an absolute path outside, a sibling sharing the prefix, a URL: all refused."""
        base = tmp_path / "flows"
        (tmp_path / "flows-evil").mkdir()
        (tmp_path / "flows-evil" / "x").write_bytes(b"evil")
        block = LocalFileSystem(base)
        for path in ("../flows-evil/x", f"{base}/../flows-evil/x", f"{base}-evil/x", "/etc/passwd"):
            with pytest.raises(ConfigurationError, match="is not under the base path"):
                block.read_path(path)
            with pytest.raises(ConfigurationError, match="is not under the base path"):
                block.write_path(path, b"x")
        with pytest.raises(ConfigurationError, match="is a URL"):
            block.read_path("file:///etc/passwd")
        assert (tmp_path / "flows-evil" / "x").read_bytes() == b"evil"
        assert not base.exists()

    def test_a_symlink_under_the_base_leading_out_is_unsafe_content(self, tmp_path: Path) -> None:
        """A relative path that leaves only through a stored symlink is UnsafeContentError."""
        base = tmp_path / "flows"
        base.mkdir()
        (tmp_path / "outside").mkdir()
        (base / "link").symlink_to(tmp_path / "outside")
        with pytest.raises(UnsafeContentError, match="through a symlink"):
            LocalFileSystem(base).write_path("link/x", b"x")
        assert list((tmp_path / "outside").iterdir()) == []

    def test_full_paths_inside_the_base_are_accepted(
        self, s3_server: S3Server, tmp_path: Path
    ) -> None:
        """A full URL or absolute path inside the base path is taken, as Prefect takes it."""
        bucket = s3_server.new_bucket()
        remote = s3_block(s3_server, bucket)
        remote.write_path(f"s3://{bucket}/flows/a.txt", b"A")
        assert remote.read_path("a.txt") == b"A"
        local = LocalFileSystem(tmp_path)
        local.write_path(str(tmp_path / "b.txt"), b"B")
        assert local.read_path("b.txt") == b"B"

    def test_bad_base_paths_are_refused_at_construction(self) -> None:
        """No scheme, no bucket, file:// and an unknown protocol are one line each, when made."""
        for basepath, fragment in (
            ("bucket/flows", "has no scheme"),
            ("s3://", "names no bucket"),
            ("file:///srv/flows", "use LocalFileSystem"),
            ("s4://bucket/flows", "unknown protocol s4://"),
        ):
            with pytest.raises(ConfigurationError, match=fragment):
                RemoteFileSystem(basepath)
        with pytest.raises(ConfigurationError, match="use RemoteFileSystem"):
            LocalFileSystem("s3://bucket/flows")


def assert_not_leaked(error: BaseException, secret: str) -> None:
    """The secret is in no message, repr or traceback of ``error`` or what it chains."""
    text = "".join(traceback.format_exception(error))
    assert secret not in text
    assert all(secret not in f"{e!r} {e}" for e in exception_chain(error))


class TestCredentials:
    """Secrets: resolved at each call, never shown."""

    def test_wrong_credentials_are_one_line_and_leak_nothing(
        self, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, project: Path
    ) -> None:
        """A wrong secret is one AuthenticationError line; the fixed variable works next call."""
        bucket = s3_server.new_bucket()
        with s3_server.enable_auth() as (key, secret):
            wrong = f"wrong-{secret}"
            monkeypatch.setenv("FS_BLOCK_SECRET", wrong)
            block = s3_block(s3_server, bucket, key=key, secret=Secret.from_env("FS_BLOCK_SECRET"))
            for call in (
                lambda: block.read_path("a.txt"),
                lambda: block.write_path("a.txt", b"A"),
                lambda: block.put_directory(str(project)),
            ):
                with pytest.raises(AuthenticationError) as caught:
                    call()
                message = str(caught.value)
                assert message.splitlines() == [message]
                assert message.startswith(f"access to s3://{bucket}/flows")
                assert_not_leaked(caught.value, wrong)
            assert wrong not in repr(block)
            assert wrong not in repr(vars(block))

            monkeypatch.setenv("FS_BLOCK_SECRET", secret)  # rotated: no new block needed
            assert block.put_directory(str(project)) == len(KEPT)
            assert secret not in repr(vars(block))

    def test_a_wrong_azure_key_is_one_line(self, azurite_server: AzuriteServer) -> None:
        """A wrong account key in a plain-text connection string is refused without showing it."""
        container = azurite_server.new_container()
        wrong = azurite_server.wrong_connection_string()
        block = RemoteFileSystem(f"az://{container}/flows", {"connection_string": wrong})
        with pytest.raises(AuthenticationError) as caught:
            block.write_path("a.txt", b"A")
        assert str(caught.value).splitlines() == [str(caught.value)]
        account_key = wrong.split("AccountKey=")[1].split(";")[0]
        assert_not_leaked(caught.value, account_key)

    def test_repr_shows_no_secret(self) -> None:
        """The repr names the base path and the setting names: no value, no URL credentials."""
        block = RemoteFileSystem(
            "ftp://deploy:pw-CANARY@files.example/flows",
            settings={"password": "plain-CANARY", "timeout": 5},
        )
        assert repr(block) == (
            "RemoteFileSystem(basepath='ftp://files.example/flows',"
            " settings=['password', 'timeout'])"
        )
        assert block.redact("pw-CANARY and plain-CANARY") == "*** and ***"


class TestAdapter:
    """Both blocks pulled through BlockStorageAdapter publish the tree."""

    def test_a_local_filesystem_publishes(self, project: Path, tmp_path: Path) -> None:
        """The adapter publishes the folder minus what it ignores; a second pull is a no-op."""
        storage = BlockStorageAdapter(LocalFileSystem(project), name="flows")
        storage.set_base_path(tmp_path / "base")
        assert anyio.run(storage.pull_code).changed
        assert tree(storage.destination) == KEPT
        assert not anyio.run(storage.pull_code).changed
        assert repr(storage) == "BlockStorageAdapter('block:local-file-system/flows', name='flows')"

    def test_a_remote_filesystem_over_moto_publishes(
        self, s3_server: S3Server, project: Path, tmp_path: Path
    ) -> None:
        """What put_directory uploaded to moto, the adapter pulls from ``from_path``, published."""
        block = s3_block(s3_server, s3_server.new_bucket())
        block.put_directory(str(project), "release")
        storage = BlockStorageAdapter(block, name="flows", from_path="release")
        storage.set_base_path(tmp_path / "base")
        result = anyio.run(storage.pull_code)
        assert (result.changed, result.files_fetched) == (True, len(KEPT))
        assert tree(storage.destination) == KEPT


class TestDaemon:
    """A ``kind = "block"`` source through the real CLI."""

    def test_run_once_publishes_a_block_source(
        self, s3_server: S3Server, project: Path, tmp_path: Path
    ) -> None:
        """``run --once`` publishes a RemoteFileSystem block on moto, its secrets from variables."""
        bucket = s3_server.new_bucket()
        with s3_server.enable_auth() as (key, secret):
            s3_block(s3_server, bucket).put_directory(str(project), "release")
            config = config_file(
                tmp_path,
                '[[sources]]\nkind = "block"\nname = "flows"\nblock = "RemoteFileSystem"\n'
                f'basepath = "s3://{bucket}/flows"\nfrom_path = "release"\n'
                'settings = { key = { env = "BLOCK_KEY" }, secret = { env = "BLOCK_SECRET" },'
                f' endpoint_url = "{s3_server.endpoint_url}" }}\n',
            )
            result = cli(
                "run",
                "--once",
                "--config",
                str(config),
                env={"BLOCK_KEY": key, "BLOCK_SECRET": secret},
            )
        assert result.returncode == 0, result.stdout + result.stderr
        assert tree(tmp_path / "root" / "flows") == KEPT
        assert secret not in result.stdout + result.stderr

    @pytest.mark.parametrize(
        ("source", "line"),
        [
            (
                'kind = "block"\nname = "flows"\nblock = "S3Bucket"\nbasepath = "s3://b/flows"',
                "sources[0].block: Input should be 'LocalFileSystem' or 'RemoteFileSystem'",
            ),
            (
                'kind = "block"\nname = "flows"\nblock = "LocalFileSystem"\nbasepath = "/srv"\n'
                'settings = { key = "k" }',
                "sources[0].settings: only applies to RemoteFileSystem blocks",
            ),
            (
                'kind = "block"\nname = "flows"\nblock = "RemoteFileSystem"\n'
                'basepath = "s3://b/flows"\nsource = "s3://b/flows"',
                "sources[0]: source does not apply to block sources",
            ),
            (
                'kind = "block"\nname = "flows"\nblock = "RemoteFileSystem"\n'
                'basepath = "s3://b/flows"\nbranch = "main"',
                "sources[0].branch: only applies to git sources, and 's3://b/flows' is block",
            ),
            (
                'kind = "block"\nname = "flows"\nblock = "RemoteFileSystem"\nbasepath = "b/flows"',
                "sources[0] (b/flows): the basepath 'b/flows' has no scheme",
            ),
            (
                'kind = "block"\nname = "flows"\nblock = "RemoteFileSystem"\n'
                'basepath = "s3://b/flows"\nfrom_path = "../other"',
                "sources[0] (s3://b/flows): path '../other' is not under the base path",
            ),
            (
                'kind = "block"\nblock = "LocalFileSystem"\nbasepath = "/srv"',
                "sources[0].name: Field required (add it)",
            ),
            (
                'name = "flows"\nblock = "LocalFileSystem"\nbasepath = "/srv"',
                'sources[0].kind: a source that names a block needs kind = "block" (add it)',
            ),
        ],
        ids=[
            "unknown-block",
            "settings-on-local",
            "source-given",
            "git-option",
            "no-scheme",
            "from-path-escapes",
            "no-name",
            "no-kind",
        ],
    )
    def test_an_invalid_block_source_is_one_line_exit_2(
        self, tmp_path: Path, source: str, line: str
    ) -> None:
        """Each mistake is one line naming the field and what to do; exit 2, nothing published."""
        config = config_file(tmp_path, f"[[sources]]\n{source}\n")
        result = cli("run", "--once", "--config", str(config))
        assert result.returncode == 2, result.stdout + result.stderr
        (only,) = result.stderr.strip().splitlines()
        assert only.startswith(f"runner-storage: {line}"), only
        assert not (tmp_path / "root").exists()
