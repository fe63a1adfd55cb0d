"""Secret values (literal, environment, file) and redaction.

A :class:`Secret` is resolved at every pull, never stored in resolved form, so a rotated
file or variable takes effect on the next pull. Anything that prints or persists text that
might contain a secret passes it through :func:`redact` first.

pydantic's ``SecretStr`` is recognised without importing pydantic (see
:func:`secret_str_value`), so that ``import runner_storage`` does not pay for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from runner_storage.exceptions import ConfigurationError, CredentialsError

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = [
    "GitCredentials",
    "Secret",
    "SecretValue",
    "git_basic_auth",
    "placeholder_for",
    "redact",
    "resolve_secret",
    "strip_url_credentials",
]

REDACTED = "***"


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


class GitCredentials(TypedDict, total=False):
    """Credentials for a git repository, as Prefect spells them.

    ``access_token`` wins over ``token``, which wins over ``password``.
    """

    username: str
    access_token: SecretValue
    token: SecretValue
    password: SecretValue


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


def resolve_settings(value: Any) -> Any:
    """Resolve every secret inside nested dicts, lists and tuples of fsspec settings."""
    if isinstance(value, Mapping):
        return {k: resolve_settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve_settings(v) for v in value)
    if is_secret_like(value):
        return resolve_secret(value)
    return value


def secret_values(value: Any) -> list[str]:
    """Every secret's current text inside ``value``, for redaction (unreadable ones skipped)."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for item in value.values():
            found.extend(secret_values(item))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(secret_values(item))
    elif is_secret_like(value):
        with contextlib.suppress(CredentialsError):
            found.append(resolve_secret(value))
    return [s for s in found if s]


def placeholder_for(value: SecretValue) -> str | None:
    """The pull-step placeholder of a secret holder, or None when it has none."""
    if isinstance(value, Secret):
        return value.placeholder()
    block_placeholder = getattr(value, "get_block_placeholder", None)
    if callable(block_placeholder):
        return f"{{{{ {block_placeholder()} }}}}"
    return None


def strip_url_credentials(url: str) -> str:
    """Return ``url`` without any ``user:password@`` part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=host))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret (raw or URL-quoted) and every URL userinfo in ``text``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, REDACTED)
    return _redact_userinfo(text)


def _redact_userinfo(text: str) -> str:
    out: list[str] = []
    start = 0
    while (scheme_end := text.find("://", start)) != -1:
        host_start = scheme_end + 3
        end = host_start
        while end < len(text) and text[end] not in "/ \t\n'\"?#>":
            end += 1
        authority = text[host_start:end]
        out.append(text[start:host_start])
        if "@" in authority:
            out.append(f"{REDACTED}@{authority.rsplit('@', 1)[1]}")
        else:
            out.append(authority)
        start = end
    out.append(text[start:])
    return "".join(out)


def git_basic_auth(url: str, credentials: Any) -> tuple[str, str] | None:
    """Apply Prefect's credential rules and return ``(username, password)`` for HTTP Basic.

    ``credentials`` is a :class:`GitCredentials` mapping, an object with
    ``format_git_credentials(url)`` (a Prefect credentials block), or an object with
    ``model_dump()``. Returns None when there is nothing to send.

    Raises:
        ConfigurationError: the credentials cannot form a login for this host.
        CredentialsError: a secret cannot be read.
    """
    if not credentials:
        return None
    formatter = getattr(credentials, "format_git_credentials", None)
    if callable(formatter):
        formatted = urlsplit(str(formatter(url)))
        if formatted.username is None:
            return None
        return unquote(formatted.username), unquote(formatted.password or "")
    if not isinstance(credentials, Mapping):
        dump = getattr(credentials, "model_dump", None)
        if not callable(dump):
            raise ConfigurationError(
                "git credentials must be a mapping with username/access_token or a"
                f" credentials block, not {type(credentials).__name__}"
            )
        credentials = dump()
    token_value = next(
        (credentials[k] for k in ("access_token", "token", "password") if credentials.get(k)),
        None,
    )
    if token_value is None:
        raise ConfigurationError(
            "git credentials need an access_token, token or password: add one or drop the"
            " credentials"
        )
    token = resolve_secret(token_value)
    username = credentials.get("username")
    if username:
        return str(username), token
    host = (urlsplit(url).hostname or "").lower()
    if "bitbucketserver" in host:
        if ":" not in token:
            raise ConfigurationError(
                "Bitbucket Server needs a username with the token: set credentials.username"
            )
        user, _, password = token.partition(":")
        return user, password
    if "bitbucket" in host:
        user, sep, password = token.partition(":")
        return (user, password) if sep else ("x-token-auth", token)
    if "gitlab" in host:
        user, sep, password = token.partition(":")
        return (user, password) if sep else ("oauth2", token)
    # GitHub and anything else: the token alone, as the username (what a URL would carry).
    return token, ""
