"""Push webhooks: signed deliveries from git hosts wake exactly the sources they change.

The pure half (signatures, payloads, URL matching) is checked directly; the receivers are
checked on a running daemon whose git sources poll once an hour, against the suite's git
server: only a verified push makes them pull, and only the sources it names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from daemon_process import DaemonFactory, RunningDaemon, wait_for
from servers.git_http import GitHTTPServer
from servers.gitrepo import UpstreamRepo, UpstreamRepoFactory
from servers.procs import LOOPBACK

from service.webhooks import Push, Refused, normalise_repository, read_delivery, wants

pytestmark = pytest.mark.timeout(120)

GITHUB_SECRET = "gh-hook-secret-" + "3c9d" * 4
GITLAB_TOKEN = "gl-hook-token-" + "8b1f" * 4
GENERIC_SECRET = "generic-hook-secret-" + "a4e2" * 4
BAD = "bad_signature"


def signed(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256>`` of ``body``, as GitHub and Bitbucket sign."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_push(url: str, ref: str, default_branch: str = "main") -> bytes:
    """A GitHub push payload (the fields we read) for ``url`` and ``ref``."""
    web = url.removesuffix(".git")
    payload = {
        "ref": ref,
        "repository": {
            "clone_url": url,
            "html_url": web,
            "ssh_url": "git@" + web.split("://", 1)[1].replace("/", ":", 1) + ".git",
            "default_branch": default_branch,
        },
    }
    return json.dumps(payload).encode()


class TestDeliveries:
    """Verification and reading of each provider's delivery, without a daemon."""

    def test_github_push_is_read(self) -> None:
        """A signed GitHub push gives the repository's URLs, the ref and the default branch."""
        body = github_push("https://github.com/acme/flows.git", "refs/heads/dev")
        headers = {"X-Hub-Signature-256": signed("s", body), "X-GitHub-Event": "push"}
        delivery = read_delivery("github", "s", headers, body)
        assert delivery.push is not None
        assert "https://github.com/acme/flows.git" in delivery.push.repositories
        assert delivery.push.refs == ("refs/heads/dev",)
        assert delivery.push.default_branch == "main"

    @pytest.mark.parametrize(
        ("provider", "headers", "reason"),
        [
            ("github", {"X-GitHub-Event": "push"}, "unsigned"),
            ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=0"}, BAD),
            ("github", {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha1=0"}, BAD),
            ("gitlab", {"X-Gitlab-Event": "Push Hook"}, "unsigned"),
            ("gitlab", {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "no"}, "bad_signature"),
            ("bitbucket", {"X-Event-Key": "repo:push"}, "unsigned"),
            ("generic", {"X-Signature-256": "sha256=" + "0" * 64}, "bad_signature"),
        ],
        ids=["gh-unsigned", "gh-wrong", "gh-sha1", "gl-unsigned", "gl-wrong", "bb", "generic"],
    )  # fmt: skip
    def test_unsigned_or_wrongly_signed_is_refused(
        self, provider: str, headers: dict[str, str], reason: str
    ) -> None:
        """No signature, or the wrong one, is refused with 401 before the body is read."""
        with pytest.raises(Refused) as caught:
            read_delivery(provider, "the-secret", headers, b'{"repository": "x"}')
        assert (caught.value.status, caught.value.reason) == (401, reason)

    def test_other_events_and_pings(self) -> None:
        """A ping is answered; an issue event is not a push (400); bad JSON is 400."""
        ping = b"{}"
        headers = {"X-Hub-Signature-256": signed("s", ping), "X-GitHub-Event": "ping"}
        assert read_delivery("github", "s", headers, ping).push is None
        with pytest.raises(Refused) as caught:
            read_delivery("github", "s", {**headers, "X-GitHub-Event": "issues"}, ping)
        assert (caught.value.status, caught.value.reason) == (400, "not_push")
        bad = b"not json"
        headers = {"X-Hub-Signature-256": signed("s", bad), "X-GitHub-Event": "push"}
        with pytest.raises(Refused) as caught:
            read_delivery("github", "s", headers, bad)
        assert caught.value.reason == "bad_payload"

    def test_gitlab_and_bitbucket_pushes(self) -> None:
        """GitLab's token and project URLs; Bitbucket Cloud's changes and Server's refs."""
        gitlab = json.dumps(
            {
                "ref": "refs/heads/main",
                "project": {
                    "git_http_url": "https://gitlab.example.com/data/reports.git",
                    "default_branch": "main",
                },
            }
        ).encode()
        headers = {"X-Gitlab-Token": "t", "X-Gitlab-Event": "Push Hook"}
        push = read_delivery("gitlab", "t", headers, gitlab).push
        assert push is not None
        assert push.repositories == ("https://gitlab.example.com/data/reports.git",)
        cloud = json.dumps(
            {
                "repository": {
                    "full_name": "acme/flows",
                    "links": {"html": {"href": "https://bitbucket.org/acme/flows"}},
                },
                "push": {"changes": [{"new": {"type": "tag", "name": "v1"}}]},
            }
        ).encode()
        headers = {"X-Hub-Signature": signed("b", cloud), "X-Event-Key": "repo:push"}
        push = read_delivery("bitbucket", "b", headers, cloud).push
        assert push is not None
        assert push.refs == ("refs/tags/v1",)
        server = json.dumps(
            {
                "repository": {
                    "links": {"clone": [{"href": "https://bb.example.com/scm/etl/flows.git"}]}
                },
                "changes": [{"ref": {"id": "refs/heads/main"}}],
            }
        ).encode()
        headers = {"X-Hub-Signature": signed("b", server), "X-Event-Key": "repo:refs_changed"}
        push = read_delivery("bitbucket", "b", headers, server).push
        assert push is not None
        assert push.repositories == ("https://bb.example.com/scm/etl/flows.git",)


class TestMatching:
    """Which sources a push wakes."""

    @pytest.mark.parametrize(
        "spelling",
        [
            "https://GitHub.com/acme/flows.git",
            "http://github.com/acme/flows",
            "https://user:token@github.com:443/acme/flows.git/",
            "git@github.com:acme/flows.git",
            "ssh://git@github.com/acme/flows",
        ],
    )
    def test_one_repository_many_spellings(self, spelling: str) -> None:
        """Scheme, credentials, port, ``.git`` and the host's case do not matter."""
        assert normalise_repository(spelling) == "github.com/acme/flows"

    def test_branch_tag_default_and_pinned(self) -> None:
        """Branch and tag names match; the default branch by name; a pinned commit never."""
        push = Push(("https://h/acme/flows.git",), ("refs/heads/main",), "main")
        assert wants(push, "https://h/acme/flows", "main", None)
        assert not wants(push, "https://h/acme/flows", "dev", None)
        assert wants(push, "https://h/acme/flows", None, None)
        assert not wants(push, "https://h/acme/flows", None, "abc123")
        assert not wants(push, "https://h/acme/other", "main", None)
        assert wants(
            Push(("https://h/acme/flows",), ("refs/tags/v1",)), "https://h/acme/flows", "v1", None
        )
        anything = Push(("https://h/acme/flows",))  # no ref given: every source of it
        assert wants(anything, "https://h/acme/flows", "dev", None)
        assert not wants(push, "/srv/local/repo", "main", None)


def post(daemon: RunningDaemon, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    """POST ``body`` to the daemon; the status and the JSON answer."""
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{daemon.port}{path}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def pulls(daemon: RunningDaemon, name: str) -> int:
    """How many pulls of ``name`` have finished so far (from its log)."""
    return sum(1 for line in daemon.events("sync_finished") if line.get("source") == name)


def counter(daemon: RunningDaemon, provider: str, result: str) -> float:
    """The webhook delivery counter of ``provider`` and ``result`` in /metrics."""
    _, body = daemon.request("/metrics")
    sample = f'runner_storage_webhook_deliveries_total{{provider="{provider}",result="{result}"}}'
    for line in body.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def fleet(
    start_daemon: DaemonFactory,
    git_http_server: GitHTTPServer,
    upstream_repo: UpstreamRepoFactory,
) -> tuple[RunningDaemon, UpstreamRepo, UpstreamRepo]:
    """A daemon with three git sources polling hourly and the GitHub and generic receivers.

    ``a-main`` and ``a-dev`` follow two branches of repository A, ``b`` follows B's main.
    """
    first, second = upstream_repo("a"), upstream_repo("b")
    first.commit({"dev.txt": "dev\n"}, branch="dev")
    credentials = 'credentials = { username = "alice", token = { env = "HOOK_GIT_PW" } }'

    def source(name: str, repo: UpstreamRepo, branch: str) -> str:
        url = git_http_server.url_for(repo)
        return (
            f'[[sources]]\nname = "{name}"\nsource = "{url}"\nbranch = "{branch}"\n'
            f"pull_interval = 3600\n{credentials}\n"
        )

    daemon = start_daemon(
        'root = "{root}"\n'
        "[webhooks]\n"
        'github_secret = { env = "HOOK_GITHUB_SECRET" }\n'
        f'generic_secret = {{ value = "{GENERIC_SECRET}" }}\n'
        "max_body_bytes = 4096\n"
        "debounce = 0.5\n"
        + source("a-main", first, "main")
        + source("a-dev", first, "dev")
        + source("b", second, "main"),
        env={"HOOK_GIT_PW": git_http_server.password, "HOOK_GITHUB_SECRET": GITHUB_SECRET},
        wait_ready=True,
    )
    return daemon, first, second


class TestReceivers:
    """The receivers of a running daemon."""

    def test_a_push_wakes_exactly_its_sources(
        self,
        fleet: tuple[RunningDaemon, UpstreamRepo, UpstreamRepo],
        git_http_server: GitHTTPServer,
    ) -> None:
        """A signed push to A's dev pulls ``a-dev`` only; the new commit is published.

        The other branch of A and repository B are not pulled; the delivery is counted.
        """
        daemon, first, _ = fleet
        before = {name: pulls(daemon, name) for name in ("a-main", "a-dev", "b")}
        new = first.commit({"dev.txt": "dev 2\n"}, branch="dev")
        body = github_push(
            git_http_server.url_for(first).replace("http://", "https://"), "refs/heads/dev"
        )
        status, answer = post(
            daemon, "/hooks/github", body,
            {"X-Hub-Signature-256": signed(GITHUB_SECRET, body), "X-GitHub-Event": "push"},
        )  # fmt: skip
        assert (status, answer) == (202, {"sources": ["a-dev"]})
        wait_for(lambda: daemon.sources()["a-dev"]["revision"] == new, what="the pushed commit")
        assert (daemon.root / "a-dev" / "dev.txt").read_text() == "dev 2\n"
        assert pulls(daemon, "a-main") == before["a-main"]
        assert pulls(daemon, "b") == before["b"]
        assert counter(daemon, "github", "accepted") == 1
        assert GITHUB_SECRET not in daemon.process.output()

    def test_a_burst_is_one_pull(
        self,
        fleet: tuple[RunningDaemon, UpstreamRepo, UpstreamRepo],
        git_http_server: GitHTTPServer,
    ) -> None:
        """Five pushes within the debounce window make one pull of the source."""
        daemon, _, second = fleet
        before = pulls(daemon, "b")
        new = second.commit({"b.txt": "b\n"})
        body = json.dumps({"repository": git_http_server.url_for(second), "ref": "main"}).encode()
        headers = {"X-Signature-256": signed(GENERIC_SECRET, body)}
        for _ in range(5):
            assert post(daemon, "/hooks/generic", body, headers)[0] == 202
        wait_for(lambda: daemon.sources()["b"]["revision"] == new, what="the pushed commit")
        time.sleep(1.0)  # longer than the debounce: a second pull would have started
        assert pulls(daemon, "b") == before + 1

    def test_refused_deliveries_change_nothing(
        self,
        fleet: tuple[RunningDaemon, UpstreamRepo, UpstreamRepo],
        git_http_server: GitHTTPServer,
    ) -> None:
        """Unsigned, wrongly signed, oversized, non-push and off receivers pull nothing.

        Each is answered with its status and counted by reason.
        """
        daemon, first, _ = fleet
        first.commit({"flows/a.py": "A = 9\n"})
        before = pulls(daemon, "a-main")
        body = github_push(git_http_server.url_for(first), "refs/heads/main")
        github = {"X-GitHub-Event": "push"}
        assert post(daemon, "/hooks/github", body, github)[0] == 401
        wrong = {**github, "X-Hub-Signature-256": signed("not-the-secret", body)}
        assert post(daemon, "/hooks/github", body, wrong)[0] == 401
        big = b" " * 5000
        large = {**github, "X-Hub-Signature-256": signed(GITHUB_SECRET, big)}
        assert post(daemon, "/hooks/github", big, large)[0] == 413
        issues = {"X-GitHub-Event": "issues", "X-Hub-Signature-256": signed(GITHUB_SECRET, body)}
        assert post(daemon, "/hooks/github", body, issues)[0] == 400
        assert post(daemon, "/hooks/gitlab", body, {"X-Gitlab-Token": GITLAB_TOKEN})[0] == 404
        ping = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": signed(GITHUB_SECRET, b"{}")}
        assert post(daemon, "/hooks/github", b"{}", ping) == (200, {"pong": True})
        time.sleep(1.0)  # longer than the debounce: a pull would have started
        assert pulls(daemon, "a-main") == before
        assert counter(daemon, "github", "unsigned") == 1
        assert counter(daemon, "github", "bad_signature") == 1
        assert counter(daemon, "github", "oversized") == 1
        assert counter(daemon, "github", "not_push") == 1
        assert counter(daemon, "gitlab", "off") == 1
        assert counter(daemon, "github", "ping") == 1
