"""Prefect deployment pull steps.

* :mod:`~runner_storage.steps.emit`: the steps each storage's ``to_pull_step()`` writes,
  with placeholders where secrets would be.
"""

from __future__ import annotations

from runner_storage.steps.emit import (
    STEPS,
    git_clone_step,
    pull_from_remote_storage_step,
    pull_with_block_step,
    secret_placeholder,
    set_working_directory_step,
    with_placeholders,
)

__all__ = [
    "STEPS",
    "git_clone_step",
    "pull_from_remote_storage_step",
    "pull_with_block_step",
    "secret_placeholder",
    "set_working_directory_step",
    "with_placeholders",
]
