"""Benchmark parameters: the sizes of issue 4 by default, small ones with ``--quick``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ALL_SCENARIOS = ("s3", "git", "many", "daemon", "retention", "snapshot")
"""Scenario families: s3 = scenarios 1-3, git = 4-5, many = 6, daemon = 7, retention = the
publisher-retention probe, snapshot = 8-9 (snapshot pulls and pushes of the S1-S3 tree)."""

EXTRA_SCENARIOS = ("fleet",)
"""Families only run when named in ``--scenarios``: fleet = N daemons polling vs push
webhooks (two modes of ``fleet_seconds`` each plus start-up and drain: 3.1 minutes at the
default size, 3.5 with the peers check, on the 2-core machine)."""
KNOWN_SCENARIOS = ALL_SCENARIOS + EXTRA_SCENARIOS


@dataclass
class Params:
    """Everything a run depends on besides the machine."""

    rounds: int = 3
    s3_rounds: int = 2
    """Rounds of scenarios 1-3, the slow family: two peers re-download the whole bucket at
    every pull (~13 s each), so three rounds would take the bench past 15 minutes. The
    snapshot family (8-9), on the same data set, runs as many."""
    seed: int = 4
    objects: int = 2000
    max_object_kb: int = 1024
    change_fraction: float = 0.01
    git_files: int = 5000
    git_commits: int = 200
    sparse_directory: str = "pkg00"
    many_sources: int = 10
    daemon_git_sources: int = 10
    daemon_s3_sources: int = 10
    daemon_interval: float = 5.0
    daemon_seconds: float = 60.0
    retention_pulls: int = 4
    fleet_daemons: int = 20
    fleet_sources: int = 5
    fleet_s3: bool = True
    fleet_seconds: float = 60.0
    fleet_interval: float = 10.0
    fleet_push_every: float = 10.0
    fleet_debounce: float = 0.2
    concurrency: int = 4
    scenarios: list[str] = field(default_factory=lambda: list(ALL_SCENARIOS))
    quick: bool = False

    @classmethod
    def quick_defaults(cls) -> Params:
        """A smoke run: every scenario, small sizes, one round."""
        return cls(
            rounds=1,
            s3_rounds=1,
            objects=200,
            max_object_kb=256,
            change_fraction=0.02,
            git_files=500,
            git_commits=20,
            many_sources=3,
            daemon_git_sources=2,
            daemon_s3_sources=2,
            daemon_interval=2.0,
            daemon_seconds=10.0,
            retention_pulls=2,
            fleet_daemons=3,
            fleet_sources=2,
            fleet_seconds=20.0,
            fleet_interval=5.0,
            fleet_push_every=5.0,
            quick=True,
        )

    def to_json(self) -> dict[str, Any]:
        """The parameters as recorded in the results file."""
        return asdict(self)
