"""Scenarios 1-3: an object store, cold, unchanged, and after a small change.

Per round, every contender (in an order rotated by the round) pulls the bucket into its
own empty directory (S1), pulls again with nothing changed (S2); then 1 % of the objects
are modified, 1 % added and 1 % deleted and everyone pulls once more (S3); the change is
undone (same bytes, same ETags) before the next round.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from collections import Counter

from bench.contenders import s3_contenders
from bench.core import Bench, Contender, Sample, measure, rotated
from bench.datasets import ObjectTree, upload

S1, S2, S3 = "S1 s3 cold", "S2 s3 no change", "S3 s3 small change"
BUCKET = "bench-data"
WARMUP_BUCKET = "bench-warmup"


def _warm_up(bench: Bench, contender: Contender) -> None:
    """Start the worker and have it pull a tiny bucket once: imports and clients loaded."""
    assert contender.spec is not None
    worker = bench.start_worker(contender)
    spec = contender.spec(bench.work / "warmup" / contender.slug)
    spec["url"] = f"s3://{WARMUP_BUCKET}"
    worker.call({"op": "pull", "spec": spec})


FLOOR = "raw ListObjectsV2 pages (server floor)"
_TOKEN = re.compile(rb"<NextContinuationToken>(.*?)</NextContinuationToken>")


def listing_floor(bench: Bench, scenario: str, round_index: int) -> Sample:
    """Time the bare listing (unsigned GETs of every page, no parsing): the server's share.

    Recorded as a reference row: no client can list faster than the server answers.
    """
    assert bench.s3 is not None
    bench.s3.reset()
    started = time.perf_counter()
    token = None
    while True:
        query = {"list-type": "2", "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        url = f"{bench.s3.endpoint_url}/{BUCKET}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=60) as reply:
            body = reply.read()
        match = _TOKEN.search(body)
        if not match:
            break
        token = match.group(1).decode()
    seconds = time.perf_counter() - started
    time.sleep(0.05)
    usage = bench.s3.usage()
    sample = Sample(
        scenario=scenario,
        contender=FLOOR,
        round=round_index,
        seconds=seconds,
        maxrss_kb=0,
        requests=usage.requests,
        bytes_sent=usage.bytes_sent,
        by_kind=usage.by_kind,
        correct=True,
        reference=True,
        extra={"server_cpu_seconds": round(usage.server_cpu_seconds or 0.0, 3)},
    )
    bench.samples.append(sample)
    bench.progress(f"    {FLOOR:<34} {seconds:7.3f} s  {usage.requests:5d} req")
    return sample


def run(bench: Bench) -> None:
    """Run scenarios 1-3 for every round."""
    assert bench.s3 is not None
    params = bench.params
    client = bench.s3.client()
    tree = ObjectTree.generate(params.objects, params.seed, params.max_object_kb * 1024)
    bench.progress(
        f"  data set: {len(tree.objects)} objects, {tree.total_bytes / 1e6:.1f} MB"
        f" (seed {params.seed})"
    )
    client.create_bucket(Bucket=BUCKET)
    upload(client, BUCKET, tree.objects)
    client.create_bucket(Bucket=WARMUP_BUCKET)
    upload(client, WARMUP_BUCKET, {f"w/{i}.txt": b"warm up\n" * (i + 1) for i in range(5)})
    bench.facts["s3_dataset"] = {"objects": len(tree.objects), "bytes": tree.total_bytes}

    contenders = s3_contenders(bench, BUCKET)
    for contender in contenders:
        if contender.in_process:
            _warm_up(bench, contender)

    for round_index in range(params.s3_rounds):
        order = rotated(contenders, round_index)
        root = bench.work / "s3" / f"round{round_index}"
        bases = {c.name: root / c.slug for c in contenders}
        expected = tree.expected()
        for scenario in (S1, S2):
            bench.progress(f"  [{scenario}] round {round_index + 1}/{params.s3_rounds}")
            for contender in order:
                measure(
                    bench, contender, bases[contender.name], scenario=scenario,
                    round_index=round_index, server=bench.s3, expected=expected,
                )  # fmt: skip
            if scenario == S2:
                listing_floor(bench, S2, round_index)
        change = tree.small_change(params.change_fraction)
        tree.apply(change, client, BUCKET)
        expected = tree.expected()
        wanted = Counter(f"{BUCKET}/{key}" for key in (*change.modified, *change.added))
        bench.progress(
            f"  [{S3}] round {round_index + 1}/{params.s3_rounds}: {len(change.modified)} modified,"
            f" {len(change.added)} added, {len(change.delete)} deleted"
        )
        for contender in order:
            sample = measure(
                bench, contender, bases[contender.name], scenario=S3,
                round_index=round_index, server=bench.s3, expected=expected,
            )  # fmt: skip
            read = Counter(sample.reads)
            sample.extra["objects_read"] = sum(read.values())
            sample.extra["objects_changed_or_added"] = sum(wanted.values())
            sample.extra["read_exactly_changed"] = read == wanted
        tree.revert(change, client, BUCKET)
    for contender in contenders:
        bench.stop_worker(contender)
