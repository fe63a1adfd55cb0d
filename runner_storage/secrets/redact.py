"""Redaction: what may be shown of text that might hold a secret.

Anything that prints or persists text that might contain a secret (a log line, an error
message, ``state.json``) passes it through :func:`redact` first. URLs lose their
``user:password@`` part everywhere, whether or not the secret is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from runner_storage.exceptions import exception_chain

__all__ = [
    "REDACTED",
    "chain_may_leak",
    "public_url",
    "redact",
    "secret_parts",
    "strip_url_credentials",
]

REDACTED = "***"

#: Fields of an Azure connection string that are secrets on their own.
_CONNECTION_STRING_SECRETS = ("accountkey", "sharedaccesssignature")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every secret (raw or URL-quoted) and every URL userinfo in ``text``."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, REDACTED)
    return _redact_userinfo(text)


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


def public_url(url: str) -> str:
    """``url`` as messages and ``state.json`` show it: no userinfo, query or fragment.

    A query may hold a signature (presigned URLs), and leaving it out keeps the label
    stable when such a signature is renewed.
    """
    parts = urlsplit(strip_url_credentials(url))
    return urlunsplit(parts._replace(query="", fragment=""))


def secret_parts(value: str) -> list[str]:
    """The parts of ``value`` that are secrets on their own, to redact separately.

    An Azure connection string's account key and signature: a message may quote either
    without the rest.
    """
    found = []
    for part in value.split(";"):
        name, sep, secret = part.partition("=")
        if sep and name.strip().lower() in _CONNECTION_STRING_SECRETS and secret:
            found.append(secret)
    return found


def chain_may_leak(exc: BaseException, redact: Callable[[str], str]) -> bool:
    """Whether the text of ``exc`` or of any exception it chains holds a secret.

    Such an exception must not be chained to ours (``raise ... from None``): a traceback
    would print the secret.
    """
    return any(redact(str(e)) != str(e) for e in exception_chain(exc))


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
