"""Prefect 1's ``Webhook`` storage: a flow script fetched (and stored) with HTTP requests.

The flow script is whatever the get request answers (``get_flow_request_kwargs`` sent with
``get_flow_request_http_method``); it is published as one file, ``BASE/NAME/<file>``,
through the on-disk contract. The write side (:meth:`Webhook.add_flow`,
:meth:`Webhook.build`) uploads a script with the build request, as Prefect 1 registered
flows.

Templating is Prefect 1's: every string in the request arguments, through nested dicts
and lists (keys excepted), is a :class:`string.Template` (``$NAME``, ``${NAME}``, ``$$``
for a ``$``) whose names are filled in, at every pull, from the environment variable
``NAME`` and, when that is not set, from the secret ``NAME``
(:class:`~runner_storage.storage.secrets.NamedSecret`: ``PREFECT__CONTEXT__SECRETS__NAME``,
then the file ``NAME`` in the secrets directory). Every value filled in is treated as a
secret: redacted from every message and never written under the base path.

No-op pulls are cheap: a GET carries ``If-None-Match`` / ``If-Modified-Since`` with the
published version's ``ETag`` / ``Last-Modified`` (kept in its manifest, beside a sha256
of the method and rendered URL they were answered for, so a changed URL never reuses
them), and a 304 publishes nothing; otherwise the body's sha256 decides.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import string
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio.to_thread

from runner_storage.exceptions import (
    ConfigurationError,
    CredentialsError,
    PublishError,
    SourceError,
    disk_error,
)
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.publisher import Backend, Materialized, PreviousVersion
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import (
    SENSITIVE_SETTING_KEYS,
    is_secret_like,
    public_url,
    resolve_secret,
)
from runner_storage.storage._http import Answer, Request, exchange, prepare, status_failure
from runner_storage.storage.buckets import refuse_pickles
from runner_storage.storage.secrets import NamedSecret
from runner_storage.types import Revision, fingerprint

__all__ = [
    "DEFAULT_FLOW_FILE",
    "METHODS",
    "PULL_WEBHOOK_STEP",
    "REQUEST_KEYS",
    "BuildResponse",
    "Webhook",
    "WebhookBackend",
    "default_name",
    "pull_webhook",
]

#: The HTTP methods Prefect 1's Webhook takes.
METHODS = ("GET", "POST", "PUT", "PATCH")
#: The request arguments taken (those of ``requests`` that describe a request).
REQUEST_KEYS = ("url", "headers", "params", "json", "data", "timeout")
#: Our pull step: Prefect 3 has no webhook step.
PULL_WEBHOOK_STEP = "runner_storage.deployments.steps.pull_webhook"
#: The flow file's name when no ``flow_script_path`` gives one.
DEFAULT_FLOW_FILE = "flow.py"

_MANIFEST_FORMAT = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Words that make a header, parameter or field name hold a credential.
_SENSITIVE_WORDS = (
    "authorization",
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "apikey",
    "cookie",
    "credential",
    "private-key",
    "signature",
)


# --- templates ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """``$NAME`` or ``${NAME}`` in a template."""

    name: str


@dataclass(frozen=True)
class _Text:
    """One string of the request arguments, split into literal text and names."""

    path: str
    pieces: tuple[str | _Ref, ...]

    @property
    def names(self) -> list[str]:
        return [piece.name for piece in self.pieces if isinstance(piece, _Ref)]


def _parse(text: str, path: str) -> _Text:
    """Split ``text`` as :class:`string.Template` reads it.

    Raises:
        ConfigurationError: a ``$`` starts no template (``$5``, ``$`` at the end).
    """
    pieces: list[str | _Ref] = []
    literal, position = "", 0
    for match in string.Template.pattern.finditer(text):
        literal += text[position : match.start()]
        position = match.end()
        if match.group("escaped") is not None:
            literal += "$"
            continue
        name = match.group("named") or match.group("braced")
        if name is None:
            raise ConfigurationError(
                f"{path} has a '$' that starts no template at character {match.start() + 1}:"
                " write $$ for a literal '$', or $NAME / ${NAME}"
            )
        if literal:
            pieces.append(literal)
        literal = ""
        pieces.append(_Ref(name))
    literal += text[position:]
    if literal:
        pieces.append(literal)
    return _Text(path, tuple(pieces))


def _walk(value: Any, path: str, leaf: Callable[[str, str, str | None], Any]) -> Any:
    """``value`` with each string replaced by ``leaf(string, path, key)``; keys untouched."""

    def visit(item: Any, where: str, key: str | None) -> Any:
        if isinstance(item, str):
            return leaf(item, where, key)
        if isinstance(item, Mapping):
            return {k: visit(v, f"{where}[{k!r}]", str(k)) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [visit(v, f"{where}[{i}]", key) for i, v in enumerate(item)]
        return item

    return visit(value, path, None)


def _lookup(name: str) -> str:
    """Prefect 1's rule: the environment variable ``name``, else the secret ``name``.

    Raises:
        CredentialsError: neither is set.
    """
    value = os.environ.get(name)
    if value is not None:
        return value
    return NamedSecret(name).get()


def _sensitive(key: str | None) -> bool:
    if key is None:
        return False
    normal = key.lower().replace("_", "-")
    return normal.replace("-", "_") in SENSITIVE_SETTING_KEYS or any(
        word in normal for word in _SENSITIVE_WORDS
    )


class _RequestTemplate:
    """One request's arguments, checked at construction, rendered at every use.

    Args:
        kwargs: the request arguments as given (copied).
        method: the HTTP method (any case), or None where no request is configured.
        what: how messages name them (``get_flow_request_kwargs``).
        required: whether a url (and a method) must be given.
        uploads: the body is the flow script (the build request).

    Raises:
        ConfigurationError: a bad method, an unknown key, a value of the wrong kind, a
            ``$`` that starts no template.
    """

    def __init__(
        self,
        kwargs: Mapping[str, Any] | None,
        method: str | None,
        *,
        what: str,
        method_what: str,
        required: bool,
        uploads: bool = False,
    ) -> None:
        self.what = what
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise ConfigurationError(
                f"{what} must be a dict of request arguments (url, headers, ...), got"
                f" {type(kwargs).__name__}"
            )
        self.kwargs: dict[str, Any] = copy.deepcopy(dict(kwargs))
        self.method = _check_method(method, method_what, required=required or bool(kwargs))
        _check_kwargs(self.kwargs, what, required=required, uploads=uploads)
        self.parsed = _walk(self.kwargs, what, lambda text, path, _key: _parse(text, path))

    @property
    def configured(self) -> bool:
        """Whether there is a request to send (a url)."""
        return bool(self.kwargs.get("url"))

    def names(self) -> list[str]:
        """Every name the templates use, in order, once each."""
        found: dict[str, None] = {}

        def collect(item: Any) -> None:
            if isinstance(item, _Text):
                found.update(dict.fromkeys(item.names))
            elif isinstance(item, dict):
                for value in item.values():
                    collect(value)
            elif isinstance(item, list):
                for value in item:
                    collect(value)

        collect(self.parsed)
        return list(found)

    def render(self, lookup: Callable[[str], str]) -> tuple[dict[str, Any], list[str]]:
        """The arguments with every template filled in, and the values filled in.

        Raises:
            CredentialsError: a name is neither an environment variable nor a secret.
        """
        used: list[str] = []

        def fill(item: Any) -> Any:
            if isinstance(item, _Text):
                out: list[str] = []
                for piece in item.pieces:
                    if isinstance(piece, str):
                        out.append(piece)
                        continue
                    try:
                        value = lookup(piece.name)
                    except CredentialsError as exc:
                        raise CredentialsError(f"{item.path} uses ${piece.name}: {exc}") from None
                    used.append(value)
                    out.append(value)
                return "".join(out)
            if isinstance(item, dict):
                return {key: fill(value) for key, value in item.items()}
            if isinstance(item, list):
                return [fill(value) for value in item]
            return item

        rendered: dict[str, Any] = fill(self.parsed)
        return rendered, used

    def placeholders(self, is_environment: Callable[[str], bool]) -> dict[str, Any]:
        """The arguments as a pull step writes them: names become Prefect placeholders.

        A name set in the environment becomes ``{{ $NAME }}``; any other is a secret,
        ``{{ prefect.blocks.secret.<slug> }}``; ``$$`` becomes ``$``.

        Raises:
            ConfigurationError: a credential is plain text (a header, parameter or field
                named like one, or a URL password, without a template), or literal text
                holds ``{{``, which Prefect would read as a placeholder.
        """
        url = self.kwargs.get("url")
        if isinstance(url, str):
            _refuse_plain_url_secrets(url, f"{self.what}['url']")

        def write(text: str, path: str, key: str | None) -> str:
            parsed = _parse(text, path)
            out: list[str] = []
            for piece in parsed.pieces:
                if isinstance(piece, _Ref):
                    name = piece.name
                    out.append(
                        f"{{{{ ${name} }}}}"
                        if is_environment(name)
                        else NamedSecret(name).placeholder()
                    )
                elif "{{" in piece:
                    raise ConfigurationError(
                        f"{path} holds '{{{{', which Prefect's step templating would read as a"
                        " placeholder: it cannot be written into a pull step"
                    )
                else:
                    out.append(piece)
            if not parsed.names and text and _sensitive(key):
                raise ConfigurationError(
                    f"{path} is plain text and would be written into the pull step: write it"
                    " as a template such as 'Bearer ${MY_TOKEN}' (an environment variable or"
                    " secret filled in at every pull)"
                )
            return "".join(out)

        written: dict[str, Any] = _walk(self.kwargs, self.what, write)
        return written


def _refuse_plain_url_secrets(url: str, path: str) -> None:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return
    if password and "$" not in password:
        raise ConfigurationError(
            f"{path} holds a password, which would be written into the pull step: write it"
            " as a template (https://user:${MY_PASSWORD}@host/...)"
        )
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if _sensitive(name) and "$" not in value:
            raise ConfigurationError(
                f"{path} has the query parameter {name!r} in plain text, which would be"
                f" written into the pull step: write it as a template ({name}=${{MY_TOKEN}})"
            )


def _check_method(method: str | None, what: str, *, required: bool) -> str | None:
    if method is None and not required:
        return None
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ConfigurationError(
            f"{what} {method!r} is not recognized: use GET, POST, PUT or PATCH"
        )
    return method.upper()


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bytes | int | float)


def _check_pairs(value: Any, path: str) -> None:
    """A mapping or a list of pairs whose values are scalars or lists of scalars."""
    items = value.items() if isinstance(value, Mapping) else value
    ok = isinstance(value, Mapping | list | tuple)
    if ok:
        for item in items:
            if not isinstance(value, Mapping) and not (
                isinstance(item, list | tuple) and len(item) == 2
            ):
                ok = False
                break
            _key, item_value = item
            values = item_value if isinstance(item_value, list | tuple) else [item_value]
            if not all(_is_scalar(v) for v in values):
                ok = False
                break
    if not ok:
        raise ConfigurationError(
            f"{path} must be text, a dict or a list of (name, value) pairs whose values are"
            " text, numbers or lists of them"
        )


def _check_kwargs(kwargs: dict[str, Any], what: str, *, required: bool, uploads: bool) -> None:
    unknown = [key for key in kwargs if key not in REQUEST_KEYS]
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        raise ConfigurationError(
            f"{what} has {listed}, which Webhook does not take: use url, headers, params,"
            " json, data or timeout"
        )
    url = kwargs.get("url")
    if url is None and not kwargs and not required:
        return
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"{what} needs a 'url' (text, such as 'https://example.com/flows/etl.py')"
        )
    headers = kwargs.get("headers")
    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ConfigurationError(f"{what}['headers'] must be a dict of text names to text values")
    params = kwargs.get("params")
    if params is not None and not isinstance(params, str | bytes):
        _check_pairs(params, f"{what}['params']")
    data = kwargs.get("data")
    if data is not None and not isinstance(data, str | bytes):
        _check_pairs(data, f"{what}['data']")
    if kwargs.get("json") is not None:
        if uploads:
            raise ConfigurationError(
                f"{what} has 'json', but the upload's body is the flow script: move the"
                " values into params or headers"
            )
        if data is not None:
            raise ConfigurationError(f"{what} has both 'json' and 'data': give one body")
        try:
            json.dumps(kwargs["json"], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{what}['json'] is not JSON: {exc}") from None
    timeout = kwargs.get("timeout")
    if timeout is not None and not (
        _positive(timeout)
        or (
            isinstance(timeout, list | tuple) and len(timeout) == 2 and all(map(_positive, timeout))
        )
    ):
        raise ConfigurationError(
            f"{what}['timeout'] must be seconds (more than 0) or a (connect, read) pair of them,"
            f" got {timeout!r}"
        )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


# --- names ----------------------------------------------------------------------------


def _flow_file_name(flow_script_path: str | os.PathLike[str] | None) -> str:
    if flow_script_path is None or not os.fspath(flow_script_path):
        return DEFAULT_FLOW_FILE
    name = PurePath(os.fspath(flow_script_path)).name
    if not name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise ConfigurationError(
            f"flow_script_path {os.fspath(flow_script_path)!r} names no file: give the"
            " script's path, such as 'flows/etl.py'"
        )
    return name


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_name(url: str, flow_script_path: str | os.PathLike[str] | None) -> str:
    """The destination name when none is given: ``webhook-<slug>``.

    The slug is the stem of ``flow_script_path`` when given (``flows/etl.py`` ->
    ``webhook-etl``), else of the url's last path segment with templates left out
    (``https://host/flows/${ID}/etl.py`` -> ``webhook-etl``), else of its host; it is made
    from the url as written, so it is stable and never holds a value filled in.
    """
    if flow_script_path is not None and os.fspath(flow_script_path):
        slug = _slug(PurePath(_flow_file_name(flow_script_path)).stem)
    else:
        label = public_url(url)
        untemplated = re.sub(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|\$)", "", label)
        parts = urlsplit(untemplated)
        segments = [s for s in parts.path.split("/") if _slug(PurePath(s).stem)]
        slug = _slug(PurePath(segments[-1]).stem) if segments else _slug(parts.netloc)
    return f"webhook-{slug or 'flow'}"


# --- the storage ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResponse:
    """What the build request answered, as Prefect 1 kept it in ``_build_responses``.

    The names are those of ``requests.Response``, so Prefect 1 code reading
    ``storage._build_responses[flow_name].json()["id"]`` keeps working.
    """

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ValueError: it is not JSON.
        """
        return json.loads(self.content)


@dataclass(frozen=True)
class _Fetched:
    """What resolving learned: the body (None after a 304) and the version's manifest."""

    body: bytes | None
    manifest: dict[str, Any]


class Webhook(ManagedStorage):
    """Prefect 1's ``Webhook`` storage: the flow script a request answers, kept current.

    Prefect 1's arguments, in its order. Each request is described by the keyword
    arguments ``requests`` took, of which ``url``, ``headers``, ``params``, ``json``,
    ``data`` and ``timeout`` (seconds a connection or read may stall; 60 when not given)
    are accepted, and every string in them is a template (see the module docstring). The
    get request's answer is published as ``BASE/NAME/<file>``: ``<file>`` is the base name
    of ``flow_script_path``, else ``flow.py``; :attr:`flow_path` is its absolute path.

    Scripts only: ``stored_as_script`` defaults to True here (Prefect 1's default was
    False, a pickled flow), and False is refused.

    Example::

        storage = Webhook(
            build_request_kwargs={"url": "https://flows.example.com/upload/etl.py",
                                  "headers": {"X-Api-Key": "${FLOWS_API_KEY}"}},
            build_request_http_method="PUT",
            get_flow_request_kwargs={"url": "https://flows.example.com/flows/etl.py",
                                     "headers": {"X-Api-Key": "${FLOWS_API_KEY}"}},
            get_flow_request_http_method="GET",
            flow_script_path="etl.py",
        )
        await storage.pull_code()
        storage.flow_path  # BASE/webhook-etl/etl.py

    Args:
        build_request_kwargs: the upload request of :meth:`build` (None or ``{}`` when
            this storage only pulls); its body is the script, so ``json`` is refused and
            ``data`` replaced (with Prefect 1's warning).
        build_request_http_method: its method, GET, POST, PUT or PATCH (None when there
            is no upload request).
        get_flow_request_kwargs: the request that answers the flow script; needs a url.
        get_flow_request_http_method: its method. Only a GET carries ``If-None-Match``
            and ``If-Modified-Since`` (on other methods they are preconditions of a
            change); the others are compared by the body's sha256.
        stored_as_script: must be True.
        flow_script_path: the script :meth:`build` uploads when no :meth:`add_flow` gave
            one; its base name names the published file.
        name: the destination name under the base path; by default ``webhook-<slug>``
            (:func:`default_name`: the stem of ``flow_script_path``, else of the url's last
            path segment).
        pull_interval: seconds between pulls; None pulls once.
        keep_versions: how many published versions to keep.
        grace_period: seconds a retired version is kept at least, for running work.

    Raises:
        ConfigurationError: a pickled flow, a method that is not GET, POST, PUT or PATCH,
            a request argument Webhook does not take or of the wrong kind, a ``$`` that
            starts no template, a bad name or retention setting.
    """

    def __init__(  # noqa: PLR0917 - Prefect 1's signature, positional as there
        self,
        build_request_kwargs: Mapping[str, Any] | None,
        build_request_http_method: str | None,
        get_flow_request_kwargs: Mapping[str, Any],
        get_flow_request_http_method: str,
        stored_as_script: bool = True,
        flow_script_path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        pull_interval: float | None = 60,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        refuse_pickles(stored_as_script)
        self._get = _RequestTemplate(
            get_flow_request_kwargs,
            get_flow_request_http_method,
            what="get_flow_request_kwargs",
            method_what="get_flow_request_http_method",
            required=True,
        )
        self._build = _RequestTemplate(
            build_request_kwargs,
            build_request_http_method,
            what="build_request_kwargs",
            method_what="build_request_http_method",
            required=False,
            uploads=True,
        )
        self.stored_as_script = True
        self.flow_script_path = flow_script_path
        self._file = _flow_file_name(flow_script_path)
        #: flow name -> the location a later pull fetches it from (Prefect 1's ``flows``).
        self.flows: dict[str, str] = {}
        self._script: tuple[str, Path] | None = None
        self._build_responses: dict[str, BuildResponse] | None = None
        self._used: dict[str, list[str]] = {}  # request -> the values its last render used
        self._label: str | None = None  # a pull step's given source label
        self._plain_secrets: tuple[str, ...] = ()  # a pull step's resolved values
        super().__init__(
            name=name or default_name(self._get.kwargs["url"], flow_script_path),
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    # -- Prefect 1's attributes ---------------------------------------------------------

    @property
    def get_flow_request_kwargs(self) -> Mapping[str, Any]:
        """The get request's arguments as given (a read-only copy: make a new storage)."""
        return MappingProxyType(copy.deepcopy(self._get.kwargs))

    @property
    def get_flow_request_http_method(self) -> str:
        """The get request's method."""
        return self._get.method or "GET"

    @property
    def build_request_kwargs(self) -> Mapping[str, Any]:
        """The build request's arguments as given (a read-only copy)."""
        return MappingProxyType(copy.deepcopy(self._build.kwargs))

    @property
    def build_request_http_method(self) -> str | None:
        """The build request's method, or None."""
        return self._build.method

    @property
    def flow_path(self) -> Path:
        """The flow script's absolute path inside the published tree: ``destination/<file>``."""
        return self.destination / self._file

    @property
    def location(self) -> str:
        """Where pulls fetch the script: the get url as written, without login or query."""
        return self._source_label()

    # -- the write side -----------------------------------------------------------------

    def add_flow(self, flow_file: str | os.PathLike[str], name: str | None = None) -> str:
        """Set the flow script :meth:`build` uploads; return the location pulls fetch.

        As Prefect 1's, a Webhook holds one flow: a second call replaces the first.

        Args:
            flow_file: the path of the script.
            name: the flow's name; by default the script's stem.

        Returns:
            :attr:`location`: the get url as written, without login or query.

        Raises:
            ConfigurationError: ``flow_file`` is not a file.
        """
        path = Path(flow_file)
        if not path.is_file():
            raise ConfigurationError(f"flow_file {str(path)!r} is not a file: give a script")
        flow_name = name or path.stem
        self._script = (flow_name, path)
        self.flows = {flow_name: self.location}
        return self.location

    def build(self) -> Webhook:
        """Upload the flow script with the build request, as Prefect 1's ``build()``.

        The script (from :meth:`add_flow`, else ``flow_script_path``) is the body, its bytes
        as they are; a ``data`` in ``build_request_kwargs`` is replaced, with Prefect 1's
        ``RuntimeWarning``. What the server answered is kept in ``_build_responses``, by
        flow name (Prefect 1 read ids from it).

        Returns:
            This storage.

        Raises:
            ConfigurationError: no build request, no script, or it cannot be read.
            CredentialsError: a template's name is neither set nor a secret.
            AuthenticationError, NotFoundError, TransientSourceError, SourceError: the
                upload failed (one line, redacted).
        """
        if not self._build.configured or self._build.method is None:
            raise ConfigurationError(
                "build_request_kwargs has no url: give the upload request to build()"
            )
        if self._script is not None:
            flow_name, script = self._script
        elif self.flow_script_path is not None and os.fspath(self.flow_script_path):
            script = Path(self.flow_script_path)
            flow_name = script.stem
        else:
            raise ConfigurationError(
                "there is no flow script to upload: add_flow('flow.py') or give flow_script_path"
            )
        try:
            content = script.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read flow script {script}: {exc.strerror or exc}"
            ) from None
        kwargs, self._used["build"] = self._build.render(_lookup)
        if "data" in kwargs:
            warnings.warn(
                "'data' found in build_request_kwargs. This value is overwritten with the"
                " flow content and should not be set directly",
                RuntimeWarning,
                stacklevel=2,
            )
        kwargs["data"] = content
        method = self._build.method
        where = public_url(self._build.kwargs["url"])
        answer = exchange(prepare(method, kwargs), where=where, redact=self.redact)
        if not 200 <= answer.status < 300:
            raise status_failure(
                answer, what=f"uploading {script.name}: {method} {where}", redact=self.redact
            )
        self._build_responses = {
            flow_name: BuildResponse(answer.status, dict(answer.headers), answer.body)
        }
        self.flows = {flow_name: self.location}
        return self

    def __contains__(self, obj: Any) -> bool:
        """Whether ``obj`` is the name of a flow added here (Prefect 1's ``in``)."""
        return isinstance(obj, str) and obj in self.flows

    # -- the pull side ------------------------------------------------------------------

    def to_pull_step(self) -> dict[str, Any]:
        """Our ``pull_webhook`` step (Prefect 3 has none), with placeholders for values.

        The inputs are the get request's arguments with each template name written as a
        Prefect placeholder: a name set in this process's environment as ``{{ $NAME }}``,
        any other (a secret) as ``{{ prefect.blocks.secret.<slug> }}``
        (:meth:`NamedSecret.placeholder`); ``$$`` as ``$``. ``name`` is written so the
        worker publishes under the same name, and ``source`` (the url as written) so its
        ``state.json`` names the source without any value filled in.

        Raises:
            ConfigurationError: a credential is plain text (a header, parameter or field
                named like one, or a url password, with no template), or text holds
                ``{{``.
        """
        inputs: dict[str, Any] = {
            "requires": "runner-storage",
            "get_flow_request_kwargs": self._get.placeholders(lambda n: n in os.environ),
            "get_flow_request_http_method": self.get_flow_request_http_method,
        }
        if self.flow_script_path is not None and os.fspath(self.flow_script_path):
            inputs["flow_script_path"] = self._file
        inputs["name"] = self.name
        inputs["source"] = self._source_label()
        return {PULL_WEBHOOK_STEP: inputs}

    def backend(self) -> Backend:
        """A backend for one pull: one (conditional) request, then the file it answered."""
        return WebhookBackend(self)

    def render_get_request(self) -> tuple[str, Request]:
        """The get request with its templates filled in now, and its validator key.

        Raises:
            CredentialsError: a template's name is neither set nor a secret.
            ConfigurationError: the filled-in url is not http(s).
        """
        kwargs, self._used["get"] = self._get.render(_lookup)
        method = self.get_flow_request_http_method
        request = prepare(method, kwargs)
        key = hashlib.sha256(f"webhook-request\0{method}\0{request.url}".encode()).hexdigest()
        return key, request

    def __repr__(self) -> str:
        return (
            f"Webhook(get_flow_request_kwargs={{'url': {self._source_label()!r}, ...}},"
            f" get_flow_request_http_method={self.get_flow_request_http_method!r},"
            f" name={self.name!r})"
        )

    def _identity(self) -> tuple[Any, ...]:
        return (self._source_label(), self._get.method, self._get.kwargs, self._file)

    def _source_label(self) -> str:
        # The url as written (templates unfilled), without login, query or fragment: it
        # never holds a value filled in, and a rotated token does not change it.
        return self._label or public_url(self._get.kwargs["url"])

    def _secret_values(self) -> list[str]:
        values = {value for used in self._used.values() for value in used}
        values.update(self._plain_secrets)
        for name in {*self._get.names(), *self._build.names()}:
            try:
                values.add(_lookup(name))
            except CredentialsError:
                continue
        for template in (self._get, self._build):
            url = template.kwargs.get("url")
            try:
                password = urlsplit(url).password if isinstance(url, str) else None
            except ValueError:
                password = None
            if password:
                values.add(password)
        return sorted(v for v in values if v)

    def _published_manifest(self) -> dict[str, Any] | None:
        """The manifest of the live version, if it is one of ours and consistent."""
        publisher = self.publisher
        try:
            state = publisher.state()
        except PublishError:
            return None
        current = publisher.current_version()
        if state is None or current is None or state.version != current.name:
            return None
        try:
            text = publisher.layout.manifest(current.name).read_text(encoding="utf-8")
            manifest = json.loads(text)
        except (OSError, ValueError):
            return None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != _MANIFEST_FORMAT
            or not isinstance(manifest.get("sha256"), str)
            or not _SHA256.fullmatch(manifest["sha256"])
            or manifest["sha256"] != state.revision
            or not isinstance(manifest.get("file"), str)
        ):
            return None
        return manifest

    @classmethod
    def _for_step(
        cls,
        get_flow_request_kwargs: Mapping[str, Any],
        get_flow_request_http_method: str,
        flow_script_path: str | None,
        name: str | None,
        source: str | None,
    ) -> Webhook:
        """A storage of a pull step's inputs, whose values Prefect already filled in.

        Nothing is templated again (a ``$`` in a value stays a ``$``), and every text value
        of the headers, params, json and data is redacted, since it may be a secret.
        """
        if not isinstance(get_flow_request_kwargs, Mapping):
            raise ConfigurationError(
                "pull_webhook: get_flow_request_kwargs must be a dict of request arguments"
            )
        revealed: list[str] = []
        get_flow_request_kwargs = _reveal(get_flow_request_kwargs, revealed)
        escaped = _walk(
            get_flow_request_kwargs, "", lambda text, _path, _key: text.replace("$", "$$")
        )
        storage = cls(
            None,
            None,
            escaped,
            get_flow_request_http_method,
            True,
            flow_script_path,
            name=name,
            pull_interval=None,
        )
        plain: list[str] = list(revealed)
        for key in ("headers", "params", "json", "data"):
            _walk(
                get_flow_request_kwargs.get(key),
                "",
                lambda text, _path, _key: plain.append(text),
            )
        url = get_flow_request_kwargs.get("url")
        if isinstance(url, str):
            with contextlib.suppress(ValueError):  # a malformed url: the pull says so
                plain.extend(value for _name, value in parse_qsl(urlsplit(url).query))
        storage._plain_secrets = tuple(plain)
        storage._label = source or public_url(str(url))
        return storage


def _reveal(value: Any, revealed: list[str]) -> Any:
    """``value`` with each secret holder inside replaced by its text (kept in ``revealed``).

    Prefect's step templating gives a value that is one block placeholder as the block's
    value, which for a secret block read from a file is a secret holder.
    """
    if is_secret_like(value):
        text = resolve_secret(value)
        revealed.append(text)
        return text
    if isinstance(value, Mapping):
        return {key: _reveal(item, revealed) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(item, revealed) for item in value]
    return value


def _digest(sha256: str, file: str) -> str:
    return fingerprint("webhook", sha256, file)


@dataclass(frozen=True)
class WebhookBackend:
    """One pull of a :class:`Webhook`: a (conditional) request, then the file.

    Attributes:
        storage: the storage pulled.
    """

    storage: Webhook

    async def resolve(self) -> Revision:
        """Send the get request (with the published validators on a GET); the revision.

        A 304 resolves to the published revision (a no-op); a success to the sha256 of the
        body, which is carried to :meth:`materialize`, so nothing is fetched twice.

        Raises:
            CredentialsError: a template's name is neither set nor a secret.
            AuthenticationError, NotFoundError, TransientSourceError, SourceError: the
                request failed (one line, the url as written, values redacted).
        """
        published = await anyio.to_thread.run_sync(self.storage._published_manifest)
        return await self._fetch(published)

    async def _fetch(self, published: dict[str, Any] | None) -> Revision:
        storage = self.storage
        key, request = storage.render_get_request()
        conditional = (
            published is not None and request.method == "GET" and published.get("request") == key
        )
        if conditional:
            assert published is not None  # noqa: S101 - narrowed above
            validators = {
                "If-None-Match": published.get("etag"),
                "If-Modified-Since": published.get("last_modified"),
            }
            given = {name.lower() for name in request.headers}
            sent = {
                name: value
                for name, value in validators.items()
                if isinstance(value, str) and value and name.lower() not in given
            }
            conditional = bool(sent)
            request = replace(request, headers={**request.headers, **sent})
        where = storage._source_label()
        answer: Answer = await anyio.to_thread.run_sync(
            partial(exchange, request, where=where, redact=storage.redact),
            abandon_on_cancel=True,
        )
        what = f"{request.method} {where}"
        if answer.status == 304:
            if not conditional or published is None:
                raise SourceError(
                    storage.redact(
                        f"{what} answered 304 Not Modified to a request that was not"
                        " conditional: check the server or the request's headers"
                    )
                )
            sha = published["sha256"]
            return Revision(sha, _digest(sha, storage._file), _Fetched(None, published))
        if not 200 <= answer.status < 300:
            raise status_failure(answer, what=what, redact=storage.redact)
        if not answer.body:
            raise SourceError(
                storage.redact(
                    f"{what} answered {answer.status} with an empty body: there is no flow"
                    " script to publish; check the url"
                )
            )
        sha = hashlib.sha256(answer.body).hexdigest()
        manifest = {
            "format": _MANIFEST_FORMAT,
            "file": storage._file,
            "sha256": sha,
            "size": len(answer.body),
            "etag": answer.header("ETag"),
            "last_modified": answer.header("Last-Modified"),
            "request": key,
        }
        return Revision(sha, _digest(sha, storage._file), _Fetched(answer.body, manifest))

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Write the flow file into ``staging``.

        After a 304 that did not settle the pull (the file name changed), the published
        file is copied when its content is the revision's, else fetched again.

        Raises:
            SourceError and its kinds: the request made again failed.
            PublishError: the local disk failed.
        """
        if revision is None or not isinstance(revision.detail, _Fetched):
            revision = await self._fetch(None)
        fetched: _Fetched = revision.detail
        body, files, size = fetched.body, 1, len(fetched.body or b"")
        if body is None:
            body = _published_body(previous, revision.id)
            files = size = 0
            if body is None:
                revision = await self._fetch(None)
                fetched = revision.detail
                body = fetched.body or b""
                files, size = 1, len(body)
        target = staging / self.storage._file
        try:
            target.write_bytes(body)
        except OSError as exc:
            raise disk_error(f"cannot write {target}", exc) from None
        manifest = {**fetched.manifest, "file": self.storage._file}
        return Materialized(revision, files_fetched=files, bytes_fetched=size, manifest=manifest)


def _published_body(previous: PreviousVersion | None, sha256: str) -> bytes | None:
    """The published flow file, if it is there and its sha256 is ``sha256``."""
    if previous is None or not isinstance(previous.manifest, dict):
        return None
    file = previous.manifest.get("file")
    if not isinstance(file, str) or "/" in file or file in ("", ".", ".."):
        return None
    try:
        body = (previous.path / file).read_bytes()
    except OSError:
        return None
    return body if hashlib.sha256(body).hexdigest() == sha256 else None


async def pull_webhook(
    get_flow_request_kwargs: Mapping[str, Any],
    get_flow_request_http_method: str = "GET",
    flow_script_path: str | None = None,
    name: str | None = None,
    source: str | None = None,
) -> dict[str, str]:
    """Publish the flow script a request answers here, as Prefect 1's ``Webhook`` did.

    The step :meth:`Webhook.to_pull_step` writes. Prefect's worker fills in its
    placeholders (``{{ $VAR }}``, ``{{ prefect.blocks.secret.NAME }}``) before calling it,
    so the request is sent as given (no ``$`` templating again). The script is published
    as ``<name>/<file>`` under the working directory (``<file>``: the base name of
    ``flow_script_path``, else ``flow.py``); called again in the same worker, it costs one
    conditional request, or publishes nothing when the body is unchanged.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_webhook:
              requires: runner-storage
              get_flow_request_kwargs:
                url: https://flows.example.com/flows/etl.py
                headers: {X-Api-Key: "{{ prefect.blocks.secret.flows-api-key }}"}
              get_flow_request_http_method: GET
              flow_script_path: etl.py
              name: webhook-etl
              source: https://flows.example.com/flows/etl.py

    Args:
        get_flow_request_kwargs: the request (``url``, ``headers``, ``params``, ``json``,
            ``data``, ``timeout``), its values filled in.
        get_flow_request_http_method: GET, POST, PUT or PATCH.
        flow_script_path: names the published file.
        name: the destination name; by default derived from the url
            (:func:`default_name`).
        source: how ``state.json`` names the source; by default the url without login or
            query. Give it when the url's path holds a secret.

    Returns:
        ``{"directory": <name>}``, relative to the working directory.

    Raises:
        ConfigurationError: a bad argument.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    storage = Webhook._for_step(
        get_flow_request_kwargs, get_flow_request_http_method, flow_script_path, name, source
    )
    storage.set_base_path(Path.cwd())
    await storage.pull_code()
    return {"directory": str(storage.name)}
