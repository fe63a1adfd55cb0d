"""kill -9 during pulls: the published tree is always one whole upstream revision.

Each case starts from a root where revision A is published, points the source at revision
B, runs the real CLI and kills it (SIGKILL, with every child it started) at one exact
moment of the pull, then checks the disk, moves upstream on, and pulls again.

The moments are chosen deterministically, never by sleeping:

* most freeze the CLI right before one file operation or child process (a Python audit
  hook installed by ``tests/fault_points.py``, outside the code under test, see
  :func:`fault_tools.start_cli`);
* network moments freeze the transfer itself in the fault proxy between the CLI and the
  server (the ``info/refs`` request, a pack half sent, the k-th object GET, an object body
  half sent);
* one watches ``git checkout-index`` write files and kills it mid-way.

After each kill: ``BASE/NAME`` is either absent or a complete tree equal to one real upstream
revision (the one expected at that moment); the next pull succeeds, removes the leftovers
(``staging/``, ``link.tmp``, ``state.json.tmp``, manifests of unpublished versions), keeps
only complete versions, and publishes the latest revision.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fault_tools import (
    TreeListing,
    content_listing,
    leftovers,
    published_version,
    run_cli,
    start_cli,
    state_of,
    stopped_on_exit,
    tree_listing,
    upstream_listing,
)
from servers.fault_proxy import FaultProxy, Hold
from servers.git_http import GitHTTPServer
from servers.gitrepo import run_git
from servers.procs import descendants
from servers.s3 import S3Server

NAME = "code"


@dataclass(frozen=True)
class Moment:
    """Where to kill a pull, and what must be published right after the kill.

    ``pause_at`` is a :mod:`fault_points` spec (``EVENT|SUBSTRING|N``); ``hold`` names a
    proxy hold; ``published`` is the revision label expected after the kill (None: nothing);
    ``then`` the upstream revision the restart must publish; ``retention`` runs with
    keep_versions=1 and no grace period, so the killed pull deletes the old version;
    ``fresh`` starts from an empty root instead of one with A published.
    """

    pause_at: str | None = None
    hold: str | None = None
    published: str | None = "A"
    then: str = "C"
    retention: bool = False
    fresh: bool = False


# --- git: a repository of a few thousand files behind the fault proxy ----------------------

DIRS = 24
FILES_PER_DIR = 100


def _git_revisions() -> dict[str, dict[str, tuple[str, bytes]]]:
    """Three revisions: B changes half of A's files, drops a directory, adds one; C more."""

    def body(label: str, d: int, i: int) -> bytes:
        return f"# revision {label}\nVALUE_{d}_{i} = {label!r}\n".encode() + b"#" * 120 + b"\n"

    a: dict[str, tuple[str, bytes]] = {
        f"pkg{d:02}/mod{i:03}.py": ("100644", body("A", d, i))
        for d in range(DIRS)
        for i in range(FILES_PER_DIR)
    }
    a["bin/run.sh"] = ("100755", b"#!/bin/sh\necho A\n")
    a["link.py"] = ("120000", b"pkg00/mod000.py")
    b = dict(a)
    for path in list(b):
        if path.startswith(f"pkg{DIRS - 1}/"):
            del b[path]
        elif path.startswith("pkg") and int(path[3:5]) % 2 == 0:
            d, i = int(path[3:5]), int(path[-6:-3])
            b[path] = ("100644", body("B", d, i))
    b.update(
        {f"pkg{DIRS}/new{i:03}.py": ("100644", body("B", DIRS, i)) for i in range(FILES_PER_DIR)}
    )
    b["bin/run.sh"] = ("100755", b"#!/bin/sh\necho B\n")
    c = dict(b)
    for path in list(c):
        if path.startswith("pkg") and int(path[3:5]) % 3 == 0:
            d, i = int(path[3:5]), int(path[-6:-3])
            c[path] = ("100644", body("C", d, i))
    return {"A": a, "B": b, "C": c}


def _fast_import(repo: Path, revisions: dict[str, dict[str, tuple[str, bytes]]]) -> dict[str, str]:
    """Write the revisions as a chain of commits on branches a, b, c; return their SHAs."""
    stream = bytearray()
    parent: str | None = None
    for mark, (label, files) in enumerate(revisions.items(), start=1):
        message = f"revision {label}".encode()
        stream += b"commit refs/heads/%s\nmark :%d\n" % (label.lower().encode(), mark)
        stream += b"committer T <t@example.com> 1700000000 +0000\n"
        stream += b"data %d\n%s\n" % (len(message), message)
        if parent is not None:
            stream += f"from {parent}\n".encode()
        stream += b"deleteall\n"
        for path, (mode, data) in sorted(files.items()):
            stream += f"M {mode} inline {path}\n".encode()
            stream += b"data %d\n%s\n" % (len(data), data)
        parent = f":{mark}"
    subprocess.run(
        ["git", "fast-import", "--quiet"], input=bytes(stream), cwd=repo, check=True, timeout=60
    )
    return {
        label: run_git("rev-parse", label.lower(), cwd=repo).stdout.strip() for label in revisions
    }


@dataclass
class GitWorld:
    """The upstream repository, its revisions, the proxy in front of it, and a template."""

    repo: Path
    shas: dict[str, str]
    listings: dict[str, TreeListing]
    proxy: FaultProxy
    server: GitHTTPServer
    template: Path
    workdir: Path
    cases: int = 0

    def config(self, root: Path, branch: str, *, retention: bool) -> Path:
        """A config file for one ``run --once`` of the source on ``branch``."""
        self.cases += 1
        path = self.workdir / f"config-{self.cases}.toml"
        keep = "keep_versions = 1\ngrace_period = 0\n" if retention else ""
        path.write_text(
            f'root = "{root}"\nhttp_port = 0\nlog_format = "json"\n{keep}'
            f'[[sources]]\nname = "{NAME}"\nsource = "{self.proxy.url}/{self.repo.name}"\n'
            f'branch = "{branch}"\n'
            'credentials = { username = "alice", token = { env = "KILL_TEST_TOKEN" } }\n'
        )
        return path

    def env(self) -> dict[str, str]:
        """The environment of the CLI: the token, and no git settings of the host."""
        return {"KILL_TEST_TOKEN": self.server.password}

    def point(self, branch: str, label: str) -> None:
        """Move ``branch`` upstream to revision ``label`` (a force-push)."""
        run_git("update-ref", f"refs/heads/{branch}", self.shas[label], cwd=self.repo)


@pytest.fixture(scope="module")
def git_world(
    git_http_server: GitHTTPServer,
    git_project_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GitWorld]:
    """The big repository behind a proxy, and a root with revision A published."""
    repo = git_project_root / "kill-big.git"
    run_git("init", "-q", "--bare", "-b", "main", repo)
    run_git("config", "uploadpack.allowFilter", "true", cwd=repo)
    revisions = _git_revisions()
    shas = _fast_import(repo, revisions)
    run_git("update-ref", "refs/heads/main", shas["A"], cwd=repo)
    proxy = FaultProxy(git_http_server.port)
    proxy.start()
    workdir = tmp_path_factory.mktemp("kill-git")
    world = GitWorld(
        repo=repo,
        shas=shas,
        listings={label: upstream_listing(repo, sha) for label, sha in shas.items()},
        proxy=proxy,
        server=git_http_server,
        template=workdir / "template",
        workdir=workdir,
    )
    code, output = run_cli(
        ["run", "--once", "--config", str(world.config(world.template, "main", retention=False))],
        workdir=workdir,
        env=world.env(),
    )
    assert code == 0, output
    assert tree_listing(published_version(world.template, NAME) or workdir) == world.listings["A"]
    yield world
    proxy.stop()


def _is_upload_pack(method: str, path: str) -> bool:
    return method == "POST" and path.endswith("/git-upload-pack")


def _is_info_refs(method: str, path: str) -> bool:
    return method == "GET" and "/info/refs" in path


GIT_MOMENTS: dict[str, Moment] = {
    "first-pull-creating-object-store": Moment("os.rename|.git.new|1", published=None, fresh=True),
    "lock-file-opened": Moment("open|/code/lock|1"),
    "cleaning-leftovers": Moment("shutil.rmtree|/staging|1"),
    "ref-listing-in-flight": Moment(hold="info-refs"),
    "starting-ls-remote": Moment("subprocess.Popen|ls-remote|1", then="B"),
    "starting-fetch": Moment("subprocess.Popen|fetch|1"),
    "pack-half-received": Moment(hold="pack-half"),
    "listing-the-tree": Moment("subprocess.Popen|ls-tree|1"),
    "hard-linking-unchanged-files": Moment("os.link|/versions/|300"),
    "starting-checkout": Moment("subprocess.Popen|checkout-index|1"),
    "mid-checkout": Moment(hold="checkout"),
    "writing-manifest": Moment("open|/manifests/|2"),
    "moving-version-into-versions": Moment("os.rename|/staging/|1", then="B"),
    "version-moved-link-not-made": Moment("os.symlink|link.tmp|1", then="B"),
    "link-made-not-swapped": Moment("os.rename|link.tmp|1"),
    "swapped-state-not-written": Moment("open|state.json.tmp|1", published="B"),
    # Retention's rmtree removes by name within its folder (no "/"); a pull's own removals
    # (the links of changed files in staging/) name whole paths.
    "retention-mid-delete": Moment("os.remove|.py!/|100", published="B", then="A", retention=True),
}


def _staged_files(root: Path) -> int:
    """How many files the pull has in ``staging/`` right now."""
    return sum(len(files) for _, _, files in os.walk(root / ".runner-storage" / NAME / "staging"))


def _check_complete(root: Path, listings: dict[str, TreeListing], expected: str | None) -> None:
    """BASE/NAME is absent (expected None) or exactly revision ``expected``."""
    version = published_version(root, NAME)
    if expected is None:
        assert version is None
        return
    assert version is not None, "nothing is published"
    actual = tree_listing(version)
    matching = [label for label, listing in listings.items() if listing == actual]
    assert matching == [expected], f"published tree is {matching or 'no upstream revision'}"


def _check_recovered(
    root: Path, listings: dict[str, TreeListing], expected: str, revision: str
) -> None:
    """After the restart: the latest revision, no leftovers, only complete versions."""
    _check_complete(root, listings, expected)
    assert leftovers(root, NAME) == []
    state = state_of(root, NAME)
    assert state is not None
    assert state["revision"] == revision
    assert state["consecutive_failures"] == 0
    for version in (root / ".runner-storage" / NAME / "versions").iterdir():
        listing = tree_listing(version)
        assert listing in listings.values(), f"incomplete version left: {version.name}"


class TestKillGitPull:
    """A git pull over smart HTTP killed at 17 moments never publishes a partial tree."""

    @pytest.mark.parametrize("moment", GIT_MOMENTS.values(), ids=GIT_MOMENTS.keys())
    def test_kill_then_restart(self, git_world: GitWorld, moment: Moment, tmp_path: Path) -> None:
        """After kill -9 the published tree is A or B whole; a restart publishes the latest."""
        world = git_world
        root = tmp_path / "root"
        if not moment.fresh:
            subprocess.run(["cp", "-a", str(world.template), str(root)], check=True)
        branch = f"case-{world.cases}"
        world.point(branch, "B")
        config = world.config(root, branch, retention=moment.retention)
        args = ["run", "--once", "--config", str(config)]
        hold: Hold | None = None
        if moment.hold == "info-refs":
            hold = world.proxy.hold(_is_info_refs)
        elif moment.hold == "pack-half":
            hold = world.proxy.hold(_is_upload_pack, after_bytes=16 * 1024)
        pause_at = moment.pause_at
        if moment.hold == "checkout":
            pause_at = "subprocess.Popen|checkout-index|1"
        run = start_cli(args, workdir=tmp_path, env=world.env(), pause_at=pause_at)
        with stopped_on_exit(run):
            if hold is not None:
                try:
                    hold.wait()
                finally:
                    run.kill()
                    hold.release()
            else:
                run.wait_paused()
                if moment.hold == "checkout":
                    # Let git write a third of the files it has to, then kill it.
                    linked, total = _staged_files(root), len(world.listings["B"])
                    third = linked + (total - linked) // 3
                    os.kill(run.pid, signal.SIGCONT)
                    _freeze_when(run.pid, lambda: _staged_files(root) >= third)
                    count = _staged_files(root)
                    assert third <= count < total, f"checkout not stopped mid-way: {count}/{total}"
                run.kill()
        _check_complete(root, world.listings, moment.published)

        world.point(branch, moment.then)
        code, output = run_cli(args, workdir=tmp_path, env=world.env())
        assert code == 0, output
        _check_recovered(root, world.listings, moment.then, world.shas[moment.then])
        version = published_version(root, NAME)
        assert version is not None
        assert version.name.startswith(world.shas[moment.then])
        store = next((root / ".runner-storage" / ".repos").glob("*.git"))
        fsck = run_git("fsck", "--connectivity-only", "--no-progress", cwd=store, check=False)
        assert fsck.returncode == 0, fsck.stderr


def _freeze_when(pid: int, condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``condition`` while ``pid`` runs; SIGSTOP its whole tree the moment it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)
    for victim in {pid} | descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGSTOP)


# --- S3: a few hundred objects behind the fault proxy ----------------------------------------

OBJECTS = 200


def _s3_revisions() -> dict[str, dict[str, bytes]]:
    """A; B changes a fifth of A's objects, drops 10 and adds 10; C changes 25 more."""

    def body(label: str, i: int) -> bytes:
        return f"object {i} at revision {label}\n".encode() + bytes([65 + i % 26]) * 1500

    def key(i: int) -> str:
        return f"obj/{i // 50}/o{i:03}.txt"

    a = {key(i): body("A", i) for i in range(OBJECTS)}
    b = dict(a)
    for i in range(OBJECTS - 10, OBJECTS):
        del b[key(i)]
    b.update({key(i): body("B", i) for i in range(0, OBJECTS - 10, 5)})
    b.update({f"new/n{i:02}.txt": body("B", i) for i in range(10)})
    c = dict(b)
    c.update({key(i): body("C", i) for i in range(1, 100, 4)})
    return {"A": a, "B": b, "C": c}


@dataclass
class S3World:
    """A bucket whose prefix is moved between revisions, a proxy, and a template root."""

    server: S3Server
    bucket: str
    revisions: dict[str, dict[str, bytes]]
    proxy: FaultProxy
    template: Path
    current: dict[str, bytes]

    @property
    def listings(self) -> dict[str, TreeListing]:
        """The expected tree of each revision."""
        return {label: content_listing(files) for label, files in self.revisions.items()}

    def point(self, label: str) -> None:
        """Make the prefix hold revision ``label``, uploading only what differs."""
        wanted = self.revisions[label]
        gone = set(self.current) - set(wanted)
        changed = [(p, data) for p, data in wanted.items() if self.current.get(p) != data]
        with ThreadPoolExecutor(8) as pool:
            deleted = [pool.submit(self.server.delete, self.bucket, f"{NAME}/{p}") for p in gone]
            put = [pool.submit(self.server.put, self.bucket, f"{NAME}/{p}", d) for p, d in changed]
            for job in deleted:
                job.result()
            for upload in put:
                upload.result()
        self.current = dict(wanted)

    def args(self, root: Path) -> list[str]:
        """``pull`` of the prefix into ``root`` under the name ``code``."""
        return ["pull", f"s3://{self.bucket}/{NAME}", "--dest", str(root), "--name", NAME]

    def env(self, *, retention: bool = False, proxied: bool = True) -> dict[str, str]:
        """The endpoint (through the proxy, or not) and credentials, by environment."""
        env = {
            "AWS_ENDPOINT_URL": self.proxy.url if proxied else self.server.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.server.key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret,
        }
        if retention:
            env.update(RUNNER_STORAGE_KEEP_VERSIONS="1", RUNNER_STORAGE_GRACE_PERIOD="0")
        return env


@pytest.fixture(scope="module")
def s3_world(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3World]:
    """The bucket at revision A, behind a proxy, and a root with A published."""
    proxy = FaultProxy(s3_server.port)
    proxy.start()
    workdir = tmp_path_factory.mktemp("kill-s3")
    world = S3World(
        server=s3_server,
        bucket=s3_server.new_bucket("kill"),
        revisions=_s3_revisions(),
        proxy=proxy,
        template=workdir / "template",
        current={},
    )
    world.point("A")
    code, output = run_cli(world.args(world.template), workdir=workdir, env=world.env())
    assert code == 0, output
    yield world
    proxy.stop()


def _object_get(bucket: str, nth: int) -> Callable[[str, str], bool]:
    """Matches the ``nth`` GET of an object of ``bucket`` (not a listing)."""
    seen = [0]

    def matches(method: str, path: str) -> bool:
        if method != "GET" or not path.startswith(f"/{bucket}/{NAME}/") or "?" in path:
            return False
        seen[0] += 1
        return seen[0] == nth

    return matches


S3_MOMENTS: dict[str, Moment] = {
    "listing-in-flight": Moment(hold="list"),
    "hard-linking-unchanged-objects": Moment("os.link|/versions/|80"),
    "download-dir-created": Moment("os.mkdir|.runner-storage-download|1"),
    "thirtieth-get-in-flight": Moment(hold="get-30", then="B"),
    "object-body-half-received": Moment(hold="body-half"),
    "placing-downloads": Moment("os.rename|.runner-storage-download|25"),
    "writing-manifest": Moment("open|/manifests/|2"),
    "moving-version-into-versions": Moment("os.rename|/versions/|1", then="B"),
    "link-made-not-swapped": Moment("os.rename|link.tmp|1"),
    "swapped-state-not-written": Moment("open|state.json.tmp|1", published="B"),
    "retention-mid-delete": Moment("os.remove|.txt|50", published="B", then="A", retention=True),
}


class TestKillS3Pull:
    """An S3 pull of a few hundred objects killed at 11 moments never publishes a mix."""

    @pytest.mark.parametrize("moment", S3_MOMENTS.values(), ids=S3_MOMENTS.keys())
    def test_kill_then_restart(self, s3_world: S3World, moment: Moment, tmp_path: Path) -> None:
        """After kill -9 the published tree is A or B whole; a restart publishes the latest."""
        world = s3_world
        root = tmp_path / "root"
        subprocess.run(["cp", "-a", str(world.template), str(root)], check=True)
        world.point("B")
        hold: Hold | None = None
        bucket = world.bucket
        if moment.hold == "list":
            hold = world.proxy.hold(lambda m, p: m == "GET" and "list-type=2" in p)
        elif moment.hold == "get-30":
            hold = world.proxy.hold(_object_get(bucket, 30))
        elif moment.hold == "body-half":
            hold = world.proxy.hold(_object_get(bucket, 1), after_bytes=700)
        env = world.env(retention=moment.retention)
        run = start_cli(world.args(root), workdir=tmp_path, env=env, pause_at=moment.pause_at)
        with stopped_on_exit(run):
            if hold is not None:
                try:
                    hold.wait()
                finally:
                    run.kill()
                    hold.release()
            else:
                run.wait_paused()
                run.kill()
        _check_complete(root, world.listings, moment.published)

        world.point(moment.then)
        env = world.env(retention=moment.retention, proxied=False)
        code, output = run_cli(world.args(root), workdir=tmp_path, env=env)
        assert code == 0, output
        expected = world.listings
        version = published_version(root, NAME)
        assert version is not None
        state = state_of(root, NAME)
        assert state is not None
        _check_recovered(root, expected, moment.then, state["revision"])
        assert version.name.startswith(state["revision"][:40])
        shutil.rmtree(root)


class TestKillDaemonOnly:
    """kill -9 of the CLI alone (an OOM kill): its git children live on as orphans."""

    def test_orphaned_fetch_does_not_break_the_next_pull(
        self, git_world: GitWorld, tmp_path: Path
    ) -> None:
        """A restart while the orphaned fetch still runs publishes the latest revision."""
        world = git_world
        root = tmp_path / "root"
        subprocess.run(["cp", "-a", str(world.template), str(root)], check=True)
        branch = f"case-{world.cases}"
        world.point(branch, "B")
        args = ["run", "--once", "--config", str(world.config(root, branch, retention=False))]
        hold = world.proxy.hold(_is_upload_pack, after_bytes=16 * 1024)
        run = start_cli(args, workdir=tmp_path, env=world.env())
        orphans: set[int] = set()
        try:
            hold.wait()
            orphans = descendants(run.pid)
            assert orphans, "no git child to orphan"
            os.kill(run.pid, signal.SIGKILL)
            run.popen.wait(10)
            _check_complete(root, world.listings, "A")
            world.point(branch, "C")
            code, output = run_cli(args, workdir=tmp_path, env=world.env())
            assert code == 0, output
            _check_recovered(root, world.listings, "C", world.shas["C"])
        finally:
            hold.release()
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if run.popen.poll() is None:
                run.kill()
        # Whatever the orphan did to the object store, the next pull is sound.
        code, output = run_cli(args, workdir=tmp_path, env=world.env())
        assert code == 0, output
        _check_recovered(root, world.listings, "C", world.shas["C"])
        store = next((root / ".runner-storage" / ".repos").glob("*.git"))
        fsck = run_git("fsck", "--connectivity-only", "--no-progress", cwd=store, check=False)
        assert fsck.returncode == 0, fsck.stderr
