"""structlog set-up: JSON lines on stdout when not a terminal, console output on one."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]

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
    # Library warnings (e.g. plain-HTTP credentials) reach the same stream.
    logging.basicConfig(
        level=max(_LEVELS[level], logging.WARNING),
        stream=stream,
        force=True,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)


def get_logger(name: str = "runner_storage") -> Any:
    """A structlog logger bound to ``name``."""
    return structlog.get_logger(name)
