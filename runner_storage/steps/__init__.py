"""Prefect deployment pull steps: written, resolved, run, and proposed.

* :mod:`~runner_storage.steps.emit`: the steps each storage's ``to_pull_step()`` writes,
  with placeholders where secrets would be.
* :mod:`~runner_storage.steps.templating`: Prefect's placeholders (``{{ $VAR }}``,
  ``{{ prefect.blocks.TYPE.NAME }}``, ``{{ prefect.variables.NAME }}``,
  ``{{ step-id.key }}``) and how a step's inputs are rendered.
* :mod:`~runner_storage.steps.blockfile`: :class:`BlockFile`, Prefect's blocks from a
  local TOML or YAML file and the secrets directory.
* :mod:`~runner_storage.steps.prefect_yaml`: a prefect.yaml's deployments, their pull
  steps and the context their placeholders resolve in (``runner_storage.deployments.
  runner.run_pull_steps`` runs one section as Prefect's worker does).
* :mod:`~runner_storage.steps.checkout`: :func:`propose_git_clone`, the ``git_clone`` step
  for a local checkout.

The emitters load with this package; every other name loads its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports
from runner_storage.steps.emit import (
    STEPS,
    git_clone_step,
    pull_from_remote_storage_step,
    pull_with_block_step,
    secret_placeholder,
    set_working_directory_step,
    with_placeholders,
)

if TYPE_CHECKING:
    from runner_storage.steps.blockfile import BlockFile
    from runner_storage.steps.checkout import CheckoutProposal, propose_git_clone
    from runner_storage.steps.prefect_yaml import (
        Deployment,
        PullStep,
        StepContext,
        read_prefect_yaml,
        select_deployments,
    )
    from runner_storage.steps.templating import (
        Placeholder,
        PlaceholderKind,
        UnresolvedPlaceholderError,
        find_placeholders,
        render,
    )

__all__ = [
    "STEPS",
    "BlockFile",
    "CheckoutProposal",
    "Deployment",
    "Placeholder",
    "PlaceholderKind",
    "PullStep",
    "StepContext",
    "UnresolvedPlaceholderError",
    "find_placeholders",
    "git_clone_step",
    "propose_git_clone",
    "pull_from_remote_storage_step",
    "pull_with_block_step",
    "read_prefect_yaml",
    "render",
    "secret_placeholder",
    "select_deployments",
    "set_working_directory_step",
    "with_placeholders",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BlockFile": "runner_storage.steps.blockfile",
        **dict.fromkeys(("CheckoutProposal", "propose_git_clone"), "runner_storage.steps.checkout"),
        **dict.fromkeys(
            (
                "Deployment",
                "PullStep",
                "StepContext",
                "read_prefect_yaml",
                "select_deployments",
            ),
            "runner_storage.steps.prefect_yaml",
        ),
        **dict.fromkeys(
            (
                "Placeholder",
                "PlaceholderKind",
                "UnresolvedPlaceholderError",
                "find_placeholders",
                "render",
            ),
            "runner_storage.steps.templating",
        ),
    },
)
