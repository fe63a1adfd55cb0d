"""Prefect deployment pull steps, with placeholders where secrets would be.

The shapes are Prefect's exactly (``prefect.deployments.steps.*``). A secret becomes
``{{ prefect.blocks.secret.NAME }}`` (a named :class:`~runner_storage.Secret` or a Prefect
block) or ``{{ $VAR }}`` (an environment secret); a secret with neither cannot be written
down safely, so building the step fails with a hint instead of leaking it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets import (
    DESCEND,
    SENSITIVE_SETTING_KEYS,
    is_secret_like,
    placeholder_for,
    walk,
)
from runner_storage.secrets.walk import login_modes

STEPS = "prefect.deployments.steps"


def secret_placeholder(value: Any, *, what: str) -> str:
    """The placeholder for a secret holder, or a ConfigurationError saying how to get one."""
    placeholder = placeholder_for(value)
    if placeholder is None:
        raise ConfigurationError(
            f"{what} is a plain value and would be written into the pull step: use"
            " Secret.from_env('VAR') or Secret(..., name='prefect-secret-block-name')"
        )
    return placeholder


def git_clone_step(
    *,
    repository: str,
    branch: str | None,
    clone_directory_name: str | None = None,
    directories: Sequence[str] | None = None,
    include_submodules: bool = False,
    commit_sha: str | None = None,
    credentials: Any = None,
) -> dict[str, Any]:
    """A ``git_clone`` step; optional keys appear only when set, as in Prefect."""
    step: dict[str, Any] = {"repository": repository, "branch": branch}
    if clone_directory_name:
        step["clone_directory_name"] = clone_directory_name
    if directories:
        step["directories"] = list(directories)
    if include_submodules:
        step["include_submodules"] = True
    if commit_sha:
        step["commit_sha"] = commit_sha
    if credentials:
        step["credentials"] = _credentials_for_step(credentials)
    return {f"{STEPS}.git_clone": step}


def _credentials_for_step(credentials: Any) -> Any:
    if not isinstance(credentials, Mapping):
        # A credentials block: Prefect references it by its placeholder.
        return secret_placeholder(credentials, what="the git credentials block")
    rendered: dict[str, Any] = {}
    for key, value in credentials.items():
        if key == "username" or value is None:
            rendered[key] = value
        else:
            rendered[key] = secret_placeholder(value, what=f"credentials[{key!r}]")
    return rendered


def pull_from_remote_storage_step(
    *, url: str, settings: Mapping[str, Any], requires: str | None
) -> dict[str, Any]:
    """A ``pull_from_remote_storage`` step with secret settings as placeholders."""
    protocol = url.split("://", 1)[0]
    step: dict[str, Any] = {
        "url": url,
        **with_placeholders(settings, path="settings", protocol=protocol),
    }
    if requires:
        step["requires"] = requires
    return {f"{STEPS}.pull_from_remote_storage": step}


def with_placeholders(value: Any, *, path: str, protocol: str | None = None) -> Any:
    """``value`` with every secret inside replaced by its placeholder, ready to write down.

    Secret holders (and saved Prefect blocks) become their placeholders; a plain value
    under a sensitive key (``secret``, ``token``, ``password``, ``service_account_info``...)
    is refused, whether text or a table; tuples become lists, since what is written down
    is YAML or JSON. With ``protocol``, ``value`` holds that filesystem's settings, and
    their :func:`~runner_storage.secrets.walk.login_modes` (GCS's ``token="anon"``) are
    written as they are.

    Raises:
        ConfigurationError: a secret has no placeholder; the message names it by ``path``.
    """

    def placeholder(value: Any, key: str | None, path: str) -> Any:
        if is_secret_like(value) or callable(getattr(value, "get_block_placeholder", None)):
            # Prefect writes every saved block (credentials blocks too) as its placeholder.
            return secret_placeholder(value, what=path)
        written = isinstance(value, str) and "{{" in value  # a placeholder already
        if key in SENSITIVE_SETTING_KEYS and value is not None and not written:
            secret_placeholder(value, what=path)  # raises: a plain secret (text, a table...)
        if isinstance(value, tuple):  # a pull step is YAML: lists only
            return walk(list(value), placeholder, path=path, key=key)
        return DESCEND

    modes = login_modes(protocol, value)
    if not modes:
        return walk(value, placeholder, path=path)
    rest = walk({k: v for k, v in value.items() if k not in modes}, placeholder, path=path)
    return {key: modes[key] if key in modes else rest[key] for key in value}


def set_working_directory_step(directory: str) -> dict[str, Any]:
    """A ``set_working_directory`` step."""
    return {f"{STEPS}.set_working_directory": {"directory": directory}}


def pull_with_block_step(*, block_type_slug: str, block_document_name: str) -> dict[str, Any]:
    """A ``pull_with_block`` step."""
    return {
        f"{STEPS}.pull_with_block": {
            "block_type_slug": block_type_slug,
            "block_document_name": block_document_name,
        }
    }
