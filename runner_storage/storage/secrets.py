"""Prefect 1's named secrets, looked up where Prefect 1 and a worker keep them.

Prefect 1 storages name their secrets (``access_token_secret="GITHUB_ACCESS_TOKEN"``) and
Prefect 1 read them from its context. :class:`NamedSecret` reads the value at every use,
so a rotated value is picked up by the next pull, from, in order:

1. the environment variable ``PREFECT__CONTEXT__SECRETS__<NAME>`` (Prefect 1's local
   secrets),
2. the environment variable ``<NAME>``,
3. the file ``<NAME>`` in the secrets directory: the one given, else
   ``$RUNNER_STORAGE_SECRETS_DIR``, else systemd's ``$CREDENTIALS_DIRECTORY``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runner_storage.exceptions import ConfigurationError, CredentialsError
from runner_storage.secrets import Secret

__all__ = ["PREFECT1_SECRET_PREFIX", "NamedSecret", "secrets_directory"]

#: Prefect 1's local secrets: ``PREFECT__CONTEXT__SECRETS__<NAME>``.
PREFECT1_SECRET_PREFIX = "PREFECT__CONTEXT__SECRETS__"  # noqa: S105 - a variable prefix

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def secrets_directory() -> Path | None:
    """The secrets directory of this process: ``RUNNER_STORAGE_SECRETS_DIR``, else systemd's."""
    folder = os.environ.get("RUNNER_STORAGE_SECRETS_DIR") or os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(folder) if folder else None


class NamedSecret(Secret):
    """A Prefect 1 secret by name, read at every use.

    Its pull-step placeholder is ``{{ prefect.blocks.secret.<slug> }}``, the slug being the
    name in lower case with ``_`` as ``-`` (Prefect 3 block names allow no upper case or
    underscores): ``GITHUB_ACCESS_TOKEN`` becomes ``github-access-token``.

    Args:
        secret_name: the name, as Prefect 1 storages take it.
        secrets_dir: the folder holding one file per secret; by default the process's
            (:func:`secrets_directory`, read at every use).

    Raises:
        ConfigurationError: the name is empty or holds characters no variable or file
            name could.

    Example::

        token = NamedSecret("GITHUB_ACCESS_TOKEN")
        token.get()  # $PREFECT__CONTEXT__SECRETS__GITHUB_ACCESS_TOKEN, $GITHUB_ACCESS_TOKEN, ...
    """

    __slots__ = ("_secrets_dir", "secret_name")

    def __init__(self, secret_name: str, *, secrets_dir: str | os.PathLike[str] | None = None):
        if not isinstance(secret_name, str) or not _NAME.fullmatch(secret_name):
            raise ConfigurationError(
                f"invalid secret name {secret_name!r}: use letters, digits, '_', '-' and '.',"
                " as in GITHUB_ACCESS_TOKEN"
            )
        super().__init__("", name=secret_name.lower().replace("_", "-").replace(".", "-"))
        self.secret_name = secret_name
        self._secrets_dir = Path(secrets_dir) if secrets_dir is not None else None

    def get(self) -> str:
        """The value, from the first place that has one.

        Raises:
            CredentialsError: no place has it; the line names the secret and the places.
        """
        for variable in (PREFECT1_SECRET_PREFIX + self.secret_name, self.secret_name):
            value = os.environ.get(variable)
            if value:
                return value
        folder = self._secrets_dir or secrets_directory()
        if folder is not None:
            path = folder / self.secret_name
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise CredentialsError(
                    f"cannot read secret {self.secret_name} from {path}:"
                    f" {exc.strerror or exc}; check that it is mounted and readable"
                ) from None
            else:
                value = text[:-1] if text.endswith("\n") else text
                if value:
                    return value
        where = f"${PREFECT1_SECRET_PREFIX}{self.secret_name}, ${self.secret_name}"
        where += (
            f" or the file {folder / self.secret_name}"
            if folder
            else (" or a file in the secrets directory (set RUNNER_STORAGE_SECRETS_DIR)")
        )
        raise CredentialsError(f"secret {self.secret_name} is not set: looked in {where}")

    def placeholder(self) -> str:
        """``{{ prefect.blocks.secret.<slug> }}`` (see the class docstring)."""
        return f"{{{{ prefect.blocks.secret.{self.name} }}}}"

    def __repr__(self) -> str:
        return f"NamedSecret({self.secret_name!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NamedSecret):
            return NotImplemented
        return (self.secret_name, self._secrets_dir) == (other.secret_name, other._secrets_dir)

    def __hash__(self) -> int:
        return hash(("NamedSecret", self.secret_name))
