"""The git_clone step proposed for a user's checkout, read from real git repositories.

Every checkout here is a clone of a bare repository in ``tmp_path`` that plays origin;
commits, pushes and branches are made with the git CLI. GitPython runs in this process, so
the hermetic git environment of :mod:`servers.gitrepo` is set in ``os.environ`` too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from servers.gitrepo import GIT_TEST_ENV, run_git

from runner_storage.exceptions import ConfigurationError
from runner_storage.steps.checkout import CheckoutProposal, propose_git_clone
from service.cli import main

GIT_CLONE = "prefect.deployments.steps.git_clone"
SECRET = "s3cret"
CREDENTIAL_ORIGIN = f"https://user:{SECRET}@host.example/org/repo.git"


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """GitPython's git commands see no host configuration, prompt or inherited GIT_*."""
    for name in list(os.environ):
        if name.startswith("GIT_"):
            monkeypatch.delenv(name)
    for name, value in GIT_TEST_ENV.items():
        monkeypatch.setenv(name, value)


@dataclass
class Checkout:
    """A clone of ``origin`` on branch main, pushed: ``path`` is its top."""

    path: Path
    origin: Path

    def git(self, *args: str) -> str:
        """Run git in the checkout; return its stripped stdout."""
        return run_git(*args, cwd=self.path).stdout.strip()

    def write(self, relative: str, text: str) -> None:
        """Write ``text`` to a file of the checkout, making its folders."""
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def commit(self, relative: str, text: str) -> str:
        """Write a file, commit it (not pushed) and return the new HEAD."""
        self.write(relative, text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"change {relative}")
        return self.head()

    def head(self) -> str:
        """HEAD's commit SHA."""
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A checkout whose branch main is pushed to a bare origin; ``*.log`` is ignored."""
    origin = tmp_path / "origin.git"
    run_git("init", "-q", "--bare", "-b", "main", origin)
    work = Checkout(path=tmp_path / "work", origin=origin)
    run_git("clone", "-q", origin, work.path)
    work.git("checkout", "-q", "-b", "main")
    work.write(".gitignore", "*.log\n")
    work.write("README.md", "# project\n")
    work.write("flows/etl/main.py", "print('etl')\n")
    work.write("lib/util.py", "UTIL = 1\n")
    work.git("add", "-A")
    work.git("commit", "-q", "-m", "first")
    work.git("push", "-q", "-u", "origin", "main")
    return work


def one_line_error(directory: Path) -> str:
    """The message of the ConfigurationError proposing for ``directory`` raises."""
    with pytest.raises(ConfigurationError) as caught:
        propose_git_clone(directory)
    message = str(caught.value)
    assert "\n" not in message
    assert message
    return message


class TestProposedStep:
    """What the step says: repository, branch, directories, commit_sha."""

    def test_top_of_a_pushed_checkout(self, checkout: Checkout) -> None:
        """At the top of a checkout on a pushed branch: origin and branch, no warnings."""
        proposal = propose_git_clone(checkout.path)

        assert proposal == CheckoutProposal(
            step={GIT_CLONE: {"repository": str(checkout.origin), "branch": "main"}},
            warnings=(),
        )

    def test_subfolder_becomes_directories(self, checkout: Checkout) -> None:
        """A folder inside the checkout is named in directories, relative, with slashes."""
        proposal = propose_git_clone(checkout.path / "flows" / "etl")

        assert proposal.step == {
            GIT_CLONE: {
                "repository": str(checkout.origin),
                "branch": "main",
                "directories": ["flows/etl"],
            }
        }
        assert proposal.warnings == ()

    def test_relative_path_to_a_subfolder(
        self, checkout: Checkout, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative DIR (as typed on the command line) gives the same directories."""
        monkeypatch.chdir(checkout.path / "flows")

        proposal = propose_git_clone(Path("etl"))

        assert proposal.step[GIT_CLONE]["directories"] == ["flows/etl"]

    def test_credentials_in_origin_are_left_out_everywhere(self, checkout: Checkout) -> None:
        """An origin with user:token shows as a bare https URL and a warning naming no secret."""
        checkout.git("remote", "set-url", "origin", CREDENTIAL_ORIGIN)
        checkout.commit("flows/etl/main.py", "print('unpushed')\n")
        checkout.write("flows/etl/new.py", "NEW = 1\n")

        proposal = propose_git_clone(checkout.path / "flows")

        assert proposal.step[GIT_CLONE]["repository"] == "https://host.example/org/repo.git"
        assert any("credentials" in warning for warning in proposal.warnings)
        assert len(proposal.warnings) == 3  # credentials, uncommitted change, unpushed
        assert SECRET not in repr(proposal)
        assert "user" not in repr(proposal.step)

    def test_token_as_user_name_is_left_out(self, checkout: Checkout) -> None:
        """An https origin carrying a token as its user name loses it, and its query too."""
        checkout.git("remote", "set-url", "origin", f"https://{SECRET}@host.example/r.git?t=x")

        proposal = propose_git_clone(checkout.path)

        assert proposal.step[GIT_CLONE]["repository"] == "https://host.example/r.git"
        assert SECRET not in repr(proposal)

    def test_credentials_never_reach_an_error(self, checkout: Checkout) -> None:
        """A git failure after origin was read is one line, quoting git, without the token."""
        checkout.git("remote", "set-url", "origin", CREDENTIAL_ORIGIN)
        (checkout.path / ".git" / "index").write_bytes(b"not an index")

        message = one_line_error(checkout.path)

        assert "git could not read the checkout" in message
        assert SECRET not in message

    @pytest.mark.parametrize(
        ("origin", "proposed"),
        [
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("ssh://git@host.example/org/repo.git", "ssh://git@host.example/org/repo.git"),
            (f"ssh://git:{SECRET}@host.example:2222/r.git", "ssh://git@host.example:2222/r.git"),
        ],
    )
    def test_ssh_origin_keeps_its_user(
        self, checkout: Checkout, origin: str, proposed: str
    ) -> None:
        """An ssh origin keeps the user the server needs (git@) and loses only a password."""
        checkout.git("remote", "set-url", "origin", origin)

        proposal = propose_git_clone(checkout.path)

        assert proposal.step[GIT_CLONE]["repository"] == proposed
        assert SECRET not in repr(proposal)

    def test_detached_head_pins_the_commit(self, checkout: Checkout) -> None:
        """A detached HEAD proposes no branch but commit_sha, and says HEAD is detached."""
        head = checkout.head()
        checkout.git("checkout", "-q", "--detach")

        proposal = propose_git_clone(checkout.path)

        assert proposal.step == {
            GIT_CLONE: {"repository": str(checkout.origin), "branch": None, "commit_sha": head}
        }
        assert len(proposal.warnings) == 1  # on origin/main: pushed
        assert "HEAD is detached" in proposal.warnings[0]


class TestWarnings:
    """What the user is told before deploying: one line each."""

    def test_unpushed_commit(self, checkout: Checkout) -> None:
        """A commit not on origin/main: the worker would not get it; git push."""
        head = checkout.commit("flows/etl/main.py", "print('v2')\n")

        proposal = propose_git_clone(checkout.path)

        assert proposal.step[GIT_CLONE]["branch"] == "main"
        (warning,) = proposal.warnings
        assert head[:12] in warning
        assert "would not get this commit" in warning
        assert "git push origin main" in warning

    def test_branch_never_pushed(self, checkout: Checkout) -> None:
        """A branch without origin/<branch>: the worker would not get it; git push -u."""
        checkout.git("checkout", "-q", "-b", "feature/x")

        proposal = propose_git_clone(checkout.path)

        assert proposal.step[GIT_CLONE]["branch"] == "feature/x"
        (warning,) = proposal.warnings
        assert "never pushed" in warning
        assert "would not get this commit" in warning
        assert "git push -u origin feature/x" in warning

    def test_behind_origin(self, checkout: Checkout) -> None:
        """HEAD older than origin/main: the worker would run origin's newer commit."""
        newer = checkout.commit("README.md", "# newer\n")
        checkout.git("push", "-q", "origin", "main")
        checkout.git("reset", "-q", "--hard", "HEAD~1")

        (warning,) = propose_git_clone(checkout.path).warnings

        assert "behind origin/main" in warning
        assert newer[:12] in warning

    def test_detached_on_an_unpushed_commit(self, checkout: Checkout) -> None:
        """A detached HEAD that no branch of origin contains warns twice: detached, unpushed."""
        checkout.commit("README.md", "# local only\n")
        checkout.git("checkout", "-q", "--detach")

        detached, unpushed = propose_git_clone(checkout.path).warnings

        assert "detached" in detached
        assert "would not get this commit" in unpushed

    @pytest.mark.parametrize(
        ("path", "text"),
        [("README.md", "# edited\n"), ("notes.txt", "untracked\n")],
        ids=["modified", "untracked"],
    )
    def test_dirty_tree(self, checkout: Checkout, path: str, text: str) -> None:
        """A modified or untracked file: commit and push it, the worker clones commits only."""
        checkout.write(path, text)

        (warning,) = propose_git_clone(checkout.path).warnings

        assert "1 uncommitted change(s) in the checkout" in warning
        assert path in warning
        assert "commit and push" in warning

    def test_staged_change_counts(self, checkout: Checkout) -> None:
        """A change added to the index but not committed is uncommitted too."""
        checkout.write("lib/util.py", "UTIL = 2\n")
        checkout.git("add", "lib/util.py")

        (warning,) = propose_git_clone(checkout.path).warnings

        assert "lib/util.py" in warning

    def test_ignored_files_do_not_count(self, checkout: Checkout) -> None:
        """A file matched by .gitignore is not an uncommitted change: no warning."""
        checkout.write("flows/etl/run.log", "noise\n")

        assert propose_git_clone(checkout.path).warnings == ()

    def test_dirty_is_judged_inside_dir(self, checkout: Checkout) -> None:
        """For a subfolder only its own changes count: the worker checks out nothing else."""
        checkout.write("lib/util.py", "UTIL = 2\n")
        assert propose_git_clone(checkout.path / "flows").warnings == ()

        checkout.write("flows/etl/new.py", "NEW = 1\n")
        (warning,) = propose_git_clone(checkout.path / "flows").warnings

        assert "in flows/" in warning
        assert "flows/etl/new.py" in warning


class TestRefusals:
    """What cannot give a step raises ConfigurationError with one line and a hint."""

    def test_no_origin_remote(self, checkout: Checkout) -> None:
        """A checkout without origin: add one with git remote add origin URL."""
        checkout.git("remote", "remove", "origin")

        assert "git remote add origin URL" in one_line_error(checkout.path)

    def test_not_inside_a_checkout(self, tmp_path: Path) -> None:
        """A folder in no git checkout is refused, saying so."""
        plain = tmp_path / "plain"
        plain.mkdir()
        assert run_git("rev-parse", "--git-dir", cwd=plain, check=False).returncode != 0

        assert "is not inside a git checkout" in one_line_error(plain)

    def test_repository_without_commits(self, tmp_path: Path) -> None:
        """A fresh git init with no commit yet: commit and push first."""
        fresh = tmp_path / "fresh"
        run_git("init", "-q", "-b", "main", fresh)
        run_git("remote", "add", "origin", CREDENTIAL_ORIGIN, cwd=fresh)

        message = one_line_error(fresh)

        assert "no commits yet" in message
        assert SECRET not in message

    def test_missing_directory(self, tmp_path: Path) -> None:
        """A DIR that does not exist is named in the message."""
        missing = tmp_path / "nowhere"

        assert f"{missing} does not exist" in one_line_error(missing)

    def test_a_file_is_not_a_folder(self, checkout: Checkout) -> None:
        """A DIR that is a file is refused: a step clones folders."""
        assert "not a folder" in one_line_error(checkout.path / "README.md")

    def test_bare_repository(self, checkout: Checkout) -> None:
        """The bare origin itself has no checkout to propose from."""
        assert "bare git repository" in one_line_error(checkout.origin)

    def test_inside_the_git_folder(self, checkout: Checkout) -> None:
        """A folder inside .git is not part of the checkout."""
        assert "inside the .git folder" in one_line_error(checkout.path / ".git" / "refs")


class TestCommand:
    """``runner-storage steps --from-checkout DIR``: the step on stdout, warnings on stderr."""

    def test_prints_the_step_and_warns_on_stderr(
        self, checkout: Checkout, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A dirty subfolder: the YAML step on stdout, exit 0, one warning line on stderr."""
        checkout.write("flows/etl/new.py", "NEW = 1\n")
        code = main(["steps", "--from-checkout", str(checkout.path / "flows" / "etl")])
        captured = capsys.readouterr()
        assert code == 0
        step = yaml.safe_load(captured.out)["pull"][0][GIT_CLONE]
        assert step["repository"] == str(checkout.origin)
        assert step["branch"] == "main"
        assert step["directories"] == ["flows/etl"]
        warnings = captured.err.splitlines()
        assert len(warnings) == 1
        assert warnings[0].startswith("runner-storage: warning: ")

    def test_not_a_checkout_exits_2_with_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A folder outside any checkout: exit 2, one line on stderr, nothing on stdout."""
        assert main(["steps", "--from-checkout", str(tmp_path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1

    def test_deployment_needs_run(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``--deployment`` belongs to ``--run``: alone it is exit 2 with one line."""
        assert main(["steps", "--deployment", "etl"]) == 2
        assert "--run" in capsys.readouterr().err
