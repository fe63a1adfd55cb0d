"""Summaries, the printed table, and the JSON results file."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import Bench, Sample


@dataclass(frozen=True)
class Summary:
    """All rounds of one contender in one scenario."""

    scenario: str
    contender: str
    ours: bool
    in_process: bool
    reference: bool
    runs: int
    median: float
    low: float
    high: float
    requests: float
    bytes_sent: float
    maxrss_kb: float
    cpu_seconds: float
    """Median CPU time of the pulling process (and its children), where measured."""
    correct: bool
    detail: str
    ratio: float | None = None
    """Median time over the best correct peer's median in the same scenario."""
    bytes_received: float = float("nan")
    """Median bytes the server received, where measured (pushes: the upload)."""

    def to_json(self) -> dict[str, Any]:
        """The summary as stored in the results file."""
        return {k: _finite(v) for k, v in self.__dict__.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _median(values: Iterable[float]) -> float:
    numbers = [v for v in values if math.isfinite(v)]
    return statistics.median(numbers) if numbers else float("nan")


def summarize(samples: list[Sample]) -> list[Summary]:
    """One :class:`Summary` per (scenario, contender), in first-seen order, with ratios."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.scenario, sample.contender), []).append(sample)
    summaries: list[Summary] = []
    for (scenario, contender), runs in groups.items():
        times = [s.seconds for s in runs if math.isfinite(s.seconds)]
        wrong = [s.detail for s in runs if not s.correct]
        summaries.append(
            Summary(
                scenario=scenario,
                contender=contender,
                ours=runs[0].ours,
                in_process=runs[0].in_process,
                reference=runs[0].reference,
                runs=len(runs),
                median=_median(times),
                low=min(times) if times else float("nan"),
                high=max(times) if times else float("nan"),
                requests=_median(s.requests for s in runs),
                bytes_sent=_median(s.bytes_sent for s in runs),
                maxrss_kb=_median(s.maxrss_kb for s in runs if s.maxrss_kb),
                cpu_seconds=_median(float(s.extra.get("cpu_seconds", "nan")) for s in runs),
                correct=not wrong,
                detail=wrong[0] if wrong else "",
                bytes_received=_median(float(s.extra.get("bytes_received", "nan")) for s in runs),
            )
        )
    return [_with_ratio(s, summaries) for s in summaries]


def best_peer(summaries: list[Summary], scenario: str) -> Summary | None:
    """The fastest peer that was correct in every round of ``scenario``."""
    peers = [
        s
        for s in summaries
        if s.scenario == scenario
        and not s.ours
        and not s.reference
        and s.correct
        and math.isfinite(s.median)
    ]
    return min(peers, key=lambda s: s.median) if peers else None


def _with_ratio(summary: Summary, summaries: list[Summary]) -> Summary:
    best = best_peer(summaries, summary.scenario)
    if best is None or not math.isfinite(summary.median) or best.median <= 0:
        return summary
    return Summary(**{**summary.__dict__, "ratio": summary.median / best.median})


def _size(count: float) -> str:
    if not math.isfinite(count):
        return "-"
    if count >= 1e6:
        return f"{count / 1e6:.1f} MB"
    if count >= 1e3:
        return f"{count / 1e3:.1f} kB"
    return f"{count:.0f} B"


def _seconds(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def table(summaries: list[Summary]) -> str:
    """A Markdown table of every summary."""
    lines = [
        "| scenario | contender | median s | min-max s | x best peer | CPU s | requests | sent"
        " | peak RSS | correct |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summaries:
        ratio = "-" if s.ratio is None else f"{s.ratio:.2f}"
        name = f"**{s.contender}**" if s.ours else s.contender
        correct = "yes" if s.correct else f"NO: {s.detail[:80]}"
        rss = "-" if not math.isfinite(s.maxrss_kb) else f"{s.maxrss_kb / 1024:.0f} MB"
        sent = _size(s.bytes_sent)
        if math.isfinite(s.bytes_received):
            sent += f" (received {_size(s.bytes_received)})"
        lines.append(
            f"| {s.scenario} | {name} | {_seconds(s.median)} | {_seconds(s.low)}-{_seconds(s.high)}"
            f" | {ratio} | {_seconds(s.cpu_seconds)} | {s.requests:.0f} | {sent}"
            f" | {rss} | {correct} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel and Python of this machine."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def write_json(
    bench: Bench,
    summaries: list[Summary],
    targets: list[dict[str, Any]],
    path: Path,
    elapsed: float,
) -> None:
    """Everything measured, as JSON."""
    peers = bench.peers
    data = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_seconds": round(elapsed, 1),
        "machine": machine(),
        "versions": {
            "prefect": peers.prefect_version,
            "rclone": peers.rclone_version,
            "aws": peers.aws_version,
            "git": peers.git_version,
        },
        "params": bench.params.to_json(),
        "facts": bench.facts,
        "targets": targets,
        "summaries": [s.to_json() for s in summaries],
        "samples": [_clean(s.to_json()) for s in bench.samples],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _finite(v) for k, v in data.items()}
