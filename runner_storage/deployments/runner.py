"""Run a prefect.yaml pull section once in this process, as Prefect's worker runs it.

Known steps (:data:`~runner_storage.steps.prefect_yaml.KNOWN_STEPS`, Prefect's names
included) run runner-storage's step functions (:mod:`runner_storage.deployments.steps`);
``run_shell_script`` and ``pip_install_requirements`` run as Prefect runs them; any other
step's function is imported by its name and called with its resolved inputs.
``runner-storage steps --run`` is this, with the settings' block file and variables.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import shlex
import string
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from runner_storage.exceptions import ConfigurationError, RunnerStorageError, one_line
from runner_storage.secrets import DESCEND, is_secret_like, resolve_secret, walk
from runner_storage.steps.prefect_yaml import BLOCK_FILE, Deployment, PullStep, StepContext

__all__ = ["StepFailedError", "revealed", "run_pull_steps"]


class StepFailedError(RunnerStorageError):
    """A pull step failed; the message names the deployment and the step.

    ``configuration`` tells bad input (a missing directory, an unknown argument) from a
    failure at run time (a server, a command that exited non-zero).
    """

    def __init__(self, label: str, reason: str, *, configuration: bool) -> None:
        super().__init__(f"{label}: {reason}")
        self.configuration = configuration


def revealed(value: Any) -> Any:
    """``value`` with every secret replaced by its text (for functions that are not ours)."""

    def reveal(item: Any, _key: str | None, _path: str) -> Any:
        return resolve_secret(item) if is_secret_like(item) else DESCEND

    return walk(value, reveal)


async def run_pull_steps(
    deployment: Deployment,
    context: StepContext,
    *,
    where: str,
    report: Callable[[PullStep, Mapping[str, Any]], None] = lambda _step, _output: None,
) -> dict[str, Any]:
    """Run a deployment's pull steps once in this process, as Prefect's worker does.

    Known steps run runner-storage's step functions (Prefect's names included); a flow-run
    step (``run_shell_script``, ``pip_install_requirements``) runs as Prefect runs it; any
    other step's function is imported and called with its resolved inputs. The working
    directory changes where a step says so.

    Args:
        deployment: the steps to run.
        context: where placeholders get their values; each output is recorded in it.
        where: how messages name the deployment.
        report: called with each step and its output.

    Returns:
        The outputs, as Prefect's ``run_steps`` returns them.

    Raises:
        ConfigurationError: a placeholder cannot be resolved, or a step's function cannot
            be imported; one line naming the step.
        RunnerStorageError: a step failed; the message names it.
    """
    token = BLOCK_FILE.set(context.blocks)
    try:
        for step in deployment.steps:
            inputs = context.render(step, where=where)
            output = await _run_one(step, inputs, where=where)
            context.record(step, output)
            report(step, output if isinstance(output, Mapping) else {})
    finally:
        BLOCK_FILE.reset(token)
    return dict(context.outputs)


async def _run_one(step: PullStep, inputs: dict[str, Any], *, where: str) -> Any:
    kind = step.kind
    label = f"{where}, {step.describe()}"
    function: Callable[..., Any]
    if kind == "run_shell_script":
        function, inputs = functools.partial(_run_shell_script, label), revealed(inputs)
    elif kind == "pip_install_requirements":
        function, inputs = functools.partial(_pip_install_requirements, label), revealed(inputs)
    elif kind is not None:
        from runner_storage.deployments import steps  # noqa: PLC0415 - the step functions

        # The async forms: this runs inside an event loop already.
        functions: dict[str, Callable[..., Any]] = {
            "git_clone": steps.agit_clone,
            "pull_snapshot": steps.apull_snapshot,
            "pull_package": steps.apull_package,
            "pull_from_remote_storage": steps.pull_from_remote_storage,
            "pull_with_block": steps.pull_with_block,
            "set_working_directory": steps.set_working_directory,
            "pull_codecommit": steps.pull_codecommit,
            "pull_docker_image": steps.pull_docker_image,
            "pull_webhook": steps.pull_webhook,
        }
        function = functions[kind]
    else:
        function, inputs = _import_step(step, label), revealed(inputs)
    try:
        result = function(**inputs)
        if inspect.isawaitable(result):
            result = await result
    except StepFailedError:
        raise
    except TypeError as exc:  # inputs the function does not take
        raise StepFailedError(label, one_line(str(exc), 200), configuration=True) from None
    except RunnerStorageError as exc:
        configuration = isinstance(exc, ConfigurationError)
        raise StepFailedError(label, str(exc), configuration=configuration) from None
    except Exception as exc:  # noqa: BLE001 - a function of the user's: report, do not crash
        reason = f"{type(exc).__name__}: {one_line(str(exc), 200)}"
        raise StepFailedError(label, reason, configuration=False) from None
    return result


def _import_step(step: PullStep, label: str) -> Callable[..., Any]:
    module_name, _, name = step.function.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        hint = (
            f" (install what its requires names: {step.requires})"
            if step.requires
            else ": install the package that provides it"
        )
        raise ConfigurationError(f"{label}: cannot import {step.function}{hint}") from None
    if not callable(function):
        raise ConfigurationError(f"{label}: {step.function} is not a function")
    return function  # type: ignore[no-any-return]


async def _run_shell_script(  # noqa: PLR0917 - Prefect's signature after the label
    label: str,
    script: str,
    directory: str | None = None,
    env: Mapping[str, str] | None = None,
    stream_output: bool = True,
    expand_env_vars: bool = False,
    shell: bool = False,
) -> dict[str, str]:
    """Prefect's ``run_shell_script``: each line a command, split as a shell would.

    With ``shell``, each line runs through ``/bin/sh`` (pipes, redirects), as Prefect's.
    """
    environment = {**os.environ, **(env or {})}
    outputs: list[str] = []
    errors: list[str] = []
    for line in script.splitlines():
        if not line.strip():
            continue
        # As Prefect: $VAR and ${VAR} from the environment and env, when asked.
        command = string.Template(line).safe_substitute(environment) if expand_env_vars else line
        words = ["/bin/sh", "-c", command.strip()] if shell else shlex.split(command)
        result = await _run_process(
            label, words, directory=directory, env=environment, stream=stream_output
        )
        outputs.append(result.stdout.decode(errors="replace").strip())
        errors.append(result.stderr.decode(errors="replace").strip())
    return {
        "stdout": "\n".join(o for o in outputs if o),
        "stderr": "\n".join(e for e in errors if e),
    }


async def _pip_install_requirements(
    label: str,
    directory: str | None = None,
    requirements_file: str = "requirements.txt",
    stream_output: bool = True,
) -> dict[str, str]:
    """Prefect's ``pip_install_requirements``: ``python -m pip install -r FILE`` in DIR."""
    command = [sys.executable, "-m", "pip", "install", "-r", requirements_file]
    result = await _run_process(
        label, command, directory=directory, env=dict(os.environ), stream=stream_output
    )
    return {
        "stdout": result.stdout.decode(errors="replace").strip(),
        "stderr": result.stderr.decode(errors="replace").strip(),
    }


async def _run_process(
    label: str,
    command: list[str],
    *,
    directory: str | None,
    env: Mapping[str, str],
    stream: bool,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command``; with ``stream``, its output goes to stderr (stdout is the caller's).

    Raises:
        StepFailedError: it cannot start, or it exits non-zero (its output streamed first).
    """
    try:
        result = await anyio.run_process(
            command, cwd=directory, env=dict(env), check=False, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise StepFailedError(
            label, f"cannot run {command[0]!r}: {exc.strerror or exc}", configuration=True
        ) from None
    if stream:
        sys.stderr.write(result.stdout.decode(errors="replace"))
        sys.stderr.write(result.stderr.decode(errors="replace"))
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        tail = one_line(output[-1], 200) if output else "no output"
        raise StepFailedError(
            label, f"{command[0]!r} exited {result.returncode}: {tail}", configuration=False
        )
    return result
