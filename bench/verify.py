"""Correctness after every run: the published tree must equal the source, byte for byte."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    """Whether a tree matched, and if not, a short account of how it differed."""

    ok: bool
    detail: str = ""


def tree_digests(root: Path, ignore: tuple[str, ...] = (".git",)) -> dict[str, str]:
    """relative POSIX path -> sha256 of every regular file under ``root``.

    ``root`` may be a symlink (a published destination); top-level names in ``ignore``
    (a working copy's ``.git``) are skipped.
    """
    base = os.path.realpath(root)
    found: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(base):
        top = directory == base
        if top:
            dirnames[:] = [d for d in dirnames if d not in ignore]
        relative_dir = os.path.relpath(directory, base)
        for name in filenames:
            if top and name in ignore:
                continue
            path = os.path.join(directory, name)
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            if os.path.islink(path):
                found[relative] = "symlink:" + os.readlink(path)
                continue
            with open(path, "rb") as handle:
                found[relative] = hashlib.file_digest(handle, "sha256").hexdigest()
    return found


def compare(root: Path, expected: Mapping[str, str]) -> Verdict:
    """Compare the tree at ``root`` with ``expected`` (relative path -> sha256)."""
    if not os.path.isdir(root):
        return Verdict(False, f"{root} is missing")
    actual = tree_digests(root)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
    if not (missing or extra or wrong):
        return Verdict(True)
    parts = []
    for label, paths in (("missing", missing), ("extra", extra), ("different", wrong)):
        if paths:
            parts.append(f"{len(paths)} {label} (e.g. {paths[0]})")
    return Verdict(False, "; ".join(parts))
