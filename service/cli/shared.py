"""What several commands share: exit codes, usage errors, settings, storages, the spinner.

Importing this module stays cheap (``status`` and ``--help`` import it): pydantic, the
settings and the backends load inside the functions that need them.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from runner_storage.exceptions import ConfigurationError
from runner_storage.local import LocalStorage
from runner_storage.secrets import strip_url_credentials

if TYPE_CHECKING:
    from runner_storage.publish.managed import ManagedStorage
    from service.config import DaemonSettings
    from service.sources import SourceBase

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Built",
    "Command",
    "Publishing",
    "UsageError",
    "add_config_option",
    "build_all",
    "build_sources",
    "load_daemon_settings",
    "print_document",
    "with_progress",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: A source's settings and the storage built from them.
Built = tuple["SourceBase", "ManagedStorage | LocalStorage"]


@dataclass(frozen=True)
class Command:
    """One command: its name, its line in ``--help``, what runs it, and its arguments.

    ``run`` returns the exit code, or raises :class:`UsageError`.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]


class UsageError(Exception):
    """Bad settings or arguments: exit 2 with these lines."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, for the commands that read the daemon's settings."""
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML or YAML settings file (default: RUNNER_STORAGE_CONFIG)",
    )


def load_daemon_settings(
    config: Path | None, overrides: dict[str, Any] | None = None, *, need_sources: bool = True
) -> DaemonSettings:
    """The daemon's settings, with at least one source unless ``need_sources`` is False.

    Args:
        config: the ``--config`` file, if given.
        overrides: settings given by command-line options (they win).
        need_sources: whether settings without a source are a usage error.

    Raises:
        UsageError: every problem of the settings, and of the sources valid on their own.
    """
    # pydantic-settings: loaded only by the commands that read settings
    from service.config import DaemonSettings, SettingsError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(config, overrides=overrides)
    except SettingsError as exc:
        # The sources that are valid on their own still get their storages' checks, so
        # that every problem is reported at once.
        _, problems = build_sources(exc.sources, DaemonSettings.model_construct())
        raise UsageError(exc.problems + problems) from None
    if need_sources and not settings.all_sources():
        raise UsageError(
            [
                "no sources configured: add [[sources]] to the config file, set"
                " RUNNER_STORAGE_SOURCE, or give --prefect-yaml"
            ]
        )
    return settings


def build_all(settings: DaemonSettings) -> list[Built]:
    """Every source's storage.

    Raises:
        UsageError: a storage refused its options, or two sources would share a folder.
    """
    built, problems = build_sources(list(enumerate(settings.all_sources())), settings)
    if problems:
        raise UsageError(problems)
    return built


class Publishing(Protocol):
    """Where sources publish and what they keep: the daemon's settings, or one pull's."""

    @property
    def root(self) -> Path:
        """The base path every source publishes under."""

    @property
    def keep_versions(self) -> int:
        """How many published versions each source keeps."""

    @property
    def grace_period(self) -> float:
        """Seconds a retired version is kept at least."""


def build_sources(
    sources: list[tuple[int, SourceBase]], settings: Publishing
) -> tuple[list[Built], list[str]]:
    """Build each source's storage; the problems, one line each, name the source's index."""
    built: list[tuple[int, SourceBase, ManagedStorage | LocalStorage]] = []
    problems = []
    for index, source in sources:
        try:
            storage = source.build_storage(
                root=Path(settings.root),
                keep_versions=settings.keep_versions,
                grace_period=settings.grace_period,
            )
        except ConfigurationError as exc:
            # The source as given may carry credentials: never echo them.
            problems.append(f"sources[{index}] ({strip_url_credentials(source.source)}): {exc}")
            continue
        built.append((index, source, storage))
    problems += _destination_conflicts(built)
    return [(source, storage) for _, source, storage in built], problems


def _destination_conflicts(
    built: list[tuple[int, SourceBase, ManagedStorage | LocalStorage]],
) -> list[str]:
    """Sources that would use the same folder, or publish one inside another's.

    One line per source at most; equal explicit names are left to the settings check,
    which reports them already.
    """
    problems = []
    seen: list[tuple[int, SourceBase, Path, bool]] = []
    for index, source, storage in built:
        destination, managed = storage.destination, not isinstance(storage, LocalStorage)
        for other, other_source, other_path, other_managed in seen:
            if destination == other_path:
                if source.name is None or source.name != other_source.name:
                    problems.append(
                        f"sources[{index}] uses {destination}, as sources[{other}] does;"
                        " give one of them another name"
                    )
                break
            if (managed and other_managed) and (
                other_path in destination.parents or destination in other_path.parents
            ):
                problems.append(
                    f"sources[{index}] publishes to {destination}, which nests with"
                    f" sources[{other}]'s {other_path}; give them names that do not contain"
                    " each other"
                )
                break
        seen.append((index, source, destination, managed))
    return problems


def print_document(document: Any, form: str) -> None:
    """Print ``document`` as ``form``: ``json`` (indented) or ``yaml`` (keys in order)."""
    if form == "json":
        import json  # noqa: PLC0415 - as yaml, only for the commands that print documents

        print(json.dumps(document, indent=2))
        return
    import yaml  # noqa: PLC0415 - only the commands that print documents need it

    print(yaml.safe_dump(document, sort_keys=False), end="")


def with_progress(label: str, work: Callable[[], Any], stream: TextIO = sys.stderr) -> Any:
    """Run ``work``, showing a spinner with the elapsed time when ``stream`` is a terminal."""
    if not stream.isatty():
        return work()
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        frames = "|/-\\"
        index = 0
        while True:  # the first frame at once, so even a quick pull shows what it did
            elapsed = time.monotonic() - started
            stream.write(f"\r{frames[index % 4]} {label} {elapsed:.1f}s")
            stream.flush()
            index += 1
            if done.wait(0.1):
                break
        stream.write("\r\033[K")
        stream.flush()

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        return work()
    finally:
        done.set()
        spinner.join()
