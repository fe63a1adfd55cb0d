"""``systemd/runner-storage.service`` under a real systemd: PID 1 in a podman container.

Each test boots its own container (``podman run --systemd=always --network=none``) from an
image with systemd, the project in a venv, the unit as shipped, the token file and a git
repository served over smart HTTP inside the container by a server that wants the token
(see ``systemd_container.py``), and drives it the way an operator does: ``systemctl``,
``journalctl``, ``kill``. Root only, like the other image tests: without root they skip;
as root, a podman that does not work fails them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator

import pytest
from containers import CACHE_DIR, Podman
from systemd_container import (
    CONFIG,
    CREDENTIAL,
    GIT_HTTP_HELD,
    GIT_HTTP_HOLD,
    GIT_HTTP_URL,
    GIT_HTTP_USER,
    INITIAL_FILES,
    ROOT,
    STATE_DIR,
    TOKEN,
    TOKEN_FILE,
    UNIT,
    UNIT_PATH,
    WORK_DIR,
    Machine,
    booted,
    systemd_image,
)

pytestmark = [
    pytest.mark.container,
    # The first test of a cold cache pays for debootstrap (about a minute) and the image.
    pytest.mark.timeout(1200),
]

SOURCE = "flows"
PUBLISHED = f"{ROOT}/{SOURCE}"
PROBE_SCRIPT = "/etc/runner-storage/probe.sh"
PROBE_OUT = f"{ROOT}/probe.txt"
WORLD_WRITABLE = "/srv/shared"
"""A mode-1777 directory: only ``ProtectSystem=`` keeps the service from writing there."""

PROBE = f"""#!/bin/sh
# Run by the daemon as its post-publish hook: inside the unit's sandbox, as its user.
out={PROBE_OUT}.tmp
id -u > "$out"
for dir in /etc /opt/runner-storage /usr/local /var/lib /var/lib/private {WORLD_WRITABLE} \\
        /srv/git/flows.git /run; do
    if error=$(touch "$dir/probe-written" 2>&1); then
        echo "write $dir: written" >> "$out"
    else
        echo "write $dir: ${{error##*: }}" >> "$out"
    fi
done
if error=$(cat {TOKEN_FILE} 2>&1 >/dev/null); then
    echo "read {TOKEN_FILE}: read" >> "$out"
else
    echo "read {TOKEN_FILE}: ${{error##*: }}" >> "$out"
fi
mv "$out" {PROBE_OUT}
"""


def config(*, hooks: str = "", pull_interval: float = 3600) -> str:
    """The daemon's config: the git repository over HTTP, its token from the credential.

    The long ``pull_interval`` means a second pull happens only when asked for.
    """
    return (
        'log_format = "json"\n'
        "http_port = 8080\n"
        "[[sources]]\n"
        f'name = "{SOURCE}"\n'
        f'source = "{GIT_HTTP_URL}"\n'
        f"pull_interval = {pull_interval}\n"
        f'credentials = {{ username = "{GIT_HTTP_USER}", token = {{ file = "{CREDENTIAL}" }} }}\n'
        + hooks
    )


@pytest.fixture(scope="session")
def systemd_podman() -> Podman:
    """Podman in the suite's own storage; skips without root, fails if a tool is missing."""
    if os.geteuid() != 0:
        pytest.skip("systemd in a container needs rootful podman; this test runs as a user")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (`make system-deps` installs them)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return Podman(CACHE_DIR / "podman")


@pytest.fixture(scope="session")
def image(systemd_podman: Podman) -> str:
    """The systemd image, built offline once and kept while its inputs stay the same."""
    return systemd_image(systemd_podman)


@pytest.fixture
def machine(
    systemd_podman: Podman, image: str, request: pytest.FixtureRequest
) -> Iterator[Machine]:
    """A freshly booted container with the config written; removed after the test."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    with booted(systemd_podman, image, f"rs-systemd-{os.getpid()}-{test}") as booted_machine:
        booted_machine.write(CONFIG, config())
        yield booted_machine


def published_files(machine: Machine) -> dict[str, str]:
    """``{relative path: content}`` of what ``ROOT/NAME`` shows, git metadata left out."""
    listing = machine.sh(f"cd {PUBLISHED}/ && find . -path ./.git -prune -o -type f -print")
    return {
        name.removeprefix("./"): machine.check("cat", f"{PUBLISHED}/{name.removeprefix('./')}")
        for name in sorted(listing.split())
    }


def start(machine: Machine) -> None:
    """``systemctl start runner-storage``, which must succeed."""
    machine.check("systemctl", "start", "runner-storage", timeout=120)


def push_commit(machine: Machine, name: str, content: str) -> str:
    """Commit a new file in the repository's working clone and push it; the new commit."""
    machine.sh(
        f"cd {WORK_DIR} && printf '%s' '{content}' > {name} && git add {name} && "
        f"git -c user.name=t -c user.email=t@example.com commit -q -m 'add {name}' && "
        "git push -q origin main"
    )
    return machine.check("git", "-C", WORK_DIR, "rev-parse", "HEAD").strip()


def published_commit(machine: Machine) -> str:
    """The commit ``ROOT/NAME`` points at (its version directory is named after it)."""
    target = machine.check("readlink", PUBLISHED).strip()
    return target.rsplit("/", 1)[-1].split("-", 1)[0]


def unit_processes(machine: Machine) -> list[str]:
    """``PID command`` of every process left in the unit's cgroup or running the daemon or git.

    ``pgrep`` runs without a shell around it, so the pattern matches no process of its own.
    """
    found = machine.exec("pgrep", "-a", "-f", "runner-storage run|git-remote-http|git fetch")
    lines = found.stdout.splitlines()
    group = machine.show("ControlGroup")["ControlGroup"]
    if group:
        procs = f"/sys/fs/cgroup/systemd{group}/cgroup.procs"
        lines += machine.exec("cat", procs).stdout.split()
    return sorted(set(lines))


def test_the_image_has_the_unit_as_shipped(machine: Machine) -> None:
    """The container runs the repository's unit file, byte for byte, with no drop-in."""
    assert machine.check("cat", UNIT_PATH) == UNIT.read_text(encoding="utf-8")
    assert machine.show("DropInPaths")["DropInPaths"] == ""
    assert machine.show("FragmentPath")["FragmentPath"] == UNIT_PATH


def test_start_returns_after_the_first_publish(machine: Machine) -> None:
    """``systemctl start`` returns with the code already published and the unit running.

    Right after it returns, ``ROOT/NAME`` holds the repository and ``systemctl`` shows
    active/running with the daemon's STATUS= line.
    """
    start(machine)
    assert published_files(machine) == INITIAL_FILES
    state = machine.show("ActiveState", "SubState", "StatusText", "Type", "NRestarts")
    assert state == {
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": "1/1 sources ready",
        "Type": "notify",
        "NRestarts": "0",
    }


def test_start_waits_while_the_first_pull_is_held(machine: Machine) -> None:
    """While the git server holds the first pull, ``systemctl start`` does not return.

    The unit stays activating with nothing published; once the server answers, start
    returns 0 and the code is there.
    """
    machine.check("touch", GIT_HTTP_HOLD)
    starting = machine.popen("systemctl", "start", "runner-storage")
    try:
        machine.wait_for(
            lambda: machine.exec("test", "-s", GIT_HTTP_HELD).returncode == 0,
            timeout=30,
            what="the daemon's first request to reach the git server",
        )
        assert starting.poll() is None, "systemctl start returned during the first pull"
        state = machine.show("ActiveState", "SubState")
        assert state == {"ActiveState": "activating", "SubState": "start"}
        assert not machine.exists(PUBLISHED)
        machine.check("rm", GIT_HTTP_HOLD)
        _, errors = starting.communicate(timeout=60)
        assert starting.returncode == 0, errors
        assert published_files(machine) == INITIAL_FILES
        assert machine.show("ActiveState", "SubState") == {
            "ActiveState": "active",
            "SubState": "running",
        }
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()


def test_reload_pulls_now(machine: Machine) -> None:
    """``systemctl reload`` (SIGHUP) publishes a new commit at once, an hour before its turn.

    The daemon keeps running: same main PID, no restart.
    """
    start(machine)
    before = machine.show("MainPID", "NRestarts")
    first = published_commit(machine)
    commit = push_commit(machine, "flows/new.py", "NEW = 1\n")
    assert commit != first
    machine.check("systemctl", "reload", "runner-storage")
    machine.wait_for(
        lambda: machine.exists(f"{PUBLISHED}/flows/new.py"),
        timeout=30,
        what="the new commit to be published after systemctl reload",
    )
    assert published_commit(machine) == commit
    assert published_files(machine) == {**INITIAL_FILES, "flows/new.py": "NEW = 1\n"}
    assert machine.show("MainPID", "NRestarts") == before
    assert '"trigger": "SIGHUP"' in machine.journal()


def test_watchdog_restarts_a_hung_daemon(machine: Machine) -> None:
    """A daemon whose loop stops (SIGSTOP) is killed by the watchdog and started again.

    A drop-in shortens WatchdogSec to 3 s (the unit's 60 s would make a slow test); the
    restart policy is the unit's own. While healthy, the daemon's pings arrive; after the
    hang, ``NRestarts`` is 1, a new main process runs and the journal says why.
    """
    machine.drop_in("[Service]\nWatchdogSec=3\n")
    start(machine)
    state = machine.show("MainPID", "WatchdogUSec", "WatchdogTimestampMonotonic")
    assert state["WatchdogUSec"] == "3s"
    machine.wait_for(
        lambda: (
            machine.show("WatchdogTimestampMonotonic")
            != {"WatchdogTimestampMonotonic": state["WatchdogTimestampMonotonic"]}
        ),
        timeout=10,
        what="a watchdog ping from the daemon",
    )
    assert machine.show("NRestarts")["NRestarts"] == "0"
    machine.check("kill", "-STOP", state["MainPID"])

    def restarted() -> bool:
        now = machine.show("ActiveState", "SubState", "NRestarts", "MainPID")
        return now["NRestarts"] == "1" and (now["ActiveState"], now["SubState"]) == (
            "active",
            "running",
        )

    machine.wait_for(restarted, timeout=60, what="the watchdog to restart the daemon")
    assert machine.show("MainPID")["MainPID"] not in ("0", state["MainPID"])
    journal = machine.journal()
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert published_files(machine) == INITIAL_FILES


WRONG_TOKEN = "wrong-" + TOKEN[::-1]


def test_load_credential_delivers_the_token_and_nothing_shows_it(machine: Machine) -> None:
    """The token file reaches the daemon through ``LoadCredential=`` and is never shown.

    With a wrong token in the file the first pull is refused (start still returns: the
    attempt has ended; STATUS= names the failing source); with the right one, after a
    restart, the code is published. Neither value appears in ``systemctl show``, the
    journal, or the daemon's environment and command line.
    """
    machine.write(TOKEN_FILE, WRONG_TOKEN + "\n", mode="0600")
    start(machine)
    assert not machine.exists(PUBLISHED)
    assert machine.show("StatusText")["StatusText"] == "0/1 sources ready; failing: flows"
    assert machine.check("cat", CREDENTIAL).strip() == WRONG_TOKEN

    machine.write(TOKEN_FILE, TOKEN + "\n", mode="0600")
    machine.check("systemctl", "restart", "runner-storage", timeout=120)
    assert published_files(machine) == INITIAL_FILES
    assert machine.check("cat", CREDENTIAL).strip() == TOKEN
    credential = machine.check("stat", "-c", "%a %U", CREDENTIAL).split()
    assert credential[0] in ("400", "440"), credential
    main_pid = machine.show("MainPID")["MainPID"]
    process = machine.check("cat", f"/proc/{main_pid}/environ", f"/proc/{main_pid}/cmdline")
    assert "CREDENTIALS_DIRECTORY=/run/credentials/runner-storage.service" in process

    shown = {
        "systemctl show": machine.check("systemctl", "show", "runner-storage"),
        "systemctl status": machine.exec(
            "systemctl", "status", "--no-pager", "--full", "--lines=1000", "runner-storage"
        ).stdout,
        "the unit's journal": machine.journal(output="verbose"),
        "the whole journal": machine.check("journalctl", "--no-pager", "-o", "verbose"),
        "the daemon's environment and command line": process,
    }
    assert "authentication" in shown["the unit's journal"].lower()
    for where, text in shown.items():
        for secret in (TOKEN, WRONG_TOKEN):
            assert secret not in text, f"a token appears in {where}"

    machine.check("systemctl", "stop", "runner-storage")
    assert not machine.exists(CREDENTIAL), "the credential outlives the service"


def test_dynamic_user_writes_its_state_directory_and_nothing_else(machine: Machine) -> None:
    """The daemon runs as a dynamic, non-root user that can write only its state directory.

    Its post-publish hook (same sandbox, same user) tries to write elsewhere: /etc, the
    venv, /var/lib, even a world-writable directory are read-only (ProtectSystem=strict);
    /run and root's token file are root's (not this user's), while the
    published tree and the hook's report in the state directory belong to that user.
    """
    machine.write(PROBE_SCRIPT, PROBE, mode="0755")
    machine.check("install", "-d", "-m", "1777", WORLD_WRITABLE)
    machine.write(CONFIG, config(hooks=f'hooks = {{ exec = ["/bin/sh", "{PROBE_SCRIPT}"] }}\n'))
    start(machine)
    machine.wait_for(
        lambda: machine.exists(PROBE_OUT), timeout=30, what="the post-publish probe hook"
    )
    uid, *attempts = machine.check("cat", PROBE_OUT).splitlines()

    main_pid = machine.show("MainPID")["MainPID"]
    status = machine.check("cat", f"/proc/{main_pid}/status")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert uids, status
    assert set(uids[1].split()) == {uid}, "real, effective, saved and file-system uid"
    assert uid != "0"
    assert machine.show("UID")["UID"] == uid
    assert machine.exec("grep", "-q", f":{uid}:", "/etc/passwd").returncode != 0, "not an account"

    read_only = "/etc /opt/runner-storage /usr/local /var/lib /var/lib/private"
    read_only += f" {WORLD_WRITABLE} /srv/git/flows.git"
    assert attempts == [
        *(f"write {path}: Read-only file system" for path in read_only.split()),
        "write /run: Permission denied",  # an API file system: root's, not the service's
        f"read {TOKEN_FILE}: Permission denied",
    ]
    assert machine.check("find", "/", "-xdev", "-name", "probe-written") == ""

    assert machine.check("readlink", ROOT).strip() == "private/runner-storage"
    assert machine.check("stat", "-c", "%a %u", "/var/lib/private").split() == ["700", "0"]
    owners = machine.sh(f"find {STATE_DIR}/ -printf '%u\\n' | sort -u").split()
    assert owners == [uid], "everything in the state directory is the dynamic user's"
    assert machine.check("stat", "-c", "%a", STATE_DIR).strip() == "750"
    version = machine.check("readlink", "-f", PUBLISHED).strip()
    assert version.startswith(f"{STATE_DIR}/")
    assert published_files(machine) == INITIAL_FILES


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        ("a value out of range", config(pull_interval=-5)),
        ("unparseable TOML", config() + "[[sources]\n"),
    ],
)
def test_bad_config_exits_2_and_is_not_restarted(machine: Machine, problem: str, text: str) -> None:
    """With a bad config, start fails: exit status 2, unit failed, no restart scheduled.

    ``RestartPreventExitStatus=2`` is what keeps it out of the auto-restart state; the
    journal says what is wrong.
    """
    machine.write(CONFIG, text)
    failed = machine.exec("systemctl", "start", "runner-storage", timeout=120)
    assert failed.returncode != 0, problem
    state = machine.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {
        "ActiveState": "failed",
        "SubState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "2",
        "NRestarts": "0",
    }, machine.journal()[-3000:]
    assert CONFIG in machine.journal()
    assert unit_processes(machine) == []


def test_stop_is_prompt_and_clean_even_during_a_pull(machine: Machine) -> None:
    """``systemctl stop`` during a pull the git server holds returns within seconds.

    The unit ends inactive with exit status 0, no process of it is left (daemon, git),
    and ``ROOT/NAME`` is still the whole earlier version: the abandoned pull left nothing
    half-published.
    """
    start(machine)
    first = published_commit(machine)
    push_commit(machine, "flows/held.py", "HELD = 1\n")
    machine.write(GIT_HTTP_HOLD, "command=fetch")  # git's fetch, not the daemon's ls-refs
    machine.check("systemctl", "reload", "runner-storage")
    machine.wait_for(
        lambda: machine.exec("test", "-s", GIT_HTTP_HELD).returncode == 0,
        timeout=30,
        what="the reload's fetch to reach the git server",
    )
    assert any("git" in line for line in unit_processes(machine)), "git runs the held fetch"

    began = time.monotonic()
    machine.check("systemctl", "stop", "runner-storage", timeout=60)
    took = time.monotonic() - began
    # Well inside TimeoutStopSec=30, after which systemd would SIGKILL (Result=timeout).
    assert took < 10, f"systemctl stop took {took:.1f} s"
    state = machine.show("ActiveState", "SubState", "Result", "MainPID", "ExecMainStatus")
    assert state == {
        "ActiveState": "inactive",
        "SubState": "dead",
        "Result": "success",
        "MainPID": "0",
        "ExecMainStatus": "0",
    }
    assert unit_processes(machine) == []
    assert '"daemon_stopped"' in machine.journal()
    machine.check("rm", GIT_HTTP_HOLD)
    assert published_commit(machine) == first
    assert published_files(machine) == INITIAL_FILES
