"""Prefect 1's ``Local`` and ``Module`` storages: code already where the flow runs.

Nothing is copied or published: ``destination`` is the folder the code is in, as for
:class:`~runner_storage.LocalStorage`, and ``to_pull_step()`` is ``set_working_directory``.
A missing file, folder or module is one line at construction.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

from runner_storage.exceptions import ConfigurationError, PublishError
from runner_storage.local import LocalStorage
from runner_storage.storage.buckets import refuse_pickles

__all__ = ["Local", "Module", "find_module"]

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Local(LocalStorage):
    """Prefect 1's ``Local`` storage: a flow script on this machine's disk.

    With ``path`` (a script), ``destination`` is its folder and ``flow_path`` the script;
    with only ``directory``, ``destination`` is that folder. ``add_flow`` copies a script
    into ``directory`` (atomically) and returns its path. Scripts only: pickled flows
    (Prefect 1's ``stored_as_script=False`` with no ``path``) are refused.

    Example::

        storage = Local(path="/srv/flows/etl.py")
        storage.destination  # /srv/flows
        storage.to_pull_step()  # set_working_directory: /srv/flows

    Raises:
        ConfigurationError: the script or folder does not exist, or a pickled flow.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        validate: bool = True,
        path: str | os.PathLike[str] | None = None,
        stored_as_script: bool | None = None,
        *,
        pull_interval: float | None = 60,
    ) -> None:
        refuse_pickles(stored_as_script is not False)
        self.directory = directory
        self.path = path
        self.flows: dict[str, str] = {}
        if path is not None:
            script = Path(path).expanduser().absolute()
            if validate and not script.is_file():
                raise ConfigurationError(
                    f"flow script {script} does not exist: check path= or mount the code"
                )
            folder = script.parent
            self._flow: Path | None = script
        elif directory is not None:
            folder = Path(directory).expanduser().absolute()
            if validate and not folder.is_dir():
                raise ConfigurationError(f"flow directory {folder} does not exist")
            self._flow = None
        else:
            raise ConfigurationError(
                "give path= (the flow script) or directory= (the folder of flow scripts)"
            )
        super().__init__(folder, pull_interval=pull_interval)
        if self._flow is not None:
            # The destination has its symlinks resolved: keep the script inside it.
            self._flow = self.destination / self._flow.name

    @property
    def flow_path(self) -> Path:
        """The flow script's absolute path.

        Raises:
            ConfigurationError: only a directory was given and no flow added.
        """
        if self._flow is None:
            raise ConfigurationError("no flow script: give path=, or add_flow(...) one")
        return self._flow

    def add_flow(self, flow_file: str | os.PathLike[str], name: str | None = None) -> str:
        """Copy a flow script into the directory, atomically; return where it is.

        Raises:
            ConfigurationError: the script is not a file, or a flow of that name is in.
            PublishError: the copy failed (nothing half-written is left).
        """
        source = Path(flow_file)
        if not source.is_file():
            raise ConfigurationError(f"flow_file {str(source)!r} is not a file: give a script")
        flow_name = name or source.stem
        if flow_name in self.flows:
            raise ConfigurationError(f"a flow named {flow_name!r} is already in this storage")
        target = self.destination / source.name
        if source.resolve() != target.resolve():
            temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                self.destination.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, temporary)
                temporary.replace(target)
            except OSError as exc:
                temporary.unlink(missing_ok=True)
                raise PublishError(
                    f"cannot copy {source} to {target}: {exc.strerror or exc}"
                ) from None
        self.flows[flow_name] = str(target)
        self._flow = self._flow or target
        return str(target)

    def build(self) -> Local:
        """Nothing to upload: scripts are copied by :meth:`add_flow`. Returns this storage."""
        return self

    def __repr__(self) -> str:
        return f"Local(directory={str(self.destination)!r})"


def find_module(module: str) -> Path:
    """The file of an installed module, found on ``sys.path`` without importing anything.

    Raises:
        ConfigurationError: not a dotted module name, or no such module.
    """
    if not isinstance(module, str) or not _MODULE.fullmatch(module):
        raise ConfigurationError(f"module must be a dotted module name, got {module!r}")
    search: list[str] | None = list(sys.path)
    spec = None
    for part in module.split("."):
        if search is None:
            spec = None
            break
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            break
        search = list(spec.submodule_search_locations or []) or None
    if spec is None:
        raise ConfigurationError(
            f"module {module!r} is not installed here: install its package, or check the name"
        )
    if spec.origin and spec.has_location:
        return Path(spec.origin)
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        raise ConfigurationError(f"module {module!r} has no file on disk to run from")
    return Path(locations[0])  # a namespace package: its first folder


class Module(LocalStorage):
    """Prefect 1's ``Module`` storage: a flow in an installed Python module.

    ``destination`` is the installed package's folder (a plain module's folder), found on
    ``sys.path`` without importing it; ``flow_path`` is the module's file.

    Example::

        storage = Module("acme_flows.etl")
        storage.flow_path  # .../site-packages/acme_flows/etl.py

    Raises:
        ConfigurationError: the module is not installed.
    """

    def __init__(self, module: str, *, pull_interval: float | None = 60) -> None:
        self.module = module
        found = find_module(module)
        self._flow = found
        folder = found if found.is_dir() else found.parent
        super().__init__(folder, pull_interval=pull_interval)
        # The destination has its symlinks resolved: keep the module's file inside it.
        self._flow = self.destination if found.is_dir() else self.destination / found.name

    @property
    def flow_path(self) -> Path:
        """The module's file (a package's ``__init__.py``)."""
        return self._flow

    def __repr__(self) -> str:
        return f"Module({self.module!r})"
