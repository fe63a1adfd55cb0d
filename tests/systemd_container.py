"""systemd as PID 1 in a podman container, with runner-storage and its unit installed.

Used by ``test_systemd_boot.py`` (imported there, registered nowhere else). The pieces:

* :func:`systemd_base_image`: a debootstrap bookworm with systemd, built once per machine
  and package list and kept in the podman storage of ``containers.py`` (``CACHE_DIR``);
* :func:`systemd_image`: that base plus the project in a venv (installed offline from the
  wheels ``containers.py`` prepares), the unit at ``/etc/systemd/system``, a git
  repository, a small git smart-HTTP server that wants the token, the config and the token
  file; kept between runs, keyed by a hash of everything that goes in;
* :class:`Machine`: one booted container (``podman run --systemd=always --network=none``),
  driven with ``podman exec ... systemctl`` and ``journalctl``, force-removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from containers import CACHE_DIR, REPO, Podman, _locked, _wheels, debootstrap_image, run
from servers.procs import wait_until

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "git",
    "ca-certificates",
    "procps",
)
"""The base's packages: systemd to boot, Python for the venv, git for the sources, and
procps for the unit's ``ExecReload=/bin/kill`` (minbase has no ``/bin/kill``; every other
Debian install does)."""

BASE_REPOSITORY = "localhost/runner-storage-ci-systemd-base"
IMAGE_REPOSITORY = "localhost/runner-storage-ci-systemd"

UNIT = REPO / "systemd" / "runner-storage.service"
UNIT_PATH = "/etc/systemd/system/runner-storage.service"
DROP_IN_DIR = "/etc/systemd/system/runner-storage.service.d"
CONFIG = "/etc/runner-storage/config.toml"
TOKEN_FILE = "/etc/runner-storage/token"
STATE_DIR = "/var/lib/private/runner-storage"
"""Where ``StateDirectory=`` really is with ``DynamicUser=yes`` (``/var/lib/runner-storage``
is a symlink to it)."""
ROOT = "/var/lib/runner-storage"
CREDENTIAL = "/run/credentials/runner-storage.service/token"

REPO_DIR = "/srv/git/flows.git"
"""A bare repository in the image; ``WORK_DIR`` is the clone commits are made in."""
WORK_DIR = "/srv/work/flows"
GIT_HTTP_PORT = 8418
GIT_HTTP_URL = f"http://127.0.0.1:{GIT_HTTP_PORT}/flows.git"
GIT_HTTP_USER = "x-access-token"
GIT_HTTP_HOLD = "/run/git-http/hold"
"""While this file exists the git HTTP server holds every request whose ``METHOD PATH BODY``
contains the file's text (all of them if it is empty), after noting it in ``GIT_HTTP_HELD``."""
GIT_HTTP_HELD = "/run/git-http/held"
"""One line per request the git HTTP server has held."""

TOKEN = "tok-" + hashlib.sha256(b"runner-storage systemd test token").hexdigest()[:24]
"""The token file's content: the git HTTP server's password. It must never be shown."""

INITIAL_FILES = {"README.md": "# flows\n", "flows/a.py": "A = 1\n"}

GIT_HTTP_SERVER = r'''
"""git smart HTTP (git http-backend as CGI) on 127.0.0.1, Basic auth with one token."""
import base64, gzip, os, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, ROOT, USER, TOKEN_FILE, HOLD, HELD = sys.argv[1:7]
with open(TOKEN_FILE, encoding="utf-8") as handle:
    WANTED = "Basic " + base64.b64encode(f"{USER}:{handle.read().strip()}".encode()).decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def held(self, request):
        try:
            with open(HOLD, encoding="utf-8") as hold:
                return hold.read().strip() in request
        except FileNotFoundError:
            return False

    def serve(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        plain = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
        request = f"{self.command} {self.path} {plain.decode('latin-1')}"
        if self.held(request):
            with open(HELD, "a", encoding="utf-8") as held:
                held.write(f"{self.command} {self.path}\n")
            while self.held(request):
                time.sleep(0.05)
        if self.headers.get("Authorization") != WANTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": USER,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
'''
"""A stdlib-only git server run inside the container (there is no network to the host)."""

GIT_HTTP_TOKEN = "/etc/git-http/token"
"""The token the git HTTP server wants: a copy of the one the unit delivers, so a test can
give the daemon a wrong one."""

GIT_HTTP_UNIT = f"""[Unit]
Description=git smart HTTP for the runner-storage tests

[Service]
RuntimeDirectory=git-http
RuntimeDirectoryPreserve=yes
ExecStart=/usr/bin/python3 /usr/local/lib/git-http.py {GIT_HTTP_PORT} /srv/git \
{GIT_HTTP_USER} {GIT_HTTP_TOKEN} {GIT_HTTP_HOLD} {GIT_HTTP_HELD}

[Install]
WantedBy=multi-user.target
"""

SETUP = f"""\
set -eu
python3 -m venv /opt/runner-storage
set -- /tmp/build/wheels/runner_storage-*.whl
/opt/runner-storage/bin/pip install --no-cache-dir --no-index --disable-pip-version-check \\
    --find-links=/tmp/build/wheels "$1"
ln -s /opt/runner-storage/bin/runner-storage /usr/local/bin/runner-storage
runner-storage --version
install -D -m 0644 /tmp/build/runner-storage.service {UNIT_PATH}
install -D -m 0600 /tmp/build/token {TOKEN_FILE}
install -D -m 0600 /tmp/build/token {GIT_HTTP_TOKEN}
install -D -m 0644 /tmp/build/git-http.py /usr/local/lib/git-http.py
install -D -m 0644 /tmp/build/git-http.service /etc/systemd/system/git-http.service
systemctl enable git-http.service
# Nothing to log in to, no network to wait for.
systemctl mask systemd-logind.service getty.target console-getty.service
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com
export GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com
git init -q --bare -b main {REPO_DIR}
mkdir -p "$(dirname {WORK_DIR})"
cp -a /tmp/build/initial {WORK_DIR}
git -C {WORK_DIR} init -q -b main
git -C {WORK_DIR} add -A
git -C {WORK_DIR} commit -q -m initial
git -C {WORK_DIR} remote add origin {REPO_DIR}
git -C {WORK_DIR} push -q origin main
rm -rf /tmp/build
"""
"""Run in the image build (no network): the venv, the units, the token, the repository."""

CONTAINERFILE = """\
ARG BASE
FROM $BASE
COPY . /tmp/build
RUN ["/bin/sh", "/tmp/build/setup.sh"]
"""
"""The test image on top of the systemd base; built with ``--network=none``."""


def systemd_base_image(podman: Podman) -> str:
    """The debootstrap base with systemd, built once per machine and package list."""
    return debootstrap_image(
        podman,
        suite=SUITE,
        packages=PACKAGES,
        repository=BASE_REPOSITORY,
        command='CMD ["/sbin/init"]',
        lock="systemd-base.lock",
    )


def _remove_stale(podman: Podman, repository: str, keep: str) -> None:
    """Remove the images of ``repository`` other than ``keep`` (older inputs)."""
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
    for stale in set(listed.stdout.split()) - {keep}:
        podman("rmi", stale, check=False)


def _inputs_key(base: str) -> str:
    """A hash of everything that goes into the image: base, project sources, files baked in."""
    listed = run(
        [
            *("git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"),
            *("--", "runner_storage", "service", "pyproject.toml", "README.md"),
        ]
    )
    assert listed.returncode == 0, listed.stderr
    digest = hashlib.sha256()
    for name in sorted(filter(None, listed.stdout.split("\0"))):
        path = REPO / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for text in (base, SETUP, CONTAINERFILE, GIT_HTTP_SERVER, GIT_HTTP_UNIT, TOKEN):
        digest.update(text.encode() + b"\0")
    digest.update(UNIT.read_bytes())
    digest.update(json.dumps(INITIAL_FILES).encode())
    return digest.hexdigest()[:12]


def systemd_image(podman: Podman) -> str:
    """The test image (see the module's docstring), built offline unless already there."""
    base = systemd_base_image(podman)
    tag = f"{IMAGE_REPOSITORY}:{_inputs_key(base)}"
    with _locked(CACHE_DIR / "systemd-image.lock"):
        if podman("image", "exists", tag, check=False).returncode == 0:
            return tag
        probe = podman(
            "run", "--rm", "--network=none", base, "python3", "-c",
            "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])",
        )  # fmt: skip
        base_python, glibc = probe.stdout.split()
        with tempfile.TemporaryDirectory(prefix="systemd-image-", dir=CACHE_DIR) as tmp:
            context = Path(tmp)
            (context / "wheels").mkdir()
            _wheels(context / "wheels", base_python, glibc)
            for relative, content in INITIAL_FILES.items():
                (context / "initial" / relative).parent.mkdir(parents=True, exist_ok=True)
                (context / "initial" / relative).write_text(content, encoding="utf-8")
            (context / "setup.sh").write_text(SETUP, encoding="utf-8")
            (context / "git-http.py").write_text(GIT_HTTP_SERVER, encoding="utf-8")
            (context / "git-http.service").write_text(GIT_HTTP_UNIT, encoding="utf-8")
            (context / "token").write_text(TOKEN + "\n", encoding="utf-8")
            shutil.copy2(UNIT, context / "runner-storage.service")
            (context / "Containerfile").write_text(CONTAINERFILE, encoding="utf-8")
            podman(
                "build", "--pull=never", "--network=none", "--format", "docker",
                "--layers=false", "--build-arg", f"BASE={base}", "-t", tag,
                "-f", context / "Containerfile", context,
                timeout=600,
            )  # fmt: skip
        _remove_stale(podman, IMAGE_REPOSITORY, tag)
        podman("image", "prune", "--force", check=False)
    return tag


class Machine:
    """One container booted with systemd as PID 1; every call goes through ``podman exec``."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name

    def exec(
        self, *argv: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container as root; never raises for a non-zero exit."""
        return subprocess.run(
            ["podman", "exec", *(["--interactive"] if input is not None else []), self.name, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.podman.env,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )

    def check(self, *argv: str, input: str | None = None, timeout: float = 60) -> str:
        """Run ``argv`` in the container; fail the test quoting its output unless it exits 0."""
        done = self.exec(*argv, input=input, timeout=timeout)
        if done.returncode != 0:
            pytest.fail(
                f"{shlex.join(argv)} exited {done.returncode}: "
                f"{(done.stdout + done.stderr)[-3000:]}\n{self.journal()[-3000:]}"
            )
        return done.stdout

    def sh(self, script: str, timeout: float = 60) -> str:
        """Run a shell script in the container (``set -eu``); its standard output."""
        return self.check("/bin/sh", "-euc", script, timeout=timeout)

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        """Start ``argv`` in the container without waiting for it."""
        return subprocess.Popen(
            ["podman", "exec", self.name, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.podman.env,
        )

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Write ``text`` to ``path`` in the container (root-owned, ``mode``)."""
        script = 'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"'
        self.check("/bin/sh", "-euc", script, "sh", path, mode, input=text)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the container (a symlink counts if it resolves)."""
        return self.exec("test", "-e", path).returncode == 0

    def show(self, *properties: str, unit: str = "runner-storage") -> dict[str, str]:
        """``systemctl show -p ...`` of ``unit`` as a dict."""
        out = self.check("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "runner-storage", output: str = "cat") -> str:
        """The unit's journal (all of it, with ``output`` as ``journalctl -o``)."""
        self.exec("journalctl", "--sync")
        done = self.exec("journalctl", "--no-pager", "-o", output, "-u", unit)
        return done.stdout + done.stderr

    def daemon_reload(self) -> None:
        """``systemctl daemon-reload``: pick up unit files and drop-ins written since."""
        self.check("systemctl", "daemon-reload")

    def drop_in(self, text: str, name: str = "test.conf") -> None:
        """Write a drop-in for runner-storage.service and reload systemd's configuration."""
        self.write(f"{DROP_IN_DIR}/{name}", text)
        self.daemon_reload()

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; on timeout fail quoting the unit's state and journal."""
        wait_until(
            predicate,
            timeout=timeout,
            what=what,
            details=lambda: f"{self.show()}\n{self.journal()[-3000:]}",
            interval=0.1,
        )


@contextlib.contextmanager
def booted(podman: Podman, image: str, name: str) -> Iterator[Machine]:
    """Boot ``image`` with systemd as PID 1 (no network); force-remove it afterwards."""
    podman("rm", "--force", "--time", "0", name, check=False)
    podman("run", "--detach", "--systemd=always", "--network=none", "--name", name, image)
    machine = Machine(podman, name)
    try:
        states: list[str] = []

        def booted() -> bool:
            # --wait blocks until the boot has finished, once systemctl can reach systemd.
            done = machine.exec("systemctl", "is-system-running", "--wait", timeout=120)
            states.append(done.stdout.strip() or done.stderr.strip())
            return states[-1] in ("running", "degraded", "maintenance", "stopping")

        wait_until(booted, timeout=60, what="systemd to boot", details=lambda: str(states[-3:]))
        if states[-1] != "running":
            failed = machine.exec("systemctl", "--failed", "--no-pager").stdout
            pytest.fail(f"systemd booted {states[-1]}: {failed}")
        machine.check("systemctl", "is-active", "git-http.service")
        yield machine
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
