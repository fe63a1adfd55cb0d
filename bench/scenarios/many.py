"""Scenario 6: ten sources of one repository, each with its own ``directories``.

Ours: one process pulls all of them (the CLI with ten sources in its config, and the
library inside a worker with the daemon's default concurrency of 4), sharing one object
store per repository URL. Peer: ten plain sparse clones (``git clone --depth 1
--filter=blob:none --sparse`` + ``git sparse-checkout set DIR``), four at a time, then ten
``git fetch`` + ``git reset --hard``. A reference row is one sparse clone of all ten
directories: the least any client must download, to check that the repository's objects
were fetched once.

Phases per round: cold (empty directories), warm with no change, warm after one commit.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from bench.contenders import _cli, git_source, git_spec, our_git_env, plain_git_env
from bench.core import Bench, Contender, measure, rotated
from bench.scenarios.git import REPO, build_repository, warm_up

S6_COLD, S6_SAME, S6_COMMIT = "S6 sources cold", "S6 sources no change", "S6 sources new commit"


def _parallel(lines: list[str], command: str, concurrency: int) -> list[str]:
    """``sh -c`` running ``command`` once per line (``$0``, ``$1`` are its words), N at a time."""
    feed = " ".join(shlex.quote(line) for line in lines)
    script = f"printf '%s\\n' {feed} | xargs -P {concurrency} -L 1 sh -c {shlex.quote(command)}"
    return ["sh", "-c", script]


def run(bench: Bench) -> None:
    """Run scenario 6 for every round."""
    assert bench.git is not None
    params = bench.params
    dataset = build_repository(bench)
    directories = dataset.directories[: params.many_sources]
    names = [f"src{i:02d}" for i in range(len(directories))]
    url = bench.git.url_for(REPO)
    lines = [f"{i} {d}" for i, d in enumerate(directories)]
    clone = (
        f'git clone -q --depth 1 --filter=blob:none --sparse {shlex.quote(url)} "clone-$0"'
        ' && git -C "clone-$0" sparse-checkout set "$1"'
    )
    update = 'cd "clone-$0" && git fetch -q --depth 1 origin && git reset -q --hard FETCH_HEAD'

    def sources(base: Path) -> list[dict[str, Any]]:
        return [git_source(bench, REPO, n, [d]) for n, d in zip(names, directories, strict=True)]

    def published(base: Path) -> list[Path]:
        return [base / n for n in names]

    def clones(base: Path) -> list[Path]:
        return [base / f"clone-{i}" for i in range(len(directories))]

    def many_spec(base: Path) -> dict[str, Any]:
        specs = [
            git_spec(bench, "ours", REPO, n, base, [d])
            for n, d in zip(names, directories, strict=True)
        ]
        return {"op": "pull_many", "specs": specs, "concurrency": params.concurrency}

    count = len(directories)
    cli = Contender(
        f"runner-storage CLI, {count} sources",
        ours=True,
        dest=lambda base: base,
        argv=lambda base: _cli(base, sources(base), concurrency=params.concurrency),
        env=our_git_env(bench),
    )
    inproc = Contender(
        f"runner-storage in-process, {count} sources",
        ours=True,
        dest=lambda base: base,
        spec=many_spec,
    )
    plain_cold = Contender(
        f"{count} git sparse clones ({params.concurrency} at a time)",
        ours=False,
        dest=lambda base: base,
        argv=lambda base: _parallel(lines, clone, params.concurrency),
        env=plain_git_env(bench),
    )
    plain_warm = Contender(
        f"{count} git fetch + reset ({params.concurrency} at a time)",
        ours=False,
        dest=lambda base: base,
        argv=lambda base: _parallel(lines, update, params.concurrency),
        env=plain_git_env(bench),
    )
    reference = Contender(
        f"1 git sparse clone of all {count} directories",
        ours=False,
        reference=True,
        dest=lambda base: base / "all",
        argv=lambda base: [
            "sh",
            "-c",
            f"git clone -q --depth 1 --filter=blob:none --sparse {shlex.quote(url)} all"
            f" && git -C all sparse-checkout set {' '.join(directories)}",
        ],
        env=plain_git_env(bench),
    )
    warm_up(bench, inproc, directories[:1])

    for round_index in range(params.rounds):
        root = bench.work / "many" / f"round{round_index}"
        bases = {id(c): root / c.slug for c in (cli, inproc, plain_cold, reference)}
        bases[id(plain_warm)] = bases[id(plain_cold)]
        progress = f"round {round_index + 1}/{params.rounds}"
        for scenario, contenders in (
            (S6_COLD, [cli, inproc, plain_cold, reference]),
            (S6_SAME, [cli, inproc, plain_warm]),
            (S6_COMMIT, [cli, inproc, plain_warm]),
        ):
            if scenario == S6_COMMIT:
                dataset.edit_some(3, f"many round {round_index}: edit three files")
            bench.progress(f"  [{scenario}] {progress}")
            for contender in rotated(contenders, round_index):
                base = bases[id(contender)]
                if contender is reference:
                    dests, wanted = [base / "all"], [dataset.expected(directories)]
                elif contender.ours:
                    dests, wanted = published(base), [dataset.expected([d]) for d in directories]
                else:
                    dests, wanted = clones(base), [dataset.expected([d]) for d in directories]
                measure(
                    bench, contender, base, scenario=scenario, round_index=round_index,
                    server=bench.git, expected={}, dests=dests, expected_each=wanted,
                )  # fmt: skip
    bench.stop_worker(inproc)
