"""Prefect pull steps: Prefect's exact shapes, placeholders instead of secrets."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets import SENSITIVE_SETTING_KEYS, Secret
from runner_storage.steps import (
    git_clone_step,
    pull_from_remote_storage_step,
    pull_with_block_step,
    set_working_directory_step,
)

STEPS = "prefect.deployments.steps"


class SavedBlock:
    """Stands in for a saved Prefect block: it can name itself as a placeholder."""

    def __init__(self, slug: str, name: str, value: str = "") -> None:
        self._slug = slug
        self._name = name
        self._value = value

    def get(self) -> str:
        """The secret value (Secret blocks have it; used only to prove it never leaks)."""
        return self._value

    def get_block_placeholder(self) -> str:
        """Prefect's placeholder body."""
        return f"prefect.blocks.{self._slug}.{self._name}"


class SavedCredentialsBlock:
    """A saved Prefect block that is not a secret holder (no get()), e.g. AwsCredentials."""

    def get_block_placeholder(self) -> str:
        """Prefect's placeholder body."""
        return "prefect.blocks.aws-credentials.prod"


class TestSimpleSteps:
    """Steps without secrets."""

    def test_set_working_directory(self) -> None:
        """LocalStorage's step is Prefect's set_working_directory."""
        assert set_working_directory_step("/srv/flows") == {
            f"{STEPS}.set_working_directory": {"directory": "/srv/flows"}
        }

    def test_pull_with_block(self) -> None:
        """Blocks are referenced by type slug and document name."""
        assert pull_with_block_step(block_type_slug="s3-bucket", block_document_name="code") == {
            f"{STEPS}.pull_with_block": {
                "block_type_slug": "s3-bucket",
                "block_document_name": "code",
            }
        }


class TestGitCloneStep:
    """The git_clone step: optional keys appear only when set, as in Prefect."""

    def test_minimal(self) -> None:
        """Repository and branch (even None) are always there; nothing else is."""
        assert git_clone_step(repository="https://github.com/o/r.git", branch=None) == {
            f"{STEPS}.git_clone": {"repository": "https://github.com/o/r.git", "branch": None}
        }

    def test_every_option(self) -> None:
        """Each option set shows up under Prefect's key."""
        step = git_clone_step(
            repository="https://github.com/o/r.git",
            branch="main",
            clone_directory_name="flows",
            directories=("src", "conf"),
            include_submodules=True,
            commit_sha="a" * 40,
        )
        assert step == {
            f"{STEPS}.git_clone": {
                "repository": "https://github.com/o/r.git",
                "branch": "main",
                "clone_directory_name": "flows",
                "directories": ["src", "conf"],
                "include_submodules": True,
                "commit_sha": "a" * 40,
            }
        }

    def test_falsy_options_are_left_out(self) -> None:
        """Empty directories, no submodules and no credentials add no keys."""
        step = git_clone_step(
            repository="r", branch="b", directories=[], include_submodules=False, credentials={}
        )
        assert step == {f"{STEPS}.git_clone": {"repository": "r", "branch": "b"}}

    def test_credentials_become_placeholders(self) -> None:
        """Secret values are written as placeholders; the username stays as given."""
        step = git_clone_step(
            repository="r",
            branch="b",
            credentials={
                "username": "bob",
                "access_token": Secret("ghp_live", name="gh-token"),
                "password": Secret.from_env("GIT_PASSWORD"),
                "token": None,
            },
        )
        assert step[f"{STEPS}.git_clone"]["credentials"] == {
            "username": "bob",
            "access_token": "{{ prefect.blocks.secret.gh-token }}",
            "password": "{{ $GIT_PASSWORD }}",
            "token": None,
        }
        assert "ghp_live" not in repr(step)

    def test_prefect_secret_block_token(self) -> None:
        """An access token held in a Prefect Secret block becomes its placeholder."""
        block = SavedBlock("secret", "gh", value="ghp_live")
        step = git_clone_step(repository="r", branch=None, credentials={"access_token": block})
        assert step[f"{STEPS}.git_clone"]["credentials"] == {
            "access_token": "{{ prefect.blocks.secret.gh }}"
        }

    def test_credentials_block_becomes_its_placeholder(self) -> None:
        """A credentials block is referenced as a whole, as Prefect does."""
        block = SavedBlock("github-credentials", "ci", value="ghp_live")
        step = git_clone_step(repository="r", branch=None, credentials=block)
        assert step[f"{STEPS}.git_clone"]["credentials"] == (
            "{{ prefect.blocks.github-credentials.ci }}"
        )

    @pytest.mark.parametrize("token", ["ghp_plain", SecretStr("ghp_plain"), Secret("ghp_plain")])
    def test_plain_secret_cannot_be_written_down(self, token: Any) -> None:
        """A secret with no placeholder fails with a hint instead of leaking into the step."""
        with pytest.raises(ConfigurationError, match=r"Secret\.from_env") as caught:
            git_clone_step(repository="r", branch=None, credentials={"access_token": token})
        assert "ghp_plain" not in str(caught.value)
        assert "access_token" in str(caught.value)


class TestPullFromRemoteStorageStep:
    """The pull_from_remote_storage step: settings beside the URL, secrets as placeholders."""

    def test_settings_and_requires(self) -> None:
        """Plain settings are kept, secrets become placeholders, requires names the package."""
        step = pull_from_remote_storage_step(
            url="s3://bucket/flows",
            settings={
                "key": "AKIAEXAMPLE",
                "secret": Secret.from_env("AWS_SECRET_ACCESS_KEY"),
                "client_kwargs": {
                    "endpoint_url": "http://127.0.0.1:9000",
                    "aws_session_token": SavedBlock("secret", "session", value="live"),
                },
            },
            requires="s3fs",
        )
        assert step == {
            f"{STEPS}.pull_from_remote_storage": {
                "url": "s3://bucket/flows",
                "key": "AKIAEXAMPLE",
                "secret": "{{ $AWS_SECRET_ACCESS_KEY }}",
                "client_kwargs": {
                    "endpoint_url": "http://127.0.0.1:9000",
                    "aws_session_token": "{{ prefect.blocks.secret.session }}",
                },
                "requires": "s3fs",
            }
        }

    def test_no_requires_for_builtin_protocols(self) -> None:
        """Without a required package there is no requires key."""
        step = pull_from_remote_storage_step(url="memory://x", settings={}, requires=None)
        assert step == {f"{STEPS}.pull_from_remote_storage": {"url": "memory://x"}}

    def test_saved_blocks_in_settings_become_placeholders(self) -> None:
        """Any saved Prefect block in the settings is referenced by its placeholder."""
        step = pull_from_remote_storage_step(
            url="s3://b", settings={"credentials": SavedCredentialsBlock()}, requires=None
        )
        assert step[f"{STEPS}.pull_from_remote_storage"]["credentials"] == (
            "{{ prefect.blocks.aws-credentials.prod }}"
        )

    def test_secrets_in_lists_become_placeholders(self) -> None:
        """Secrets inside lists are replaced item by item."""
        step = pull_from_remote_storage_step(
            url="s3://b", settings={"tokens": [Secret.from_env("A"), "public"]}, requires=None
        )
        assert step[f"{STEPS}.pull_from_remote_storage"]["tokens"] == ["{{ $A }}", "public"]

    @pytest.mark.parametrize(
        "settings",
        [
            {"secret": "plain-secret"},
            {"client_kwargs": {"aws_secret_access_key": "plain-secret"}},
            {"account_key": SecretStr("plain-secret")},
            {"token": ["plain-secret"]},
        ],
    )
    def test_plain_sensitive_settings_are_refused(self, settings: dict[str, Any]) -> None:
        """A sensitive setting given as plain text fails instead of landing in the step."""
        with pytest.raises(ConfigurationError) as caught:
            pull_from_remote_storage_step(url="s3://b", settings=settings, requires=None)
        assert "plain-secret" not in str(caught.value)
        assert "settings[" in str(caught.value)

    def test_sensitive_setting_given_as_a_placeholder_is_kept(self) -> None:
        """A value that is already a placeholder is trusted and passed through."""
        step = pull_from_remote_storage_step(
            url="s3://b", settings={"secret": "{{ $AWS_SECRET }}"}, requires=None
        )
        assert step[f"{STEPS}.pull_from_remote_storage"]["secret"] == "{{ $AWS_SECRET }}"

    @pytest.mark.parametrize("key", ["key", "endpoint_url", "anon", "project", "account_name"])
    def test_non_sensitive_settings_stay_plain(self, key: str) -> None:
        """Identifiers and switches are not secrets and are written as given."""
        assert key not in SENSITIVE_SETTING_KEYS
        step = pull_from_remote_storage_step(url="s3://b", settings={key: "v"}, requires=None)
        assert step[f"{STEPS}.pull_from_remote_storage"][key] == "v"

    def test_sensitive_keys_cover_the_common_backends(self) -> None:
        """s3fs, gcsfs and adlfs secret settings are all known as sensitive."""
        expected = {"secret", "token", "session_token", "account_key", "connection_string"}
        assert expected <= SENSITIVE_SETTING_KEYS
        assert {"sas_token", "client_secret", "password"} <= SENSITIVE_SETTING_KEYS
