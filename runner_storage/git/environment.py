"""The environment of every git child: hardened, non-interactive, credentials by variable.

Every git child runs with :func:`git_environment`: no system or global configuration, no
credential helper, no prompt (a missing credential fails at once), no hooks, only the
https/http/ssh/git protocols (and ``file`` when the user asked for it), and ``LC_ALL=C`` so
stderr can be matched. Credentials reach git only as an ``http.<origin>.extraHeader``
passed through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` in the
child's environment (git >= 2.31), scoped to the repository's scheme, host and port.
"""

from __future__ import annotations

import base64
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

__all__ = ["authorization", "git_environment", "ssh_command"]

#: Inherited ``GIT_*`` variables that are the user's choice of transport and trust. Every
#: other one (``GIT_DIR``, ``GIT_TRACE*``, ``GIT_CURL_VERBOSE``, ``GIT_SSL_NO_VERIFY``,
#: ``GIT_CONFIG_*``...) is dropped: it could redirect, weaken or log a pull.
_KEPT_GIT_VARIABLES = frozenset(
    {
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_CERT",
        "GIT_SSL_KEY",
        "GIT_SSL_CERT_PASSWORD_PROTECTED",
        "GIT_HTTP_USER_AGENT",
        "GIT_HTTP_PROXY_AUTHMETHOD",
        "GIT_PROXY_COMMAND",
        "GIT_PROXY_SSL_CAINFO",
        "GIT_PROXY_SSL_CERT",
        "GIT_PROXY_SSL_KEY",
    }
)

#: Configuration every git child runs with (passed by environment, not argv).
_HARDENED_CONFIG: tuple[tuple[str, str], ...] = (
    ("credential.helper", ""),  # an empty value clears every helper
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.autocrlf", "false"),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.ssh.allow", "always"),
    ("protocol.git.allow", "always"),
    ("protocol.file.allow", "user"),
    ("protocol.ext.allow", "never"),
    ("fetch.recurseSubmodules", "false"),
    ("submodule.recurse", "false"),
    # Automatic housekeeping must run inside our (cancellable) child, not detach from it.
    ("gc.autoDetach", "false"),
    ("maintenance.autoDetach", "false"),
    ("init.defaultBranch", "main"),
    # Abort a transfer that stalls completely for a minute instead of hanging a source.
    ("http.lowSpeedLimit", "1"),
    ("http.lowSpeedTime", "60"),
)


def ssh_command(key_file: Path | None, known_hosts_file: Path | None) -> str | None:
    """``GIT_SSH_COMMAND`` for an explicit key and/or known_hosts file, else None."""
    if key_file is None and known_hosts_file is None:
        return None
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if key_file is not None:
        argv += ["-i", str(key_file), "-o", "IdentitiesOnly=yes"]
    if known_hosts_file is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts_file}"]
    return shlex.join(argv)


def authorization(basic_auth: tuple[str, str]) -> str:
    """The ``Authorization`` header value for ``(username, password)``."""
    return "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()


def git_environment(
    *,
    basic_auth: tuple[str, str] | None,
    http_origin: str | None,
    ssh: str | None,
    inherited: Mapping[str, str] | None = None,
    header: str | None = None,
) -> dict[str, str]:
    """The environment of every git child of one pull.

    Args:
        basic_auth: ``(username, password)`` to send to ``http_origin`` only.
        header: an ``Authorization`` header value to send instead (``Bearer ...``); it
            wins over ``basic_auth``.
        http_origin: ``scheme://host[:port]/`` of the repository (http and https only).
        ssh: a ``GIT_SSH_COMMAND`` to use (see :func:`ssh_command`); None keeps the user's
            ssh setup, made non-interactive when it is plain ``ssh``.
        inherited: the environment to start from (``os.environ``).
    """
    source = os.environ if inherited is None else inherited
    env = {
        key: value
        for key, value in source.items()
        if (not key.startswith("GIT_") or key in _KEPT_GIT_VARIABLES) and key != "SSH_ASKPASS"
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",  # empty: no askpass program, so git fails instead of asking
        SSH_ASKPASS_REQUIRE="never",
        LC_ALL="C",
        LANGUAGE="C",
    )
    if ssh is not None:
        env["GIT_SSH_COMMAND"] = ssh
        env.pop("GIT_SSH", None)
    elif "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    config = list(_HARDENED_CONFIG)
    if header is None and basic_auth is not None:
        header = authorization(basic_auth)
    if header is not None and http_origin is not None:
        config.append((f"http.{http_origin}.extraHeader", "Authorization: " + header))
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env
