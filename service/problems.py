"""Invalid settings as users read them: one line per problem, the field, the origin.

pydantic's errors are located and worded for a program; here each becomes
``sources[0].branch: only applies to git sources, and 's3://b/p' is remote (from FILE)``:
the kind's tag dropped from the location, a source whose kind cannot be told explained by
the library's classifier, an option of another kind named with both kinds, and the origin
(a file, an environment variable, the secrets directory) said last. Values are never
shown: they may be secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import classify_source
from runner_storage.secrets import strip_url_credentials
from service.sources import MODELS, SOURCE_KIND_ERROR

__all__ = [
    "ENV_PREFIX",
    "KIND_ERRORS",
    "Location",
    "describe",
    "describe_source_error",
    "format_location",
    "problem",
    "pydantic_message",
]

ENV_PREFIX = "RUNNER_STORAGE_"

#: Where a setting is: keys and list indexes from the top of the settings.
Location = tuple[int | str, ...]

#: What to do about the pydantic errors whose message does not say it.
HINTS = {
    "extra_forbidden": " (an unknown setting: check its spelling, or remove it)",
    "missing": " (add it)",
}

#: The problems that concern the kind of a source (an option of another kind, a kind that
#: cannot be told), as opposed to a value's own.
KIND_ERRORS = frozenset({"extra_forbidden", SOURCE_KIND_ERROR})
#: What :func:`describe_source_error` calls the problems of a misplaced option's value.
MISPLACED_VALUE = "misplaced_value"


def pydantic_message(error: ErrorDetails) -> str:
    """The message of ``error`` without pydantic's prefix, with a hint where it lacks one."""
    return error["msg"].removeprefix("Value error, ") + HINTS.get(error["type"], "")


def describe(
    exc: ValidationError,
    provided: list[tuple[str, dict[str, Any]]],
    values: Mapping[str, Any],
    *,
    whole_model: bool,
) -> list[str]:
    """The validation errors of the daemon settings, one line each.

    Args:
        exc: what validating ``values`` raised.
        provided: each origin's name and the values it gave, highest precedence first.
        values: the merged values that were validated.
        whole_model: keep the errors of the model as a whole (not located on a field).
    """
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        if not loc and not whole_model:
            continue
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entry = _entry(values, loc[1])
            lines += [
                problem(loc[:2] + where, message, provided)
                for where, message, _ in describe_source_error(error, entry, loc=loc[2:])
            ]
        else:
            lines.append(problem(loc, pydantic_message(error), provided))
    return lines


def describe_source_error(
    error: ErrorDetails, entry: Any, *, loc: Location
) -> list[tuple[Location, str, str]]:
    """One error of validating the source ``entry``, as (location, message, error type).

    Args:
        error: the error.
        entry: the source as given (a mapping, not validated).
        loc: the error's location from the source down: the kind's tag first, as pydantic
            gives it, or nothing for a source whose kind cannot be told.

    Returns:
        The tag dropped from the location; a source whose kind cannot be told explained
        by the classifier; an option of another kind named with both kinds, followed by
        its value's own problems (type ``misplaced_value``), so that fixing the kind
        leaves nothing behind.
    """
    tag, where = (str(loc[0]), loc[1:]) if loc and loc[0] in MODELS else ("", loc)
    if error["type"] == SOURCE_KIND_ERROR:
        return [(*_unclassified(entry), SOURCE_KIND_ERROR)]
    option = str(where[0]) if len(where) == 1 else ""
    kinds = [kind for kind, model in MODELS.items() if option in model.model_fields]
    # A source given by its URL is named the URL kinds that take the option; a kind that
    # no URL describes (block) only when none of those does.
    kinds = [kind for kind in kinds if MODELS[kind].described_by_source] or kinds
    if error["type"] != "extra_forbidden" or not kinds:
        return [(where, pydantic_message(error), error["type"])]
    source = _where(entry)
    which = repr(strip_url_credentials(source)) if isinstance(source, str) else "this source"
    message = f"only applies to {' and '.join(kinds)} sources, and {which} is {tag}"
    value = entry.get(option) if isinstance(entry, Mapping) else None
    return [(where, message, error["type"])] + [
        (location, text, MISPLACED_VALUE) for location, text in _value_problems(option, value)
    ]


def problem(loc: Location, message: str, provided: list[tuple[str, dict[str, Any]]]) -> str:
    """One line: the setting, what is wrong, and where the value came from."""
    top = str(loc[0]) if loc else ""
    origin = next((o for o, values in provided if top in values), None)
    if origin == "environment":
        origin = f"environment variable {ENV_PREFIX}{top.upper()}"
    where = f" (from {origin})" if origin else ""
    return f"{format_location(loc) or 'settings'}: {message}{where}"


def format_location(loc: Location) -> str:
    """``sources[0].credentials.token``: keys joined with dots, indexes in brackets."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _entry(values: Mapping[str, Any], index: int) -> Any:
    sources = values.get("sources")
    return sources[index] if isinstance(sources, list) and index < len(sources) else None


def _where(entry: Any) -> Any:
    """What names the place of ``entry``: its ``source``, or a block's ``basepath``."""
    if not isinstance(entry, Mapping):
        return None
    return entry.get("source", entry.get("basepath"))


def _value_problems(option: str, value: Any) -> list[tuple[Location, str]]:
    """What is wrong with ``value`` as ``option`` of the first kind that has it."""
    model = next(m for m in MODELS.values() if option in m.model_fields)
    try:
        model.model_validate({**model.placeholder(), option: value})
    except ValidationError as exc:
        return [
            (tuple(error["loc"]), pydantic_message(error))
            for error in exc.errors(include_url=False, include_input=False)
            if tuple(error["loc"][:1]) == (option,)
        ]
    return []


def _unclassified(entry: Any) -> tuple[Location, str]:
    """Why the kind of ``entry`` cannot be told, and where in it."""
    if not isinstance(entry, Mapping):
        return (), "should be a table with at least source = ..."
    kind = entry.get("kind", "auto")
    if kind != "auto" and kind not in MODELS:
        *others, last = (repr(k) for k in ("auto", *MODELS))
        return ("kind",), f"Input should be {', '.join(others)} or {last}"
    if "block" in entry and "source" not in entry:
        return ("kind",), 'a source that names a block needs kind = "block" (add it)'
    source = entry.get("source")
    if source is None:
        return ("source",), "Field required (add it)"
    if not isinstance(source, str):
        return ("source",), "Input should be a valid string"
    try:
        classify_source(source)
    except ConfigurationError as exc:
        return ("source",), str(exc)  # one line, and it never quotes URL credentials
    return ("source",), "the kind of this source cannot be told"
