"""Scenario 7: the daemon at rest.

``runner-storage run`` with 20 sources (10 git sources of the bench repository with
different ``directories``, 10 S3 prefixes) on a 5 s interval. Once every source is
published (``/readyz`` answers 200) and one more interval has passed, nothing changes
upstream for 60 s while the bench samples the daemon's resident memory from
``/proc/PID/status`` every 0.5 s and reads its CPU time (its own and its reaped children's,
i.e. git) from ``/proc/PID/stat``, and the servers count the requests they receive.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from bench.contenders import git_source, our_git_env, s3_source, write_config
from bench.core import OUR_CLI, Bench
from bench.datasets import ObjectTree, upload
from bench.measure import live_children, proc_cpu_split, proc_rss_kb
from bench.scenarios.git import REPO, build_repository
from bench.servers import ServerUsage, free_port

S7 = "S7 daemon at rest"
BUCKET = "bench-daemon"
SAMPLE_SECONDS = 0.5
_PULLS = re.compile(r"^runner_storage_pulls_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _pulls(port: int) -> float:
    status, text = _get(port, "/metrics")
    return sum(float(v) for v in _PULLS.findall(text)) if status == 200 else float("nan")


def _stop(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=10)


def run(bench: Bench) -> None:
    """Start the daemon, let it settle, and watch it for ``daemon_seconds``."""
    assert bench.s3 is not None
    assert bench.git is not None
    params = bench.params
    dataset = build_repository(bench)
    s3_count, git_count = params.daemon_s3_sources, params.daemon_git_sources
    tree = ObjectTree.generate(20 * 50, params.seed + 1, max_size=64 * 1024)
    client = bench.s3.client()
    client.create_bucket(Bucket=BUCKET)
    upload(client, BUCKET, tree.objects)

    root = bench.work / "daemon" / "root"
    root.mkdir(parents=True)
    sources: list[dict[str, Any]] = []
    for index in range(git_count):
        directory = dataset.directories[index % len(dataset.directories)]
        sources.append(git_source(bench, REPO, f"git{index:02d}", [directory]))
    for index in range(s3_count):
        sources.append(s3_source(bench, f"s3://{BUCKET}/d{index % 20:02d}"))
    for source in sources:
        source["pull_interval"] = params.daemon_interval
    port = free_port()
    config = write_config(
        root, sources, http_port=port, concurrency=params.concurrency, log_level="warning"
    )
    log = bench.logs / "daemon.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [str(OUR_CLI), "run", "--config", str(config)],
            env={**bench.base_env(), **our_git_env(bench)},
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bench.stack.callback(_stop, popen)
    started = time.monotonic()
    while _get(port, "/readyz")[0] != 200:
        if popen.poll() is not None or time.monotonic() - started > 180:
            raise RuntimeError(f"the daemon did not become ready; see {log}")
        time.sleep(0.2)
    ready_after = time.monotonic() - started
    bench.progress(
        f"  [{S7}] {len(sources)} sources ready after {ready_after:.1f} s;"
        f" watching for {params.daemon_seconds:.0f} s"
    )
    time.sleep(params.daemon_interval + 1)

    bench.s3.reset()
    bench.git.reset()
    pulls_before = _pulls(port)
    own_before, children_before = proc_cpu_split(popen.pid)
    window_start = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    while (now := time.monotonic()) - window_start < params.daemon_seconds:
        rss = proc_rss_kb(popen.pid)
        children = sum(proc_rss_kb(child) for child in live_children(popen.pid))
        samples.append((now - window_start, rss, children))
        time.sleep(SAMPLE_SECONDS)
    elapsed = time.monotonic() - window_start
    own_after, children_after = proc_cpu_split(popen.pid)
    own, children_cpu = own_after - own_before, children_after - children_before
    cpu = own + children_cpu
    pulls = _pulls(port) - pulls_before
    s3_usage, git_usage = bench.s3.usage(), bench.git.usage()
    _stop(popen)

    rss_values = [rss for _, rss, _ in samples]
    quarter = max(1, len(samples) // 4)
    first, last = statistics.mean(rss_values[:quarter]), statistics.mean(rss_values[-quarter:])
    slope = _slope([(t, rss) for t, rss, _ in samples])
    result = {
        "sources": {"git": git_count, "s3": s3_count},
        "interval_seconds": params.daemon_interval,
        "window_seconds": round(elapsed, 1),
        "ready_after_seconds": round(ready_after, 1),
        "rss_kb": {
            "min": min(rss_values),
            "max": max(rss_values),
            "median": statistics.median(rss_values),
        },
        "rss_with_children_max_kb": max(rss + children for _, rss, children in samples),
        "rss_growth_kb": round(last - first, 1),
        "rss_slope_kb_per_min": round(slope * 60, 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_own_seconds": round(own, 3),
        "cpu_children_seconds": round(children_cpu, 3),
        "cpu_percent_of_one_core": round(100 * cpu / elapsed, 3),
        "pulls": pulls,
        "requests": {"s3": _usage(s3_usage), "git": _usage(git_usage)},
        "samples": len(samples),
        "exit_code": popen.returncode,
    }
    bench.facts["daemon"] = result
    bench.progress(
        f"    RSS {result['rss_kb']['median'] / 1024:.1f} MB"
        f" (max {result['rss_kb']['max'] / 1024:.1f},"
        f" growth {result['rss_growth_kb']:.0f} kB), CPU {cpu:.2f} s"
        f" = {result['cpu_percent_of_one_core']:.2f} % of a core (own {own:.2f} s,"
        f" children {children_cpu:.2f} s), {pulls:.0f} pulls,"
        f" {s3_usage.requests} S3 + {git_usage.requests} git requests"
    )


def _usage(usage: ServerUsage) -> dict[str, Any]:
    return {"requests": usage.requests, "bytes": usage.bytes_sent, "by_kind": usage.by_kind}


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope (KiB per second) of RSS over time."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.mean(t for t, _ in points)
    mean_y = statistics.mean(y for _, y in points)
    num = sum((t - mean_t) * (y - mean_y) for t, y in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den if den else 0.0
