"""Scenarios 4-5: git over smart HTTP, cold, unchanged, after one new commit, and sparse.

Per round, in an order rotated by the round: everyone clones/pulls the whole tree into an
empty directory (S4 cold); pulls again with nothing new (S5 no change; plain git is both
a fresh ``git clone --depth 1`` and ``git fetch`` + ``git reset --hard`` in the existing
clone); one commit editing three files is pushed and everyone pulls it (S5 new commit);
then everyone takes a cone of one directory into an empty directory (S4 sparse cold:
``directories=[DIR]`` against ``git clone --depth 1 --filter=blob:none --sparse`` +
``git sparse-checkout set DIR``).
"""

from __future__ import annotations

from pathlib import Path

from bench.contenders import git_contenders, git_spec
from bench.core import Bench, Contender, measure, rotated
from bench.datasets import GitDataset
from bench.measure import run_process

S4, S4_SPARSE = "S4 git cold", "S4 git sparse cold"
S5_SAME, S5_COMMIT = "S5 git no change", "S5 git new commit"
REPO, WARMUP_REPO = "bench", "warmup"


def build_repository(bench: Bench) -> GitDataset:
    """The bench repository (built once per run, shared by the git families)."""
    existing = bench.shared.get("git_dataset")
    if isinstance(existing, GitDataset):
        return existing
    assert bench.git is not None
    params = bench.params
    dataset = GitDataset.build(
        bench.git.server.project_root / f"{REPO}.git",
        files=params.git_files,
        commits=params.git_commits,
        seed=params.seed,
    )
    GitDataset.build(
        bench.git.server.project_root / f"{WARMUP_REPO}.git", files=8, commits=2, seed=params.seed
    )
    bench.shared["git_dataset"] = dataset
    bench.facts["git_dataset"] = {
        "files": len(dataset.files),
        "bytes": sum(len(v) for v in dataset.files.values()),
        "commits": dataset.commits,
        "head": dataset.head,
    }
    bench.progress(
        f"  repository: {len(dataset.files)} files, {dataset.commits} commits,"
        f" {bench.facts['git_dataset']['bytes'] / 1e6:.1f} MB at the head"
    )
    return dataset


def warm_up(bench: Bench, contender: Contender, directories: list[str] | None = None) -> None:
    """Start the contender's worker and pull a tiny repository once (imports, git checks)."""
    assert contender.spec is not None
    worker = bench.start_worker(contender)
    impl = "ours" if contender.ours else "prefect"
    spec = git_spec(
        bench, impl, WARMUP_REPO, "warmup", bench.work / "warmup" / contender.slug, directories
    )
    worker.call({"op": "pull", "spec": spec})


def _prepare(bench: Bench, contender: Contender, base: Path) -> None:
    assert contender.prepare is not None
    base.mkdir(parents=True, exist_ok=True)
    run_process(
        contender.prepare(base),
        env={**bench.base_env(), **contender.env},
        log=bench.logs / f"prepare-{contender.slug}.log",
        cwd=base,
    )


def run(bench: Bench) -> None:
    """Run scenarios 4-5 for every round."""
    assert bench.git is not None
    params = bench.params
    dataset = build_repository(bench)
    directory = params.sparse_directory
    full = git_contenders(bench, REPO, None, fetch_reset=True)
    sparse = git_contenders(bench, REPO, [directory])
    for contender in (*full, *sparse):
        if contender.in_process:
            warm_up(bench, contender, [directory] if any(contender is c for c in sparse) else None)
    cold = [c for c in full if c.prepare is None]

    for round_index in range(params.rounds):
        root = bench.work / "git" / f"round{round_index}"
        progress = f"round {round_index + 1}/{params.rounds}"

        def base(contender: Contender, phase: str, root: Path = root) -> Path:
            path = root / contender.slug
            return path / phase if contender.fresh else path

        bench.progress(f"  [{S4}] {progress}")
        for contender in rotated(cold, round_index):
            measure(
                bench, contender, base(contender, "cold"), scenario=S4,
                round_index=round_index, server=bench.git, expected=dataset.expected(),
            )  # fmt: skip
        for contender in full:
            if contender.prepare is not None:
                _prepare(bench, contender, base(contender, "cold"))

        bench.progress(f"  [{S5_SAME}] {progress}")
        for contender in rotated(full, round_index):
            measure(
                bench, contender, base(contender, "same"), scenario=S5_SAME,
                round_index=round_index, server=bench.git, expected=dataset.expected(),
            )  # fmt: skip

        dataset.edit_some(3, f"round {round_index}: edit three files")
        bench.progress(f"  [{S5_COMMIT}] {progress}")
        for contender in rotated(full, round_index):
            measure(
                bench, contender, base(contender, "commit"), scenario=S5_COMMIT,
                round_index=round_index, server=bench.git, expected=dataset.expected(),
            )  # fmt: skip

        bench.progress(f"  [{S4_SPARSE}] {progress}: directories=[{directory}]")
        for contender in rotated(sparse, round_index):
            measure(
                bench, contender, root / f"sparse-{contender.slug}", scenario=S4_SPARSE,
                round_index=round_index, server=bench.git,
                expected=dataset.expected([directory]),
            )  # fmt: skip
    for contender in (*full, *sparse):
        bench.stop_worker(contender)
