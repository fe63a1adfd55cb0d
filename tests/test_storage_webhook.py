"""Prefect 1's ``Webhook`` storage, against a real HTTP server that stores and answers flows.

The server (``servers/webhook.py``) records every request with the status it answered, so
the tests see what went over the wire: the templated values filled in, the validators
sent, the 304s, the uploads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import traceback
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from servers.procs import LOOPBACK
from servers.webhook import WebhookServer

from runner_storage.deployments.runner import run_pull_steps
from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    exception_chain,
)
from runner_storage.publish import SourceLayout
from runner_storage.secrets import Secret
from runner_storage.steps.blockfile import BlockFile
from runner_storage.steps.prefect_yaml import Deployment, PullStep, StepContext
from runner_storage.storage import Webhook
from runner_storage.storage.webhook import PULL_WEBHOOK_STEP, pull_webhook

pytestmark = pytest.mark.anyio

SCRIPT = b"from prefect import flow\n\n@flow\ndef etl():\n    return 1\n"
FLOW = "/flows/etl.py"


def one_line(error: BaseException) -> str:
    """The message of ``error``, which must be a single non-empty line."""
    text = str(error)
    assert text
    assert "\n" not in text, text
    return text


def canary() -> str:
    """A value that must never show up anywhere we write or say."""
    return f"canary-{uuid.uuid4().hex}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    path = tmp_path / "base"
    path.mkdir()
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A secrets directory, named by ``RUNNER_STORAGE_SECRETS_DIR``."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    monkeypatch.setenv("RUNNER_STORAGE_SECRETS_DIR", str(folder))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    return folder


@pytest.fixture
def server(webhook_server: WebhookServer) -> WebhookServer:
    """The test's flow server, serving :data:`SCRIPT` at :data:`FLOW` without validators."""
    webhook_server.put(FLOW, SCRIPT)
    return webhook_server


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def webhook(
    base: Path,
    get: dict[str, Any],
    method: str = "GET",
    *,
    build: dict[str, Any] | None = None,
    build_method: str | None = None,
    **options: Any,
) -> Webhook:
    """A Webhook publishing under ``base``."""
    storage = Webhook(build, build_method, get, method, **options)
    storage.set_base_path(base)
    return storage


def versions(storage: Webhook) -> list[str]:
    """The version directories the storage keeps."""
    folder = SourceLayout(storage.destination.parent, storage.name).versions
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def state_text(storage: Webhook) -> str:
    """The storage's ``state.json``, as text."""
    layout = SourceLayout(storage.destination.parent, storage.name)
    return layout.state_file.read_text(encoding="utf-8")


def assert_nowhere_under(base: Path, *values: str) -> None:
    """No file under ``base`` (metadata, manifests, versions) holds any of ``values``."""
    checked = 0
    for path in base.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            checked += 1
            for value in values:
                assert value.encode() not in content, f"{value} found in {path}"
    assert checked, "nothing was written under the base path"


def assert_not_in_error(error: BaseException, *values: str) -> None:
    """Neither the message nor the traceback (with its chain) of ``error`` holds ``values``."""
    text = "".join(traceback.format_exception(error))
    text += " ".join(str(e) for e in exception_chain(error))
    for value in values:
        assert value not in text


class TestTemplating:
    """Prefect 1's templates: ``$VAR`` / ``${VAR}`` / ``$$``, from env, then secrets."""

    async def test_env_secret_file_and_prefect1_secret_arrive_filled(
        self,
        server: WebhookServer,
        base: Path,
        secrets_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Headers, params and nested json/list strings arrive with every form filled in."""
        monkeypatch.setenv("HEADER_TOKEN", "from-env")
        (secrets_dir / "DIR_TOKEN").write_text("from-file\n")
        monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__CTX_TOKEN", "from-prefect1")
        server.required_headers = {"Authorization": "Bearer from-env"}
        storage = webhook(
            base,
            {
                "url": server.url(FLOW),
                "headers": {"Authorization": "Bearer ${HEADER_TOKEN}", "X-Cost": "$$5"},
                "params": {"key": "$DIR_TOKEN", "many": ["a", "${CTX_TOKEN}"], "none": None},
                "json": {"nested": {"list": ["${CTX_TOKEN}", 1, True]}, "plain": "x$$y"},
            },
            "POST",
        )
        result = await storage.pull_code()
        (request,) = server.requests
        assert request.status == 200
        assert request.method == "POST"
        assert request.headers["authorization"] == "Bearer from-env"
        assert request.headers["x-cost"] == "$5"
        assert request.query == {"key": ["from-file"], "many": ["a", "from-prefect1"]}
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.body) == {
            "nested": {"list": ["from-prefect1", 1, True]},
            "plain": "x$y",
        }
        assert result.changed
        assert storage.flow_path.read_bytes() == SCRIPT

    async def test_the_environment_comes_before_secrets(
        self, server: WebhookServer, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As Prefect 1: ``$NAME`` set in the environment wins over the secret ``NAME``."""
        monkeypatch.setenv("ORDER", "environment")
        monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__ORDER", "secret")
        monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__ONLY_SECRET", "secret")
        storage = webhook(
            base, {"url": server.url(FLOW), "headers": {"X-A": "$ORDER", "X-B": "$ONLY_SECRET"}}
        )
        await storage.pull_code()
        (request,) = server.requests
        assert (request.headers["x-a"], request.headers["x-b"]) == ("environment", "secret")

    async def test_an_unknown_name_is_one_line_naming_it(
        self, server: WebhookServer, base: Path, secrets_dir: Path
    ) -> None:
        """Nothing is sent; the error (and state.json) name the template and where it is."""
        storage = webhook(
            base, {"url": server.url(FLOW), "headers": {"X-Api-Key": "${NOT_SET_ANYWHERE}"}}
        )
        with pytest.raises(CredentialsError) as caught:
            await storage.pull_code()
        message = one_line(caught.value)
        assert "NOT_SET_ANYWHERE" in message
        assert "get_flow_request_kwargs['headers']['X-Api-Key']" in message
        assert str(secrets_dir / "NOT_SET_ANYWHERE") in message
        assert server.requests == []
        assert json.loads(state_text(storage))["last_error"] == message

    def test_a_dollar_that_starts_no_template_is_refused_at_construction(
        self, server: WebhookServer, base: Path
    ) -> None:
        """``$5`` is one line pointing at ``$$``, as string.Template would refuse it."""
        with pytest.raises(ConfigurationError) as caught:
            webhook(base, {"url": server.url(FLOW), "headers": {"X-Price": "costs $5"}})
        message = one_line(caught.value)
        assert "['headers']['X-Price']" in message
        assert "$$" in message

    async def test_a_rotated_secret_is_sent_at_the_next_pull(
        self, server: WebhookServer, base: Path, secrets_dir: Path
    ) -> None:
        """Templates are rendered at every pull: a rewritten secret file is used next time."""
        (secrets_dir / "ROTATING").write_text("first-value")
        storage = webhook(
            base, {"url": server.url(FLOW), "headers": {"Authorization": "Bearer $ROTATING"}}
        )
        server.required_headers = {"Authorization": "Bearer first-value"}
        await storage.pull_code()
        (secrets_dir / "ROTATING").write_text("second-value")
        server.required_headers = {"Authorization": "Bearer second-value"}
        result = await storage.pull_code()
        assert [r.headers["authorization"] for r in server.requests] == [
            "Bearer first-value",
            "Bearer second-value",
        ]
        assert [r.status for r in server.requests] == [200, 200]
        assert not result.changed


class TestNoOps:
    """Validators make a no-op one 304; without them the body's sha256 decides."""

    async def test_etag_makes_the_next_pull_a_304(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """The second GET carries If-None-Match, the server answers 304, nothing is new."""
        webhook_server.put(FLOW, SCRIPT, etag='"v1"')
        storage = webhook(base, {"url": webhook_server.url(FLOW)})
        first = await storage.pull_code()
        live = os.readlink(storage.destination)
        second = await storage.pull_code()
        one, two = webhook_server.requests
        assert "if-none-match" not in one.headers
        assert two.headers["if-none-match"] == '"v1"'
        assert two.status == 304
        assert first.changed
        assert not second.changed
        assert second.revision == first.revision == hashlib.sha256(SCRIPT).hexdigest()
        assert os.readlink(storage.destination) == live
        assert len(versions(storage)) == 1

    async def test_last_modified_is_sent_back_as_if_modified_since(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """Last-Modified comes back verbatim as If-Modified-Since, and a 304 is a no-op."""
        resource = webhook_server.put(
            FLOW, SCRIPT, last_modified=datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
        )
        storage = webhook(base, {"url": webhook_server.url(FLOW)})
        await storage.pull_code()
        result = await storage.pull_code()
        _, second = webhook_server.requests
        assert second.headers["if-modified-since"] == resource.last_modified_text
        assert "if-none-match" not in second.headers
        assert second.status == 304
        assert not result.changed
        assert len(versions(storage)) == 1

    async def test_a_changed_file_with_a_new_etag_is_published(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """A new ETag answers 200 to the conditional GET, and the new script goes live."""
        webhook_server.put(FLOW, SCRIPT, etag='"v1"')
        storage = webhook(base, {"url": webhook_server.url(FLOW)})
        await storage.pull_code()
        webhook_server.put(FLOW, SCRIPT + b"# v2\n", etag='"v2"')
        result = await storage.pull_code()
        assert webhook_server.requests[1].headers["if-none-match"] == '"v1"'
        assert webhook_server.requests[1].status == 200
        assert result.changed
        assert storage.flow_path.read_bytes() == SCRIPT + b"# v2\n"
        third = await storage.pull_code()
        assert webhook_server.requests[2].headers["if-none-match"] == '"v2"'
        assert not third.changed

    async def test_without_validators_the_body_hash_decides(
        self, server: WebhookServer, base: Path
    ) -> None:
        """Same body: no new version (no conditional header sent); new body: a new version."""
        storage = webhook(base, {"url": server.url(FLOW)})
        await storage.pull_code()
        same = await storage.pull_code()
        assert not same.changed
        assert len(versions(storage)) == 1
        second = server.requests[1]
        assert second.status == 200
        assert not {"if-none-match", "if-modified-since"} & set(second.headers)
        server.put(FLOW, b"print('v2')\n")
        new = await storage.pull_code()
        assert new.changed
        assert new.revision == hashlib.sha256(b"print('v2')\n").hexdigest()
        assert storage.flow_path.read_bytes() == b"print('v2')\n"
        assert len(versions(storage)) == 2

    async def test_validators_are_not_reused_for_another_url(
        self, webhook_server: WebhookServer, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rolling ``$FLOW_VERSION`` back to an older file sends no If-Modified-Since."""
        old = datetime(2024, 1, 1, tzinfo=timezone.utc)
        webhook_server.put("/flows/v1.py", b"print(1)\n", last_modified=old)
        webhook_server.put("/flows/v2.py", b"print(2)\n", last_modified=old + timedelta(days=30))
        monkeypatch.setenv("FLOW_VERSION", "v2")
        storage = webhook(base, {"url": webhook_server.url("/flows/${FLOW_VERSION}.py")})
        await storage.pull_code()
        monkeypatch.setenv("FLOW_VERSION", "v1")
        result = await storage.pull_code()
        rollback = webhook_server.requests[1]
        assert rollback.path == "/flows/v1.py"
        assert "if-modified-since" not in rollback.headers
        assert rollback.status == 200
        assert result.changed
        assert storage.flow_path.read_bytes() == b"print(1)\n"

    async def test_other_methods_send_no_validators(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """On a POST, If-None-Match would be a precondition: not sent; the hash decides."""
        webhook_server.put(FLOW, SCRIPT, etag='"v1"')
        storage = webhook(base, {"url": webhook_server.url(FLOW), "json": {"q": 1}}, "POST")
        await storage.pull_code()
        result = await storage.pull_code()
        assert "if-none-match" not in webhook_server.requests[1].headers
        assert webhook_server.requests[1].status == 200
        assert not result.changed
        assert len(versions(storage)) == 1

    async def test_a_renamed_flow_file_after_a_304_reuses_the_published_body(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """A new flow_script_path under the same name: the 304'd body is re-published as it."""
        webhook_server.put(FLOW, SCRIPT, etag='"v1"')
        first = webhook(base, {"url": webhook_server.url(FLOW)}, name="etl")
        await first.pull_code()
        renamed = webhook(
            base, {"url": webhook_server.url(FLOW)}, flow_script_path="etl.py", name="etl"
        )
        result = await renamed.pull_code()
        assert webhook_server.requests[1].status == 304
        assert len(webhook_server.requests) == 2
        assert result.changed
        assert renamed.flow_path.name == "etl.py"
        assert renamed.flow_path.read_bytes() == SCRIPT

    async def test_a_gzip_answer_is_published_decoded(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """Content-Encoding: gzip is decoded, as requests' ``content`` was."""
        webhook_server.put(FLOW, SCRIPT, gzip=True)
        storage = webhook(
            base, {"url": webhook_server.url(FLOW), "headers": {"Accept-Encoding": "gzip"}}
        )
        await storage.pull_code()
        assert storage.flow_path.read_bytes() == SCRIPT


class TestMethods:
    """GET, POST, PUT and PATCH, with their bodies."""

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
    async def test_methods_with_a_body(
        self, server: WebhookServer, base: Path, method: str
    ) -> None:
        """The method and its data body (text, as UTF-8) arrive; the answer is published."""
        storage = webhook(base, {"url": server.url(FLOW), "data": "which=etl"}, method.lower())
        await storage.pull_code()
        (request,) = server.requests
        assert (request.method, request.body) == (method, b"which=etl")
        assert storage.flow_path.read_bytes() == SCRIPT

    async def test_form_data_is_form_encoded(self, server: WebhookServer, base: Path) -> None:
        """A dict as ``data`` is sent form-encoded, as requests did."""
        storage = webhook(base, {"url": server.url(FLOW), "data": {"a": "1", "b": ["x", "y"]}})
        await storage.pull_code()
        (request,) = server.requests
        assert request.body == b"a=1&b=x&b=y"
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"

    def test_an_unknown_method_is_one_line(self, server: WebhookServer, base: Path) -> None:
        """DELETE is not one of Prefect 1's methods."""
        with pytest.raises(ConfigurationError) as caught:
            webhook(base, {"url": server.url(FLOW)}, "DELETE")
        assert "GET, POST, PUT or PATCH" in one_line(caught.value)


class TestErrors:
    """Failed answers are our error classes, one line, the url as written."""

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (401, AuthenticationError),
            (403, AuthenticationError),
            (404, NotFoundError),
            (410, NotFoundError),
            (429, TransientSourceError),
            (500, TransientSourceError),
            (503, TransientSourceError),
            (400, SourceError),
            (418, SourceError),
        ],
    )
    async def test_statuses_map_to_error_classes(
        self,
        server: WebhookServer,
        base: Path,
        monkeypatch: pytest.MonkeyPatch,
        status: int,
        kind: type[SourceError],
    ) -> None:
        """The class, one line naming the url as written, the published tree kept."""
        token = canary()
        monkeypatch.setenv("QUERY_TOKEN", token)
        storage = webhook(base, {"url": server.url(FLOW) + "?token=${QUERY_TOKEN}"})
        await storage.pull_code()
        server.statuses[FLOW] = status
        with pytest.raises(SourceError) as caught:
            await storage.pull_code()
        assert type(caught.value) is kind
        message = one_line(caught.value)
        assert f"GET {server.url(FLOW)} answered {status}" in message
        assert token not in message
        assert storage.flow_path.read_bytes() == SCRIPT
        state = json.loads(state_text(storage))
        assert state["last_error"] == message
        assert state["consecutive_failures"] == 1

    async def test_connection_refused_is_transient(self, base: Path, closed_port: int) -> None:
        """Nothing listening: a transient error, one line."""
        storage = webhook(base, {"url": f"http://{LOOPBACK}:{closed_port}/flows/etl.py"})
        with pytest.raises(TransientSourceError) as caught:
            await storage.pull_code()
        assert "cannot reach GET" in one_line(caught.value)

    async def test_a_stalled_server_times_out_as_transient(
        self, base: Path, silent_port: int
    ) -> None:
        """The request's ``timeout`` applies; past it, a transient error naming it."""
        storage = webhook(
            base, {"url": f"http://{LOOPBACK}:{silent_port}/flows/etl.py", "timeout": 0.3}
        )
        with pytest.raises(TransientSourceError) as caught:
            await storage.pull_code()
        assert "timed out after 0.3s" in one_line(caught.value)

    async def test_an_empty_body_is_refused(
        self, webhook_server: WebhookServer, base: Path
    ) -> None:
        """A 200 with no body is no flow script: SourceError, nothing published."""
        webhook_server.put(FLOW, b"")
        storage = webhook(base, {"url": webhook_server.url(FLOW)})
        with pytest.raises(SourceError) as caught:
            await storage.pull_code()
        assert "empty body" in one_line(caught.value)
        assert not storage.destination.exists()

    async def test_an_unasked_304_is_refused(self, server: WebhookServer, base: Path) -> None:
        """304 to a request without validators cannot mean 'unchanged'."""
        server.statuses[FLOW] = 304
        storage = webhook(base, {"url": server.url(FLOW)})
        with pytest.raises(SourceError) as caught:
            await storage.pull_code()
        assert "not conditional" in one_line(caught.value)

    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"url": "http://h/f.py", "auth": ("u", "p")}, "'auth', which Webhook does not take"),
            ({"url": "http://h/f.py", "verify": False, "cookies": {}}, "'verify', 'cookies'"),
            ({"headers": {}}, "needs a 'url'"),
            ({"url": "http://h/f.py", "headers": {"X-N": 1}}, "['headers'] must be a dict"),
            ({"url": "http://h/f.py", "json": {}, "data": "x"}, "both 'json' and 'data'"),
            ({"url": "http://h/f.py", "json": {"x": {1, 2}}}, "['json'] is not JSON"),
            ({"url": "http://h/f.py", "timeout": 0}, "['timeout'] must be seconds"),
            ({"url": "http://h/f.py", "params": {"a": {"b": 1}}}, "['params'] must be"),
        ],
    )
    def test_bad_request_arguments_are_one_line(
        self, base: Path, kwargs: dict[str, Any], expected: str
    ) -> None:
        """Each bad argument is refused at construction, in one line saying which."""
        with pytest.raises(ConfigurationError) as caught:
            webhook(base, kwargs)
        assert expected in one_line(caught.value)

    async def test_a_url_that_is_not_http_once_filled_is_refused(
        self, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``${BASE_URL}`` filled with a file:// URL is refused without showing it."""
        monkeypatch.setenv("BASE_URL", "file:///etc")
        storage = webhook(base, {"url": "${BASE_URL}/passwd"})
        with pytest.raises(ConfigurationError) as caught:
            await storage.pull_code()
        assert "/etc" not in one_line(caught.value)

    def test_pickled_flows_are_refused(self, server: WebhookServer, base: Path) -> None:
        """``stored_as_script=False`` is one line: unpickling fetched bytes runs code."""
        with pytest.raises(ConfigurationError) as caught:
            webhook(base, {"url": server.url(FLOW)}, stored_as_script=False)
        assert "pickled" in one_line(caught.value)


class TestSecrets:
    """Values filled in are never written under the base path, shown, or put in a step."""

    async def test_canaries_appear_nowhere(
        self,
        server: WebhookServer,
        base: Path,
        secrets_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Secrets in the url's path and query, headers and json: not in state, files, errors."""
        in_path, in_query, in_header, in_json = canary(), canary(), canary(), canary()
        (secrets_dir / "PATH_SECRET").write_text(in_path)
        monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__QUERY_SECRET", in_query)
        monkeypatch.setenv("HEADER_SECRET", in_header)
        (secrets_dir / "JSON_SECRET").write_text(in_json)
        path = f"/flows/{in_path}/etl.py"
        server.put(path, SCRIPT, etag='"e"')
        server.required_headers = {"X-Api-Key": in_header}
        storage = webhook(
            base,
            {
                "url": server.url("/flows/${PATH_SECRET}/etl.py?token=$QUERY_SECRET"),
                "headers": {"X-Api-Key": "${HEADER_SECRET}"},
                "params": {"sig": "$QUERY_SECRET"},
            },
        )
        await storage.pull_code()
        await storage.pull_code()  # the conditional request
        assert server.requests[-1].status == 304
        server.statuses[path] = 401
        with pytest.raises(AuthenticationError) as unauthorized:
            await storage.pull_code()
        del server.statuses[path]
        (secrets_dir / "PATH_SECRET").unlink()
        with pytest.raises(CredentialsError) as missing:
            await storage.pull_code()
        (secrets_dir / "PATH_SECRET").write_text(in_path)
        server.required_headers = {}
        posted = webhook(
            base,
            {"url": server.url("/flows/${PATH_SECRET}/etl.py"), "json": {"k": "${JSON_SECRET}"}},
            "POST",
            name="posted",
        )
        await posted.pull_code()
        values = (in_path, in_query, in_header, in_json)
        assert_nowhere_under(base, *values)
        for error in (unauthorized.value, missing.value):
            assert_not_in_error(error, *values)
        for text in (state_text(storage), state_text(posted), repr(storage), repr(posted)):
            assert not any(value in text for value in values)
        assert json.loads(state_text(storage))["source"] == server.url(
            "/flows/${PATH_SECRET}/etl.py"
        )
        step = json.dumps(storage.to_pull_step())
        assert not any(value in step for value in values)

    def test_redact_hides_every_value_filled_in(
        self, server: WebhookServer, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``redact()`` (used for every message and state.json) knows the values."""
        token = canary()
        monkeypatch.setenv("PREFECT__CONTEXT__SECRETS__API_TOKEN", token)
        storage = webhook(base, {"url": server.url(FLOW), "headers": {"X-T": "$API_TOKEN"}})
        assert token not in storage.redact(f"the server said {token}")


class TestBuild:
    """The write side: add_flow and build upload the script with the build request."""

    def test_add_flow_and_build_upload_then_a_pull_gets_it(
        self,
        webhook_server: WebhookServer,
        base: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The script's bytes arrive with the templated header; a later pull publishes it."""
        monkeypatch.setenv("UPLOAD_KEY", "upload-key")
        script = tmp_path / "etl.py"
        script.write_bytes(SCRIPT)
        storage = webhook(
            base,
            {"url": webhook_server.url(FLOW), "headers": {"X-Api-Key": "${UPLOAD_KEY}"}},
            build={
                "url": webhook_server.url("/upload/etl.py"),
                "headers": {"X-Api-Key": "${UPLOAD_KEY}", "Content-Type": "text/x-python"},
            },
            build_method="PUT",
            flow_script_path="etl.py",
        )
        webhook_server.required_headers = {"X-Api-Key": "upload-key"}
        location = storage.add_flow(script)
        assert location == webhook_server.url(FLOW)
        assert "etl" in storage
        assert storage.build() is storage
        (upload,) = webhook_server.requests
        assert (upload.method, upload.path, upload.body) == ("PUT", "/upload/etl.py", SCRIPT)
        assert upload.headers["content-type"] == "text/x-python"
        assert storage.flows == {"etl": location}
        assert storage._build_responses is not None
        assert storage._build_responses["etl"].json()["id"] == "etl.py"
        assert storage._build_responses["etl"].status_code == 201

    async def test_a_built_script_is_pulled_from_the_location(
        self, webhook_server: WebhookServer, base: Path, tmp_path: Path
    ) -> None:
        """build() then pull_code(): the uploaded script is the flow file."""
        script = tmp_path / "etl.py"
        script.write_bytes(SCRIPT)
        storage = webhook(
            base,
            {"url": webhook_server.url(FLOW)},
            build={"url": webhook_server.url("/upload/etl.py")},
            build_method="POST",
            flow_script_path=str(script),
        )
        storage.build()  # no add_flow: flow_script_path is the script, as in Prefect 1
        result = await storage.pull_code()
        assert result.changed
        assert storage.flow_path == storage.destination / "etl.py"
        assert storage.flow_path.read_bytes() == SCRIPT
        assert [r.method for r in webhook_server.requests] == ["POST", "GET"]

    def test_data_in_build_kwargs_is_replaced_with_a_warning(
        self, webhook_server: WebhookServer, base: Path, tmp_path: Path
    ) -> None:
        """Prefect 1's RuntimeWarning, and the script is sent instead."""
        script = tmp_path / "etl.py"
        script.write_bytes(SCRIPT)
        storage = webhook(
            base,
            {"url": webhook_server.url(FLOW)},
            build={"url": webhook_server.url("/upload/etl.py"), "data": "ignored"},
            build_method="POST",
        )
        storage.add_flow(script)
        with pytest.warns(RuntimeWarning, match="'data' found in build_request_kwargs"):
            storage.build()
        assert webhook_server.requests[0].body == SCRIPT

    def test_build_failures(
        self, webhook_server: WebhookServer, base: Path, tmp_path: Path
    ) -> None:
        """No build request, no script, or a refused upload: one line each."""
        script = tmp_path / "etl.py"
        script.write_bytes(SCRIPT)
        pull_only = webhook(base, {"url": webhook_server.url(FLOW)})
        pull_only.add_flow(script)
        with pytest.raises(ConfigurationError) as no_url:
            pull_only.build()
        assert "build_request_kwargs has no url" in one_line(no_url.value)
        storage = webhook(
            base,
            {"url": webhook_server.url(FLOW)},
            build={"url": webhook_server.url("/upload/etl.py")},
            build_method="POST",
        )
        with pytest.raises(ConfigurationError) as no_script:
            storage.build()
        assert "add_flow" in one_line(no_script.value)
        storage.add_flow(script)
        webhook_server.statuses["/upload/etl.py"] = 403
        with pytest.raises(AuthenticationError) as refused:
            storage.build()
        assert "uploading etl.py: POST" in one_line(refused.value)
        with pytest.raises(ConfigurationError):
            storage.add_flow(tmp_path / "missing.py")

    def test_json_in_build_kwargs_is_refused(self, base: Path) -> None:
        """The upload's body is the script: a json body cannot be sent too."""
        with pytest.raises(ConfigurationError) as caught:
            webhook(
                base,
                {"url": "http://h/f.py"},
                build={"url": "http://h/u", "json": {}},
                build_method="POST",
            )
        assert "'json'" in one_line(caught.value)


class TestPullStep:
    """``to_pull_step()`` and the ``pull_webhook`` step function it names."""

    def test_step_shape_with_placeholders(
        self,
        server: WebhookServer,
        base: Path,
        secrets_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Env names become ``{{ $VAR }}``, other names secret placeholders, no values."""
        env_value, secret_value = canary(), canary()
        monkeypatch.setenv("FLOWS_HOST", env_value)
        (secrets_dir / "FLOWS_API_KEY").write_text(secret_value)
        storage = webhook(
            base,
            {
                "url": "https://${FLOWS_HOST}/flows/etl.py?v=1",
                "headers": {"X-Api-Key": "${FLOWS_API_KEY}", "X-Price": "$$5"},
                "json": {"items": ["$FLOWS_API_KEY"]},
                "timeout": 10,
            },
            "post",
            flow_script_path="/home/me/project/etl.py",
        )
        step = storage.to_pull_step()
        assert step == {
            PULL_WEBHOOK_STEP: {
                "requires": "runner-storage",
                "get_flow_request_kwargs": {
                    "url": "https://{{ $FLOWS_HOST }}/flows/etl.py?v=1",
                    "headers": {
                        "X-Api-Key": "{{ prefect.blocks.secret.flows-api-key }}",
                        "X-Price": "$5",
                    },
                    "json": {"items": ["{{ prefect.blocks.secret.flows-api-key }}"]},
                    "timeout": 10,
                },
                "get_flow_request_http_method": "POST",
                "flow_script_path": "etl.py",
                "name": "webhook-etl",
                "source": "https://${FLOWS_HOST}/flows/etl.py",
            }
        }
        text = json.dumps(step)
        assert env_value not in text
        assert secret_value not in text

    @pytest.mark.parametrize(
        ("kwargs", "expected"),
        [
            ({"url": "http://h/f.py", "headers": {"Authorization": "Bearer abc"}}, "Authorization"),
            ({"url": "http://h/f.py", "params": {"api_key": "abc"}}, "api_key"),
            ({"url": "http://h/f.py?token=abc"}, "'token'"),
            ({"url": "http://u:pw@h/f.py"}, "password"),
            ({"url": "http://h/f.py", "headers": {"X-A": "{{ x }}"}}, "'{{'"),
        ],
    )
    def test_plain_credentials_are_not_written_down(
        self, base: Path, kwargs: dict[str, Any], expected: str
    ) -> None:
        """A credential without a template would be written into the step: refused."""
        storage = webhook(base, kwargs)
        with pytest.raises(ConfigurationError) as caught:
            storage.to_pull_step()
        assert expected in one_line(caught.value)

    async def test_the_step_function_publishes_in_the_working_directory(
        self,
        webhook_server: WebhookServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Values arrive as Prefect filled them (a ``$`` stays one); a second call is a 304."""
        webhook_server.put(FLOW, SCRIPT, etag='"v1"')
        webhook_server.required_headers = {"X-Api-Key": "k$ey"}
        monkeypatch.chdir(tmp_path)
        kwargs = {"url": webhook_server.url(FLOW), "headers": {"X-Api-Key": "k$ey"}}
        source = webhook_server.url("/flows/${FLOW_NAME}")
        out = await pull_webhook(kwargs, "GET", "etl.py", "webhook-etl", source)
        assert out == {"directory": "webhook-etl"}
        assert (tmp_path / "webhook-etl" / "etl.py").read_bytes() == SCRIPT
        again = await pull_webhook(kwargs, "GET", "etl.py", "webhook-etl", source)
        assert again == out
        assert [r.status for r in webhook_server.requests] == [200, 304]
        state = json.loads(SourceLayout(tmp_path, "webhook-etl").state_file.read_text())
        assert state["source"] == source
        assert_nowhere_under(tmp_path, "k$ey")

    async def test_the_step_round_trips_a_storage(
        self,
        webhook_server: WebhookServer,
        base: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The step's inputs, filled in as Prefect would, publish what the storage does."""
        webhook_server.put(FLOW, SCRIPT)
        storage = webhook(base, {"url": webhook_server.url(FLOW)}, flow_script_path="etl.py")
        (inputs,) = storage.to_pull_step().values()
        inputs = {k: v for k, v in inputs.items() if k != "requires"}
        monkeypatch.chdir(tmp_path)
        out = await pull_webhook(**inputs)
        await storage.pull_code()
        published = tmp_path / out["directory"] / "etl.py"
        assert published.read_bytes() == storage.flow_path.read_bytes() == SCRIPT
        state = json.loads(SourceLayout(tmp_path, out["directory"]).state_file.read_text())
        assert state["source"] == json.loads(state_text(storage))["source"]

    async def test_a_secret_holder_from_prefects_templating_is_sent_as_its_text(
        self,
        webhook_server: WebhookServer,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A whole-value block placeholder can arrive as a secret holder: its text is sent."""
        token = canary()
        secret_file = tmp_path / "flows-api-key"
        secret_file.write_text(token)
        webhook_server.put(FLOW, SCRIPT)
        webhook_server.required_headers = {"X-Api-Key": token}
        workdir = tmp_path / "work"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        holder = Secret.from_file(secret_file, name="flows-api-key")
        kwargs = {"url": webhook_server.url(FLOW), "headers": {"X-Api-Key": holder}}
        out = await pull_webhook(kwargs, name="webhook-etl")
        assert (workdir / out["directory"] / "flow.py").read_bytes() == SCRIPT
        assert webhook_server.requests[0].status == 200
        assert_nowhere_under(workdir, token)

    async def test_prefects_templating_fills_the_step_written_by_to_pull_step(
        self,
        webhook_server: WebhookServer,
        base: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The step runs under the prefect.yaml runner: ``{{ $VAR }}`` and the secret block."""
        env_value, secret_value = canary(), canary()
        secrets = tmp_path / "blocks"
        secrets.mkdir()
        (secrets / "flows-api-key").write_text(secret_value)
        monkeypatch.setenv("FLOWS_TENANT", env_value)
        webhook_server.put(FLOW, SCRIPT)
        webhook_server.required_headers = {"X-Api-Key": secret_value, "X-Tenant": env_value}
        storage = webhook(
            base,
            {
                "url": webhook_server.url(FLOW),
                "headers": {"X-Api-Key": "${FLOWS_API_KEY}", "X-Tenant": "$FLOWS_TENANT"},
            },
        )
        ((function, inputs),) = storage.to_pull_step().items()
        assert function == PULL_WEBHOOK_STEP
        requires = inputs.pop("requires")
        # Until steps.py exports it, run the step function by its own module's path.
        step = PullStep(1, "runner_storage.deployments.steps.pull_webhook", inputs, None, requires)
        context = StepContext(
            environ={"FLOWS_TENANT": env_value}, blocks=BlockFile(secrets_dir=secrets)
        )
        workdir = tmp_path / "work"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        outputs = await run_pull_steps(Deployment("etl", (step,)), context, where="prefect.yaml")
        assert outputs["directory"] == storage.name
        assert (workdir / storage.name / "flow.py").read_bytes() == SCRIPT
        assert webhook_server.requests[0].status == 200
        assert_nowhere_under(workdir, env_value, secret_value)


class TestLayout:
    """Where the flow file lands and what the destination is called."""

    def test_names_and_flow_path(self, base: Path) -> None:
        """``webhook-<stem>``: of flow_script_path, else of the url's last plain segment."""
        by_script = webhook(base, {"url": "http://h/x/download"}, flow_script_path="a/etl.py")
        assert by_script.name == "webhook-etl"
        assert by_script.flow_path == base / "webhook-etl" / "etl.py"
        by_url = webhook(base, {"url": "http://h/flows/Daily_ETL.py?token=$T"})
        assert by_url.name == "webhook-daily-etl"
        assert by_url.flow_path == base / "webhook-daily-etl" / "flow.py"
        templated = webhook(base, {"url": "${BASE}/flows/${FLOW_ID}"})
        assert templated.name == "webhook-flows"
        assert webhook(base, {"url": "http://h/"}).name == "webhook-h"
        assert webhook(base, {"url": "http://h/f.py"}, name="team/etl").name == "team/etl"

    def test_kwargs_are_read_only_copies(self, base: Path) -> None:
        """Prefect 1's attributes are there, but changing them cannot go unnoticed."""
        headers = {"A": "1"}
        storage = webhook(base, {"url": "http://h/f.py", "headers": headers})
        headers["A"] = "2"
        assert storage.get_flow_request_kwargs["headers"] == {"A": "1"}
        with pytest.raises(TypeError):
            storage.get_flow_request_kwargs["url"] = "http://other/"  # type: ignore[index]
        assert storage.get_flow_request_http_method == "GET"
        assert storage.build_request_http_method is None

    async def test_a_cross_origin_redirect_drops_the_login(
        self, server: WebhookServer, base: Path
    ) -> None:
        """Followed as requests does; Authorization goes only to the first origin."""
        other = WebhookServer()
        other.start()
        try:
            other.put(FLOW, SCRIPT)
            server.redirects["/moved"] = other.url(FLOW)
            storage = webhook(
                base,
                {"url": server.url("/moved"), "headers": {"Authorization": "Bearer t0ken"}},
            )
            await storage.pull_code()
            (first,) = server.requests
            (second,) = other.requests
        finally:
            other.stop()
        assert first.headers["authorization"] == "Bearer t0ken"
        assert "authorization" not in second.headers
        assert storage.flow_path.read_bytes() == SCRIPT
