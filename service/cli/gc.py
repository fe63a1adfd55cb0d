"""``runner-storage gc``: delete snapshots no ref names beyond the newest N, then their blobs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from service.cli import shared
from service.cli.shared import Command, UsageError

__all__ = ["COMMAND", "collect"]


def collect(args: argparse.Namespace) -> int:
    """Run gc on ``ROOT``; print what was kept and deleted (or would be, with --dry-run).

    Returns:
        0 when done; 1 when the store failed or a manifest is unreadable.

    Raises:
        UsageError: a bad root or option, or a read-only root.
    """
    from runner_storage.snapshots.gc import collect_garbage  # noqa: PLC0415 - fsspec

    try:
        result = collect_garbage(
            args.root, keep=args.keep, dry_run=args.dry_run, grace_period=args.grace
        )
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    except RunnerStorageError as exc:
        print(f"runner-storage: gc failed: {exc}", file=sys.stderr)
        return shared.EXIT_FAILURE
    for name in result.dangling_refs:
        print(
            f"runner-storage: ref {name!r} names {result.refs[name]}, which is not in the store",
            file=sys.stderr,
        )
    output: dict[str, Any] = {
        "dry_run": result.dry_run,
        "refs": result.refs,
        "kept_snapshots": list(result.kept_snapshots),
        "deleted_snapshots": list(result.deleted_snapshots),
        "deleted_blobs": len(result.deleted_blobs),
        "bytes_freed": result.bytes_freed,
    }
    shared.print_document(output, args.format)
    return shared.EXIT_OK


def _non_negative(kind: type[int] | type[float], what: str) -> Any:
    """An argparse type: a ``kind`` of 0 or more, else a one-line error naming ``what``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or more")
        return value

    return parse


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="the snapshot root (an fsspec URL or a path)")
    parser.add_argument(
        "--keep",
        type=_non_negative(int, "a whole number"),
        required=True,
        help="how many of the newest snapshots to keep besides those refs name",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    parser.add_argument(
        "--grace",
        type=_non_negative(float, "a number of seconds"),
        default=3600.0,
        help="seconds: never delete anything younger, a push may be writing it (default 3600)",
    )
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")


COMMAND = Command(
    "gc",
    "delete snapshots no ref names beyond the newest N, then blobs none of the rest need",
    collect,
    _arguments,
)
