"""KVServerStorageBlock: Prefect 2.0's KV protocol, against a real HTTP server.

The server (``servers/kv.py``) stores what is POSTed by key and answers GETs, as Prefect's
reference server did; it records every request, so the tests see what went over the wire.
"""

from __future__ import annotations

import json
import socket
import time
import traceback
import uuid
from collections.abc import Iterator

import anyio
import pytest
from servers.kv import KVServer
from servers.procs import LOOPBACK

from runner_storage.blocks.storage import KVServerStorageBlock
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    exception_chain,
)

pytestmark = pytest.mark.anyio


def one_line(error: BaseException) -> str:
    """The message of ``error``, which must be a single line."""
    text = str(error)
    assert text
    assert "\n" not in text, text
    return text


@pytest.fixture
def block(kv_server: KVServer) -> KVServerStorageBlock:
    """A block of the test's KV server."""
    return KVServerStorageBlock(kv_server.api_address)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        yield listener.getsockname()[1]


class TestProtocol:
    """What goes over the wire, and what comes back."""

    async def test_text_round_trips_exactly(
        self, kv_server: KVServer, block: KVServerStorageBlock
    ) -> None:
        """UTF-8 text, JSON-looking text and nothing at all read back byte for byte."""
        for data in ["h\u00e9llo \u2603\n".encode(), b'{"a": [1, 2]}', b'\r\n\t\\"', b""]:
            key = await block.write(data)
            assert await block.read(key) == data

    async def test_write_posts_the_text_as_a_json_string(
        self, kv_server: KVServer, block: KVServerStorageBlock
    ) -> None:
        """POST {api_address}/{uuid hex} with the text as a JSON string, as Prefect's did."""
        key = await block.write(b'{"x": 1}')
        assert uuid.UUID(hex=key).version == 4
        (request,) = kv_server.requests
        assert (request.method, request.key) == ("POST", key)
        assert json.loads(request.body) == '{"x": 1}'
        assert kv_server.store[key] == request.body

    async def test_data_that_is_not_utf8_is_refused(
        self, kv_server: KVServer, block: KVServerStorageBlock
    ) -> None:
        """Binary data is refused in one line saying why, and nothing is sent."""
        with pytest.raises(ConfigurationError, match="not UTF-8") as caught:
            await block.write(b"ok \xff\xfe")
        assert "offset 3" in one_line(caught.value)
        assert kv_server.requests == []

    async def test_missing_key_is_not_found(
        self, kv_server: KVServer, block: KVServerStorageBlock
    ) -> None:
        """A 404, and Prefect's server's ``null`` for a key it lacks, both name the key."""
        kv_server.store["held-as-null"] = b"null"
        for key in ("never-written", "held-as-null"):
            with pytest.raises(NotFoundError) as caught:
                await block.read(key)
            assert f"'{key}'" in one_line(caught.value)

    async def test_a_value_that_is_not_a_json_string(
        self, kv_server: KVServer, block: KVServerStorageBlock
    ) -> None:
        """A number or an object under a key is a SourceError, not silently turned into text."""
        kv_server.store["number"] = b"42"
        with pytest.raises(SourceError, match="JSON string") as caught:
            await block.read("number")
        one_line(caught.value)

    @pytest.mark.parametrize("key", ["../admin", "a/b", "/abs", "", "http://elsewhere/x"])
    async def test_keys_stay_under_the_api_address(
        self, kv_server: KVServer, block: KVServerStorageBlock, key: str
    ) -> None:
        """A key that is not one path segment is refused before any request."""
        with pytest.raises(ConfigurationError, match="give a key that write"):
            await block.read(key)
        assert kv_server.requests == []

    @pytest.mark.parametrize(
        "address", ["ftp://127.0.0.1/storage", "not a url", "http://", "http://h/s?token=x"]
    )
    def test_api_address_must_be_http(self, address: str) -> None:
        """Another scheme, no host, or a query is refused when the block is made."""
        with pytest.raises(ConfigurationError) as caught:
            KVServerStorageBlock(address)
        one_line(caught.value)


class TestFailures:
    """Failures of the server or the network, one line, credentials nowhere."""

    async def test_login_in_the_address(self, kv_server: KVServer) -> None:
        """``user:password@`` is sent as Basic auth; a wrong one is AuthenticationError.

        The password is in no message, chained error, traceback or repr.
        """
        password = f"s3cr3t-{uuid.uuid4().hex}"
        kv_server.credentials = ("deploy", password)
        good = KVServerStorageBlock(kv_server.address_with_login("deploy", password))
        assert await good.read(await good.write(b"hi")) == b"hi"
        assert all(
            r.authorization and r.authorization.startswith("Basic ") for r in kv_server.requests
        )

        wrong_password = f"wrong-{uuid.uuid4().hex}"
        wrong = KVServerStorageBlock(kv_server.address_with_login("deploy", wrong_password))
        with pytest.raises(AuthenticationError) as caught:
            await wrong.write(b"hi")
        one_line(caught.value)
        chain = list(exception_chain(caught.value))
        texts = [*map(str, chain), *map(repr, chain), repr(wrong), repr(good)]
        texts.append("".join(traceback.format_exception(caught.value)))
        assert not any(password in t or wrong_password in t for t in texts)

    async def test_no_server_is_transient(self, kv_server: KVServer) -> None:
        """Nothing listening: TransientSourceError (retry later), one line."""
        address = kv_server.api_address
        kv_server.stop()
        with pytest.raises(TransientSourceError) as caught:
            await KVServerStorageBlock(address).read("abc")
        one_line(caught.value)

    async def test_a_cancelled_read_returns_at_once(self, silent_port: int) -> None:
        """A server that never answers does not hold a cancelled caller."""
        block = KVServerStorageBlock(f"http://{LOOPBACK}:{silent_port}/storage")
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            await block.read("abc")
        assert time.monotonic() - started < 3
