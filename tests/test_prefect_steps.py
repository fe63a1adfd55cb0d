"""Prefect's own worker machinery runs our pull steps (issue 13).

Every test runs a small script with the Python of a real Prefect 3 environment
(:func:`prefect_env.prefect_python`) in a fresh working directory: it calls Prefect's
``prefect.deployments.steps.core.run_steps`` on a pull section naming
``runner_storage.deployments.steps.*`` (or on the step one of our storages'
``to_pull_step()`` emits) and prints what Prefect returned as JSON. One script may run
several pull sections in turn, as a long-lived worker runs one flow run after another;
before a section marked ``wait`` it waits for a line on stdin, so the test can change the
source (a commit, an object, a snapshot) in between.

The sources are the suite's real servers: git over smart HTTP with Basic auth, moto's S3,
snapshot roots on disk and on S3. Prefect runs without any API server: its API URL is a
loopback server that records whatever reaches it, and every run checks that nothing did.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect_env import INSTALL_TIMEOUT, prefect_environ
from servers.git_http import GitHTTPServer
from servers.gitrepo import INITIAL_FILES, UpstreamRepo, UpstreamRepoFactory
from servers.procs import LOOPBACK, ThreadedHTTPServerHandle
from servers.s3 import S3Server
from servers.webhook import WebhookServer

from runner_storage import GitRepository, RemoteStorage, Secret, SnapshotStorage
from runner_storage.blocks.storage import FileStorageBlock
from runner_storage.packaging import DeploymentSpec, ScriptPackager
from runner_storage.snapshots import push_snapshot
from runner_storage.storage import S3, Webhook

# Whichever test runs first also builds the Prefect environment (minutes, once); every
# process a test starts has a short deadline of its own (RUN_TIMEOUT).
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT)

OURS = "runner_storage.deployments.steps"
PREFECTS = "prefect.deployments.steps"
RUN_TIMEOUT = 120.0
"""Seconds one pull section (or the script's start and exit) may take."""
MARK = "@@result "
INSTALL_ATTEMPT = "Attempting install of"
"""What Prefect prints when a step's ``requires`` does not import and it runs pip."""
TOKEN = "ghp_rsPrefectCanary7c1e9a3f5b2d"
"""The access token of the token server: distinctive, so a scan cannot match by chance."""
TOKEN_VARIABLE = "RS_PREFECT_GIT_TOKEN"
PASSWORD_VARIABLE = "RS_PREFECT_GIT_PASSWORD"
S3_SECRET_VARIABLE = "RS_PREFECT_S3_SECRET"

RUNNER = '''\
"""Run pull sections with Prefect's run_steps in one process, as a long-lived worker."""
import asyncio, json, os, sys, traceback
from pathlib import Path

from prefect.deployments.steps import core
from prefect.deployments.steps.core import run_steps

MARK = "@@result "


async def main() -> int:
    with open(sys.argv[1]) as file:
        runs = json.load(file)
    start = os.getcwd()
    for run in runs:
        if run["wait"]:
            await asyncio.to_thread(sys.stdin.readline)
        os.chdir(start)
        # Prefect's runner (3.9+) runs the pull steps in a workspace folder and tells
        # set_working_directory where the process started, for relative paths.
        source = getattr(core, "_PULL_STEP_SOURCE_CWD", None)
        token = source.set(Path(run["source_cwd"])) if source and run["source_cwd"] else None
        try:
            outputs = await run_steps(run["steps"])
        except Exception:
            print(MARK + json.dumps({"error": traceback.format_exc()}), flush=True)
            if not run["keep_going"]:
                return 1
            continue
        finally:
            if token is not None:
                source.reset(token)
        result = {"outputs": outputs, "cwd": os.getcwd()}
        print(MARK + json.dumps(result, default=str), flush=True)
    return 0


sys.exit(asyncio.run(main()))
'''


# --- Prefect's API stand-in: nothing may reach it ------------------------------------------


class _TrapHandler(BaseHTTPRequestHandler):
    """Answers every request 503 and records it: Prefect must not call its API at all."""

    server: _TrapServer

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded in ``seen``, not printed."""

    def _refuse(self) -> None:
        with self.server.lock:
            self.server.seen.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


class _TrapServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _TrapHandler)
        self.seen: list[str] = []
        self.lock = threading.Lock()


@pytest.fixture(scope="module")
def api_trap() -> Iterator[_TrapServer]:
    """A loopback HTTP server standing in for Prefect's API; ``seen`` lists what came."""
    server = _TrapServer()
    handle = ThreadedHTTPServerHandle("prefect-api-trap", server)
    handle.start()
    yield server
    handle.stop()


# --- the Prefect process --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One pull section for the script.

    ``wait``: wait for :meth:`PrefectWorker.go` first; ``source_cwd``: the folder the
    worker process started in, as Prefect's runner passes it to the steps;
    ``keep_going``: after an error, run the next section instead of exiting.
    """

    steps: list[dict[str, Any]]
    wait: bool = False
    source_cwd: str | None = None
    keep_going: bool = False


class PrefectWorker:
    """A Prefect process running :class:`Run` s in ``cwd`` (see the module docstring)."""

    def __init__(
        self,
        python: Path,
        runs: Sequence[Run],
        *,
        cwd: Path,
        env: dict[str, str],
        scratch: Path,
        api_trap: _TrapServer,
    ) -> None:
        scratch.mkdir(parents=True)
        spec = scratch / "runs.json"
        spec.write_text(json.dumps([dataclasses.asdict(run) for run in runs]))
        script = scratch / "runner.py"
        script.write_text(RUNNER)
        self.cwd = cwd
        self.stderr_path = scratch / "stderr.txt"
        self.stdout_lines: list[str] = []
        self.section_stdout: list[str] = []
        """What each pull section printed before its result, in order."""
        self._buffer = b""
        self._api_trap = api_trap
        with api_trap.lock:
            self._api_seen_before = len(api_trap.seen)
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(python), str(script), str(spec)],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )

    @property
    def stdout(self) -> str:
        """What the process printed so far (Prefect's messages and the result lines)."""
        return "\n".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def _read_line(self, deadline: float) -> str | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"Prefect gave no result within {RUN_TIMEOUT:.0f} s;"
                    f" stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def result(self) -> dict[str, Any]:
        """The next pull section's result: ``{"outputs", "cwd"}`` or ``{"error"}``."""
        deadline = time.monotonic() + RUN_TIMEOUT
        section: list[str] = []
        while (line := self._read_line(deadline)) is not None:
            self.stdout_lines.append(line)
            if line.startswith(MARK):
                self.section_stdout.append("\n".join(section))
                found: dict[str, Any] = json.loads(line[len(MARK) :])
                return found
            section.append(line)
        raise AssertionError(
            f"Prefect exited ({self.process.wait(RUN_TIMEOUT)}) without a result;"
            f" stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )

    def outputs(self) -> dict[str, Any]:
        """The next pull section's outputs (what ``run_steps`` returned); fails on an error."""
        found = self.result()
        assert "error" not in found, f"{found['error']}\nstderr:\n{self.stderr}"
        outputs: dict[str, Any] = found["outputs"]
        return outputs

    def go(self) -> None:
        """Let the next ``wait`` section start."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"\n")
        self.process.stdin.flush()

    def finish(self, returncode: int = 0, *, api: bool = False) -> list[str]:
        """Wait for the process to exit with ``returncode``; return its API requests.

        Unless ``api``, none may have reached Prefect's API. Prefect's output is kept in
        ``stdout.txt`` beside ``stderr.txt``, for a failing test's reader.
        """
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(RUN_TIMEOUT)
        rest = self.process.stdout.read() if self.process.stdout else b""
        self.stdout_lines.extend((self._buffer + rest).decode(errors="replace").splitlines())
        self._buffer = b""
        self.stderr_path.with_name("stdout.txt").write_text(self.stdout)
        assert code == returncode, f"exit {code}; stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        with self._api_trap.lock:
            called = self._api_trap.seen[self._api_seen_before :]
        if not api:
            assert called == [], f"Prefect called its API: {called}"
        for text in (self.stdout, self.stderr):
            assert "already exists" not in text
        return called

    def stop(self) -> None:
        """Kill the process group if it is still running, and close the pipes."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(RUN_TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


Worker = Callable[..., PrefectWorker]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The working directory Prefect's steps run in (the worker's cwd)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def prefect_home(tmp_path: Path) -> Path:
    """``PREFECT_HOME`` of the Prefect processes of one test."""
    return tmp_path / "prefect-home"


@pytest.fixture
def prefect_worker(
    prefect_python: Path,
    tmp_path: Path,
    workdir: Path,
    prefect_home: Path,
    api_trap: _TrapServer,
) -> Iterator[Worker]:
    """Factory ``prefect_worker(runs, cwd=workdir, **env) -> PrefectWorker``; all stopped after."""
    workers: list[PrefectWorker] = []

    def start(runs: Sequence[Run], cwd: Path | None = None, **env: str) -> PrefectWorker:
        api_url = f"http://{LOOPBACK}:{api_trap.server_address[1]}/api"
        worker = PrefectWorker(
            prefect_python,
            runs,
            cwd=cwd or workdir,
            env=prefect_environ(prefect_home, api_url=api_url, **env),
            scratch=tmp_path / f"prefect-run-{len(workers)}",
            api_trap=api_trap,
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def run_once(worker: Worker, steps: list[dict[str, Any]], **env: str) -> dict[str, Any]:
    """Run one pull section in a new Prefect process; return its outputs."""
    process = worker([Run(steps)], **env)
    outputs = process.outputs()
    process.finish()
    return outputs


# --- helpers --------------------------------------------------------------------------------


def ours(name: str, requires: Any = "runner-storage", **inputs: Any) -> dict[str, Any]:
    """A step naming our function ``name``, with ``requires`` as a prefect.yaml would."""
    return {f"{OURS}.{name}": {"requires": requires, **inputs}}


def tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (followed if it is a symlink): path -> text."""
    root = Path(os.path.realpath(directory))
    found: dict[str, str] = {}
    for parent, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            path = Path(parent, name)
            found[path.relative_to(root).as_posix()] = path.read_text(errors="replace")
    return found


def files_holding(needle: str, *roots: Path) -> list[str]:
    """Files under ``roots`` (symlinks not followed) whose bytes contain ``needle``."""
    wanted = needle.encode()
    hits = []
    for root in roots:
        for parent, _, files in os.walk(root):
            for name in files:
                path = Path(parent, name)
                if not path.is_symlink() and wanted in path.read_bytes():
                    hits.append(str(path))
    return hits


def git_credentials(server: GitHTTPServer) -> dict[str, str]:
    """Credentials for the Basic-auth server, the secret templated from the environment."""
    return {"username": server.username, "access_token": f"{{{{ ${PASSWORD_VARIABLE} }}}}"}


def write_project(directory: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> text) under ``directory``; return it."""
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


@pytest.fixture(scope="module")
def token_git_server(git_project_root: Path) -> Iterator[GitHTTPServer]:
    """A git server that logs in with a bare token (GitHub's way): user TOKEN, no password."""
    server = GitHTTPServer(git_project_root)
    server.username, server.password = TOKEN, ""
    server.start()
    yield server
    server.stop()


# --- the setting: no API ---------------------------------------------------------------------


def test_the_api_stand_in_sees_what_prefect_asks(prefect_worker: Worker) -> None:
    """Control: a variable placeholder makes Prefect call its API, and the stand-in sees it.

    So the other tests' "no API request" is a real observation: Prefect's run_steps opens
    a client around every step but asks the API nothing without block or variable
    placeholders.
    """
    step = ours("set_working_directory", directory="{{ prefect.variables.where }}")
    worker = prefect_worker([Run([step])], PREFECT_CLIENT_MAX_RETRIES="0")
    assert "503" in worker.result()["error"]
    assert worker.finish(returncode=1, api=True) == ["GET /api/variables/name/where"]


# --- git_clone --------------------------------------------------------------------------------


class TestGitClone:
    """Our git_clone (and agit_clone) under Prefect: Prefect's names, inputs and result."""

    @pytest.mark.parametrize("function", ["git_clone", "agit_clone"])
    def test_clone_then_no_op_then_the_new_commit(
        self,
        function: str,
        prefect_worker: Worker,
        workdir: Path,
        git_http_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """One worker process: the tree, then a no-op, then the new commit, never 'exists'."""
        repo = upstream_repo()
        step = ours(
            function,
            repository=git_http_server.url_for(repo),
            branch="main",
            credentials=git_credentials(git_http_server),
        )
        worker = prefect_worker(
            [Run([step]), Run([step]), Run([step], wait=True)],
            **{PASSWORD_VARIABLE: git_http_server.password},
        )
        first = worker.outputs()
        assert first == {"directory": f"{repo.name}-main"}
        published = workdir / first["directory"]
        assert tree(published) == INITIAL_FILES
        first_version = os.path.realpath(published)

        assert worker.outputs() == first  # a second flow run of the same worker
        assert os.path.realpath(published) == first_version  # nothing new was published

        repo.commit({"flows/a.py": "A = 2\n", "new.py": "N = 1\n", "docs/x.md": None})
        worker.go()
        assert worker.outputs() == first
        expected = {**INITIAL_FILES, "flows/a.py": "A = 2\n", "new.py": "N = 1\n"}
        del expected["docs/x.md"]
        assert tree(published) == expected
        assert os.path.realpath(published) != first_version
        assert tree(Path(first_version)) == INITIAL_FILES  # a running flow keeps its tree
        worker.finish()

    def test_branch_directories_name_and_commit_sha(
        self,
        prefect_worker: Worker,
        workdir: Path,
        git_http_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """A branch with a sparse checkout and a folder name; a pinned commit, as Prefect's.

        ``commit_sha`` publishes that commit, whatever the branch has moved on to.
        """
        repo = upstream_repo()
        pinned = repo.head()
        repo.commit({"lib/c.py": "C = 4\n"})
        repo.commit({"flows/dev.py": "DEV = 1\n"}, branch="dev")
        common = {
            "repository": git_http_server.url_for(repo),
            "credentials": git_credentials(git_http_server),
        }
        worker = prefect_worker(
            [
                Run(
                    [
                        ours(
                            "git_clone",
                            branch="dev",
                            directories=["flows"],
                            clone_directory_name="code",
                            **common,
                        )
                    ]
                ),
                Run([ours("git_clone", commit_sha=pinned, **common)]),
            ],
            **{PASSWORD_VARIABLE: git_http_server.password},
        )
        assert worker.outputs() == {"directory": "code"}
        pinned_outputs = worker.outputs()
        assert pinned_outputs == {"directory": repo.name}  # no branch: Prefect's name
        worker.finish()
        assert tree(workdir / "code") == {  # cone mode: top-level files come along
            "README.md": INITIAL_FILES["README.md"],
            "flows/a.py": "A = 1\n",
            "flows/sub/b.py": "B = 2\n",
            "flows/dev.py": "DEV = 1\n",
        }
        assert tree(workdir / pinned_outputs["directory"]) == INITIAL_FILES

    @pytest.mark.parametrize("form", ["access_token", "credentials"])
    def test_the_token_never_appears_in_output_or_files(
        self,
        form: str,
        prefect_worker: Worker,
        tmp_path: Path,
        upstream_repo: UpstreamRepoFactory,
        request: pytest.FixtureRequest,
    ) -> None:
        """A templated token logs in, and is nowhere in Prefect's output or on disk.

        ``access_token`` is Prefect's argument (a bare token, the username to a
        GitHub-like host); ``credentials`` a username and token pair. Clone, no-op and a
        fetch of a new commit all run in one worker process.
        """
        repo = upstream_repo()
        workdir, prefect_home = tmp_path / "work", tmp_path / "prefect-home"
        token = f"{{{{ ${TOKEN_VARIABLE} }}}}"
        inputs: dict[str, Any]
        if form == "access_token":
            server: GitHTTPServer = request.getfixturevalue("token_git_server")
            secret, inputs = TOKEN, {"access_token": token}
        else:
            server = request.getfixturevalue("git_http_server")
            secret = server.password
            inputs = {"credentials": {"username": server.username, "access_token": token}}
        step = ours("git_clone", repository=server.url_for(repo), branch="main", **inputs)
        server.reset_stats()
        worker = prefect_worker(
            [Run([step]), Run([step]), Run([step], wait=True)], **{TOKEN_VARIABLE: secret}
        )
        directory = workdir / worker.outputs()["directory"]
        worker.outputs()
        repo.commit({"flows/a.py": "A = 3\n"})
        worker.go()
        worker.outputs()
        worker.finish()

        assert tree(directory)["flows/a.py"] == "A = 3\n"
        assert server.auth_header() in server.seen_authorization_headers  # it did log in
        header = server.auth_header().removeprefix("Basic ")
        assert base64.b64decode(header).decode().startswith(f"{server.username}:")
        for needle in (secret, header):
            assert needle not in worker.stdout
            assert needle not in worker.stderr
            assert files_holding(needle, workdir, prefect_home) == []

    def test_a_wrong_token_fails_the_step_and_keeps_the_tree(
        self,
        prefect_worker: Worker,
        workdir: Path,
        git_http_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """A refused login is Prefect's step error; the published tree stays as it was.

        Giving both ``access_token`` and ``credentials`` is refused first, with Prefect's
        message.
        """
        repo = upstream_repo()
        step = ours(
            "git_clone",
            repository=git_http_server.url_for(repo),
            branch="main",
            credentials=git_credentials(git_http_server),
        )
        outputs = run_once(prefect_worker, [step], **{PASSWORD_VARIABLE: git_http_server.password})
        repo.commit({"flows/a.py": "A = 9\n"})
        wrong = "wr0ng-prefect-token-4d2"
        both = ours(
            "git_clone",
            repository=git_http_server.url_for(repo),
            access_token=f"{{{{ ${PASSWORD_VARIABLE} }}}}",
            credentials=git_credentials(git_http_server),
        )
        worker = prefect_worker(
            [Run([both], keep_going=True), Run([step])], **{PASSWORD_VARIABLE: wrong}
        )
        refused, error = worker.result()["error"], worker.result()["error"]
        worker.finish(returncode=1)
        assert "either an access token or credentials but not both" in refused
        assert "StepExecutionError" in error
        assert wrong not in error
        assert wrong not in worker.stderr
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES


# --- set_working_directory -------------------------------------------------------------------


class TestSetWorkingDirectory:
    """Our set_working_directory: a later step (and the flow) runs in that folder."""

    def test_its_result_and_a_later_step(
        self,
        prefect_worker: Worker,
        workdir: Path,
        git_http_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
    ) -> None:
        """Alone it returns Prefect's ``{"directory": <absolute>}``; a later step runs there.

        The git_clone after it publishes inside the folder, and its directory (the
        section's result) is relative to it.
        """
        repo = upstream_repo()
        (workdir / "runs" / "a").mkdir(parents=True)
        clone = ours(
            "git_clone",
            repository=git_http_server.url_for(repo),
            branch="main",
            credentials=git_credentials(git_http_server),
        )
        worker = prefect_worker(
            [
                Run([ours("set_working_directory", directory="runs/a")]),
                Run([ours("set_working_directory", directory="runs/a"), clone]),
            ],
            **{PASSWORD_VARIABLE: git_http_server.password},
        )
        assert worker.outputs() == {"directory": str(workdir / "runs" / "a")}
        found = worker.result()
        worker.finish()
        assert found["cwd"] == str(workdir / "runs" / "a")
        assert found["outputs"] == {"directory": f"{repo.name}-main"}
        assert tree(workdir / "runs" / "a" / f"{repo.name}-main") == INITIAL_FILES
        assert not (workdir / f"{repo.name}-main").exists()

    def test_relative_to_where_the_worker_started_as_prefects(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path
    ) -> None:
        """A relative folder resolves as Prefect's own step resolves it.

        Prefect's runner (3.9+) runs the pull steps inside a fresh workspace folder and
        hands the steps the folder the worker started in (the baked-image case: the code
        is in the image, beside the worker); Prefect's set_working_directory resolves a
        relative path of the first step against that folder. Ours must land in the same
        place.
        """
        image = tmp_path / "image"
        (image / "code").mkdir(parents=True)
        runs = [
            Run([{f"{PREFECTS}.set_working_directory": {"directory": "code"}}], keep_going=True),
            Run([ours("set_working_directory", directory="code")], keep_going=True),
        ]
        worker = prefect_worker([dataclasses.replace(r, source_cwd=str(image)) for r in runs])
        prefects, mine = worker.result(), worker.result()
        worker.finish()
        assert "error" not in prefects, prefects["error"]
        raised = [line for line in mine.get("error", "").splitlines() if "Error:" in line]
        assert mine == prefects, raised

    def test_a_missing_folder_is_a_step_error(self, prefect_worker: Worker) -> None:
        """A folder that does not exist fails the step with our one-line message."""
        worker = prefect_worker([Run([ours("set_working_directory", directory="nowhere")])])
        error = worker.result()["error"]
        worker.finish(returncode=1)
        assert "StepExecutionError" in error
        assert "cannot enter 'nowhere'" in error


# --- pull_from_remote_storage ---------------------------------------------------------------


class TestPullFromRemoteStorage:
    """Our pull_from_remote_storage of moto's S3, with settings, under Prefect."""

    def test_publish_then_no_op_then_changes(
        self, prefect_worker: Worker, workdir: Path, s3_server: S3Server
    ) -> None:
        """Settings reach s3fs (moto checks them); a no-op reads no object; changes land."""
        with s3_server.enable_auth() as (key, secret):
            bucket = s3_server.new_bucket("prefect-remote")
            for rel, text in INITIAL_FILES.items():
                s3_server.put(bucket, f"code/{rel}", text)
            step = ours(
                "pull_from_remote_storage",
                requires=["runner-storage", "s3fs"],
                url=f"s3://{bucket}/code",
                key=key,
                secret=f"{{{{ ${S3_SECRET_VARIABLE} }}}}",
                endpoint_url=s3_server.endpoint_url,
            )
            worker = prefect_worker(
                [Run([step]), Run([step], wait=True), Run([step], wait=True)],
                **{S3_SECRET_VARIABLE: secret},
            )
            first = worker.outputs()
            assert first == {"directory": f"{bucket}/code"}
            published = workdir / first["directory"]
            assert tree(published) == INITIAL_FILES

            s3_server.reset_requests()
            worker.go()
            assert worker.outputs() == first
            reads = [r for r in s3_server.requests() if r.method == "GET" and "/code/" in r.path]
            assert reads == []  # one listing, no object read

            s3_server.put(bucket, "code/flows/a.py", "A = 5\n")
            s3_server.delete(bucket, "code/docs/x.md")
            worker.go()
            assert worker.outputs() == first
            worker.finish()
        expected = {**INITIAL_FILES, "flows/a.py": "A = 5\n"}
        del expected["docs/x.md"]
        assert tree(published) == expected
        assert secret not in worker.stdout + worker.stderr
        assert files_holding(secret, workdir) == []


# --- pull_snapshot ----------------------------------------------------------------------------


class TestPullSnapshot:
    """Our pull_snapshot of snapshots pushed with push_snapshot, under Prefect."""

    def test_file_root_follows_the_ref(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path
    ) -> None:
        """A file:// root: the ref's tree, a no-op, then the next pushed snapshot."""
        root = (tmp_path / "snapshots").as_uri()
        project = write_project(tmp_path / "project", INITIAL_FILES)
        push_snapshot(project, root)
        step = ours("pull_snapshot", root=root, ref="latest")
        worker = prefect_worker([Run([step]), Run([step]), Run([step], wait=True)])
        first = worker.outputs()
        published = workdir / first["directory"]
        assert tree(published) == INITIAL_FILES
        version = os.path.realpath(published)
        assert worker.outputs() == first
        assert os.path.realpath(published) == version

        (project / "lib" / "c.py").write_text("C = 7\n")
        push_snapshot(project, root)
        worker.go()
        assert worker.outputs() == first
        worker.finish()
        assert tree(published) == {**INITIAL_FILES, "lib/c.py": "C = 7\n"}

    def test_pinned_snapshot_stays_put(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path
    ) -> None:
        """``snapshot`` pins an id: a later push moves the ref, not what is published."""
        root = str(tmp_path / "snapshots")  # a plain path works as a root too
        project = write_project(tmp_path / "project", INITIAL_FILES)
        pinned = push_snapshot(project, root).id
        (project / "new.py").write_text("N = 2\n")
        push_snapshot(project, root)
        outputs = run_once(prefect_worker, [ours("pull_snapshot", root=root, snapshot=pinned)])
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES

    def test_s3_root_with_endpoint_settings(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path, s3_server: S3Server
    ) -> None:
        """An s3 root with key, a templated secret and an endpoint, as settings of the step."""
        bucket = s3_server.new_bucket("prefect-snap")
        root = f"s3://{bucket}/snaps"
        settings = s3_server.storage_options()
        info = push_snapshot(write_project(tmp_path / "project", INITIAL_FILES), root, **settings)
        step = ours(
            "pull_snapshot",
            requires=["runner-storage", "s3fs"],
            root=root,
            snapshot=info.id,
            key=settings["key"],
            secret=f"{{{{ ${S3_SECRET_VARIABLE} }}}}",
            endpoint_url=settings["endpoint_url"],
        )
        outputs = run_once(prefect_worker, [step], **{S3_SECRET_VARIABLE: settings["secret"]})
        assert outputs == {"directory": f"{bucket}/snaps"}
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES


# --- what our storages emit, run as-is --------------------------------------------------------


def _package_manifest(tmp_path: Path) -> dict[str, Any]:
    flow = write_project(tmp_path / "flow-project", {"etl.py": "ETL = 1\n"}) / "etl.py"
    packager = ScriptPackager(FileStorageBlock(tmp_path / "package-store"))
    manifest = anyio.run(
        packager.package, DeploymentSpec("etl", str(flow), infrastructure="docker")
    )
    step: dict[str, Any] = manifest.to_pull_step()
    return step


class TestEmittedPullSteps:
    """The steps ``to_pull_step()`` emits run unchanged under Prefect's run_steps."""

    def test_snapshot_storage_on_disk(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path
    ) -> None:
        """SnapshotStorage's pull_snapshot step (file root): the tree, no install attempt."""
        root = (tmp_path / "snapshots").as_uri()
        push_snapshot(write_project(tmp_path / "project", INITIAL_FILES), root)
        step = SnapshotStorage(root).to_pull_step()
        assert step[f"{OURS}.pull_snapshot"]["requires"] == "runner-storage"
        worker = prefect_worker([Run([step])])
        outputs = worker.outputs()
        worker.finish()
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES
        assert INSTALL_ATTEMPT not in worker.stdout

    def test_snapshot_storage_on_s3_needs_no_install(
        self,
        prefect_worker: Worker,
        workdir: Path,
        tmp_path: Path,
        s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """SnapshotStorage's step for S3 runs, and its ``requires`` imports as it stands.

        Prefect imports each ``requires`` entry (``-`` read as ``_``, versions stripped)
        and runs pip when that import fails. An entry with an extra, such as
        ``runner-storage[s3]``, never imports, so every flow run would start pip.
        """
        bucket = s3_server.new_bucket("prefect-emit")
        root = f"s3://{bucket}/snaps"
        push_snapshot(
            write_project(tmp_path / "project", INITIAL_FILES),
            root,
            **s3_server.storage_options(),
        )
        monkeypatch.setenv(S3_SECRET_VARIABLE, s3_server.secret)
        storage = SnapshotStorage(
            root,
            key=s3_server.key,
            secret=Secret.from_env(S3_SECRET_VARIABLE),
            endpoint_url=s3_server.endpoint_url,
        )
        step = storage.to_pull_step()
        assert step[f"{OURS}.pull_snapshot"]["secret"] == f"{{{{ ${S3_SECRET_VARIABLE} }}}}"
        worker = prefect_worker([Run([step])], **{S3_SECRET_VARIABLE: s3_server.secret})
        outputs = worker.outputs()
        worker.finish()
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES
        assert INSTALL_ATTEMPT not in worker.stdout, (
            f"requires {step[f'{OURS}.pull_snapshot']['requires']!r} made Prefect run pip"
        )

    def test_remote_storage(
        self,
        prefect_worker: Worker,
        workdir: Path,
        s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """RemoteStorage's step is Prefect's pull_from_remote_storage; it runs as emitted."""
        bucket = s3_server.new_bucket("prefect-remote-emit")
        for rel, text in INITIAL_FILES.items():
            s3_server.put(bucket, f"code/{rel}", text)
        monkeypatch.setenv(S3_SECRET_VARIABLE, s3_server.secret)
        step = RemoteStorage(
            f"s3://{bucket}/code",
            key=s3_server.key,
            secret=Secret.from_env(S3_SECRET_VARIABLE),
            endpoint_url=s3_server.endpoint_url,
        ).to_pull_step()
        assert list(step) == [f"{PREFECTS}.pull_from_remote_storage"]
        worker = prefect_worker([Run([step])], **{S3_SECRET_VARIABLE: s3_server.secret})
        outputs = worker.outputs()
        worker.finish()
        assert tree(workdir / outputs["directory"]) == INITIAL_FILES
        assert INSTALL_ATTEMPT not in worker.stdout

    def test_git_repository(
        self,
        prefect_worker: Worker,
        workdir: Path,
        git_https_server: GitHTTPServer,
        upstream_repo: UpstreamRepoFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """GitRepository's step is Prefect's git_clone; Prefect's own code clones with it.

        Over HTTPS: Prefect puts credentials into the clone URL for https only.
        """
        repo: UpstreamRepo = upstream_repo()
        monkeypatch.setenv(PASSWORD_VARIABLE, git_https_server.password)
        storage = GitRepository(
            git_https_server.url_for(repo),
            branch="main",
            credentials={
                "username": git_https_server.username,
                "access_token": Secret.from_env(PASSWORD_VARIABLE),
            },
        )
        step = storage.to_pull_step()
        assert list(step) == [f"{PREFECTS}.git_clone"]
        outputs = run_once(
            prefect_worker,
            [step],
            **{PASSWORD_VARIABLE: git_https_server.password, **git_https_server.ssl_env()},
        )
        assert outputs == {"directory": f"{repo.name}-main"}
        files = tree(workdir / outputs["directory"])
        assert {k: v for k, v in files.items() if not k.startswith(".git/")} == INITIAL_FILES

    def test_package_manifest(self, prefect_worker: Worker, workdir: Path, tmp_path: Path) -> None:
        """A PackageManifest's pull_package step writes the script where the flow runs."""
        step = _package_manifest(tmp_path)
        worker = prefect_worker([Run([step])])
        outputs = worker.outputs()
        worker.finish()
        assert outputs == {"directory": "."}
        assert (workdir / "etl.py").read_text() == "ETL = 1\n"
        assert INSTALL_ATTEMPT not in worker.stdout

    def test_which_requires_make_prefect_run_pip(
        self, prefect_worker: Worker, workdir: Path, tmp_path: Path
    ) -> None:
        """Prefect's rule for ``requires``: an entry that does not import starts pip.

        Recorded here because our emitted steps and documented examples must use only the
        forms that import: a name (with a version), or a list of names. One worker runs
        the same step with each form in turn.
        """
        forms: list[tuple[Any, bool]] = [
            ("runner-storage", False),
            (["runner-storage", "s3fs"], False),
            ("runner-storage>=0.1", False),
            ("runner-storage[s3]", True),
            ("runner-storage s3fs", True),
        ]
        root = (tmp_path / "snapshots").as_uri()
        push_snapshot(write_project(tmp_path / "project", {"f.py": "F = 1\n"}), root)
        worker = prefect_worker(
            [Run([ours("pull_snapshot", requires=requires, root=root)]) for requires, _ in forms]
        )
        directories = {worker.outputs()["directory"] for _ in forms}
        worker.finish()
        (directory,) = directories
        assert tree(workdir / directory) == {"f.py": "F = 1\n"}
        installed = {
            json.dumps(requires): INSTALL_ATTEMPT in printed
            for (requires, _), printed in zip(forms, worker.section_stdout, strict=True)
        }
        assert installed == {json.dumps(requires): installs for requires, installs in forms}


class TestPrefect1Steps:
    """The steps Prefect 1's storages emit run under Prefect 3's own run_steps."""

    def test_webhook_step_then_a_304_no_op(
        self,
        prefect_worker: Worker,
        workdir: Path,
        webhook_server: WebhookServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Webhook's ``pull_webhook``: Prefect fills ``{{ $VAR }}``, the script arrives.

        A second flow run of the same worker is one conditional request answered 304;
        the key is in none of Prefect's output or the files written.
        """
        key = "whk-prefect-" + "5e1d" * 5
        webhook_server.required_headers = {"X-Api-Key": key}
        webhook_server.put("/flows/etl.py", b"print('etl')\n", etag='"v1"')
        monkeypatch.setenv("RS_PREFECT_WEBHOOK_KEY", key)
        storage = Webhook(
            None,
            None,
            {
                "url": webhook_server.url("/flows/etl.py"),
                "headers": {"X-Api-Key": "$RS_PREFECT_WEBHOOK_KEY"},
            },
            "GET",
            flow_script_path="etl.py",
        )
        step = storage.to_pull_step()
        worker = prefect_worker([Run([step]), Run([step])], RS_PREFECT_WEBHOOK_KEY=key)
        first = worker.outputs()
        assert (workdir / first["directory"] / "etl.py").read_text() == "print('etl')\n"
        assert worker.outputs() == first
        worker.finish()
        statuses = [request.status for request in webhook_server.requests_to("/flows/etl.py")]
        assert statuses == [200, 304]
        assert key not in worker.stdout + worker.stderr
        assert files_holding(key, workdir) == []

    def test_prefect1_s3_step(
        self,
        prefect_worker: Worker,
        workdir: Path,
        s3_server: S3Server,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Prefect 1's ``S3`` becomes our ``pull_from_remote_storage``: the folder holds the file.

        Prefect's own step would copy the object to the path its ``directory`` names.
        """
        bucket = s3_server.new_bucket("prefect1")
        s3_server.put(bucket, "etl/flow.py", "print('s3')\n")
        monkeypatch.setenv(S3_SECRET_VARIABLE, s3_server.secret)
        storage = S3(
            bucket,
            "etl/flow.py",
            client_options={
                "endpoint_url": s3_server.endpoint_url,
                "aws_access_key_id": s3_server.key,
                "aws_secret_access_key": Secret.from_env(S3_SECRET_VARIABLE),
            },
        )
        step = storage.to_pull_step()
        assert f"{OURS}.pull_from_remote_storage" in step
        outputs = run_once(prefect_worker, [step], **{S3_SECRET_VARIABLE: s3_server.secret})
        assert (workdir / outputs["directory"] / "flow.py").read_text() == "print('s3')\n"
