"""Podman and debootstrap for the container tests: an image built for real, offline.

Everything podman does lives in its own storage under :data:`CACHE_DIR`; the user's
default podman storage is never touched. The debootstrap base image stays there between
runs, keyed by its package list, and so do the dependency wheels, keyed by the dependency
list, so only the first run pays for debootstrap and downloads. The fixtures ``podman``
(skips where podman or debootstrap cannot run, or without root) and ``image`` (the
Dockerfile built offline on that base, removed afterwards) are registered as a plugin in
``conftest.py``. :class:`Podman` says why podman is set up the way it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from email.parser import HeaderParser
from pathlib import Path
from zipfile import ZipFile

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE_USER = 10001
IMAGE_EXTRAS = "all"
"""The Dockerfile's default EXTRAS: the offline build needs those backends' wheels too."""

CACHE_DIR = Path(os.environ.get("RUNNER_STORAGE_CI_CACHE", "/var/tmp/runner-storage-ci"))
"""Where the debootstrap base, dependency wheels and podman's own storage are kept."""

BASE_SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "git",
    "ca-certificates",
    "openssh-client",
    "tini",
)
"""The base image's packages: everything the Dockerfile's runtime stage would install, so
the build needs no network."""


def run(
    argv: list[str | os.PathLike[str]],
    *,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` without a shell or standard input; never raises for a non-zero exit."""
    return subprocess.run(
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class Podman:
    """podman with its own configuration and storage under ``CACHE_DIR/podman``.

    The settings are the ones rootful podman needs on these machines from its very first
    call: runc (not crun), cgroupfs (no systemd to manage cgroups), events in a file (no
    journal), explicit ulimits. Containers use the host network or none, never the bridge
    (it edits the host's firewall).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        for sub in ("storage", "run", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{home}/events.log"\n'
            f'tmp_dir = "{home}/tmp"\n',
            encoding="utf-8",
        )
        (home / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{home}/storage"\n'
            f'runroot = "{home}/run"\n',
            encoding="utf-8",
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
            "TMPDIR": str(home / "tmp"),
        }

    def __call__(
        self, *args: str | os.PathLike[str], timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS``; with ``check``, a failure fails the test quoting stderr."""
        result = run(["podman", *args], timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(map(str, args))} failed: {result.stderr[-3000:]}")
        return result


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two test runs never build the same thing)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unmount_below(root: Path) -> None:
    """Unmount whatever a failed debootstrap left mounted inside ``root`` (proc, sys)."""
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    for target in sorted((line.split()[1] for line in mounts), reverse=True):
        if Path(target).is_relative_to(root):
            run(["umount", "-l", target])


def _base_image(podman: Podman) -> str:
    """The debootstrap base image, built once per machine and package list."""
    return debootstrap_image(
        podman,
        suite=BASE_SUITE,
        packages=BASE_PACKAGES,
        repository="localhost/runner-storage-ci-base",
        command='CMD ["/bin/bash"]',
        lock="base.lock",
    )


def debootstrap_image(
    podman: Podman,
    *,
    suite: str,
    packages: Sequence[str],
    repository: str,
    command: str,
    lock: str,
) -> str:
    """A ``debootstrap --variant=minbase`` image of ``suite`` with ``packages``, cached.

    Tagged by a hash of its inputs and built once per machine (under ``CACHE_DIR/lock``);
    the images of an older package list are removed.
    """
    key = hashlib.sha256(
        json.dumps([suite, "minbase", sorted(packages), platform.machine()]).encode()
    ).hexdigest()[:12]
    tag = f"{repository}:{suite}-{key}"
    with _locked(CACHE_DIR / lock):
        if podman("image", "exists", tag, check=False).returncode == 0:
            return tag
        work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE_DIR))
        rootfs = work / "rootfs"
        try:
            include = ",".join(packages)
            made = run(
                ["debootstrap", "--variant=minbase", f"--include={include}", suite, rootfs],
                timeout=900,
            )
            assert made.returncode == 0, f"debootstrap failed: {made.stdout[-3000:]}"
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / cache, ignore_errors=True)
            tar = run(["tar", "--numeric-owner", "-C", rootfs, "-cf", work / "rootfs.tar", "."])
            assert tar.returncode == 0, tar.stderr
            podman("import", "--change", command, work / "rootfs.tar", tag, timeout=300)
            listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
            for stale in set(listed.stdout.split()) - {tag}:  # an older package list's base
                podman("rmi", stale, check=False)
        finally:
            _unmount_below(work)
            shutil.rmtree(work, ignore_errors=True)
    return tag


def _platform_tags(glibc: str, machine: str) -> list[str]:
    """The pip ``--platform`` values for a glibc ``2.N`` system: every manylinux it runs."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    assert major == 2, glibc
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
    return tags + [f"{name}_{machine}" for name, needs in legacy.items() if minor >= needs]


def _wheels(into: Path, base_python: str, glibc: str) -> None:
    """The project's wheel, plus its dependencies' (extras included) for the base's Python.

    The dependencies are downloaded once per dependency list and target, then reused.
    """
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = run([*pip, "wheel", "-q", "--no-deps", "-w", into, REPO], timeout=300)
    assert built.returncode == 0, built.stderr
    (project_wheel,) = into.glob("runner_storage-*.whl")
    with ZipFile(project_wheel) as wheel:
        (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        headers = HeaderParser().parsestr(wheel.read(metadata).decode())
    requires = sorted(headers.get_all("Requires-Dist") or [])
    platforms = _platform_tags(glibc, platform.machine())
    key = hashlib.sha256(
        json.dumps([requires, IMAGE_EXTRAS, base_python, platforms]).encode()
    ).hexdigest()
    cache = CACHE_DIR / f"wheels-{key[:12]}"
    with _locked(CACHE_DIR / "wheels.lock"):
        if not cache.is_dir():
            download = [*pip, "download", "-q", "--only-binary=:all:"]
            download += ["--python-version", base_python, "--implementation=cp"]
            download += [f"--abi=cp{base_python.replace('.', '')}"]
            download += [f"--platform={tag}" for tag in platforms]
            with tempfile.TemporaryDirectory(prefix="staging-", dir=CACHE_DIR) as staging:
                fetched = Path(staging) / "wheels"
                done = run(
                    [*download, "-d", fetched, f"{project_wheel}[{IMAGE_EXTRAS}]"], timeout=600
                )
                assert done.returncode == 0, done.stderr
                (fetched / project_wheel.name).unlink()
                for stale in CACHE_DIR.glob("wheels-*"):  # for an older dependency list
                    shutil.rmtree(stale, ignore_errors=True)
                fetched.rename(cache)
    for wheel_file in cache.glob("*.whl"):
        shutil.copy2(wheel_file, into / wheel_file.name)


def _build_context(into: Path) -> None:
    """What a checkout holds (tracked and new files, not ignored ones), to build from."""
    listed = run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    )
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


@pytest.fixture(scope="module")
def podman() -> Podman:
    """A podman in its own storage; skips only where podman or debootstrap cannot run."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (`make system-deps` installs them)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and rootful podman need root; this test runs as a user")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return Podman(CACHE_DIR / "podman")


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Dockerfile built offline on the debootstrap base, removed afterwards."""
    base = _base_image(podman)
    probe = podman(
        "run", "--rm", "--network=none", base, "python3", "-c",
        "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])",
    )  # fmt: skip
    base_python, glibc = probe.stdout.split()
    context = tmp_path_factory.mktemp("image-context")
    _build_context(context)
    (context / "build" / "wheels").mkdir(parents=True)
    _wheels(context / "build" / "wheels", base_python, glibc)
    tag = f"localhost/runner-storage-test:{os.getpid()}-{int(time.time())}"
    podman(
        "build", "--pull=never", "--network=none", "--format", "docker", "--layers=false",
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_NO_INDEX=1",
        "-t", tag, context,
        timeout=600,
    )  # fmt: skip
    yield tag
    podman("rmi", "--force", tag)
    podman("image", "prune", "--force")


def container_processes(container_id: str) -> list[int]:
    """Live processes whose command line names the container (conmon, runc, the payload)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if container_id.encode() in cmdline and state not in {"Z", "X"}:
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def running_container(podman: Podman, name: str, *args: str) -> Iterator[str]:
    """Run a detached container; on the way out force-remove it whatever happened."""
    started = podman("run", "--detach", "--name", name, *args)
    container_id = started.stdout.strip().splitlines()[-1]
    try:
        yield container_id
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
