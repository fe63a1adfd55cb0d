"""``runner-storage steps``: prefect.yaml pull sections, written, proposed and run.

* ``steps``: the ``pull:`` section for the configured sources. Secrets appear as
  placeholders (``{{ $VAR }}``, ``{{ prefect.blocks.secret.NAME }}``); a secret that has
  none (a literal) is refused rather than written out.
* ``steps --from-checkout DIR``: the ``git_clone`` step for a local checkout, as
  ``prefect deploy`` proposes it, with warnings when HEAD is not pushed or the tree dirty.
* ``steps --run FILE``: a deployment's pull section run once here, as Prefect's worker
  runs it before a flow run, printing each step's output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.secrets import strip_url_credentials
from service.cli import shared
from service.cli.shared import Command, UsageError, add_config_option

__all__ = ["COMMAND", "print_steps", "propose_steps", "run_steps", "steps_command"]


def steps_command(args: argparse.Namespace) -> int:
    """Run the form of ``steps`` the options ask for.

    Returns:
        0 on success; 1 when a source or a step failed at run time.

    Raises:
        UsageError: invalid settings, arguments or steps.
    """
    if args.deployment is not None and args.run is None:
        raise UsageError(["--deployment applies to --run FILE: give the prefect.yaml to run"])
    if args.run is not None:
        return run_steps(args)
    if args.from_checkout is not None:
        return propose_steps(args)
    return print_steps(args)


def propose_steps(args: argparse.Namespace) -> int:
    """Print the ``git_clone`` step for the checkout ``args.from_checkout``; warn on stderr.

    Raises:
        UsageError: the folder is no checkout, or it has no origin to clone from.
    """
    from runner_storage.steps.checkout import propose_git_clone  # noqa: PLC0415 - GitPython

    try:
        proposal = propose_git_clone(args.from_checkout)
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    for warning in proposal.warnings:
        print(f"runner-storage: warning: {warning}", file=sys.stderr)
    shared.print_document({"pull": [proposal.step]}, args.format)
    return shared.EXIT_OK


def run_steps(args: argparse.Namespace) -> int:
    """Run one deployment's pull section of ``args.run`` in the working directory.

    Placeholders are resolved from the environment, the settings' ``blocks_file`` (with
    the secrets directory) and ``variables``, and earlier steps' outputs; each step's
    output is printed as YAML or JSON when all have run.

    Returns:
        0 when every step ran; 1 when one failed at run time (the rest do not run).

    Raises:
        UsageError: the file, the deployment, a placeholder or a step's inputs are wrong.
    """
    import anyio  # noqa: PLC0415 - only the commands that pull need it

    from runner_storage.deployments.runner import StepFailedError, run_pull_steps  # noqa: PLC0415
    from runner_storage.steps.blockfile import BlockFile  # noqa: PLC0415
    from runner_storage.steps.prefect_yaml import (  # noqa: PLC0415
        PullStep,
        StepContext,
        read_prefect_yaml,
        select_deployments,
    )
    from service.config import secrets_dir  # noqa: PLC0415 - pydantic-settings

    path: Path = args.run
    try:
        names = [args.deployment] if args.deployment else None
        selected = select_deployments(read_prefect_yaml(path), names, path=path)
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    if len(selected) > 1:
        listed = ", ".join(repr(deployment.name) for deployment in selected)
        raise UsageError([f"{path} has deployments {listed}: pick one with --deployment NAME"])
    (deployment,) = selected
    settings = shared.load_daemon_settings(
        args.config, {"prefect_yaml": None, "deployments": None}, need_sources=False
    )
    try:
        blocks = BlockFile.load(settings.blocks_file, secrets_dir=secrets_dir(os.environ))
    except ConfigurationError as exc:
        raise UsageError([f"blocks_file: {exc}"]) from None
    context = StepContext(environ=dict(os.environ), blocks=blocks, variables=settings.variables)
    ran: list[dict[str, Any]] = []

    def report(step: PullStep, output: Any) -> None:
        # A step of the user's may return anything: print what is not JSON as its text.
        printable = json.loads(json.dumps(dict(output), default=str))
        ran.append({"step": step.describe(), "id": step.id, "output": printable})

    where = f"{path}: deployment {deployment.name!r}"
    try:
        anyio.run(lambda: run_pull_steps(deployment, context, where=where, report=report))
    except StepFailedError as exc:
        if exc.configuration:
            raise UsageError([str(exc)]) from None
        print(f"runner-storage: steps failed: {exc}", file=sys.stderr)
        return shared.EXIT_FAILURE
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    shared.print_document({"steps": ran}, args.format)
    return shared.EXIT_OK


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
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--from-checkout",
        type=Path,
        metavar="DIR",
        help="propose the git_clone step for the git checkout DIR (as prefect deploy does)",
    )
    form.add_argument(
        "--run",
        type=Path,
        metavar="FILE",
        help="run a deployment's pull section of this prefect.yaml here, once, and print"
        " each step's output",
    )
    parser.add_argument(
        "--deployment", metavar="NAME", help="with --run: the deployment whose steps to run"
    )


COMMAND = Command(
    "steps",
    "print, propose or run prefect.yaml pull steps",
    steps_command,
    _arguments,
)
