"""``runner-storage push``: push a directory as a snapshot; print its id and the pinning step.

Credentials come from the root's filesystem's own environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``... for s3fs), so none is ever written into the output.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from service.cli import shared
from service.cli.shared import Command, UsageError

__all__ = ["COMMAND", "ProgressLine", "push_directory"]


class ProgressLine:
    """One line of progress on a terminal, rewritten in place, at most ten times a second."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._shown = 0.0
        self._lock = threading.Lock()
        self.active = stream.isatty()

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Show ``phase``: files hashed, or bytes uploaded, of ``total``."""
        import time  # noqa: PLC0415 - only on a terminal

        if not self.active:
            return
        with self._lock:
            now = time.monotonic()
            if done < total and now - self._shown < 0.1:
                return
            self._shown = now
            if phase == "uploading":
                text = f"uploading {_megabytes(done)} of {_megabytes(total)}"
            else:
                text = f"{phase} {done}/{total} files"
            width = 30
            filled = width * done // total if total else width
            self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
            self._stream.flush()

    def close(self) -> None:
        """Clear the line."""
        if self.active:
            self._stream.write("\r\033[K")
            self._stream.flush()


def push_directory(args: argparse.Namespace) -> int:
    """Push ``DIRECTORY`` to ``ROOT``; print the snapshot id and its pull step.

    Returns:
        0 when pushed; 1 when the store failed.

    Raises:
        UsageError: a bad directory, root, ref or ignore file, or a read-only root.
    """
    from runner_storage.snapshots.push import push_snapshot  # noqa: PLC0415 - fsspec
    from runner_storage.snapshots.storage import SnapshotStorage  # noqa: PLC0415

    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError([f"DIRECTORY {directory} does not exist or is not a directory"])
    if _has_password(args.root):
        # Refused before anything is written: the pull step printed after the push could
        # not hold it, and a ref moved by a push reported as failed would still be followed.
        raise UsageError(
            [
                "ROOT holds a password, which the printed pull step would carry: give the"
                " credentials through the filesystem's environment, or push with"
                " push_snapshot(..., password=Secret.from_env(...))"
            ]
        )
    progress = ProgressLine()
    try:
        try:
            info = push_snapshot(
                directory, args.root, ref=args.ref, ignore_file=args.ignore_file, progress=progress
            )
        finally:
            progress.close()
        step = SnapshotStorage(args.root, snapshot=info.id).to_pull_step()
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    except RunnerStorageError as exc:
        print(f"runner-storage: push failed: {exc}", file=sys.stderr)
        return shared.EXIT_FAILURE
    output: dict[str, Any] = {
        "snapshot": info.id,
        "ref": info.ref,
        "root": info.root,
        "files": info.files,
        "blobs_uploaded": info.blobs_uploaded,
        "bytes_uploaded": info.bytes_uploaded,
        "pull": [step],
    }
    shared.print_document(output, args.format)
    return shared.EXIT_OK


def _has_password(root: str) -> bool:
    from urllib.parse import urlsplit  # noqa: PLC0415 - only this command needs it

    try:
        return bool(urlsplit(root).password)
    except ValueError:
        return False  # not a URL: push_snapshot says what is wrong with it


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIRECTORY", help="the project folder to push")
    parser.add_argument(
        "root",
        metavar="ROOT",
        help="the snapshot root: an fsspec URL (s3://bucket/code, gs://..., az://...) or a path",
    )
    parser.add_argument("--ref", default="latest", help="the ref to point at it (default: latest)")
    parser.add_argument(
        "--ignore-file",
        type=Path,
        help="ignore rules in gitignore syntax (default: the directory's .prefectignore)",
    )
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")


COMMAND = Command(
    "push",
    "push a directory as a snapshot; print its id and the pull step that pins it",
    push_directory,
    _arguments,
)
