r"""CodeCommit's git login: the SigV4-signed HTTP Basic password of ``git-remote-codecommit``.

AWS CodeCommit over HTTPS takes, as HTTP Basic credentials:

* username: the access key id, followed by ``%`` and the session token when there is one;
* password: ``<YYYYMMDDTHHMMSS>Z<signature>``, the signature being AWS Signature Version 4
  (service ``codecommit``) over a fixed canonical request for the method ``GIT``::

      GIT
      /v1/repos/NAME          (the repository's path, as in its URL)
                              (no query)
      host:git-codecommit.REGION.amazonaws.com    (the host name, without a port)
                              (end of the headers)
      host                    (the signed headers)
                              (an empty payload hash)

  string to sign ``AWS4-HMAC-SHA256\n<timestamp>\n<date>/<region>/codecommit/aws4_request\n
  <hex sha256 of the canonical request>``, signed with the key derived from
  ``"AWS4" + secret key`` through the date, the region, ``codecommit`` and ``aws4_request``.

This is what ``git-remote-codecommit`` and ``aws codecommit credential-helper`` compute. A
signature is only accepted for a few minutes, so :class:`CodeCommitCredentials` signs
afresh every time the git engine asks for a login, reading the AWS credentials again
(rotated keys are picked up).

The AWS credentials come from the standard chain: botocore's when it is installed (the
``s3`` extra brings it: environment, shared files, SSO, ``credential_process``, container
and instance metadata...), otherwise a minimal one of our own (environment variables, then
the shared credentials and config files) that never touches the network.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import hmac
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from runner_storage.exceptions import ConfigurationError, CredentialsError, one_line

__all__ = [
    "SERVICE",
    "TIMESTAMP_FORMAT",
    "AwsCredentials",
    "CodeCommitCredentials",
    "aws_credentials",
    "canonical_request",
    "check_repository_name",
    "codecommit_login",
    "codecommit_region",
    "codecommit_url",
    "signing_key",
    "string_to_sign",
]

#: The SigV4 service name CodeCommit's git endpoint signs for.
SERVICE = "codecommit"
#: The timestamp of the string to sign and of the password (UTC, no ``Z``).
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S"

_REPOSITORY_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")
# Characters that cannot travel in a Basic login (":" splits it, "%" separates the token).
_BAD_KEY_CHARS = re.compile(r"[\s:%\x00-\x1f\x7f]")
_BAD_TOKEN_CHARS = re.compile(r"[\s:\x00-\x1f\x7f]")
_REPO_PATH = "/v1/repos/"

#: Profile settings only botocore's chain can turn into credentials.
_CHAIN_ONLY_SETTINGS = ("sso_", "role_arn", "credential_process", "web_identity_token_file")

_NO_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a profile in"
    " ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE)"
)
_FULL_CHAIN_HINT = (
    "or pip install 'runner-storage[s3]' for the full chain (SSO, roles, credential_process,"
    " instance metadata)"
)


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class AwsCredentials:
    """One set of AWS credentials; its ``repr`` shows the access key id only.

    Attributes:
        access_key: the access key id (``AKIA...``, ``ASIA...``).
        secret_key: the secret access key.
        token: the session token of temporary credentials, or None.

    Raises:
        ConfigurationError: an empty key, or characters a git login cannot carry; the
            message never quotes the secret or the token.
    """

    access_key: str
    secret_key: str
    token: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.access_key, str) or not self.access_key:
            raise ConfigurationError("the AWS access key id is empty: set AWS_ACCESS_KEY_ID")
        if _BAD_KEY_CHARS.search(self.access_key):
            raise ConfigurationError(
                "the AWS access key id holds a space, ':', '%' or a control character:"
                " check AWS_ACCESS_KEY_ID"
            )
        if not isinstance(self.secret_key, str) or not self.secret_key:
            raise ConfigurationError(
                f"the AWS secret access key of {self.access_key} is empty:"
                " set AWS_SECRET_ACCESS_KEY"
            )
        if self.token is not None and (
            not isinstance(self.token, str) or _BAD_TOKEN_CHARS.search(self.token)
        ):
            raise ConfigurationError(
                f"the AWS session token of {self.access_key} is not one line of text:"
                " check AWS_SESSION_TOKEN"
            )
        if self.token == "":
            object.__setattr__(self, "token", None)

    def __repr__(self) -> str:
        token = ", token=***" if self.token else ""
        return f"AwsCredentials(access_key={self.access_key!r}, secret_key=***{token})"


def aws_credentials(profile: str | None = None) -> AwsCredentials:
    """The AWS credentials of the standard chain, read now.

    With botocore installed, its chain (``botocore.session.Session(profile=...)``):
    environment, shared credentials and config files, SSO, ``credential_process``, assumed
    roles, container and instance metadata. Without it, ours: ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (unless ``profile`` is given, as
    botocore does), then the profile (``profile``, else ``AWS_PROFILE``, else ``default``)
    in the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, else
    ``~/.aws/credentials``), then in the config file (``AWS_CONFIG_FILE``, else
    ``~/.aws/config``).

    Raises:
        CredentialsError: nothing found, a profile that does not exist, or a lookup that
            failed; one line, which never quotes a secret.
    """
    return _lookup(profile)[0]


def _lookup(profile: str | None) -> tuple[AwsCredentials, Any]:
    """The credentials, and botocore's self-refreshing object behind them (else None)."""
    session = _botocore_session(profile)
    if session is None:
        return _fallback_credentials(profile), None
    failure: str | None = None
    found: Any = None
    frozen: Any = None
    try:
        found = session.get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
    except Exception as exc:  # noqa: BLE001 - any provider of the chain may fail its own way
        failure = _describe(exc)
    # Raised outside the handler, so neither __cause__ nor __context__ carries botocore's
    # exception (a credential_process's output, say).
    if failure is not None:
        raise CredentialsError(f"AWS credentials could not be read: {failure}")
    if frozen is None or not frozen.access_key or not frozen.secret_key:
        raise CredentialsError(
            f"no AWS credentials found{_profile_note(profile)}: {_NO_CREDENTIALS_HINT}, SSO,"
            " a role, or the instance's metadata"
        )
    credentials = AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token or None)
    refreshes = callable(getattr(found, "refresh_needed", None))
    return credentials, (found if refreshes else None)


def _frozen(found: Any) -> AwsCredentials:
    """Credentials now from a botocore object that refreshes itself (SSO, roles, metadata)."""
    failure: str | None = None
    frozen: Any = None
    try:
        frozen = found.get_frozen_credentials()
    except Exception as exc:  # noqa: BLE001 - a refresh may fail in any provider's way
        failure = _describe(exc)
    if failure is not None:
        raise CredentialsError(f"AWS credentials could not be refreshed: {failure}")
    return AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token or None)


def _botocore_session(profile: str | None) -> Any:
    """A fresh botocore session (files are read again), or None without botocore."""
    try:
        import botocore.session  # noqa: PLC0415 - optional: the s3 extra brings it
    except ImportError:
        return None
    failure: str | None = None
    try:
        return botocore.session.Session(profile=profile)
    except Exception as exc:  # noqa: BLE001
        failure = _describe(exc)
    raise CredentialsError(f"the AWS configuration could not be read: {failure}")


def _describe(exc: BaseException) -> str:
    """A botocore error in one line (its messages are for users and quote no secret)."""
    text = one_line(str(exc), 160)
    return text or type(exc).__name__


def _profile_note(profile: str | None) -> str:
    name = profile or os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    return f" for profile {name!r}" if name else ""


def _fallback_credentials(profile: str | None) -> AwsCredentials:
    """Our minimal chain, used without botocore: variables, then the two shared files."""
    if profile is None:
        key_id = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_ACCESS_KEY")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("AWS_SECRET_KEY")
        if key_id and secret:
            token = os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN")
            return AwsCredentials(key_id, secret, token or None)
        if key_id:  # a secret alone is ignored, as botocore does
            raise CredentialsError(
                "partial AWS credentials in the environment: AWS_ACCESS_KEY_ID is set but"
                " AWS_SECRET_ACCESS_KEY is not"
            )
    name = _profile_name(profile)
    credentials_file = _shared_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
    config_file = _shared_file("AWS_CONFIG_FILE", "config")
    sections: list[tuple[Path, Mapping[str, str]]] = []
    for path, section in ((credentials_file, name), (config_file, _config_section(name))):
        found = _ini_section(path, section)
        if found is None and path == config_file and name == "default":
            found = _ini_section(path, "profile default")
        if found is not None:
            sections.append((path, found))
    for path, values in sections:
        key_id = values.get("aws_access_key_id")
        secret = values.get("aws_secret_access_key")
        if key_id and secret:
            token = values.get("aws_session_token") or values.get("aws_security_token")
            return AwsCredentials(key_id, secret, token or None)
        if key_id:
            raise CredentialsError(
                f"partial AWS credentials for profile {name!r} in {path}: it needs both"
                " aws_access_key_id and aws_secret_access_key"
            )
    if any(key.startswith(_CHAIN_ONLY_SETTINGS) for _, values in sections for key in values):
        raise CredentialsError(
            f"AWS profile {name!r} has no static keys in {credentials_file} or {config_file}"
            f" (SSO, roles and credential_process need botocore): {_FULL_CHAIN_HINT}"
        )
    if not sections and (profile is not None or os.environ.get("AWS_PROFILE")):
        raise CredentialsError(
            f"AWS profile {name!r} not found in {credentials_file} or {config_file}: add it,"
            f" {_FULL_CHAIN_HINT}"
        )
    raise CredentialsError(f"no AWS credentials found: {_NO_CREDENTIALS_HINT}, {_FULL_CHAIN_HINT}")


def _profile_name(profile: str | None) -> str:
    return (
        profile
        or os.environ.get("AWS_PROFILE")
        or os.environ.get("AWS_DEFAULT_PROFILE")
        or "default"
    )


def _config_section(profile: str) -> str:
    return "default" if profile == "default" else f"profile {profile}"


def _shared_file(variable: str, name: str) -> Path:
    given = os.environ.get(variable)
    return Path(given).expanduser() if given else Path.home() / ".aws" / name


def _ini_section(path: Path, section: str) -> Mapping[str, str] | None:
    """One section of an AWS ini file (None if the file or the section is missing).

    Raises:
        CredentialsError: the file exists but cannot be read or parsed.
    """
    parser = configparser.RawConfigParser(default_section="\x00none")
    failure: str | None = None
    try:
        with path.open(encoding="utf-8") as stream:
            parser.read_file(stream)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        failure = f"cannot be read ({exc.__class__.__name__})"
    except configparser.Error as exc:
        # Parser messages quote the offending line, which may be a key: say where only.
        failure = f"is not a valid ini file ({exc.__class__.__name__})"
    if failure is not None:
        raise CredentialsError(f"the AWS file {path} {failure}: fix or remove it")
    if not parser.has_section(section):
        return None
    return {key.lower(): value.strip() for key, value in parser.items(section)}


# --- region and URL -------------------------------------------------------------------------


def codecommit_region(
    client_options: Mapping[str, Any] | None = None, profile: str | None = None
) -> str:
    """The region of a CodeCommit repository, as Prefect 1's ``CodeCommit`` finds it.

    In order: ``client_options["region_name"]`` (Prefect 1's boto3 client options),
    ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region`` (``profile``, else
    ``AWS_PROFILE``, else ``default``; through botocore when installed, else read from
    ``~/.aws/config`` / ``AWS_CONFIG_FILE``).

    Raises:
        ConfigurationError: no region anywhere, or not a region name.
    """
    options = client_options or {}
    region = (
        options.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or _profile_region(profile)
    )
    if not region:
        raise ConfigurationError(
            "no AWS region for CodeCommit: give client_options={'region_name': ...}, set"
            " AWS_REGION, or set the profile's region in ~/.aws/config"
        )
    return _check_region(region)


def _check_region(region: object) -> str:
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ConfigurationError(f"{region!r} is not an AWS region name such as 'us-east-1'")
    return region


def _profile_region(profile: str | None) -> str | None:
    session = _botocore_session(profile)
    if session is None:
        name = _profile_name(profile)
        config_file = _shared_file("AWS_CONFIG_FILE", "config")
        section = _ini_section(config_file, _config_section(name))
        if section is None and name == "default":
            section = _ini_section(config_file, "profile default")
        return (section or {}).get("region") or None
    failure: str | None = None
    try:
        return str(session.get_config_variable("region") or "") or None
    except Exception as exc:  # noqa: BLE001 - ProfileNotFound, a broken config file...
        failure = _describe(exc)
    raise ConfigurationError(f"the AWS region could not be read: {failure}")


def check_repository_name(repo: object) -> str:
    """``repo`` if it is a CodeCommit repository name.

    Letters, digits, ``.``, ``_`` and ``-``, 1 to 100 characters, not ``.`` or ``..``
    and not ending in ``.git`` (CodeCommit's rules).

    Raises:
        ConfigurationError: anything else.
    """
    if not isinstance(repo, str) or not _REPOSITORY_NAME.fullmatch(repo) or repo in (".", ".."):
        raise ConfigurationError(
            f"{repo!r} is not a CodeCommit repository name: use 1 to 100 letters, digits,"
            " '.', '_' or '-'"
        )
    if repo.lower().endswith(".git"):
        raise ConfigurationError(
            f"CodeCommit repository names never end in .git: use {repo[:-4]!r}"
        )
    return repo


def codecommit_url(repo: str, region: str, endpoint_url: str | None = None) -> str:
    """The HTTPS git URL of a CodeCommit repository.

    ``https://git-codecommit.{region}.amazonaws.com/v1/repos/{repo}`` (``.amazonaws.com.cn``
    in the China regions), or ``{endpoint_url}/v1/repos/{repo}`` with an endpoint (a VPC
    endpoint of the git service, or a test server).

    Raises:
        ConfigurationError: a bad repository name, region or endpoint.
    """
    check_repository_name(repo)
    _check_region(region)
    if endpoint_url is None:
        domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"https://git-codecommit.{region}.{domain}{_REPO_PATH}{repo}"
    text = endpoint_url.strip().rstrip("/") if isinstance(endpoint_url, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"endpoint_url {endpoint_url!r} is not an https:// URL")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            "endpoint_url must be scheme://host[:port][/path] only: no credentials, query"
            " or fragment"
        )
    return f"{text}{_REPO_PATH}{repo}"


# --- the signature --------------------------------------------------------------------------


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """SigV4's derived key: ``"AWS4" + secret`` through date, region, service, aws4_request."""
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def canonical_request(host: str, path: str) -> str:
    """CodeCommit's canonical request: method ``GIT``, the path, only ``host`` signed."""
    return f"GIT\n{path}\n\nhost:{host}\n\nhost\n"


def string_to_sign(timestamp: str, region: str, canonical: str) -> str:
    """SigV4's string to sign for a ``YYYYMMDDTHHMMSS`` timestamp (no ``Z``)."""
    scope = f"{timestamp[:8]}/{region}/{SERVICE}/aws4_request"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{digest}"


def codecommit_login(
    url: str, region: str, credentials: AwsCredentials, now: datetime | None = None
) -> tuple[str, str]:
    """``(username, password)`` for HTTP Basic to a CodeCommit repository URL.

    The signature covers the URL's host name (without a port, as the AWS CLI signs it) and
    its path (``/v1/repos/NAME``), at ``now`` (default: the current time; a naive datetime
    is taken as UTC). The username is the access key id, plus ``%`` and the session token
    when there is one; the password is ``<timestamp>Z<hex signature>``.

    Raises:
        ConfigurationError: the URL has no host, or the region is not a region name.
    """
    _check_region(region)
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"cannot sign a CodeCommit login for {_public(url)!r}: no host")
    path = parts.path or "/"
    moment = now if now is not None else datetime.now(timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    timestamp = moment.strftime(TIMESTAMP_FORMAT)
    key = signing_key(credentials.secret_key, timestamp[:8], region)
    text = string_to_sign(timestamp, region, canonical_request(host, path))
    signature = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    username = credentials.access_key + (f"%{credentials.token}" if credentials.token else "")
    return username, f"{timestamp}Z{signature}"


def _public(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))


# --- what the git engine uses ---------------------------------------------------------------

#: How many recently issued logins :meth:`CodeCommitCredentials.secret_values` remembers.
_REMEMBERED = 32


class CodeCommitCredentials:
    """Git credentials for CodeCommit: a freshly signed login at every use.

    Pass it as ``credentials`` to :class:`~runner_storage.GitRepository`: the engine calls
    :meth:`format_git_credentials` whenever it runs git, and each call reads the AWS
    credentials again and signs anew (signatures expire after minutes; rotated keys are
    picked up). Credentials that refresh themselves (SSO, roles, instance metadata) are
    kept and refreshed by botocore instead of being fetched again every time.

    Args:
        region: the repository's region (see :func:`codecommit_region`).
        profile: the AWS profile of the standard chain; None is ``AWS_PROFILE`` or the
            default one.
        credentials: fixed :class:`AwsCredentials`, or a function returning them at every
            use (a secret store lookup, say), instead of the standard chain.
        clock: the current UTC time (tests); default the system clock.

    Raises:
        ConfigurationError: not a region name.

    Example::

        region = codecommit_region({"region_name": "eu-west-1"})
        storage = GitRepository(
            codecommit_url("flows", region), credentials=CodeCommitCredentials(region)
        )
    """

    def __init__(
        self,
        region: str,
        profile: str | None = None,
        credentials: AwsCredentials | Callable[[], AwsCredentials] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.region = _check_region(region)
        if profile is not None and (not isinstance(profile, str) or not profile.strip()):
            raise ConfigurationError(f"profile must be an AWS profile name, not {profile!r}")
        if credentials is not None and not (
            isinstance(credentials, AwsCredentials) or callable(credentials)
        ):
            raise ConfigurationError(
                "credentials must be AwsCredentials or a function returning them, not"
                f" {type(credentials).__name__}"
            )
        self.profile = profile
        self._credentials = credentials
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshing: Any = None
        self._issued: deque[str] = deque(maxlen=_REMEMBERED)

    def aws_credentials(self) -> AwsCredentials:
        """The AWS credentials now: the fixed ones, the function's, or the chain's.

        Raises:
            CredentialsError: none can be found (one line).
        """
        given = self._credentials
        if isinstance(given, AwsCredentials):
            return given
        if given is not None:
            found = given()
            if not isinstance(found, AwsCredentials):
                raise ConfigurationError(
                    f"the credentials function returned {type(found).__name__}, not AwsCredentials"
                )
            return found
        with self._lock:
            refreshing = self._refreshing
        if refreshing is not None:
            return _frozen(refreshing)
        credentials, refreshing = _lookup(self.profile)
        if refreshing is not None:
            with self._lock:
                self._refreshing = refreshing
        return credentials

    def login(self, url: str) -> tuple[str, str]:
        """``(username, password)`` for ``url``, signed now.

        Raises:
            CredentialsError: no AWS credentials.
            ConfigurationError: the URL has no host.
        """
        credentials = self.aws_credentials()
        now = self._clock() if self._clock is not None else None
        username, password = codecommit_login(url, self.region, credentials, now=now)
        header = base64.b64encode(f"{username}:{password}".encode()).decode()
        with self._lock:
            for value in (credentials.secret_key, credentials.token, password, header):
                if value and value not in self._issued:
                    self._issued.append(value)
        return username, password

    def format_git_credentials(self, url: str) -> str:
        """``url`` with a freshly signed ``username:password@`` in it (both URL-quoted).

        Raises:
            CredentialsError: no AWS credentials.
        """
        username, password = self.login(url)
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def secret_values(self) -> list[str]:
        """For redaction: the secrets this object recently used (the last few dozen).

        The secret keys, session tokens, passwords and Basic credentials of its recent
        logins, without reading anything again.
        """
        with self._lock:
            return list(self._issued)

    def __repr__(self) -> str:
        source = (
            repr(self._credentials)
            if isinstance(self._credentials, AwsCredentials)
            else "<function>"
            if self._credentials is not None
            else "<AWS credential chain>"
        )
        return (
            f"CodeCommitCredentials(region={self.region!r}, profile={self.profile!r},"
            f" credentials={source})"
        )
