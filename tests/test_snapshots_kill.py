"""kill -9 of ``push``, ``gc`` and snapshot pulls: a ref only ever names a whole snapshot.

Each case runs the real CLI and kills it (SIGKILL, with every child) at one exact moment,
chosen deterministically, never by sleeping:

* on a ``file://`` root, the thread about to make one file operation is held there, for
  ever (a Python audit hook installed by ``tests/fault_points.py``, outside the code
  under test; see :func:`fault_tools.start_cli`): the k-th blob renamed into place, a
  blob's temporary being filled, the manifest renamed into place, the ref renamed over
  the old one, the k-th object gc deletes, the k-th blob a pull downloads or places.
  Holding the thread, not stopping the process, is what makes the moment exact: uploads,
  downloads and a pull's build run in worker threads, and a self-sent SIGSTOP stops
  them only once the main thread takes the stop, by when such a thread may have done
  the rest of its work;
* on S3 (moto), the fault proxy between the CLI and moto freezes one request: the k-th
  blob PUT, the PUT of the ref, a blob's body half sent to a pull.

After every kill the store is checked as a runner would trust it: every ref names a
snapshot whose manifest matches its id and whose every blob is there with the right size
and sha256, and so does every manifest still in the store (blobs go up before their
manifest, and gc deletes manifests before blobs); a pull of the ref gives the previous
tree or the new one, whole. Then the work is done again and must finish cleanly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import pytest
from daemon_process import wait_for
from fault_tools import (
    CLIRun,
    leftovers,
    published_version,
    run_cli,
    start_cli,
    state_of,
    stopped_on_exit,
)
from servers.fault_proxy import FaultProxy, Hold
from servers.s3 import S3Server
from snapshot_helpers import write_tree

from runner_storage.exceptions import NotFoundError
from runner_storage.snapshots import SnapshotStorage, collect_garbage, push_snapshot
from runner_storage.snapshots.format import blob_key, manifest_key, parse_manifest

NAME = "code"
FILES = 30
_MANIFEST = re.compile(r"snapshots/([0-9a-f]{64})\.json")


def body(label: str, index: int) -> bytes:
    """A file of about 3 kB, distinct per revision label and index."""
    return f"# {label} {index}\nVALUE = {index!r}\n".encode() + bytes([65 + index % 26]) * 3000


def revisions() -> dict[str, dict[str, bytes]]:
    """A; B rewrites half of A's files and adds five (20 blobs A does not have)."""
    a = {f"pkg/m{i:03}.py": body("A", i) for i in range(FILES)}
    b = {path: (body("B", i) if i % 2 == 0 else data) for i, (path, data) in enumerate(a.items())}
    b.update({f"new/n{i:02}.py": body("B-new", i) for i in range(5)})
    return {"A": a, "B": b}


REVISIONS = revisions()
NEW_IN_B = len(
    {hashlib.sha256(d).digest() for d in REVISIONS["B"].values()}
    - {hashlib.sha256(d).digest() for d in REVISIONS["A"].values()}
)


def contents(directory: Path) -> dict[str, bytes]:
    """Every regular file below ``directory`` (resolved first: it may be the link)."""
    real = directory.resolve()
    return {
        path.relative_to(real).as_posix(): path.read_bytes()
        for path in sorted(real.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def which(tree: Mapping[str, bytes]) -> str | None:
    """The label of the revision ``tree`` is exactly, or None."""
    return next((label for label, files in REVISIONS.items() if files == tree), None)


class Store(Protocol):
    """A snapshot root as the test reads it, behind runner-storage's back."""

    def listing(self) -> list[str]:
        """Every key below the root."""
        ...

    def objects(self) -> dict[str, bytes]:
        """Every object below the root, by key."""
        ...


@dataclass
class FileStore:
    """A ``file://`` root."""

    root: Path

    def listing(self) -> list[str]:
        """Every file below the root, as keys."""
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def objects(self) -> dict[str, bytes]:
        """Every file below the root, by key."""
        return {key: (self.root / key).read_bytes() for key in self.listing()}


@dataclass
class BucketStore:
    """A root at ``s3://bucket/code`` in moto, read directly (not through the proxy)."""

    server: S3Server
    bucket: str

    def listing(self) -> list[str]:
        """Every object below the root, as keys (one listing)."""
        return [k.removeprefix(f"{NAME}/") for k in self.server.list_keys(self.bucket, f"{NAME}/")]

    def objects(self) -> dict[str, bytes]:
        """Every object below the root, by key (one listing, the GETs in parallel)."""
        keys = self.listing()
        with ThreadPoolExecutor(8) as pool:
            bodies = pool.map(lambda key: self.server.get(self.bucket, f"{NAME}/{key}"), keys)
            return dict(zip(keys, bodies, strict=True))


def check_snapshot(objects: Mapping[str, bytes], snapshot_id: str) -> dict[str, str]:
    """Assert the snapshot is whole (manifest matches its id; every blob, sha256 and size).

    Returns its files' ``path -> sha256``.
    """
    data = objects.get(manifest_key(snapshot_id))
    assert data is not None, f"snapshot {snapshot_id[:12]} has no manifest"
    manifest = parse_manifest(data, snapshot_id=snapshot_id, where="test")
    for record in manifest.files:
        blob = objects.get(blob_key(record.sha256))
        assert blob is not None, f"snapshot {snapshot_id[:12]} lost the blob of {record.path}"
        assert len(blob) == record.size, record.path
        assert hashlib.sha256(blob).hexdigest() == record.sha256, record.path
    return {record.path: record.sha256 for record in manifest.files}


def check_store(store: Store) -> dict[str, str]:
    """Assert every ref and every manifest in the store names a whole snapshot.

    Temporary names a killed writer left (``.name.*.tmp``) are not refs or manifests.
    Returns each ref's name and id.
    """
    objects = store.objects()
    refs = {}
    for key, data in objects.items():
        if key.startswith("refs/") and not key.rsplit("/", 1)[-1].startswith("."):
            refs[key.removeprefix("refs/")] = data.decode().strip()
            check_snapshot(objects, refs[key.removeprefix("refs/")])
        match = _MANIFEST.fullmatch(key)
        if match:
            check_snapshot(objects, match[1])
    return refs


def manifests(store: Store) -> list[str]:
    """The ids of the manifests in the store."""
    return sorted(m[1] for key in store.listing() if (m := _MANIFEST.fullmatch(key)))


def blobs(store: Store) -> set[str]:
    """The sha256 of every blob in the store (temporaries a killed writer left excluded)."""
    return {
        key.rsplit("/", 1)[-1]
        for key in store.listing()
        if key.startswith("blobs/") and not key.rsplit("/", 1)[-1].startswith(".")
    }


def tree_of(store: Store, snapshot_id: str) -> str | None:
    """The revision label whose files the snapshot lists."""
    listed = check_snapshot(store.objects(), snapshot_id)
    for label, files in REVISIONS.items():
        if listed == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}:
            return label
    return None


def pull_ref(root: str, base: Path, **settings: Any) -> dict[str, bytes]:
    """Pull ``latest`` of ``root`` into ``base`` in process; return the published tree."""
    storage = SnapshotStorage(root, name=NAME, **settings)
    storage.set_base_path(base)
    anyio.run(storage.pull_code)
    return contents(storage.destination)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding revision B (the one being pushed)."""
    return write_tree(tmp_path / "project", REVISIONS["B"])


def kill_at(args: list[str], workdir: Path, pause_at: str) -> None:
    """Run ``runner-storage ARGS``, hold the thread that reaches ``pause_at``, kill -9 it all."""
    run = start_cli(args, workdir=workdir, pause_at=pause_at, hold_thread=True)
    with stopped_on_exit(run):
        run.wait_held()
        run.kill()


def push_a(root: str, tmp_path: Path, **settings: Any) -> str:
    """Push revision A to ``root`` in process; return its id."""
    directory = write_tree(tmp_path / "project-a", REVISIONS["A"])
    return push_snapshot(directory, root, **settings).id


# --- push to a file:// root, frozen at a file operation -------------------------------------


@dataclass(frozen=True)
class PushMoment:
    """Where to kill a push; what ``latest`` names after it (None: no ref); ``fresh``: no A.

    ``manifests`` is how many manifests the store holds after the kill (the new one once it
    is written); ``reuses`` says the restarted push uploads no blob (all were up).
    """

    pause_at: str
    after: str | None = "A"
    fresh: bool = False
    manifests: int = 1
    reuses: bool = False


PUSH_MOMENTS: dict[str, PushMoment] = {
    "a-blob-rename-mid-upload": PushMoment(f"os.rename|/blobs/sha256/|{NEW_IN_B // 2}"),
    "a-blob-temporary-being-filled": PushMoment("open|/blobs/sha256/|8"),
    "manifest-renamed-into-place": PushMoment("os.rename|/snapshots/|1", reuses=True),
    "manifest-written-ref-not-moved": PushMoment(
        "os.rename|/refs/latest|1", manifests=2, reuses=True
    ),
    "first-push-manifest-written-no-ref": PushMoment(
        "os.rename|/refs/latest|1", after=None, fresh=True, reuses=True
    ),
}


class TestKillPushToFiles:
    """A push to a ``file://`` root killed at five moments leaves every ref whole."""

    @pytest.mark.parametrize("moment", PUSH_MOMENTS.values(), ids=PUSH_MOMENTS.keys())
    def test_kill_then_push_again(self, moment: PushMoment, project: Path, tmp_path: Path) -> None:
        """After kill -9 the ref names A (or nothing), whole; pushing again moves it to B."""
        root = tmp_path / "store"
        store = FileStore(root)
        before = None if moment.fresh else push_a(str(root), tmp_path)
        kill_at(["push", str(project), root.as_uri()], tmp_path, moment.pause_at)

        refs = check_store(store)
        assert refs.get("latest") == before
        assert len(manifests(store)) == moment.manifests
        base = tmp_path / "base"
        if moment.after is None:
            with pytest.raises(NotFoundError, match="there is no ref 'latest'"):
                pull_ref(root.as_uri(), base)
        else:
            assert which(pull_ref(root.as_uri(), base)) == moment.after

        again = push_snapshot(project, root)
        if moment.reuses:
            assert again.blobs_uploaded == 0
        else:
            assert 0 < again.blobs_uploaded <= NEW_IN_B
        assert check_store(store)["latest"] == again.id
        assert tree_of(store, again.id) == "B"
        assert which(pull_ref(root.as_uri(), base)) == "B"

    def test_gc_removes_what_a_killed_push_left(self, project: Path, tmp_path: Path) -> None:
        """The temporaries a killed push left in snapshots/ and refs/ are garbage gc collects.

        A push to a ``file://`` (or ftp, sftp) root writes each file to a temporary beside
        it and renames it over the target; one killed before the rename leaves the
        temporary, which gc deletes once past its grace period.
        """
        root = tmp_path / "store"
        push_a(str(root), tmp_path)
        for pause_at in ("os.rename|/snapshots/|1", "os.rename|/refs/latest|1"):
            kill_at(["push", str(project), str(root)], tmp_path, pause_at)
        left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp"))
        assert len(left) == 2, left  # one manifest, one ref: written, never renamed
        collect_garbage(root, keep=1, grace_period=0)
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tmp")) == []


# --- push to S3, frozen in the fault proxy --------------------------------------------------


def _nth(matches: Callable[[str, str], bool], nth: int) -> Callable[[str, str], bool]:
    """Matches the ``nth`` request for which ``matches`` holds."""
    seen = [0]

    def match(method: str, path: str) -> bool:
        if not matches(method, path):
            return False
        seen[0] += 1
        return seen[0] == nth

    return match


@dataclass
class S3Case:
    """A fresh bucket, a proxy in front of moto, and the environments of the CLI."""

    server: S3Server
    bucket: str
    proxy: FaultProxy

    @property
    def url(self) -> str:
        """The snapshot root."""
        return f"s3://{self.bucket}/{NAME}"

    @property
    def store(self) -> BucketStore:
        """The root, read directly."""
        return BucketStore(self.server, self.bucket)

    def env(self, *, proxied: bool = True) -> dict[str, str]:
        """Credentials, and the endpoint: the proxy, or moto itself."""
        return {
            "AWS_ACCESS_KEY_ID": self.server.key,
            "AWS_SECRET_ACCESS_KEY": self.server.secret,
            "AWS_ENDPOINT_URL": self.proxy.url if proxied else self.server.endpoint_url,
        }

    def settings(self) -> dict[str, Any]:
        """Library settings reaching moto directly."""
        return self.server.storage_options()


@pytest.fixture
def s3_case(s3_server: S3Server) -> Iterator[S3Case]:
    """A fresh bucket behind a fault proxy; the proxy is stopped (holds released) after."""
    proxy = FaultProxy(s3_server.port)
    proxy.start()
    try:
        yield S3Case(s3_server, s3_server.new_bucket("snapkill"), proxy)
    finally:
        proxy.stop()


def kill_at_hold(run: CLIRun, hold: Hold) -> None:
    """Wait until the proxy froze the request, then kill the CLI (the request stays held)."""
    with stopped_on_exit(run):
        hold.wait()
        run.kill()


class TestKillPushToS3:
    """A push to S3 killed with a blob or the ref in flight leaves the ref whole."""

    def test_kill_with_a_blob_upload_in_flight(
        self, s3_case: S3Case, project: Path, tmp_path: Path
    ) -> None:
        """The 5th blob PUT frozen, the others answered, kill: the ref names A, whole.

        So it does after the orphaned PUT lands, and the new manifest never came.

        Killing only once the other uploads are answered keeps the moment exact: the proxy
        would forward a body cut short by the kill as if it were whole, which S3 never
        stores.
        """
        before = push_a(s3_case.url, tmp_path, **s3_case.settings())
        is_blob_put = _nth(lambda m, p: m == "PUT" and f"/{NAME}/blobs/" in p, 5)
        hold = s3_case.proxy.hold(is_blob_put)
        run = start_cli(["push", str(project), s3_case.url], workdir=tmp_path, env=s3_case.env())

        def others_answered() -> bool:
            puts = [r for r in s3_case.proxy.requests("PUT") if f"/{NAME}/blobs/" in r.path]
            return len(puts) >= NEW_IN_B - 1

        with stopped_on_exit(run):
            hold.wait()
            wait_for(others_answered, what="the other blob uploads")
            run.kill()
        assert check_store(s3_case.store) == {"latest": before}
        assert len(blobs(s3_case.store)) == len(REVISIONS["A"]) + NEW_IN_B - 1
        s3_case.proxy.stop()  # releases the held PUT: it reaches moto after the kill
        assert check_store(s3_case.store) == {"latest": before}
        assert manifests(s3_case.store) == [before]
        base = tmp_path / "base"
        assert which(pull_ref(s3_case.url, base, **s3_case.settings())) == "A"

        again = push_snapshot(project, s3_case.url, **s3_case.settings())
        assert again.blobs_uploaded == 0  # every blob is up by now, the orphan's included
        assert check_store(s3_case.store) == {"latest": again.id}
        assert tree_of(s3_case.store, again.id) == "B"

    def test_kill_with_the_ref_in_flight(
        self, s3_case: S3Case, project: Path, tmp_path: Path
    ) -> None:
        """The ref's PUT frozen, kill: the ref names A and the new manifest is whole.

        Once the orphaned PUT lands, the ref names the new snapshot, whole: never anything
        else.
        """
        before = push_a(s3_case.url, tmp_path, **s3_case.settings())
        hold = s3_case.proxy.hold(lambda m, p: m == "PUT" and p.endswith(f"/{NAME}/refs/latest"))
        run = start_cli(["push", str(project), s3_case.url], workdir=tmp_path, env=s3_case.env())
        kill_at_hold(run, hold)
        assert check_store(s3_case.store) == {"latest": before}
        (written,) = [i for i in manifests(s3_case.store) if i != before]  # whole: checked
        base = tmp_path / "base"
        assert which(pull_ref(s3_case.url, base, **s3_case.settings())) == "A"

        s3_case.proxy.stop()  # the held PUT reaches moto after the kill
        refs = check_store(s3_case.store)
        assert refs["latest"] == written
        assert tree_of(s3_case.store, refs["latest"]) == "B"
        assert which(pull_ref(s3_case.url, base, **s3_case.settings())) == "B"


# --- gc, frozen while it deletes --------------------------------------------------------------


@pytest.fixture
def gc_root(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A root: ``prod`` names A, ``latest`` names B, five unnamed snapshots pushed between.

    Each unnamed one holds A's files and six of its own, so gc --keep 1 deletes five
    manifests, then thirty blobs, and must keep every blob of A.
    """
    root = tmp_path / "store"
    ids = {"A": push_a(str(root), tmp_path, ref="prod")}
    for n in range(5):
        files = {f"old/{n}/f{i}.py": body(f"old-{n}", i) for i in range(6)}
        directory = write_tree(tmp_path / f"project-old-{n}", {**REVISIONS["A"], **files})
        ids[f"old-{n}"] = push_snapshot(directory, root).id
    ids["B"] = push_snapshot(write_tree(tmp_path / "project-b", REVISIONS["B"]), root).id
    return root, ids


#: Where to kill gc, and how many manifests and blobs are left then (7 and 80 before).
GC_MOMENTS = {
    "mid-way-through-the-manifests": ("os.remove|/snapshots/|3", 5, 80),
    "mid-way-through-the-blobs": ("os.remove|/blobs/sha256/|13", 2, 68),
}


class TestKillGC:
    """Gc killed while it deletes never takes a blob from a snapshot it keeps."""

    @pytest.mark.parametrize(
        ("pause_at", "manifests_left", "blobs_left"), GC_MOMENTS.values(), ids=GC_MOMENTS.keys()
    )
    def test_kill_then_gc_again(
        self,
        gc_root: tuple[Path, dict[str, str]],
        pause_at: str,
        manifests_left: int,
        blobs_left: int,
        tmp_path: Path,
    ) -> None:
        """After kill -9 every ref and every manifest left is whole; gc again finishes."""
        root, ids = gc_root
        store = FileStore(root)
        assert check_store(store) == {"latest": ids["B"], "prod": ids["A"]}
        assert (len(manifests(store)), len(blobs(store))) == (7, 80)
        kill_at(["gc", str(root), "--keep", "1", "--grace", "0"], tmp_path, pause_at)

        assert (len(manifests(store)), len(blobs(store))) == (manifests_left, blobs_left)
        assert check_store(store) == {"latest": ids["B"], "prod": ids["A"]}
        base = tmp_path / "base"
        assert which(pull_ref(root.as_uri(), base)) == "B"

        result = collect_garbage(root, keep=1, grace_period=0)
        assert set(result.kept_snapshots) == {ids["A"], ids["B"]}
        assert check_store(store) == {"latest": ids["B"], "prod": ids["A"]}
        needed = {hashlib.sha256(d).hexdigest() for t in REVISIONS.values() for d in t.values()}
        assert blobs(store) == needed
        assert manifests(store) == sorted([ids["A"], ids["B"]])


# --- pulls, killed mid-download ---------------------------------------------------------------


def check_published(base: Path, expected: str) -> None:
    """``base/code`` is exactly revision ``expected``, through a relative link."""
    version = published_version(base, NAME)
    assert version is not None, "nothing is published"
    assert which(contents(version)) == expected


def downloaded(base: Path) -> list[Path]:
    """The blobs a killed pull left in its staging tree's download folder."""
    staging = base / ".runner-storage" / NAME / "staging"
    return [p for p in staging.glob("*/.runner-storage-download-*/*") if p.is_file()]


def check_recovered(base: Path, snapshot_id: str) -> None:
    """After the next pull: B published, state says its id, no leftovers, no partial version."""
    check_published(base, "B")
    assert leftovers(base, NAME) == []
    state = state_of(base, NAME)
    assert state is not None
    assert state["revision"] == snapshot_id
    assert state["consecutive_failures"] == 0
    for version in (base / ".runner-storage" / NAME / "versions").iterdir():
        assert which(contents(version)) is not None, f"partial version left: {version.name}"


@pytest.fixture
def a_published(tmp_path: Path) -> tuple[Path, Path, str]:
    """A file root whose ``latest`` names B, and a base where A is published as ``code``."""
    root = tmp_path / "store"
    push_a(str(root), tmp_path)
    base = tmp_path / "base"
    assert which(pull_ref(root.as_uri(), base)) == "A"
    project = write_tree(tmp_path / "project-b", REVISIONS["B"])
    return root, base, push_snapshot(project, root).id


PULL_MOMENTS = {
    "downloading-the-8th-blob": "open|.runner-storage-download-|8",
    "placing-the-6th-download": "os.rename|.runner-storage-download-|6",
}


class TestKillPull:
    """A snapshot pull killed mid-download leaves the old tree published, whole."""

    @pytest.mark.parametrize("pause_at", PULL_MOMENTS.values(), ids=PULL_MOMENTS.keys())
    def test_kill_pull_then_pull_again(
        self, a_published: tuple[Path, Path, str], pause_at: str, tmp_path: Path
    ) -> None:
        """``runner-storage pull`` killed: A stays published; the next pull publishes B."""
        root, base, new = a_published
        args = ["pull", f"snapshot+{root.as_uri()}", "--dest", str(base), "--name", NAME]
        kill_at(args, tmp_path, pause_at)
        check_published(base, "A")
        assert downloaded(base), "the pull was not killed mid-download"

        code, output = run_cli(args, workdir=tmp_path)
        assert code == 0, output
        check_recovered(base, new)

    def test_kill_the_daemon_mid_download_then_run_again(
        self, a_published: tuple[Path, Path, str], tmp_path: Path
    ) -> None:
        """``run --once`` killed while it downloads: A stays; the next run publishes B."""
        root, base, new = a_published
        config = tmp_path / "config.toml"
        config.write_text(
            f'root = "{base}"\nhttp_port = 0\nlog_format = "json"\n'
            f'[[sources]]\nname = "{NAME}"\nkind = "snapshot"\nsource = "{root}"\n'
        )
        args = ["run", "--once", "--config", str(config)]
        kill_at(args, tmp_path, "open|.runner-storage-download-|5")
        assert downloaded(base), "the run was not killed mid-download"
        check_published(base, "A")

        code, output = run_cli(args, workdir=tmp_path)
        assert code == 0, output
        finished = [json.loads(line) for line in output.splitlines() if "sync_finished" in line]
        assert [(e["source"], e["revision"]) for e in finished] == [(NAME, new)]
        check_recovered(base, new)

    def test_kill_an_s3_pull_with_a_blob_half_received(
        self, s3_case: S3Case, tmp_path: Path
    ) -> None:
        """A blob's body frozen half way, the pull killed: A stays; the next pull gives B."""
        push_a(s3_case.url, tmp_path, **s3_case.settings())
        base = tmp_path / "base"
        assert which(pull_ref(s3_case.url, base, **s3_case.settings())) == "A"
        project = write_tree(tmp_path / "project-b", REVISIONS["B"])
        new = push_snapshot(project, s3_case.url, **s3_case.settings()).id
        is_blob_get = _nth(lambda m, p: m == "GET" and f"/{NAME}/blobs/" in p, 3)
        hold = s3_case.proxy.hold(is_blob_get, after_bytes=1500)
        args = ["pull", f"snapshot+{s3_case.url}", "--dest", str(base), "--name", NAME]
        run = start_cli(args, workdir=tmp_path, env=s3_case.env())
        kill_at_hold(run, hold)
        check_published(base, "A")

        code, output = run_cli(args, workdir=tmp_path, env=s3_case.env(proxied=False))
        assert code == 0, output
        check_recovered(base, new)
