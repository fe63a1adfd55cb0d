"""RemoteStorage over ftp://, against a real FTP server (pyftpdlib).

An FTP pull lists with MLSD, one command per folder, and takes a file as changed when its
size or its MLSD modification time changes. fsspec's FTP filesystem is one connection, so
every pull has its own and downloads one file at a time; two sources of one server pulled
at once still publish correct trees. A server without MLSD is refused in one line, and a
password never shows in an error, a traceback or ``state.json``.
"""

from __future__ import annotations

import os
import secrets
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
import pytest
from remote_sources import pull, state_text, tree
from servers.ftp import FTPServer

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    TransientSourceError,
)
from runner_storage.remote import RemoteStorage
from runner_storage.secrets import Secret

#: A tree with a nested folder, an empty file and bytes that are not text.
FILES = {
    "flow.py": b"print('hello')\n",
    "empty.txt": b"",
    "pkg/__init__.py": b"VALUE = 1\n",
    "pkg/deep/data.bin": bytes(range(256)) * 4,
}
#: An mtime in the past, so that a rewrite can be given a later one.
EARLIER = time.time() - 3600


def write_tree(server: FTPServer, folder: str, files: dict[str, bytes]) -> None:
    """Write ``files`` under ``folder`` on the server, all with the same old mtime."""
    for relative, data in files.items():
        server.write(folder, relative, data, mtime=EARLIER)


def storage_of(server: FTPServer, folder: str, base: Path, **settings: Any) -> RemoteStorage:
    """A RemoteStorage of ``ftp://.../FOLDER`` published as ``BASE/FOLDER``."""
    storage = RemoteStorage(server.url(folder), name=folder, **{**server.settings(), **settings})
    storage.set_base_path(base)
    return storage


def one_line(text: str) -> str:
    """The single line of ``text``; fails if there are more."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


class TestPull:
    """Pulls of an FTP folder: what is published and what the server is asked."""

    def test_first_pull_publishes_the_tree(self, ftp_server: FTPServer, base: Path) -> None:
        """The first pull publishes every file, nested folders and empty files included."""
        folder = ftp_server.new_folder("first")
        write_tree(ftp_server, folder, FILES)
        storage = storage_of(ftp_server, folder, base)

        result = pull(storage)

        assert result.changed
        assert result.files_fetched == len(FILES)
        assert result.bytes_fetched == sum(map(len, FILES.values()))
        assert tree(storage.destination) == FILES

    def test_no_op_pull_is_one_listing_and_no_download(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """Pulling an unchanged folder lists each folder once (MLSD) and downloads nothing."""
        folder = ftp_server.new_folder("noop")
        write_tree(ftp_server, folder, FILES)
        storage = storage_of(ftp_server, folder, base)
        first = pull(storage)

        ftp_server.reset_commands()
        again = pull(storage)

        assert not again.changed
        assert again.revision == first.revision
        assert (again.files_fetched, again.bytes_fetched) == (0, 0)
        listed = ftp_server.commands("MLSD", under=folder)
        assert sorted(listed) == [f"/{folder}", f"/{folder}/pkg", f"/{folder}/pkg/deep"]
        assert ftp_server.count("RETR") == 0
        assert ftp_server.count("LIST") == 0

    def test_same_size_rewrite_with_a_later_mtime_is_downloaded(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """A file rewritten with the same size but a later mtime is fetched again, alone."""
        folder = ftp_server.new_folder("rewrite")
        write_tree(ftp_server, folder, FILES)
        storage = storage_of(ftp_server, folder, base)
        pull(storage)

        ftp_server.write(folder, "flow.py", b"print('HELLO')\n", mtime=EARLIER + 60)
        ftp_server.reset_commands()
        result = pull(storage)

        assert result.changed
        assert result.files_fetched == 1
        assert tree(storage.destination) == {**FILES, "flow.py": b"print('HELLO')\n"}
        assert ftp_server.commands("RETR") == [f"/{folder}/flow.py"]

    def test_removed_files_vanish(self, ftp_server: FTPServer, base: Path) -> None:
        """Files and folders deleted upstream are absent from the next version."""
        folder = ftp_server.new_folder("removed")
        write_tree(ftp_server, folder, FILES)
        storage = storage_of(ftp_server, folder, base)
        pull(storage)

        ftp_server.path(folder, "pkg/deep/data.bin").unlink()
        ftp_server.path(folder, "pkg/deep").rmdir()
        ftp_server.path(folder, "empty.txt").unlink()
        result = pull(storage)

        assert result.changed
        assert result.files_fetched == 0
        assert tree(storage.destination) == {
            "flow.py": FILES["flow.py"],
            "pkg/__init__.py": FILES["pkg/__init__.py"],
        }

    def test_percent_encoded_path_names_the_folder(self, ftp_server: FTPServer, base: Path) -> None:
        """``my%20flows`` in the URL is the folder ``my flows`` on the server."""
        folder = ftp_server.new_folder("my flows")
        write_tree(ftp_server, folder, FILES)
        storage = RemoteStorage(
            ftp_server.url(folder.replace(" ", "%20")), name="spaced", **ftp_server.settings()
        )
        storage.set_base_path(base)

        pull(storage)

        assert tree(storage.destination) == FILES

    def test_url_of_one_file_publishes_it_under_its_name(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """An ftp:// URL naming a file publishes that file alone, under its basename."""
        folder = ftp_server.new_folder("single")
        write_tree(ftp_server, folder, FILES)
        storage = RemoteStorage(
            ftp_server.url(f"{folder}/flow.py"), name="single", **ftp_server.settings()
        )
        storage.set_base_path(base)

        pull(storage)

        assert tree(storage.destination) == {"flow.py": FILES["flow.py"]}

    def test_missing_folder_is_not_found_and_publishes_nothing(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """A folder that does not exist is a NotFoundError naming the URL."""
        folder = f"missing-{secrets.token_hex(4)}"
        storage = storage_of(ftp_server, folder, base)

        with pytest.raises(NotFoundError) as caught:
            pull(storage)

        assert f"{ftp_server.url(folder)} was not found" in one_line(str(caught.value))
        assert not os.path.lexists(storage.destination)

    def test_server_that_is_down_is_transient(self, base: Path) -> None:
        """Nothing listening on the port is a TransientSourceError: the daemon retries."""
        storage = RemoteStorage("ftp://127.0.0.1:9/flows", name="down", username="u")
        storage.set_base_path(base)

        with pytest.raises(TransientSourceError) as caught:
            pull(storage)

        assert "cannot reach ftp://127.0.0.1:9/flows" in one_line(str(caught.value))


class TestCredentials:
    """The password, given as a setting or in the URL, never shows."""

    @pytest.mark.parametrize("as_secret", [True, False], ids=["Secret", "plain"])
    def test_wrong_password_is_authentication_error_without_the_password(
        self, ftp_server: FTPServer, base: Path, as_secret: bool
    ) -> None:
        """A rejected login is an AuthenticationError; the password is nowhere in sight."""
        folder = ftp_server.new_folder("auth")
        write_tree(ftp_server, folder, FILES)
        wrong = "wrong-" + secrets.token_hex(8)
        storage = storage_of(
            ftp_server, folder, base, password=Secret(wrong) if as_secret else wrong
        )

        with pytest.raises(AuthenticationError) as caught:
            pull(storage)

        message = one_line(str(caught.value))
        assert f"access to {ftp_server.url(folder)} was denied" in message
        assert "530" in message
        shown = "".join(traceback.format_exception(caught.value))
        assert wrong not in shown
        assert wrong not in state_text(storage, base)
        assert not os.path.lexists(storage.destination)

    def test_credentials_in_the_url_work_and_never_show(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """user:password in the URL logs in; repr, state.json and the step never show it."""
        folder = ftp_server.new_folder("inurl")
        write_tree(ftp_server, folder, FILES)
        url = ftp_server.url(folder).replace(
            "ftp://", f"ftp://{ftp_server.user}:{ftp_server.password}@"
        )
        storage = RemoteStorage(url, name=folder)
        storage.set_base_path(base)

        pull(storage)

        assert tree(storage.destination) == FILES
        assert ftp_server.password not in repr(storage)
        assert ftp_server.password not in state_text(storage, base)
        with pytest.raises(ConfigurationError, match="the URL holds a password"):
            storage.to_pull_step()


class TestWithoutMLSD:
    """A server that lacks MLSD cannot tell a same-size rewrite: it is refused."""

    def test_server_without_mlsd_is_one_clear_line_and_publishes_nothing(
        self, ftp_server_without_mlsd: FTPServer, base: Path
    ) -> None:
        """No silent fallback to LIST: one SourceError line naming MLSD, nothing published."""
        server = ftp_server_without_mlsd
        folder = server.new_folder("legacy")
        write_tree(server, folder, FILES)
        storage = storage_of(server, folder, base)
        server.reset_commands()

        with pytest.raises(SourceError) as caught:
            pull(storage)

        message = one_line(str(caught.value))
        assert f"the FTP server 127.0.0.1:{server.port} does not support MLSD (RFC 3659)" in (
            message
        )
        assert "enable MLSD on the server" in message
        assert server.count("LIST") == 0
        assert server.count("RETR") == 0
        assert not os.path.lexists(storage.destination)


class TestConcurrency:
    """fsspec's FTP filesystem is one connection: pulls never share one, nor downloads."""

    # Sharing the connection makes ftplib hang or fail; fail fast rather than at 120 s.
    @pytest.mark.timeout(60)
    def test_two_sources_of_one_server_pulled_concurrently_publish_correct_trees(
        self, ftp_server: FTPServer, base: Path
    ) -> None:
        """Two folders of one server, same credentials, pulled at once: both trees exact."""
        trees: dict[str, dict[str, bytes]] = {}
        for label in ("left", "right"):
            folder = ftp_server.new_folder(label)
            files = {f"part{n:02d}/blob.bin": os.urandom(96 * 1024) for n in range(12)}
            write_tree(ftp_server, folder, files)
            trees[folder] = files
        storages = [
            storage_of(ftp_server, folder, base, transfer_concurrency=8) for folder in trees
        ]

        async def pull_both() -> None:
            async with anyio.create_task_group() as group:
                for storage in storages:
                    group.start_soon(storage.pull_code)

        ftp_server.reset_commands()
        anyio.run(pull_both)

        for storage, (folder, files) in zip(storages, trees.items(), strict=True):
            assert tree(storage.destination) == files
            assert sorted(ftp_server.commands("RETR", under=folder)) == sorted(
                f"/{folder}/{relative}" for relative in files
            )


class TestConstruction:
    """ftp:// URLs are taken, checked when the storage is made."""

    def test_ftp_url_is_accepted_and_its_pull_step_needs_no_extra(self) -> None:
        """An ftp:// storage's pull step has the URL and placeholders, and no ``requires``."""
        storage = RemoteStorage(
            "ftp://files.example.com/flows",
            username="deploy",
            password=Secret.from_env("FTP_PASSWORD"),
        )

        step = storage.to_pull_step()

        assert step == {
            "prefect.deployments.steps.pull_from_remote_storage": {
                "url": "ftp://files.example.com/flows",
                "username": "deploy",
                "password": "{{ $FTP_PASSWORD }}",
            }
        }

    @pytest.mark.parametrize(
        ("url", "phrase"),
        [
            ("ftp:///flows", "the ftp:// URL names no server"),
            ("ftp://files.example.com:99999/flows", "is not a number from 1 to 65535"),
            ("ftp://files.example.com:port/flows", "is not a number from 1 to 65535"),
        ],
    )
    def test_ftp_url_without_a_server_or_with_a_bad_port_is_refused(
        self, url: str, phrase: str
    ) -> None:
        """A URL that cannot name an FTP server is a one-line ConfigurationError at once."""
        with pytest.raises(ConfigurationError) as caught:
            RemoteStorage(url)

        assert phrase in one_line(str(caught.value))
