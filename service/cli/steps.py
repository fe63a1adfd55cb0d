"""``runner-storage steps``: the ``pull:`` section of a prefect.yaml for the configured sources.

Secrets appear as placeholders (``{{ $VAR }}``, ``{{ prefect.blocks.secret.NAME }}``); a
secret that has none (a literal) is refused rather than written out.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.secrets import strip_url_credentials
from service.cli import shared
from service.cli.shared import Command, UsageError, add_config_option

__all__ = ["COMMAND", "print_steps"]


def print_steps(args: argparse.Namespace) -> int:
    """Print one Prefect pull step per configured source, as YAML or JSON.

    A snapshot source that follows a ref is pinned to the published id, or to what the
    ref names now (one read of the ref).

    Returns:
        0 when printed; 1 when a source had to be asked and failed (nothing is printed).

    Raises:
        UsageError: invalid settings, or a source whose step would hold a secret's value.
    """
    steps: list[dict[str, Any]] = []
    problems = []
    failures = []
    for source, storage in shared.build_all(shared.load_daemon_settings(args.config)):
        shown = strip_url_credentials(source.source)
        try:
            step = storage.to_pull_step()
        except ConfigurationError as exc:
            problems.append(f"{shown}: {exc}")
            continue
        except RunnerStorageError as exc:
            failures.append(f"{shown}: {exc}")
            continue
        steps.append(step)
    if problems:
        raise UsageError(problems)
    if failures:
        for line in failures:
            print(f"runner-storage: steps failed: {line}", file=sys.stderr)
        return shared.EXIT_FAILURE
    shared.print_document({"pull": steps}, args.format)
    return shared.EXIT_OK


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")


COMMAND = Command("steps", "print the prefect.yaml pull: section", print_steps, _arguments)
