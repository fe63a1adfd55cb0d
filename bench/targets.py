"""The targets of issues 4 and 15, evaluated on one run's summaries: PASS or MISS, and figures."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.contenders import PULL_CLI
from bench.core import Bench
from bench.report import Summary

PASS, MISS, NA = "PASS", "MISS", "n/a"

CLI, INPROC = "runner-storage CLI", "runner-storage in-process"


class _Lookup:
    def __init__(self, summaries: list[Summary]) -> None:
        self._by = {(s.scenario, s.contender): s for s in summaries}

    def get(self, scenario: str, contender: str) -> Summary | None:
        return self._by.get((scenario, contender))


def _target(scenario: str, goal: str, ok: bool | None, figures: str, **data: Any) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "target": goal,
        "result": NA if ok is None else (PASS if ok else MISS),
        "figures": figures,
        **data,
    }


def _faster(
    scenario: str,
    ours: Summary | None,
    peer: Summary | None,
    *,
    factor: float = 1.0,
    strict: bool = False,
) -> dict[str, Any]:
    """ours.median <= factor x peer.median (or < when strict), both correct."""
    label = (
        "faster than"
        if strict
        else ("no slower than" if factor == 1.0 else f"within {factor:g}x of")
    )
    goal = f"{ours.contender if ours else '?'} {label} {peer.contender if peer else '?'}"
    if (
        ours is None
        or peer is None
        or not (math.isfinite(ours.median) and math.isfinite(peer.median))
    ):
        return _target(scenario, goal, None, "not measured")
    ratio = ours.median / peer.median if peer.median > 0 else float("inf")
    ok = (ratio < factor if strict else ratio <= factor) and ours.correct
    figures = f"{ours.median:.3f} s vs {peer.median:.3f} s ({ratio:.2f}x)"
    if not ours.correct:
        figures += "; ours incorrect"
    if not peer.correct:
        figures += f"; {peer.contender} incorrect ({peer.detail[:60]})"
    return _target(scenario, goal, ok, figures, ratio=ratio)


def _no_more(
    scenario: str, what: str, ours: Summary | None, peer: Summary | None, attr: str
) -> dict[str, Any]:
    goal = (
        f"{ours.contender if ours else '?'}: no more {what} than {peer.contender if peer else '?'}"
    )
    if ours is None or peer is None:
        return _target(scenario, goal, None, "not measured")
    a, b = getattr(ours, attr), getattr(peer, attr)
    return _target(scenario, goal, a <= b, f"{a:.0f} vs {b:.0f}")


def _samples(bench: Bench, scenario: str, contender: str) -> list[Any]:
    return [s for s in bench.samples if s.scenario == scenario and s.contender == contender]


def _s3_targets(bench: Bench, look: _Lookup) -> list[dict[str, Any]]:
    from bench.scenarios.s3 import S1, S2, S3

    out: list[dict[str, Any]] = []
    tuned, prefect, prefect_in = "rclone tuned", "Prefect process", "Prefect in-process"
    if look.get(S1, CLI) is None:
        return out
    out.append(_faster(S1, look.get(S1, CLI), look.get(S1, tuned)))
    out.append(_no_more(S1, "requests", look.get(S1, CLI), look.get(S1, tuned), "requests"))
    out.append(_faster(S1, look.get(S1, CLI), look.get(S1, prefect), strict=True))
    out.append(_faster(S1, look.get(S1, INPROC), look.get(S1, prefect_in), strict=True))

    pages = math.ceil(bench.facts.get("s3_dataset", {}).get("objects", 1000) / 1000)
    for name in (CLI, PULL_CLI, INPROC):
        runs = _samples(bench, S2, name)
        lists = [s.by_kind.get("LIST", 0) for s in runs]
        gets = [s.by_kind.get("GET", 0) + s.by_kind.get("HEAD", 0) for s in runs]
        others = [s.requests - s.by_kind.get("LIST", 0) for s in runs]
        ok = bool(runs) and all(n == pages for n in lists) and not any(gets) and not any(others)
        out.append(
            _target(
                S2,
                f"{name}: one listing ({pages} page(s) of 1000) and zero object reads",
                ok if runs else None,
                f"LIST pages per run {lists}, object reads {gets}, other requests {others}",
            )
        )
    out.append(_faster(S2, look.get(S2, CLI), look.get(S2, tuned)))
    out.append(_faster(S2, look.get(S2, PULL_CLI), look.get(S2, tuned), factor=1.3))
    inproc = look.get(S2, INPROC)
    if inproc is not None:
        out.append(
            _target(
                S2,
                f"{INPROC}: pull under 0.3 s",
                inproc.median < 0.3 and inproc.correct,
                f"median {inproc.median:.3f} s (max {inproc.high:.3f} s)",
            )
        )

    for name in (CLI, PULL_CLI, INPROC):
        runs = _samples(bench, S3, name)
        exact = [bool(s.extra.get("read_exactly_changed")) for s in runs]
        reads = [
            f"{s.extra.get('objects_read')}/{s.extra.get('objects_changed_or_added')}" for s in runs
        ]
        correct = all(s.correct for s in runs)
        out.append(
            _target(
                S3,
                f"{name}: exactly the changed and added objects read; deleted files gone",
                (all(exact) and correct) if runs else None,
                f"objects read/changed+added per run {reads}; tree correct: {correct}",
            )
        )
    out.append(_faster(S3, look.get(S3, CLI), look.get(S3, tuned)))
    out.append(_faster(S3, look.get(S3, PULL_CLI), look.get(S3, tuned), factor=1.3))
    return out


def _git_targets(bench: Bench, look: _Lookup) -> list[dict[str, Any]]:
    from bench.scenarios.git import S4, S4_SPARSE, S5_COMMIT, S5_SAME

    out: list[dict[str, Any]] = []
    if look.get(S4, INPROC) is None:
        return out
    pairs = (
        (S4, INPROC, "git clone --depth 1"),
        (S4_SPARSE, INPROC + " (sparse)", "git sparse clone"),
        (S5_SAME, INPROC, "git fetch + reset --hard"),
        (S5_COMMIT, INPROC, "git fetch + reset --hard"),
    )
    for scenario, ours_name, plain in pairs:
        ours, peer = look.get(scenario, ours_name), look.get(scenario, plain)
        out.append(_faster(scenario, ours, peer, factor=1.15))
        if scenario == S5_COMMIT:  # issue 15's target, for what hard-linking costs
            out.append(_faster(scenario, ours, peer, factor=1.5))
        if ours is not None and peer is not None:
            out.append(
                _target(
                    scenario,
                    f"{ours_name}: no more bytes from the server than {plain}",
                    ours.bytes_sent <= peer.bytes_sent,
                    f"{ours.bytes_sent / 1e3:.1f} kB vs {peer.bytes_sent / 1e3:.1f} kB",
                )
            )
    cold, commit = look.get(S4, INPROC), look.get(S5_COMMIT, INPROC)
    cli_commit = look.get(S5_COMMIT, CLI)
    if cold is not None and commit is not None:
        worst = max(commit.bytes_sent, cli_commit.bytes_sent if cli_commit else 0)
        out.append(
            _target(
                S5_COMMIT,
                "a new commit costs kilobytes, never a re-clone"
                " (< 256 kB and < 5 % of a cold pull)",
                worst < 256_000 and worst < 0.05 * cold.bytes_sent,
                f"{worst / 1e3:.1f} kB for the commit vs {cold.bytes_sent / 1e3:.1f} kB cold",
            )
        )
    return out


def _many_targets(bench: Bench, look: _Lookup) -> list[dict[str, Any]]:
    from bench.scenarios.many import S6_COLD, S6_COMMIT, S6_SAME

    out: list[dict[str, Any]] = []
    rows = [s for s in look._by.values() if s.scenario == S6_COLD]
    ours = [s for s in rows if s.ours]
    peers = [s for s in rows if not s.ours and not s.reference]
    reference = [s for s in rows if s.reference]
    if not ours or not peers:
        return out
    for scenario in (S6_COLD, S6_SAME, S6_COMMIT):
        phase = [s for s in look._by.values() if s.scenario == scenario]
        peer = next((s for s in phase if not s.ours and not s.reference), None)
        for mine in (s for s in phase if s.ours):
            out.append(_faster(scenario, mine, peer, strict=True))
    if reference:
        ref = reference[0]
        for mine in ours:
            out.append(
                _target(
                    S6_COLD,
                    f"{mine.contender}: the repository's objects fetched once"
                    " (server bytes <= 1.15x one sparse clone of all the directories)",
                    mine.bytes_sent <= 1.15 * ref.bytes_sent,
                    f"{mine.bytes_sent / 1e3:.1f} kB vs {ref.bytes_sent / 1e3:.1f} kB"
                    f" ({mine.bytes_sent / ref.bytes_sent:.2f}x); ten plain clones:"
                    f" {peers[0].bytes_sent / 1e3:.1f} kB",
                )
            )
    return out


def _daemon_targets(bench: Bench, look: _Lookup) -> list[dict[str, Any]]:
    from bench.scenarios.daemon import S7

    facts = bench.facts.get("daemon")
    if not facts:
        return []
    rss = facts["rss_kb"]["max"] / 1024
    cpu = facts["cpu_percent_of_one_core"]
    growth = facts["rss_growth_kb"]
    return [
        _target(S7, "under 80 MB resident", rss < 80, f"max {rss:.1f} MB (median"
                f" {facts['rss_kb']['median'] / 1024:.1f} MB)"),
        _target(S7, "under 1 % of one core", cpu < 1.0, f"{cpu:.2f} % ({facts['cpu_seconds']:.2f}"
                f" CPU s in {facts['window_seconds']:.0f} s, {facts['pulls']:.0f} pulls)"),
        _target(S7, "no growth over the run (last quarter - first quarter < 1 MB)", growth < 1024,
                f"{growth:+.0f} kB; slope {facts['rss_slope_kb_per_min']:+.0f} kB/min"),
    ]  # fmt: skip


def _kinds(runs: list[Any]) -> str:
    """Requests by kind per run, e.g. ``[GET=1 HEAD=1, ...]``."""
    return (
        "["
        + ", ".join(
            " ".join(f"{k}={v}" for k, v in sorted(s.by_kind.items())) or "none" for s in runs
        )
        + "]"
    )


def _manifest_and_ref(sample: Any, ref: str) -> bool:
    """Whether a push wrote, besides blobs, exactly its manifest and the ref."""
    written = sorted(sample.extra.get("other_puts") or [])
    return written == sorted([f"refs/{ref}", f"snapshots/{sample.extra.get('snapshot')}.json"])


def _snapshot_targets(bench: Bench, look: _Lookup) -> list[dict[str, Any]]:
    from bench.scenarios.s3 import S2
    from bench.scenarios.snapshot import (
        PULL_CHANGE,
        PULL_COLD,
        PULL_SAME,
        PUSH,
        PUSH_CHANGE,
        PUSH_COLD,
        PUSH_SAME,
        REF,
        REMOTE,
        SNAPSHOTS,
        TUNED,
        pages,
    )

    out: list[dict[str, Any]] = []
    if look.get(PULL_COLD, SNAPSHOTS) is None:
        return out
    listing = pages(bench.facts.get("snapshot", {}).get("objects", 0))

    # S8 no change: the ref, nothing else.
    runs = _samples(bench, PULL_SAME, SNAPSHOTS)
    requests = [s.requests for s in runs]
    sent = [s.bytes_sent for s in runs]
    out.append(
        _target(
            PULL_SAME,
            f"{SNAPSHOTS}: a no-op is 1 request (GET of the ref) and under 1 kB from the server",
            all(n == 1 for n in requests) and all(b < 1000 for b in sent)
            and all(s.correct for s in runs),
            f"requests per run {requests} {_kinds(runs)}; bytes sent {sent}",
        )
    )  # fmt: skip
    ours = look.get(PULL_SAME, SNAPSHOTS)
    out.append(_faster(PULL_SAME, ours, look.get(PULL_SAME, REMOTE), strict=True))
    here = look.get(PULL_SAME, TUNED)
    tuned = here or look.get(S2, TUNED)
    versus = _faster(PULL_SAME, ours, tuned, strict=True)
    if tuned is not None and here is None:
        versus["target"] += " (its S2 no-op, same run)"
        versus["figures"] += f"; {TUNED}: {tuned.requests:.0f} requests, {tuned.bytes_sent:.0f} B"
    out.append(versus)

    # S8 cold: the same tree as RemoteStorage, about as fast.
    out.append(
        _faster(PULL_COLD, look.get(PULL_COLD, SNAPSHOTS), look.get(PULL_COLD, REMOTE), factor=1.15)
    )
    runs = _samples(bench, PULL_COLD, SNAPSHOTS)
    exact = [bool(s.extra.get("read_exactly_wanted")) for s in runs]
    gets = [f"{s.by_kind.get('GET', 0)}/{s.extra.get('objects_wanted')}" for s in runs]
    out.append(
        _target(
            PULL_COLD,
            f"{SNAPSHOTS}: GETs of the ref, the manifest and every blob, each once",
            all(exact) and all(s.correct for s in runs),
            f"GETs/wanted per run {gets}; all requests {_kinds(runs)}",
        )
    )

    # S8 small change: the ref, the manifest, exactly the changed blobs.
    runs = _samples(bench, PULL_CHANGE, SNAPSHOTS)
    exact = [bool(s.extra.get("read_exactly_wanted")) for s in runs]
    gets = [f"{s.by_kind.get('GET', 0)}/{s.extra.get('objects_wanted')}" for s in runs]
    out.append(
        _target(
            PULL_CHANGE,
            f"{SNAPSHOTS}: GETs of exactly the ref, the manifest and the changed blobs",
            all(exact) and all(s.correct for s in runs),
            f"GETs/wanted (ref + manifest + new blobs) per run {gets}",
        )
    )
    others = [s.requests - s.by_kind.get("GET", 0) for s in runs]
    out.append(
        _target(
            PULL_CHANGE,
            f"{SNAPSHOTS}: no request besides those GETs (no listing, no HEAD)",
            not any(others),
            f"other requests per run {others}; all {_kinds(runs)}",
        )
    )
    out.append(
        _faster(PULL_CHANGE, look.get(PULL_CHANGE, SNAPSHOTS), look.get(PULL_CHANGE, REMOTE),
                strict=True)
    )  # fmt: skip

    # S9 pushes.
    runs = _samples(bench, PUSH_COLD, PUSH)
    exact = [bool(s.extra.get("put_exactly_changed")) and _manifest_and_ref(s, REF) for s in runs]
    puts = [f"{s.extra.get('blob_puts')}/{s.extra.get('blobs_wanted')}" for s in runs]
    out.append(
        _target(
            PUSH_COLD,
            f"{PUSH}: every blob PUT once, then the manifest and the ref",
            all(exact) and all(s.correct for s in runs),
            f"blob PUTs/blobs per run {puts}; all requests {_kinds(runs)}",
        )
    )
    runs = _samples(bench, PUSH_SAME, PUSH)
    put_counts = [s.by_kind.get("PUT", 0) for s in runs]
    lists = [s.by_kind.get("LIST", 0) for s in runs]
    received = [int(s.extra.get("bytes_received", 0)) for s in runs]
    out.append(
        _target(
            PUSH_SAME,
            f"{PUSH}: unchanged tree: no PUT at all, at most one listing of the blobs"
            f" ({listing} page(s))",
            bool(runs) and not any(put_counts) and all(n <= listing for n in lists)
            and all(s.correct for s in runs),
            f"PUT {put_counts}, LIST {lists}, all {_kinds(runs)}; bytes received {received}",
        )
    )  # fmt: skip
    runs = _samples(bench, PUSH_CHANGE, PUSH)
    exact = [bool(s.extra.get("put_exactly_changed")) for s in runs]
    puts = [f"{s.extra.get('blob_puts')}/{s.extra.get('blobs_wanted')}" for s in runs]
    rest = [len(s.extra.get("other_puts") or []) for s in runs]
    manifest_and_ref = [_manifest_and_ref(s, REF) for s in runs]
    lists = [s.by_kind.get("LIST", 0) for s in runs]
    out.append(
        _target(
            PUSH_CHANGE,
            f"{PUSH}: {bench.params.change_fraction:.0%} changed: exactly the new blobs PUT, plus"
            " the manifest and the ref;"
            f" one listing of the blobs ({listing} page(s))",
            bool(runs) and all(exact) and all(manifest_and_ref)
            and all(n <= listing for n in lists) and all(s.correct for s in runs),
            f"blob PUTs/new blobs per run {puts}; other PUTs {rest}; LIST {lists};"
            f" all {_kinds(runs)}",
        )
    )  # fmt: skip
    return out


def evaluate(bench: Bench, summaries: list[Summary]) -> list[dict[str, Any]]:
    """Every target that the scenarios run could measure."""
    look = _Lookup(summaries)
    found: list[dict[str, Any]] = []
    for part in _PARTS:
        try:
            found.extend(part(bench, look))
        except Exception as exc:  # noqa: BLE001 - a broken evaluation must not lose the run
            found.append(_target("?", part.__name__, None, f"evaluation failed: {exc!r}"))
    return found


_PARTS: list[Callable[[Bench, _Lookup], list[dict[str, Any]]]] = [
    _s3_targets,
    _git_targets,
    _many_targets,
    _daemon_targets,
    _snapshot_targets,
]


def targets_table(targets: list[dict[str, Any]]) -> str:
    """A Markdown table of the targets."""
    lines = ["| scenario | target | result | figures |", "| --- | --- | --- | --- |"]
    for t in targets:
        lines.append(f"| {t['scenario']} | {t['target']} | **{t['result']}** | {t['figures']} |")
    return "\n".join(lines)
