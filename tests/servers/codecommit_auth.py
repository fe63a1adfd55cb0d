"""CodeCommit's side of the git login: checks a SigV4-signed HTTP Basic header.

Written from AWS's documented algorithm (Signature Version 4, as ``git-remote-codecommit``
and ``aws codecommit credential-helper`` apply it to git), independently of
``runner_storage.storage.sigv4``, so the test git server can verify what the code under test
sends. Use it as :attr:`servers.git_http.GitHTTPServer.accept`::

    server.accept = lambda header, path: verify_codecommit_authorization(
        header, repository_path(path), "127.0.0.1", keys.get, "us-east-1"
    )
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

__all__ = ["DEFAULT_MAX_SKEW", "repository_path", "verify_codecommit_authorization"]

#: How far from the server's clock a signature's time may be: SigV4's usual 15 minutes.
DEFAULT_MAX_SKEW = timedelta(minutes=15)

_PASSWORD = re.compile(r"(?P<stamp>\d{8}T\d{6})Z(?P<signature>[0-9a-f]{64})")
_REPOSITORY_PATH = re.compile(r"/v1/repos/[^/]+")


def repository_path(request_path: str) -> str:
    """The repository part (``/v1/repos/NAME``) of a git request's path.

    git asks for ``/v1/repos/NAME/info/refs``, ``/v1/repos/NAME/git-upload-pack``...; the
    signature covers the repository's own path.
    """
    match = _REPOSITORY_PATH.match(request_path)
    return match.group(0) if match else request_path


def _derive(secret: str, day: str, region: str) -> bytes:
    """The signing key: HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), service), term)."""
    k_date = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
    k_region = hmac.new(k_date, region.encode(), hashlib.sha256).digest()
    k_service = hmac.new(k_region, b"codecommit", hashlib.sha256).digest()
    return hmac.new(k_service, b"aws4_request", hashlib.sha256).digest()


def _expected_signature(secret: str, stamp: str, region: str, host: str, path: str) -> str:
    """The hex signature CodeCommit expects for a ``GIT`` request to ``host`` + ``path``."""
    request = "\n".join(["GIT", path, "", f"host:{host}", "", "host", ""])
    scope = "/".join([stamp[:8], region, "codecommit", "aws4_request"])
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    return hmac.new(
        _derive(secret, stamp[:8], region), to_sign.encode(), hashlib.sha256
    ).hexdigest()


def verify_codecommit_authorization(
    header: str | None,
    path: str,
    host: str,
    secret_key_for: Callable[[str, str | None], str | None],
    region: str,
    *,
    now: datetime | None = None,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> bool:
    """Whether ``header`` is a valid CodeCommit login for the repository at ``path``.

    Args:
        header: the request's ``Authorization`` value (None: no login).
        path: the repository path the login must be signed for (``/v1/repos/NAME``).
        host: the host name the login must be signed for (no port).
        secret_key_for: ``(access key id, session token or None) -> secret key``, None for
            an unknown key (or a token that does not belong to it).
        region: the server's region.
        now: the server's clock (default: the current UTC time).
        max_skew: how far the login's timestamp may be from ``now``, either way.
    """
    if not header or not header.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(header[len("Basic ") :], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    username, colon, password = decoded.partition(":")
    if not colon:
        return False
    access_key, percent, token = username.partition("%")
    match = _PASSWORD.fullmatch(password)
    if not access_key or not match or (percent and not token):
        return False
    secret = secret_key_for(access_key, token if percent else None)
    if not secret:
        return False
    try:
        signed_at = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    clock = now if now is not None else datetime.now(timezone.utc)
    if clock.tzinfo is None:
        clock = clock.replace(tzinfo=timezone.utc)
    if abs(clock - signed_at) > max_skew:
        return False
    expected = _expected_signature(secret, match["stamp"], region, host, path)
    return hmac.compare_digest(expected, match["signature"])
