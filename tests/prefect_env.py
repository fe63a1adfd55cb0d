"""Real Prefect 3 in its own virtual environment, for tests that run Prefect's own code.

The project does not depend on Prefect, so tests that prove Prefect's worker machinery runs
our code (``prefect.deployments.steps.core.run_steps``) use a virtual environment of their
own: the newest Prefect 3.x release that installs on this machine's package index, s3fs,
and this checkout installed editable (so it imports the ``runner_storage`` under test).

* Where: ``tests/.work/prefect-venv``, git-ignored by the ``.gitignore`` written into
  ``tests/.work`` (pytest skips the folder: its name starts with a dot).
* Once: a stamp in the venv records what was installed and from which ``pyproject.toml``;
  a later session only checks that the environment imports (about a second). When
  ``pyproject.toml`` changed, the checkout is installed again into the same venv; when the
  venv is broken or half-built (a killed install), it is built again from scratch.
* Safe to share: sessions (and pytest-xdist workers) take an exclusive file lock around
  the check and the install, so one builds while the others wait and then reuse it.
* Which Prefect: the same rule as the bench (``bench/peers.py``, whose pip call this
  module reuses): ``prefect>=3,<4`` and pip's resolver backtracks past releases whose
  requirements cannot be met; if that install still fails, older 3.x releases are tried
  in turn, newest first.
* Failure: the tests that need it fail (never skip) with one message naming the log,
  ``tests/.work/prefect-venv.log``.

:func:`prefect_environ` is the environment to run that Python with: Prefect's home in a
temporary folder, no server (``PREFECT_API_URL`` names a loopback port nobody listens on,
so any API call fails at once instead of starting Prefect's ephemeral server), no package
index for the ``pip install`` that Prefect runs when a step's ``requires`` does not
import, and git hermetic (:func:`servers.gitrepo.git_env`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from servers.gitrepo import git_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project depends on tomli there
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

from bench.peers import _MAX_PREFECT_TRIES, _pip_install

ROOT = Path(__file__).resolve().parents[1]
"""The checkout under test (installed editable into the environment)."""

WORK = ROOT / "tests" / ".work"
VENV = WORK / "prefect-venv"
LOG = WORK / "prefect-venv.log"
_LOCK = WORK / "prefect-venv.lock"
_STAMP = VENV / ".tests-installed.json"

INSTALL_TIMEOUT = 1800
"""Seconds a first install may take (about 150 packages; a few minutes here).

Tests using :func:`prefect_python` carry ``pytest.mark.timeout(INSTALL_TIMEOUT)``, since
whichever of them runs first also sets the environment up; each of their own subprocesses
has a short timeout of its own.
"""

_CHECK = (
    "import json, prefect, s3fs, runner_storage; print(json.dumps("
    "{'prefect': prefect.__version__, 'runner_storage': runner_storage.__file__}))"
)


class PrefectEnvError(RuntimeError):
    """The Prefect environment could not be built."""


def _python() -> Path:
    return VENV / "bin" / "python"


def _pyproject_digest() -> str:
    """A digest of what the install of the checkout depends on in ``pyproject.toml``.

    Its dependencies and build settings, not the linters' or pytest's, so editing those
    does not reinstall anything.
    """
    with (ROOT / "pyproject.toml").open("rb") as file:
        document = tomllib.load(file)
    relevant = {
        "build-system": document.get("build-system"),
        "project": document.get("project"),
        "hatch": document.get("tool", {}).get("hatch"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _imports() -> str | None:
    """Prefect's version when the environment imports Prefect, s3fs and this checkout."""
    if not _python().exists():
        return None
    proc = subprocess.run(
        [str(_python()), "-c", _CHECK],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        stdin=subprocess.DEVNULL,
        cwd=WORK,
        env={**_install_environ(), "PREFECT_HOME": str(WORK / "prefect-home")},
    )
    if proc.returncode != 0:
        return None
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(found["runner_storage"]).resolve().is_relative_to(ROOT / "runner_storage"):
        return None  # another checkout's code: not the one under test
    version: str = found["prefect"]
    return version


def _read_stamp() -> dict[str, Any] | None:
    try:
        stamp: dict[str, Any] = json.loads(_STAMP.read_text())
    except (OSError, ValueError):
        return None
    return stamp if stamp.get("root") == str(ROOT) else None


def _install_environ() -> dict[str, str]:
    """This environment without Prefect's settings or the outer session's ``PYTHONPATH``.

    (A ``PYTHONPATH`` naming the checkout would make the import check pass without the
    install.)
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHONPATH"))}


def _pip() -> list[str]:
    """The pip command installing this checkout (``_pip_install`` adds Prefect and s3fs)."""
    return [
        str(_python()),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-input",
        "--disable-pip-version-check",
        "-e",
        str(ROOT),
    ]


def _prefect_releases() -> list[str]:
    """Prefect 3.x releases on the index, newest first (only asked after a failed install)."""
    proc = subprocess.run(
        [str(_python()), "-m", "pip", "index", "versions", "prefect"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=_install_environ(),
    )
    match = re.search(r"Available versions: (.*)", proc.stdout)
    found = [v.strip() for v in match.group(1).split(",")] if match else []
    return [v for v in found if re.fullmatch(r"3\.\d+\.\d+", v)]


def _build(out: IO[bytes]) -> str:
    """Build the environment from nothing; return the Prefect requirement that installed."""
    if VENV.exists():
        shutil.rmtree(VENV)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run(
        [base, "-m", "venv", str(VENV)],
        check=True,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    requirement = "prefect>=3,<4"
    if _install(requirement, out):
        return requirement
    for version in _prefect_releases()[:_MAX_PREFECT_TRIES]:
        requirement = f"prefect=={version}"
        if _install(requirement, out):
            return requirement
    raise PrefectEnvError("no Prefect 3.x release installs here")


def _install(requirement: str, out: IO[bytes]) -> bool:
    out.write(f"\n=== pip install -e {ROOT} {requirement} s3fs\n".encode())
    out.flush()
    return _pip_install(_pip(), requirement, out)


def ensure_prefect_env() -> tuple[Path, str, float]:
    """Make sure the environment exists and imports; return (python, Prefect version, seconds).

    The seconds are what this call spent installing (0 when the environment was reused).

    Raises:
        PrefectEnvError: it could not be built (pip's output is in :data:`LOG`).
    """
    WORK.mkdir(parents=True, exist_ok=True)
    ignore = WORK / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# made by tests/prefect_env.py: nothing here is tracked\n*\n")
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _read_stamp()
        digest = _pyproject_digest()
        if stamp is not None and stamp.get("pyproject") == digest:
            version = _imports()
            if version:
                return _python(), version, 0.0
        started = time.monotonic()
        with LOG.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} building {VENV}\n".encode())
            if stamp is not None and _imports() is not None:
                # Only pyproject.toml changed: install the checkout again, same Prefect.
                requirement = str(stamp["requirement"])
                if not _install(requirement, out):
                    requirement = _build(out)
            else:
                requirement = _build(out)
        version = _imports()
        if not version:
            raise PrefectEnvError(f"Prefect installed into {VENV} but does not import")
        seconds = time.monotonic() - started
        written = _STAMP.with_suffix(".tmp")
        written.write_text(
            json.dumps({"root": str(ROOT), "pyproject": digest, "requirement": requirement})
        )
        written.replace(_STAMP)
        with LOG.open("a") as log:
            log.write(f"=== Prefect {version} ({requirement}) ready in {seconds:.0f} s\n")
        return _python(), version, seconds


@pytest.fixture(scope="session")
def prefect_python(request: pytest.FixtureRequest) -> Path:
    """The Python of a virtual environment with Prefect 3, s3fs and this checkout.

    Built on first use (minutes), reused afterwards; fails, never skips, when it cannot
    be built.
    """
    try:
        python, version, seconds = ensure_prefect_env()
    except (PrefectEnvError, OSError, subprocess.SubprocessError) as error:
        pytest.fail(
            f"could not set up the Prefect 3 test environment in {VENV}: {error};"
            f" pip's output is in {LOG}",
            pytrace=False,
        )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if seconds and reporter is not None:
        reporter.write_line(f"prefect_env: installed Prefect {version} in {seconds:.0f} s")
    return python


def closed_port() -> int:
    """A loopback port that nothing listens on right now (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def prefect_environ(home: Path, *, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment to run Prefect's Python with: no server, no index, hermetic git.

    ``home`` becomes ``PREFECT_HOME``; inherited ``PREFECT_*`` variables are dropped (a
    host profile must not point the tests at a real server). ``run_steps`` opens an API
    client around every step's templating, and with no API URL Prefect would start its
    ephemeral server; ``PREFECT_API_URL`` is therefore ``api_url`` (a server that records
    what reaches it) or, by default, a loopback port nobody listens on. For steps without
    block or variable placeholders no request is made; any request fails at once.
    ``PIP_NO_INDEX`` keeps the install Prefect attempts for a ``requires`` it cannot
    import off the network. ``extra`` is added last.
    """
    env = {k: v for k, v in git_env().items() if not k.startswith(("PREFECT_", "PYTHON"))}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url or f"http://127.0.0.1:{closed_port()}/api",
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PIP_NO_INDEX": "1",
            "PIP_NO_INPUT": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env
