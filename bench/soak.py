"""The soak run of issue 5: many sources, a short interval, upstream changing all the time.

``python -m bench.soak`` starts a ``git daemon`` and a ``moto_server`` on loopback, creates
upstream repositories and S3 prefixes, and runs the real daemon (``runner-storage run``)
with 50 sources on a 1 s interval for 10 minutes while a changer commits to a repository and
rewrites an S3 object every few seconds. Every ``--sample-every`` seconds it reads, from
/proc and /metrics: the daemon's resident memory, open file descriptors, threads, child
processes, CPU time, the disk used under the root, and the pulls counted so far.

At the end it checks that nothing grows without bound (the last third of the run against the
middle third: memory, descriptors, threads, children and disk stay within small margins),
that pulls kept publishing changes, and that none failed. Exit status 0 when every check
holds, 1 otherwise. Not part of CI::

    python -m bench.soak                    # 50 sources, 1 s interval, 10 minutes
    python -m bench.soak --minutes 3        # shorter
    python -m bench.soak --sources 20 --interval 2 --change-every 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from runner_storage.publish.layout import repos_dir

BIN = Path(sys.executable).parent
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}
FILES_PER_REPO = 200
OBJECTS_PER_PREFIX = 100


@dataclass
class Sample:
    """One reading of the daemon's footprint."""

    elapsed: float
    rss_mb: float
    fds: int
    threads: int
    children: int
    cpu_s: float
    versions_mb: float
    stores_mb: float
    changed: int
    unchanged: int
    errors: int


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: object, what: str, timeout: float = 30) -> None:
    """Poll ``check()`` every 50 ms until true."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout}s")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def started(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``argv`` in its own session; SIGTERM (then SIGKILL) its group on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def descendants(pid: int) -> set[int]:
    """Live descendants of ``pid``."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if fields[0] not in ("Z", "X"):
                    parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


# --- upstream ------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> str:
    """Run git quietly; return stdout."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, input=data, capture_output=True, env=GIT_ENV, check=True
    )
    return result.stdout.decode()


def commit(repo: Path, files: dict[str, bytes], message: str, first: bool = False) -> None:
    """Commit ``files`` on top of main (or as its first commit) with git fast-import."""
    stream = bytearray(b"commit refs/heads/main\n")
    stream += f"committer Soak <soak@example.com> {int(time.time())} +0000\n".encode()
    stream += b"data %d\n%s\n" % (len(message), message.encode())
    if not first:
        stream += b"from refs/heads/main^0\n"
    for path, data in files.items():
        stream += f"M 100644 inline {path}\n".encode() + b"data %d\n%s\n" % (len(data), data)
    git("fast-import", "--quiet", "--force", cwd=repo, data=bytes(stream))


def s3_client(endpoint: str) -> object:
    """A botocore S3 client for moto."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="soak",
        aws_secret_access_key="soak",
    )


@dataclass
class Upstream:
    """The repositories and prefixes the sources pull, and how to change them."""

    repos: list[Path]
    endpoint: str
    bucket: str
    prefixes: list[str]

    def change(self, rng: random.Random, round_: int) -> None:
        """Commit to one repository and rewrite one object of one prefix."""
        repo = rng.choice(self.repos)
        index = rng.randrange(FILES_PER_REPO)
        commit(
            repo,
            {f"flows/f{index:03}.py": f"VALUE = {round_}\n".encode() * 20},
            f"change {round_}",
        )
        prefix = rng.choice(self.prefixes)
        key = f"{prefix}/o{rng.randrange(OBJECTS_PER_PREFIX):03}.txt"
        s3_client(self.endpoint).put_object(  # type: ignore[attr-defined]
            Bucket=self.bucket, Key=key, Body=f"round {round_}\n".encode() * 50
        )


def make_upstream(work: Path, endpoint: str, repos: int, prefixes: int) -> Upstream:
    """Create ``repos`` bare repositories and ``prefixes`` S3 prefixes with content."""
    made = []
    for index in range(repos):
        repo = work / "git" / f"repo{index}.git"
        git("init", "-q", "--bare", "-b", "main", str(repo))
        files = {
            f"flows/f{i:03}.py": f"VALUE = 0  # {i}\n".encode() * 20 for i in range(FILES_PER_REPO)
        }
        files.update({f"lib/l{i:03}.py": b"L = 1\n" * 30 for i in range(FILES_PER_REPO // 2)})
        commit(repo, files, "initial", first=True)
        made.append(repo)
    client = s3_client(endpoint)
    bucket = "soak"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    names = [f"p{index}" for index in range(prefixes)]
    for prefix in names:
        for i in range(OBJECTS_PER_PREFIX):
            client.put_object(  # type: ignore[attr-defined]
                Bucket=bucket, Key=f"{prefix}/o{i:03}.txt", Body=f"{i}\n".encode() * 50
            )
    return Upstream(made, endpoint, bucket, names)


def config_text(root: Path, upstream: Upstream, git_port: int, args: argparse.Namespace) -> str:
    """The daemon's config: ``args.sources`` sources, 60% git, 40% S3."""
    lines = [
        f'root = "{root}"',
        'log_format = "json"',
        f"keep_versions = {args.keep_versions}",
        f"grace_period = {args.grace_period}",
        f"concurrency = {args.concurrency}",
        "backoff_initial = 1",
        "backoff_max = 10",
    ]
    git_sources = round(args.sources * 0.6)
    for index in range(args.sources):
        lines.append("[[sources]]")
        lines.append(f'name = "s{index:02}"')
        lines.append(f"pull_interval = {args.interval}")
        if index < git_sources:
            repo = upstream.repos[index % len(upstream.repos)]
            lines.append(f'source = "git://127.0.0.1:{git_port}/{repo.name}"')
            if index % 3 == 1:
                lines.append('directories = ["flows"]')
        else:
            prefix = upstream.prefixes[index % len(upstream.prefixes)]
            lines.append(f'source = "s3://{upstream.bucket}/{prefix}"')
            lines.append(
                f'settings = {{ endpoint_url = "{upstream.endpoint}", key = "soak",'
                ' secret = "soak" }'
            )
    return "\n".join(lines) + "\n"


# --- measuring -----------------------------------------------------------------------------


def disk_bytes(root: Path) -> tuple[int, int]:
    """Bytes allocated under ``root``: published versions and state, then git object stores.

    Each inode counts once (versions share hard links).
    """
    seen: set[tuple[int, int]] = set()
    totals = [0, 0]
    stores = repos_dir(root)
    for directory, dirnames, filenames in os.walk(root):
        which = 1 if Path(directory).is_relative_to(stores) else 0
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(os.path.join(directory, name))
                key = (info.st_dev, info.st_ino)
                if key not in seen:
                    seen.add(key)
                    totals[which] += info.st_blocks * 512
    return totals[0], totals[1]


def pulls(port: int) -> dict[str, int]:
    """Pulls so far by result, summed over the sources, from /metrics."""
    counts = {"changed": 0, "unchanged": 0, "error": 0}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("runner_storage_pulls_total{"):
            labels, value = line.rsplit(" ", 1)
            for result in counts:
                if f'result="{result}"' in labels:
                    counts[result] += int(float(value))
    return counts


def sample(pid: int, root: Path, port: int, started_at: float) -> Sample:
    """Read the daemon's footprint once."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = stat[stat.rindex(")") + 2 :].split()
    counts = pulls(port)
    versions, stores = disk_bytes(root)
    return Sample(
        elapsed=round(time.monotonic() - started_at, 1),
        rss_mb=round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"]),
        children=len(descendants(pid)),
        cpu_s=round((int(cpu[11]) + int(cpu[12])) / ticks, 1),
        versions_mb=round(versions / 2**20, 1),
        stores_mb=round(stores / 2**20, 1),
        changed=counts["changed"],
        unchanged=counts["unchanged"],
        errors=counts["error"],
    )


HEADER = (
    f"{'t (s)':>7} {'RSS MB':>7} {'fds':>5} {'thr':>4} {'kids':>4} {'CPU s':>7}"
    f" {'versions MB':>11} {'stores MB':>9} {'changed':>8} {'no-op':>8} {'errors':>6}"
)


def row(s: Sample) -> str:
    """One table row."""
    return (
        f"{s.elapsed:>7} {s.rss_mb:>7} {s.fds:>5} {s.threads:>4} {s.children:>4} {s.cpu_s:>7}"
        f" {s.versions_mb:>11} {s.stores_mb:>9} {s.changed:>8} {s.unchanged:>8} {s.errors:>6}"
    )


def verdicts(samples: list[Sample]) -> list[tuple[str, bool, str]]:
    """Whether each footprint stays bounded: the last third against the middle third."""
    third = max(1, len(samples) // 3)
    middle, last = samples[third : 2 * third], samples[2 * third :]
    if not middle or not last:
        return [("enough samples", False, f"{len(samples)} samples; run longer")]

    def peak(part: list[Sample], attribute: str) -> float:
        return max(float(getattr(s, attribute)) for s in part)

    checks = []
    for attribute, ratio, slack in (
        ("rss_mb", 1.15, 15.0),
        ("fds", 1.0, 16.0),
        ("threads", 1.0, 8.0),
        ("children", 1.0, 12.0),
        ("versions_mb", 1.1, 2.0),
    ):
        before, after = peak(middle, attribute), peak(last, attribute)
        limit = before * ratio + slack
        checks.append(
            (f"{attribute} bounded", after <= limit, f"{before:g} -> {after:g} (limit {limit:g})")
        )
    # git object stores keep every fetched commit's objects until git's own gc prunes them
    # (two weeks by default): they grow with upstream history, not with the number of pulls.
    first, final = samples[0], samples[-1]
    growth = final.stores_mb - first.stores_mb
    checks.append(
        (
            "object stores grow with upstream changes only",
            growth <= 0.05 * max(1, final.changed) + 5,
            f"{first.stores_mb:g} -> {final.stores_mb:g} MB over {final.changed} changed pulls",
        )
    )
    checks.append(
        ("changes published", final.changed > first.changed, f"{final.changed} changed pulls")
    )
    checks.append(("no failed pulls", final.errors == 0, f"{final.errors} failed pulls"))
    return checks


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Set everything up, soak, report; return the exit status."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    git_port, moto_port, http_port = free_port(), free_port(), free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    samples: list[Sample] = []
    moto = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)]
    try:
        with started(moto, work / "moto.log"):
            wait_until(lambda: http_ok(f"{endpoint}/moto-api/data.json"), "moto")
            (work / "git").mkdir(exist_ok=True)
            upstream = make_upstream(work, endpoint, args.repos, args.prefixes)
            daemon_git = [
                "git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={git_port}",
                f"--base-path={work / 'git'}", "--export-all", str(work / "git"),
            ]  # fmt: skip
            with started(daemon_git, work / "git-daemon.log", env=GIT_ENV):
                wait_until(lambda: port_open(git_port), "git daemon")
                config = work / "soak.toml"
                config.write_text(config_text(root, upstream, git_port, args))
                env = {**os.environ, "RUNNER_STORAGE_HTTP_PORT": str(http_port)}
                argv = [str(BIN / "runner-storage"), "run", "--config", str(config)]
                with started(argv, work / "daemon.log", env=env) as pid:
                    wait_until(
                        lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"),
                        "every source published",
                        timeout=120,
                    )
                    samples = soak(pid, root, http_port, upstream, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report(samples, args)


def soak(
    pid: int, root: Path, port: int, upstream: Upstream, args: argparse.Namespace
) -> list[Sample]:
    """Change upstream and sample the daemon until the time is up."""
    stop = threading.Event()
    rng = random.Random(args.seed)

    def changer() -> None:
        round_ = 0
        while not stop.wait(args.change_every):
            round_ += 1
            upstream.change(rng, round_)

    thread = threading.Thread(target=changer, daemon=True)
    thread.start()
    samples: list[Sample] = []
    started_at = time.monotonic()
    end = started_at + args.minutes * 60
    print(HEADER, flush=True)
    try:
        while True:
            samples.append(sample(pid, root, port, started_at))
            print(row(samples[-1]), flush=True)
            if time.monotonic() >= end:
                break
            time.sleep(min(args.sample_every, max(0.0, end - time.monotonic())))
    finally:
        stop.set()
        thread.join(30)
    return samples


def report(samples: list[Sample], args: argparse.Namespace) -> int:
    """Print the verdicts; write the samples as JSON if asked; return the exit status."""
    checks = verdicts(samples)
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "params": vars(args),
                    "samples": [asdict(s) for s in samples],
                    "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks],
                },
                indent=2,
            )
        )
    return 0 if all(ok for _, ok, _ in checks) else 1


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    cli.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    cli.add_argument("--sources", type=int, default=50, help="sources (default 50; 60%% git)")
    cli.add_argument("--interval", type=float, default=1.0, help="pull interval, s (default 1)")
    cli.add_argument("--change-every", type=float, default=3.0, help="upstream change period, s")
    cli.add_argument("--sample-every", type=float, default=10.0, help="sampling period, s")
    cli.add_argument("--repos", type=int, default=10, help="upstream git repositories")
    cli.add_argument("--prefixes", type=int, default=10, help="upstream S3 prefixes")
    cli.add_argument("--keep-versions", type=int, default=3, help="retention: versions kept")
    cli.add_argument("--grace-period", type=float, default=5.0, help="retention: grace, s")
    cli.add_argument("--concurrency", type=int, default=8, help="pulls at once")
    cli.add_argument("--seed", type=int, default=5, help="seed of the upstream changes")
    cli.add_argument("--workdir", help="where to put everything (default: a temp dir)")
    cli.add_argument("--keep", action="store_true", help="keep the work directory")
    cli.add_argument("--json", help="write the samples and verdicts to this file")
    return cli


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.soak``."""
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
