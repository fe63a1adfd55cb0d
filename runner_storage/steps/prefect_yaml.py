"""A prefect.yaml's pull sections, read and resolved as Prefect's worker resolves them.

:func:`read_prefect_yaml` gives each deployment's pull steps (a deployment without its own
``pull`` uses the file's top-level one, as ``prefect deploy`` does); :class:`StepContext`
resolves their placeholders (:mod:`~runner_storage.steps.templating`) from the
environment, a :class:`~runner_storage.steps.blockfile.BlockFile`, a table of variables
and earlier steps' outputs. :func:`runner_storage.deployments.runner.run_pull_steps` runs
a section once in this process, like the worker before a flow run; the daemon turns the
same steps into sources instead (:mod:`service.prefect_yaml`).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError
from runner_storage.steps.blockfile import BlockFile, parse_error
from runner_storage.steps.templating import (
    Placeholder,
    PlaceholderKind,
    UnresolvedPlaceholderError,
    lookup_path,
    render,
)

__all__ = [
    "BLOCK_FILE",
    "KNOWN_STEPS",
    "Deployment",
    "PullStep",
    "StepContext",
    "read_prefect_yaml",
    "select_deployments",
]

#: The modules whose steps runner-storage knows by their function's name.
_STEP_MODULES = frozenset(
    {
        "prefect.deployments.steps",
        "prefect.deployments.steps.pull",
        "prefect.deployments.steps.utility",
        "prefect.projects.steps",
        "runner_storage.deployments.steps",
    }
)
#: A known step's function name -> what it does.
KNOWN_STEPS: Mapping[str, str] = {
    "git_clone": "git_clone",
    "agit_clone": "git_clone",
    "git_clone_project": "git_clone",
    "pull_from_remote_storage": "pull_from_remote_storage",
    "pull_snapshot": "pull_snapshot",
    "apull_snapshot": "pull_snapshot",
    "pull_with_block": "pull_with_block",
    "pull_package": "pull_package",
    "apull_package": "pull_package",
    "set_working_directory": "set_working_directory",
    "pull_codecommit": "pull_codecommit",
    "pull_docker_image": "pull_docker_image",
    "pull_webhook": "pull_webhook",
    "run_shell_script": "run_shell_script",
    "pip_install_requirements": "pip_install_requirements",
}

#: Steps that are no sources of code: they only make sense inside a flow run.
FLOW_RUN_STEPS = frozenset({"run_shell_script", "pip_install_requirements"})

#: Prefect's reserved step keywords, taken out of a step's inputs.
_RESERVED = ("id", "requires")

#: The block file ``pull_with_block`` reads first (set by ``run_pull_steps``; otherwise
#: the file ``RUNNER_STORAGE_BLOCKS_FILE`` names).
BLOCK_FILE: contextvars.ContextVar[BlockFile | None] = contextvars.ContextVar(
    "runner_storage_block_file", default=None
)


@dataclass(frozen=True)
class PullStep:
    """One step of a pull section, as written (placeholders unresolved).

    Attributes:
        index: its position in the section, from 1.
        function: the fully qualified name of its function.
        inputs: its keyword arguments, without ``id`` and ``requires``.
        id: its ``id``, under which later steps find its output.
        requires: its ``requires`` (what Prefect's worker installs first).
    """

    index: int
    function: str
    inputs: dict[str, Any]
    id: str | None = None
    requires: Any = None

    @property
    def kind(self) -> str | None:
        """What a known step does (see :data:`KNOWN_STEPS`); None for other functions."""
        module, _, name = self.function.rpartition(".")
        return KNOWN_STEPS.get(name) if module in _STEP_MODULES else None

    def describe(self) -> str:
        """``step 2 (git_clone)``: how messages name it."""
        return f"step {self.index} ({self.function.rpartition('.')[2]})"


@dataclass(frozen=True)
class Deployment:
    """A deployment's name and its pull steps."""

    name: str
    steps: tuple[PullStep, ...]


def read_prefect_yaml(path: Path) -> list[Deployment]:
    """Every deployment of a prefect.yaml with the pull steps it runs.

    A file without deployments gives one, named by its ``name`` (or ``default``), with the
    top-level pull section.

    Raises:
        ConfigurationError: the file is unreadable, or a step is not shaped as Prefect's
            ``{function: {inputs}}``; one line naming the deployment and step.
    """
    import yaml  # noqa: PLC0415 - only prefect.yaml users need it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read prefect.yaml {path}: {exc.strerror or exc}; give the path of a"
            " readable file"
        ) from None
    except yaml.YAMLError as exc:
        reason = parse_error(exc)
        raise ConfigurationError(f"prefect.yaml {path} cannot be parsed: {reason}") from None
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"prefect.yaml {path}: expected a mapping at its top")
    top = data.get("pull")
    entries = data.get("deployments") or []
    if not isinstance(entries, list):
        raise ConfigurationError(f"prefect.yaml {path}: deployments must be a list")
    if not entries:
        name = data.get("name") if isinstance(data.get("name"), str) else "default"
        return [Deployment(str(name), _steps(top, path, str(name)))]
    deployments = []
    for position, entry in enumerate(entries, 1):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ConfigurationError(
                f"prefect.yaml {path}: deployment {position} has no name: give each a name"
            )
        pull = entry["pull"] if entry.get("pull") is not None else top
        deployments.append(Deployment(entry["name"], _steps(pull, path, entry["name"])))
    return deployments


def _steps(section: Any, path: Path, deployment: str) -> tuple[PullStep, ...]:
    where = f"prefect.yaml {path}: deployment {deployment!r}"
    if section is None:
        return ()
    if not isinstance(section, list):
        raise ConfigurationError(f"{where}: pull must be a list of steps")
    steps = []
    for index, step in enumerate(section, 1):
        if not step:
            continue  # Prefect skips empty steps
        if not isinstance(step, Mapping) or len(step) != 1:
            raise ConfigurationError(
                f"{where}: step {index} must be one function name with its inputs, as"
                " `- prefect.deployments.steps.git_clone: {repository: ...}`"
            )
        ((function, given),) = step.items()
        if not isinstance(function, str) or not isinstance(given, Mapping | None):
            raise ConfigurationError(
                f"{where}: step {index} must give its inputs as a mapping, as"
                " `- prefect.deployments.steps.git_clone: {repository: ...}`"
            )
        inputs = dict(given or {})
        keywords = {key: inputs.pop(key) for key in _RESERVED if key in inputs}
        step_id = keywords.get("id")
        steps.append(
            PullStep(
                index,
                function,
                inputs,
                id=str(step_id) if step_id is not None else None,
                requires=keywords.get("requires"),
            )
        )
    return tuple(steps)


def select_deployments(
    deployments: Sequence[Deployment], names: Sequence[str] | None, *, path: Path
) -> list[Deployment]:
    """The deployments named (all of them for None or empty), in the file's order.

    Raises:
        ConfigurationError: a name is not in the file; the message lists the names there.
    """
    if not names:
        return list(deployments)
    known = {deployment.name for deployment in deployments}
    missing = [name for name in names if name not in known]
    if missing:
        raise ConfigurationError(
            f"prefect.yaml {path} has no deployment {', '.join(map(repr, missing))}:"
            f" it has {', '.join(sorted(map(repr, known))) or 'none'}"
        )
    return [deployment for deployment in deployments if deployment.name in names]


@dataclass
class StepContext:
    """Where placeholders get their values.

    Attributes:
        environ: the environment (``{{ $VAR }}``).
        blocks: block documents (``{{ prefect.blocks.TYPE.NAME }}``).
        variables: variables by name (``{{ prefect.variables.NAME }}``).
        outputs: earlier steps' outputs, each under its step's ``id`` and merged at the top
            level too, as Prefect keeps them.
    """

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    blocks: BlockFile = field(default_factory=BlockFile)
    variables: Mapping[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def resolve(self, placeholder: Placeholder) -> Any:
        """The value of one placeholder.

        Raises:
            UnresolvedPlaceholderError: it has none; the message says where it was looked for.
        """
        kind = placeholder.kind
        if kind is PlaceholderKind.ENV:
            if placeholder.key not in self.environ:
                raise UnresolvedPlaceholderError(
                    placeholder, f"the environment variable {placeholder.key} is not set"
                )
            return self.environ[placeholder.key]
        if kind is PlaceholderKind.VARIABLE:
            if placeholder.key not in self.variables:
                raise UnresolvedPlaceholderError(
                    placeholder,
                    f"no variable {placeholder.key!r}: add it to the variables table",
                )
            return self.variables[placeholder.key]
        if kind is PlaceholderKind.BLOCK:
            try:
                return self.blocks.value(placeholder.key)
            except KeyError as exc:
                raise UnresolvedPlaceholderError(placeholder, str(exc.args[0])) from None
        try:
            return lookup_path(self.outputs, placeholder.key)
        except KeyError:
            raise UnresolvedPlaceholderError(
                placeholder,
                "no earlier step gives it: give the step that does an id, and name its"
                " output as {{ id.directory }}",
            ) from None

    def record(self, step: PullStep, output: Any) -> None:
        """Keep a step's output for the steps after it, as Prefect's ``run_steps``."""
        if not isinstance(output, Mapping):
            return
        if step.id:
            self.outputs[step.id] = dict(output)
        self.outputs.update(output)

    def render(self, step: PullStep, *, where: str) -> dict[str, Any]:
        """The step's inputs with every placeholder resolved.

        Raises:
            ConfigurationError: a placeholder cannot be resolved; one line naming it,
                ``where`` (the deployment) and the step.
        """
        try:
            rendered: dict[str, Any] = render(step.inputs, self.resolve)
        except UnresolvedPlaceholderError as exc:
            raise ConfigurationError(f"{where}, {step.describe()}: {exc}") from None
        return rendered
