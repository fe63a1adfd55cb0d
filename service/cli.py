"""The ``runner-storage`` command.

Exit codes: 0 success; 1 a pull or check failed at runtime; 2 usage or configuration error.

Each command imports what it needs when it runs: ``--version``, ``--help`` and ``status``
load neither pydantic, structlog, anyio nor any backend (``tests/test_imports.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from runner_storage.credentials import strip_url_credentials
from runner_storage.exceptions import ConfigurationError, NotFoundError, RunnerStorageError
from runner_storage.local import LocalStorage
from runner_storage.state import METADATA_DIR, SourceState, age_seconds, read_state

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from pydantic import ValidationError

    from runner_storage.managed import ManagedStorage
    from service.config import DaemonSettings, SourceSettings

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad settings or arguments: exit 2 with these lines."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console script exits with it)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except _UsageError as exc:
        for line in exc.lines:
            print(f"runner-storage: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show program's version number and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from runner_storage import __version__  # noqa: PLC0415 - only --version needs it

        print(f"{parser.prog} {__version__}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runner-storage",
        description="Keep workers' code in sync with git repositories, object stores and HTTP.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon: keep every configured source current")
    _config_option(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="pull every source once and exit; 0 only if all succeeded",
    )
    run.set_defaults(handler=_cmd_run)

    pull = commands.add_parser("pull", help="pull one source once and publish it")
    pull.add_argument("source", help="git URL, fsspec URL (s3://, gs://, az://, https://) or path")
    pull.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="base directory to publish under (default: current directory)",
    )
    pull.add_argument("--name", help="destination name under --dest (git sources)")
    pull.add_argument("--branch", help="branch or tag (git sources)")
    pull.add_argument("--commit-sha", help="commit to publish (git sources)")
    pull.add_argument("--directories", help="comma-separated directories (git sparse checkout)")
    pull.add_argument(
        "--depth", type=int, default=1, help="git history depth; 0 = full (default 1)"
    )
    pull.add_argument("--json", action="store_true", help="print the result as JSON")
    pull.set_defaults(handler=_cmd_pull)

    steps = commands.add_parser("steps", help="print the prefect.yaml pull: section")
    _config_option(steps)
    steps.add_argument("--format", choices=("yaml", "json"), default="yaml")
    steps.set_defaults(handler=_cmd_steps)

    check = commands.add_parser("check", help="validate settings and reach every source")
    _config_option(check)
    check.set_defaults(handler=_cmd_check)

    status = commands.add_parser("status", help="show each source's published state")
    status.add_argument(
        "--root",
        type=Path,
        default=None,
        help="base directory (default: RUNNER_STORAGE_ROOT or the current one)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_cmd_status)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML or YAML settings file (default: RUNNER_STORAGE_CONFIG)",
    )


def _settings(args: argparse.Namespace) -> DaemonSettings:
    # pydantic-settings: loaded only by the commands that read settings
    from service.config import DaemonSettings, SettingsError, load_settings  # noqa: PLC0415

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        # The sources that are valid on their own still get their per-kind checks, so that
        # every problem is reported at once.
        _, problems = _build_sources(exc.sources, DaemonSettings.model_construct())
        raise _UsageError(exc.problems + problems) from None
    if not settings.all_sources():
        raise _UsageError(
            [
                "no sources configured: add [[sources]] to the config file or set"
                " RUNNER_STORAGE_SOURCE"
            ]
        )
    return settings


def _build_all(
    settings: DaemonSettings,
) -> list[tuple[SourceSettings, ManagedStorage | LocalStorage]]:
    built, problems = _build_sources(list(enumerate(settings.all_sources())), settings)
    if problems:
        raise _UsageError(problems)
    return built


def _build_sources(
    sources: list[tuple[int, SourceSettings]], settings: DaemonSettings
) -> tuple[list[tuple[SourceSettings, ManagedStorage | LocalStorage]], list[str]]:
    """Build each source's storage; the problems, one line each, name the source's index."""
    from service.sources import build_storage  # noqa: PLC0415 - imports the backends

    built: list[tuple[int, SourceSettings, ManagedStorage | LocalStorage]] = []
    problems = []
    for index, source in sources:
        try:
            built.append((index, source, build_storage(source, settings)))
        except ConfigurationError as exc:
            # The source as given may carry credentials: never echo them.
            shown = strip_url_credentials(source.source)
            problems.append(f"sources[{index}] ({shown}): {exc}")
    problems += _destination_conflicts(built)
    return [(source, storage) for _, source, storage in built], problems


def _destination_conflicts(
    built: list[tuple[int, SourceSettings, ManagedStorage | LocalStorage]],
) -> list[str]:
    """Sources that would use the same folder, or publish one inside another's.

    One line per source at most; equal explicit names are left to the settings check,
    which reports them already.
    """
    problems = []
    seen: list[tuple[int, SourceSettings, Path, bool]] = []
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


def _cmd_run(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - only the commands that pull need it

    from runner_storage import __version__  # noqa: PLC0415 - importlib.metadata is slow
    from service.logging import configure_logging  # noqa: PLC0415 - structlog is slow to load

    settings = _settings(args)
    configure_logging(format=settings.log_format, level=settings.log_level)
    built = _build_all(settings)
    from service.daemon import Daemon, SourceRuntime  # noqa: PLC0415 - only the daemon needs it

    serve_http: Callable[..., Coroutine[Any, Any, None]] | None = None
    if settings.http_port is not None:
        # aiohttp's server is loaded only when there is something to serve.
        from service.http import serve_http  # noqa: PLC0415

    try:
        settings.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(
            [
                f"cannot create the root {settings.root}: {exc.strerror}; set root to a"
                " directory this user can write"
            ]
        ) from None
    daemon = Daemon(settings, [SourceRuntime(source, storage) for source, storage in built])
    daemon.log.info(
        "daemon_starting",
        version=__version__,
        sources=len(built),
        root=str(settings.root),
        once=args.once,
    )
    code: int = anyio.run(lambda: daemon.run(once=args.once, serve_http=serve_http))
    _exit_if_threads_linger(code)
    return code


def _exit_if_threads_linger(code: int) -> None:
    """Exit at once if a transfer abandoned by a timeout or a signal still runs in a thread.

    An object-store call cannot be interrupted inside its thread (a stalled or throttling
    server can hold it for minutes); Python would wait for it at exit, and SIGTERM would no
    longer stop the daemon promptly. Nothing such a thread does is ever published.
    """
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _cmd_pull(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - only the commands that pull need it
    from pydantic import ValidationError  # noqa: PLC0415 - only commands that read settings

    from service.config import (  # noqa: PLC0415 - as pydantic
        SettingsError,
        SourceSettings,
        load_settings,
    )
    from service.logging import configure_logging  # noqa: PLC0415 - structlog is slow to load

    configure_logging(format="console", level="warning", stream=sys.stderr)
    directories = [d for d in (args.directories or "").split(",") if d.strip()] or None
    options: dict[str, Any] = {
        "source": args.source,
        "pull_interval": None,
        "depth": args.depth,
        "name": args.name,
        "branch": args.branch,
        "commit_sha": args.commit_sha,
        "directories": directories,
    }
    # Of the daemon's settings only retention applies to one pull; a sidecar's
    # RUNNER_STORAGE_SOURCE and the like must not leak in.
    retention = {
        key: value
        for key, value in os.environ.items()
        if key.upper() in ("RUNNER_STORAGE_KEEP_VERSIONS", "RUNNER_STORAGE_GRACE_PERIOD")
    }
    try:
        settings = load_settings(environ=retention)
    except SettingsError as exc:
        raise _UsageError(exc.problems) from None
    try:
        source = SourceSettings(**options)
        settings = settings.model_copy(update={"root": _check_dest(args.dest or Path.cwd())})
    except ValidationError as exc:
        raise _UsageError([_option_problem(exc)]) from None
    ((_, storage),) = _build_all(settings.model_copy(update={"sources": [source]}))
    label = args.source if isinstance(storage, LocalStorage) else storage.redact(args.source)
    try:
        if isinstance(storage, LocalStorage) and not storage.destination.is_dir():
            raise NotFoundError(
                f"{storage.destination} does not exist or is not a directory: give an existing"
                " folder, or a git or object-store URL"
            )
        result = _with_progress(f"pulling {label}", lambda: anyio.run(storage.pull_code))
    except RunnerStorageError as exc:
        print(f"runner-storage: pull failed: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_FAILURE
    if args.json:
        print(
            json.dumps(
                {
                    "destination": str(storage.destination),
                    "revision": result.revision,
                    "changed": result.changed,
                    "files_fetched": result.files_fetched,
                    "bytes_fetched": result.bytes_fetched,
                    "duration": round(result.duration, 3),
                }
            )
        )
    else:
        what = "published" if result.changed else "up to date"
        print(
            f"{what}: {storage.destination} at {result.revision[:12]}"
            f" ({result.files_fetched} files, {_size(result.bytes_fetched)} fetched"
            f" in {result.duration:.2f}s)"
        )
    return EXIT_OK


def _check_dest(dest: Path) -> Path:
    """``dest`` made absolute, after checking that it is or can become a directory."""
    dest = dest.resolve()
    for path in (dest, *dest.parents):
        if path.exists():
            if not path.is_dir():
                raise _UsageError([f"--dest {dest}: {path} is not a directory; choose a directory"])
            break
    return dest


def _option_problem(exc: ValidationError) -> str:
    """One line for the first invalid command-line value: the option and what is wrong."""
    error = exc.errors(include_url=False, include_input=False)[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    if field == "source":
        return "SOURCE is empty: give a git URL, an object-store URL (s3://...) or a path"
    option = "--" + field.replace("_", "-") if field else "settings"
    return f"{option}: {error['msg'].removeprefix('Value error, ')}"


def _with_progress(label: str, work: Callable[[], Any], stream: TextIO = sys.stderr) -> Any:
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


def _cmd_steps(args: argparse.Namespace) -> int:
    settings = _settings(args)
    steps: list[dict[str, Any]] = []
    problems = []
    for source, storage in _build_all(settings):
        try:
            step = storage.to_pull_step()
        except ConfigurationError as exc:
            problems.append(f"{strip_url_credentials(source.source)}: {exc}")
            continue
        steps.append(step)
    if problems:
        raise _UsageError(problems)
    if args.format == "json":
        print(json.dumps({"pull": steps}, indent=2))
    else:
        import yaml  # noqa: PLC0415 - only this command needs it

        print(yaml.safe_dump({"pull": steps}, sort_keys=False), end="")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - only the commands that pull need it

    settings = _settings(args)
    built = _build_all(settings)
    failures = 0
    for source, storage in built:
        name = str(storage.destination) if isinstance(storage, LocalStorage) else storage.name
        try:
            revision = anyio.run(_resolve, storage)
        except RunnerStorageError as exc:
            failures += 1
            print(f"FAIL {name}: {exc}")
            continue
        shown = strip_url_credentials(source.source) if revision is None else revision
        print(f"ok   {name}: {shown}")
    return EXIT_FAILURE if failures else EXIT_OK


async def _resolve(storage: ManagedStorage | LocalStorage) -> str | None:
    if isinstance(storage, LocalStorage):
        if not storage.destination.is_dir():
            raise ConfigurationError(f"{storage.destination} is not a directory")
        return str(storage.destination)
    revision = await storage.check()
    return None if revision is None else revision.id


def _cmd_status(args: argparse.Namespace) -> int:
    root = args.root
    if root is None:
        root = Path(os.environ.get("RUNNER_STORAGE_ROOT") or Path.cwd())
    try:
        states = _find_states(root)
    except RunnerStorageError as exc:
        print(f"runner-storage: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        rows = [
            {
                "name": name,
                "revision": state.revision,
                "published_at": state.published_at,
                "last_success_age_seconds": age_seconds(state.last_success_at),
                "consecutive_failures": state.consecutive_failures,
                "last_error": state.last_error,
                "source": state.source,
            }
            for name, state in states
        ]
        print(json.dumps({"root": str(root), "sources": rows}, indent=2))
        return EXIT_OK
    if not states:
        print(f"no sources published under {root}")
        return EXIT_OK
    table = [("NAME", "REVISION", "LAST SUCCESS", "FAILURES", "LAST ERROR")]
    table += [
        (
            name,
            (state.revision or "-")[:12],
            _age(age_seconds(state.last_success_at)),
            str(state.consecutive_failures),
            (state.last_error or "-")[:100],
        )
        for name, state in states
    ]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[4]]))
    return EXIT_OK


def _find_states(root: Path) -> list[tuple[str, SourceState]]:
    meta = root / METADATA_DIR
    found = []
    for path in sorted(meta.rglob("state.json")) if meta.is_dir() else []:
        name = path.parent.relative_to(meta).as_posix()
        if name.startswith("."):
            continue
        state = read_state(root, name)
        if state is not None:
            found.append((name, state))
    return found


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
