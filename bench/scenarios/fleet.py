"""The fleet: N daemons x M git sources on one git server, polling against push webhooks.

``fleet_daemons`` real ``runner-storage run`` processes on loopback (default 20), each with
its own root and HTTP port, follow the same ``fleet_sources`` small repositories (default
5, ``fleetNN.git`` on the bench's one smart-HTTP git server) and, unless
``fleet_s3`` is off, one S3 prefix on the bench's moto server. Two modes run one after
the other, each with fresh daemons, for ``fleet_seconds`` (default 60):

- **polling**: every source has ``pull_interval = fleet_interval`` (default 10 s), no
  receiver;
- **webhooks**: ``pull_interval = 3600`` (the safety net) and ``/hooks/generic`` on with
  ``debounce = fleet_debounce`` (default 0.2 s); the bench, acting as the git host, posts
  every push to every daemon's receiver (the host calling each node, as the README's
  "Push webhooks" says a fleet does), signed with ``X-Signature-256``.

In the window a commit is pushed in every slot of ``fleet_push_every`` seconds (default
10; at a seeded random point of the slot, so pushes meet the polls at every phase), to the
repositories in turn; with webhooks, the fan-out follows the push at once. The git
server's request log counts ref lookups (``info/refs`` + ``ls-refs``) and fetches; moto's
access log the S3 requests; both are divided by the window. A watcher thread reads every
``BASE/NAME`` symlink of every daemon every 20 ms (a version directory's name starts with
the commit SHA) and notes when each daemon first published each pushed commit: the delay
from push to published is reported as median and max over daemons x pushes. At the end
every daemon must publish every repository's last commit, with the right files, and exit 0
on SIGTERM. Load average, the daemons' CPU and their RSS are recorded too. Every daemon is
stopped at the end of its mode (and by the bench's exit stack on failure or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import resource
import secrets
import signal
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.contenders import git_source, our_git_env, s3_source, write_config
from bench.core import OUR_CLI, Bench
from bench.datasets import GitDataset, ObjectTree, upload
from bench.measure import proc_cpu_split, proc_rss_kb
from bench.scenarios.daemon import _get, _stop
from bench.servers import free_port
from bench.verify import compare

FLEET = "fleet"
BUCKET = "bench-fleet"
S3_PREFIX = "d00"
SECRET_VARIABLE = "BENCH_FLEET_HOOK_SECRET"
WATCH_SECONDS = 0.02
SAFETY_INTERVAL = 3600.0
REPO_FILES = 200
"""Files per repository: small, so a pull is cheap and the figures are about the fleet."""


@dataclass
class Node:
    """One daemon of the fleet."""

    index: int
    root: Path
    port: int
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class PushRecord:
    """One commit pushed during the window."""

    number: int
    repo: int
    sha: str
    at: float
    """``time.monotonic()`` when the commit was on the server (before any webhook)."""
    webhook_seconds: float = float("nan")
    """How long the fan-out to every receiver took (webhooks mode)."""
    webhook_failures: list[str] = field(default_factory=list)


class Watcher(threading.Thread):
    """Reads every daemon's ``BASE/NAME`` symlinks every 20 ms; notes when each SHA appears."""

    def __init__(self, links: dict[tuple[int, int], Path]) -> None:
        super().__init__(name="fleet-watcher", daemon=True)
        self.links = links
        self.first_seen: dict[tuple[int, int, str], float] = {}
        self.current: dict[tuple[int, int], str] = {}
        self._stop_event = threading.Event()
        self.lock = threading.Lock()
        self.rounds = 0

    def run(self) -> None:
        """Poll until stopped."""
        while not self._stop_event.is_set():
            self.scan()
            self._stop_event.wait(WATCH_SECONDS)

    def scan(self) -> None:
        """One pass over every symlink."""
        for key, link in self.links.items():
            try:
                sha = os.path.basename(os.readlink(link))[:40]
            except OSError:
                continue
            if self.current.get(key) == sha:
                continue
            now = time.monotonic()
            with self.lock:
                self.current[key] = sha
                self.first_seen.setdefault((*key, sha), now)
        self.rounds += 1

    def stop(self) -> None:
        """End the thread."""
        self._stop_event.set()
        self.join(timeout=5)


def _build_repositories(bench: Bench) -> list[GitDataset]:
    assert bench.git is not None
    params = bench.params
    repos = []
    for index in range(params.fleet_sources):
        path = bench.git.server.project_root / f"fleet{index:02d}.git"
        repos.append(
            GitDataset.build(
                path, files=REPO_FILES, commits=3, seed=params.seed + 100 + index, packages=5
            )
        )
    return repos


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _post_hook(port: int, body: bytes, signature: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks/generic",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Signature-256": signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def _loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def _machine_ticks() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs (``/proc/stat``): the machine's load, others' too."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def _cpu_of(nodes: list[Node]) -> float:
    total = 0.0
    for node in nodes:
        with contextlib.suppress(OSError, ValueError):
            own, children = proc_cpu_split(node.popen.pid)
            total += own + children
    return total


def _bench_cpu() -> float:
    """CPU of this process (the git server's threads, the watcher) and its reaped children
    (``git http-backend`` of every git request)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _stop_all(nodes: list[Node]) -> float:
    """SIGTERM every daemon at once, wait for each (SIGKILL after 20 s); the seconds taken."""
    started = time.monotonic()
    for node in nodes:
        if node.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for node in nodes:
        # One SIGTERM only: a second one makes the daemon exit at once (128 + 15).
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        _stop(node.popen)  # SIGKILL of what is left of the group, if anything
    return time.monotonic() - started


def _git_kinds(log: list[Any]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for entry in log:
        if entry.path.endswith("/info/refs"):
            kind = "info/refs"
        elif entry.is_upload_pack:
            kind = f"upload-pack {entry.command or 'v0'}"
        else:
            kind = f"{entry.method} other"
        kinds[kind] = kinds.get(kind, 0) + 1
        if entry.status >= 400:
            kinds[f"status {entry.status}"] = kinds.get(f"status {entry.status}", 0) + 1
    return kinds


def _start_nodes(
    bench: Bench, mode: str, repos: list[GitDataset], secret: str
) -> tuple[list[Node], dict[str, Any]]:
    assert bench.git is not None
    params = bench.params
    interval = params.fleet_interval if mode == "polling" else SAFETY_INTERVAL
    nodes: list[Node] = []
    env = {**bench.base_env(), **our_git_env(bench), SECRET_VARIABLE: secret}
    for index in range(params.fleet_daemons):
        root = bench.work / FLEET / mode / f"node{index:02d}"
        root.mkdir(parents=True)
        sources: list[dict[str, Any]] = [
            git_source(bench, f"fleet{j:02d}", f"src{j}", None) for j in range(len(repos))
        ]
        if params.fleet_s3:
            sources.append({**s3_source(bench, f"s3://{BUCKET}/{S3_PREFIX}"), "name": "s3"})
        for source in sources:
            source["pull_interval"] = interval
        daemon: dict[str, Any] = {"log_level": "warning", "concurrency": params.concurrency}
        if mode == "webhooks":
            daemon["webhooks"] = {
                "generic_secret": {"env": SECRET_VARIABLE},
                "debounce": params.fleet_debounce,
            }
        port = free_port()
        config = write_config(root, sources, http_port=port, **daemon)
        log = bench.logs / f"fleet-{mode}-node{index:02d}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(OUR_CLI), "run", "--config", str(config)],
                env=env,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        bench.stack.callback(_stop, popen)
        nodes.append(Node(index, root, port, popen, log))
    started = time.monotonic()
    waiting = list(nodes)
    while waiting:
        for node in list(waiting):
            if node.popen.poll() is not None:
                raise RuntimeError(f"daemon {node.index} exited; see {node.log}")
            if _get(node.port, "/readyz", timeout=2)[0] == 200:
                waiting.remove(node)
        if time.monotonic() - started > 300:
            raise RuntimeError(f"{len(waiting)} daemons not ready after 300 s; see {bench.logs}")
        time.sleep(0.2)
    return nodes, {"interval_seconds": interval, "ready_after_seconds": time.monotonic() - started}


def _fan_out(
    pool: ThreadPoolExecutor, nodes: list[Node], record: PushRecord, url: str, secret: str
) -> None:
    body = json.dumps({"repository": url, "ref": "main"}).encode()
    signature = _sign(secret, body)
    started = time.monotonic()
    answers = list(pool.map(lambda node: _post_hook(node.port, body, signature), nodes))
    record.webhook_seconds = time.monotonic() - started
    wanted = f"src{record.repo}"
    for node, (status, text) in zip(nodes, answers, strict=True):
        if status != 202 or wanted not in text:
            record.webhook_failures.append(f"node{node.index:02d}: {status} {text[:120]}")


def _delays(
    pushes: list[PushRecord], watcher: Watcher, nodes: list[Node]
) -> tuple[list[float], list[float], int, int]:
    """Per push: the delay until each daemon published it (or a later commit of the same
    repository), and per push the delay until the last daemon did; missing and superseded
    counts."""
    each: list[float] = []
    last_per_push: list[float] = []
    missing = superseded = 0
    with watcher.lock:
        seen = dict(watcher.first_seen)
    for record in pushes:
        later = [p.sha for p in pushes if p.repo == record.repo and p.number > record.number]
        worst = 0.0
        for node in nodes:
            at = seen.get((node.index, record.repo, record.sha))
            if at is None:
                candidates = [
                    seen[(node.index, record.repo, s)]
                    for s in later
                    if (node.index, record.repo, s) in seen
                ]
                if candidates:
                    superseded += 1
                    at = min(candidates)
            if at is None:
                missing += 1
                worst = math.inf
                continue
            delay = max(0.0, at - record.at)
            each.append(delay)
            worst = max(worst, delay)
        last_per_push.append(worst)
    return each, last_per_push, missing, superseded


def _run_mode(
    bench: Bench, mode: str, repos: list[GitDataset], secret: str, s3_tree: ObjectTree | None
) -> dict[str, Any]:
    assert bench.git is not None
    params = bench.params
    load_start = _loadavg()
    bench.progress(
        f"  [{FLEET} {mode}] starting {params.fleet_daemons} daemons x {len(repos)} git"
        f"{' + 1 S3' if s3_tree else ''} sources (load average {load_start})"
    )
    nodes, started = _start_nodes(bench, mode, repos, secret)
    bench.progress(f"    all ready after {started['ready_after_seconds']:.1f} s")
    links = {(node.index, j): node.root / f"src{j}" for node in nodes for j in range(len(repos))}
    watcher = Watcher(links)
    watcher.scan()
    watcher.start()
    time.sleep(1.0)

    pool = ThreadPoolExecutor(max_workers=max(1, len(nodes)))
    pushes: list[PushRecord] = []
    problems: list[str] = []
    try:
        bench.git.reset()
        if bench.s3 is not None:
            bench.s3.reset()
        load_before = _loadavg()
        cpu_before, bench_cpu_before = _cpu_of(nodes), _bench_cpu()
        busy_before, total_before = _machine_ticks()
        window_start = time.monotonic()
        every = params.fleet_push_every
        # Push k lands at a seeded random point of slot k: the daemons' polling phases are
        # set by when they started, so a push on a fixed beat would meet them at fixed
        # phases too; a random point in the slot samples every phase.
        rng = random.Random(params.seed * 31 + (mode == "webhooks"))
        slots = max(1, int(params.fleet_seconds // every))
        schedule = [window_start + every * (k + rng.uniform(0.1, 0.9)) for k in range(slots)]
        next_push = schedule[0]
        rss_samples: list[int] = []
        while (now := time.monotonic()) - window_start < params.fleet_seconds:
            if now >= next_push:
                number = len(pushes)
                repo = number % len(repos)
                sha = repos[repo].edit_some(3, f"fleet {mode} push {number}")
                record = PushRecord(number, repo, sha, time.monotonic())
                pushes.append(record)
                if mode == "webhooks":
                    _fan_out(pool, nodes, record, bench.git.url_for(f"fleet{repo:02d}"), secret)
                next_push = schedule[number + 1] if number + 1 < len(schedule) else math.inf
                continue
            if not rss_samples and now - window_start > params.fleet_seconds / 2:
                rss_samples = [proc_rss_kb(node.popen.pid) for node in nodes]
            time.sleep(max(0.0, min(0.05, next_push - now)))
        elapsed = time.monotonic() - window_start
        cpu = _cpu_of(nodes) - cpu_before
        bench_cpu = _bench_cpu() - bench_cpu_before
        load_after = _loadavg()
        busy_after, total_after = _machine_ticks()
        machine_busy = (busy_after - busy_before) / max(1, total_after - total_before)
        git_log = bench.git.server.requests_for()
        s3_usage = bench.s3.usage(BUCKET) if bench.s3 is not None and s3_tree else None

        # Wait for the pushes still on their way (after the window: not counted in requests).
        drain = (params.fleet_interval * 1.1 if mode == "polling" else 0.0) + 30.0
        deadline = time.monotonic() + drain
        want = {(node.index, j): repos[j].head for node in nodes for j in range(len(repos))}
        while time.monotonic() < deadline:
            with watcher.lock:
                if all(watcher.current.get(key) == sha for key, sha in want.items()):
                    break
            time.sleep(0.1)
        drained_after = time.monotonic() - window_start - elapsed
        watcher.stop()
        exits_before_stop = [node.popen.poll() for node in nodes]

        for key, sha in want.items():
            if watcher.current.get(key) != sha:
                problems.append(
                    f"node{key[0]:02d}/src{key[1]}: {watcher.current.get(key, 'nothing')[:12]}"
                    f" instead of {sha[:12]}"
                )
        for node in nodes:
            for j, dataset in enumerate(repos):
                verdict = compare(node.root / f"src{j}", dataset.expected())
                if not verdict.ok:
                    problems.append(f"node{node.index:02d}/src{j}: {verdict.detail}")
            if s3_tree is not None:
                expected = {
                    k.removeprefix(f"{S3_PREFIX}/"): v
                    for k, v in s3_tree.expected().items()
                    if k.startswith(f"{S3_PREFIX}/")
                }
                verdict = compare(node.root / "s3", expected)
                if not verdict.ok:
                    problems.append(f"node{node.index:02d}/s3: {verdict.detail}")
        for record in pushes:
            problems.extend(f"push {record.number} {f}" for f in record.webhook_failures)
        for node, code in zip(nodes, exits_before_stop, strict=True):
            if code is not None:
                problems.append(f"node{node.index:02d} exited early with {code}")
    finally:
        watcher.stop()
        pool.shutdown(wait=False)
        stop_seconds = _stop_all(nodes)
    exit_codes = [node.popen.returncode for node in nodes]
    problems.extend(
        f"node{node.index:02d} exited with {code} after SIGTERM"
        for node, code in zip(nodes, exit_codes, strict=True)
        if code != 0
    )

    each, worst, missing, superseded = _delays(pushes, watcher, nodes)
    minutes = elapsed / 60
    kinds = _git_kinds(git_log)
    ref_lookups = kinds.get("upload-pack ls-refs", 0)
    fetches = kinds.get("upload-pack fetch", 0)
    result = {
        "mode": mode,
        "daemons": len(nodes),
        "git_sources_per_daemon": len(repos),
        "s3_sources_per_daemon": 1 if s3_tree else 0,
        "interval_seconds": started["interval_seconds"],
        "debounce_seconds": params.fleet_debounce if mode == "webhooks" else None,
        "ready_after_seconds": round(started["ready_after_seconds"], 1),
        "window_seconds": round(elapsed, 1),
        "pushes": len(pushes),
        "push_every_seconds": params.fleet_push_every,
        "git_requests": len(git_log),
        "git_requests_per_minute": round(len(git_log) / minutes, 1),
        "git_by_kind": kinds,
        "git_ref_lookups_per_minute": round(ref_lookups / minutes, 1),
        "git_fetches_per_minute": round(fetches / minutes, 1),
        "git_response_bytes": sum(entry.response_bytes for entry in git_log),
        "s3_requests": s3_usage.requests if s3_usage else None,
        "s3_requests_per_minute": round(s3_usage.requests / minutes, 1) if s3_usage else None,
        "s3_by_kind": s3_usage.by_kind if s3_usage else None,
        "s3_server_cpu_seconds": (
            round(s3_usage.server_cpu_seconds, 2)
            if s3_usage and s3_usage.server_cpu_seconds is not None
            else None
        ),
        "delay_seconds": {
            "median": round(statistics.median(each), 3) if each else None,
            "max": round(max(each), 3) if each else None,
            "p90": round(_quantile(each, 0.9), 3) if each else None,
            "min": round(min(each), 3) if each else None,
            "all_published_per_push": [round(w, 3) if math.isfinite(w) else None for w in worst],
            "samples": len(each),
            "missing": missing,
            "superseded": superseded,
        },
        "webhook_fan_out_seconds": (
            [round(p.webhook_seconds, 3) for p in pushes] if mode == "webhooks" else None
        ),
        "daemons_cpu_seconds": round(cpu, 2),
        "daemons_cpu_percent_of_one_core": round(100 * cpu / elapsed, 1),
        "bench_process_cpu_seconds": round(bench_cpu, 2),
        "rss_mb_median": round(statistics.median(rss_samples) / 1024, 1) if rss_samples else None,
        "rss_mb_max": round(max(rss_samples) / 1024, 1) if rss_samples else None,
        "machine_busy_percent": round(100 * machine_busy, 1),
        "machine_cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "drain_seconds_after_window": round(drained_after, 1),
        "watcher_scans": watcher.rounds,
        "stop_seconds": round(stop_seconds, 2),
        "exit_codes": sorted(set(exit_codes), key=lambda c: (c is None, c)),
        "correct": not problems,
        "problems": problems[:20],
    }
    delay = result["delay_seconds"]
    bench.progress(
        f"    {mode}: git {result['git_requests_per_minute']:.0f} req/min"
        f" ({result['git_ref_lookups_per_minute']:.0f} ref lookups,"
        f" {result['git_fetches_per_minute']:.0f} fetches),"
        f" S3 {result['s3_requests_per_minute']} req/min;"
        f" push->published median {delay['median']} s, max {delay['max']} s"
        f" ({delay['samples']} of {len(pushes) * len(nodes)}, {missing} missing);"
        f" daemons CPU {result['daemons_cpu_percent_of_one_core']} % of a core,"
        f" machine {result['machine_busy_percent']} % busy,"
        f" load {load_before[0]:.2f} -> {load_after[0]:.2f};"
        f" {'correct' if not problems else 'WRONG: ' + '; '.join(problems[:3])}"
    )
    return result


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run(bench: Bench) -> None:
    """Run both modes and record them in ``bench.facts["fleet"]``."""
    assert bench.git is not None
    params = bench.params
    repos = _build_repositories(bench)
    s3_tree: ObjectTree | None = None
    if params.fleet_s3:
        assert bench.s3 is not None
        s3_tree = ObjectTree.generate(40, params.seed + 3, max_size=16 * 1024)
        client = bench.s3.client()
        client.create_bucket(Bucket=BUCKET)
        upload(client, BUCKET, s3_tree.objects)
    secret = secrets.token_hex(32)
    modes = {}
    for mode in ("polling", "webhooks"):
        modes[mode] = _run_mode(bench, mode, repos, secret, s3_tree)
    bench.facts["fleet"] = {
        "repository_files": REPO_FILES,
        "s3_objects_per_source": (
            sum(1 for k in s3_tree.objects if k.startswith(f"{S3_PREFIX}/")) if s3_tree else 0
        ),
        "modes": modes,
    }


def fleet_table(facts: dict[str, Any]) -> str:
    """The fleet's rows as a Markdown table (empty when the family did not run)."""
    fleet = facts.get("fleet")
    if not fleet:
        return ""
    lines = [
        "| mode | git requests/min (ref lookups, fetches) | S3 requests/min"
        " | push -> published, median / max s (daemons x pushes)"
        " | push -> all daemons published, median of pushes s"
        " | CPU, % of one core (daemons; git server + bench) | machine busy (all CPUs)"
        " | load average (1 min) | correct |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for mode, r in fleet["modes"].items():
        setting = (
            f"pull_interval {r['interval_seconds']:g} s"
            if mode == "polling"
            else f"debounce {r['debounce_seconds']:g} s, pull_interval {r['interval_seconds']:g} s"
        )
        delay = r["delay_seconds"]
        worst = [w for w in delay["all_published_per_push"] if w is not None]
        all_published = f"{statistics.median(worst):.2f}" if worst else "-"
        if len(worst) < len(delay["all_published_per_push"]):
            all_published += " (some never)"
        s3 = "-" if r["s3_requests_per_minute"] is None else f"{r['s3_requests_per_minute']:.0f}"
        sources = f"{r['git_sources_per_daemon']} git" + (
            " + 1 S3" if r["s3_sources_per_daemon"] else ""
        )
        window = r["window_seconds"]
        bench_cpu = 100 * r["bench_process_cpu_seconds"] / window if window else float("nan")
        lines.append(
            f"| {mode} ({r['daemons']} daemons x {sources}, {setting}) |"
            f" {r['git_requests_per_minute']:.0f} ({r['git_ref_lookups_per_minute']:.0f},"
            f" {r['git_fetches_per_minute']:.0f}) | {s3} |"
            f" {delay['median']:.2f} / {delay['max']:.2f} | {all_published} |"
            f" {r['daemons_cpu_percent_of_one_core']:.1f}; {bench_cpu:.1f} |"
            f" {r.get('machine_busy_percent', float('nan')):.0f} % of {r.get('machine_cpus')} |"
            f" {r['load_before'][0]:.2f} at the start, {r['load_after'][0]:.2f} at the end |"
            f" {'yes' if r['correct'] else 'NO: ' + '; '.join(r['problems'][:2])} |"
        )
    return "\n".join(lines)
