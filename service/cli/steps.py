"""``runner-storage steps``: the ``pull:`` section of a prefect.yaml for the configured sources.

Secrets appear as placeholders (``{{ $VAR }}``, ``{{ prefect.blocks.secret.NAME }}``); a
secret that has none (a literal) is refused rather than written out.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets import strip_url_credentials
from service.cli import shared
from service.cli.shared import Command, UsageError, add_config_option

__all__ = ["COMMAND", "print_steps"]


def print_steps(args: argparse.Namespace) -> int:
    """Print one Prefect pull step per configured source, as YAML or JSON.

    Raises:
        UsageError: invalid settings, or a source whose step would hold a secret's value.
    """
    steps: list[dict[str, Any]] = []
    problems = []
    for source, storage in shared.build_all(shared.load_daemon_settings(args.config)):
        try:
            step = storage.to_pull_step()
        except ConfigurationError as exc:
            problems.append(f"{strip_url_credentials(source.source)}: {exc}")
            continue
        steps.append(step)
    if problems:
        raise UsageError(problems)
    if args.format == "json":
        print(json.dumps({"pull": steps}, indent=2))
    else:
        import yaml  # noqa: PLC0415 - only this command needs it

        print(yaml.safe_dump({"pull": steps}, sort_keys=False), end="")
    return shared.EXIT_OK


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")


COMMAND = Command("steps", "print the prefect.yaml pull: section", print_steps, _arguments)
