"""A long-lived pulling process: what a daemon or a runner pays for each pull once it runs.

Run as a plain script (``python bench/worker.py``) by either virtual environment: ours
(``runner_storage``) or Prefect's (``prefect.runner.storage``). It imports nothing from the
``bench`` package, so the Prefect environment needs only Prefect.

Protocol: one JSON object per line on stdin, one JSON answer per line on the original
stdout (everything else the libraries print goes to stderr). Requests::

    {"op": "pull", "spec": SPEC}                     one pull, timed around pull_code()
    {"op": "pull_many", "specs": [SPEC...], "concurrency": N}   pulls at once, timed together
    {"op": "import", "impl": "ours"|"prefect", "kind": "remote"|"git"|"snapshot"}   load the code
    {"op": "push", "directory", "root", "ref", "settings"}   ours: push_snapshot(), timed
    ("instrument": true on a request also times our link and retention steps)
    {"op": "exit"}

A SPEC is ``{"impl", "kind", "base", "url", "settings", "credentials", "name", "branch",
"directories"}``; kind ``snapshot`` (ours only) takes ``url`` as the snapshot root, plus
``ref`` and ``snapshot``. Storage objects are kept per spec, as a daemon keeps its sources.

Answers: ``{"ok": true, "seconds": S, "cpu_seconds": CPU, "maxrss_kb": K,
"children_maxrss_kb": C}`` (CPU: this process and its reaped children, e.g. git) or
``{"ok": false, "error": "..."}``; a push adds ``"info"``, its ``SnapshotInfo``.
``maxrss_kb`` is the peak resident size of this process during the request (``VmHWM``,
reset before it); ``children_maxrss_kb`` the largest reaped child so far, which Linux
inflates to at least this process's size when it forked (peak RSS survives ``execve``), so
the bench does not use it.

``python bench/worker.py once SPEC_JSON`` does one pull in a fresh process and exits
(the whole-process measurement for Python libraries that have no CLI, i.e. Prefect).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_storages: dict[str, Any] = {}
_phases: dict[str, float] = {}
_instrumented: list[bool] = []


def _instrument() -> None:
    """Time two steps of our publisher's pull (bench instrumentation, ours only).

    ``link``: building the new version's directories and hard links; ``retention``: the
    publisher's clean-up of old versions right after the swap.
    """
    if _instrumented:
        return
    _instrumented.append(True)
    from runner_storage.publish import publisher
    from runner_storage.remote import backend

    def timed(owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _phases[label] = _phases.get(label, 0.0) + time.perf_counter() - started

        setattr(owner, attribute, wrapper)

    timed(backend, "_link_unchanged", "link")
    timed(publisher.Publisher, "_apply_retention", "retention")


def _import(impl: str, kind: str) -> Any:
    if impl == "ours":
        if kind == "snapshot":
            from runner_storage.snapshots import SnapshotStorage

            return SnapshotStorage
        if kind == "remote":
            from runner_storage.remote import RemoteStorage

            return RemoteStorage
        from runner_storage.git import GitRepository

        return GitRepository
    from prefect.runner import storage as prefect_storage

    return prefect_storage.RemoteStorage if kind == "remote" else prefect_storage.GitRepository


def _build(spec: dict[str, Any]) -> Any:
    cls = _import(spec["impl"], spec["kind"])
    if spec["kind"] == "snapshot":
        options = spec.get("options") or {}
        storage = cls(
            spec["url"],
            ref=spec.get("ref") or "latest",
            snapshot=spec.get("snapshot"),
            pull_interval=None,
            name=spec.get("name"),
            **options,
            **(spec.get("settings") or {}),
        )
    elif spec["kind"] == "remote":
        options = spec.get("options") or {}  # ours only: keep_versions, grace_period
        storage = cls(spec["url"], pull_interval=None, **options, **(spec.get("settings") or {}))
    else:
        kwargs: dict[str, Any] = {
            "name": spec.get("name"),
            "branch": spec.get("branch"),
            "pull_interval": None,
            "directories": spec.get("directories") or None,
        }
        if spec.get("credentials"):
            kwargs["credentials"] = spec["credentials"]
        storage = cls(spec["url"], **kwargs)
    storage.set_base_path(Path(spec["base"]))
    return storage


def _storage(spec: dict[str, Any]) -> Any:
    key = json.dumps(spec, sort_keys=True)
    if key not in _storages:
        _storages[key] = _build(spec)
    return _storages[key]


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _usage() -> dict[str, int]:
    peak = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return {
        "maxrss_kb": peak,
        "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


async def _pull_many(specs: list[dict[str, Any]], concurrency: int) -> None:
    limit = asyncio.Semaphore(concurrency)
    storages = [_storage(spec) for spec in specs]

    async def one(storage: Any) -> None:
        async with limit:
            await storage.pull_code()

    await asyncio.gather(*(one(s) for s in storages))


def _push(request: dict[str, Any]) -> dict[str, Any]:
    """Push a directory as a snapshot (ours); the answer's ``info`` is its SnapshotInfo."""
    from dataclasses import asdict

    from runner_storage.snapshots import push_snapshot

    info = push_snapshot(
        request["directory"],
        request["root"],
        ref=request.get("ref") or "latest",
        **(request.get("settings") or {}),
    )
    return asdict(info)


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Serve one request; never raises."""
    result: dict[str, Any] = {}
    try:
        op = request["op"]
        if request.get("instrument"):
            _instrument()
        _phases.clear()
        _reset_peak()
        cpu = _cpu()
        started = time.perf_counter()
        if op == "import":
            _import(request["impl"], request["kind"])
        elif op == "pull":
            storage = _storage(request["spec"])
            started = time.perf_counter()
            asyncio.run(storage.pull_code())
        elif op == "push":
            import runner_storage.snapshots.push  # noqa: F401 - imported before the clock

            started = time.perf_counter()
            result["info"] = _push(request)
        elif op == "pull_many":
            asyncio.run(_pull_many(request["specs"], int(request.get("concurrency", 4))))
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        seconds = time.perf_counter() - started
        cpu = _cpu() - cpu
    except BaseException as exc:  # noqa: BLE001 - reported to the bench, which decides
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": tail}
    return {
        "ok": True,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "phases": dict(_phases),
        **result,
        **_usage(),
    }


def serve() -> None:
    """Answer requests from stdin until ``exit`` or end of input."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        answers.write(json.dumps(handle(request)) + "\n")


def once(spec_json: str) -> int:
    """One pull in this fresh process; exit status 0 on success."""
    answer = handle({"op": "pull", "spec": json.loads(spec_json)})
    if not answer["ok"]:
        print(json.dumps(answer), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "once":
        sys.exit(once(sys.argv[2]))
    serve()
