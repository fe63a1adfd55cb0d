"""Prefect 1's ``Local`` and ``Module`` storages: code already where the flow runs.

Nothing is copied or published: ``destination`` is the folder the code is in (a script's
folder, a directory, an installed package's folder found without importing it),
``flow_path`` the flow's file, ``pull_code()`` a no-op and ``to_pull_step()`` Prefect 3's
``set_working_directory``. ``Local.add_flow`` copies a script into its directory
atomically. What is missing is one line at construction.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from runner_storage.exceptions import ConfigurationError, PublishError
from runner_storage.storage import Local, Module
from runner_storage.storage.local import find_module

STEP = "prefect.deployments.steps.set_working_directory"
FLOW = b"from prefect import flow\n\n@flow\ndef etl():\n    return 1\n"


def one_line(error: BaseException) -> str:
    """The message of ``error``, checked to be one non-empty line."""
    text = str(error)
    assert text.strip(), f"empty message: {error!r}"
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def everything_under(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A folder of flow scripts on this machine's disk."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "etl.py").write_bytes(FLOW)
    (folder / "helpers.py").write_text("X = 1\n")
    return folder


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, to see that nothing is written into it."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# --- Local ---------------------------------------------------------------------------------


class TestLocalPath:
    """``Local(path=script)``: the script's folder, as it is."""

    def test_destination_is_the_scripts_folder(
        self, flows: Path, tmp_path: Path, cwd: Path
    ) -> None:
        """``destination`` is the folder, ``flow_path`` the script; the pull copies nothing."""
        before = everything_under(flows)
        storage = Local(path=flows / "etl.py")
        storage.set_base_path(tmp_path / "base")
        assert storage.destination == flows
        assert storage.flow_path == flows / "etl.py"
        assert storage.flow_path.read_bytes() == FLOW
        result = anyio.run(storage.pull_code)
        assert not result.changed
        assert result.files_fetched == 0
        assert storage.destination == flows  # set_base_path does not move it
        assert not (tmp_path / "base").exists()
        assert everything_under(flows) == before
        assert everything_under(cwd) == []

    def test_relative_path_is_made_absolute(
        self, flows: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative ``path`` is taken from the working directory, and kept absolute."""
        monkeypatch.chdir(flows.parent)
        storage = Local(path="flows/etl.py")
        assert storage.flow_path == flows / "etl.py"
        assert storage.flow_path.is_absolute()
        assert storage.destination == flows

    def test_flow_path_is_inside_a_symlinked_destination(self, flows: Path, tmp_path: Path) -> None:
        """Through a symlinked folder, ``flow_path`` is still inside ``destination``."""
        link = tmp_path / "current"
        link.symlink_to(flows, target_is_directory=True)
        storage = Local(path=link / "etl.py")
        assert storage.flow_path.parent == storage.destination
        assert storage.flow_path.read_bytes() == FLOW

    def test_to_pull_step_is_set_working_directory(self, flows: Path) -> None:
        """The Prefect 3 step moves into the script's folder."""
        assert Local(path=flows / "etl.py").to_pull_step() == {STEP: {"directory": str(flows)}}

    def test_missing_script_is_one_line(self, tmp_path: Path) -> None:
        """A script that is not there is one line naming it."""
        missing = tmp_path / "nowhere" / "etl.py"
        with pytest.raises(ConfigurationError) as caught:
            Local(path=missing)
        assert str(missing) in one_line(caught.value)

    def test_a_folder_as_path_is_refused(self, flows: Path) -> None:
        """``path`` must be the script, not its folder."""
        with pytest.raises(ConfigurationError) as caught:
            Local(path=flows)
        one_line(caught.value)

    def test_validate_false_accepts_a_missing_script(self, tmp_path: Path) -> None:
        """``validate=False`` (Prefect 1's) describes a script that is not there yet."""
        storage = Local(path=tmp_path / "later" / "etl.py", validate=False)
        assert storage.flow_path == tmp_path / "later" / "etl.py"


class TestLocalDirectory:
    """``Local(directory=...)``: a folder of flow scripts."""

    def test_directory_only(self, flows: Path) -> None:
        """``destination`` is the folder; with no flow yet, ``flow_path`` is one line."""
        storage = Local(directory=flows)
        assert storage.destination == flows
        assert storage.to_pull_step() == {STEP: {"directory": str(flows)}}
        assert not anyio.run(storage.pull_code).changed
        with pytest.raises(ConfigurationError) as caught:
            _ = storage.flow_path
        assert "add_flow" in one_line(caught.value)

    def test_missing_directory_is_one_line(self, tmp_path: Path) -> None:
        """A folder that is not there is one line naming it."""
        with pytest.raises(ConfigurationError) as caught:
            Local(directory=tmp_path / "nowhere")
        assert str(tmp_path / "nowhere") in one_line(caught.value)

    def test_neither_is_one_line(self) -> None:
        """Without ``path`` or ``directory`` the line says which to give."""
        with pytest.raises(ConfigurationError) as caught:
            Local()
        text = one_line(caught.value)
        assert "path=" in text
        assert "directory=" in text

    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda folder: Local(directory=folder, stored_as_script=False), id="dir"),
            pytest.param(
                lambda folder: Local(path=folder / "etl.py", stored_as_script=False), id="path"
            ),
        ],
    )
    def test_pickled_flows_are_refused(self, make: Callable[[Path], Local], flows: Path) -> None:
        """``stored_as_script=False`` is one line saying why and what to do."""
        with pytest.raises(ConfigurationError) as caught:
            make(flows)
        assert "stored_as_script=True" in one_line(caught.value)

    def test_stored_as_script_true_is_taken(self, flows: Path) -> None:
        """``stored_as_script=True`` is Prefect 1's script storage: accepted."""
        assert Local(path=flows / "etl.py", stored_as_script=True).flow_path == flows / "etl.py"


class TestLocalAddFlow:
    """``add_flow`` copies a script into the directory, atomically, and returns where."""

    @pytest.fixture
    def source(self, tmp_path: Path) -> Path:
        """A script elsewhere on the disk, as a user registers it."""
        path = tmp_path / "src" / "nightly.py"
        path.parent.mkdir()
        path.write_bytes(FLOW)
        return path

    def test_copies_and_returns_the_path(self, flows: Path, source: Path) -> None:
        """The script lands in the directory; the return value and ``flow_path`` are it."""
        storage = Local(directory=flows)
        location = storage.add_flow(source)
        assert location == str(flows / "nightly.py")
        assert (flows / "nightly.py").read_bytes() == FLOW
        assert source.read_bytes() == FLOW
        assert storage.flows == {"nightly": location}
        assert storage.flow_path == flows / "nightly.py"
        assert storage.build() is storage
        assert sorted(p.name for p in flows.iterdir()) == ["etl.py", "helpers.py", "nightly.py"]

    def test_replaces_atomically(self, flows: Path, source: Path) -> None:
        """A script already there is replaced by a rename: a reader keeps the old file whole."""
        target = flows / "nightly.py"
        target.write_bytes(b"old = True\n" * 1000)
        with target.open("rb") as reader:
            old_inode = os.fstat(reader.fileno()).st_ino
            Local(directory=flows).add_flow(source)
            assert reader.read() == b"old = True\n" * 1000
        assert target.read_bytes() == FLOW
        assert target.stat().st_ino != old_inode
        assert not [p for p in flows.iterdir() if p.name.startswith(".")]

    def test_a_failed_copy_leaves_nothing(self, flows: Path, source: Path) -> None:
        """When the copy cannot be placed, one line, and no temporary file stays."""
        (flows / "nightly.py").mkdir()  # a folder where the script would go
        storage = Local(directory=flows)
        with pytest.raises(PublishError) as caught:
            storage.add_flow(source)
        assert "nightly.py" in one_line(caught.value)
        assert sorted(p.name for p in flows.iterdir()) == ["etl.py", "helpers.py", "nightly.py"]
        assert (flows / "nightly.py").is_dir()
        assert storage.flows == {}

    def test_a_script_already_in_the_directory_stays(self, flows: Path) -> None:
        """Adding a script of the directory itself copies nothing and returns its path."""
        storage = Local(directory=flows)
        before = (flows / "etl.py").stat().st_ino
        assert storage.add_flow(flows / "etl.py") == str(flows / "etl.py")
        assert (flows / "etl.py").stat().st_ino == before

    def test_name_conflicts_and_bad_scripts(
        self, flows: Path, source: Path, tmp_path: Path
    ) -> None:
        """The same flow name twice, or a script that is not a file, is one line."""
        storage = Local(directory=flows)
        storage.add_flow(source)
        with pytest.raises(ConfigurationError) as caught:
            storage.add_flow(flows / "etl.py", name="nightly")
        assert "nightly" in one_line(caught.value)
        with pytest.raises(ConfigurationError) as caught:
            storage.add_flow(tmp_path / "missing.py")
        assert "missing.py" in one_line(caught.value)
        assert list(storage.flows) == ["nightly"]

    def test_directory_is_created_without_validation(self, tmp_path: Path, source: Path) -> None:
        """With ``validate=False`` the directory is made when the first flow is added."""
        folder = tmp_path / "new" / "flows"
        storage = Local(directory=folder, validate=False)
        assert storage.add_flow(source) == str(folder / "nightly.py")
        assert (folder / "nightly.py").read_bytes() == FLOW


# --- Module --------------------------------------------------------------------------------


class Site:
    """A folder put on ``sys.path``, where the test installs packages under fresh names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def fresh(self, stem: str) -> str:
        """A module name no other test (or import) has used."""
        return f"{stem}_{uuid.uuid4().hex[:10]}"

    def package(self, name: str, files: dict[str, str], *, namespace: bool = False) -> Path:
        """Write package ``name`` with ``files`` (relative path -> source); return its folder."""
        folder = self.root / name
        folder.mkdir()
        if not namespace:
            (folder / "__init__.py").write_text(files.pop("__init__.py", ""))
        for relative, text in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return folder


EXPLODE = "raise RuntimeError('imported!')\n"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A temporary install location on ``sys.path`` (removed again after the test)."""
    root = tmp_path / "site-packages"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return Site(root)


class TestModule:
    """``Module(name)``: an installed module's folder, found without importing anything."""

    def test_a_module_of_a_package(self, site: Site, tmp_path: Path) -> None:
        """``destination`` is the package folder, ``flow_path`` the module; nothing imported."""
        name = site.fresh("acme_flows")
        folder = site.package(name, {"__init__.py": EXPLODE, "etl.py": EXPLODE})
        storage = Module(f"{name}.etl")
        storage.set_base_path(tmp_path / "base")
        assert storage.destination == folder
        assert storage.flow_path == folder / "etl.py"
        assert name not in sys.modules
        assert f"{name}.etl" not in sys.modules
        assert not (folder / "__pycache__").exists()
        assert not anyio.run(storage.pull_code).changed
        assert not (tmp_path / "base").exists()
        assert storage.to_pull_step() == {STEP: {"directory": str(folder)}}

    def test_a_package_whose_init_raises_is_found(self, site: Site) -> None:
        """A package that fails on import is still found: its ``__init__`` is the flow."""
        name = site.fresh("broken")
        folder = site.package(name, {"__init__.py": EXPLODE})
        storage = Module(name)
        assert storage.destination == folder
        assert storage.flow_path == folder / "__init__.py"
        assert name not in sys.modules

    def test_a_nested_module(self, site: Site) -> None:
        """A module of a subpackage: the subpackage's folder, its parents never imported."""
        name = site.fresh("deep")
        folder = site.package(name, {"__init__.py": EXPLODE, "sub/__init__.py": EXPLODE})
        (folder / "sub" / "etl.py").write_text(EXPLODE)
        storage = Module(f"{name}.sub.etl")
        assert storage.destination == folder / "sub"
        assert storage.flow_path == folder / "sub" / "etl.py"
        assert name not in sys.modules

    def test_a_top_level_module(self, site: Site) -> None:
        """A plain module file: its folder and the file."""
        name = site.fresh("single")
        (site.root / f"{name}.py").write_text(EXPLODE)
        storage = Module(name)
        assert storage.destination == site.root
        assert storage.flow_path == site.root / f"{name}.py"
        assert find_module(name) == site.root / f"{name}.py"
        assert name not in sys.modules

    def test_a_namespace_package(self, site: Site) -> None:
        """A package without ``__init__``: its folder, and its modules by name."""
        name = site.fresh("nspkg")
        folder = site.package(name, {"etl.py": EXPLODE}, namespace=True)
        assert Module(name).destination == folder
        storage = Module(f"{name}.etl")
        assert storage.destination == folder
        assert storage.flow_path == folder / "etl.py"
        assert name not in sys.modules

    def test_a_namespace_package_across_folders(
        self, site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A namespace package split over two ``sys.path`` entries finds the module's part."""
        name = site.fresh("split")
        first = site.package(name, {"a.py": ""}, namespace=True)
        other = Site(tmp_path / "other-site")
        second = other.package(name, {"b.py": EXPLODE}, namespace=True)
        monkeypatch.setattr(sys, "path", [*sys.path, str(other.root)])  # last on the path
        storage = Module(f"{name}.b")
        assert storage.destination == second
        assert storage.flow_path == second / "b.py"
        assert Module(name).destination == first  # the package itself: its first folder
        assert name not in sys.modules

    def test_flow_path_is_inside_a_symlinked_destination(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Installed under a symlinked folder (a venv's ``lib64``): the file is inside it."""
        real = Site(tmp_path / "lib" / "site-packages")
        link = tmp_path / "lib64"
        link.symlink_to(tmp_path / "lib", target_is_directory=True)
        monkeypatch.syspath_prepend(str(link / "site-packages"))
        name = real.fresh("linked")
        real.package(name, {"etl.py": ""})
        storage = Module(f"{name}.etl")
        assert storage.flow_path.parent == storage.destination
        assert storage.flow_path.is_file()

    @pytest.mark.parametrize("missing", ["no_such_module_{}", "{}.missing", "{}.etl.deeper"])
    def test_missing_module_is_one_line(self, site: Site, missing: str) -> None:
        """A module that is not installed (or a submodule of a plain module) is one line."""
        name = site.fresh("present")
        site.package(name, {"etl.py": ""})
        module = missing.format(name)
        with pytest.raises(ConfigurationError) as caught:
            Module(module)
        text = one_line(caught.value)
        assert module in text
        assert "not installed" in text

    @pytest.mark.parametrize("bad", ["acme-flows", "", "acme..etl", "../etc", ".etl"])
    def test_not_a_module_name(self, bad: str) -> None:
        """Something that is not a dotted module name is one line."""
        with pytest.raises(ConfigurationError) as caught:
            Module(bad)
        assert "dotted module name" in one_line(caught.value)
