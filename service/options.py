"""Options the settings of every kind of source share: secrets, credentials, hooks.

A secret is given as ``{ env = "VAR" }``, ``{ file = "/path" }`` or ``{ value = "..." }``
(:class:`SecretRef`), anywhere: as a git token, or at any depth of an object store's
``settings`` (:func:`secret_tables`).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from runner_storage.exceptions import ConfigurationError
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import DESCEND, Secret, strip_url_credentials, walk

__all__ = [
    "GitCredentialSettings",
    "GracePeriod",
    "HookSettings",
    "KeepVersions",
    "Retention",
    "SecretRef",
    "Strict",
    "comma_list",
    "refuse_url_credentials",
    "secret_tables",
]


class Strict(BaseModel):
    """A settings model: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: ``keep_versions``: how many published versions a source keeps (at least 1).
KeepVersions = Annotated[int, Field(ge=1)]
#: ``grace_period``: seconds a retired version is kept at least.
GracePeriod = Annotated[float, Field(ge=0)]


class Retention(Strict):
    """How many published versions to keep, and how long a retired one stays at least.

    The daemon's settings carry these two; ``runner-storage pull`` validates them alone,
    without the rest of the daemon's settings (and without pydantic-settings).
    """

    keep_versions: KeepVersions = DEFAULT_KEEP
    grace_period: GracePeriod = DEFAULT_GRACE_SECONDS


class SecretRef(Strict):
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


class GitCredentialSettings(Strict):
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


class HookSettings(Strict):
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


def secret_tables(value: dict[str, Any]) -> dict[str, Any]:
    """Settings with each ``{ env | file | value }`` table made a Secret, at any depth."""
    converted: dict[str, Any] = walk(value, _secret_table)
    return converted


def refuse_url_credentials(url: str) -> None:
    """Refuse a URL with a password in it: it would reach files and logs.

    Raises:
        ConfigurationError: the URL holds a password.
    """
    if urlsplit(url).password is not None:
        raise ConfigurationError(
            f"source URL {strip_url_credentials(url)!r} has credentials in it: remove them from"
            ' the URL and give them as settings, e.g. secret = { env = "VAR" }, so they never'
            " reach files or logs"
        )


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
