"""The ``runner-storage`` command: the parser, built from one module per command.

Exit codes: 0 success; 1 a pull, check or hook failed at runtime; 2 usage or configuration
error (settings, arguments, an HTTP port already in use).

Each command imports what it needs when it runs: ``--version``, ``--help`` and ``status``
load neither pydantic, structlog, anyio nor any backend (``tests/test_imports.py``), so
the command modules import only the standard library and light parts of the library at
their top.
"""

from __future__ import annotations

import argparse
import gc as collector  # service.cli.gc is the gc command
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from service.cli import check, gc, package, pull, push, run, status, steps
from service.cli.shared import EXIT_USAGE, UsageError

__all__ = ["console", "main"]

#: Allocations between two collections of young objects in the console script.
YOUNG_COLLECTION_THRESHOLD = 10_000

#: The commands, in the order ``--help`` lists them.
COMMANDS = (run, pull, steps, check, status, package, push, gc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as exc:
        for line in exc.lines:
            print(f"runner-storage: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def console() -> NoReturn:
    """The ``runner-storage`` console script: :func:`main`, then exit without a teardown.

    When :func:`main` returns, everything a command writes is written: a version is
    published (renamed into place and synced), state and logs are flushed. What Python's
    own shutdown would do after that (collect garbage and free every module's objects: 50
    to 80 ms once the S3 and settings stacks are loaded, more than a no-op pull's own
    work) changes nothing, so the process flushes its streams and logging handlers and
    leaves at once. ``main`` itself returns normally, for callers in the same process.

    Young objects are collected every 10,000 allocations instead of 700: importing
    botocore's and pydantic's models allocates hundreds of thousands of objects that live
    as long as the process, and walking them again and again cost a no-op pull about
    30 ms of its 0.3 s of CPU.
    """
    collector.set_threshold(YOUNG_COLLECTION_THRESHOLD, *collector.get_threshold()[1:])
    code = main()
    logging = sys.modules.get("logging")  # a command that logged has loaded it
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            code = code or 1
    os._exit(code)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``handler`` to the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="runner-storage",
        description="Keep workers' code in sync with git repositories, object stores and HTTP.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for module in COMMANDS:
        command = module.COMMAND
        subparser = commands.add_parser(command.name, help=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(handler=command.run)
    return parser


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from runner_storage import __version__  # noqa: PLC0415 - only --version needs it

        print(f"{parser.prog} {__version__}")
        parser.exit()
