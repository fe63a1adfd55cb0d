"""Install the peers the bench compares against, idempotently, and report their versions.

* Prefect: the newest 3.x release whose dependencies install here, with s3fs, in its own
  virtual environment ``bench/.work/prefect-venv`` (pip's resolver backtracks past
  releases whose requirements cannot be met; if an install still fails, older 3.x
  releases are tried in turn).
* rclone and awscli: Debian packages, installed with apt-get when missing (and GNU time,
  which measures peak memory).
* git: the system's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORK = Path(__file__).resolve().parent / ".work"
PREFECT_VENV = WORK / "prefect-venv"
_STAMP = PREFECT_VENV / ".bench-installed"
RCLONE = "/usr/bin/rclone"
AWS = "/usr/bin/aws"
_MAX_PREFECT_TRIES = 6


class PeerInstallError(RuntimeError):
    """A peer could not be installed."""


@dataclass(frozen=True)
class Peers:
    """Where the peers are and which versions they are."""

    prefect_python: Path
    prefect_version: str
    rclone: str
    rclone_version: str
    aws: str
    aws_version: str
    git_version: str


def ensure_peers(log: Path) -> Peers:
    """Install whatever is missing and return the peers (idempotent)."""
    WORK.mkdir(parents=True, exist_ok=True)
    _ensure_debian(log)
    python, version = _ensure_prefect(log)
    return Peers(
        prefect_python=python,
        prefect_version=version,
        rclone=RCLONE,
        rclone_version=_first_line([RCLONE, "version"]),
        aws=AWS,
        aws_version=_first_line([AWS, "--version"]),
        git_version=_first_line(["git", "--version"]),
    )


def _first_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _ensure_debian(log: Path) -> None:
    wanted = (("rclone", RCLONE), ("awscli", AWS), ("time", "/usr/bin/time"))
    missing = [pkg for pkg, exe in wanted if not os.access(exe, os.X_OK)]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("ab") as out:
        for argv in (
            [*sudo, "apt-get", "update", "-qq"],
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
            if proc.returncode != 0:
                raise PeerInstallError(f"{' '.join(argv)} failed; see {log}")


def _venv_python() -> Path:
    return PREFECT_VENV / "bin" / "python"


def _installed_prefect() -> str | None:
    if not _STAMP.is_file() or not _venv_python().exists():
        return None
    proc = subprocess.run(
        [str(_venv_python()), "-c", "import prefect, s3fs; print(prefect.__version__)"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _ensure_prefect(log: Path) -> tuple[Path, str]:
    version = _installed_prefect()
    if version:
        return _venv_python(), version
    if PREFECT_VENV.exists():
        shutil.rmtree(PREFECT_VENV)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(PREFECT_VENV)], check=True)
    pip = [str(_venv_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    with log.open("ab") as out:
        requirement = "prefect>=3,<4"
        if not _pip_install(pip, requirement, out):
            for version in _prefect_versions()[:_MAX_PREFECT_TRIES]:
                requirement = f"prefect=={version}"
                if _pip_install(pip, requirement, out):
                    break
            else:
                raise PeerInstallError(f"no Prefect 3.x release installs here; see {log}")
    _STAMP.write_text(requirement + "\n")
    version = _installed_prefect()
    if not version:
        raise PeerInstallError(f"Prefect installed but does not import; see {log}")
    return _venv_python(), version


def _pip_install(pip: list[str], requirement: str, out: Any) -> bool:
    proc = subprocess.run(
        [*pip, requirement, "s3fs"], stdout=out, stderr=subprocess.STDOUT, check=False
    )
    return proc.returncode == 0


def _prefect_versions() -> list[str]:
    """Prefect 3.x releases on the index, newest first (only used if the first try failed)."""
    proc = subprocess.run(
        [str(_venv_python()), "-m", "pip", "index", "versions", "prefect"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    match = re.search(r"Available versions: (.*)", proc.stdout)
    if not match:
        return []
    return [v.strip() for v in match.group(1).split(",") if re.fullmatch(r"3\.\d+\.\d+", v.strip())]
