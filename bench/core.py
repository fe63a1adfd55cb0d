"""The bench's shared state and its one measuring step.

A :class:`Contender` pulls either as a fresh process (``argv``) or inside a long-lived
:class:`~bench.measure.Worker` (``spec``). :func:`measure` runs one pull of one contender
into one base directory, reads what the server saw, checks the published tree against the
source, and returns a :class:`Sample`. Scenarios only decide the order and the data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.config import Params
from bench.measure import MeasureError, Worker, run_process
from bench.peers import Peers
from bench.servers import GitEndpoint, S3Endpoint, ServerUsage
from bench.verify import compare

REPO = Path(__file__).resolve().parent.parent
OUR_PYTHON = Path(sys.executable)
OUR_CLI = OUR_PYTHON.with_name("runner-storage")


class Counter(Protocol):
    """A server that counts requests and bytes: :class:`S3Endpoint` or :class:`GitEndpoint`."""

    def reset(self) -> None:
        """Start counting from now."""

    def usage(self) -> ServerUsage:
        """What was counted since the reset."""


@dataclass
class Contender:
    """One way of pulling the source.

    ``argv(base)`` gives a command for a whole-process run; ``spec(base)`` a worker request
    for an in-process one (then ``python`` says which environment runs the worker).
    ``dest(base)`` is where the pulled tree ends up.
    """

    name: str
    ours: bool
    dest: Callable[[Path], Path]
    argv: Callable[[Path], list[str]] | None = None
    spec: Callable[[Path], dict[str, Any]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: Path = OUR_PYTHON
    worker: Worker | None = None
    reference: bool = False
    """A reference row (reported, never a peer in the targets)."""
    fresh: bool = False
    """Starts from nothing at every pull (a re-clone): each phase gets its own directory."""
    prepare: Callable[[Path], list[str]] | None = None
    """An untimed command that makes ``base`` ready for the contender's first pull."""

    @property
    def in_process(self) -> bool:
        """Whether this contender pulls inside a long-lived worker."""
        return self.spec is not None

    @property
    def slug(self) -> str:
        """The name as a directory name."""
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-")


@dataclass
class Sample:
    """One measured run."""

    scenario: str
    contender: str
    round: int
    seconds: float
    maxrss_kb: int
    requests: int
    bytes_sent: int
    by_kind: dict[str, int]
    correct: bool
    detail: str = ""
    ours: bool = False
    in_process: bool = False
    reference: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list, repr=False)
    """S3 objects read (``bucket/key``); not stored in the results file."""

    def to_json(self) -> dict[str, Any]:
        """The sample as stored in the results file."""
        data = asdict(self)
        del data["reads"]
        return data


@dataclass
class Bench:
    """Paths, servers, peers, parameters and the samples collected so far."""

    params: Params
    work: Path
    peers: Peers
    stack: contextlib.ExitStack
    s3: S3Endpoint | None = None
    git: GitEndpoint | None = None
    samples: list[Sample] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    """Objects shared between families (data sets); not written to the results."""
    progress: Callable[[str], None] = print

    @property
    def logs(self) -> Path:
        """Where every process's output goes."""
        return self.work / "logs"

    def base_env(self) -> dict[str, str]:
        """A small, hermetic environment for every measured process."""
        home = self.work / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.work / "tmp"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def prefect_env(self) -> dict[str, str]:
        """What Prefect needs to run storage code offline, with its state under ``work``."""
        return {
            "PREFECT_HOME": str(self.work / "prefect-home"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def start_worker(self, contender: Contender) -> Worker:
        """Start the contender's long-lived worker; it is stopped when the bench ends."""
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        worker = Worker(
            contender.python,
            {**self.base_env(), **contender.env, "PYTHONPATH": str(REPO)},
            self.logs / f"worker-{contender.slug}.log",
            cwd=self.work,
        )
        self.stack.callback(worker.stop)
        contender.worker = worker
        return worker

    def stop_worker(self, contender: Contender) -> None:
        """Stop the contender's worker now (it is also safe to leave it to the bench's end)."""
        if contender.worker is not None:
            contender.worker.stop()
            contender.worker = None


def rotated(items: Sequence[Any], round_index: int) -> list[Any]:
    """``items`` rotated by the round number, so every contender takes every position."""
    if not items:
        return []
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def measure(
    bench: Bench,
    contender: Contender,
    base: Path,
    *,
    scenario: str,
    round_index: int,
    server: Counter,
    expected: Mapping[str, str] | Callable[[], Mapping[str, str]],
    dests: Sequence[Path] | None = None,
    expected_each: Sequence[Mapping[str, str]] | None = None,
) -> Sample:
    """One pull by ``contender`` into ``base``: time, memory, server usage, correctness.

    ``dests``/``expected_each`` check several published trees (many sources at once);
    otherwise ``contender.dest(base)`` is compared with ``expected``.
    """
    base.mkdir(parents=True, exist_ok=True)
    server.reset()
    extra: dict[str, Any] = {}
    try:
        if contender.spec is not None:
            assert contender.worker is not None, f"{contender.name}: worker not started"
            request = contender.spec(base)
            if "op" not in request:  # a single spec; a full request (pull_many) goes as is
                request = {"op": "pull", "spec": request}
            answer = contender.worker.call(request)
            seconds = float(answer["seconds"])
            maxrss = int(answer["maxrss_kb"])
            extra["cpu_seconds"] = round(float(answer.get("cpu_seconds", float("nan"))), 3)
        else:
            assert contender.argv is not None
            run = run_process(
                contender.argv(base),
                env={**bench.base_env(), **contender.env},
                log=bench.logs / f"{scenario}-{contender.slug}.log",
                cwd=base,
            )
            seconds, maxrss = run.seconds, run.maxrss_kb
            extra["cpu_seconds"] = round(run.cpu_seconds, 3)
    except MeasureError as exc:
        usage = server.usage()
        bench.progress(f"    {contender.name}: FAILED: {str(exc).splitlines()[0]}")
        failed = Sample(
            scenario, contender.name, round_index, float("nan"), 0, usage.requests,
            usage.bytes_sent, usage.by_kind, False, f"failed: {str(exc)[:300]}",
            contender.ours, contender.in_process, contender.reference,
        )  # fmt: skip
        bench.samples.append(failed)
        return failed
    time.sleep(0.05)  # let the server finish logging the last request
    usage = server.usage()
    if dests is None:
        dests = [contender.dest(base)]
        wanted = [expected() if callable(expected) else expected]
    else:
        assert expected_each is not None
        wanted = list(expected_each)
    problems = []
    for dest, want in zip(dests, wanted, strict=True):
        verdict = compare(dest, want)
        if not verdict.ok:
            problems.append(f"{dest.name}: {verdict.detail}")
    sample = Sample(
        scenario=scenario,
        contender=contender.name,
        round=round_index,
        seconds=seconds,
        maxrss_kb=maxrss,
        requests=usage.requests,
        bytes_sent=usage.bytes_sent,
        by_kind=usage.by_kind,
        correct=not problems,
        detail="; ".join(problems)[:400],
        ours=contender.ours,
        in_process=contender.in_process,
        reference=contender.reference,
        extra=extra,
    )
    sample.reads = list(usage.reads)
    if usage.server_cpu_seconds is not None:
        sample.extra["server_cpu_seconds"] = round(usage.server_cpu_seconds, 3)
    bench.samples.append(sample)
    mark = "ok" if sample.correct else f"WRONG ({sample.detail})"
    bench.progress(
        f"    {contender.name:<34} {seconds:7.3f} s  {usage.requests:5d} req"
        f"  {usage.bytes_sent / 1e6:8.2f} MB  {maxrss / 1024:6.0f} MB RSS  {mark}"
    )
    return sample


def remove_tree(path: Path) -> None:
    """Delete a scratch tree (outside any timed step)."""
    shutil.rmtree(path, ignore_errors=True)
