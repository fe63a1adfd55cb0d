"""The sources the daemon keeps in sync: one settings model per kind, joined in one union.

:data:`SourceSettings` is discriminated on the source kind: ``kind`` when it is given,
otherwise what :func:`runner_storage.classify_source` says of ``source``, so a source
means the same storage to the daemon as to ``create_storage_from_source``. Each model
knows its own options and builds its own storage; a new kind is a new model here, not a
branch elsewhere. An option of another kind is refused by the model (pydantic's
``extra_forbidden``), and :mod:`service.problems` turns that into a line naming both
kinds.
"""

from __future__ import annotations

import abc
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import SourceKind, classify_source
from runner_storage.secrets import DESCEND, Secret, strip_url_credentials, walk

if TYPE_CHECKING:
    from runner_storage.local import LocalStorage
    from runner_storage.publish.managed import ManagedStorage

__all__ = [
    "SOURCE_KIND_ERROR",
    "GitCredentialSettings",
    "GitSource",
    "HookSettings",
    "LocalSource",
    "RemoteSource",
    "SecretRef",
    "SourceBase",
    "SourceSettings",
    "parse_source",
]

#: The pydantic error type of a source whose kind cannot be told.
SOURCE_KIND_ERROR = "source_kind"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a secret comes from: exactly one of ``env``, ``file`` or ``value``.

    ``name`` is the Prefect Secret block used as the pull-step placeholder.
    """

    env: str | None = None
    file: Path | None = None
    value: SecretStr | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        # A bare string is a literal; discouraged, but what people write first.
        if isinstance(data, str):
            return {"value": data}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("env", "file", "value") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or value")
        return self

    def to_secret(self) -> Secret:
        """The library secret this reference describes."""
        if self.env is not None:
            return Secret.from_env(self.env, name=self.name)
        if self.file is not None:
            return Secret.from_file(self.file, name=self.name)
        assert self.value is not None  # noqa: S101 - guaranteed by _exactly_one
        return Secret(self.value, name=self.name)


class GitCredentialSettings(_Strict):
    """Credentials for a git source: an optional username and a token."""

    username: str | None = None
    token: SecretRef


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        return shlex.split(value)
    return value


def comma_list(value: Any) -> Any:
    """``"flows, lib"`` (from an environment variable) as a list; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class HookSettings(_Strict):
    """What runs around a publish.

    Attributes:
        check: a command run inside the new version before it is published; publish only
            if it exits 0.
        exec: a command run after each publish, with ``RUNNER_STORAGE_*`` variables.
        webhook: a URL that receives a JSON POST after each publish.
        timeout: seconds each hook may take.
        retries: extra attempts for ``exec`` and ``webhook`` after a failure.
    """

    check: list[str] | None = None
    exec: list[str] | None = None
    webhook: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=2, ge=0)

    _split = field_validator("check", "exec", mode="before")(_split_command)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook must be an http:// or https:// URL")
        return value

    def configured(self) -> bool:
        """Whether any hook is configured."""
        return bool(self.check or self.exec or self.webhook)


class SourceBase(_Strict, abc.ABC):
    """What every source has, whatever its kind.

    ``kind`` is the resolved kind (``auto`` is replaced by the model's own). The subclass
    of each kind adds its options and builds its storage.
    """

    kind: SourceKind
    name: str | None = None
    source: str = Field(min_length=1)
    pull_interval: float | None = Field(default=60.0, gt=0)
    max_staleness: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=600.0, gt=0)
    max_failures: int | None = Field(default=None, ge=1)
    hooks: HookSettings = Field(default_factory=HookSettings)

    @field_validator("kind", mode="before")
    @classmethod
    def _resolve_auto(cls, value: Any) -> Any:
        # The discriminator chose this model for "auto": record what it chose.
        return cls.model_fields["kind"].default if value == "auto" else value

    @property
    def staleness_limit(self) -> float | None:
        """Seconds after which a published version counts as stale, None for never."""
        if self.max_staleness is not None:
            return self.max_staleness
        if self.pull_interval is None:
            return None
        return max(3 * self.pull_interval, self.pull_interval + 60.0)

    def shown(self) -> str:
        """The source as it may be shown: without credentials given in a URL."""
        return strip_url_credentials(self.source)

    def target(self) -> str:
        """What the storage is given: the classifier's target when it agrees with ``kind``.

        A forced kind that the classifier disagrees with gets the source as written.
        """
        try:
            kind, target = classify_source(self.source)
        except ConfigurationError:
            return self.source
        return target if kind == self.kind else self.source

    def build_storage(
        self, *, root: Path, keep_versions: int, grace_period: float
    ) -> ManagedStorage | LocalStorage:
        """The library storage for this source, based at ``root``.

        Args:
            root: the base path every source publishes under (``BASE``).
            keep_versions: how many published versions to keep.
            grace_period: seconds a retired version is kept at least.

        Raises:
            ConfigurationError: the storage refuses the options (one line, naming one).
        """
        storage = self._new_storage({"keep_versions": keep_versions, "grace_period": grace_period})
        storage.set_base_path(root)  # a local source stays where it is
        return storage

    @abc.abstractmethod
    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        """The storage of this kind; ``retention`` goes to storages that publish."""


class GitSource(SourceBase):
    """A git repository: branch, tag or commit, sparse directories, submodules, ssh."""

    kind: Literal["git"] = "git"
    branch: str | None = None
    commit_sha: str | None = None
    directories: list[str] | None = None
    include_submodules: bool = False
    depth: int = Field(default=1, ge=0)
    credentials: GitCredentialSettings | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None

    _split_directories = field_validator("directories", mode="before")(comma_list)

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.git import GitRepository  # noqa: PLC0415 - the engine, when used

        credentials: dict[str, Any] | None = None
        if self.credentials is not None:
            credentials = {"access_token": self.credentials.token.to_secret()}
            if self.credentials.username is not None:
                credentials["username"] = self.credentials.username
        return GitRepository(
            self.target(),
            credentials=credentials,
            name=self.name,
            branch=self.branch,
            commit_sha=self.commit_sha,
            include_submodules=self.include_submodules,
            pull_interval=self.pull_interval,
            directories=self.directories,
            depth=self.depth,
            ssh_key_file=self.ssh_key_file,
            known_hosts_file=self.known_hosts_file,
            **retention,
        )


class RemoteSource(SourceBase):
    """An fsspec folder (object stores, HTTP); ``settings`` go to the filesystem."""

    kind: Literal["remote"] = "remote"
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _secret_tables(cls, value: dict[str, Any]) -> dict[str, Any]:
        converted: dict[str, Any] = walk(value, _secret_table)
        return converted

    def fsspec_settings(self) -> dict[str, Any]:
        """The fsspec settings, with each ``{env=...}`` / ``{file=...}`` table a Secret."""
        return dict(self.settings)

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.remote import RemoteStorage  # noqa: PLC0415 - fsspec is heavy

        if urlsplit(self.source).password is not None:
            raise ConfigurationError(
                f"source URL {self.shown()!r} has credentials in it: remove them from the URL"
                ' and give them as settings, e.g. secret = { env = "VAR" }, so they never'
                " reach files or logs"
            )
        settings = self.fsspec_settings()
        return RemoteStorage(
            self.target(), pull_interval=self.pull_interval, name=self.name, **retention, **settings
        )


class LocalSource(SourceBase):
    """A folder on this machine, used where it is: it publishes nothing.

    So it takes no ``name`` and no ``hooks``; they are refused when the storage is built,
    with the other problems of sources that are valid on their own.
    """

    kind: Literal["local"] = "local"

    def target(self) -> str:
        """The folder: a plain path, or the path of a ``file://`` or ``local://`` URL.

        Raises:
            ConfigurationError: the source is a URL of another scheme.
        """
        kind, target = classify_source(self.source)
        if kind == "local":
            return target
        if "://" in self.source:
            raise ConfigurationError(
                f'{self.shown()!r} is a {kind} URL, not a folder: remove kind = "local",'
                " or give a path"
            )
        return self.source  # a folder whose name ends in .git, say

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.local import LocalStorage  # noqa: PLC0415 - as the other kinds

        if self.hooks.configured():
            raise ConfigurationError("hooks need a source that publishes; local sources do not")
        if self.name is not None:
            raise ConfigurationError(
                "name does not apply to local sources: they are used where they are"
            )
        return LocalStorage(self.target(), pull_interval=self.pull_interval)


#: The model of each kind, by its tag. A new kind: its model here and in SourceSettings.
MODELS: dict[str, type[SourceBase]] = {
    "git": GitSource,
    "remote": RemoteSource,
    "local": LocalSource,
}


def _source_kind(value: Any) -> str | None:
    """The tag of the model for ``value``, or None (reported as :data:`SOURCE_KIND_ERROR`)."""
    if isinstance(value, SourceBase):
        return value.kind
    if not isinstance(value, Mapping):
        return None
    kind = value.get("kind", "auto")
    if kind != "auto":
        return kind if kind in MODELS else None
    source = value.get("source")
    if not isinstance(source, str):
        return None
    try:
        return classify_source(source)[0]
    except ConfigurationError:
        return None


#: One source: the model of its kind.
SourceSettings = Annotated[
    Annotated[GitSource, Tag("git")]
    | Annotated[RemoteSource, Tag("remote")]
    | Annotated[LocalSource, Tag("local")],
    Discriminator(
        _source_kind,
        custom_error_type=SOURCE_KIND_ERROR,
        custom_error_message="the kind of this source cannot be told",
    ),
]

_ADAPTER: TypeAdapter[SourceSettings] = TypeAdapter(SourceSettings)


def parse_source(data: Any) -> SourceBase:
    """Validate one source given as a mapping.

    Raises:
        ValidationError: its locations start with the kind's tag; see
            :func:`service.problems.describe_source_error`.
    """
    source: SourceBase = _ADAPTER.validate_python(data)
    return source


_SECRET_KEYS = frozenset({"env", "file", "value", "name"})


def _secret_table(value: Any, _key: str | None, path: str) -> Any:
    """A ``{ env | file | value [, name] }`` table as a Secret; descend into anything else."""
    if not (isinstance(value, Mapping) and value and set(value) <= _SECRET_KEYS):
        return DESCEND
    try:
        return SecretRef.model_validate(value).to_secret()
    except ValidationError as exc:
        # The message only, never the input: the table may hold a literal secret.
        reason = exc.errors(include_url=False, include_input=False)[0]["msg"]
        raise ValueError(f"at {path}: {reason.removeprefix('Value error, ')}") from None
