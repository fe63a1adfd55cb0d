"""Probe: does the publisher's retention, run inside the pull, slow the pulls down?

``Publisher._apply_retention`` deletes old versions right after the symlink swap, inside
the pull. The issue notes that on these machines deleting thousands of files just before
creating thousands of new ones slows the creation several times over. This probe keeps
four copies of one published S3 source (same bucket, four base directories) and, round
after round, changes 1 % of the bucket and pulls every copy, in an order rotated by the
round, under four policies:

* ``keep``: retention deletes nothing (keep 3, grace 600 s: what a short run sees);
* ``in-pull``: keep 1, grace 0: every pull deletes the previous version inside itself;
* ``just-before``: the bench deletes the previous version right before the pull;
* ``after+idle``: the bench deletes it, then waits 2 s before the pull.

Each pull publishes a new version: ~2,000 hard links plus a few downloads. The worker
times the whole pull, our link step (directories and hard links) and the retention step.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.contenders import s3_settings
from bench.core import Bench, Contender, rotated
from bench.datasets import Change, ObjectTree, upload
from runner_storage.publish.layout import SourceLayout

BUCKET = "bench-retention"
IDLE_SECONDS = 2.0
POLICIES = ("keep", "in-pull", "just-before", "after+idle")


def _spec(bench: Bench, base: Path, policy: str) -> dict[str, Any]:
    retention = {"keep_versions": 1, "grace_period": 0} if policy == "in-pull" else {}
    return {
        "impl": "ours",
        "kind": "remote",
        "url": f"s3://{BUCKET}",
        "settings": s3_settings(bench),
        "options": {"keep_versions": 3, "grace_period": 600, **retention},
        "base": str(base),
    }


def _previous_version(base: Path) -> Path | None:
    """The newest version that is not live (the one a retention pass would delete first)."""
    versions = SourceLayout(base, BUCKET).versions
    live = (base / BUCKET).resolve()
    others = [p for p in versions.iterdir() if p.resolve() != live]
    return max(others, key=lambda p: p.stat().st_mtime) if others else None


def _copy_published(source: Path, target: Path) -> None:
    """A copy of a published base that shares the immutable files (hard links)."""
    shutil.copytree(source, target, symlinks=True, copy_function=_link)


def _link(source: str, target: str) -> None:
    Path(target).hardlink_to(source)


def run(bench: Bench) -> None:
    """Pull after small changes under each retention policy; record pull/link/retention."""
    assert bench.s3 is not None
    params = bench.params
    client = bench.s3.client()
    tree = ObjectTree.generate(params.objects, params.seed + 2, max_size=64 * 1024)
    client.create_bucket(Bucket=BUCKET)
    upload(client, BUCKET, tree.objects)
    contender = Contender(
        "runner-storage in-process", ours=True, dest=lambda b: b, spec=lambda b: {}
    )
    worker = bench.start_worker(contender)
    root = bench.work / "retention"
    bases = {policy: root / policy for policy in POLICIES}
    first = bases[POLICIES[0]]
    first.mkdir(parents=True)
    worker.call({"op": "pull", "spec": _spec(bench, first, "keep"), "instrument": True})
    for policy in POLICIES[1:]:
        _copy_published(first, bases[policy])

    changes: list[Change] = []
    results: dict[str, list[dict[str, float]]] = {policy: [] for policy in POLICIES}
    # Round 0 is untimed: it gives every copy a previous version to delete.
    for round_index in range(params.retention_pulls + 1):
        change = tree.small_change(params.change_fraction)
        tree.apply(change, client, BUCKET)
        changes.append(change)
        for policy in rotated(POLICIES, round_index):
            base = bases[policy]
            deleted = 0
            if round_index and policy in ("just-before", "after+idle"):
                old = _previous_version(base)
                if old is not None:
                    deleted = sum(1 for _ in old.rglob("*"))
                    shutil.rmtree(old)
                if policy == "after+idle":
                    time.sleep(IDLE_SECONDS)
            answer = worker.call(
                {"op": "pull", "spec": _spec(bench, base, policy), "instrument": True}
            )
            if not round_index:
                continue
            phases = answer.get("phases", {})
            results[policy].append(
                {
                    "pull_seconds": answer["seconds"],
                    "link_seconds": phases.get("link", float("nan")),
                    "retention_seconds": phases.get("retention", float("nan")),
                    "deleted_before_pull": deleted,
                }
            )
    for change in reversed(changes):
        tree.revert(change, client, BUCKET)
    bench.stop_worker(contender)

    summary: dict[str, Any] = {
        "objects": len(tree.objects),
        "pulls_per_policy": params.retention_pulls,
        "idle_seconds": IDLE_SECONDS,
        "policies": {},
    }
    for policy, runs in results.items():
        row = {
            key: round(statistics.median(r[key] for r in runs), 4)
            for key in ("pull_seconds", "link_seconds", "retention_seconds")
        }
        summary["policies"][policy] = {**row, "runs": runs}
        bench.progress(
            f"    retention {policy:<12} pull {row['pull_seconds']:.3f} s, link"
            f" {row['link_seconds']:.3f} s, retention in pull {row['retention_seconds']:.3f} s"
        )
    bench.facts["retention"] = summary
