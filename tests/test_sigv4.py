"""CodeCommit's SigV4 git login, as the user and CodeCommit see it.

The signature, the AWS credential chain, the region, and a pull from a git server that
verifies the login as CodeCommit does.
"""

from __future__ import annotations

import base64
import itertools
import os
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from servers.codecommit_auth import repository_path, verify_codecommit_authorization
from servers.git_http import GitHTTPServer, make_self_signed_cert
from servers.gitrepo import INITIAL_FILES, UpstreamRepo
from servers.procs import LOOPBACK

from runner_storage import GitRepository
from runner_storage.deployments.steps import pull_codecommit
from runner_storage.exceptions import AuthenticationError, ConfigurationError, CredentialsError
from runner_storage.git.environment import authorization
from runner_storage.secrets import basic_auth
from runner_storage.storage.codecommit import CodeCommit
from runner_storage.storage.sigv4 import (
    AwsCredentials,
    CodeCommitCredentials,
    aws_credentials,
    codecommit_login,
    codecommit_region,
    codecommit_url,
    signing_key,
)

REGION = "eu-west-1"
ACCESS_KEY = "AKIDEXAMPLE0CODECOMMIT"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TEMP_ACCESS_KEY = "ASIAEXAMPLE0TEMPORARY"
TEMP_SECRET_KEY = "t3mp/S3cret+Key0fTheSessionCredentials1"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE/session+token=="
ROTATED_ACCESS_KEY = "AKIDEXAMPLE0ROTATED00"
ROTATED_SECRET_KEY = "r0tated/S3cret+KeyAfterTheFirstPull0000"

#: What the test CodeCommit server knows: access key -> (secret key, session token).
SERVER_KEYS: dict[str, tuple[str, str | None]] = {
    ACCESS_KEY: (SECRET_KEY, None),
    TEMP_ACCESS_KEY: (TEMP_SECRET_KEY, SESSION_TOKEN),
    ROTATED_ACCESS_KEY: (ROTATED_SECRET_KEY, None),
}

AWS_HOST = f"git-codecommit.{REGION}.amazonaws.com"
AWS_URL = f"https://{AWS_HOST}/v1/repos/MyDemoRepo"
MOMENT = datetime(2015, 8, 30, 12, 36, tzinfo=timezone.utc)
pytestmark = pytest.mark.anyio


def secret_key_for(access_key: str, token: str | None) -> str | None:
    """The server's secret for a key, only with the session token that belongs to it."""
    secret, expected_token = SERVER_KEYS.get(access_key, (None, None))
    return secret if token == expected_token else None


def header_of(login: tuple[str, str]) -> str:
    """The ``Authorization`` header git sends for a login."""
    return authorization(login)


def verify(
    header: str | None,
    *,
    path: str = "/v1/repos/MyDemoRepo",
    host: str = AWS_HOST,
    region: str = REGION,
    now: datetime = MOMENT,
) -> bool:
    """The test server's verdict on a header, at ``now``."""
    return verify_codecommit_authorization(header, path, host, secret_key_for, region, now=now)


# --- the signature ----------------------------------------------------------------------------


class TestSignature:
    """The password is the SigV4 signature git-remote-codecommit computes."""

    def test_signing_key_matches_awss_documented_examples(self) -> None:
        """The key derivation gives the signing keys of AWS's SigV4 documentation."""
        secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
        assert signing_key(secret, "20120215", "us-east-1", "iam").hex() == (
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        )
        assert signing_key(secret, "20150830", "us-east-1", "iam").hex() == (
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        )

    def test_known_answer(self) -> None:
        """A fixed key, URL and time give a fixed login (the value botocore gives too)."""
        credentials = AwsCredentials("AKIDEXAMPLE", SECRET_KEY)
        login = codecommit_login(
            "https://git-codecommit.us-east-1.amazonaws.com/v1/repos/MyDemoRepo",
            "us-east-1",
            credentials,
            now=MOMENT,
        )
        assert login == (
            "AKIDEXAMPLE",
            "20150830T123600Z088fec8c788f892e6cb940f22a736b224a5a5de18925fa5f02413a1bb215c389",
        )

    @pytest.mark.parametrize("token", [None, SESSION_TOKEN])
    @pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-2"])
    def test_signature_equals_botocores_sigv4(self, region: str, token: str | None) -> None:
        """The signature is what botocore's SigV4Auth gives, used as git-remote-codecommit does."""
        auth = pytest.importorskip("botocore.auth")
        awsrequest = pytest.importorskip("botocore.awsrequest")
        botocore_credentials = pytest.importorskip("botocore.credentials")
        host, path = f"git-codecommit.{region}.amazonaws.com", "/v1/repos/some.repo_1-x"
        request = awsrequest.AWSRequest(method="GIT", url=f"https://{host}{path}")
        request.context["timestamp"] = "20240229T235959"
        signer = auth.SigV4Auth(
            botocore_credentials.Credentials(ACCESS_KEY, SECRET_KEY, token), "codecommit", region
        )
        to_sign = signer.string_to_sign(request, f"GIT\n{path}\n\nhost:{host}\n\nhost\n")
        expected = f"20240229T235959Z{signer.signature(to_sign, request)}"

        username, password = codecommit_login(
            f"https://{host}{path}",
            region,
            AwsCredentials(ACCESS_KEY, SECRET_KEY, token),
            now=datetime(2024, 2, 29, 23, 59, 59, tzinfo=timezone.utc),
        )
        assert password == expected
        assert username == (f"{ACCESS_KEY}%{token}" if token else ACCESS_KEY)

    def test_time_is_utc_and_naive_means_utc(self) -> None:
        """The signed time is UTC: an aware time in another zone and a naive UTC time agree."""
        credentials = AwsCredentials(ACCESS_KEY, SECRET_KEY)
        paris = MOMENT.astimezone(timezone(timedelta(hours=2)))
        naive = MOMENT.replace(tzinfo=None)
        logins = {
            codecommit_login(AWS_URL, REGION, credentials, now=t) for t in (MOMENT, paris, naive)
        }
        assert len(logins) == 1
        assert next(iter(logins))[1].startswith("20150830T123600Z")

    def test_default_time_is_now(self) -> None:
        """Without ``now`` the login is signed at the current time, which the server accepts."""
        login = codecommit_login(AWS_URL, REGION, AwsCredentials(ACCESS_KEY, SECRET_KEY))
        assert verify(header_of(login), now=datetime.now(timezone.utc))

    def test_port_and_userinfo_are_not_signed(self) -> None:
        """As the AWS CLI signs it: the host name alone, without port or user."""
        credentials = AwsCredentials(ACCESS_KEY, SECRET_KEY)
        plain = codecommit_login(AWS_URL, REGION, credentials, now=MOMENT)
        for url in (
            f"https://{AWS_HOST}:443/v1/repos/MyDemoRepo",
            f"https://someone@{AWS_HOST}/v1/repos/MyDemoRepo",
        ):
            assert codecommit_login(url, REGION, credentials, now=MOMENT) == plain
        other = codecommit_login(
            f"https://{AWS_HOST}/v1/repos/Other", REGION, credentials, now=MOMENT
        )
        assert other[1] != plain[1]

    def test_a_url_without_host_is_refused(self) -> None:
        """A URL with no host cannot be signed: one line."""
        with pytest.raises(ConfigurationError, match="no host"):
            codecommit_login("/v1/repos/x", REGION, AwsCredentials(ACCESS_KEY, SECRET_KEY))


class TestVerifier:
    """The test server's independent check accepts our login and nothing else."""

    def test_accepts_ours(self) -> None:
        """Our login for the repository, at the same moment, is accepted."""
        login = codecommit_login(AWS_URL, REGION, AwsCredentials(ACCESS_KEY, SECRET_KEY), MOMENT)
        assert verify(header_of(login))

    def test_accepts_ours_with_a_session_token(self) -> None:
        """Temporary credentials: the token travels in the username after ``%``."""
        credentials = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        login = codecommit_login(AWS_URL, REGION, credentials, MOMENT)
        assert login[0] == f"{TEMP_ACCESS_KEY}%{SESSION_TOKEN}"
        assert verify(header_of(login))
        without_token = (TEMP_ACCESS_KEY, login[1])
        assert not verify(header_of(without_token))

    @pytest.mark.parametrize(
        ("change", "check"),
        [
            ("wrong secret key", {}),
            ("wrong region", {"region": "us-east-1"}),
            ("old timestamp", {"now": MOMENT + timedelta(minutes=16)}),
            ("future timestamp", {"now": MOMENT - timedelta(minutes=16)}),
            ("tampered path", {"path": "/v1/repos/SomethingElse"}),
            ("other host", {"host": "git-codecommit.us-east-1.amazonaws.com"}),
        ],
    )
    def test_refuses(self, change: str, check: dict[str, object]) -> None:
        """A login signed for something else, or too long ago, is refused."""
        secret = "not-the-secret" if change == "wrong secret key" else SECRET_KEY
        login = codecommit_login(AWS_URL, REGION, AwsCredentials(ACCESS_KEY, secret), MOMENT)
        assert verify(header_of(login)) is (change != "wrong secret key")  # control
        assert not verify(header_of(login), **check)  # type: ignore[arg-type]

    def test_a_few_minutes_of_skew_are_accepted(self) -> None:
        """Within 15 minutes either way the login stands (clocks differ a little)."""
        login = codecommit_login(AWS_URL, REGION, AwsCredentials(ACCESS_KEY, SECRET_KEY), MOMENT)
        for minutes in (-14, 14):
            assert verify(header_of(login), now=MOMENT + timedelta(minutes=minutes))

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer x",
            "Basic !!!",
            "Basic " + base64.b64encode(b"no-colon").decode(),
            "Basic " + base64.b64encode(f"{ACCESS_KEY}:20150830T123600Z00".encode()).decode(),
            "Basic " + base64.b64encode(b"UNKNOWNKEY:20150830T123600Z" + b"0" * 64).decode(),
        ],
    )
    def test_refuses_malformed_headers(self, header: str | None) -> None:
        """No header, another scheme, bad base64, a bad password shape, an unknown key."""
        assert not verify(header)

    def test_repository_path_of_git_requests(self) -> None:
        """The server checks the signature against the repository part of each request."""
        assert repository_path("/v1/repos/a.b/info/refs") == "/v1/repos/a.b"
        assert repository_path("/v1/repos/a/git-upload-pack") == "/v1/repos/a"
        assert repository_path("/other/x") == "/other/x"


# --- credentials -----------------------------------------------------------------------------


@pytest.fixture
def aws_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and no AWS_* variables (instance metadata off): nothing to find."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture(params=["botocore", "fallback"])
def chain(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with botocore's chain and with ours (botocore made unimportable)."""
    if request.param == "botocore":
        pytest.importorskip("botocore.session")
    else:
        monkeypatch.setitem(sys.modules, "botocore.session", None)
    return str(request.param)


def write(path: Path, text: str) -> Path:
    """Write a dedented ini file."""
    path.write_text(textwrap.dedent(text))
    return path


class TestAwsCredentials:
    """The standard AWS chain: variables, shared files, profiles; one line when empty."""

    def test_repr_hides_the_secret_and_token(self) -> None:
        """Its repr shows the access key id only."""
        credentials = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        assert TEMP_ACCESS_KEY in repr(credentials)
        assert TEMP_SECRET_KEY not in repr(credentials)
        assert SESSION_TOKEN not in repr(credentials)
        assert TEMP_SECRET_KEY not in str(credentials)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (("", SECRET_KEY), "access key id is empty"),
            (("AKID:X", SECRET_KEY), "':'"),
            ((ACCESS_KEY, ""), "secret access key of"),
            ((ACCESS_KEY, SECRET_KEY, "tok\nen"), "session token"),
        ],
    )
    def test_unusable_values_are_one_line_without_the_secret(
        self, fields: tuple[str, ...], message: str
    ) -> None:
        """A key git cannot carry is refused in one line that quotes no secret."""
        with pytest.raises(ConfigurationError, match=message) as caught:
            AwsCredentials(*fields)
        assert "\n" not in str(caught.value)
        assert SECRET_KEY not in str(caught.value)

    @pytest.mark.usefixtures("aws_home")
    def test_environment_variables(self, chain: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN are found."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEMP_ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEMP_SECRET_KEY)
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        assert aws_credentials() == AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)

    def test_shared_credentials_file_with_a_profile(
        self, chain: str, aws_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """~/.aws/credentials: the default profile, a named one, AWS_PROFILE's."""
        write(
            aws_home / ".aws" / "credentials",
            f"""
            [default]
            aws_access_key_id = {ACCESS_KEY}
            aws_secret_access_key = {SECRET_KEY}

            [ci]
            aws_access_key_id = {TEMP_ACCESS_KEY}
            aws_secret_access_key = {TEMP_SECRET_KEY}
            aws_session_token = {SESSION_TOKEN}
            """,
        )
        assert aws_credentials() == AwsCredentials(ACCESS_KEY, SECRET_KEY)
        temporary = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        assert aws_credentials("ci") == temporary
        monkeypatch.setenv("AWS_PROFILE", "ci")
        assert aws_credentials() == temporary

    def test_an_explicit_profile_wins_over_the_variables(
        self, chain: str, aws_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As botocore does: the variables serve no profile, a named profile its file."""
        write(
            aws_home / ".aws" / "credentials",
            f"[ci]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n",
        )
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ROTATED_ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ROTATED_SECRET_KEY)
        assert aws_credentials().access_key == ROTATED_ACCESS_KEY
        assert aws_credentials("ci").access_key == ACCESS_KEY

    def test_files_named_by_variables_and_the_config_file(
        self, chain: str, aws_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE (``[profile NAME]``) are read."""
        elsewhere = write(
            aws_home / "creds.ini",
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n",
        )
        config = write(
            aws_home / "config.ini",
            f"[profile cfg]\naws_access_key_id = {ROTATED_ACCESS_KEY}\n"
            f"aws_secret_access_key = {ROTATED_SECRET_KEY}\n",
        )
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(elsewhere))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        assert aws_credentials().access_key == ACCESS_KEY
        assert aws_credentials("cfg").access_key == ROTATED_ACCESS_KEY

    @pytest.mark.usefixtures("aws_home")
    def test_nothing_found_is_one_line(self, chain: str) -> None:
        """No variables, no files: one line saying what to set (ours adds the extra)."""
        with pytest.raises(CredentialsError, match="no AWS credentials") as caught:
            aws_credentials()
        text = str(caught.value)
        assert "\n" not in text
        assert "AWS_ACCESS_KEY_ID" in text
        assert "AWS_PROFILE" in text
        assert ("runner-storage[s3]" in text) is (chain == "fallback")
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None

    @pytest.mark.usefixtures("aws_home")
    def test_a_missing_profile_is_one_line(self, chain: str) -> None:
        """A profile no file holds: one line naming it."""
        with pytest.raises(CredentialsError, match="nope") as caught:
            aws_credentials("nope")
        assert "\n" not in str(caught.value)
        assert caught.value.__context__ is None

    def test_partial_keys_are_one_line(
        self, chain: str, aws_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A key id without its secret (variables or file): one line naming what is missing."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        with pytest.raises(CredentialsError, match=r"(?i)partial") as caught:
            aws_credentials()
        assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)
        assert "\n" not in str(caught.value)
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        write(aws_home / ".aws" / "credentials", f"[default]\naws_access_key_id = {ACCESS_KEY}\n")
        with pytest.raises(CredentialsError, match=r"(?i)partial") as caught:
            aws_credentials()
        assert "aws_secret_access_key" in str(caught.value)

    def test_a_profile_without_keys(self, aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Our chain: region only is "no credentials"; an SSO profile says it needs botocore."""
        monkeypatch.setitem(sys.modules, "botocore.session", None)
        write(
            aws_home / ".aws" / "config",
            "[default]\nregion = eu-west-1\n\n[profile sso]\nsso_session = corp\n",
        )
        with pytest.raises(CredentialsError, match="no AWS credentials found"):
            aws_credentials()
        with pytest.raises(
            CredentialsError, match=r"'sso' has no static keys.*runner-storage\[s3\]"
        ):
            aws_credentials("sso")

    def test_a_broken_file_is_one_line_without_its_content(
        self, aws_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Our chain names a file it cannot parse, without quoting the line (a key)."""
        monkeypatch.setitem(sys.modules, "botocore.session", None)
        write(aws_home / ".aws" / "credentials", f"aws_secret_access_key = {SECRET_KEY}\n")
        with pytest.raises(CredentialsError, match="not a valid ini file") as caught:
            aws_credentials()
        assert SECRET_KEY not in str(caught.value)
        assert caught.value.__context__ is None


class TestRegionAndURL:
    """Region as Prefect 1's CodeCommit finds it; the repository URL."""

    @pytest.mark.usefixtures("aws_home")
    def test_region_order(self, chain: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """client_options, then AWS_REGION, then AWS_DEFAULT_REGION, then the profile's."""
        write(
            Path(os.environ["HOME"]) / ".aws" / "config",
            "[default]\nregion = ap-south-1\n\n[profile eu]\nregion = eu-central-1\n",
        )
        assert codecommit_region() == "ap-south-1"
        assert codecommit_region(profile="eu") == "eu-central-1"
        monkeypatch.setenv("AWS_PROFILE", "eu")
        assert codecommit_region() == "eu-central-1"
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
        assert codecommit_region() == "us-west-2"
        monkeypatch.setenv("AWS_REGION", "us-east-2")
        assert codecommit_region() == "us-east-2"
        options = {"region_name": "sa-east-1", "endpoint_url": "https://x"}
        assert codecommit_region(options) == "sa-east-1"

    @pytest.mark.usefixtures("aws_home")
    def test_no_region_is_one_line(self, chain: str) -> None:
        """No region anywhere: one line naming client_options and AWS_REGION."""
        with pytest.raises(ConfigurationError, match="no AWS region") as caught:
            codecommit_region({})
        assert "\n" not in str(caught.value)
        assert "region_name" in str(caught.value)
        assert "AWS_REGION" in str(caught.value)

    @pytest.mark.parametrize("region", ["", "US-EAST-1", "eu_west_1", "x.evil.com/", "east"])
    def test_a_bad_region_is_refused(self, region: str) -> None:
        """A region must look like one (it becomes part of a host name)."""
        with pytest.raises(ConfigurationError, match="region"):
            codecommit_url("repo", region)

    def test_urls(self) -> None:
        """AWS's host (China's domain in cn- regions), or the endpoint given."""
        assert codecommit_url("flows", "us-east-1") == (
            "https://git-codecommit.us-east-1.amazonaws.com/v1/repos/flows"
        )
        assert codecommit_url("flows", "cn-north-1") == (
            "https://git-codecommit.cn-north-1.amazonaws.com.cn/v1/repos/flows"
        )
        assert codecommit_url("a.b_c-1", REGION, "https://127.0.0.1:8443/") == (
            "https://127.0.0.1:8443/v1/repos/a.b_c-1"
        )

    @pytest.mark.parametrize(
        "repo", ["", ".", "..", "a/b", "a b", "x" * 101, "répo", "flows.git", "a%2Fb", None]
    )
    def test_a_bad_repository_name_is_refused(self, repo: str) -> None:
        """CodeCommit's names: 1-100 letters, digits, '.', '_', '-', no '.git' suffix."""
        with pytest.raises(ConfigurationError, match="CodeCommit repository name") as caught:
            codecommit_url(repo, REGION)
        assert "\n" not in str(caught.value)

    def test_a_100_character_name_is_fine(self) -> None:
        """The longest name CodeCommit allows is accepted (so the limit above is real)."""
        assert codecommit_url("x" * 100, REGION).endswith("/" + "x" * 100)

    @pytest.mark.parametrize(
        "endpoint",
        ["ftp://host", "host-only", "https://user:pw@host", "https://host/?q=1", ""],
    )
    def test_a_bad_endpoint_is_refused(self, endpoint: str) -> None:
        """The endpoint is scheme://host[:port][/path]: no credentials, query, other scheme."""
        with pytest.raises(ConfigurationError, match="endpoint_url"):
            codecommit_url("repo", REGION, endpoint)


class TestCodeCommitCredentials:
    """The object the git engine uses: a fresh, valid login at every use."""

    def test_basic_auth_gives_a_login_the_server_accepts(self) -> None:
        """Through the engine's own basic_auth(), the login verifies (token quoting included)."""
        credentials = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        login = CodeCommitCredentials(REGION, credentials=credentials, clock=lambda: MOMENT)
        found = basic_auth(AWS_URL, login)
        assert found is not None
        assert found[0] == f"{TEMP_ACCESS_KEY}%{SESSION_TOKEN}"
        assert verify(header_of(found))
        formatted = login.format_git_credentials(AWS_URL)
        assert formatted.endswith(f"@{AWS_HOST}/v1/repos/MyDemoRepo")
        assert "%25" in formatted  # the "%" before the token, URL-quoted

    def test_every_use_signs_afresh(self) -> None:
        """Each call signs at its own time, and each login verifies at that time."""
        times = iter([MOMENT, MOMENT + timedelta(minutes=20)])
        login = CodeCommitCredentials(
            REGION, credentials=AwsCredentials(ACCESS_KEY, SECRET_KEY), clock=lambda: next(times)
        )
        first, second = login.login(AWS_URL), login.login(AWS_URL)
        assert first[1] != second[1]
        assert verify(header_of(first))
        assert not verify(header_of(first), now=MOMENT + timedelta(minutes=20))
        assert verify(header_of(second), now=MOMENT + timedelta(minutes=20))

    @pytest.mark.usefixtures("aws_home")
    def test_rotated_credentials_are_picked_up(
        self, chain: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The chain is read again at every use: new variables, new key in the login."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        login = CodeCommitCredentials(REGION, clock=lambda: MOMENT)
        assert verify(header_of(login.login(AWS_URL)))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ROTATED_ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ROTATED_SECRET_KEY)
        rotated = login.login(AWS_URL)
        assert rotated[0] == ROTATED_ACCESS_KEY
        assert verify(header_of(rotated))

    def test_a_credentials_function_is_called_at_every_use(self) -> None:
        """A function (a secret store lookup) gives the credentials each time."""
        calls: list[int] = []

        def lookup() -> AwsCredentials:
            calls.append(1)
            return AwsCredentials(ACCESS_KEY, SECRET_KEY)

        login = CodeCommitCredentials(REGION, credentials=lookup, clock=lambda: MOMENT)
        login.login(AWS_URL)
        login.login(AWS_URL)
        assert len(calls) == 2

    @pytest.mark.usefixtures("aws_home")
    def test_no_credentials_is_one_line(self, chain: str) -> None:
        """Nothing in the chain: the login fails with the chain's one line."""
        with pytest.raises(CredentialsError, match="no AWS credentials"):
            CodeCommitCredentials(REGION).format_git_credentials(AWS_URL)

    def test_repr_and_secret_values(self) -> None:
        """The repr shows no secret; secret_values() lists what recent logins used."""
        credentials = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        login = CodeCommitCredentials(REGION, credentials=credentials, clock=lambda: MOMENT)
        assert login.secret_values() == []
        _, password = login.login(AWS_URL)
        for secret in (TEMP_SECRET_KEY, SESSION_TOKEN, password):
            assert secret not in repr(login)
            assert secret in login.secret_values()

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ({"region": "nowhere"}, "region"),
            ({"region": REGION, "profile": ""}, "profile"),
            ({"region": REGION, "credentials": {"access_key": "x"}}, "AwsCredentials"),
        ],
    )
    def test_bad_arguments(self, args: dict[str, object], message: str) -> None:
        """A bad region, profile or credentials is a ConfigurationError at construction."""
        with pytest.raises(ConfigurationError, match=message):
            CodeCommitCredentials(**args)  # type: ignore[arg-type]


# --- end to end: a pull from a server that verifies the login ---------------------------------


@pytest.fixture(scope="module")
def codecommit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project root of the CodeCommit stand-in (repositories under v1/repos/)."""
    return tmp_path_factory.mktemp("codecommit-root")


@pytest.fixture(scope="module")
def codecommit_server(
    codecommit_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitHTTPServer]:
    """An HTTPS git server that accepts only CodeCommit logins signed for 127.0.0.1."""
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("codecommit-tls"))
    server = GitHTTPServer(codecommit_root, cert_file=cert, key_file=key)
    server.accept = lambda header, path: verify_codecommit_authorization(
        header, repository_path(path), LOOPBACK, secret_key_for, REGION
    )
    server.start()
    yield server
    server.stop()


_names = iter(range(1, 1000))


@pytest.fixture
def codecommit_repo(
    codecommit_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> UpstreamRepo:
    """A fresh repository served at ``/v1/repos/NAME`` (no ``.git``), as CodeCommit does."""
    name = f"flows-{next(_names)}"
    repos = codecommit_root / "v1" / "repos"
    upstream = UpstreamRepo(repos, tmp_path_factory.mktemp("codecommit-work"), name)
    (repos / name).symlink_to(upstream.path.name)
    return upstream


@pytest.fixture
def aws_env(
    aws_home: Path, codecommit_server: GitHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The AWS chain holds the server's long-term key; git trusts the server's certificate."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("GIT_SSL_CAINFO", str(codecommit_server.ca_file))


def tree_of(destination: Path) -> dict[str, str]:
    """Every file of a published tree: path -> text."""
    root = Path(os.path.realpath(destination))
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def storage_for(
    server: GitHTTPServer, repo: UpstreamRepo, base: Path, **options: object
) -> GitRepository:
    """A GitRepository of the repository's CodeCommit URL with a CodeCommit login."""
    url = codecommit_url(repo.name, REGION, endpoint_url=server.base_url)
    storage = GitRepository(url, credentials=CodeCommitCredentials(REGION, **options))  # type: ignore[arg-type]
    storage.set_base_path(base)
    return storage


def passwords_seen(server: GitHTTPServer) -> list[str]:
    """Every password (and Basic credential) the server received."""
    found = []
    for header in server.seen_authorization_headers:
        credential = header.partition(" ")[2]
        found += [credential, base64.b64decode(credential).decode().partition(":")[2]]
    return [value for value in found if value]


def files_containing(root: Path, needles: list[str]) -> list[Path]:
    """Every regular file under ``root`` holding one of ``needles``."""
    return [
        path
        for path in root.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and any(needle.encode() in path.read_bytes() for needle in needles)
    ]


@pytest.mark.usefixtures("aws_env")
class TestPullFromCodeCommit:
    """GitRepository + CodeCommitCredentials against a server that verifies SigV4."""

    async def test_pull_publishes_the_tree(
        self, codecommit_server: GitHTTPServer, codecommit_repo: UpstreamRepo, tmp_path: Path
    ) -> None:
        """Every request carries a valid signed login; the repository's tree is published."""
        codecommit_server.reset_stats()
        storage = storage_for(codecommit_server, codecommit_repo, tmp_path / "base")
        result = await storage.pull_code()
        assert result.changed
        assert tree_of(storage.destination) == INITIAL_FILES
        log = codecommit_server.requests_for()
        assert log
        assert all(r.status == 200 for r in log)
        assert {r.path.split("/")[3] for r in log} == {codecommit_repo.name}
        for header in codecommit_server.seen_authorization_headers:
            user = base64.b64decode(header.split()[1]).decode().partition(":")[0]
            assert user == ACCESS_KEY

    async def test_rotated_keys_are_used_by_the_next_pull(
        self,
        codecommit_server: GitHTTPServer,
        codecommit_repo: UpstreamRepo,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """New AWS keys between two pulls: the second pull signs with them."""
        storage = storage_for(codecommit_server, codecommit_repo, tmp_path / "base")
        await storage.pull_code()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ROTATED_ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ROTATED_SECRET_KEY)
        codecommit_repo.commit({"flows/a.py": "A = 2\n"})
        codecommit_server.reset_stats()
        assert (await storage.pull_code()).changed
        assert tree_of(storage.destination)["flows/a.py"] == "A = 2\n"
        users = {
            base64.b64decode(h.split()[1]).decode().partition(":")[0]
            for h in codecommit_server.seen_authorization_headers
        }
        assert users == {ROTATED_ACCESS_KEY}

    async def test_wrong_secret_key_is_an_authentication_error(
        self,
        codecommit_server: GitHTTPServer,
        codecommit_repo: UpstreamRepo,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A wrong secret: the server refuses the signature, the pull is an AuthenticationError."""
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ROTATED_SECRET_KEY)
        storage = storage_for(codecommit_server, codecommit_repo, tmp_path / "base")
        codecommit_server.reset_stats()
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        assert codecommit_server.stats().unauthorized >= 1
        assert ROTATED_SECRET_KEY not in str(caught.value)
        assert all(p not in str(caught.value) for p in passwords_seen(codecommit_server))
        assert not storage.destination.exists()

    async def test_no_secret_in_state_errors_or_repository_config(
        self,
        codecommit_server: GitHTTPServer,
        codecommit_repo: UpstreamRepo,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Temporary credentials, a good pull and a refused one: no secret is written down."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEMP_ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEMP_SECRET_KEY)
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        base = tmp_path / "base"
        storage = storage_for(codecommit_server, codecommit_repo, base)
        codecommit_server.reset_stats()
        assert (await storage.pull_code()).changed
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong/secret/key/of/the/session/000")
        codecommit_repo.commit({"flows/a.py": "A = 3\n"})
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        secrets = [TEMP_SECRET_KEY, SESSION_TOKEN, *passwords_seen(codecommit_server)]
        assert len(secrets) > 2
        state = storage.publisher.state()
        assert state is not None
        assert state.last_error
        for secret in secrets:
            assert secret not in str(caught.value)
            assert secret not in state.last_error
            assert secret not in repr(storage)
        assert files_containing(base, secrets) == []
        configs = list((base / ".runner-storage" / ".repos").glob("*/config"))
        assert configs
        for config in configs:
            assert "extraheader" not in config.read_text().lower()

    async def test_redaction_covers_the_key_token_and_earlier_passwords(
        self, codecommit_server: GitHTTPServer, codecommit_repo: UpstreamRepo, tmp_path: Path
    ) -> None:
        """storage.redact() hides the secret key, the token and a password signed earlier."""
        seconds = itertools.count()
        credentials = AwsCredentials(TEMP_ACCESS_KEY, TEMP_SECRET_KEY, SESSION_TOKEN)
        login = CodeCommitCredentials(
            REGION, credentials=credentials, clock=lambda: MOMENT + timedelta(seconds=next(seconds))
        )
        url = codecommit_url(codecommit_repo.name, REGION, endpoint_url=codecommit_server.base_url)
        storage = GitRepository(url, credentials=login)
        storage.set_base_path(tmp_path)
        _, earlier = login.login(url)  # as a git run of the pull would have sent it
        text = f"git said {earlier} / {TEMP_SECRET_KEY} / {SESSION_TOKEN}"
        redacted = storage.redact(text)
        for secret in (earlier, TEMP_SECRET_KEY, SESSION_TOKEN):
            assert secret not in redacted


@pytest.mark.usefixtures("aws_env")
class TestCodeCommitStorage:
    """Prefect 1's ``CodeCommit`` class over the SigV4 login, and its pull step."""

    def storage(self, server: GitHTTPServer, repo: UpstreamRepo, **options: Any) -> CodeCommit:
        """A CodeCommit storage of ``repo`` pointed at the test server."""
        return CodeCommit(
            repo.name,
            "flows/a.py",
            client_options={"region_name": REGION, "endpoint_url": server.base_url},
            **options,
        )

    async def test_the_flow_folder_is_published(
        self, codecommit_server: GitHTTPServer, codecommit_repo: UpstreamRepo, tmp_path: Path
    ) -> None:
        """Only the flow file's folder (and top-level files) arrive; flow_path is the file.

        A second pull is a no-op.
        """
        storage = self.storage(codecommit_server, codecommit_repo)
        storage.set_base_path(tmp_path)
        assert (await storage.pull_code()).changed
        assert storage.flow_path == tmp_path / codecommit_repo.name / "flows" / "a.py"
        assert storage.flow_path.read_text() == INITIAL_FILES["flows/a.py"]
        published = tree_of(storage.destination)
        assert all(path.startswith("flows/") or "/" not in path for path in published)
        assert not (await storage.pull_code()).changed

    def test_pull_step_holds_no_secret(
        self, codecommit_server: GitHTTPServer, codecommit_repo: UpstreamRepo
    ) -> None:
        """``to_pull_step()`` is our ``pull_codecommit`` with the arguments, no AWS secret."""
        storage = self.storage(codecommit_server, codecommit_repo, name="etl")
        step = storage.to_pull_step()
        assert step == {
            "runner_storage.deployments.steps.pull_codecommit": {
                "repo": codecommit_repo.name,
                "path": "flows/a.py",
                "client_options": {
                    "region_name": REGION,
                    "endpoint_url": codecommit_server.base_url,
                },
                "name": "etl",
            }
        }
        assert SECRET_KEY not in repr(step)

    async def test_the_step_function_publishes_here(
        self,
        codecommit_server: GitHTTPServer,
        codecommit_repo: UpstreamRepo,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The step the class writes, run as Prefect's worker runs it, returns the folder."""
        monkeypatch.chdir(tmp_path)
        (inputs,) = self.storage(codecommit_server, codecommit_repo).to_pull_step().values()
        result = await pull_codecommit(**inputs)
        assert result == {"directory": codecommit_repo.name}
        assert (tmp_path / codecommit_repo.name / "flows" / "a.py").is_file()

    def test_unknown_client_option_is_one_line(self) -> None:
        """A boto3 option CodeCommit does not use is refused, naming the ones it takes."""
        with pytest.raises(ConfigurationError, match="client_options has 'verify'"):
            CodeCommit("flows", "a.py", client_options={"region_name": REGION, "verify": False})
