"""Several sources of one repository in one process share the work of a pull.

Every source still asks the server for its own ref (so each one's credentials are checked
at every pull), but the commit is fetched once, and the file contents of every sparse
source of that ref arrive in one request, whichever source pulls first.
"""

from __future__ import annotations

import gc
import shutil
import threading
import warnings
from pathlib import Path

import anyio
import pytest
from servers.git_http import GitHTTPServer
from servers.gitrepo import INITIAL_FILES, UpstreamRepo, UpstreamRepoFactory

from runner_storage.exceptions import AuthenticationError
from runner_storage.git import GitRepository

pytestmark = pytest.mark.anyio

DIRECTORIES = [f"team{i}" for i in range(4)]


def team_repository(upstream_repo: UpstreamRepoFactory) -> UpstreamRepo:
    """A repository with one directory per team, plus a top-level file."""
    upstream = upstream_repo()
    files: dict[str, str | None] = {"setup.cfg": "[x]\n"}
    for team in DIRECTORIES:
        files.update({f"{team}/flow{i}.py": f"# {team} {i}\n" for i in range(5)})
    upstream.commit(files)
    return upstream


def sources(server: GitHTTPServer, upstream: UpstreamRepo, base: Path) -> list[GitRepository]:
    """One sparse source per team directory, publishing under ``base``."""
    credentials = {"username": server.username, "access_token": server.password}
    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # clear-text http on loopback
        for team in DIRECTORIES:
            storage = GitRepository(
                server.url_for(upstream), credentials=credentials, name=team, directories=[team]
            )
            storage.set_base_path(base)
            made.append(storage)
    return made


async def pull_all(storages: list[GitRepository]) -> None:
    """Pull every source concurrently, as the daemon does."""
    async with anyio.create_task_group() as group:
        for storage in storages:
            group.start_soon(storage.pull_code)


def fetches(server: GitHTTPServer, upstream: UpstreamRepo) -> int:
    """How many protocol v2 ``fetch`` commands (object transfers) the server answered."""
    return sum(1 for r in server.requests_for(upstream) if r.command == "fetch")


def published_files(storage: GitRepository) -> list[str]:
    """The files of the published tree, relative to it."""
    root = storage.destination.resolve()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def cone(team: str) -> list[str]:
    """What a sparse source of ``team`` must publish: its directory and top-level files."""
    top = [path for path in INITIAL_FILES if "/" not in path]
    return sorted([*top, "setup.cfg", *(f"{team}/flow{i}.py" for i in range(5))])


class TestOneSweep:
    """Sources of one repository and ref pull together."""

    async def test_cold_pull_fetches_commit_and_contents_once(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Four sparse sources, cold: two transfers in all, each source gets its cone."""
        upstream = team_repository(upstream_repo)
        storages = sources(git_http_server, upstream, tmp_path)
        git_http_server.reset_stats()
        await pull_all(storages)
        # One blobless fetch of the commit, one fetch of every cone's file contents.
        assert fetches(git_http_server, upstream) == 2
        for storage, team in zip(storages, DIRECTORIES, strict=True):
            assert published_files(storage) == cone(team)

    async def test_new_commit_is_fetched_once_for_all(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A commit touching every cone: again two transfers, and every source updates."""
        upstream = team_repository(upstream_repo)
        storages = sources(git_http_server, upstream, tmp_path)
        await pull_all(storages)
        upstream.commit({f"{team}/flow0.py": f"# {team} changed\n" for team in DIRECTORIES})
        git_http_server.reset_stats()
        await pull_all(storages)
        assert fetches(git_http_server, upstream) == 2
        for storage, team in zip(storages, DIRECTORIES, strict=True):
            assert (storage.destination / team / "flow0.py").read_text() == f"# {team} changed\n"

    async def test_one_ref_lookup_for_sources_asking_at_once(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Sources with the same credentials asking at the same moment share one answer."""
        upstream = team_repository(upstream_repo)
        storages = sources(git_http_server, upstream, tmp_path)
        await pull_all(storages)
        git_http_server.reset_stats()
        await pull_all(storages)
        lookups = [r for r in git_http_server.requests_for(upstream) if r.command == "ls-refs"]
        assert 1 <= len(lookups) < len(storages)

    def test_pulls_in_two_event_loops_at_once(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Two threads with an event loop each pull one repository at once; both finish.

        Sync wrappers run a storage so. A ref lookup in flight is shared within one event
        loop only: waiting on another loop's would never be woken.
        """
        upstream = team_repository(upstream_repo)
        first, second = sources(git_http_server, upstream, tmp_path / "base")[:2]
        results: dict[str, object] = {}

        def pull(storage: GitRepository) -> None:
            try:
                results[storage.name] = anyio.run(storage.pull_code)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results[storage.name] = exc

        with git_http_server.holding() as gate:
            threads = [threading.Thread(target=pull, args=(first,), daemon=True)]
            threads[0].start()
            assert gate.wait_for_held(1)
            threads.append(threading.Thread(target=pull, args=(second,), daemon=True))
            threads[1].start()
            gate.wait_for_held(2, timeout=10)
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a pull never finished"
        assert [type(results[s.name]).__name__ for s in (first, second)] == ["SyncResult"] * 2
        assert published_files(second) == cone(second.name)

    async def test_sources_with_other_credentials_ask_for_themselves(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A source whose token is wrong fails, even while the others' lookups succeed."""
        upstream = team_repository(upstream_repo)
        storages = sources(git_http_server, upstream, tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            intruder = GitRepository(
                git_http_server.url_for(upstream),
                credentials={"username": git_http_server.username, "access_token": "wrong"},
                name="intruder",
                directories=["team0"],
            )
        intruder.set_base_path(tmp_path)
        await pull_all(storages)  # the store now has every commit and file content
        failures: list[BaseException] = []

        async def intrude() -> None:
            try:
                await intruder.pull_code()
            except AuthenticationError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for storage in storages:
                group.start_soon(storage.pull_code)
            group.start_soon(intrude)
        assert len(failures) == 1
        assert not intruder.destination.is_symlink()

    async def test_sequential_pulls_share_too(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """The first pull brings the contents of the sources that pull after it."""
        upstream = team_repository(upstream_repo)
        first, *others = sources(git_http_server, upstream, tmp_path)
        git_http_server.reset_stats()
        await first.pull_code()
        assert fetches(git_http_server, upstream) == 2
        for storage in others:
            await storage.pull_code()
        assert fetches(git_http_server, upstream) == 2
        for storage, team in zip(others, DIRECTORIES[1:], strict=True):
            assert published_files(storage) == cone(team)

    async def test_removed_store_is_filled_again_in_one_request(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Deleting the object stores under a running process costs one fetch, not one per file.

        What the process remembered about the old store is forgotten with it.
        """
        upstream = team_repository(upstream_repo)
        first, second, *_ = sources(git_http_server, upstream, tmp_path)
        await first.pull_code()
        shutil.rmtree(tmp_path / ".runner-storage" / ".repos")
        git_http_server.reset_stats()
        await second.pull_code()
        assert fetches(git_http_server, upstream) == 2
        assert published_files(second) == cone(DIRECTORIES[1])


class TestSparseContents:
    """A sparse source gets every file of its cone in one request, wherever the files sit."""

    @pytest.mark.parametrize("top_files", [1, 300], ids=["few-top-files", "many-top-files"])
    async def test_nested_cone_and_the_files_beside_it_arrive_in_one_request(
        self,
        upstream_repo: UpstreamRepoFactory,
        git_http_server: GitHTTPServer,
        tmp_path: Path,
        top_files: int,
    ) -> None:
        """``apps/web`` brings its subtree and the files of ``apps/`` and the root.

        With many top-level files the search for missing contents walks the whole tree
        instead of listing the paths; the result is the same.
        """
        upstream = upstream_repo()
        files: dict[str, str | None] = {f"top{i:03d}.txt": f"{i}\n" for i in range(top_files)}
        files.update({
            "apps/README.md": "apps\n", "apps/web/app.py": "web\n",
            "apps/web/deep/x.py": "x\n", "apps/api/api.py": "api\n",
        })  # fmt: skip
        upstream.commit(files)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # clear-text http on loopback
            storage = GitRepository(
                git_http_server.url_for(upstream),
                credentials={
                    "username": git_http_server.username,
                    "access_token": git_http_server.password,
                },
                directories=["apps/web"],
            )
        storage.set_base_path(tmp_path)
        git_http_server.reset_stats()
        await storage.pull_code()
        assert fetches(git_http_server, upstream) == 2
        top = [path for path in INITIAL_FILES if "/" not in path]
        assert published_files(storage) == sorted([
            *top, *(f"top{i:03d}.txt" for i in range(top_files)),
            "apps/README.md", "apps/web/app.py", "apps/web/deep/x.py",
        ])  # fmt: skip


class TestWhoShares:
    """Only live sources of the same store and ref are fetched for."""

    async def test_other_branch_is_not_fetched_along(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """A source of another branch gets nothing fetched for it by main's pull."""
        upstream = team_repository(upstream_repo)
        upstream.create_branch("release")
        main, *_ = sources(git_http_server, upstream, tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            release = GitRepository(
                git_http_server.url_for(upstream),
                credentials={
                    "username": git_http_server.username,
                    "access_token": git_http_server.password,
                },
                name="release",
                branch="release",
                directories=["team3"],
            )
        release.set_base_path(tmp_path)
        await main.pull_code()
        git_http_server.reset_stats()
        await release.pull_code()
        # The commit is already here (both branches point at it), so git asks for nothing;
        # the one transfer is team3's contents, which main's pull did not bring.
        assert fetches(git_http_server, upstream) == 1
        assert published_files(release) == cone("team3")

    async def test_forgotten_sources_cost_nothing(
        self, upstream_repo: UpstreamRepoFactory, git_http_server: GitHTTPServer, tmp_path: Path
    ) -> None:
        """Once a source is gone, pulls of the others no longer fetch its contents."""
        upstream = team_repository(upstream_repo)
        upstream.commit({"team1/big.bin": "x" * 200_000})
        storages = sources(git_http_server, upstream, tmp_path / "with")
        del storages[1]  # team1 and its big file
        gc.collect()
        git_http_server.reset_stats()
        await storages[0].pull_code()
        sent = sum(r.response_bytes for r in git_http_server.requests_for(upstream))
        assert sent < 100_000
