"""One copy per node: ``deploy/kubernetes/daemonset.yaml`` and the contract its readers rely on.

The manifest is checked like the other manifests (kubernetes-validate, offline and strict,
for the same Kubernetes versions) and for the wiring a user relies on: the daemon publishes
into a hostPath at its config's ``root``, as a non-root uid, and worker pods mount that
hostPath read-only.

Then the promise behind it, with real processes: the daemon publishes new versions of a git
repository over and over while a reader running as ANOTHER uid (as a pod of any uid would)
keeps entering ``ROOT/NAME`` and reading every file of the tree it entered. The reader must
always see one whole version, readable, and must not be able to write. Running a process as
another uid needs root: these tests skip, saying so, when the suite does not run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from containers import IMAGE_USER, run
from daemon_process import RUNNER_STORAGE
from servers.gitrepo import INITIAL_FILES, UpstreamRepo, UpstreamRepoFactory, run_git
from servers.procs import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    http_status,
    start_process,
    wait_until,
)
from test_deploy import DOCKERFILE, KUBERNETES, KUBERNETES_VERSIONS, _stages

from service.config import load_settings

MANIFEST = KUBERNETES / "daemonset.yaml"
READER_UID = 65534
"""``nobody``: a uid that owns nothing the daemon writes, as a pod of any uid."""

VERSIONS = 6
"""New versions published while the reader reads (besides the first one)."""


# --- the manifest ----------------------------------------------------------------------------


def _documents() -> dict[str, dict[str, Any]]:
    """The manifest's documents by kind (one of each)."""
    documents = list(yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")))
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one document of each kind"
    return by_kind


def _validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict", path],
        timeout=60,
    )


def _image_environment() -> dict[str, str]:
    """The ``ENV`` the image's runtime stage sets (``RUNNER_STORAGE_ROOT=/data``, ...)."""
    runtime = _stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]
    pairs = [word for keyword, args in runtime if keyword == "ENV" for word in args.split()]
    return dict(pair.split("=", 1) for pair in pairs)


def _container_environment(container: Mapping[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container.get("env", [])}


def _mount(container: Mapping[str, Any], volume: str) -> dict[str, Any]:
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume]
    return dict(mount)


def _host_volume(pod: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    (volume,) = [v for v in pod["volumes"] if "hostPath" in v]
    return volume["name"], volume["hostPath"]


def _check_hardening(container: Mapping[str, Any], *, uid: int) -> None:
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == uid
    assert context["runAsUser"] != 0
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


def _probe(container: Mapping[str, Any], probe: str) -> tuple[str, str]:
    action = container[probe]["httpGet"]
    return action["path"], action["port"]


class TestDaemonSetManifest:
    """deploy/kubernetes/daemonset.yaml: schema-valid, and wired the way its comments say."""

    @pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
    def test_validates_strictly(self, version: str) -> None:
        """kubernetes-validate, offline and strict (no unknown fields), accepts every document."""
        result = _validate(MANIFEST, version)
        assert result.returncode == 0, result.stdout + result.stderr
        for kind in ("configmap", "daemonset", "deployment"):
            assert f"passed for resource {kind}/" in result.stdout + result.stderr

    def test_daemon_publishes_into_the_host_directory_at_its_root(self, tmp_path: Path) -> None:
        """The daemon runs ``run --config`` from the ConfigMap and writes into the hostPath.

        The hostPath is mounted read-write exactly where the daemon's root is, as the
        settings come out once the image's ``RUNNER_STORAGE_ROOT=/data`` and the container's
        environment are applied (the environment wins over the file); its token comes from
        a read-only Secret file, and its HTTP port is the one the probes use.
        """
        documents = _documents()
        pod = documents["DaemonSet"]["spec"]["template"]["spec"]
        (daemon,) = pod["containers"]
        assert daemon["args"][:2] == ["run", "--config"]
        config_path = Path(daemon["args"][2])

        volumes = {v["name"]: v for v in pod["volumes"]}
        config_mount = next(
            m for m in daemon["volumeMounts"] if m["mountPath"] == str(config_path.parent)
        )
        assert config_mount["readOnly"] is True
        config_map = documents["ConfigMap"]
        assert volumes[config_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
        config = tmp_path / config_path.name
        config.write_text(config_map["data"][config_path.name], encoding="utf-8")

        name, host_path = _host_volume(pod)
        assert host_path == {"path": "/var/lib/runner-storage", "type": "DirectoryOrCreate"}
        code = _mount(daemon, name)
        assert not code.get("readOnly", False)
        assert "subPath" not in code

        image = _image_environment()
        assert image["RUNNER_STORAGE_ROOT"] == "/data", "the image's default, to override"
        environ = {**image, **_container_environment(daemon)}
        settings = load_settings(config, environ=environ)
        assert settings.root == Path(code["mountPath"])
        assert load_settings(config, environ={}).root == settings.root, "file and env agree"

        ports = {p["name"]: p["containerPort"] for p in daemon["ports"]}
        assert ports == {"http": settings.http_port}
        assert settings.http_host == "0.0.0.0", "kubelet probes come from outside the pod"
        assert _probe(daemon, "readinessProbe") == ("/readyz", "http")
        assert _probe(daemon, "livenessProbe") == ("/livez", "http")

        (source,) = settings.all_sources()
        token = source.model_dump()["credentials"]["token"]
        assert token["value"] is None
        assert token["env"] is None
        secret_mount = next(
            m for m in daemon["volumeMounts"] if m["mountPath"] == str(Path(token["file"]).parent)
        )
        assert secret_mount["readOnly"] is True
        assert "secret" in volumes[secret_mount["name"]]

    def test_daemon_runs_as_a_fixed_non_root_uid(self) -> None:
        """The daemon is uid/gid 10001 (the image's user), hardened like the other manifests."""
        pod = _documents()["DaemonSet"]["spec"]["template"]["spec"]
        (daemon,) = pod["containers"]
        _check_hardening(daemon, uid=IMAGE_USER)
        assert daemon["securityContext"]["runAsGroup"] == IMAGE_USER
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False

    def test_init_container_hands_the_host_directory_to_the_daemon(self, tmp_path: Path) -> None:
        """Kubelet creates a hostPath root:root 0755; the init container gives it to uid 10001.

        It is the only root process, with CAP_CHOWN and CAP_FOWNER and nothing else, and its
        command really leaves a root-owned 0700 directory owned by the daemon, mode 0755.
        """
        pod = _documents()["DaemonSet"]["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        (daemon,) = pod["containers"]
        name, _ = _host_volume(pod)
        mount_path = _mount(daemon, name)["mountPath"]
        assert _mount(init, name)["mountPath"] == mount_path
        assert "restartPolicy" not in init, "a plain init container: it ends before the daemon"
        context = init["securityContext"]
        assert context["runAsUser"] == 0
        assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        daemon_context = daemon["securityContext"]
        owner = f"{daemon_context['runAsUser']}:{daemon_context['runAsGroup']}"

        shell, flag, script = init["command"]
        assert (shell, flag) == ("sh", "-c")
        assert f"chown {owner} {mount_path}" in script
        if os.geteuid() != 0:
            return  # chown to another uid needs root: the static checks above still ran
        host = tmp_path / "host"
        host.mkdir(mode=0o700)
        result = run(["sh", "-c", script.replace(mount_path, str(host))])
        assert result.returncode == 0, result.stderr
        info = host.stat()
        assert (info.st_uid, info.st_gid) == (IMAGE_USER, IMAGE_USER)
        assert info.st_mode & 0o7777 == 0o755

    def test_workers_mount_the_same_host_directory_read_only(self) -> None:
        """Every container of the worker mounts the daemon's hostPath read-only, whole.

        No subPath (it would pin one version), no mount propagation; the worker runs from
        ``MOUNT/NAME`` for the configured source's name, as another uid and gid than the
        daemon's, with no supplemental group of the daemon: world-readable is enough.
        """
        documents = _documents()
        daemon_pod = documents["DaemonSet"]["spec"]["template"]["spec"]
        worker_pod = documents["Deployment"]["spec"]["template"]["spec"]
        _, daemon_host_path = _host_volume(daemon_pod)
        name, host_path = _host_volume(worker_pod)
        assert host_path["path"] == daemon_host_path["path"]

        (worker,) = worker_pod["containers"]
        readers = [*worker_pod.get("initContainers", []), worker]
        mount_path = _mount(worker, name)["mountPath"]
        for reader in readers:
            mount = _mount(reader, name)
            assert mount["readOnly"] is True
            assert mount["mountPath"] == mount_path
            assert "subPath" not in mount
            assert "subPathExpr" not in mount
            assert mount.get("mountPropagation", "None") == "None"
            _check_hardening(reader, uid=worker_pod["securityContext"]["runAsUser"])

        config = yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))
        source_name = re.search(r'^name = "([^"]+)"', next(config)["data"]["config.toml"], re.M)
        assert source_name is not None
        assert worker["workingDir"] == f"{mount_path}/{source_name.group(1)}"

        daemon_context = daemon_pod["containers"][0]["securityContext"]
        worker_context = worker_pod["securityContext"]
        assert worker_context["runAsUser"] != daemon_context["runAsUser"]
        assert worker_context["runAsGroup"] != daemon_context["runAsGroup"]
        assert daemon_context["runAsGroup"] not in worker_context.get("supplementalGroups", [])
        assert "fsGroup" not in worker_context, "fsGroup does not apply to hostPath anyway"
        assert worker_pod["automountServiceAccountToken"] is False


# --- readers of another uid ------------------------------------------------------------------

READER = r"""
import errno, os, sys

root, name = sys.argv[1], sys.argv[2]
link = os.path.join(root, name)
constant = b"unchanged in every version\n"


def say(*words):
    print(*words, flush=True)


def oserror(what, exc):
    say("error", what, errno.errorcode.get(exc.errno, str(exc.errno)), exc.filename or "")
    sys.exit(1)


def listing(fd):
    found = []
    for top, _dirs, files, _fd in os.fwalk(".", dir_fd=fd):
        found.extend(os.path.normpath(os.path.join(top, f)) for f in files)
    return sorted(found)


def read(fd, path):
    handle = os.open(path, os.O_RDONLY, dir_fd=fd)
    try:
        chunks = []
        while chunk := os.read(handle, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(handle)


def check(paths, contents):
    lines = contents["MANIFEST"].decode().splitlines()
    marker = lines[0]
    if paths != sorted([*lines[1:], "MANIFEST"]):
        say("error", "mixed file set under", marker, paths)
        sys.exit(1)
    for path, data in contents.items():
        expected = data == constant if path.startswith("constant/") else (
            data.startswith(marker.encode() + b"\n")
        )
        if not expected:
            say("error", "mixed contents:", path, "in", marker, "reads", data[:40])
            sys.exit(1)
    return marker.split()[1]


def enter():
    fd = os.open(link, os.O_RDONLY | os.O_DIRECTORY)  # like chdir: keeps what it entered
    return fd, os.path.basename(os.readlink("/proc/self/fd/%d" % fd))


def full_read():
    fd, _ = enter()
    try:
        paths = listing(fd)
        check(paths, {path: read(fd, path) for path in paths})
    finally:
        os.close(fd)


def refuses_writes(fd):
    for where, directory in (("version", fd), ("root", None)):
        target = "probe" if directory is not None else os.path.join(root, "probe")
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=directory))
        except PermissionError:
            continue
        say("error", "the reader could create a file in the", where)
        sys.exit(1)


held = set()
try:
    while True:
        fd, version_dir = enter()
        try:
            paths = listing(fd)
            contents = {"MANIFEST": read(fd, "MANIFEST")}
            version = contents["MANIFEST"].decode().split()[1]
            if version in held:
                contents.update((path, read(fd, path)) for path in paths)
                check(paths, contents)
                continue
            # Hold this version half read while the next one is published, then finish it.
            half = len(paths) // 2
            contents.update((path, read(fd, path)) for path in paths[:half])
            refuses_writes(fd)
            if not os.access("bin/run.sh", os.X_OK, dir_fd=fd):
                say("error", "bin/run.sh is not executable for the reader")
                sys.exit(1)
            say("holding", version)
            reads = 0
            while True:
                full_read()
                reads += 1
                if os.path.basename(os.readlink(link)) != version_dir:
                    break
            contents.update((path, read(fd, path)) for path in paths[half:])
            if listing(fd) != paths:
                say("error", "the entered version changed under the reader:", version)
                sys.exit(1)
            if check(paths, contents) != version:
                say("error", "the entered version is not", version)
                sys.exit(1)
            held.add(version)
            say("held", version, "after", reads, "whole reads of the live tree")
        finally:
            os.close(fd)
except OSError as exc:
    oserror("reading", exc)
"""
"""The reader, stdlib only, run as another uid by the ``start_reader`` fixture.

It enters ``ROOT/NAME`` (a directory descriptor, which keeps the version as ``chdir`` does)
over and over and reads every file. The first time it enters a version it reads half of it,
checks it cannot write there or in ``ROOT``, says ``holding N``, keeps reading the live tree
whole until the symlink moves, then finishes the held version and says ``held N``. Any
failure is one ``error ...`` line (an ``OSError`` with its errno name) and exit status 1.
"""


def _version_files(version: int) -> dict[str, str | None]:
    """Version ``version`` of the repository: every file carries its marker, but one.

    ``only-N.txt`` exists in version N only (a mixed file set shows), ``constant/`` never
    changes (so it is hard-linked between versions), ``bin/run.sh`` is executable.
    """
    marker = f"version {version}\n"
    body = marker + "x" * 4000 + "\n"
    files: dict[str, str | None] = {f"pkg/mod_{i:02}.py": body for i in range(24)}
    files |= {
        "pkg/deep/nested/leaf.txt": body,
        f"only-{version}.txt": body,
        "bin/run.sh": marker + "echo hello\n",
        "constant/data.txt": "unchanged in every version\n",
    }
    manifest = marker + "".join(f"{path}\n" for path in sorted(files))
    files["MANIFEST"] = manifest
    if version > 0:
        files[f"only-{version - 1}.txt"] = None
    return files


def _first_version(repo: UpstreamRepo) -> None:
    """Replace the upstream's initial files by version 0, with ``bin/run.sh`` executable."""
    repo.commit({**dict.fromkeys(INITIAL_FILES), **_version_files(0)}, "version 0")
    run_git("update-index", "--chmod=+x", "bin/run.sh", cwd=repo.work_path)
    run_git("commit", "-q", "-m", "version 0, executable", cwd=repo.work_path)
    run_git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=repo.work_path)


@pytest.fixture(scope="module")
def reader_python() -> str:
    """An interpreter uid 65534 can run (the venv's may sit under root's 0700 home)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a reader as another uid (the suite runs as root in CI)")
    candidates = [
        sys.executable,
        getattr(sys, "_base_executable", sys.executable),
        os.path.realpath(sys.executable),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ]
    for candidate in dict.fromkeys(candidates):
        try:
            probe = subprocess.run(
                [candidate, "-I", "-S", "-c", "import errno, os, sys"],
                user=READER_UID,
                group=READER_UID,
                extra_groups=[],
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python interpreter that uid {READER_UID} may run: tried {candidates}")


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """The node's directory: ``ROOT``, on a path every uid may traverse (not ``tmp_path``).

    pytest's base temporary directory is 0700, so a reader of another uid could not even
    reach ``tmp_path``. Like the hostPath, ``ROOT`` itself is 0755 and not the reader's.
    """
    top = Path(tempfile.mkdtemp(prefix="runner-storage-node-"))
    try:
        top.chmod(0o755)
        root = top / "root"
        root.mkdir()
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(top, ignore_errors=True)


@dataclass
class Reader:
    """The reader process and its output."""

    process: ManagedProcess

    def lines(self) -> list[str]:
        """What the reader said so far, one line per event."""
        return self.process.output().splitlines()

    def wait_for(self, line: str, timeout: float = 60) -> None:
        """Wait until the reader says ``line``; fail at once if it exits or reports an error."""

        def said() -> bool:
            lines = self.lines()
            errors = [text for text in lines if text.startswith("error")]
            assert not errors, self.process.describe()
            assert self.process.popen.poll() is None, self.process.describe()
            return any(text == line or text.startswith(f"{line} ") for text in lines)

        wait_until(said, timeout=timeout, what=f"reader: {line!r}", details=self.process.describe)


class ReaderFactory(Protocol):
    """Starts the reader as uid 65534 and ``group`` on ``ROOT/NAME``."""

    def __call__(self, root: Path, name: str, *, group: int) -> Reader:
        """Start a reader."""
        ...


@pytest.fixture
def start_reader(reader_python: str, tmp_path: Path) -> Iterator[ReaderFactory]:
    """Start readers as uid 65534 with the given group; each is stopped at teardown."""
    started: list[ManagedProcess] = []

    def start(root: Path, name: str, *, group: int) -> Reader:
        log = tmp_path / f"reader-{len(started)}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(
                [reader_python, "-I", "-S", "-c", READER, str(root), name],
                user=READER_UID,
                group=group,
                extra_groups=[],  # drop root's supplementary groups
                cwd="/",
                env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The reader listens on nothing: port 0 makes the port check of stop() trivial.
        process = ManagedProcess(name="reader", port=0, popen=popen, log_path=log)
        started.append(process)
        return Reader(process)

    yield start
    for process in started:
        process.stop()


def _start_daemon(root: Path, repo: UpstreamRepo, *, umask: int, logs: Path) -> ManagedProcess:
    """``runner-storage run`` with ``umask``, as the test's uid, pulling only when told."""
    port = free_port()
    config = logs / "config.toml"
    config.write_text(
        f'root = "{root}"\nhttp_host = "{LOOPBACK}"\nhttp_port = {port}\n'
        'log_format = "json"\nkeep_versions = 3\ngrace_period = 600\n'
        f'[[sources]]\nname = "flows"\nsource = "{repo.file_url}"\nbranch = "main"\n'
        "pull_interval = 3600\n",
        encoding="utf-8",
    )
    argv = ["sh", "-c", 'umask "$0" && exec "$@"', f"{umask:04o}"]
    return start_process(
        "runner-storage",
        lambda _port: [*argv, RUNNER_STORAGE, "run", "--config", str(config)],
        ready=lambda p: http_status("/readyz", p) == 200,
        log_dir=logs,
        port=port,
    )


@pytest.fixture
def daemon_logs(tmp_path: Path) -> Path:
    """Where the daemon's config and log go (root's own; the reader never looks there)."""
    logs = tmp_path / "daemon"
    logs.mkdir()
    return logs


class TestReadersOfAnotherUid:
    """Pods of any uid read the node's copy and see the same atomic contract as the daemon."""

    @pytest.mark.parametrize(
        "umask",
        [
            pytest.param(0o022, id="umask-0022-any-reader"),
            pytest.param(0o027, id="umask-0027-reader-in-the-daemons-group"),
        ],
    )
    def test_reader_sees_whole_versions_while_the_daemon_publishes(
        self,
        umask: int,
        shared_root: Path,
        daemon_logs: Path,
        upstream_repo: UpstreamRepoFactory,
        start_reader: ReaderFactory,
    ) -> None:
        """A reader of another uid always reads one whole, readable version, and writes nothing.

        The daemon (the test's uid) publishes a new commit each time the reader, running as
        uid 65534, is half-way through the tree it entered; the reader keeps re-entering
        ``ROOT/flows`` and reading every file meanwhile. Each tree it reads is one version
        (same marker everywhere, that version's file set), the one it entered stays whole
        across the publish, nothing is refused (no EACCES), executables stay executable, and
        creating a file in the tree or in ROOT is refused. With the container default umask
        0022 any uid reads; with 0027 (the systemd unit's) a reader in the daemon's group does.
        """
        repo = upstream_repo("node")
        _first_version(repo)
        daemon = _start_daemon(shared_root, repo, umask=umask, logs=daemon_logs)
        try:
            # 0027 leaves other uids nothing: the reader then needs the daemon's group.
            group = READER_UID if umask & 0o007 == 0 else os.getgid()
            reader = start_reader(shared_root, "flows", group=group)
            reader.wait_for("holding 0")
            for version in range(1, VERSIONS + 1):
                repo.commit(_version_files(version), f"version {version}")
                os.kill(daemon.pid, signal.SIGHUP)  # pull now, while the reader holds
                reader.wait_for(f"held {version - 1}")
                reader.wait_for(f"holding {version}")
            said = reader.lines()
            held = [line.split()[1] for line in said if line.startswith("held ")]
            assert held == [str(v) for v in range(VERSIONS)], said
            assert reader.process.popen.poll() is None, reader.process.describe()
        finally:
            daemon.stop()
        assert '"sync_failed"' not in daemon.output(), daemon.output(4000)

    def test_with_umask_0027_a_reader_outside_the_daemons_group_is_refused(
        self,
        shared_root: Path,
        upstream_repo: UpstreamRepoFactory,
        start_reader: ReaderFactory,
    ) -> None:
        """Why the DaemonSet keeps the container's umask 0022: with 0027, other uids read nothing.

        A version published with umask 0027 is refused to uid 65534 outside the daemon's
        group at its first step (EACCES), so a cluster that wants 0027 must give the worker
        pods the daemon's gid (``supplementalGroups``).
        """
        repo = upstream_repo("node-umask")
        _first_version(repo)
        shell = ["sh", "-c", 'umask 0027 && exec "$@"', "sh", RUNNER_STORAGE]
        result = run([*shell, "pull", repo.file_url, "--dest", shared_root, "--name", "flows"])
        assert result.returncode == 0, result.stdout + result.stderr
        assert (shared_root / "flows" / "MANIFEST").read_text().startswith("version 0\n")
        reader = start_reader(shared_root, "flows", group=READER_UID)
        assert reader.process.popen.wait(timeout=30) == 1, reader.process.describe()
        (line,) = reader.lines()
        assert line.startswith("error reading EACCES "), line
