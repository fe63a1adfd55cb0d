"""``runner-storage check``: validate the settings and reach every source; publish nothing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from runner_storage.local import LocalStorage
from runner_storage.secrets import strip_url_credentials
from service.cli import shared
from service.cli.shared import Command, add_config_option

if TYPE_CHECKING:
    from runner_storage.publish.managed import ManagedStorage

__all__ = ["COMMAND", "check_sources"]


def check_sources(args: argparse.Namespace) -> int:
    """Resolve every source's revision, one ``ok``/``FAIL`` line each.

    Returns:
        0 when every source answered, 1 when one did not.

    Raises:
        UsageError: invalid settings.
    """
    import anyio  # noqa: PLC0415 - only the commands that pull need it

    failures = 0
    for source, storage in shared.build_all(shared.load_daemon_settings(args.config)):
        name = str(storage.destination) if isinstance(storage, LocalStorage) else storage.name
        try:
            revision = anyio.run(_resolve, storage)
        except RunnerStorageError as exc:
            failures += 1
            print(f"FAIL {name}: {exc}")
            continue
        shown = strip_url_credentials(source.source) if revision is None else revision
        print(f"ok   {name}: {shown}")
    return shared.EXIT_FAILURE if failures else shared.EXIT_OK


async def _resolve(storage: ManagedStorage | LocalStorage) -> str | None:
    if isinstance(storage, LocalStorage):
        if not storage.destination.is_dir():
            raise ConfigurationError(f"{storage.destination} is not a directory")
        return str(storage.destination)
    revision = await storage.check()
    return None if revision is None else revision.id


COMMAND = Command(
    "check", "validate settings and reach every source", check_sources, add_config_option
)
