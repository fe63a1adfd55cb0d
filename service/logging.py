"""structlog set-up: JSON lines on stdout when not a terminal, console output on one.

Commands that log only through the standard library (``pull``) call
:func:`configure_library_logging` alone and never load structlog.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, Literal, TextIO

__all__ = ["configure_library_logging", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    *,
    format: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and the stdlib root logger) for the daemon and CLI.

    Args:
        format: ``json``, ``console``, or ``auto`` (console on a terminal, else JSON).
        level: the minimum level: debug, info, warning or error.
        stream: where lines go; stdout by default.
    """
    import structlog  # noqa: PLC0415 - slow to load; configure_library_logging needs none

    stream = stream or sys.stdout
    use_json = format == "json" or (format == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    configure_library_logging(level=level, stream=stream)
    if use_json:
        # Records of the standard library (and warnings) as JSON lines like every other.
        formatter = structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
        for handler in logging.getLogger().handlers:
            handler.setFormatter(formatter)


def configure_library_logging(*, level: str = "info", stream: TextIO | None = None) -> None:
    """Send the library's log records and warnings (e.g. plain-HTTP credentials) to ``stream``.

    Args:
        level: the minimum level: debug, info, warning or error (never below warning).
        stream: where lines go; stdout by default.
    """
    logging.basicConfig(
        level=max(_LEVELS[level], logging.WARNING),
        stream=stream or sys.stdout,
        force=True,
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.showwarning = _log_warning


def _log_warning(  # noqa: PLR0917 - warnings.showwarning's signature
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning as one log record: its category and text, never the source line."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def get_logger(name: str = "runner_storage") -> Any:
    """A structlog logger bound to ``name``."""
    import structlog  # noqa: PLC0415 - as in configure_logging

    return structlog.get_logger(name)
