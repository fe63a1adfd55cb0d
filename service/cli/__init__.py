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
import sys
from collections.abc import Sequence
from typing import Any

from service.cli import check, gc, package, pull, push, run, status, steps
from service.cli.shared import EXIT_USAGE, UsageError

__all__ = ["main"]

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
