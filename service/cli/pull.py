"""``runner-storage pull SOURCE``: one source, pulled and published once, no config file.

Of the environment only ``RUNNER_STORAGE_KEEP_VERSIONS`` and ``_GRACE_PERIOD`` apply: run
inside a configured sidecar, it pulls what it is told. Nothing retries a failed pull, so
nothing here says it will be.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.local import LocalStorage
from service.cli import shared
from service.cli.shared import Command, UsageError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from runner_storage.types import SyncResult
    from service.options import Retention

__all__ = ["COMMAND", "pull_once"]

#: The daemon settings that apply to one pull.
_RETENTION_VARIABLES = ("RUNNER_STORAGE_KEEP_VERSIONS", "RUNNER_STORAGE_GRACE_PERIOD")


def pull_once(args: argparse.Namespace) -> int:
    """Pull ``args.source`` once and publish it under ``--dest``.

    Returns:
        0 when published or up to date, 1 when the pull failed, 2 when the source or an
        option is bad input (a storage refusing it at the first pull included).

    Raises:
        UsageError: bad options, retention settings or destination; a missing local folder.
    """
    import anyio  # noqa: PLC0415 - only the commands that pull need it
    from pydantic import ValidationError  # noqa: PLC0415 - only commands that read settings

    from service.logging import configure_library_logging  # noqa: PLC0415 - as pydantic
    from service.sources import parse_source  # noqa: PLC0415 - as pydantic

    # One pull logs through the standard library only: structlog is not even loaded.
    configure_library_logging(level="warning", stream=sys.stderr)
    directories = [d for d in (args.directories or "").split(",") if d.strip()] or None
    given = {
        "name": args.name,
        "branch": args.branch,
        "commit_sha": args.commit_sha,
        "directories": directories,
        "depth": args.depth,
        "ref": args.ref,
        "snapshot": args.snapshot,
    }
    # Only what was given: an option of another kind is refused, not silently dropped.
    options: dict[str, Any] = {"source": args.source, "pull_interval": None}
    options.update({key: value for key, value in given.items() if value is not None})
    retention = _retention(os.environ)
    try:
        source = parse_source(options)
    except ValidationError as exc:
        raise UsageError([_option_problem(exc, options)]) from None
    root = _check_dest(args.dest or Path.cwd())
    where = _Publishing(root, retention.keep_versions, retention.grace_period)
    built, problems = shared.build_sources([(0, source)], where)
    if problems:
        raise UsageError(problems)
    ((_, storage),) = built
    if isinstance(storage, LocalStorage):
        if not storage.destination.is_dir():
            raise UsageError(
                [
                    f"{storage.destination} does not exist or is not a directory: give an"
                    " existing folder, or a git or object-store URL"
                ]
            )
        label = args.source
    else:
        label = storage.redact(args.source)
    try:
        result = shared.with_progress(f"pulling {label}", lambda: anyio.run(storage.pull_code))
    except RunnerStorageError as exc:
        print(f"runner-storage: pull failed: {exc}", file=sys.stderr)
        return shared.EXIT_USAGE if isinstance(exc, ConfigurationError) else shared.EXIT_FAILURE
    _print_result(storage.destination, result, as_json=args.json)
    return shared.EXIT_OK


def _retention(environ: Mapping[str, str]) -> Retention:
    """``RUNNER_STORAGE_KEEP_VERSIONS`` and ``_GRACE_PERIOD``, checked as the daemon checks them.

    Only these two: the daemon's other settings (and pydantic-settings, 0.05-0.1 s to
    import) have nothing to do with one pull.

    Raises:
        UsageError: one line per bad value, naming its variable.
    """
    from pydantic import ValidationError  # noqa: PLC0415 - as in pull_once

    from service.options import Retention  # noqa: PLC0415 - as pydantic
    from service.problems import ENV_PREFIX, describe  # noqa: PLC0415 - as pydantic

    values = {
        name.upper().removeprefix(ENV_PREFIX).lower(): value
        for name, value in environ.items()
        if name.upper() in _RETENTION_VARIABLES
    }
    try:
        return Retention.model_validate(values)
    except ValidationError as exc:
        lines = describe(exc, [("environment", values)], values, whole_model=True)
        raise UsageError(lines) from None


@dataclass(frozen=True)
class _Publishing:
    """Where one pull publishes, and what it keeps (a :class:`shared.Publishing`)."""

    root: Path
    keep_versions: int
    grace_period: float


def _print_result(destination: Path, result: SyncResult, *, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "destination": str(destination),
                    "revision": result.revision,
                    "changed": result.changed,
                    "files_fetched": result.files_fetched,
                    "bytes_fetched": result.bytes_fetched,
                    "duration": round(result.duration, 3),
                }
            )
        )
        return
    what = "published" if result.changed else "up to date"
    print(
        f"{what}: {destination} at {result.revision[:12]}"
        f" ({result.files_fetched} files, {_size(result.bytes_fetched)} fetched"
        f" in {result.duration:.2f}s)"
    )


def _check_dest(dest: Path) -> Path:
    """``dest`` made absolute, after checking that it is or can become a directory."""
    dest = dest.resolve()
    for path in (dest, *dest.parents):
        if path.exists():
            if not path.is_dir():
                raise UsageError([f"--dest {dest}: {path} is not a directory; choose a directory"])
            break
    return dest


def _option_problem(exc: ValidationError, options: dict[str, Any]) -> str:
    """One line for the first invalid command-line value: the option and what is wrong."""
    from service.problems import describe_source_error  # noqa: PLC0415 - as pydantic

    error = exc.errors(include_url=False, include_input=False)[0]
    loc, message, _ = describe_source_error(error, options, loc=tuple(error["loc"]))[0]
    field = str(loc[0]) if loc else ""
    if field == "source":
        if not options["source"]:
            return "SOURCE is empty: give a git URL, an object-store URL (s3://...) or a path"
        return f"SOURCE: {message}"  # the classifier's line: blank, or an unknown scheme
    option = "--" + field.replace("_", "-") if field else "settings"
    return f"{option}: {message}"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="git URL, fsspec URL (s3://, gs://, az://, https://), snapshot+URL, or path",
    )
    parser.add_argument(
        "--dest",
        type=Path,
        help="base directory to publish under (default: current directory)",
    )
    parser.add_argument("--name", help="destination name under --dest (git sources)")
    parser.add_argument("--branch", help="branch or tag (git sources)")
    parser.add_argument("--commit-sha", help="commit to publish (git sources)")
    parser.add_argument("--directories", help="comma-separated directories (git sparse checkout)")
    parser.add_argument(
        "--depth", type=int, default=None, help="git history depth; 0 = full (default 1)"
    )
    parser.add_argument("--ref", help="the ref to follow (snapshot sources; default latest)")
    parser.add_argument("--snapshot", help="the snapshot id to pin (snapshot sources)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


COMMAND = Command("pull", "pull one source once and publish it", pull_once, _arguments)
