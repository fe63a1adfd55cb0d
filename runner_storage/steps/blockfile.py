"""Prefect blocks without a Prefect server: a local block file, and the secrets directory.

The file (TOML, or YAML by its suffix) maps a block type slug to block names to their
fields, as Prefect stores block documents::

    [secret.github-token]
    value = { env = "GITHUB_TOKEN" }

    [github-credentials.acme]
    token = { file = "/run/secrets/acme-token" }

    [remote-file-system.flows]
    basepath = "s3://acme-flows/prod"
    settings = { key = "AKIA...", secret = { env = "AWS_SECRET_ACCESS_KEY" } }

A field given as ``{ env = "VAR" }``, ``{ file = "/path" }`` or ``{ value = "..." }`` is a
:class:`~runner_storage.Secret`, read at every use (so a rotated value is picked up); a
Secret block's value keeps its block name, so a pull step written from it says
``{{ prefect.blocks.secret.NAME }}`` again. A Secret block not in the file is looked up as
the file ``NAME`` in the secrets directory (``RUNNER_STORAGE_SECRETS_DIR``, or systemd's
``$CREDENTIALS_DIRECTORY``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError, one_line
from runner_storage.secrets import DESCEND, Secret, walk
from runner_storage.steps.templating import lookup_path

__all__ = ["BlockFile", "parse_error"]

_SECRET_KEYS = frozenset({"env", "file", "value"})


class BlockFile:
    """Block documents by type slug and name, with the secrets directory behind Secret blocks.

    Args:
        documents: type slug -> block name -> fields.
        secrets_dir: where ``secret`` blocks not in ``documents`` are looked up as files.
        origin: how messages name where the documents came from.
    """

    def __init__(
        self,
        documents: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        *,
        secrets_dir: Path | None = None,
        origin: str = "the block file",
    ) -> None:
        self._documents = documents or {}
        self._secrets_dir = secrets_dir
        self.origin = origin

    @classmethod
    def load(cls, path: Path | None, *, secrets_dir: Path | None = None) -> BlockFile:
        """Read the block file at ``path`` (None: no file, only the secrets directory).

        Raises:
            ConfigurationError: the file is missing, unreadable, or not shaped as
                ``type -> name -> fields``; one line saying which.
        """
        if path is None:
            return cls(secrets_dir=secrets_dir, origin="no block file")
        origin = f"block file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the {origin}: {exc.strerror or exc}; set blocks_file to a"
                " readable TOML or YAML file"
            ) from None
        data = _parse(text, path)
        documents: dict[str, dict[str, dict[str, Any]]] = {}
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{origin}: expected a table of block types at its top")
        for slug, names in data.items():
            if not isinstance(names, Mapping):
                raise ConfigurationError(
                    f"{origin}: {slug!r} must be a table of block names, as [{slug}.NAME]"
                )
            for name, fields in names.items():
                if not isinstance(fields, Mapping):
                    raise ConfigurationError(
                        f"{origin}: [{slug}.{name}] must be a table of the block's fields"
                    )
                documents.setdefault(str(slug), {})[str(name)] = _with_secrets(
                    dict(fields),
                    name=str(name) if slug == "secret" else None,
                    where=f"{origin}: [{slug}.{name}]",
                )
        return cls(documents, secrets_dir=secrets_dir, origin=origin)

    def document(self, type_slug: str, name: str) -> dict[str, Any]:
        """The fields of the block ``type_slug/name``.

        Raises:
            KeyError: no such block here; the message says where it was looked for.
        """
        found = self._documents.get(type_slug, {}).get(name)
        if found is not None:
            return dict(found)
        if type_slug == "secret" and self._secrets_dir is not None:
            candidate = self._secrets_dir / name
            if candidate.is_file():
                return {"value": Secret.from_file(candidate, name=name)}
        where = self.origin
        if type_slug == "secret" and self._secrets_dir is not None:
            where += f" or the secrets directory {self._secrets_dir}"
        raise KeyError(f"no block {type_slug}/{name} in {where}")

    def value(self, reference: str) -> Any:
        """The value of ``TYPE.NAME[.key.path]``, as Prefect resolves a block placeholder.

        A block holding only ``value`` (a Secret, a String, a JSON block) gives that value
        unless the path starts with ``value``.

        Raises:
            KeyError: no such block, or no such field in it.
        """
        parts = reference.split(".", 2)
        if len(parts) < 2:
            raise KeyError(f"expected prefect.blocks.TYPE.NAME, got prefect.blocks.{reference}")
        data: Any = self.document(parts[0], parts[1])
        if set(data) == {"value"} and not (len(parts) > 2 and parts[2].startswith("value")):
            data = data["value"]
        if len(parts) > 2:
            try:
                return lookup_path(data, parts[2])
            except KeyError as exc:
                raise KeyError(f"{exc.args[0]} in block {parts[0]}/{parts[1]}") from None
        return data


def _parse(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib  # noqa: PLC0415 - only TOML block files need it
            else:
                import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415 - only YAML block files need it

            return yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - each parser raises its own; all mean unreadable
        raise ConfigurationError(
            f"block file {path} cannot be parsed: {parse_error(exc)}"
        ) from None
    raise ConfigurationError(f"block file {path}: use a .toml, .yaml or .yml file")


def _with_secrets(fields: dict[str, Any], *, name: str | None, where: str) -> dict[str, Any]:
    """``fields`` with each ``{env | file | value}`` table made a Secret, at any depth."""

    def convert(value: Any, _key: str | None, path: str) -> Any:
        if not (isinstance(value, Mapping) and value and set(value) <= _SECRET_KEYS):
            return DESCEND
        if len(value) != 1:
            raise ConfigurationError(
                f"{where} {path} gives {', '.join(sorted(value))}: give exactly one of env,"
                " file or value"
            )
        ((kind, given),) = value.items()
        if not isinstance(given, str) or not given:
            raise ConfigurationError(f"{where} {path}.{kind} must be a non-empty string")
        if kind == "env":
            try:
                return Secret.from_env(given, name=name)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where} {path}.env: {exc}") from None
        if kind == "file":
            return Secret.from_file(Path(given).expanduser(), name=name)
        return Secret(given, name=name)

    # Each field on its own: the document itself (a Secret's {value = ...}) is no table.
    converted = {key: walk(value, convert, path=str(key)) for key, value in fields.items()}
    if name is not None and isinstance(converted.get("value"), str):
        # A Secret block written as plain text is a secret all the same.
        converted["value"] = Secret(converted["value"], name=name)
    return converted


def parse_error(exc: Exception) -> str:
    """Where a YAML or TOML file could not be parsed, without quoting its text.

    A parser's message can quote what it read (YAML's ``found undefined alias 'x'``), and
    the file may hold a secret: a YAML error is reported by its position only.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}"
    if type(exc).__module__.startswith("yaml"):
        return "invalid YAML"
    # tomllib's messages name the position and what was expected, never the value.
    return one_line(str(exc), 200) or type(exc).__name__
