"""Prefect 1's git storages (``Git``, ``GitHub``, ``GitLab``, ``Bitbucket``) against a real server.

One HTTPS git server (``git http-backend``) hosts bare repositories at the paths each host
uses: ``org/NAME.git`` (GitHub, GitHub Enterprise, ``Git``), ``group/sub/NAME.git``
(GitLab, and its ``GET /api/v4/projects/ID`` lookup on the same server),
``scm/PROJECT/NAME.git`` (Bitbucket Server) and ``WORKSPACE/NAME.git`` (Bitbucket Cloud).
Its login check is replaced per test by a :class:`Door` that takes only the exact
``Authorization`` header each host's rule must send, so a pull that works proves the login.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from servers.git_http import ApiReply, GitHTTPServer, GitRequest, make_self_signed_cert
from servers.gitrepo import INITIAL_FILES, UpstreamRepo

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    NotFoundError,
)
from runner_storage.storage import Bitbucket, Git, GitHub, GitLab
from runner_storage.storage.git import GitFlowStorage

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

FLOW = "flows/a.py"
"""The flow file of every test repository (from :data:`INITIAL_FILES`)."""

SPARSE_TREE = {"README.md", "flows/a.py", "flows/sub/b.py"}
"""What a sparse pull of :data:`FLOW` publishes: its folder and the top-level files."""

STEP = "prefect.deployments.steps.git_clone"

_DEFAULT_SECRETS = (
    "GITHUB_ACCESS_TOKEN",
    "GITLAB_ACCESS_TOKEN",
    "BITBUCKET_ACCESS_TOKEN",
    "BITBUCKET_CLOUD_USERNAME",
    "BITBUCKET_CLOUD_APP_PASSWORD",
)


def basic(username: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic ``username:password``."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def decoded(header: str | None) -> str | None:
    """A Basic header as ``user:password`` text (others as they are), for messages."""
    if header and header.startswith("Basic "):
        return base64.b64decode(header[6:]).decode()
    return header


def one_line(text: str) -> bool:
    """Whether an error message is one line."""
    return "\n" not in text.strip()


def tree_of(destination: Path) -> dict[str, str]:
    """Every file of a published tree: path -> text."""
    root = Path(os.path.realpath(destination))
    return {
        path.relative_to(root).as_posix(): path.read_text(errors="replace")
        for path in root.rglob("*")
        if path.is_file()
    }


def files_containing(root: Path, needles: list[str]) -> list[Path]:
    """Every regular file under ``root`` whose bytes hold one of ``needles``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle.encode() in data for needle in needles if needle):
                found.append(path)
    return found


def exception_texts(exc: BaseException) -> Iterator[str]:
    """``str`` and ``repr`` of an exception and of everything chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        current = current.__cause__ or current.__context__


def only_ref_lookups(requests: list[GitRequest]) -> bool:
    """Whether the requests are one ref lookup (``info/refs`` + ``ls-refs``), nothing else."""
    lookups = [r for r in requests if r.is_upload_pack and r.command == "ls-refs"]
    others = [
        r
        for r in requests
        if not (r.method == "GET" and r.path.endswith("/info/refs"))
        and not (r.is_upload_pack and r.command == "ls-refs")
    ]
    return len(lookups) == 1 and not others


def state_json(storage: GitFlowStorage) -> dict[str, Any]:
    """The storage's ``state.json``."""
    path = storage.destination.parent / ".runner-storage" / storage.name / "state.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def step_inputs(storage: GitFlowStorage) -> dict[str, Any]:
    """The inputs of the storage's one ``git_clone`` step."""
    step = storage.to_pull_step()
    assert list(step) == [STEP]
    inputs: dict[str, Any] = step[STEP]
    return inputs


class Door:
    """The server's login check for one test: which ``Authorization`` each repository takes.

    A repository without a rule refuses everything; ``None`` among the allowed values lets
    an anonymous request in (a public repository).
    """

    def __init__(self) -> None:
        self._rules: dict[str, frozenset[str | None]] = {}

    def allow(self, repo: UpstreamRepo, *headers: str | None) -> None:
        """Let exactly ``headers`` into ``repo`` (replacing what was allowed before)."""
        self._rules = {**self._rules, f"/{repo.relpath}/": frozenset(headers)}

    def __call__(self, header: str | None, path: str) -> bool:
        """The server's ``accept`` hook."""
        return any(
            path.startswith(prefix) and header in allowed for prefix, allowed in self._rules.items()
        )


class GitLabApi:
    """GitLab's ``GET /api/v4/projects/ID`` on the git server: the projects it knows.

    ``tokens`` are the ``PRIVATE-TOKEN`` values it accepts (``None`` in it: anonymous
    lookups are allowed, a public project); every lookup is recorded in ``calls`` as
    ``(path, PRIVATE-TOKEN or None)``.
    """

    def __init__(self) -> None:
        self.projects: dict[str, str] = {}
        self.tokens: set[str | None] = set()
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, method: str, path: str, headers: Mapping[str, str]) -> ApiReply | None:
        """The server's ``api`` hook: answers ``/api/v4/projects/...``, passes the rest on."""
        if not path.startswith("/api/v4/"):
            return None
        token = headers.get("private-token")
        self.calls.append((path, token))
        json_type = [("Content-Type", "application/json")]
        if token not in self.tokens:
            return 401, json_type, b'{"message": "401 Unauthorized"}'
        project_id = path.removeprefix("/api/v4/projects/")
        if method != "GET" or project_id not in self.projects:
            return 404, json_type, b'{"message": "404 Project Not Found"}'
        body = {"id": int(project_id), "path_with_namespace": self.projects[project_id]}
        return 200, json_type, json.dumps(body).encode()


_names = itertools.count(1)


class Hosting:
    """One test's view of the module's git server: repositories, secrets, the door."""

    def __init__(
        self,
        server: GitHTTPServer,
        *,
        project_root: Path,
        work_root: Path,
        base: Path,
        secrets_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.server = server
        self.project_root = project_root
        self.work_root = work_root
        self.base = base
        self.secrets_dir = secrets_dir
        self.monkeypatch = monkeypatch
        self.door = Door()
        self.api = GitLabApi()
        self.values: list[str] = []
        server.accept = self.door
        server.api = self.api
        server.reset_stats()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return self.server.base_url.removeprefix("https://")

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return self.server.base_url

    def repo(self, owner: str, name: str = "flows") -> UpstreamRepo:
        """A fresh bare repository ``OWNER/NAME-N.git`` with ``main`` and ``master``."""
        upstream = UpstreamRepo(self.project_root, self.work_root, f"{owner}/{name}-{next(_names)}")
        upstream.create_branch("master")
        return upstream

    def token(self, label: str = "token") -> str:
        """A fresh secret value, remembered for the canary scans."""
        value = f"canary-{label}-{secrets.token_hex(8)}"
        self.values.append(value)
        return value

    def set_secret(self, name: str, value: str, where: str = "env") -> None:
        """Set secret ``name`` as Prefect 1's variable, a plain variable or a file."""
        if value not in self.values:
            self.values.append(value)
        if where == "prefect":
            self.monkeypatch.setenv(f"PREFECT__CONTEXT__SECRETS__{name}", value)
        elif where == "env":
            self.monkeypatch.setenv(name, value)
        elif where == "file":
            (self.secrets_dir / name).write_text(value + "\n", encoding="utf-8")
        else:  # pragma: no cover - a typo in a test
            raise AssertionError(where)

    def unset_secret(self, name: str) -> None:
        """Remove secret ``name`` from every place it could be."""
        self.monkeypatch.delenv(f"PREFECT__CONTEXT__SECRETS__{name}", raising=False)
        self.monkeypatch.delenv(name, raising=False)
        (self.secrets_dir / name).unlink(missing_ok=True)

    def logins(self, repo: UpstreamRepo) -> set[str | None]:
        """Every ``Authorization`` value (decoded when Basic) the server saw for ``repo``."""
        return {decoded(r.authorization) for r in self.server.requests_for(repo)}

    def leaks(self, *extra: str) -> list[Path]:
        """Files under the base path holding a secret value (or ``extra`` text)."""
        needles = [*self.values, *extra]
        needles += [base64.b64encode(v.encode()).decode() for v in needles]
        needles += [quote(v, safe="") for v in needles]
        return files_containing(self.base, needles)


@pytest.fixture(scope="module")
def host_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitHTTPServer, Path]]:
    """This module's own HTTPS git server over its own project root (no shared hooks)."""
    root = tmp_path_factory.mktemp("prefect1-hosts")
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("prefect1-hosts-tls"))
    server = GitHTTPServer(root, cert_file=cert, key_file=key)
    server.start()
    yield server, root
    server.stop()


@pytest.fixture(scope="module")
def host_work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the upstream repositories' private working clones live (not served)."""
    return tmp_path_factory.mktemp("prefect1-hosts-work")


@pytest.fixture
def hosting(
    host_server: tuple[GitHTTPServer, Path],
    host_work_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    safe_git_environ: dict[str, str],
) -> Iterator[Hosting]:
    """A hermetic environment for one test: no secrets set, the server trusted, a door."""
    server, root = host_server
    for name in list(os.environ):
        if name.startswith("PREFECT__CONTEXT__SECRETS__") or name in _DEFAULT_SECRETS:
            monkeypatch.delenv(name)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    monkeypatch.setenv("RUNNER_STORAGE_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("GIT_SSL_CAINFO", str(server.ca_file))
    base = tmp_path / "base"
    base.mkdir()
    hosting = Hosting(
        server,
        project_root=root,
        work_root=host_work_root,
        base=base,
        secrets_dir=secrets_dir,
        monkeypatch=monkeypatch,
    )
    try:
        yield hosting
    finally:
        server.accept = None
        server.api = None
        assert not [e for e in server.errors if "Traceback" in e], server.errors


# --- the hosts, as a table -------------------------------------------------------------------

Builder = Callable[[Hosting, UpstreamRepo, Mapping[str, str], "str | None"], GitFlowStorage]


@dataclass(frozen=True)
class Case:
    """One Prefect 1 git host: where it keeps repositories, its secrets, its login rule.

    ``build(hosting, repo, names, ref)`` makes the storage: ``names`` maps roles
    (``token``; ``username`` and ``password`` for Bitbucket Cloud) to secret names, empty
    for the documented defaults. ``header(values)`` is the ``Authorization`` the host rule
    must send for those roles' values.
    """

    id: str
    owner: str
    build: Builder
    header: Callable[[Mapping[str, str]], str]
    default_names: Mapping[str, str]
    explicit_names: Mapping[str, str]
    sparse: bool = True
    follows_head: bool = False

    @property
    def branch(self) -> str:
        """The branch the default ref follows here (Prefect 1's defaults)."""
        return "main" if self.follows_head else "master"

    def make(
        self,
        hosting: Hosting,
        repo: UpstreamRepo,
        names: Mapping[str, str] | None = None,
        ref: str | None = None,
    ) -> GitFlowStorage:
        """The storage for ``repo``, publishing under the test's base path."""
        storage = self.build(hosting, repo, names or {}, ref)
        storage.set_base_path(hosting.base)
        return storage

    def set_secrets(
        self, hosting: Hosting, names: Mapping[str, str], where: str = "env"
    ) -> dict[str, str]:
        """Give every role of ``names`` a fresh value; return role -> value."""
        values = {role: hosting.token(role) for role in names}
        for role, name in names.items():
            hosting.set_secret(name, values[role], where)
        return values


def leaf(repo: UpstreamRepo) -> str:
    """The repository's own name (``flows-7`` of ``scm/ETL/flows-7``)."""
    return repo.name.rsplit("/", 1)[1]


def _github(h: Hosting, repo: UpstreamRepo, names: Mapping[str, str], ref: str | None) -> GitHub:
    return GitHub(
        repo=repo.name,
        path=FLOW,
        ref=ref,
        access_token_secret=names.get("token"),
        base_url=f"{h.base_url}/api/v3",
    )


def _gitlab(h: Hosting, repo: UpstreamRepo, names: Mapping[str, str], ref: str | None) -> GitLab:
    return GitLab(
        repo=repo.name, host=h.base_url, path=FLOW, ref=ref, access_token_secret=names.get("token")
    )


def _bitbucket_server(
    h: Hosting, repo: UpstreamRepo, names: Mapping[str, str], ref: str | None
) -> Bitbucket:
    return Bitbucket(
        project="ETL",
        repo=leaf(repo),
        host=h.base_url,
        path=FLOW,
        ref=ref,
        access_token_secret=names.get("token"),
    )


def _bitbucket_cloud(
    h: Hosting, repo: UpstreamRepo, names: Mapping[str, str], ref: str | None
) -> Bitbucket:
    return Bitbucket(
        project="ETL",
        repo=leaf(repo),
        workspace="acme",
        host=h.base_url,
        path=FLOW,
        ref=ref,
        cloud_username_secret=names.get("username"),
        cloud_app_password_secret=names.get("password"),
    )


def _git(h: Hosting, repo: UpstreamRepo, names: Mapping[str, str], ref: str | None) -> Git:
    is_commit = ref is not None and len(ref) == 40
    return Git(
        flow_path=FLOW,
        repo=repo.name,
        repo_host=h.host,
        git_token_secret_name=names.get("token"),
        branch_name=None if is_commit else ref,
        commit=ref if is_commit else None,
    )


CASES = [
    Case(
        "github",
        "org",
        _github,
        lambda v: basic(v["token"], ""),
        {"token": "GITHUB_ACCESS_TOKEN"},
        {"token": "ACME_GITHUB_TOKEN"},
        follows_head=True,
    ),
    Case(
        "gitlab",
        "group/sub",
        _gitlab,
        lambda v: basic("oauth2", v["token"]),
        {"token": "GITLAB_ACCESS_TOKEN"},
        {"token": "ACME_GITLAB_TOKEN"},
    ),
    Case(
        "bitbucket-server",
        "scm/ETL",
        _bitbucket_server,
        lambda v: f"Bearer {v['token']}",
        {"token": "BITBUCKET_ACCESS_TOKEN"},
        {"token": "ACME_BITBUCKET_TOKEN"},
    ),
    Case(
        "bitbucket-cloud",
        "acme",
        _bitbucket_cloud,
        lambda v: basic(v["username"], v["password"]),
        {"username": "BITBUCKET_CLOUD_USERNAME", "password": "BITBUCKET_CLOUD_APP_PASSWORD"},
        {"username": "ACME_BB_USER", "password": "ACME_BB_APP_PASSWORD"},
    ),
    Case(
        "git",
        "org",
        _git,
        lambda v: basic("org", v["token"]),
        {},
        {"token": "ACME_GIT_TOKEN"},
        sparse=False,
        follows_head=True,
    ),
]
CASE_IDS = [case.id for case in CASES]
WITH_DEFAULTS = [case for case in CASES if case.default_names]


def names_for(case: Case) -> Mapping[str, str]:
    """The default secret names where the host has them, else the explicit ones."""
    return case.default_names or case.explicit_names


# --- pulls ------------------------------------------------------------------------------------


class TestPulls:
    """Each host's pull: the exact login, what is published, no-ops, new commits."""

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_pull_sends_the_host_login_and_publishes_the_flow(
        self, hosting: Hosting, case: Case
    ) -> None:
        """The host rule's login gets in; ``flow_path`` is the flow file, sparse or whole."""
        upstream = hosting.repo(case.owner)
        names = names_for(case)
        given = {} if case.default_names else names
        values = case.set_secrets(hosting, names)
        hosting.door.allow(upstream, case.header(values))
        storage = case.make(hosting, upstream, given)

        result = await storage.pull_code()

        assert result.changed
        assert result.revision == upstream.head(case.branch)
        assert hosting.logins(upstream) == {decoded(case.header(values))}
        assert storage.flow_path == storage.destination / FLOW
        assert storage.flow_path.is_file()
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]
        expected = SPARSE_TREE if case.sparse else set(INITIAL_FILES)
        assert set(tree_of(storage.destination)) == expected
        assert hosting.leaks() == []

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_second_pull_is_one_ref_lookup_and_a_new_commit_arrives(
        self, hosting: Hosting, case: Case
    ) -> None:
        """An unchanged ref costs one ref lookup and changes nothing; a new commit is pulled."""
        upstream = hosting.repo(case.owner)
        values = case.set_secrets(hosting, case.explicit_names)
        hosting.door.allow(upstream, case.header(values))
        storage = case.make(hosting, upstream, case.explicit_names)
        first = await storage.pull_code()

        hosting.server.reset_stats()
        again = await storage.pull_code()
        assert (again.changed, again.revision) == (False, first.revision)
        assert only_ref_lookups(hosting.server.requests_for(upstream))

        new = upstream.commit({FLOW: "A = 2\n"}, branch=case.branch)
        moved = await storage.pull_code()
        assert (moved.changed, moved.revision) == (True, new)
        assert storage.flow_path.read_text() == "A = 2\n"
        assert hosting.leaks() == []

    @pytest.mark.parametrize("case", WITH_DEFAULTS, ids=[c.id for c in WITH_DEFAULTS])
    async def test_unset_default_secret_pulls_anonymously(
        self, hosting: Hosting, case: Case
    ) -> None:
        """No secret named and the documented default unset: a public repository, no login."""
        upstream = hosting.repo(case.owner)
        hosting.door.allow(upstream, None)
        storage = case.make(hosting, upstream)

        result = await storage.pull_code()

        assert result.revision == upstream.head(case.branch)
        assert hosting.logins(upstream) == {None}
        assert storage.flow_path.is_file()

    async def test_git_without_a_token_pulls_anonymously(self, hosting: Hosting) -> None:
        """``Git`` without ``git_token_secret_name`` sends no login."""
        upstream = hosting.repo("org")
        hosting.door.allow(upstream, None)
        storage = Git(flow_path=FLOW, repo=upstream.name, repo_host=hosting.host)
        storage.set_base_path(hosting.base)
        await storage.pull_code()
        assert hosting.logins(upstream) == {None}
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]

    async def test_a_deeper_flow_publishes_its_folder(self, hosting: Hosting) -> None:
        """A flow in ``flows/sub`` publishes that folder and the files above it, not others."""
        upstream = hosting.repo("org")
        hosting.door.allow(upstream, None)
        storage = GitHub(
            repo=upstream.name, path="/flows/sub/b.py", base_url=f"{hosting.base_url}/api/v3"
        )
        storage.set_base_path(hosting.base)
        await storage.pull_code()
        assert storage.flow_path == storage.destination / "flows/sub/b.py"
        assert storage.flow_path.read_text() == INITIAL_FILES["flows/sub/b.py"]
        assert set(tree_of(storage.destination)) == SPARSE_TREE
        assert step_inputs(storage)["directories"] == ["flows/sub"]

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_flow_file_missing_from_the_repository_fails_the_pull(
        self, hosting: Hosting, case: Case
    ) -> None:
        """A flow path the repository does not hold: NotFoundError naming it, nothing published."""
        upstream = hosting.repo(case.owner)
        upstream.commit({FLOW: None}, branch=case.branch)
        hosting.door.allow(upstream, None)
        storage = case.make(hosting, upstream)
        with pytest.raises(NotFoundError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        assert FLOW in str(caught.value)
        assert storage.publisher.current_version() is None


class TestRefs:
    """Prefect 1's default refs; tags; a full hex ref is a commit."""

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_default_ref(self, hosting: Hosting, case: Case) -> None:
        """GitHub and Git follow the repository's default branch; GitLab, Bitbucket ``master``."""
        upstream = hosting.repo(case.owner)
        master = upstream.commit({FLOW: "MASTER = 1\n"}, branch="master")
        trunk = upstream.commit({FLOW: "TRUNK = 1\n"}, branch="trunk")
        upstream.set_default_branch("trunk")
        hosting.door.allow(upstream, None)
        storage = case.make(hosting, upstream)

        result = await storage.pull_code()

        if case.follows_head:
            assert (result.revision, storage.flow_path.read_text()) == (trunk, "TRUNK = 1\n")
        else:
            assert (result.revision, storage.flow_path.read_text()) == (master, "MASTER = 1\n")

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_full_sha_is_a_commit(self, hosting: Hosting, case: Case) -> None:
        """A 40-hex ref pins that commit: later commits are not pulled, the step says so."""
        upstream = hosting.repo(case.owner)
        pinned = upstream.head()
        upstream.commit({FLOW: "A = 2\n"}, branch=case.branch)
        hosting.door.allow(upstream, None)
        storage = case.make(hosting, upstream, ref=pinned)

        result = await storage.pull_code()

        assert result.revision == pinned
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]
        inputs = step_inputs(storage)
        assert (inputs["branch"], inputs["commit_sha"]) == (None, pinned)
        hosting.server.reset_stats()
        assert not (await storage.pull_code()).changed

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_tag_ref(self, hosting: Hosting, case: Case) -> None:
        """A tag as ``ref`` (``branch_name`` for Git, as Prefect 1 passed it) is pulled."""
        upstream = hosting.repo(case.owner)
        tagged = upstream.commit({FLOW: "TAGGED = 1\n"}, branch="release")
        upstream.tag("v1.0", "release")
        upstream.commit({FLOW: "LATER = 1\n"}, branch="release")
        hosting.door.allow(upstream, None)
        storage = case.make(hosting, upstream, ref="v1.0")
        result = await storage.pull_code()
        assert (result.revision, storage.flow_path.read_text()) == (tagged, "TAGGED = 1\n")

    async def test_git_tag_argument(self, hosting: Hosting) -> None:
        """``Git(tag=...)`` pulls the tag."""
        upstream = hosting.repo("org")
        tagged = upstream.head()
        upstream.tag("v2", annotated=True)
        upstream.commit({FLOW: "LATER = 1\n"})
        hosting.door.allow(upstream, None)
        storage = Git(flow_path=FLOW, repo=upstream.name, repo_host=hosting.host, tag="v2")
        storage.set_base_path(hosting.base)
        assert (await storage.pull_code()).revision == tagged
        assert step_inputs(storage)["branch"] == "v2"

    @pytest.mark.parametrize(
        "refs",
        [
            {"branch_name": "main", "tag": "v1"},
            {"branch_name": "main", "commit": "a" * 40},
            {"tag": "v1", "commit": "a" * 40},
            {"branch_name": "main", "tag": "v1", "commit": "a" * 40},
        ],
        ids=["branch-tag", "branch-commit", "tag-commit", "all-three"],
    )
    def test_git_refs_exclude_each_other(self, refs: dict[str, Any]) -> None:
        """More than one of branch_name, tag and commit is one line naming the three."""
        with pytest.raises(ConfigurationError) as caught:
            Git(flow_path=FLOW, repo="org/flows", **refs)
        message = str(caught.value)
        assert one_line(message)
        assert all(word in message for word in ("branch_name", "tag", "commit"))


class TestSecrets:
    """Where named secrets are read from, in which order, and when they are missing."""

    @pytest.mark.parametrize("winner", ["prefect", "env", "file"])
    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_secret_lookup_order(self, hosting: Hosting, case: Case, winner: str) -> None:
        """``PREFECT__CONTEXT__SECRETS__X`` wins over ``X``, which wins over the file ``X``."""
        upstream = hosting.repo(case.owner)
        places = ["prefect", "env", "file"]
        by_place = {
            place: case.set_secrets(hosting, case.explicit_names, place)
            for place in places[places.index(winner) :]
        }
        hosting.door.allow(upstream, *(case.header(values) for values in by_place.values()))
        storage = case.make(hosting, upstream, case.explicit_names)

        await storage.pull_code()

        assert hosting.logins(upstream) == {decoded(case.header(by_place[winner]))}

    @pytest.mark.parametrize("case", WITH_DEFAULTS, ids=[c.id for c in WITH_DEFAULTS])
    async def test_default_secret_from_a_file(self, hosting: Hosting, case: Case) -> None:
        """The documented default secrets are read from the secrets directory too."""
        upstream = hosting.repo(case.owner)
        values = case.set_secrets(hosting, case.default_names, "file")
        hosting.door.allow(upstream, case.header(values))
        storage = case.make(hosting, upstream)
        await storage.pull_code()
        assert hosting.logins(upstream) == {decoded(case.header(values))}

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_rotated_secret_is_used_by_the_next_pull(
        self, hosting: Hosting, case: Case
    ) -> None:
        """A secret changed between pulls: the next pull logs in with the new value."""
        upstream = hosting.repo(case.owner)
        old = case.set_secrets(hosting, case.explicit_names, "file")
        hosting.door.allow(upstream, case.header(old))
        storage = case.make(hosting, upstream, case.explicit_names)
        await storage.pull_code()

        new = case.set_secrets(hosting, case.explicit_names, "file")
        hosting.door.allow(upstream, case.header(new))
        sha = upstream.commit({FLOW: "A = 3\n"}, branch=case.branch)
        hosting.server.reset_stats()

        assert (await storage.pull_code()).revision == sha
        assert hosting.logins(upstream) == {decoded(case.header(new))}
        assert hosting.leaks() == []

    @pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
    async def test_missing_named_secret_is_one_line_and_keeps_the_tree(
        self, hosting: Hosting, case: Case
    ) -> None:
        """A named secret that is gone: CredentialsError naming it and where it looked.

        ``state.json`` records the same line and the published tree stays as it was.
        """
        upstream = hosting.repo(case.owner)
        values = case.set_secrets(hosting, case.explicit_names)
        hosting.door.allow(upstream, case.header(values))
        storage = case.make(hosting, upstream, case.explicit_names)
        first = await storage.pull_code()
        live = os.readlink(storage.destination)
        for name in case.explicit_names.values():
            hosting.unset_secret(name)
        upstream.commit({FLOW: "A = 4\n"}, branch=case.branch)

        with pytest.raises(CredentialsError) as caught:
            await storage.pull_code()

        message = str(caught.value)
        missing = case.explicit_names.get("token") or case.explicit_names["password"]
        assert one_line(message)
        assert f"secret {missing} is not set" in message
        assert f"$PREFECT__CONTEXT__SECRETS__{missing}" in message
        assert f"${missing}" in message
        assert str(hosting.secrets_dir / missing) in message
        state = state_json(storage)
        assert state["last_error"] == message
        assert state["revision"] == first.revision
        assert os.readlink(storage.destination) == live
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]

    async def test_bitbucket_cloud_needs_the_username_with_the_password(
        self, hosting: Hosting
    ) -> None:
        """An app password without the username secret is one line naming the username."""
        upstream = hosting.repo("acme")
        hosting.set_secret("BITBUCKET_CLOUD_APP_PASSWORD", hosting.token("password"))
        hosting.door.allow(upstream, None)
        storage = CASES[3].make(hosting, upstream)
        with pytest.raises(CredentialsError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        assert "BITBUCKET_CLOUD_USERNAME" in str(caught.value)
        assert hosting.server.requests_for(upstream) == []


class TestHostLogins:
    """The login variants beyond each host's main rule."""

    async def test_bitbucket_server_user_token_secret_is_basic(self, hosting: Hosting) -> None:
        """A Bitbucket Server secret holding ``user:token`` is sent as HTTP Basic."""
        upstream = hosting.repo("scm/ETL")
        token = hosting.token()
        hosting.set_secret("BITBUCKET_ACCESS_TOKEN", f"bob:{token}")
        hosting.door.allow(upstream, basic("bob", token))
        storage = CASES[2].make(hosting, upstream)
        await storage.pull_code()
        assert hosting.logins(upstream) == {f"bob:{token}"}
        assert hosting.leaks() == []

    @pytest.mark.parametrize(
        ("options", "secret", "login"),
        [
            ({"git_token_username": "deploy"}, "TOKEN", "deploy:TOKEN"),
            ({}, "TOKEN", "OWNER:TOKEN"),
            ({"format_access_token": False}, "TOKEN", "TOKEN:"),
            ({"format_access_token": False}, "bob:TOKEN", "bob:TOKEN"),
        ],
        ids=["username", "owner", "bare-token", "user-token-secret"],
    )
    async def test_git_login_rules(
        self, hosting: Hosting, options: dict[str, Any], secret: str, login: str
    ) -> None:
        """``format_access_token``: ``{git_token_username or owner}:{token}``; else as held."""
        upstream = hosting.repo("org")
        token = hosting.token()
        expected = login.replace("TOKEN", token).replace("OWNER", "org")
        hosting.set_secret("ACME_GIT_TOKEN", secret.replace("TOKEN", token))
        hosting.door.allow(upstream, basic(*expected.split(":", 1)))
        storage = Git(
            flow_path=FLOW,
            repo=upstream.name,
            repo_host=hosting.host,
            git_token_secret_name="ACME_GIT_TOKEN",
            **options,
        )
        storage.set_base_path(hosting.base)
        await storage.pull_code()
        assert hosting.logins(upstream) == {expected}
        assert hosting.leaks() == []

    async def test_wrong_token_is_an_authentication_error_without_the_token(
        self, hosting: Hosting
    ) -> None:
        """A refused token: AuthenticationError, one line, the token nowhere in it or on disk."""
        upstream = hosting.repo("org")
        token = hosting.token()
        hosting.set_secret("GITHUB_ACCESS_TOKEN", token)
        hosting.door.allow(upstream, basic("someone-else", ""))
        storage = CASES[0].make(hosting, upstream)
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        assert all(token not in text for text in exception_texts(caught.value))
        assert token not in state_json(storage)["last_error"]
        assert hosting.leaks() == []


class TestGitLabProjectId:
    """A numeric GitLab project id, resolved once through ``GET /api/v4/projects/ID``."""

    async def test_numeric_id_is_looked_up_once(self, hosting: Hosting) -> None:
        """The lookup sends ``PRIVATE-TOKEN``; then git pulls the project's path as oauth2."""
        upstream = hosting.repo("group/sub", "project")
        token = hosting.token()
        hosting.set_secret("ACME_GITLAB_TOKEN", token)
        hosting.api.projects["4242"] = upstream.name
        hosting.api.tokens = {token}
        hosting.door.allow(upstream, basic("oauth2", token))
        storage = GitLab(
            repo="4242", host=hosting.base_url, path=FLOW, access_token_secret="ACME_GITLAB_TOKEN"
        )
        storage.set_base_path(hosting.base)

        with pytest.raises(ConfigurationError) as caught:
            storage.to_pull_step()
        assert one_line(str(caught.value))
        assert "4242" in str(caught.value)

        result = await storage.pull_code()
        assert result.revision == upstream.head("master")
        assert hosting.api.calls == [("/api/v4/projects/4242", token)]
        assert hosting.logins(upstream) == {f"oauth2:{token}"}
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]
        assert storage.name == "project-4242-master"

        hosting.server.reset_stats()
        assert not (await storage.pull_code()).changed
        assert len(hosting.api.calls) == 1
        assert only_ref_lookups(hosting.server.requests_for(upstream))
        assert [r for r in hosting.server.request_log if r.path.startswith("/api/")] == []

        inputs = step_inputs(storage)
        assert inputs["repository"] == f"{hosting.base_url}/{upstream.relpath}"
        assert inputs["credentials"] == {
            "access_token": "{{ prefect.blocks.secret.acme-gitlab-token }}",
            "username": "oauth2",
        }
        assert hosting.leaks() == []

    async def test_public_project_lookup_is_anonymous(self, hosting: Hosting) -> None:
        """With the default secret unset, the lookup and the pull send no token."""
        upstream = hosting.repo("group/sub", "project")
        hosting.api.projects["77"] = upstream.name
        hosting.api.tokens = {None}
        hosting.door.allow(upstream, None)
        storage = GitLab(repo="77", host=hosting.base_url, path=FLOW)
        storage.set_base_path(hosting.base)
        await storage.pull_code()
        assert hosting.api.calls == [("/api/v4/projects/77", None)]
        assert hosting.logins(upstream) == {None}

    async def test_unknown_project_is_not_found(self, hosting: Hosting) -> None:
        """An id GitLab does not know: NotFoundError, one line naming the lookup."""
        hosting.api.tokens = {None}
        storage = GitLab(repo="999", host=hosting.base_url, path=FLOW)
        storage.set_base_path(hosting.base)
        with pytest.raises(NotFoundError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        assert "/api/v4/projects/999" in str(caught.value)

    async def test_refused_lookup_is_an_authentication_error(self, hosting: Hosting) -> None:
        """A token GitLab refuses: AuthenticationError, without the token."""
        token = hosting.token()
        hosting.set_secret("GITLAB_ACCESS_TOKEN", token)
        hosting.api.tokens = {"another"}
        storage = GitLab(repo="5", host=hosting.base_url, path=FLOW)
        storage.set_base_path(hosting.base)
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        assert all(token not in text for text in exception_texts(caught.value))
        assert hosting.api.calls == [("/api/v4/projects/5", token)]

    async def test_failed_lookup_is_recorded_in_state_json(self, hosting: Hosting) -> None:
        """A missing named secret during the id lookup is recorded like any failed pull."""
        storage = GitLab(
            repo="6", host=hosting.base_url, path=FLOW, access_token_secret="ACME_GITLAB_TOKEN"
        )
        storage.set_base_path(hosting.base)
        with pytest.raises(CredentialsError) as caught:
            await storage.pull_code()
        assert "ACME_GITLAB_TOKEN" in str(caught.value)
        assert state_json(storage)["last_error"] == str(caught.value)


class TestCloneUrlSecret:
    """``Git(git_clone_url_secret_name=...)``: the whole URL, credentials in it, is a secret."""

    async def test_url_secret_login_never_written_down(self, hosting: Hosting) -> None:
        """The URL's login is used; its password is not in state, config, errors or steps."""
        upstream = hosting.repo("org")
        password = hosting.token("password") + "/+&"
        hosting.values.append(password)
        url = f"https://deploy:{quote(password, safe='')}@{hosting.host}/{upstream.relpath}"
        hosting.set_secret("ACME_CLONE_URL", url)
        hosting.door.allow(upstream, basic("deploy", password))
        storage = Git(flow_path=FLOW, git_clone_url_secret_name="ACME_CLONE_URL")
        storage.set_base_path(hosting.base)

        result = await storage.pull_code()

        assert result.revision == upstream.head()
        assert hosting.logins(upstream) == {f"deploy:{password}"}
        assert set(tree_of(storage.destination)) == set(INITIAL_FILES)
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]
        state = state_json(storage)
        assert state["source"] == f"git+{hosting.base_url}/{upstream.relpath}"
        configs = list((hosting.base / ".runner-storage" / ".repos").glob("*/config"))
        assert configs
        for config in configs:
            text = config.read_text()
            assert password not in text
            assert quote(password, safe="") not in text
        step = storage.to_pull_step()
        assert step[STEP]["repository"] == "{{ prefect.blocks.secret.acme-clone-url }}"
        assert "credentials" not in step[STEP]
        assert password not in json.dumps(step)
        assert quote(password, safe="") not in json.dumps(step)

        wrong = hosting.token("wrong") + "/x"
        hosting.values.append(wrong)
        wrong_url = f"https://deploy:{quote(wrong, safe='')}@{hosting.host}/{upstream.relpath}"
        hosting.set_secret("ACME_CLONE_URL", wrong_url)
        upstream.commit({FLOW: "A = 5\n"})
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        assert one_line(str(caught.value))
        for secret in (password, wrong, quote(password, safe=""), quote(wrong, safe="")):
            assert all(secret not in text for text in exception_texts(caught.value))
            assert secret not in json.dumps(state_json(storage))
        assert storage.flow_path.read_text() == INITIAL_FILES[FLOW]
        assert hosting.leaks() == []

    async def test_token_as_the_url_username(self, hosting: Hosting) -> None:
        """Prefect 1's common ``https://TOKEN@host/repo.git``: the token logs in, is never kept."""
        upstream = hosting.repo("org")
        token = hosting.token()
        hosting.set_secret("ACME_CLONE_URL", f"https://{token}@{hosting.host}/{upstream.relpath}")
        hosting.door.allow(upstream, basic(token, ""))
        storage = Git(flow_path=FLOW, git_clone_url_secret_name="ACME_CLONE_URL")
        storage.set_base_path(hosting.base)
        await storage.pull_code()
        assert hosting.logins(upstream) == {f"{token}:"}
        hosting.door.allow(upstream)
        upstream.commit({FLOW: "A = 7\n"})
        with pytest.raises(AuthenticationError) as caught:
            await storage.pull_code()
        assert all(token not in text for text in exception_texts(caught.value))
        assert token not in json.dumps(storage.to_pull_step())
        assert hosting.leaks() == []

    def test_missing_url_secret_is_one_line(self, hosting: Hosting) -> None:
        """A clone-URL secret that is not set: CredentialsError at construction, naming it."""
        with pytest.raises(CredentialsError) as caught:
            Git(flow_path=FLOW, git_clone_url_secret_name="ACME_MISSING_URL")
        assert one_line(str(caught.value))
        assert "ACME_MISSING_URL" in str(caught.value)


class TestSsh:
    """``use_ssh=True``: Prefect 1's scp-style URL, with the token ignored."""

    def test_use_ssh_url_and_warning(self) -> None:
        """The URL is ``git@HOST:REPO.git``; a token name warns that it is ignored."""
        with pytest.warns(UserWarning, match="ignored"):
            storage = Git(
                flow_path=FLOW,
                repo="org/flows",
                repo_host="git.example.com",
                git_token_secret_name="ACME_GIT_TOKEN",
                use_ssh=True,
            )
        assert step_inputs(storage) == {
            "repository": "git@git.example.com:org/flows.git",
            "branch": None,
        }

    def test_use_ssh_without_token_does_not_warn(self) -> None:
        """Without a token name there is nothing to ignore: no warning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            storage = Git(flow_path=FLOW, repo="org/flows", use_ssh=True, branch_name="dev")
        assert step_inputs(storage)["repository"] == "git@github.com:org/flows.git"


# --- pull steps -------------------------------------------------------------------------------


class TestPullSteps:
    """``to_pull_step()``: Prefect 3's ``git_clone``, secrets only as placeholders."""

    def test_github(self) -> None:
        """GitHub: the clone URL, the ref, the flow's folder, the token's placeholder."""
        storage = GitHub(
            repo="org/flows", path="flows/etl.py", ref="main", access_token_secret="ACME_TOKEN"
        )
        assert storage.to_pull_step() == {
            STEP: {
                "repository": "https://github.com/org/flows.git",
                "branch": "main",
                "directories": ["flows"],
                "credentials": {"access_token": "{{ prefect.blocks.secret.acme-token }}"},
            }
        }

    def test_github_enterprise_default_secret_root_flow(self) -> None:
        """GitHub Enterprise clones from the host of ``base_url``; a root flow has no folder."""
        inputs = step_inputs(
            GitHub(repo="org/flows", path="etl.py", base_url="https://ghe.example.com/api/v3/")
        )
        assert inputs == {
            "repository": "https://ghe.example.com/org/flows.git",
            "branch": None,
            "credentials": {"access_token": "{{ prefect.blocks.secret.github-access-token }}"},
        }

    def test_gitlab(self) -> None:
        """GitLab: ``master`` by default, and the login's username ``oauth2``."""
        inputs = step_inputs(GitLab(repo="group/flows", path="etl/flow.py"))
        assert inputs == {
            "repository": "https://gitlab.com/group/flows.git",
            "branch": "master",
            "directories": ["etl"],
            "credentials": {
                "access_token": "{{ prefect.blocks.secret.gitlab-access-token }}",
                "username": "oauth2",
            },
        }

    def test_gitlab_numeric_id_unresolved(self) -> None:
        """An id not looked up yet cannot become a step: one line saying to pull first."""
        with pytest.raises(ConfigurationError) as caught:
            GitLab(repo="123", host="gitlab.example.com", path="etl.py").to_pull_step()
        assert one_line(str(caught.value))
        assert "123" in str(caught.value)

    def test_bitbucket_server(self) -> None:
        """Bitbucket Server: ``{host}/scm/{project}/{repo}.git``, ``master``, the token."""
        inputs = step_inputs(
            Bitbucket(
                project="ETL",
                repo="flows",
                host="bitbucket.example.com",
                path="flows/etl.py",
                access_token_secret="BB_TOKEN",
            )
        )
        assert inputs == {
            "repository": "https://bitbucket.example.com/scm/ETL/flows.git",
            "branch": "master",
            "directories": ["flows"],
            "credentials": {"access_token": "{{ prefect.blocks.secret.bb-token }}"},
        }

    def test_bitbucket_cloud(self) -> None:
        """Bitbucket Cloud: the workspace's URL, username and app password as placeholders."""
        inputs = step_inputs(
            Bitbucket(project="ETL", repo="flows", workspace="acme", path="flows/etl.py", ref="dev")
        )
        assert inputs == {
            "repository": "https://bitbucket.org/acme/flows.git",
            "branch": "dev",
            "directories": ["flows"],
            "credentials": {
                "access_token": "{{ prefect.blocks.secret.bitbucket-cloud-app-password }}",
                "username": "{{ prefect.blocks.secret.bitbucket-cloud-username }}",
            },
        }

    def test_bitbucket_needs_host_or_workspace(self) -> None:
        """Neither ``host`` nor ``workspace``: one line saying which to give."""
        with pytest.raises(ConfigurationError) as caught:
            Bitbucket(project="ETL", repo="flows", path="etl.py")
        assert one_line(str(caught.value))
        assert "host" in str(caught.value)
        assert "workspace" in str(caught.value)

    @pytest.mark.parametrize(
        ("options", "credentials"),
        [
            (
                {"git_token_secret_name": "ACME_GIT_TOKEN"},
                {"access_token": "{{ prefect.blocks.secret.acme-git-token }}", "username": "org"},
            ),
            (
                {"git_token_secret_name": "ACME_GIT_TOKEN", "git_token_username": "deploy"},
                {
                    "access_token": "{{ prefect.blocks.secret.acme-git-token }}",
                    "username": "deploy",
                },
            ),
            (
                {"git_token_secret_name": "ACME_GIT_TOKEN", "format_access_token": False},
                {"access_token": "{{ prefect.blocks.secret.acme-git-token }}"},
            ),
            ({}, None),
        ],
        ids=["owner", "username", "unformatted", "no-token"],
    )
    def test_git(self, options: dict[str, Any], credentials: dict[str, str] | None) -> None:
        """Git: the whole repository (no ``directories``), the login rule's credentials."""
        storage = Git(
            flow_path="flows/etl.py",
            repo="org/flows",
            repo_host="git.example.com",
            branch_name="dev",
            **options,
        )
        expected: dict[str, Any] = {
            "repository": "https://git.example.com/org/flows.git",
            "branch": "dev",
        }
        if credentials is not None:
            expected["credentials"] = credentials
        assert step_inputs(storage) == expected

    def test_git_commit(self) -> None:
        """``Git(commit=...)``: the step pins the commit."""
        sha = "b" * 40
        inputs = step_inputs(Git(flow_path="etl.py", repo="org/flows", commit=sha))
        assert (inputs["branch"], inputs["commit_sha"]) == (None, sha)


# --- the canary scan --------------------------------------------------------------------------


async def test_no_secret_value_anywhere_under_the_base_path(hosting: Hosting) -> None:
    """Every host's pulls (good, no-op, refused) in one base path leave no secret on disk.

    Nor in any pull step: the scan covers state.json, the object stores' config, the
    manifests and the published trees.
    """
    steps: list[dict[str, Any]] = []
    for case in CASES:
        for names, place in ((case.explicit_names, "prefect"), (case.default_names, "file")):
            if not names:
                continue
            upstream = hosting.repo(case.owner)
            values = case.set_secrets(hosting, names, place)
            hosting.door.allow(upstream, case.header(values))
            storage = case.make(hosting, upstream, names)
            await storage.pull_code()
            await storage.pull_code()
            steps.append(storage.to_pull_step())
            assert all(value not in repr(storage) for value in hosting.values)
            case.set_secrets(hosting, names, place)  # rotated, but the door is not told
            upstream.commit({FLOW: "A = 6\n"}, branch=case.branch)
            with pytest.raises(AuthenticationError) as caught:
                await storage.pull_code()
            assert all(
                value not in text
                for value in hosting.values
                for text in exception_texts(caught.value)
            )
    gitlab = hosting.repo("group/sub", "project")
    token = hosting.token()
    hosting.set_secret("GITLAB_ACCESS_TOKEN", token, "file")
    hosting.api.projects["31"] = gitlab.name
    hosting.api.tokens = {token}
    hosting.door.allow(gitlab, basic("oauth2", token))
    numeric = GitLab(repo="31", host=hosting.base_url, path=FLOW)
    numeric.set_base_path(hosting.base)
    await numeric.pull_code()
    steps.append(numeric.to_pull_step())

    assert len(steps) == 10
    assert all(value not in json.dumps(steps) for value in hosting.values)
    assert hosting.leaks() == []
