"""Push webhooks: verify a git host's delivery, read its push, find the sources it changes.

Receivers for GitHub (``X-Hub-Signature-256``), GitLab (``X-Gitlab-Token``), Bitbucket
(``X-Hub-Signature``) and a generic sender (``X-Signature-256: sha256=<hex HMAC-SHA256 of
the body>``) are served by :mod:`service.http` at ``POST /hooks/<provider>``. Everything
here is pure: the signature check (in constant time), the push's repository URLs and refs,
and the match against the daemon's git sources by normalised URL (scheme, credentials,
port, a ``.git`` suffix and the host's case ignored) and branch or tag.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field

from runner_storage.git.url import split_scp
from runner_storage.secrets import Secret
from service.options import SecretRef, Strict

__all__ = [
    "PROVIDERS",
    "Delivery",
    "Push",
    "Refused",
    "WebhookSettings",
    "normalise_repository",
    "read_delivery",
    "receiver_secret",
    "wants",
]

#: The receivers, by the last part of their path.
PROVIDERS = ("github", "gitlab", "bitbucket", "generic")
DEFAULT_MAX_BODY = 5 * 1024 * 1024


class WebhookSettings(Strict):
    """The ``[webhooks]`` table: one secret per receiver; a receiver without one is off.

    Attributes:
        github_secret: the secret of GitHub's webhook (HMAC-SHA256 of the body).
        gitlab_token: GitLab's secret token (sent as is in ``X-Gitlab-Token``).
        bitbucket_secret: the secret of Bitbucket's webhook (HMAC-SHA256 of the body).
        generic_secret: the secret of ``/hooks/generic`` (HMAC-SHA256 of the body).
        max_body_bytes: larger deliveries are refused (413) unread.
        debounce: seconds a woken source waits for more pushes before it pulls, so a
            burst of pushes is one pull.
    """

    github_secret: SecretRef | None = None
    gitlab_token: SecretRef | None = None
    bitbucket_secret: SecretRef | None = None
    generic_secret: SecretRef | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY, ge=1024)
    debounce: float = Field(default=1.0, ge=0)

    def secret_of(self, provider: str) -> SecretRef | None:
        """The secret configured for ``provider``'s receiver, or None."""
        name = "gitlab_token" if provider == "gitlab" else f"{provider}_secret"
        value: SecretRef | None = getattr(self, name, None)
        return value


def receiver_secret(
    settings: WebhookSettings, provider: str, secrets_dir: Path | None
) -> Secret | None:
    """The secret of a receiver: its setting, else the secrets directory's file, else None.

    The file is ``webhooks_<setting>`` (``webhooks_github_secret``,
    ``webhooks_gitlab_token``...), read at every delivery, so a rotated secret applies at
    once. None: the receiver is off.
    """
    if provider not in PROVIDERS:
        return None
    configured = settings.secret_of(provider)
    if configured is not None:
        return configured.to_secret()
    name = "gitlab_token" if provider == "gitlab" else f"{provider}_secret"
    if secrets_dir is not None and (secrets_dir / f"webhooks_{name}").is_file():
        return Secret.from_file(secrets_dir / f"webhooks_{name}")
    return None


@dataclass(frozen=True)
class Push:
    """What a push changed: the repository (its URLs as the host names it) and the refs.

    Attributes:
        repositories: every URL the payload gives for the repository (clone, ssh, web).
        refs: full ref names pushed (``refs/heads/main``, ``refs/tags/v1``); empty means
            the sender did not say, so every source of the repository is woken.
        default_branch: the repository's default branch, when the payload tells it.
    """

    repositories: tuple[str, ...]
    refs: tuple[str, ...] = ()
    default_branch: str | None = None


class Refused(Exception):
    """A delivery that changes nothing: its HTTP status and the reason (a metric label)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: a push, or a ping (``push`` None), and its event name."""

    push: Push | None
    event: str = ""


def _hmac_matches(secret: str, body: bytes, header: str | None, *, prefix: str) -> bool:
    if not header or not header.startswith(prefix):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header[len(prefix) :].strip().lower().encode(), expected.encode())


def read_delivery(provider: str, secret: str, headers: Mapping[str, str], body: bytes) -> Delivery:
    """Verify a delivery and read its push.

    Args:
        provider: ``github``, ``gitlab``, ``bitbucket`` or ``generic``.
        secret: the receiver's secret, read now.
        headers: the request's headers (case-insensitive mapping).
        body: the request's body.

    Raises:
        Refused: unsigned (401), wrongly signed (401), not a push (400 or 202 for events
            we ignore), or a payload that cannot be read (400).
    """
    if provider == "gitlab":
        given = headers.get("X-Gitlab-Token")
        if not given:
            raise Refused(401, "unsigned", "X-Gitlab-Token is missing")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise Refused(401, "bad_signature", "X-Gitlab-Token does not match")
    else:
        header = {
            "github": "X-Hub-Signature-256",
            "bitbucket": "X-Hub-Signature",
            "generic": "X-Signature-256",
        }[provider]
        given = headers.get(header)
        if not given:
            raise Refused(401, "unsigned", f"{header} is missing")
        if not _hmac_matches(secret, body, given, prefix="sha256="):
            raise Refused(401, "bad_signature", f"{header} does not match the body")
    event = _event(provider, headers)
    if event in _PINGS.get(provider, ()):
        return Delivery(None, event)
    if event not in _PUSHES[provider]:
        raise Refused(400, "not_push", f"{event or 'an unnamed event'} is not a push event")
    try:
        payload = json.loads(body)
    except ValueError:
        raise Refused(400, "bad_payload", "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "bad_payload", "the body is not a JSON object")
    push = _READERS[provider](payload)
    if not push.repositories:
        raise Refused(400, "bad_payload", "the push names no repository")
    return Delivery(push, event)


def _event(provider: str, headers: Mapping[str, str]) -> str:
    name = {
        "github": "X-GitHub-Event",
        "gitlab": "X-Gitlab-Event",
        "bitbucket": "X-Event-Key",
    }.get(provider)
    return (headers.get(name) or "") if name else "push"


_PINGS: dict[str, tuple[str, ...]] = {
    "github": ("ping",),
    "bitbucket": ("diagnostics:ping",),
}
_PUSHES: dict[str, tuple[str, ...]] = {
    "github": ("push",),
    "gitlab": ("Push Hook", "Tag Push Hook", "System Hook"),
    "bitbucket": ("repo:push", "repo:refs_changed"),
    "generic": ("push",),
}


def _strings(*values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v))


def _github(payload: dict[str, Any]) -> Push:
    repository = payload.get("repository") or {}
    if not isinstance(repository, dict):
        repository = {}
    return Push(
        _strings(
            repository.get("clone_url"),
            repository.get("ssh_url"),
            repository.get("git_url"),
            repository.get("html_url"),
            repository.get("url"),
        ),
        _strings(payload.get("ref")),
        _text(repository.get("default_branch") or repository.get("master_branch")),
    )


def _gitlab(payload: dict[str, Any]) -> Push:
    project = payload.get("project") or {}
    repository = payload.get("repository") or {}
    project = project if isinstance(project, dict) else {}
    repository = repository if isinstance(repository, dict) else {}
    return Push(
        _strings(
            project.get("git_http_url"),
            project.get("git_ssh_url"),
            project.get("web_url"),
            repository.get("git_http_url"),
            repository.get("git_ssh_url"),
            repository.get("homepage"),
        ),
        _strings(payload.get("ref")),
        _text(project.get("default_branch")),
    )


def _bitbucket(payload: dict[str, Any]) -> Push:
    repository = payload.get("repository") or {}
    repository = repository if isinstance(repository, dict) else {}
    links = repository.get("links") or {}
    links = links if isinstance(links, dict) else {}
    urls: list[Any] = []
    html = links.get("html")
    if isinstance(html, dict):  # Bitbucket Cloud
        urls.append(html.get("href"))
    if isinstance(repository.get("full_name"), str) and isinstance(html, dict):
        urls.append(f"https://bitbucket.org/{repository['full_name']}.git")
    for clone in links.get("clone") or []:  # Bitbucket Server
        if isinstance(clone, dict):
            urls.append(clone.get("href"))
    refs: list[Any] = []
    push = payload.get("push") or {}
    for change in (push.get("changes") if isinstance(push, dict) else None) or []:
        new = change.get("new") if isinstance(change, dict) else None
        if isinstance(new, dict) and isinstance(new.get("name"), str):
            kind = "tags" if new.get("type") == "tag" else "heads"
            refs.append(f"refs/{kind}/{new['name']}")
    for change in payload.get("changes") or []:  # Bitbucket Server: refs_changed
        ref = change.get("ref") if isinstance(change, dict) else None
        if isinstance(ref, dict):
            refs.append(ref.get("id"))
    mainbranch = repository.get("mainbranch")
    default = mainbranch.get("name") if isinstance(mainbranch, dict) else None
    return Push(_strings(*urls), _strings(*refs), _text(default))


def _generic(payload: dict[str, Any]) -> Push:
    repositories = payload.get("repository")
    listed = repositories if isinstance(repositories, list) else [repositories]
    ref = payload.get("ref")
    refs = [ref] if isinstance(ref, str) else ref if isinstance(ref, list) else []
    return Push(_strings(*listed), _strings(*(_full_ref(r) for r in refs if isinstance(r, str))))


def _full_ref(ref: str) -> str:
    return ref if ref.startswith("refs/") else f"refs/heads/{ref}"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


_READERS = {"github": _github, "gitlab": _gitlab, "bitbucket": _bitbucket, "generic": _generic}

_DEFAULT_PORTS = re.compile(r":\d+$")


def normalise_repository(url: str) -> str | None:
    """``host/path`` of a repository URL, to compare two spellings of one repository.

    The scheme, credentials, port, a ``.git`` suffix, trailing slashes and the host's case
    are ignored; an scp-style ``git@host:path`` is ``host/path``. None for a local path.
    """
    text = url.strip()
    scp = split_scp(text) if "://" not in text else None
    if scp is not None:
        _, host, path = scp
    else:
        parts = urlsplit(text)
        if not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    path = path.strip("/").removesuffix(".git").strip("/")
    return f"{host.lower()}/{path}" if path else None


def wants(push: Push, url: str, branch: str | None, commit_sha: str | None) -> bool:
    """Whether a source of ``url`` following ``branch`` (a branch or tag) needs to pull.

    A source pinned to a commit never does. A push that names no ref wakes every source
    of the repository; a source following the default branch (``branch`` None) wakes when
    the push is to the default branch, or when the push does not say which that is.
    """
    if commit_sha:
        return False
    target = normalise_repository(url)
    if target is None or target not in {normalise_repository(u) for u in push.repositories}:
        return False
    if not push.refs:
        return True
    names = set(_short_names(push.refs))
    if branch is None:
        return push.default_branch is None or push.default_branch in names
    return branch in names


def _short_names(refs: Iterable[str]) -> Iterable[str]:
    for ref in refs:
        for prefix in ("refs/heads/", "refs/tags/"):
            if ref.startswith(prefix):
                yield ref[len(prefix) :]
                break
        else:
            yield ref
