"""The one walk over nested values that finds, resolves and replaces secrets.

fsspec settings, git credentials and Prefect blocks are all nested values: mappings, lists
and tuples of plain values and secret holders, and, for blocks, objects whose attributes
hold more of them. Everything that needs the secrets inside (resolving them for a pull,
collecting them for redaction, writing placeholders into a pull step, turning a
configuration's ``{ env = "VAR" }`` tables into :class:`~runner_storage.Secret`) goes
through :func:`walk`, so what is looked into is decided once:

* mappings, lists and tuples, always;
* the attributes of other objects (a block and the credentials block inside it) only with
  ``objects=True``, and never deeper than :data:`MAX_DEPTH`;
* a secret holder (:func:`~runner_storage.secrets.secret.is_secret_like`) is a leaf.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from runner_storage.exceptions import CredentialsError
from runner_storage.secrets.redact import secret_parts
from runner_storage.secrets.secret import Secret, is_secret_like, resolve_secret, secret_str_value

__all__ = [
    "DESCEND",
    "GCS_TOKEN_MODES",
    "MAX_DEPTH",
    "SENSITIVE_SETTING_KEYS",
    "login_modes",
    "resolve_settings",
    "secret_values",
    "walk",
]

#: Setting names whose plain-text values are secrets (s3fs, gcsfs, adlfs, http, ftp, git).
SENSITIVE_SETTING_KEYS = frozenset(
    {
        "secret",
        "token",
        "password",
        "session_token",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "connection_string",
        "sas_token",
        "client_secret",
        "credential",
        "access_token",
        "service_account_info",
    }
)

#: How deep :func:`walk` goes into settings and credentials.
MAX_DEPTH = 8
#: How deep :func:`secret_values` goes into objects: a block's credentials block's fields
#: are two levels down, and an object graph is not ours to explore further.
OBJECT_DEPTH = 3

#: Returned by a visitor: look inside this value (or keep it, if it holds nothing).
DESCEND: Any = object()

#: ``visit(value, key, path)``: the replacement of ``value``, or :data:`DESCEND`. ``key``
#: is the nearest mapping key or attribute name above (list items share their list's);
#: ``path`` says where, for messages (``settings['client_kwargs'][0]``).
Visitor = Callable[[Any, "str | None", str], Any]


def walk(
    value: Any,
    visit: Visitor,
    *,
    path: str = "",
    key: str | None = None,
    objects: bool = False,
    depth: int = MAX_DEPTH,
) -> Any:
    """``value`` with each part replaced by what ``visit`` returns for it.

    ``visit`` sees every value, outermost first; returning :data:`DESCEND` looks inside a
    mapping, list or tuple (rebuilt from the results) or, with ``objects``, an object's
    attributes (the object itself is kept: only what ``visit`` sees matters there).
    """
    result = visit(value, key, path)
    if result is not DESCEND:
        return result
    if depth <= 0:
        return value
    deeper = depth - 1
    if isinstance(value, Mapping):
        return {
            k: walk(v, visit, path=f"{path}[{k!r}]", key=str(k), objects=objects, depth=deeper)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [
            walk(v, visit, path=f"{path}[{i}]", key=key, objects=objects, depth=deeper)
            for i, v in enumerate(value)
        ]
        return tuple(items) if isinstance(value, tuple) else items
    if objects and hasattr(value, "__dict__") and not isinstance(value, type | ModuleType):
        for name, child in vars(value).items():
            walk(child, visit, path=f"{path}.{name}", key=name, objects=True, depth=deeper)
    return value


def resolve_settings(value: Any, *, found: list[str] | None = None) -> Any:
    """``value`` with every secret holder inside replaced by its current text.

    Args:
        value: settings, credentials, or any nested value.
        found: when given, each secret's text is appended to it as it is read, so that
            what is redacted is exactly what was used.

    Raises:
        CredentialsError: a secret cannot be read.
    """

    def resolve(item: Any, _key: str | None, _path: str) -> Any:
        if not is_secret_like(item):
            return DESCEND
        text = resolve_secret(item)
        if found is not None:
            found.append(text)
        return text

    return walk(value, resolve)


#: gcsfs's ``token`` values that name a way to find credentials, not a credential.
GCS_TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "cache", "browser"})


def login_modes(protocol: str | None, settings: Any) -> dict[str, str]:
    """The settings under a secret's name that say how to log in instead: not secrets.

    ``settings`` are a filesystem's of ``protocol``: gcsfs's ``token="anon"`` (and its
    other :data:`GCS_TOKEN_MODES`) on ``gs://``. On S3 ``token`` is the session token, and
    a dict is a service account's key everywhere; without a protocol nothing is a mode.
    """
    if protocol is None or not isinstance(settings, Mapping):
        return {}
    token = settings.get("token")
    if protocol.lower() in {"gs", "gcs"} and isinstance(token, str) and token in GCS_TOKEN_MODES:
        return {"token": token}
    return {}


def secret_values(value: Any, *, objects: bool = False, protocol: str | None = None) -> list[str]:
    """Every secret's current text inside ``value``, for redaction.

    Secret holders count (unreadable ones are skipped), and so does plain text under a
    sensitive key (:data:`SENSITIVE_SETTING_KEYS`). With ``objects``, the attributes of
    objects are searched too (a block's ``SecretStr`` fields, its credentials block's);
    an object's ``get()`` is then never called, since only our own holders are known to
    be safe to read. With ``protocol``, ``value`` holds that filesystem's settings, whose
    :func:`login_modes` are not secrets (``token="anon"`` would hide "anon" everywhere).
    """
    modes = login_modes(protocol, value)
    if modes:
        value = {key: item for key, item in value.items() if key not in modes}
    found: list[str] = []

    def collect(item: Any, key: str | None, _path: str) -> Any:
        if objects and not (isinstance(item, Secret) or secret_str_value(item) is not None):
            holder = False
        else:
            holder = is_secret_like(item)
        if holder:
            with contextlib.suppress(CredentialsError):
                found.append(resolve_secret(item))
            return item
        if isinstance(item, str):
            if key in SENSITIVE_SETTING_KEYS:
                found.append(item)
            return item
        return DESCEND

    walk(value, collect, objects=objects, depth=OBJECT_DEPTH if objects else MAX_DEPTH)
    found += [part for text in found for part in secret_parts(text)]
    return [text for text in found if text]
