"""Daemon settings: a TOML or YAML file, ``RUNNER_STORAGE_*`` variables, a secrets directory.

Precedence, highest first: environment variables, the config file, the secrets directory,
defaults. A sidecar can describe one source entirely by environment
(``RUNNER_STORAGE_SOURCE``, ``RUNNER_STORAGE_BRANCH``, ...), as git-sync users expect.

Invalid settings raise :class:`SettingsError` listing every problem, each naming the field
and where its value came from.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from runner_storage.credentials import Secret

__all__ = [
    "DaemonSettings",
    "HookSettings",
    "SecretRef",
    "SettingsError",
    "SourceSettings",
    "load_settings",
]

ENV_PREFIX = "RUNNER_STORAGE_"


class SettingsError(Exception):
    """Settings are invalid; ``problems`` holds one readable line per problem.

    ``sources`` holds the sources that are valid on their own, by their index in the full
    list, so that callers can run their own checks on them and report everything at once.
    """

    def __init__(
        self, problems: list[str], sources: list[tuple[int, SourceSettings]] | None = None
    ) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.sources = sources or []


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


Command = Annotated[list[str], NoDecode]


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        return shlex.split(value)
    return value


def _comma_list(value: Any) -> Any:
    # "flows, lib" from an environment variable; lists from files pass through.
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


class SourceSettings(_Strict):
    """One source the daemon keeps in sync."""

    name: str | None = None
    source: str = Field(min_length=1)
    kind: Literal["auto", "git", "remote", "local"] = "auto"
    branch: str | None = None
    commit_sha: str | None = None
    directories: list[str] | None = None
    include_submodules: bool = False
    depth: int = Field(default=1, ge=0)
    credentials: GitCredentialSettings | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    pull_interval: float | None = Field(default=60.0, gt=0)
    max_staleness: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=600.0, gt=0)
    max_failures: int | None = Field(default=None, ge=1)
    hooks: HookSettings = Field(default_factory=HookSettings)

    _split_directories = field_validator("directories", mode="before")(_comma_list)

    @property
    def staleness_limit(self) -> float | None:
        """Seconds after which a published version counts as stale, None for never."""
        if self.max_staleness is not None:
            return self.max_staleness
        if self.pull_interval is None:
            return None
        return max(3 * self.pull_interval, self.pull_interval + 60.0)

    def fsspec_settings(self) -> dict[str, Any]:
        """The fsspec settings with ``{env=...}`` / ``{file=...}`` tables made Secrets."""
        return {key: _settings_value(value) for key, value in self.settings.items()}


def _settings_value(value: Any) -> Any:
    if isinstance(value, Mapping) and value and set(value) <= {"env", "file", "value", "name"}:
        return SecretRef.model_validate(value).to_secret()
    if isinstance(value, Mapping):
        return {k: _settings_value(v) for k, v in value.items()}
    return value


class DaemonSettings(BaseSettings):
    """Everything the daemon needs; see the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False, frozen=True
    )

    root: Path = Field(default_factory=Path.cwd)
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=8080, ge=0, le=65535)
    sync_token: SecretStr | None = None
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    concurrency: int = Field(default=4, ge=1)
    keep_versions: int = Field(default=3, ge=1)
    grace_period: float = Field(default=600.0, ge=0)
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    sources: list[SourceSettings] = Field(default_factory=list)

    # One source described entirely by environment variables (sidecar style).
    source: str | None = None
    name: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    directories: Annotated[list[str] | None, NoDecode] = None
    pull_interval: float | None = Field(default=None, gt=0)
    username: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None

    _split_directories = field_validator("directories", mode="before")(_comma_list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given: :func:`load_settings` reads and merges the sources itself.

        Otherwise building or validating settings would read ``os.environ`` behind the
        caller's back (``load_settings(environ=...)``, ``runner-storage pull``).
        """
        return (init_settings,)

    @model_validator(mode="after")
    def _check_sources(self) -> DaemonSettings:
        problems = _cross_field_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(message for _, message in problems))
        return self

    def all_sources(self) -> list[SourceSettings]:
        """The configured sources, the single environment source included."""
        sources = list(self.sources)
        if self.source is not None:
            sources.append(self._env_source())
        return sources

    def _env_source(self) -> SourceSettings:
        assert self.source is not None  # noqa: S101 - checked by the caller
        token: SecretRef | None = None
        if self.token is not None:
            token = SecretRef(value=self.token)
        elif self.token_file is not None:
            token = SecretRef(file=self.token_file)
        credentials = GitCredentialSettings(username=self.username, token=token) if token else None
        options: dict[str, Any] = {
            "source": self.source,
            "name": self.name,
            "branch": self.branch,
            "commit_sha": self.commit_sha,
            "directories": self.directories,
            "credentials": credentials,
        }
        if self.pull_interval is not None:
            options["pull_interval"] = self.pull_interval
        return SourceSettings(**options)


def _file_source(path: Path) -> PydanticBaseSettingsSource:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return TomlConfigSettingsSource(DaemonSettings, toml_file=path)
    if suffix in (".yaml", ".yml"):
        return YamlConfigSettingsSource(DaemonSettings, yaml_file=path)
    raise SettingsError([f"config file {path}: use a .toml, .yaml or .yml file"])


def secrets_dir(environ: Mapping[str, str]) -> Path | None:
    """The secrets directory: ``RUNNER_STORAGE_SECRETS_DIR``, systemd's credentials, or none."""
    for candidate in (
        environ.get(f"{ENV_PREFIX}SECRETS_DIR"),
        environ.get("CREDENTIALS_DIRECTORY"),
    ):
        if candidate:
            return Path(candidate)
    return None


def load_settings(
    config_file: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> DaemonSettings:
    """Load and validate the daemon settings.

    Args:
        config_file: a TOML or YAML file; defaults to ``RUNNER_STORAGE_CONFIG`` if set.
        environ: the environment to read (``os.environ`` by default).

    Raises:
        SettingsError: every problem found, one line each, naming the field and its origin.
    """
    environ = dict(os.environ if environ is None else environ)
    if config_file is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(environ[f"{ENV_PREFIX}CONFIG"])
    named: list[tuple[str, PydanticBaseSettingsSource]] = [
        ("environment", _EnvSource(environ)),
    ]
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError([f"config file {config_file} does not exist or is not a file"])
        named.append((str(config_file), _read_file(config_file)))
    directory = secrets_dir(environ)
    if directory is not None:
        if not directory.is_dir():
            raise SettingsError([f"secrets directory {directory} does not exist"])
        named.append((f"secrets directory {directory}", _SecretsSource(directory)))
    values: dict[str, Any] = {}
    for _, source in reversed(named):
        values.update(source())
    # Checks that span several settings run on the raw values too, so that they are reported
    # together with the field errors instead of only once those are fixed.
    provided = [(origin, source()) for origin, source in named]
    problems = [
        _problem(location, message, provided) for location, message in _cross_field_problems(values)
    ]
    try:
        settings = DaemonSettings.model_validate(values)
    except ValidationError as exc:
        # Whole-model errors repeat the cross-field problems above: keep them only if
        # the raw values hid those (never end up with an empty list).
        described = _describe(exc, provided, whole_model=not problems)
        raise SettingsError(described + problems, _valid_sources(values)) from None
    if problems:
        raise SettingsError(problems, list(enumerate(settings.all_sources())))
    return settings


def _read_file(path: Path) -> PydanticBaseSettingsSource:
    try:
        # The TOML source parses in its constructor, the YAML one on call: cover both.
        source = _file_source(path)
        source()
    except SettingsError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "unreadable"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SettingsError([f"config file {path} cannot be parsed: {first_line}"]) from None
    return source


class _EnvSource(EnvSettingsSource):
    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(DaemonSettings, case_sensitive=False, env_prefix=ENV_PREFIX)
        self.env_vars = {k.lower(): v for k, v in environ.items()}

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        # The config and secrets locations are read by load_settings, not settings fields.
        return {k: v for k, v in values.items() if k not in ("config", "secrets_dir")}


class _SecretsSource(SecretsSettingsSource):
    def __init__(self, directory: Path) -> None:
        super().__init__(DaemonSettings, secrets_dir=directory, case_sensitive=False)


#: Options of the single environment-described source; they need ``RUNNER_STORAGE_SOURCE``.
_SINGLE_SOURCE_OPTIONS = ("branch", "commit_sha", "directories", "token", "token_file", "username")


def _cross_field_problems(values: Mapping[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    """Problems that span several settings, as (location, message) pairs.

    Works on raw, unvalidated values as well as on a validated model's dump: anything of an
    unexpected type is left to the field validation, which reports it.
    """
    problems: list[tuple[tuple[int | str, ...], str]] = []
    if values.get("source") is None:
        problems += [
            (
                (key,),
                f"applies to the single source, but source ({ENV_PREFIX}SOURCE) is not set:"
                f" set it, or remove {key}",
            )
            for key in _SINGLE_SOURCE_OPTIONS
            if values.get(key) is not None
        ]
    if values.get("token") is not None and values.get("token_file") is not None:
        problems.append((("token_file",), "give either token or token_file, not both"))
    initial, maximum = _number(values.get("backoff_initial")), _number(values.get("backoff_max"))
    if initial is not None and maximum is not None and maximum < initial:
        problems.append(
            (("backoff_max",), f"must not be smaller than backoff_initial ({initial:g})")
        )
    problems += _duplicate_names(values)
    return problems


def _duplicate_names(values: Mapping[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    sources = values.get("sources")
    entries: list[tuple[tuple[int | str, ...], Any]] = []
    if isinstance(sources, list):
        entries = [
            (("sources", index, "name"), entry.get("name"))
            for index, entry in enumerate(sources)
            if isinstance(entry, Mapping)
        ]
    if values.get("source") is not None:
        entries.append((("name",), values.get("name")))
    seen: dict[str, tuple[int | str, ...]] = {}
    problems: list[tuple[tuple[int | str, ...], str]] = []
    for location, name in entries:
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                (
                    location,
                    f"{name!r} is also the name of {_format_location(seen[name][:-1])};"
                    " names must be unique",
                )
            )
        else:
            seen[name] = location
    return problems


def _valid_sources(values: Mapping[str, Any]) -> list[tuple[int, SourceSettings]]:
    """The configured sources that validate on their own, with their index."""
    entries = values.get("sources")
    entries = list(entries) if isinstance(entries, list) else []
    if values.get("source") is not None:
        single = ("source", "name", "pull_interval", *_SINGLE_SOURCE_OPTIONS)
        with contextlib.suppress(ValidationError):  # each bad field is reported already
            entries.append(
                DaemonSettings.model_validate(
                    {key: values[key] for key in single if key in values}
                )._env_source()
            )
    valid = []
    for index, entry in enumerate(entries):
        try:
            valid.append((index, SourceSettings.model_validate(entry)))
        except ValidationError:
            continue
    return valid


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _problem(
    loc: tuple[int | str, ...], message: str, provided: list[tuple[str, dict[str, Any]]]
) -> str:
    """One line: the setting, what is wrong, and where the value came from."""
    top = str(loc[0]) if loc else ""
    origin = next((o for o, values in provided if top in values), None)
    if origin == "environment":
        origin = f"environment variable {ENV_PREFIX}{top.upper()}"
    where = f" (from {origin})" if origin else ""
    return f"{_format_location(loc) or 'settings'}: {message}{where}"


def _describe(
    exc: ValidationError, provided: list[tuple[str, dict[str, Any]]], *, whole_model: bool
) -> list[str]:
    """The validation errors, one line each; ``whole_model`` keeps the model-level ones."""
    return [
        _problem(
            error["loc"],
            error["msg"].removeprefix("Value error, ") + _HINTS.get(error["type"], ""),
            provided,
        )
        for error in exc.errors(include_url=False, include_input=False)
        if error["loc"] or whole_model
    ]


#: What to do about the pydantic errors whose message does not say it.
_HINTS = {
    "extra_forbidden": " (an unknown setting: check its spelling, or remove it)",
    "missing": " (add it)",
}


def _format_location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
