"""Secrets from literals, the environment and files; Prefect's git login rules; redaction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from runner_storage.exceptions import ConfigurationError, CredentialsError
from runner_storage.secrets import (
    DESCEND,
    Secret,
    basic_auth,
    placeholder_for,
    redact,
    resolve_secret,
    resolve_settings,
    secret_values,
    strip_url_credentials,
    walk,
)


class PrefectSecretBlock:
    """Stands in for a saved Prefect ``Secret`` block: ``get()`` and a placeholder."""

    def __init__(self, value: str, name: str) -> None:
        self._value = value
        self._name = name

    def get(self) -> str:
        """The secret value, as Prefect's ``Secret.get()``."""
        return self._value

    def get_block_placeholder(self) -> str:
        """Prefect's placeholder body, without the braces."""
        return f"prefect.blocks.secret.{self._name}"


class FormattingCredentialsBlock:
    """Stands in for a Prefect credentials block that formats its own git URL."""

    def __init__(self, login: str) -> None:
        self._login = login

    def format_git_credentials(self, url: str) -> str:
        """The URL with the block's login embedded, as Prefect's blocks return it."""
        return url.replace("https://", f"https://{self._login}@", 1)


class DumpingCredentialsBlock:
    """Stands in for a Prefect credentials block without a formatter: a pydantic dump."""

    def __init__(self, **fields: Any) -> None:
        self._fields = fields

    def model_dump(self) -> dict[str, Any]:
        """The block's fields."""
        return dict(self._fields)


class TestSecret:
    """Secret values: where they come from, and that they never show."""

    def test_literal(self) -> None:
        """A literal secret returns its value."""
        assert Secret("tok").get() == "tok"
        assert Secret(SecretStr("tok")).get() == "tok"

    def test_env_is_read_at_every_use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An environment secret picks up a changed variable without a restart."""
        secret = Secret.from_env("RS_TEST_TOKEN")
        monkeypatch.setenv("RS_TEST_TOKEN", "one")
        assert secret.get() == "one"
        monkeypatch.setenv("RS_TEST_TOKEN", "two")
        assert secret.get() == "two"
        assert secret.env_var == "RS_TEST_TOKEN"

    @pytest.mark.parametrize("value", [None, ""])
    def test_missing_env_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        """An unset or empty variable is a retryable CredentialsError naming the variable."""
        if value is None:
            monkeypatch.delenv("RS_TEST_TOKEN", raising=False)
        else:
            monkeypatch.setenv("RS_TEST_TOKEN", value)
        with pytest.raises(CredentialsError, match="RS_TEST_TOKEN") as caught:
            Secret.from_env("RS_TEST_TOKEN").get()
        assert caught.value.retryable
        assert isinstance(caught.value, ConfigurationError)

    def test_env_error_never_shows_other_values(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The message for a missing variable carries no secret from elsewhere."""
        monkeypatch.setenv("RS_TEST_OTHER", "very-secret-value")
        monkeypatch.delenv("RS_TEST_TOKEN", raising=False)
        with pytest.raises(CredentialsError) as caught:
            Secret.from_env("RS_TEST_TOKEN").get()
        assert "very-secret-value" not in str(caught.value)
        assert "\n" not in str(caught.value)

    @pytest.mark.parametrize("variable", ["", "A-B", "A B", "$A", "A=B"])
    def test_invalid_variable_name(self, variable: str) -> None:
        """A variable name that cannot exist is a configuration error at construction."""
        with pytest.raises(ConfigurationError):
            Secret.from_env(variable)

    def test_file_is_reread_so_rotation_works(self, tmp_path: Path) -> None:
        """A file secret returns the file's current contents at every use."""
        path = tmp_path / "token"
        path.write_text("first\n")
        secret = Secret.from_file(path)
        assert secret.get() == "first"
        path.write_text("second")
        assert secret.get() == "second"

    def test_file_drops_exactly_one_trailing_newline(self, tmp_path: Path) -> None:
        """Only the newline editors and ``echo`` add is dropped; the rest is the value."""
        path = tmp_path / "token"
        path.write_text(" tok \n\n")
        assert Secret.from_file(path).get() == " tok \n"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is a CredentialsError naming the file, not its contents."""
        path = tmp_path / "absent"
        with pytest.raises(CredentialsError, match="absent") as caught:
            Secret.from_file(path).get()
        assert "\n" not in str(caught.value)

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A path that cannot be read as a file is a CredentialsError."""
        with pytest.raises(CredentialsError, match="cannot read"):
            Secret.from_file(tmp_path).get()

    def test_empty_file(self, tmp_path: Path) -> None:
        """An empty file (a secret not yet mounted) is a CredentialsError."""
        path = tmp_path / "token"
        path.write_text("\n")
        with pytest.raises(CredentialsError, match="empty"):
            Secret.from_file(path).get()

    @pytest.mark.parametrize(
        ("secret", "shown"),
        [
            (Secret("hunter2-literal"), "Secret('**********')"),
            (Secret("hunter2-literal", name="gh"), "Secret('**********', name='gh')"),
            (Secret.from_env("RS_TEST_TOKEN"), "Secret(env='RS_TEST_TOKEN')"),
            (Secret.from_file("/run/secrets/t"), "Secret(file='/run/secrets/t')"),
        ],
    )
    def test_repr_and_str_never_show_the_value(
        self, secret: Secret, shown: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Printing, formatting or logging a secret shows where it comes from, not its value."""
        monkeypatch.setenv("RS_TEST_TOKEN", "hunter2-env")
        for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
            assert "hunter2" not in text
        assert repr(secret) == shown

    def test_placeholders(self) -> None:
        """A named secret is a Prefect Secret block placeholder; an env secret a $VAR one."""
        assert Secret("x", name="gh-token").placeholder() == "{{ prefect.blocks.secret.gh-token }}"
        assert Secret.from_env("GH_TOKEN").placeholder() == "{{ $GH_TOKEN }}"
        named_env = Secret.from_env("GH_TOKEN", name="gh-token")
        assert named_env.placeholder() == "{{ prefect.blocks.secret.gh-token }}"
        assert Secret("x").placeholder() is None
        assert Secret.from_file("/run/t").placeholder() is None

    def test_equality_compares_the_source(self) -> None:
        """Secrets from the same place are equal, so storages built twice compare equal."""
        assert Secret.from_env("A") == Secret.from_env("A")
        assert Secret.from_env("A") != Secret.from_env("B")
        assert Secret("x") == Secret("x")
        assert Secret("x") != Secret("y")
        assert hash(Secret.from_file("/a")) == hash(Secret.from_file("/a"))


class TestResolving:
    """Turning secret holders into text, and finding placeholders for them."""

    @pytest.mark.parametrize(
        "holder",
        [
            "plain",
            SecretStr("plain"),
            Secret("plain"),
            PrefectSecretBlock("plain", "blk"),
        ],
    )
    def test_resolve_secret_accepts_every_holder(self, holder: Any) -> None:
        """Strings, SecretStr, Secret and objects with get() all resolve to their text."""
        assert resolve_secret(holder) == "plain"

    def test_resolve_secret_rejects_other_types(self) -> None:
        """A number or a mapping is a configuration error, not silently stringified."""
        with pytest.raises(ConfigurationError, match="int"):
            resolve_secret(42)
        with pytest.raises(ConfigurationError):
            resolve_secret({"get": "x"})

    def test_placeholder_for(self) -> None:
        """Prefect blocks become {{ their placeholder }}; plain values have none."""
        assert placeholder_for(PrefectSecretBlock("v", "s3-key")) == (
            "{{ prefect.blocks.secret.s3-key }}"
        )
        assert placeholder_for(Secret.from_env("K")) == "{{ $K }}"
        assert placeholder_for("plain") is None
        assert placeholder_for(SecretStr("plain")) is None

    def test_resolve_settings_resolves_nested_secrets(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Settings for fsspec may hold secrets at any depth; they resolve, the rest stays."""
        monkeypatch.setenv("RS_TEST_SECRET", "s")
        settings = {
            "key": "id",
            "secret": Secret.from_env("RS_TEST_SECRET"),
            "client_kwargs": {"endpoint_url": "http://x", "token": SecretStr("t")},
            "list": [Secret("a"), 1],
            "tuple": (Secret("b"),),
        }
        assert resolve_settings(settings) == {
            "key": "id",
            "secret": "s",
            "client_kwargs": {"endpoint_url": "http://x", "token": "t"},
            "list": ["a", 1],
            "tuple": ("b",),
        }

    def test_secret_values_skips_unreadable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Collecting values to redact never fails on a secret that cannot be read."""
        monkeypatch.delenv("RS_TEST_MISSING", raising=False)
        found = secret_values(
            {"a": Secret("one"), "b": [Secret.from_env("RS_TEST_MISSING")], "c": "plain"}
        )
        assert found == ["one"]


class TestOneWalk:
    """Settings, credentials and blocks are searched by one walk, with one set of rules."""

    def test_secret_values_in_settings_lists_and_sensitive_plain_text(self) -> None:
        """Holders anywhere (lists and tuples too) and plain text under a sensitive key."""
        settings = {
            "key": "id-not-secret",
            "secret": "plain-secret",
            "client_kwargs": {"headers": [{"token": "plain-token"}], "extra": (Secret("tup"),)},
            "connection_string": "AccountName=a;AccountKey=k3y;BlobEndpoint=http://x",
        }
        found = secret_values(settings)
        assert "id-not-secret" not in found
        assert {"plain-secret", "plain-token", "tup", "k3y"} <= set(found)

    def test_secret_values_of_a_block_look_into_its_fields(self) -> None:
        """With ``objects``, a block's SecretStr fields count, its credentials block's too.

        An object's own ``get()`` is never called: only our holders are known to be safe.
        """

        class Credentials:
            def __init__(self) -> None:
                self.aws_secret_access_key = SecretStr("nested-s3cret")
                self.region = "eu-west-1"

        class Block:
            def __init__(self) -> None:
                self.credentials = Credentials()
                self.password = "plain-pw"
                self.calls = 0

            def get(self) -> str:
                self.calls += 1
                return "from-get"

        block = Block()
        found = secret_values(block, objects=True)
        assert set(found) == {"nested-s3cret", "plain-pw"}
        assert block.calls == 0

    def test_walk_replaces_and_keeps_shapes(self) -> None:
        """A visitor replaces what it returns and descends where it says DESCEND."""
        seen: list[tuple[str | None, str]] = []

        def visit(value: object, key: str | None, path: str) -> object:
            seen.append((key, path))
            return "X" if value == "swap" else DESCEND

        result = walk({"a": ["swap", ("swap", 1)], "b": {"c": "keep"}}, visit, path="s")
        assert result == {"a": ["X", ("X", 1)], "b": {"c": "keep"}}
        assert ("a", "s['a'][1][0]") in seen
        assert ("c", "s['b']['c']") in seen


class TestGitBasicAuth:
    """Prefect's per-host rules for turning git credentials into a login."""

    @pytest.mark.parametrize(
        ("url", "credentials", "login"),
        [
            # a username is always used as given
            ("https://github.com/o/r.git", {"username": "bob", "access_token": "t"}, ("bob", "t")),
            ("https://gitlab.com/o/r.git", {"username": "bob", "token": "t"}, ("bob", "t")),
            # GitLab: personal access tokens log in as oauth2; deploy tokens are user:token
            ("https://gitlab.com/o/r.git", {"access_token": "t"}, ("oauth2", "t")),
            ("https://gitlab.example.com/o/r", {"access_token": "oauth2:t"}, ("oauth2", "t")),
            ("https://gitlab.com/o/r.git", {"token": "deploy-1:t"}, ("deploy-1", "t")),
            # Bitbucket Cloud: x-token-auth, unless user:token
            ("https://bitbucket.org/o/r.git", {"access_token": "t"}, ("x-token-auth", "t")),
            ("https://bitbucket.org/o/r.git", {"token": "x-token-auth:t"}, ("x-token-auth", "t")),
            ("https://bitbucket.org/o/r.git", {"password": "me:app-pw"}, ("me", "app-pw")),
            # Bitbucket Server: user:token only
            ("https://bitbucketserver.acme.io/scm/p/r.git", {"token": "me:t"}, ("me", "t")),
            # GitHub and others: the bare token
            ("https://github.com/o/r.git", {"access_token": "ghp_x"}, ("ghp_x", "")),
            ("https://git.acme.io/o/r.git", {"token": "t"}, ("t", "")),
        ],
    )
    def test_host_rules(
        self, url: str, credentials: dict[str, Any], login: tuple[str, str]
    ) -> None:
        """Each host gets the login form Prefect would put into the clone URL."""
        assert basic_auth(url, credentials) == login

    def test_bitbucket_server_needs_a_username(self) -> None:
        """A bare token cannot log in to Bitbucket Server: the message says what to add."""
        with pytest.raises(ConfigurationError, match="username"):
            basic_auth("https://bitbucketserver.acme.io/r.git", {"token": "t"})

    def test_access_token_wins_over_token_over_password(self) -> None:
        """With several secrets given, access_token, then token, then password is used."""
        url = "https://git.acme.io/r.git"
        every = {"access_token": "a", "token": "t", "password": "p"}
        assert basic_auth(url, every) == ("a", "")
        assert basic_auth(url, {"token": "t", "password": "p"}) == ("t", "")
        assert basic_auth(url, {"access_token": None, "password": "p"}) == ("p", "")

    def test_secret_holders_are_resolved(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Tokens may be Secrets, SecretStr or Prefect Secret blocks."""
        monkeypatch.setenv("RS_TEST_TOKEN", "from-env")
        url = "https://gitlab.com/o/r.git"
        assert basic_auth(url, {"token": Secret.from_env("RS_TEST_TOKEN")}) == (
            "oauth2",
            "from-env",
        )
        assert basic_auth(url, {"token": SecretStr("s")}) == ("oauth2", "s")
        assert basic_auth(url, {"token": PrefectSecretBlock("b", "n")}) == ("oauth2", "b")

    def test_formatting_blocks_are_honoured(self) -> None:
        """A block with format_git_credentials(url) decides the login itself."""
        block = FormattingCredentialsBlock("oauth2:my%2Ftoken")
        assert basic_auth("https://gitlab.com/o/r.git", block) == ("oauth2", "my/token")
        bare = FormattingCredentialsBlock("ghp_x")
        assert basic_auth("https://github.com/o/r.git", bare) == ("ghp_x", "")

    def test_blocks_without_a_formatter_are_dumped(self) -> None:
        """A credentials block is read through model_dump, like a mapping."""
        block = DumpingCredentialsBlock(token=SecretStr("t"), username=None)
        assert basic_auth("https://bitbucket.org/o/r.git", block) == ("x-token-auth", "t")

    @pytest.mark.parametrize("credentials", [None, {}])
    def test_no_credentials(self, credentials: Any) -> None:
        """No credentials means no login is sent."""
        assert basic_auth("https://github.com/o/r.git", credentials) is None

    def test_credentials_without_a_secret_are_a_configuration_error(self) -> None:
        """A username alone cannot log in; the message names the missing keys."""
        with pytest.raises(ConfigurationError, match="access_token"):
            basic_auth("https://github.com/o/r.git", {"username": "bob"})

    def test_unusable_credentials_type(self) -> None:
        """Something that is neither a mapping nor a block is rejected with its type."""
        with pytest.raises(ConfigurationError, match="list"):
            basic_auth("https://github.com/o/r.git", ["t"])


class TestRedaction:
    """Secrets and URL credentials never reach logs, errors or state."""

    def test_raw_secret(self) -> None:
        """Every occurrence of a secret is replaced."""
        assert redact("tok abc123 and abc123", ["abc123"]) == "tok *** and ***"

    def test_url_quoted_secret(self) -> None:
        """A secret as it appears inside a URL (percent-encoded) is replaced too."""
        text = "fatal: https://x:p%40ss%2Fw0rd@host/r.git failed; raw p@ss/w0rd"
        assert "p%40ss" not in redact(text, ["p@ss/w0rd"])
        assert "p@ss/w0rd" not in redact(text, ["p@ss/w0rd"])

    def test_longest_secret_first(self) -> None:
        """Overlapping secrets leave no fragment of the longer one."""
        assert redact("abcdef", ["abc", "abcdef"]) == "***"

    def test_url_userinfo(self) -> None:
        """user:password@ in any URL is replaced even when the secret is unknown."""
        text = "cloning https://bob:pw@example.com/r.git and s3://AKIA:sec@bucket/x, ok"
        assert redact(text) == ("cloning https://***@example.com/r.git and s3://***@bucket/x, ok")

    def test_text_without_secrets_is_unchanged(self) -> None:
        """Plain URLs, emails and empty secrets leave the text alone."""
        text = "https://example.com/a@b mail me@example.com"
        assert redact(text, ["", None]) == text  # type: ignore[list-item]

    @pytest.mark.parametrize(
        ("url", "stripped"),
        [
            ("https://user:pw@host:8443/r.git?x=1#f", "https://host:8443/r.git?x=1#f"),
            ("https://token@github.com/o/r.git", "https://github.com/o/r.git"),
            ("https://github.com/o/r.git", "https://github.com/o/r.git"),
            ("s3://bucket/prefix", "s3://bucket/prefix"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("http://[::1", "***"),
        ],
    )
    def test_strip_url_credentials(self, url: str, stripped: str) -> None:
        """Credentials are removed from URLs before they are shown or stored."""
        assert strip_url_credentials(url) == stripped
