"""Secret holders: :class:`Secret` (literal, environment, file) and the ones we recognise.

A :class:`Secret` is resolved at every pull, never stored in resolved form, so a rotated
file or variable takes effect on the next pull. pydantic's ``SecretStr`` and objects with
``get()`` (Prefect ``Secret`` blocks) are secret holders too; ``SecretStr`` is recognised
without importing pydantic (see :func:`secret_str_value`), so that ``import
runner_storage`` does not pay for it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner_storage.exceptions import ConfigurationError, CredentialsError

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = [
    "Secret",
    "SecretValue",
    "is_secret_like",
    "placeholder_for",
    "resolve_secret",
    "secret_from_placeholder",
    "secret_str_value",
]


class Secret:
    """A credential or setting value that must never be shown.

    Create one from a literal, an environment variable, or a file::

        Secret("tok")                      # literal (avoid in code you commit)
        Secret.from_env("GITHUB_TOKEN")    # read at every pull
        Secret.from_file("/run/secrets/t") # read at every pull, so rotation works

    ``name`` is the Prefect Secret block name used in pull-step placeholders
    (``{{ prefect.blocks.secret.NAME }}``). ``repr`` and ``str`` never show the value.
    """

    __slots__ = ("_env", "_file", "_literal", "name")

    def __init__(self, value: str | SecretStr, *, name: str | None = None) -> None:
        # Kept as plain text in a slot: __repr__ and __str__ are what keep it from showing.
        self._literal = value if isinstance(value, str) else value.get_secret_value()
        self._env: str | None = None
        self._file: Path | None = None
        self.name = name

    @classmethod
    def from_env(cls, variable: str, *, name: str | None = None) -> Secret:
        """A secret read from the environment variable ``variable`` at every use."""
        if not variable or not variable.replace("_", "").isalnum():
            raise ConfigurationError(
                f"invalid environment variable name {variable!r} for a secret:"
                " use letters, digits and underscores"
            )
        secret = cls("", name=name)
        secret._env = variable
        return secret

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, name: str | None = None) -> Secret:
        """A secret read from ``path`` at every use; one trailing newline is dropped."""
        secret = cls("", name=name)
        secret._file = Path(path)
        return secret

    @property
    def env_var(self) -> str | None:
        """The environment variable this secret is read from, if any."""
        return self._env

    @property
    def file_path(self) -> Path | None:
        """The file this secret is read from, if any."""
        return self._file

    def get(self) -> str:
        """Return the current value.

        Raises:
            CredentialsError: the variable is unset or empty, or the file is unreadable.
        """
        if self._env is not None:
            value = os.environ.get(self._env)
            if not value:
                raise CredentialsError(
                    f"secret variable {self._env} is not set: export it or change the source"
                    " settings"
                )
            return value
        if self._file is not None:
            try:
                text = self._file.read_text(encoding="utf-8")
            except OSError as exc:
                raise CredentialsError(
                    f"cannot read secret file {self._file}: {exc.strerror or exc}; check that"
                    " it is mounted and readable"
                ) from None
            value = text[:-1] if text.endswith("\n") else text
            if not value:
                raise CredentialsError(f"secret file {self._file} is empty")
            return value
        return self._literal

    def placeholder(self) -> str | None:
        """The pull-step placeholder for this secret, or None if it has none."""
        if self.name:
            return f"{{{{ prefect.blocks.secret.{self.name} }}}}"
        if self._env:
            return f"{{{{ ${self._env} }}}}"
        return None

    def __repr__(self) -> str:
        if self._env is not None:
            where = f"env={self._env!r}"
        elif self._file is not None:
            where = f"file={str(self._file)!r}"
        else:
            where = "'**********'"
        name = f", name={self.name!r}" if self.name else ""
        return f"Secret({where}{name})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._env, self._file, self._literal, self.name) == (
            other._env,
            other._file,
            other._literal,
            other.name,
        )

    def __hash__(self) -> int:
        return hash((self._env, self._file, self.name))


#: What a credential or setting value may be: a plain string, a pydantic ``SecretStr``,
#: our :class:`Secret`, or any object with ``get()`` (a Prefect ``Secret`` block).
SecretValue = Any


def secret_str_value(value: object) -> str | None:
    """The text of ``value`` if it is a pydantic ``SecretStr``, else None.

    Looks pydantic up in ``sys.modules`` instead of importing it: when pydantic is not
    loaded, no ``SecretStr`` can exist.
    """
    secret_str = getattr(sys.modules.get("pydantic.types"), "SecretStr", None)
    if secret_str is not None and isinstance(value, secret_str):
        return str(value.get_secret_value())
    return None


def is_secret_like(value: object) -> bool:
    """Whether ``value`` is a secret holder rather than a plain value."""
    if isinstance(value, Secret) or secret_str_value(value) is not None:
        return True
    return callable(getattr(value, "get", None)) and not isinstance(value, Mapping)


def resolve_secret(value: SecretValue) -> str:
    """Return the plain text of a secret holder or a plain string."""
    if isinstance(value, Secret):
        return value.get()
    text = secret_str_value(value)
    if text is not None:
        return text
    if isinstance(value, str):
        return value
    getter = getattr(value, "get", None)
    if callable(getter) and not isinstance(value, Mapping):
        return str(getter())
    raise ConfigurationError(
        f"expected a string or a secret for a credential, got {type(value).__name__}"
    )


def placeholder_for(value: SecretValue) -> str | None:
    """The pull-step placeholder of a secret holder, or None when it has none."""
    if isinstance(value, Secret):
        return value.placeholder()
    block_placeholder = getattr(value, "get_block_placeholder", None)
    if callable(block_placeholder):
        return f"{{{{ {block_placeholder()} }}}}"
    return None


_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BLOCK_PLACEHOLDER = re.compile(r"\{\{\s*prefect\.blocks\.secret\.([\w-]+)\s*\}\}")


def secret_from_placeholder(text: str) -> Secret | None:
    """The secret a pull-step placeholder stands for, the inverse of :meth:`Secret.placeholder`.

    ``{{ $VAR }}`` is :meth:`Secret.from_env`; any other text is no placeholder (None): a
    value Prefect already put in its place, or a literal.

    Raises:
        CredentialsError: ``{{ prefect.blocks.secret.NAME }}``, which only Prefect resolves
            (its worker does, before a step runs).
    """
    if (env := _ENV_PLACEHOLDER.fullmatch(text.strip())) is not None:
        return Secret.from_env(env[1])
    if (block := _BLOCK_PLACEHOLDER.fullmatch(text.strip())) is not None:
        raise CredentialsError(
            f"the Prefect Secret block {block[1]!r} is named here, and only Prefect resolves"
            " it: run the step under a Prefect worker, or use Secret.from_env(...) instead"
        )
    return None
