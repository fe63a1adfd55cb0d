"""Deterministic data sets: an object tree for S3 and a git repository, both seeded.

The same seed and sizes always give the same bytes (and, for git, the same commit SHAs),
so every contender of every round works on identical data and runs can be compared.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIT_ENV_BASE = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# --- object store ---------------------------------------------------------------------------


def _object_size(rng: random.Random, max_size: int) -> int:
    """Mostly small files, a tail of large ones: ~48 KB on average for 1 KB - 1 MB."""
    small_top = max(2048, max_size // 16)
    if rng.random() < 0.9:
        low, high = 1024, small_top
    else:
        low, high = small_top, max_size
    return int(low * (high / low) ** rng.random())


@dataclass
class ObjectTree:
    """The objects of a bucket as the bench believes they are: key -> content."""

    objects: dict[str, bytes]
    seed: int
    max_size: int
    _generation: int = 0

    @classmethod
    def generate(cls, count: int, seed: int, max_size: int = 1024 * 1024) -> ObjectTree:
        """``count`` objects in a tree of 20 x 10 directories, sizes 1 KB - ``max_size``."""
        rng = random.Random(seed)
        objects: dict[str, bytes] = {}
        for index in range(count):
            key = f"d{index % 20:02d}/s{(index // 20) % 10:02d}/f{index:05d}.dat"
            objects[key] = rng.randbytes(_object_size(rng, max_size))
        return cls(objects, seed, max_size)

    @property
    def total_bytes(self) -> int:
        """Sum of the object sizes."""
        return sum(len(data) for data in self.objects.values())

    def expected(self) -> dict[str, str]:
        """relative path -> sha256, what a correct pull publishes."""
        return {key: sha256(data) for key, data in self.objects.items()}

    def small_change(self, fraction: float) -> Change:
        """Plan modifying, adding and deleting ``fraction`` of the objects each (seeded).

        Half the modified objects keep their size (a size-only comparison misses them).
        """
        self._generation += 1
        rng = random.Random(self.seed * 1000 + self._generation)
        count = max(1, round(len(self.objects) * fraction))
        keys = sorted(self.objects)
        chosen = rng.sample(keys, 2 * count)
        modified, deleted = chosen[:count], chosen[count:]
        put: dict[str, bytes] = {}
        for position, key in enumerate(modified):
            size = len(self.objects[key])
            if position % 2:
                size = _object_size(rng, self.max_size)
            put[key] = rng.randbytes(size)
        added = [f"new{self._generation}/n{i:04d}.dat" for i in range(count)]
        for key in added:
            put[key] = rng.randbytes(_object_size(rng, self.max_size))
        return Change(
            put=put,
            delete=deleted,
            modified=modified,
            added=added,
            undo_put={k: self.objects[k] for k in (*modified, *deleted)},
            undo_delete=added,
        )

    def apply(self, change: Change, client: Any, bucket: str) -> None:
        """Make the bucket (and this model) reflect ``change``."""
        upload(client, bucket, change.put)
        for key in change.delete:
            client.delete_object(Bucket=bucket, Key=key)
        self.objects.update(change.put)
        for key in change.delete:
            del self.objects[key]

    def revert(self, change: Change, client: Any, bucket: str) -> None:
        """Undo :meth:`apply`: same contents again, so the same ETags."""
        upload(client, bucket, change.undo_put)
        for key in change.undo_delete:
            client.delete_object(Bucket=bucket, Key=key)
        self.objects.update(change.undo_put)
        for key in change.undo_delete:
            del self.objects[key]


@dataclass
class Change:
    """A small change of a bucket and how to undo it."""

    put: dict[str, bytes]
    delete: list[str]
    modified: list[str]
    added: list[str]
    undo_put: dict[str, bytes] = field(repr=False)
    undo_delete: list[str] = field(repr=False)


def upload(client: Any, bucket: str, objects: Mapping[str, bytes], threads: int = 8) -> None:
    """Put every object (concurrently; botocore clients are thread-safe)."""

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, objects.items()))


# --- git -------------------------------------------------------------------------------------

# fmt: off
_WORDS = (
    "config", "data", "flow", "task", "result", "value", "item", "record", "batch", "state",
    "client", "cache", "token", "path", "queue", "worker", "retry", "limit", "count", "buffer",
    "stream", "event", "handler", "schema", "model",
)
# fmt: on


def _source_file(rng: random.Random, size: int) -> bytes:
    """Python-looking text of about ``size`` bytes: compresses like real code."""
    lines: list[str] = ['"""Generated module."""', "", "import os", ""]
    length = 40
    while length < size:
        name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{rng.randrange(1000)}"
        body = [
            f"def {name}({rng.choice(_WORDS)}, {rng.choice(_WORDS)}=None):",
            f'    """Return the {rng.choice(_WORDS)} of a {rng.choice(_WORDS)}."""',
            f"    {rng.choice(_WORDS)} = {rng.choice(_WORDS)} * {rng.randrange(97)}"
            f" + {rng.randrange(10_000)}",
            f"    if {rng.choice(_WORDS)} > {rng.randrange(50)}:",
            f"        return os.path.join({rng.choice(_WORDS)!r}, str({rng.choice(_WORDS)}))",
            f"    return {rng.choice(_WORDS)}",
            "",
        ]
        lines.extend(body)
        length += sum(len(line) + 1 for line in body)
    return ("\n".join(lines) + "\n").encode()


TOP_LEVEL_FILES = ("README.md", "pyproject.toml", "setup.cfg", "Makefile")


@dataclass
class GitDataset:
    """A bare repository built with ``git fast-import``, and its files at the head commit.

    Files live in ``pkgNN/modMM/file_K.py`` (plus a few top-level files); ``directories``
    lists the ``pkgNN`` folders, for sparse checkouts.
    """

    path: Path
    files: dict[str, bytes]
    directories: list[str]
    seed: int
    head: str = ""
    commits: int = 0
    _time: int = 1_700_000_000

    @classmethod
    def build(
        cls, path: Path, *, files: int, commits: int, seed: int, packages: int = 25
    ) -> GitDataset:
        """Create ``path`` (a bare repository) with ``files`` files and ``commits`` commits."""
        rng = random.Random(seed)
        directories = [f"pkg{i:02d}" for i in range(packages)]
        tree: dict[str, bytes] = {
            name: f"# {name}\nbench data set, seed {seed}\n".encode() for name in TOP_LEVEL_FILES
        }
        for index in range(files - len(TOP_LEVEL_FILES)):
            folder = directories[index % packages]
            path_name = f"{folder}/mod{(index // packages) % 8:02d}/file_{index:05d}.py"
            tree[path_name] = _source_file(rng, int(500 * (16 ** rng.random())))
        subprocess.run(
            ["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True, env=_git_env()
        )
        for key, value in (
            ("uploadpack.allowFilter", "true"),
            ("uploadpack.allowAnySHA1InWant", "true"),
            ("http.receivepack", "false"),
        ):
            subprocess.run(["git", "config", key, value], cwd=path, check=True, env=_git_env())
        dataset = cls(path, {}, directories, seed)
        # The first commit adds everything; each later one edits a few files, as history does.
        stream = [dataset._commit_command(tree, "initial import", first=True)]
        dataset.files = dict(tree)
        names = sorted(name for name in tree if name not in TOP_LEVEL_FILES)
        for number in range(1, commits):
            edits = {
                name: _source_file(rng, len(dataset.files[name]))
                for name in rng.sample(names, min(12, len(names)))
            }
            stream.append(dataset._commit_command(edits, f"change {number}"))
            dataset.files.update(edits)
        dataset._fast_import(b"".join(stream))
        subprocess.run(
            ["git", "repack", "-a", "-d", "-q", "--write-bitmap-index"],
            cwd=path,
            check=True,
            env=_git_env(),
        )
        return dataset

    def commit(self, edits: Mapping[str, bytes], message: str) -> str:
        """Add one commit on ``main`` changing ``edits``; return its SHA."""
        self._fast_import(self._commit_command(edits, message))
        self.files.update(edits)
        return self.head

    def edit_some(self, count: int, message: str) -> str:
        """Commit new contents for ``count`` files (seeded by the commit number)."""
        rng = random.Random(self.seed * 7919 + self.commits)
        names = sorted(name for name in self.files if name not in TOP_LEVEL_FILES)
        edits = {
            name: _source_file(rng, len(self.files[name])) for name in rng.sample(names, count)
        }
        return self.commit(edits, message)

    def expected(self, directories: Iterable[str] | None = None) -> dict[str, str]:
        """relative path -> sha256 at the head; with ``directories``, a cone-mode subset."""
        wanted = list(directories or [])
        return {
            name: sha256(data)
            for name, data in self.files.items()
            if not wanted or "/" not in name or any(name.startswith(d + "/") for d in wanted)
        }

    def _commit_command(
        self, files: Mapping[str, bytes], message: str, first: bool = False
    ) -> bytes:
        self.commits += 1
        self._time += 60
        ident = f"Bench <bench@example.com> {self._time} +0000"
        text = message.encode()
        parts = [
            b"commit refs/heads/main\n",
            f"author {ident}\ncommitter {ident}\n".encode(),
            b"data %d\n%s\n" % (len(text), text),
        ]
        if not first and self.head:
            parts.append(f"from {self.head}\n".encode())
        for name in sorted(files):
            data = files[name]
            parts.append(f"M 100644 inline {name}\n".encode())
            parts.append(b"data %d\n%s\n" % (len(data), data))
        parts.append(b"\n")
        return b"".join(parts)

    def _fast_import(self, stream: bytes) -> None:
        subprocess.run(
            ["git", "fast-import", "--quiet"],
            cwd=self.path,
            input=stream,
            check=True,
            env=_git_env(),
        )
        self.head = subprocess.run(
            ["git", "rev-parse", "refs/heads/main"],
            cwd=self.path,
            check=True,
            capture_output=True,
            text=True,
            env=_git_env(),
        ).stdout.strip()


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV_BASE)
    return env
