"""Secrets: holders, the one walk that finds them, redaction, and per-host login rules.

* :mod:`~runner_storage.secrets.secret`: :class:`Secret` and the holders we recognise.
* :mod:`~runner_storage.secrets.walk`: finding, resolving and replacing secrets inside
  settings, credentials and blocks.
* :mod:`~runner_storage.secrets.redact`: what may be shown of text that might hold one.
* :mod:`~runner_storage.secrets.logins`: which token credentials hold, and the username
  each host wants with it.
"""

from __future__ import annotations

from runner_storage.secrets.logins import (
    TOKEN_KEYS,
    GitCredentials,
    basic_auth,
    check_credentials,
    host_login,
    token_of,
)
from runner_storage.secrets.redact import (
    REDACTED,
    chain_may_leak,
    public_url,
    redact,
    secret_parts,
    strip_url_credentials,
)
from runner_storage.secrets.secret import (
    Secret,
    SecretValue,
    is_secret_like,
    placeholder_for,
    resolve_secret,
    secret_from_placeholder,
    secret_str_value,
)
from runner_storage.secrets.walk import (
    DESCEND,
    SENSITIVE_SETTING_KEYS,
    resolve_settings,
    secret_values,
    walk,
)

__all__ = [
    "DESCEND",
    "REDACTED",
    "SENSITIVE_SETTING_KEYS",
    "TOKEN_KEYS",
    "GitCredentials",
    "Secret",
    "SecretValue",
    "basic_auth",
    "chain_may_leak",
    "check_credentials",
    "host_login",
    "is_secret_like",
    "placeholder_for",
    "public_url",
    "redact",
    "resolve_secret",
    "resolve_settings",
    "secret_from_placeholder",
    "secret_parts",
    "secret_str_value",
    "secret_values",
    "strip_url_credentials",
    "token_of",
    "walk",
]
