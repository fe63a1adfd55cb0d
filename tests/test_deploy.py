"""The three ways to deploy: the container image, the systemd units, the Kubernetes manifests.

Static checks (hadolint, ``systemd-analyze``, kubernetes-validate, the manifests' structure)
run everywhere. ``TestContainerImage`` builds the Dockerfile with podman on a Debian base made
by debootstrap and runs the image for real against a ``git daemon`` on the host's loopback
(see ``../shared/TESTING.md``); the podman and debootstrap helpers, and the ``podman`` and
``image`` fixtures, are in ``containers.py``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from containers import IMAGE_USER, REPO, Podman, container_processes, run, running_container
from servers.git_daemon import GitDaemon
from servers.gitrepo import INITIAL_FILES, UpstreamRepoFactory, git_env
from servers.procs import LOOPBACK, assert_port_closed, free_port, http_status, wait_until

BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"
UNITS = REPO / "systemd"
KUBERNETES = REPO / "deploy" / "kubernetes"
UNIT_EXEC = "/usr/local/bin/runner-storage"
SECURITY_EXPOSURE_LIMIT = 1.1
"""``systemd-analyze security --offline=true`` overall exposure measured for both units."""

ACCEPTED_EXPOSURES = frozenset(
    {
        "PrivateNetwork=",  # it fetches from the network
        "IPAddressDeny=",  # sources can be anywhere; operators may add an allow list
        "RestrictAddressFamilies=~AF_(INET|INET6)",  # idem
        "RestrictAddressFamilies=~AF_UNIX",  # the sd_notify socket
        "RootDirectory=/RootImage=",  # runs from the host's Python installation
        "DeviceAllow=",  # char-rtc:r, added by ProtectClock=
        "UMask=",  # 0027: the group may read the published code
    }
)
"""Security checks the units knowingly leave unmet; any other unmet check is a regression."""


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is not installed: `make setup system-deps` installs it")
    return found


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments) per stage, continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), " ".join(arguments.split())))
    return stages[1:]


class TestDockerfile:
    """The Dockerfile, read without building it."""

    def test_hadolint_reports_nothing(self) -> None:
        """Hadolint finds no problem at any level, style included."""
        result = run([_tool("hadolint"), "--failure-threshold", "style", "-f", "json", DOCKERFILE])
        assert json.loads(result.stdout or "[]") == [], result.stdout
        assert result.returncode == 0, result.stderr

    def test_runtime_stage_is_the_documented_contract(self) -> None:
        """The runtime stage runs ``tini -- runner-storage run`` as a numeric non-root user.

        It also declares /data as a volume, HTTP on every address at 8080, SIGTERM to stop,
        and a HEALTHCHECK on /readyz.
        """
        stages = _stages(DOCKERFILE.read_text(encoding="utf-8"))
        assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
        runtime = dict(stages[-1])
        assert runtime["FROM"] == "${BASE_IMAGE} AS runtime"
        copies = [arguments for keyword, arguments in stages[-1] if keyword == "COPY"]
        assert any(c.startswith("--from=builder ") for c in copies), "the venv comes built"
        assert runtime["USER"] == f"{IMAGE_USER}:{IMAGE_USER}"
        assert json.loads(runtime["ENTRYPOINT"]) == ["tini", "--", "runner-storage"]
        assert json.loads(runtime["CMD"]) == ["run"]
        assert runtime["VOLUME"] == "/data"
        assert runtime["EXPOSE"] == "8080"
        assert runtime["STOPSIGNAL"] == "SIGTERM"
        for setting in (
            "RUNNER_STORAGE_ROOT=/data",
            "RUNNER_STORAGE_HTTP_HOST=0.0.0.0",
            "RUNNER_STORAGE_HTTP_PORT=8080",
        ):
            assert setting in runtime["ENV"].split()
        healthcheck = runtime["HEALTHCHECK"]
        assert "/readyz" in healthcheck
        assert "urllib" in healthcheck
        assert re.search(r"--start-period=\d+s", healthcheck)

    def test_dockerignore_admits_what_the_wheel_build_needs(self) -> None:
        """The .dockerignore allow-list admits the packaged code, its metadata and the wheels.

        The wheels (build/wheels) are what an offline build installs from; everything else
        (.git, .venv, node_modules, caches) stays out of the build context.
        """
        lines = [
            line.strip()
            for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*", "an allow-list keeps .git, .venv and node_modules out"
        admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
        readme = re.search(r'^readme = "(.+)"$', pyproject, re.MULTILINE)
        packages = re.search(r"^packages = (\[.*\])$", pyproject, re.MULTILINE)
        assert readme, "pyproject.toml names its readme"
        assert packages, "pyproject.toml lists the wheel's packages"
        needed = {"pyproject.toml", readme[1], "build/wheels", *json.loads(packages[1])}
        assert needed <= admitted


def _unit_for_verify(unit: Path, directory: Path) -> Path:
    """A copy of ``unit`` whose ExecStart= runs this environment's runner-storage.

    ``systemd-analyze verify`` checks that the command exists; the unit's own path is where
    an install puts it, not where the tests have it.
    """
    text = unit.read_text(encoding="utf-8")
    assert f"ExecStart={UNIT_EXEC} run " in text
    copy = directory / unit.name
    copy.write_text(text.replace(UNIT_EXEC, str(BIN / "runner-storage")), encoding="utf-8")
    return copy


def _unit_settings(unit: Path) -> dict[str, list[str]]:
    """``{Key: [values]}`` of a unit's [Service] section (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


UNIT_FILES = ["runner-storage.service", "runner-storage@.service"]

_MDWE_UNSUPPORTED = 77
_MDWE_WRAPPER = """
import ctypes, mmap, os, sys
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
assert libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) == PR_MDWE_REFUSE_EXEC_GAIN
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("a writable+executable mapping was allowed: W^X is not enforced")
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Turn on the kernel's W^X rule for this process and what it executes, check that it
refuses a writable+executable mapping, then exec the command given as arguments."""


class TestSystemdUnits:
    """The unit files, checked by systemd's own tools."""

    @pytest.mark.parametrize("name", UNIT_FILES)
    def test_verify_is_silent(self, name: str, tmp_path: Path) -> None:
        """``systemd-analyze verify`` accepts the unit without a single warning."""
        copy = _unit_for_verify(UNITS / name, tmp_path)
        # A template is verified through an instance of it.
        target = copy.with_name(name.replace("@.", "@example.")) if "@." in name else copy
        result = run([_tool("systemd-analyze"), "verify", target], cwd=tmp_path)
        assert (result.returncode, result.stderr, result.stdout) == (0, "", "")

    @pytest.mark.parametrize("name", UNIT_FILES)
    def test_security_exposure_stays_low(self, name: str, tmp_path: Path) -> None:
        """The offline security review scores at most the exposure measured when written.

        Every check left unmet is one the unit needs (network access, the notify socket...).
        """
        copy = _unit_for_verify(UNITS / name, tmp_path)
        target = copy.with_name(name.replace("@.", "@example.")) if "@." in name else copy
        analyze = [_tool("systemd-analyze"), "security", "--offline=true"]
        report = run([*analyze, target], cwd=tmp_path)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
        assert match, report.stdout + report.stderr
        checks = json.loads(run([*analyze, "--json=short", target], cwd=tmp_path).stdout)
        unmet = {check["name"] for check in checks if check["set"] is False}
        assert unmet <= ACCEPTED_EXPOSURES, f"newly unmet: {sorted(unmet - ACCEPTED_EXPOSURES)}"
        assert float(match[1]) <= SECURITY_EXPOSURE_LIMIT, report.stdout

    @pytest.mark.parametrize("name", UNIT_FILES)
    def test_service_contract(self, name: str) -> None:
        """Type=notify with a watchdog, a dynamic user, the token as a credential.

        The root is the state directory, and a configuration error (exit 2) is not restarted.
        """
        settings = _unit_settings(UNITS / name)
        expected = {
            "Type": ["notify"],
            "NotifyAccess": ["main"],
            "WatchdogSec": ["60"],
            "DynamicUser": ["yes"],
            "Restart": ["on-failure"],
            "RestartPreventExitStatus": ["2"],
            "CapabilityBoundingSet": [""],
            "MemoryDenyWriteExecute": ["yes"],
        }
        assert {key: settings.get(key) for key in expected} == expected
        instance = "/%i" if "@." in name else ""
        assert settings["StateDirectory"] == [f"runner-storage{instance}"]
        assert settings["Environment"] == [f"RUNNER_STORAGE_ROOT=/var/lib/runner-storage{instance}"]
        assert settings["LoadCredential"][0].startswith("token:/etc/runner-storage/")

    def test_daemon_runs_with_memory_deny_write_execute(
        self, upstream_repo: UpstreamRepoFactory, tmp_path: Path
    ) -> None:
        """The daemon and git pull and publish with no writable+executable memory.

        MemoryDenyWriteExecute= is the one sandbox setting a Python program can trip over
        (a JIT, libffi closures). The kernel's own W^X switch (PR_SET_MDWE, inherited across
        exec) enforces the same rule here without systemd: the wrapper proves the rule bites,
        then becomes ``runner-storage run --once``.
        """
        repo = upstream_repo("mdwe")
        env = git_env(
            RUNNER_STORAGE_ROOT=str(tmp_path / "root"),
            RUNNER_STORAGE_SOURCE=repo.file_url,
            RUNNER_STORAGE_NAME="code",
            RUNNER_STORAGE_HTTP_PORT="0",
        )
        result = run(
            [sys.executable, "-c", _MDWE_WRAPPER, BIN / "runner-storage", "run", "--once"],
            env=env,
        )
        if result.returncode == _MDWE_UNSUPPORTED:
            pytest.skip(f"this kernel has no PR_SET_MDWE (Linux >= 6.3): {platform.release()}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (tmp_path / "root" / "code" / "README.md").read_text() == INITIAL_FILES["README.md"]

    def test_template_has_the_same_sandbox(self) -> None:
        """The template unit differs from the single unit only in per-instance paths."""
        single = _unit_settings(UNITS / "runner-storage.service")
        template = _unit_settings(UNITS / "runner-storage@.service")
        per_instance = {"ExecStart", "StateDirectory", "Environment", "LoadCredential"}
        assert set(single) == set(template)
        assert {k: v for k, v in single.items() if k not in per_instance} == {
            k: v for k, v in template.items() if k not in per_instance
        }


def _manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((KUBERNETES / name).read_text(encoding="utf-8"))
    return document


def _validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict", path],
        timeout=60,
    )


def _probe_path(container: Mapping[str, Any], probe: str) -> tuple[str, str]:
    action = container[probe]["httpGet"]
    return action["path"], action["port"]


MANIFESTS = ["sidecar.yaml", "init-container.yaml"]
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
"""1.29: native sidecars on by default; 1.33: native sidecars GA."""


class TestKubernetesManifests:
    """deploy/kubernetes: schema-valid, and wired the way the docs say."""

    @pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
    @pytest.mark.parametrize("name", MANIFESTS)
    def test_validates_strictly(self, name: str, version: str) -> None:
        """kubernetes-validate, offline and strict (no unknown fields), accepts the manifest."""
        result = _validate(KUBERNETES / name, version)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_strict_validation_catches_unknown_fields(self, tmp_path: Path) -> None:
        """The validator really checks: an unknown field in a container is rejected."""
        document = _manifest("sidecar.yaml")
        document["spec"]["template"]["spec"]["initContainers"][0]["startupPrbe"] = {}
        broken = tmp_path / "broken.yaml"
        broken.write_text(yaml.safe_dump(document), encoding="utf-8")
        result = _validate(broken, KUBERNETES_VERSIONS[0])
        assert result.returncode != 0
        assert "startupPrbe" in result.stdout + result.stderr

    def test_sidecar_gates_the_worker_on_the_first_publish(self) -> None:
        """The native sidecar's startupProbe on /readyz gates the worker's start.

        Readiness and liveness follow /readyz and /livez; the code volume is written at /data
        by runner-storage only and mounted read-only into the worker.
        """
        pod = _manifest("sidecar.yaml")["spec"]["template"]["spec"]
        (sidecar,) = pod["initContainers"]
        (worker,) = pod["containers"]
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["args"] == ["run"]
        assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {"http": 8080}
        assert _probe_path(sidecar, "startupProbe") == ("/readyz", "http")
        assert _probe_path(sidecar, "readinessProbe") == ("/readyz", "http")
        assert _probe_path(sidecar, "livenessProbe") == ("/livez", "http")
        probe = sidecar["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 600, "time for a clone"
        self._check_code_volume(pod, sidecar, [worker])
        self._check_hardening(pod, [sidecar, worker])

    def test_init_container_pulls_once_before_the_job(self) -> None:
        """The Job's plain init container runs ``run --once`` and shares the code read-only.

        It has no restartPolicy and no probes: it ends before the main container starts.
        """
        pod = _manifest("init-container.yaml")["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        (flow,) = pod["containers"]
        assert init["args"] == ["run", "--once"]
        assert "restartPolicy" not in init
        assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(init)
        assert pod["restartPolicy"] == "Never"
        self._check_code_volume(pod, init, [flow])
        self._check_hardening(pod, [init, flow])

    @staticmethod
    def _check_code_volume(
        pod: Mapping[str, Any], storage: Mapping[str, Any], readers: list[Mapping[str, Any]]
    ) -> None:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in storage["volumeMounts"]}
        code = mounts["/data"]
        assert "emptyDir" in volumes[code["name"]]
        assert not code.get("readOnly", False)
        for reader in readers:
            (shared,) = [m for m in reader["volumeMounts"] if m["name"] == code["name"]]
            assert shared["readOnly"] is True
        env = {e["name"]: e.get("value") for e in storage["env"]}
        assert "RUNNER_STORAGE_TOKEN" not in env, "the token comes from a file, not the env"
        token_dir = str(Path(env["RUNNER_STORAGE_TOKEN_FILE"]).parent)
        assert mounts[token_dir]["readOnly"] is True
        assert "secret" in volumes[mounts[token_dir]["name"]]

    @staticmethod
    def _check_hardening(pod: Mapping[str, Any], containers: list[Mapping[str, Any]]) -> None:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] != 0
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]
        assert containers[0]["securityContext"]["runAsUser"] == IMAGE_USER


def _run_options(data: Path, repo_url: str, port: int) -> list[str]:
    """The options a careful operator would use, with the source and HTTP set by environment.

    Host network (the git server is on loopback), a read-only root file system as in the
    Kubernetes manifests, no capabilities, no privilege escalation, /data bind-mounted.
    """
    return [
        "--network=host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--volume={data}:/data",
        f"--env=RUNNER_STORAGE_SOURCE={repo_url}",
        "--env=RUNNER_STORAGE_NAME=flows",
        f"--env=RUNNER_STORAGE_HTTP_HOST={LOOPBACK}",
        f"--env=RUNNER_STORAGE_HTTP_PORT={port}",
    ]


def _shared_data_dir(tmp_path: Path) -> Path:
    # The image's user (10001) must write here; rootful podman maps it to the same host uid.
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    return data


def _assert_published(data: Path) -> None:
    link = data / "flows"
    assert link.is_symlink(), sorted(p.name for p in data.iterdir())
    version = link.resolve()
    assert version.stat().st_uid == IMAGE_USER, "published by the image's non-root user"
    published = {
        p.relative_to(version).as_posix(): p.read_text(encoding="utf-8")
        for p in version.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(version).parts
    }
    assert published == INITIAL_FILES


@pytest.mark.container
@pytest.mark.timeout(1200)  # a cold cache runs debootstrap (about a minute, more on a slow mirror)
class TestContainerImage:
    """The image built with podman and run for real against a git server on loopback."""

    def test_image_metadata(self, podman: Podman, image: str) -> None:
        """The built image keeps its HEALTHCHECK, numeric user, volume, port and entrypoint.

        ``--format docker`` matters: the OCI image format has no HEALTHCHECK.
        """
        (info,) = json.loads(podman("image", "inspect", image).stdout)
        config = info["Config"]
        assert config["User"] == f"{IMAGE_USER}:{IMAGE_USER}"
        assert config["Entrypoint"] == ["tini", "--", "runner-storage"]
        assert config["Cmd"] == ["run"]
        assert set(config["Volumes"]) == {"/data"}
        assert set(config["ExposedPorts"]) == {"8080/tcp"}
        assert config["StopSignal"] == "SIGTERM"
        assert "/readyz" in " ".join(info["Healthcheck"]["Test"])

    def test_object_store_backends_are_installed(self, podman: Podman, image: str) -> None:
        """The image's default EXTRAS bring the S3, GCS and Azure backends."""
        python = "--entrypoint=/opt/runner-storage/bin/python"
        imports = "import s3fs, gcsfs, adlfs"
        result = podman("run", "--rm", "--network=none", python, image, "-c", imports)
        assert result.returncode == 0, result.stderr

    def test_daemon_syncs_reports_healthy_and_stops_promptly(
        self,
        podman: Podman,
        image: str,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """The container publishes the repository, turns healthy and stops cleanly.

        The code appears in the mounted volume, the HEALTHCHECK passes, /readyz answers 200,
        ``podman stop`` makes it exit 0 within seconds, and no process is left behind.
        """
        repo = upstream_repo("container")
        data = _shared_data_dir(tmp_path)
        port = free_port()
        name = f"runner-storage-test-{os.getpid()}-{port}"

        with running_container(
            podman, name, *_run_options(data, git_daemon.url_for(repo), port), image
        ) as container_id:

            def logs() -> str:
                result = podman("logs", name, check=False)
                return result.stdout[-3000:] + result.stderr[-3000:]

            def healthy() -> bool:
                return podman("healthcheck", "run", name, check=False).returncode == 0

            wait_until(healthy, timeout=90, what="container HEALTHCHECK", details=logs)
            assert http_status("/readyz", port) == 200
            _assert_published(data)

            started = time.monotonic()
            podman("stop", "--time", "10", name, timeout=60)
            took = time.monotonic() - started
            state = json.loads(podman("inspect", name).stdout)[0]["State"]
            assert state["ExitCode"] == 0, logs()
            assert took < 5, f"podman stop took {took:.1f} s (SIGKILL after 10 s)"
            assert '"daemon_stopped"' in logs()
            podman("rm", name)

        assert podman("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""
        wait_until(
            lambda: not container_processes(container_id),
            timeout=10,
            what="container processes to exit",
            details=lambda: str(container_processes(container_id)),
        )
        assert_port_closed(port, name="runner-storage container")

    def test_run_once_publishes_and_exits_zero(
        self,
        podman: Podman,
        image: str,
        git_daemon: GitDaemon,
        upstream_repo: UpstreamRepoFactory,
        tmp_path: Path,
    ) -> None:
        """``run --once``, as the init-container manifest uses it, publishes and exits 0."""
        repo = upstream_repo("once")
        data = _shared_data_dir(tmp_path)
        options = _run_options(data, git_daemon.url_for(repo), free_port())
        name = f"runner-storage-once-{os.getpid()}"
        result = podman("run", "--rm", "--name", name, *options, image, "run", "--once")
        assert result.returncode == 0, result.stdout + result.stderr
        _assert_published(data)
        assert podman("ps", "--all", "--quiet", "--filter", f"name={name}").stdout.strip() == ""
