"""``runner-storage status``: what each source's ``state.json`` says, as a table or JSON.

It reads files only: no settings, logging, async or backend library is loaded, so it
answers at once, even on a node where the daemon is stuck.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runner_storage.exceptions import RunnerStorageError
from runner_storage.publish import SourceState, list_states
from runner_storage.publish.state import age_seconds
from service.cli.shared import EXIT_FAILURE, EXIT_OK, Command

__all__ = ["COMMAND", "show_status"]


def show_status(args: argparse.Namespace) -> int:
    """Print every source published or attempted under the root.

    Returns:
        0, or 1 (with one line on stderr) when a source's ``state.json`` is unreadable.
    """
    root = args.root
    if root is None:
        root = Path(os.environ.get("RUNNER_STORAGE_ROOT") or Path.cwd())
    try:
        states = list_states(root)
    except RunnerStorageError as exc:
        print(f"runner-storage: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"root": str(root), "sources": _rows(states)}, indent=2))
    elif not states:
        print(f"no sources published under {root}")
    else:
        _print_table(states)
    return EXIT_OK


def _rows(states: list[tuple[str, SourceState]]) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "revision": state.revision,
            "published_at": state.published_at,
            "last_success_age_seconds": age_seconds(state.last_success_at),
            "consecutive_failures": state.consecutive_failures,
            "last_error": state.last_error,
            "source": state.source,
        }
        for name, state in states
    ]


def _print_table(states: list[tuple[str, SourceState]]) -> None:
    table = [("NAME", "REVISION", "LAST SUCCESS", "FAILURES", "LAST ERROR")]
    table += [
        (
            name,
            (state.revision or "-")[:12],
            _age(age_seconds(state.last_success_at)),
            str(state.consecutive_failures),
            (state.last_error or "-")[:100],
        )
        for name, state in states
    ]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[4]]))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        help="base directory (default: RUNNER_STORAGE_ROOT or the current one)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


COMMAND = Command("status", "show each source's published state", show_status, _arguments)
