"""Prefect 1 flow storages as sources (the module path mirrors ``prefect.storage``).

Each class takes Prefect 1's constructor arguments and keeps the flow's code current on
the worker through the same engines as every other source (git for every git host, the
single-object path for buckets, an HTTP source for webhooks), so it publishes through the
on-disk contract; ``flow_path`` is the flow file inside the published tree and
``to_pull_step()`` gives the Prefect 3 pull steps that do the same.

* :mod:`~runner_storage.storage.secrets`: :class:`NamedSecret`, Prefect 1's named secrets.
* :mod:`~runner_storage.storage.git`: :class:`Git`, and the base of every git host.
* :mod:`~runner_storage.storage.hosts`: :class:`GitHub`, :class:`GitLab`,
  :class:`Bitbucket`.
* :mod:`~runner_storage.storage.codecommit`: :class:`CodeCommit` and its SigV4 login
  (:mod:`~runner_storage.storage.sigv4`).
* :mod:`~runner_storage.storage.buckets`: :class:`S3`, :class:`GCS`, :class:`Azure`.
* :mod:`~runner_storage.storage.webhook`: :class:`Webhook`.
* :mod:`~runner_storage.storage.local`: :class:`Local`, :class:`Module`.
* :mod:`~runner_storage.storage.docker`: :class:`Docker`, over the registry HTTP API
  (:mod:`~runner_storage.storage.registry`).

Script-based storage only: a pickled flow is refused, since unpickling fetched bytes runs
arbitrary code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner_storage._lazy import lazy_exports

if TYPE_CHECKING:
    from runner_storage.storage.buckets import GCS, S3, Azure
    from runner_storage.storage.codecommit import CodeCommit
    from runner_storage.storage.docker import Docker
    from runner_storage.storage.git import Git
    from runner_storage.storage.hosts import Bitbucket, GitHub, GitLab
    from runner_storage.storage.local import Local, Module
    from runner_storage.storage.secrets import NamedSecret
    from runner_storage.storage.webhook import Webhook

__all__ = [
    "GCS",
    "S3",
    "Azure",
    "Bitbucket",
    "CodeCommit",
    "Docker",
    "Git",
    "GitHub",
    "GitLab",
    "Local",
    "Module",
    "NamedSecret",
    "Webhook",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "GCS": "runner_storage.storage.buckets",
        "S3": "runner_storage.storage.buckets",
        "Azure": "runner_storage.storage.buckets",
        "Bitbucket": "runner_storage.storage.hosts",
        "CodeCommit": "runner_storage.storage.codecommit",
        "Docker": "runner_storage.storage.docker",
        "Git": "runner_storage.storage.git",
        "GitHub": "runner_storage.storage.hosts",
        "GitLab": "runner_storage.storage.hosts",
        "Local": "runner_storage.storage.local",
        "Module": "runner_storage.storage.local",
        "NamedSecret": "runner_storage.storage.secrets",
        "Webhook": "runner_storage.storage.webhook",
    },
)
