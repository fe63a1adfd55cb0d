"""``python -m bench``: run the benchmark of issue 4 and print the table.

Examples::

    python -m bench                      # every scenario, issue 4's sizes, 3 rounds
    python -m bench --quick              # a smoke run: small sizes, 1 round
    python -m bench --scenarios s3,git --rounds 5 --objects 4000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.config import ALL_SCENARIOS, KNOWN_SCENARIOS, Params
from bench.core import Bench
from bench.peers import WORK, ensure_peers
from bench.report import machine, summarize, table, write_json
from bench.servers import GitEndpoint, S3Endpoint
from bench.targets import evaluate, targets_table

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    defaults = Params()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke run)")
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds per scenario (default {defaults.rounds}; S1-S3: {defaults.s3_rounds})",
    )
    parser.add_argument(
        "--s3-rounds", type=int, help="rounds of S1-S3 and S8-S9 (default: --rounds or 2)"
    )
    parser.add_argument(
        "--scenarios",
        help=f"comma-separated families among {','.join(KNOWN_SCENARIOS)}"
        f" (default: {','.join(ALL_SCENARIOS)})",
    )
    parser.add_argument("--seed", type=int, help="data set seed")
    parser.add_argument("--objects", type=int, help="S3 objects (default 2000)")
    parser.add_argument("--max-object-kb", type=int, help="largest S3 object, KiB (default 1024)")
    parser.add_argument("--git-files", type=int, help="files in the repository (default 5000)")
    parser.add_argument("--git-commits", type=int, help="commits in the repository (default 200)")
    parser.add_argument("--many-sources", type=int, help="sources of one repository (default 10)")
    parser.add_argument("--daemon-seconds", type=float, help="daemon-at-rest window (default 60)")
    parser.add_argument("--daemon-interval", type=float, help="daemon pull interval (default 5)")
    parser.add_argument("--daemon-git-sources", type=int, help="S7 git sources (default 10)")
    parser.add_argument("--daemon-s3-sources", type=int, help="S7 S3 sources (default 10)")
    parser.add_argument("--fleet-daemons", type=int, help="fleet: daemons (default 20)")
    parser.add_argument("--fleet-sources", type=int, help="fleet: git sources each (default 5)")
    parser.add_argument("--fleet-seconds", type=float, help="fleet: window per mode (default 60)")
    parser.add_argument(
        "--fleet-interval", type=float, help="fleet: pull_interval when polling (default 10)"
    )
    parser.add_argument(
        "--fleet-push-every", type=float, help="fleet: seconds between pushes (default 10)"
    )
    parser.add_argument(
        "--fleet-debounce", type=float, help="fleet: webhooks debounce, seconds (default 0.2)"
    )
    parser.add_argument(
        "--fleet-no-s3", action="store_true", help="fleet: no S3 source on the daemons"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="results JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the pulled trees afterwards")
    return parser


def params_from(args: argparse.Namespace) -> Params:
    """Parameters: the defaults (or --quick's), overridden by explicit options."""
    params = Params.quick_defaults() if args.quick else Params()
    if args.rounds is not None:
        params.s3_rounds = args.rounds
    for option, attribute in (
        ("rounds", "rounds"),
        ("s3_rounds", "s3_rounds"),
        ("seed", "seed"),
        ("objects", "objects"),
        ("max_object_kb", "max_object_kb"),
        ("git_files", "git_files"),
        ("git_commits", "git_commits"),
        ("many_sources", "many_sources"),
        ("daemon_seconds", "daemon_seconds"),
        ("daemon_interval", "daemon_interval"),
        ("daemon_git_sources", "daemon_git_sources"),
        ("daemon_s3_sources", "daemon_s3_sources"),
        ("fleet_daemons", "fleet_daemons"),
        ("fleet_sources", "fleet_sources"),
        ("fleet_seconds", "fleet_seconds"),
        ("fleet_interval", "fleet_interval"),
        ("fleet_push_every", "fleet_push_every"),
        ("fleet_debounce", "fleet_debounce"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(params, attribute, value)
    if args.fleet_no_s3:
        params.fleet_s3 = False
    if args.scenarios:
        chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(KNOWN_SCENARIOS))
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(unknown)}")
        params.scenarios = chosen
    return params


def _family(name: str) -> Callable[[Bench], None]:
    from bench.scenarios import daemon, fleet, git, many, retention, s3, snapshot

    return {
        "s3": s3.run,
        "snapshot": snapshot.run,
        "git": git.run,
        "many": many.run,
        "daemon": daemon.run,
        "retention": retention.run,
        "fleet": fleet.run,
    }[name]


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the exit code (0 even when targets are missed)."""
    args = _parser().parse_args(argv)
    params = params_from(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    run_dir = WORK / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
        os.sync()
    for sub in ("tmp", "logs"):
        (run_dir / sub).mkdir(parents=True)
    info = machine()
    print(f"bench: {info['nproc']} cores, {info['cpu']}, {info['memory_gib']} GiB; params {params}")
    print("bench: installing peers (cached in bench/.work)")
    peers = ensure_peers(run_dir / "install.log")
    print(
        f"bench: Prefect {peers.prefect_version}; {peers.rclone_version}; {peers.aws_version};"
        f" {peers.git_version}"
    )
    with contextlib.ExitStack() as stack:
        bench = Bench(params=params, work=run_dir, peers=peers, stack=stack)
        try:
            fleet_s3 = "fleet" in params.scenarios and params.fleet_s3
            if fleet_s3 or set(params.scenarios) & {"s3", "daemon", "retention", "snapshot"}:
                bench.s3 = S3Endpoint(stack, run_dir / "moto")
            if set(params.scenarios) & {"git", "many", "daemon", "fleet"}:
                bench.git = GitEndpoint(stack, run_dir / "git-root")
            for name in params.scenarios:
                family_started = time.monotonic()
                load = _loadavg()
                print(f"bench: scenario family {name} (load average {load})")
                _family(name)(bench)
                bench.facts.setdefault("families", {})[name] = {
                    "seconds": round(time.monotonic() - family_started, 1),
                    "load_before": load,
                    "load_after": _loadavg(),
                }
        except KeyboardInterrupt:
            print("bench: interrupted; stopping servers and processes", file=sys.stderr)
            return 130
        finally:
            elapsed = time.monotonic() - started
            summaries = summarize(bench.samples)
            targets = evaluate(bench, summaries)
            write_json(bench, summaries, targets, args.output, elapsed)
    print()
    print(table(summaries))
    print()
    print(targets_table(targets))
    if "fleet" in bench.facts:
        from bench.scenarios.fleet import fleet_table

        print()
        print(fleet_table(bench.facts))
    print(f"\nbench: {elapsed / 60:.1f} min; results in {args.output}")
    if not args.keep:
        for name in ("s3", "git", "many", "daemon", "retention", "snapshot", "fleet", "warmup"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
