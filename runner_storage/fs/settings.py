"""Settings a filesystem would reject only on its first request, checked when it is built.

Every fsspec filesystem takes ``**kwargs`` and most ignore or defer what they do not
know, so a misspelled or mistyped setting would otherwise surface as a failed (and
retried) request against the store. Here it is a :class:`ConfigurationError` that names
the setting, and values are never shown.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fsspec.spec import AbstractFileSystem

from runner_storage.exceptions import ConfigurationError, RunnerStorageError, describe_error
from runner_storage.fs.errors import CONFIG_TYPES, type_names
from runner_storage.fs.protocols import missing_dependency

__all__ = [
    "building_error",
    "check_settings",
    "named_parameters",
    "package_of",
    "unknown_setting",
]

#: Settings each package takes as text only; another type would fail only on the first
#: request (``key=5`` when it is signed), as a failure of the store.
_TEXT_SETTINGS: dict[str, frozenset[str]] = {
    "s3fs": frozenset(
        {"key", "secret", "token", "endpoint_url", "username", "password", "profile"}
    ),
    "adlfs": frozenset(
        {
            "account_name",
            "account_key",
            "connection_string",
            "sas_token",
            "client_id",
            "client_secret",
            "tenant_id",
            "account_host",
        }
    ),
}


def package_of(cls: type) -> str:
    """The top-level package that defines ``cls`` (``s3fs``, ``gcsfs``, ``fsspec``...)."""
    return cls.__module__.split(".", 1)[0]


def named_parameters(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``function`` after ``self``, with their defaults.

    Empty when the signature cannot be read (then nothing is checked against it).
    """
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters if p.kind in keyword}


def check_settings(
    protocol: str, cls: type[AbstractFileSystem], settings: Mapping[str, Any]
) -> None:
    """Raise ConfigurationError for a missing or wrongly typed setting, by name.

    Checked before the filesystem is built: a half-built one can fail again in ``__del__``
    and print a traceback when it is collected. Values are never shown.
    """
    # Unknown names cannot be told here: every fsspec filesystem takes **kwargs, and most
    # ignore the ones they do not know (s3fs's are checked by _prepare_s3fs).
    for name, default in named_parameters(cls.__init__).items():
        if default is inspect.Parameter.empty and name not in settings:
            raise ConfigurationError(
                f"{protocol}:// needs the setting {name!r}: add it to the source's settings"
                f" ({cls.__name__} does not read it from the URL)"
            )
    for name in sorted(_TEXT_SETTINGS.get(package_of(cls), frozenset())):
        value = settings.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(
                f"the {protocol}:// setting {name!r} must be text, not {type(value).__name__}:"
                " quote it, or give a Secret"
            )


def unknown_setting(
    protocol: str, cls: type, name: str, accepted: Iterable[str]
) -> ConfigurationError:
    """The error for a setting ``cls`` does not take, with the closest one it does."""
    close = difflib.get_close_matches(name, [a for a in accepted if not a.startswith("_")], n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigurationError(
        f"{protocol}:// has no setting {name!r}{guess}: check the setting names against the"
        f" documentation of {package_of(cls)}'s {cls.__name__}"
    )


def building_error(
    protocol: str,
    settings: Mapping[str, Any],
    exc: Exception,
    redact: Callable[[str], str] | None,
) -> Exception:
    """What building a filesystem raised, as ours when a setting or a package is to blame.

    Without ``redact`` only the type of a rejection is shown: the filesystem's text may
    quote a setting's value.
    """
    if isinstance(exc, RunnerStorageError):
        return exc
    if isinstance(exc, ImportError):  # e.g. hdfs:// imports pyarrow only when it is built
        return missing_dependency(protocol, exc)
    if not (
        isinstance(exc, TypeError | ValueError | AttributeError) or type_names(exc) & CONFIG_TYPES
    ):
        return exc  # a network failure of a filesystem that connects when built
    detail = describe_error(exc, redact=redact) if redact is not None else type(exc).__name__
    names = ", ".join(sorted(settings)) or "(none)"
    return ConfigurationError(
        f"{protocol}:// rejected the settings {names} ({detail}): check their names, types"
        " and values against the filesystem's documentation"
    )
