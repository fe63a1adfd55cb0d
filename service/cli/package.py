"""``runner-storage package``: write a flow script to storage; print its manifest and pull step.

The storage is a :class:`~runner_storage.blocks.storage.FileStorageBlock` of ``--storage``
(any fsspec URL or local path); credentials come from the filesystem's own environment
(``AWS_ACCESS_KEY_ID``... for s3fs), so none is ever written into the manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError, RunnerStorageError
from service.cli import shared
from service.cli.shared import Command, UsageError

__all__ = ["COMMAND", "package_flow"]


def package_flow(args: argparse.Namespace) -> int:
    """Package ``FLOW_FILE`` into ``--storage``; print the manifest and its pull step.

    Returns:
        0 when written; 1 when the storage failed.

    Raises:
        UsageError: a missing flow file, or settings the storage refuses.
    """
    import anyio  # noqa: PLC0415 - only the commands that write need it

    from runner_storage.blocks.storage import FileStorageBlock  # noqa: PLC0415 - fsspec
    from runner_storage.packaging import DeploymentSpec, ScriptPackager  # noqa: PLC0415

    flow = Path(args.flow_file)
    if not flow.is_file():
        raise UsageError([f"FLOW_FILE {flow} does not exist or is not a file"])
    try:
        storage = FileStorageBlock(args.storage, key_type=args.key_type)
        spec = DeploymentSpec(
            name=args.name or flow.stem,
            flow_location=str(flow.resolve()),
            flow_name=args.name,
            infrastructure="any",  # a manifest is for runners elsewhere: no local fallback
        )
        manifest = anyio.run(ScriptPackager(storage).package, spec)
    except ConfigurationError as exc:
        raise UsageError([str(exc)]) from None
    except RunnerStorageError as exc:
        print(f"runner-storage: package failed: {exc}", file=sys.stderr)
        return shared.EXIT_FAILURE
    output: dict[str, Any] = {"manifest": manifest.to_dict(), "pull": [manifest.to_pull_step()]}
    shared.print_document(output, args.format)
    return shared.EXIT_OK


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow_file", metavar="FLOW_FILE", help="the flow's script")
    parser.add_argument(
        "--storage",
        required=True,
        help="where to write it: an fsspec URL (s3://bucket/flows, gs://..., az://...) or path",
    )
    parser.add_argument("--name", help="the flow's name (default: the script's file name)")
    parser.add_argument(
        "--key-type",
        choices=("hash", "uuid", "timestamp"),
        default="hash",
        help="how the stored script is named (default: its sha256, written once)",
    )
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")


COMMAND = Command(
    "package",
    "write a flow script to storage; print its manifest and pull step",
    package_flow,
    _arguments,
)
