"""Prefect's templating of pull steps: ``{{ placeholder }}`` in any string of a step.

The placeholders are Prefect's (``prefect.utilities.templating``):

* ``{{ $VAR }}``: the environment variable ``VAR``;
* ``{{ prefect.blocks.TYPE.NAME[.key.path] }}``: a field of a block document (a block with
  only a ``value``, such as a Secret, gives its value);
* ``{{ prefect.variables.NAME }}``: a variable;
* ``{{ step-id.key }}`` (any other name): an output of an earlier step, by its ``id``.

A string that is one placeholder and nothing else becomes the value itself, keeping its
type (a mapping of credentials, a number, a :class:`~runner_storage.Secret`); a string
with text around a placeholder, or several, has each replaced by its text. Where the
values come from is the caller's: :func:`render` takes a resolver. Unlike Prefect, which
silently drops what it cannot resolve, a placeholder without a value is an error naming
it (:class:`UnresolvedPlaceholderError`).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.secrets import is_secret_like, resolve_secret

__all__ = [
    "Placeholder",
    "PlaceholderKind",
    "UnresolvedPlaceholderError",
    "find_placeholders",
    "lookup_path",
    "render",
]

#: Prefect's own pattern, so the same strings are placeholders to both.
_PLACEHOLDER = re.compile(r"({{\s*([\w\.\-\[\]$]+)\s*}})")
_BLOCK_PREFIX = "prefect.blocks."
_VARIABLE_PREFIX = "prefect.variables."
_ENV_PREFIX = "$"


class PlaceholderKind(enum.Enum):
    """Where a placeholder's value comes from."""

    STEP_OUTPUT = "step output"
    BLOCK = "block"
    VARIABLE = "variable"
    ENV = "environment variable"


@dataclass(frozen=True)
class Placeholder:
    """One placeholder: its text as written (``{{ $VAR }}``), its name and its kind."""

    text: str
    name: str

    @property
    def kind(self) -> PlaceholderKind:
        """What the name says the placeholder is."""
        if self.name.startswith(_BLOCK_PREFIX):
            return PlaceholderKind.BLOCK
        if self.name.startswith(_VARIABLE_PREFIX):
            return PlaceholderKind.VARIABLE
        if self.name.startswith(_ENV_PREFIX):
            return PlaceholderKind.ENV
        return PlaceholderKind.STEP_OUTPUT

    @property
    def key(self) -> str:
        """The name without its prefix: ``VAR``, ``TYPE.NAME.key``, a variable's name."""
        for prefix in (_BLOCK_PREFIX, _VARIABLE_PREFIX, _ENV_PREFIX):
            if self.name.startswith(prefix):
                return self.name[len(prefix) :]
        return self.name


class UnresolvedPlaceholderError(ConfigurationError):
    """A placeholder has no value; ``placeholder`` is the one."""

    def __init__(self, placeholder: Placeholder, reason: str) -> None:
        super().__init__(f"{placeholder.text} cannot be resolved: {reason}")
        self.placeholder = placeholder


def find_placeholders(template: Any) -> list[Placeholder]:
    """Every placeholder in ``template`` (strings inside mappings and lists too), in order."""
    found: list[Placeholder] = []
    if isinstance(template, str):
        found += [Placeholder(text, name) for text, name in _PLACEHOLDER.findall(template)]
    elif isinstance(template, Mapping):
        for value in template.values():
            found += find_placeholders(value)
    elif isinstance(template, list | tuple):
        for item in template:
            found += find_placeholders(item)
    return found


#: Returns a placeholder's value, or raises UnresolvedPlaceholderError.
Resolver = Callable[[Placeholder], Any]


def render(
    template: Any, resolve: Resolver, *, kinds: frozenset[PlaceholderKind] | None = None
) -> Any:
    """``template`` with its placeholders replaced by what ``resolve`` gives them.

    Args:
        template: a step's inputs: strings, mappings, lists and scalars, at any depth.
        resolve: the value of one placeholder; raises :class:`UnresolvedPlaceholderError`.
        kinds: only placeholders of these kinds are replaced (default: all); others stay.

    Raises:
        UnresolvedPlaceholderError: ``resolve`` has no value for one, or a mapping or a
            list would have to be written inline into text.
    """
    if isinstance(template, str):
        return _render_text(template, resolve, kinds)
    if isinstance(template, Mapping):
        return {key: render(value, resolve, kinds=kinds) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [render(item, resolve, kinds=kinds) for item in template]
    return template


def _render_text(text: str, resolve: Resolver, kinds: frozenset[PlaceholderKind] | None) -> Any:
    placeholders = [p for p in find_placeholders(text) if kinds is None or p.kind in kinds]
    if not placeholders:
        return text
    if len(placeholders) == 1 and placeholders[0].text == text:
        value = resolve(placeholders[0])
        # Prefect gives environment variables as text, whatever they hold.
        return str(value) if placeholders[0].kind is PlaceholderKind.ENV else value
    for placeholder in placeholders:
        value = resolve(placeholder)
        if is_secret_like(value):
            try:
                value = resolve_secret(value)
            except RunnerStorageError as exc:  # the secret cannot be read now
                raise UnresolvedPlaceholderError(placeholder, str(exc)) from None
        elif isinstance(value, Mapping | list | tuple):
            raise UnresolvedPlaceholderError(
                placeholder,
                f"it is a {type(value).__name__}, which cannot be written inside text;"
                " name one of its fields (e.g. .value or .token), or make it the whole value",
            )
        text = text.replace(placeholder.text, str(value))
    return text


def lookup_path(data: Any, path: str) -> Any:
    """The value at ``path`` inside ``data``, as Prefect's ``get_from_dict`` finds it.

    ``a.b[0].c``, ``a.b.0.c`` and ``a.b[-1]``: the path is split at dots and brackets,
    and a part that reads as an integer indexes a list (or names an integer key).

    Raises:
        KeyError: the path does not lead to a value; the message names the part missing.
    """
    value = data
    consumed = ""
    for part in path.replace("[", ".").replace("]", "").split("."):
        key: str | int = part
        with contextlib.suppress(ValueError):
            key = int(part)
        try:
            value = value[key]
        except (TypeError, KeyError, IndexError):
            where = f" in {consumed}" if consumed else ""
            shown = f"item [{key}]" if isinstance(key, int) else repr(key)
            raise KeyError(f"no {shown}{where}") from None
        consumed = (
            f"{consumed}[{key}]"
            if isinstance(key, int)
            else (f"{consumed}.{key}" if consumed else key)
        )
    return value
