"""Logins: which token a set of credentials holds, and the username each host wants with it.

Prefect's rules, written once for every source that logs in over HTTP (git now, the REST
APIs of git hosts next): ``access_token`` wins over ``token``, which wins over
``password``; with a ``username`` the login is ``username:token``, otherwise the host
decides (GitLab ``oauth2``, Bitbucket ``x-token-auth``, Bitbucket Server a ``user:token``
pair, anything else the bare token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict
from urllib.parse import unquote, urlsplit

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets.secret import SecretValue, resolve_secret

__all__ = ["TOKEN_KEYS", "GitCredentials", "basic_auth", "check_credentials", "token_of"]

#: The keys a credentials mapping may hold its secret under, the winner first.
TOKEN_KEYS = ("access_token", "token", "password")


class GitCredentials(TypedDict, total=False):
    """Credentials for a git repository, as Prefect spells them.

    ``access_token`` wins over ``token``, which wins over ``password``.
    """

    username: str
    access_token: SecretValue
    token: SecretValue
    password: SecretValue


def token_of(credentials: Mapping[str, Any]) -> SecretValue | None:
    """The secret a credentials mapping logs in with (see :data:`TOKEN_KEYS`), or None."""
    return next((credentials[k] for k in TOKEN_KEYS if credentials.get(k)), None)


def check_credentials(credentials: Any) -> None:
    """Reject credentials that can never log in, before the first pull.

    Raises:
        ConfigurationError: not a mapping or a credentials block, or a username without
            a secret.
    """
    if credentials is None:
        return
    if not isinstance(credentials, Mapping):
        if not any(
            callable(getattr(credentials, attr, None))
            for attr in ("format_git_credentials", "model_dump")
        ) and not _attributes(credentials):
            raise ConfigurationError(
                "credentials must be a mapping such as {'access_token': ...} or a credentials"
                f" block, not {type(credentials).__name__}"
            )
        return
    if credentials.get("username") and token_of(credentials) is None:
        raise ConfigurationError(
            "credentials have a username but no access_token, token or password: add the"
            " secret or drop the username"
        )


def _attributes(credentials: object) -> dict[str, Any]:
    """The credential attributes of an object (``username`` and a secret), as a mapping.

    Prefect lets ``credentials`` be any object with them; one with none is not credentials.
    """
    found = {
        key: getattr(credentials, key)
        for key in ("username", *TOKEN_KEYS)
        if getattr(credentials, key, None) is not None
    }
    return found if any(key in found for key in TOKEN_KEYS) else {}


def basic_auth(url: str, credentials: Any) -> tuple[str, str] | None:
    """Apply Prefect's credential rules and return ``(username, password)`` for HTTP Basic.

    ``credentials`` is a :class:`GitCredentials` mapping, an object with
    ``format_git_credentials(url)`` (a Prefect credentials block), an object with
    ``model_dump()``, or one with the attributes (``username``, ``access_token``,
    ``token``, ``password``). Returns None when there is nothing to send.

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
        attributes = _attributes(credentials)
        if not callable(dump) and not attributes:
            raise ConfigurationError(
                "git credentials must be a mapping with username/access_token or a"
                f" credentials block, not {type(credentials).__name__}"
            )
        credentials = dump() if callable(dump) else attributes
    token_value = token_of(credentials)
    if token_value is None:
        raise ConfigurationError(
            "git credentials need an access_token, token or password: add one or drop the"
            " credentials"
        )
    token = resolve_secret(token_value)
    username = credentials.get("username")
    if username:
        return str(username), token
    return host_login((urlsplit(url).hostname or "").lower(), token)


def host_login(host: str, token: str) -> tuple[str, str]:
    """``(username, password)`` for a bare ``token`` on ``host``, by Prefect's host rules.

    Raises:
        ConfigurationError: Bitbucket Server, which needs ``user:token``, got a bare token.
    """
    if "bitbucketserver" in host:
        if ":" not in token:
            raise ConfigurationError(
                "Bitbucket Server needs a username with the token: set credentials.username"
            )
        user, _, password = token.partition(":")
        return user, password
    for marker, default_user in (("bitbucket", "x-token-auth"), ("gitlab", "oauth2")):
        if marker in host:
            user, sep, password = token.partition(":")
            return (user, password) if sep else (default_user, token)
    # GitHub and anything else: the token alone, as the username (what a URL would carry),
    # or, as Prefect documents for a secret holding both, "username:password".
    user, sep, password = token.partition(":")
    return (user, password) if sep else (token, "")
