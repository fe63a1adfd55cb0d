"""Daemon settings: a TOML or YAML file, ``RUNNER_STORAGE_*`` variables, a secrets directory.

Precedence, highest first: environment variables, the config file, the secrets directory,
defaults. A sidecar can describe one source entirely by environment
(``RUNNER_STORAGE_SOURCE``, ``RUNNER_STORAGE_BRANCH``, ...), as git-sync users expect.

Each source is validated by the model of its kind (:mod:`service.sources`), the single
environment source too. Invalid settings raise :class:`SettingsError` listing every
problem, each naming the field and where its value came from (:mod:`service.problems`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
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

from runner_storage.exceptions import one_line
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from service.options import (
    GracePeriod,
    HookSettings,
    KeepVersions,
    SecretRef,
    comma_list,
)
from service.problems import (
    ENV_PREFIX,
    KIND_ERRORS,
    MISPLACED_VALUE,
    Location,
    describe,
    describe_source_error,
    format_location,
    problem,
)
from service.sources import SourceBase, SourceSettings, parse_source
from service.webhooks import WebhookSettings

# HookSettings and SecretRef (service.options) and SourceSettings (service.sources) stay
# importable from here.
__all__ = [
    "DaemonSettings",
    "HookSettings",
    "SecretRef",
    "SettingsError",
    "SourceSettings",
    "load_settings",
]


class SettingsError(Exception):
    """Settings are invalid; ``problems`` holds one readable line per problem.

    ``sources`` holds the sources that are valid on their own, by their index in the full
    list, so that callers can run their own checks on them and report everything at once.
    """

    def __init__(
        self, problems: list[str], sources: list[tuple[int, SourceBase]] | None = None
    ) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.sources = sources or []


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
    keep_versions: KeepVersions = DEFAULT_KEEP
    grace_period: GracePeriod = DEFAULT_GRACE_SECONDS
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    sources: list[SourceSettings] = Field(default_factory=list)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    # A prefect.yaml whose pull sections become sources (service.prefect_yaml).
    prefect_yaml: Path | None = None
    deployments: Annotated[list[str] | None, NoDecode] = None
    blocks_file: Path | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    step_hooks: bool = False

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

    _split_lists = field_validator("directories", "deployments", mode="before")(comma_list)
    _notes: tuple[str, ...] = PrivateAttr(default=())

    @property
    def notes(self) -> tuple[str, ...]:
        """Lines about steps of the prefect.yaml that were skipped, for the log."""
        return self._notes

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

    def all_sources(self) -> list[SourceBase]:
        """The configured sources, the single environment source included."""
        sources: list[SourceBase] = list(self.sources)
        if self.source is not None:
            # Validated with the rest by _check_sources: the kind fits its options.
            sources.append(parse_source(single_source_options(dict(self))))
        return sources


#: Options of the single environment-described source, as it names them; they need
#: ``RUNNER_STORAGE_SOURCE``.
_SINGLE_SOURCE_OPTIONS = ("branch", "commit_sha", "directories", "token", "token_file", "username")
#: The options passed to the source's model as they are.
_SINGLE_SOURCE_FIELDS = ("source", "name", "branch", "commit_sha", "directories", "pull_interval")


def single_source_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The single environment-described source, as its model takes it: only what is given.

    ``token`` (or ``token_file``) and ``username`` become ``credentials``; a username
    without a token says nothing.
    """
    options = {key: values[key] for key in _SINGLE_SOURCE_FIELDS if values.get(key) is not None}
    token: dict[str, Any] | None = None
    if values.get("token") is not None:
        token = {"value": values["token"]}
    elif values.get("token_file") is not None:
        token = {"file": values["token_file"]}
    if token is not None:
        options["credentials"] = {"token": token}
        if values.get("username") is not None:
            options["credentials"]["username"] = values["username"]
    return options


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
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DaemonSettings:
    """Load and validate the daemon settings.

    Args:
        config_file: a TOML or YAML file; defaults to ``RUNNER_STORAGE_CONFIG`` if set.
        environ: the environment to read (``os.environ`` by default).
        overrides: settings given on the command line; they win over every other origin.

    Raises:
        SettingsError: every problem found, one line each, naming the field and its origin.
    """
    environ = dict(os.environ if environ is None else environ)
    if config_file is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(environ[f"{ENV_PREFIX}CONFIG"])
    named: list[tuple[str, Any]] = [
        ("command line", lambda: dict(overrides or {})),
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
        problem(location, message, provided) for location, message in _cross_field_problems(values)
    ]
    try:
        settings = DaemonSettings.model_validate(values)
    except ValidationError as exc:
        # Whole-model errors repeat the cross-field problems above: keep them only if
        # the raw values hid those (never end up with an empty list).
        described = describe(exc, provided, values, whole_model=not problems)
        raise SettingsError(described + problems, _valid_sources(values)) from None
    if problems:
        raise SettingsError(problems, list(enumerate(settings.all_sources())))
    if settings.prefect_yaml is not None:
        settings = _with_prefect_yaml(settings, directory, environ)
    return settings


def _with_prefect_yaml(
    settings: DaemonSettings, secrets: Path | None, environ: Mapping[str, str]
) -> DaemonSettings:
    """The settings with the prefect.yaml's sources after the configured ones.

    Raises:
        SettingsError: a step cannot be kept current, a placeholder cannot be resolved, or
            a source it gives is invalid; one line each, naming the deployment and step.
    """
    from runner_storage.exceptions import ConfigurationError  # noqa: PLC0415
    from runner_storage.steps.blockfile import BlockFile  # noqa: PLC0415
    from runner_storage.steps.prefect_yaml import StepContext  # noqa: PLC0415
    from service.prefect_yaml import sources_from_prefect_yaml  # noqa: PLC0415

    assert settings.prefect_yaml is not None  # noqa: S101 - the caller checked
    try:
        blocks = BlockFile.load(settings.blocks_file, secrets_dir=secrets)
    except ConfigurationError as exc:
        raise SettingsError([f"blocks_file: {exc}"]) from None
    translated = sources_from_prefect_yaml(
        settings.prefect_yaml,
        settings.deployments,
        root=settings.root,
        context=StepContext(environ=dict(environ), blocks=blocks, variables=settings.variables),
        step_hooks=settings.step_hooks,
    )
    problems = list(translated.problems)
    sources: list[SourceBase] = []
    for options, origin in zip(translated.sources, translated.origins, strict=True):
        try:
            sources.append(parse_source(options))
        except ValidationError as exc:
            problems += [
                f"{origin}: {format_location(error['loc'][1:]) or 'the step'}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)
            ]
    if problems:
        raise SettingsError(problems, list(enumerate(settings.all_sources())))
    combined = settings.model_copy(update={"sources": [*settings.sources, *sources]})
    combined._notes = tuple(translated.notes)
    names = _duplicate_names(
        {"sources": [{"name": source.name} for source in combined.sources if source.name]}
    )
    if names:
        raise SettingsError([message for _, message in names])
    return combined


def _read_file(path: Path) -> PydanticBaseSettingsSource:
    try:
        # The TOML source parses in its constructor, the YAML one on call: cover both.
        source = _file_source(path)
        source()
    except SettingsError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "unreadable"
        reason = one_line(str(exc), 300) or type(exc).__name__
        raise SettingsError([f"config file {path} cannot be parsed: {reason}"]) from None
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


def _cross_field_problems(values: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """Problems that span several settings, as (location, message) pairs.

    Works on raw, unvalidated values as well as on a validated model's dump: anything of an
    unexpected type is left to the field validation, which reports it.
    """
    problems: list[tuple[Location, str]] = []
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
    if values.get("deployments") and values.get("prefect_yaml") is None:
        problems.append(
            (("deployments",), "names deployments of a prefect.yaml, but prefect_yaml is not set")
        )
    if values.get("token") is not None and values.get("token_file") is not None:
        problems.append((("token_file",), "give either token or token_file, not both"))
    problems += _single_source_problems(values)
    initial, maximum = _number(values.get("backoff_initial")), _number(values.get("backoff_max"))
    if initial is not None and maximum is not None and maximum < initial:
        problems.append(
            (("backoff_max",), f"must not be smaller than backoff_initial ({initial:g})")
        )
    problems += _duplicate_names(values)
    return problems


def _duplicate_names(values: Mapping[str, Any]) -> list[tuple[Location, str]]:
    sources = values.get("sources")
    entries: list[tuple[Location, Any]] = []
    if isinstance(sources, list):
        entries = [
            (("sources", index, "name"), entry.get("name"))
            for index, entry in enumerate(sources)
            if isinstance(entry, Mapping)
        ]
    if values.get("source") is not None:
        entries.append((("name",), values.get("name")))
    seen: dict[str, Location] = {}
    problems: list[tuple[Location, str]] = []
    for location, name in entries:
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                (
                    location,
                    f"{name!r} is also the name of {format_location(seen[name][:-1])};"
                    " names must be unique",
                )
            )
        else:
            seen[name] = location
    return problems


def _single_source_problems(values: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """Whether the single environment source's options fit its kind, located on them.

    Each option's value is checked as a setting of its own already; what is left is the
    kind: one that cannot be told, an option of another kind (a branch for s3://).
    """
    if values.get("source") is None:
        return []
    options = single_source_options(values)
    try:
        parse_source(options)
    except ValidationError as exc:
        return [
            ((_single_source_setting(loc, values),), message)
            for error in exc.errors(include_url=False, include_input=False)
            if error["type"] in KIND_ERRORS
            for loc, message, kind in describe_source_error(error, options, loc=error["loc"])
            if kind != MISPLACED_VALUE
        ]
    return []


def _single_source_setting(loc: Location, values: Mapping[str, Any]) -> str:
    """The setting of the single source that gave the option at ``loc`` of its model."""
    option = str(loc[0]) if loc else "source"
    if option != "credentials":
        return option
    if loc[1:2] == ("username",):
        return "username"
    return "token" if values.get("token") is not None else "token_file"


def _valid_sources(values: Mapping[str, Any]) -> list[tuple[int, SourceBase]]:
    """The configured sources that validate on their own, with their index."""
    entries = values.get("sources")
    entries = list(entries) if isinstance(entries, list) else []
    if values.get("source") is not None:
        entries.append(single_source_options(values))
    valid = []
    for index, entry in enumerate(entries):
        try:
            valid.append((index, parse_source(entry)))
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
