"""Scenarios 8-9: snapshots (``runner_storage.snapshots``) of the S1-S3 data set on moto.

The same seeded tree as scenarios 1-3 (2,000 objects, 92.8 MB by default) is written to a
local folder and pushed with :func:`~runner_storage.snapshots.push_snapshot` to a fresh
snapshot root per round (``s3://bench-snapshots/roundN``), in a long-lived worker; the
same tree is uploaded as plain objects to a bucket of its own for the comparisons.

Per round, in this order (pull contenders rotated by the round):

* S9 push cold: the first push into an empty root (every blob, the manifest, the ref);
* S8 snapshot cold: ``SnapshotStorage`` in-process vs ``RemoteStorage`` in-process (and
  rclone tuned, unless the s3 family runs too) pulling the same tree into empty folders;
* S8 snapshot no change: the same pulls again (ours: the ref, one small GET);
* S9 push unchanged: the same tree pushed again (nothing to upload);
* then 1 % of the files are modified (half of them keeping their size), 1 % added and
  1 % deleted, in the folder and in the bucket alike;
* S9 push small change: only the new blobs, the manifest and the ref may be written;
* S8 snapshot small change: ours may read only the ref, the manifest and the new blobs;
* the change is undone (folder and bucket) before the next round.

Requests are read from moto's access log and bytes from the counting proxy, as for
scenarios 1-3; a push's upload is the proxy's client-to-server count. A push is correct
when the ref names a manifest listing exactly the folder's files with their sha256, and
every blob the manifest names is in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bench.contenders import s3_contenders, s3_settings
from bench.core import Bench, Contender, Sample, measure, rotated
from bench.datasets import Change, ObjectTree, upload
from bench.measure import MeasureError, Worker

PULL_COLD = "S8 snapshot cold"
PULL_SAME = "S8 snapshot no change"
PULL_CHANGE = "S8 snapshot small change"
PUSH_COLD = "S9 snapshot push cold"
PUSH_SAME = "S9 snapshot push unchanged"
PUSH_CHANGE = "S9 snapshot push small change"

SNAPSHOTS = "SnapshotStorage in-process"
REMOTE = "RemoteStorage in-process"
TUNED = "rclone tuned"
PUSH = "push_snapshot in-process"

SNAP_BUCKET = "bench-snapshots"
DATA_BUCKET = "bench-snapshot-data"
WARMUP_BUCKET = "bench-snapshot-warmup"
REF = "latest"
NAME = "code"


def blob_key(sha256: str) -> str:
    """The format's key of a blob below the root (``runner_storage.snapshots.format``)."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split(root: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)``."""
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return bucket, prefix


# --- the local folder ---------------------------------------------------------------------


def _write(folder: Path, objects: Mapping[str, bytes]) -> None:
    for key, data in objects.items():
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _delete(folder: Path, keys: Iterable[str]) -> None:
    for key in keys:
        path = folder / key
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != folder and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _apply(tree: ObjectTree, change: Change, folder: Path, client: Any) -> None:
    tree.apply(change, client, DATA_BUCKET)
    _write(folder, change.put)
    _delete(folder, change.delete)


def _revert(tree: ObjectTree, change: Change, folder: Path, client: Any) -> None:
    tree.revert(change, client, DATA_BUCKET)
    _write(folder, change.undo_put)
    _delete(folder, change.undo_delete)


# --- contenders -----------------------------------------------------------------------------


def _snapshot_spec(bench: Bench, root: str, base: Path) -> dict[str, Any]:
    return {
        "impl": "ours",
        "kind": "snapshot",
        "url": root,
        "ref": REF,
        "name": NAME,
        "settings": s3_settings(bench),
        "base": str(base),
    }


def _contenders(bench: Bench, roots: dict[str, str], *, with_rclone: bool) -> list[Contender]:
    """Ours (SnapshotStorage, RemoteStorage) and, when asked, rclone tuned.

    ``roots["current"]`` is the snapshot root of the round (read when a pull starts).
    """
    peers = {c.name: c for c in s3_contenders(bench, DATA_BUCKET)}
    contenders = [
        Contender(
            SNAPSHOTS,
            ours=True,
            dest=lambda base: base / NAME,
            spec=lambda base: _snapshot_spec(bench, roots["current"], base),
        ),
        dataclasses.replace(peers["runner-storage in-process"], name=REMOTE),
    ]
    if with_rclone:
        contenders.append(peers[TUNED])
    return contenders


def _warm_up(bench: Bench, contenders: list[Contender], pusher: Worker) -> None:
    """Load the code and the pooled clients of every worker with tiny pulls and pushes."""
    client = bench.s3.client() if bench.s3 else None
    assert client is not None
    client.create_bucket(Bucket=WARMUP_BUCKET)
    tiny = {f"w/{i}.txt": b"warm up\n" * (i + 1) for i in range(5)}
    upload(client, WARMUP_BUCKET, {f"remote/{k}": v for k, v in tiny.items()})
    folder = bench.work / "snapshot" / "warmup-src"
    _write(folder, tiny)
    root = f"s3://{WARMUP_BUCKET}/snap"
    pusher.call(_push_request(bench, folder, root))
    for contender in contenders:
        if not contender.in_process:
            continue
        assert contender.spec is not None
        worker = bench.start_worker(contender)
        spec = contender.spec(bench.work / "warmup" / contender.slug)
        spec["url"] = root if spec["kind"] == "snapshot" else f"s3://{WARMUP_BUCKET}/remote"
        worker.call({"op": "pull", "spec": spec})


# --- pushes ---------------------------------------------------------------------------------


def _push_request(bench: Bench, folder: Path, root: str) -> dict[str, Any]:
    return {
        "op": "push",
        "directory": str(folder),
        "root": root,
        "ref": REF,
        "settings": s3_settings(bench),
    }


def check_store(client: Any, root: str, expected: Mapping[str, str]) -> tuple[bool, str, str]:
    """Whether the ref names a manifest of exactly ``expected`` whose blobs are all stored.

    Returns ``(ok, detail, snapshot id)``. Reads moto directly (not through the proxy):
    call it after the run's usage has been read.
    """
    bucket, prefix = _split(root)
    try:
        ref = client.get_object(Bucket=bucket, Key=f"{prefix}/refs/{REF}")["Body"].read()
        snapshot_id = ref.decode().strip()
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/snapshots/{snapshot_id}.json")
        data = body["Body"].read()
    except Exception as exc:  # noqa: BLE001 - reported as an incorrect push
        return False, f"ref or manifest unreadable: {exc!r}"[:200], ""
    if _sha(data) != snapshot_id:
        return False, "manifest does not match its id", snapshot_id
    files = {item["path"]: item["sha256"] for item in json.loads(data)["files"]}
    if files != dict(expected):
        missing = sorted(set(expected) - set(files))
        extra = sorted(set(files) - set(expected))
        wrong = sorted(p for p in set(files) & set(expected) if files[p] != expected[p])
        parts = [
            f"{len(paths)} {label} (e.g. {paths[0]})"
            for label, paths in (("missing", missing), ("extra", extra), ("different", wrong))
            if paths
        ]
        return False, "manifest: " + "; ".join(parts), snapshot_id
    stored: set[str] = set()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/blobs/"):
        stored.update(item["Key"] for item in page.get("Contents", []))
    absent = sorted({f"{prefix}/{blob_key(sha)}" for sha in files.values()} - stored)
    if absent:
        return False, f"{len(absent)} blobs not stored (e.g. {absent[0]})", snapshot_id
    return True, "", snapshot_id


def measure_push(
    bench: Bench,
    pusher: Worker,
    folder: Path,
    root: str,
    *,
    scenario: str,
    round_index: int,
    expected: Mapping[str, str],
    wanted_blobs: set[str] | None,
) -> Sample:
    """One timed push of ``folder`` to ``root``: requests, bytes both ways, the store checked.

    ``wanted_blobs`` (sha256 digests) are the blobs this push must write, no more, no less.
    """
    assert bench.s3 is not None
    s3 = bench.s3
    s3.reset()
    try:
        answer = pusher.call(_push_request(bench, folder, root))
    except MeasureError as exc:
        usage = s3.usage()
        bench.progress(f"    {PUSH}: FAILED: {str(exc).splitlines()[0]}")
        failed = Sample(
            scenario, PUSH, round_index, float("nan"), 0, usage.requests, usage.bytes_sent,
            usage.by_kind, False, f"failed: {str(exc)[:300]}", True, True,
        )  # fmt: skip
        bench.samples.append(failed)
        return failed
    time.sleep(0.05)  # let the server finish logging the last request
    usage = s3.usage()
    received = s3.proxy.counts().bytes_up
    _, prefix = _split(root)
    blobs_prefix = f"/{SNAP_BUCKET}/{prefix}/blobs/"
    puts = [r.path for r in s3.server.requests() if r.method == "PUT"]
    put_blobs = Counter(p.rsplit("/", 1)[-1] for p in puts if p.startswith(blobs_prefix))
    others = sorted(p.removeprefix(f"/{SNAP_BUCKET}/{prefix}/") for p in puts)
    others = [p for p in others if not p.startswith("blobs/")]
    ok, detail, snapshot_id = check_store(s3.client(), root, expected)
    info = answer.get("info", {})
    extra: dict[str, Any] = {
        "cpu_seconds": round(float(answer.get("cpu_seconds", float("nan"))), 3),
        "bytes_received": received,
        "blob_puts": sum(put_blobs.values()),
        "other_puts": others,
        "blobs_uploaded": info.get("blobs_uploaded"),
        "bytes_uploaded": info.get("bytes_uploaded"),
        "manifest_uploaded": info.get("manifest_uploaded"),
        "ref_moved": info.get("ref_moved"),
        "snapshot": snapshot_id,
    }
    if wanted_blobs is not None:
        extra["blobs_wanted"] = len(wanted_blobs)
        extra["put_exactly_changed"] = put_blobs == Counter(wanted_blobs)
    if usage.server_cpu_seconds is not None:
        extra["server_cpu_seconds"] = round(usage.server_cpu_seconds, 3)
    sample = Sample(
        scenario=scenario,
        contender=PUSH,
        round=round_index,
        seconds=float(answer["seconds"]),
        maxrss_kb=int(answer["maxrss_kb"]),
        requests=usage.requests,
        bytes_sent=usage.bytes_sent,
        by_kind=usage.by_kind,
        correct=ok,
        detail=detail,
        ours=True,
        in_process=True,
        extra=extra,
    )
    bench.samples.append(sample)
    kinds = " ".join(f"{k}={v}" for k, v in sorted(usage.by_kind.items()))
    mark = "ok" if ok else f"WRONG ({detail})"
    bench.progress(
        f"    {PUSH:<34} {sample.seconds:7.3f} s  {usage.requests:5d} req ({kinds})"
        f"  up {received / 1e6:.2f} MB  {mark}"
    )
    return sample


# --- the family -----------------------------------------------------------------------------


def _expected_reads(root: str, snapshot_id: str | None, blobs: Iterable[str]) -> Counter[str]:
    """``bucket/key`` of the ref, the manifest (unless None) and ``blobs``, once each."""
    bucket, prefix = _split(root)
    keys = [f"refs/{REF}", *(blob_key(s) for s in blobs)]
    if snapshot_id is not None:
        keys.append(f"snapshots/{snapshot_id}.json")
    return Counter(f"{bucket}/{prefix}/{key}" for key in keys)


def run(bench: Bench) -> None:
    """Run scenarios 8-9 for every round (``--s3-rounds``)."""
    assert bench.s3 is not None
    params = bench.params
    client = bench.s3.client()
    tree = ObjectTree.generate(params.objects, params.seed, params.max_object_kb * 1024)
    bench.progress(
        f"  data set: {len(tree.objects)} objects, {tree.total_bytes / 1e6:.1f} MB"
        f" (seed {params.seed}), as a folder and as bucket {DATA_BUCKET}"
    )
    folder = bench.work / "snapshot" / "src"
    shutil.rmtree(folder, ignore_errors=True)
    _write(folder, tree.objects)
    client.create_bucket(Bucket=DATA_BUCKET)
    upload(client, DATA_BUCKET, tree.objects)
    client.create_bucket(Bucket=SNAP_BUCKET)
    # rclone tuned's no-op is in S2 when the s3 family runs too; otherwise measure it here,
    # so that the ratio of the no-op comes from one run either way.
    with_rclone = "s3" not in params.scenarios
    roots = {"current": ""}
    contenders = _contenders(bench, roots, with_rclone=with_rclone)
    pusher_contender = Contender(PUSH, ours=True, dest=lambda base: base, spec=lambda base: {})
    pusher = bench.start_worker(pusher_contender)
    _warm_up(bench, contenders, pusher)
    bench.facts["snapshot"] = {
        "objects": len(tree.objects),
        "bytes": tree.total_bytes,
        "rclone_measured_here": with_rclone,
        "rounds": [],
    }

    for round_index in range(params.s3_rounds):
        label = f"round {round_index + 1}/{params.s3_rounds}"
        root = f"s3://{SNAP_BUCKET}/round{round_index}"
        roots["current"] = root
        order = rotated(contenders, round_index)
        work = bench.work / "snapshot" / f"round{round_index}"
        bases = {c.name: work / c.slug for c in contenders}
        expected = tree.expected()
        all_blobs = {_sha(data) for data in tree.objects.values()}

        bench.progress(f"  [{PUSH_COLD}] {label}")
        cold = measure_push(
            bench, pusher, folder, root, scenario=PUSH_COLD, round_index=round_index,
            expected=expected, wanted_blobs=all_blobs,
        )  # fmt: skip
        snapshot_id = str(cold.extra.get("snapshot", ""))
        for scenario in (PULL_COLD, PULL_SAME):
            bench.progress(f"  [{scenario}] {label}")
            for contender in order:
                sample = measure(
                    bench, contender, bases[contender.name], scenario=scenario,
                    round_index=round_index, server=bench.s3, expected=expected,
                )  # fmt: skip
                if contender.name == SNAPSHOTS:
                    if scenario == PULL_COLD:
                        wanted = _expected_reads(root, snapshot_id, all_blobs)
                    else:  # a no-op reads the ref, nothing else
                        wanted = _expected_reads(root, None, ())
                    sample.extra["read_exactly_wanted"] = Counter(sample.reads) == wanted
                    sample.extra["objects_read"] = len(sample.reads)
                    sample.extra["objects_wanted"] = sum(wanted.values())

        bench.progress(f"  [{PUSH_SAME}] {label}")
        measure_push(
            bench, pusher, folder, root, scenario=PUSH_SAME, round_index=round_index,
            expected=expected, wanted_blobs=set(),
        )  # fmt: skip

        change = tree.small_change(params.change_fraction)
        _apply(tree, change, folder, client)
        expected = tree.expected()
        new_blobs = {_sha(data) for data in change.put.values()} - all_blobs
        bench.progress(
            f"  [{PUSH_CHANGE}] {label}: {len(change.modified)} modified,"
            f" {len(change.added)} added, {len(change.delete)} deleted"
        )
        pushed = measure_push(
            bench, pusher, folder, root, scenario=PUSH_CHANGE, round_index=round_index,
            expected=expected, wanted_blobs=new_blobs,
        )  # fmt: skip
        changed_id = str(pushed.extra.get("snapshot", ""))
        changed_keys = Counter(f"{DATA_BUCKET}/{key}" for key in (*change.modified, *change.added))
        bench.progress(f"  [{PULL_CHANGE}] {label}")
        for contender in order:
            sample = measure(
                bench, contender, bases[contender.name], scenario=PULL_CHANGE,
                round_index=round_index, server=bench.s3, expected=expected,
            )  # fmt: skip
            read = Counter(sample.reads)
            if contender.name == SNAPSHOTS:
                wanted = _expected_reads(root, changed_id, new_blobs)
                sample.extra["read_exactly_wanted"] = read == wanted
                sample.extra["objects_read"] = sum(read.values())
                sample.extra["objects_wanted"] = sum(wanted.values())
            else:
                sample.extra["read_exactly_changed"] = read == changed_keys
                sample.extra["objects_read"] = sum(read.values())
                sample.extra["objects_changed_or_added"] = sum(changed_keys.values())
        bench.facts["snapshot"]["rounds"].append(
            {
                "root": root,
                "snapshot": snapshot_id,
                "changed_snapshot": changed_id,
                "modified": len(change.modified),
                "added": len(change.added),
                "deleted": len(change.delete),
                "new_blobs": len(new_blobs),
            }
        )
        _revert(tree, change, folder, client)
    for contender in contenders:
        bench.stop_worker(contender)
    bench.stop_worker(pusher_contender)


def pages(count: int) -> int:
    """Listing pages of 1,000 keys for ``count`` objects (at least one)."""
    return max(1, math.ceil(count / 1000))
