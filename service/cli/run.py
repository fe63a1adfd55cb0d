"""``runner-storage run [--once]``: the daemon, or one pull of every source (init containers)."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli import shared
from service.cli.shared import Command, UsageError, add_config_option

if TYPE_CHECKING:
    from service.daemon import OpenEndpoints

__all__ = ["COMMAND", "MALLOC_ARENAS", "limit_malloc_arenas", "run_daemon"]

#: The most malloc arenas the daemon's glibc keeps (``MALLOC_ARENA_MAX``, if set, wins).
MALLOC_ARENAS = 2
#: glibc's ``mallopt`` parameter for it.
_M_ARENA_MAX = -8


def limit_malloc_arenas() -> bool:
    """Have glibc keep at most :data:`MALLOC_ARENAS` malloc arenas in this process.

    The daemon lists object stores from worker threads; glibc gives each thread that
    allocates at once an arena of its own (up to eight per core), and each keeps the peak
    of one listing's parse. That held ~15 MB more in the bench's resting daemon (20
    sources) than one thread parsing all listings did. ``MALLOC_ARENA_MAX=2`` does the same
    from outside; when it is set it is left to glibc. Returns whether the limit was set
    here (False on a C library without ``mallopt``, such as musl).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes  # noqa: PLC0415 - the daemon only

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, MALLOC_ARENAS))


def run_daemon(args: argparse.Namespace) -> int:
    """Run the daemon until a signal, or with ``--once`` until every source was pulled.

    Returns:
        The daemon's exit code; 2 when the HTTP endpoints cannot listen.

    Raises:
        UsageError: invalid settings, or a root this user cannot create.
    """
    import anyio  # noqa: PLC0415 - only the commands that pull need it

    limit_malloc_arenas()
    from runner_storage import __version__  # noqa: PLC0415 - importlib.metadata is slow
    from service.logging import configure_logging  # noqa: PLC0415 - structlog is slow to load

    overrides: dict[str, object] = {}
    if args.prefect_yaml is not None:
        overrides["prefect_yaml"] = args.prefect_yaml
    if args.deployment:
        overrides["deployments"] = args.deployment
    settings = shared.load_daemon_settings(args.config, overrides)
    configure_logging(format=settings.log_format, level=settings.log_level)
    built = shared.build_all(settings)
    from service.daemon import Daemon, SourceRuntime, StartupError  # noqa: PLC0415

    open_endpoints: OpenEndpoints | None = None
    if settings.http_port is not None:
        # aiohttp's server is loaded only when there is something to serve.
        from service.http import open_endpoints  # noqa: PLC0415

    try:
        settings.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            [
                f"cannot create the root {settings.root}: {exc.strerror}; set root to a"
                " directory this user can write"
            ]
        ) from None
    daemon = Daemon(settings, [SourceRuntime(source, storage) for source, storage in built])
    for note in settings.notes:
        daemon.log.warning("prefect_yaml_step_skipped", detail=note)
    daemon.log.info(
        "daemon_starting",
        version=__version__,
        sources=len(built),
        root=str(settings.root),
        once=args.once,
    )
    try:
        code: int = anyio.run(lambda: daemon.run(once=args.once, open_endpoints=open_endpoints))
    except StartupError as exc:
        # Not a usage error of the command line, but settings all the same: exit 2, which
        # a systemd unit's RestartPreventExitStatus=2 stops a restart loop on.
        print(f"runner-storage: {exc}", file=sys.stderr)
        code = shared.EXIT_USAGE
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


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--once",
        action="store_true",
        help="pull every source once, run its hooks, and exit; 0 only if all succeeded",
    )
    parser.add_argument(
        "--prefect-yaml",
        type=Path,
        metavar="FILE",
        help="keep the pull sections of this prefect.yaml's deployments current",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        metavar="NAME",
        help="only this deployment of the prefect.yaml (repeat for several; default all)",
    )


COMMAND = Command(
    "run", "run the daemon: keep every configured source current", run_daemon, _arguments
)
