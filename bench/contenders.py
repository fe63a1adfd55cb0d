"""The contenders: how each tool is asked to pull the same source.

Ours: the ``runner-storage`` CLI as an init container runs it (``run --once`` with a config
file: a whole process), ``runner-storage pull URL`` for object stores, and the library
inside a long-lived worker (what the daemon pays at every interval). Prefect's
``prefect.runner.storage`` classes in the same two modes. Then the tools people script:
rclone (plain, and tuned with ``--fast-list --checksum``), ``aws s3 sync --delete``, and
plain git.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from bench.core import OUR_CLI, Bench, Contender
from bench.measure import WORKER_SCRIPT

RCLONE_REMOTE = "bench"
#: ``runner-storage pull URL``: one source, no config file, settings from the environment.
PULL_CLI = "runner-storage pull"
GIT_TOKEN_VARIABLE = "BENCH_GIT_TOKEN"


def write_config(base: Path, sources: list[dict[str, Any]], **daemon: Any) -> Path:
    """Write a runner-storage config (YAML; JSON is YAML) publishing under ``base``."""
    config = {
        "root": str(base),
        "http_port": None,
        "log_format": "json",
        "log_level": "warning",
        **daemon,
        "sources": sources,
    }
    path = base / "runner-storage.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def _cli(base: Path, sources: list[dict[str, Any]], **daemon: Any) -> list[str]:
    return [str(OUR_CLI), "run", "--once", "--config", str(write_config(base, sources, **daemon))]


# --- object store ------------------------------------------------------------------------------


def s3_settings(bench: Bench) -> dict[str, str]:
    """fsspec/s3fs settings for the bench's S3 endpoint (through the counting proxy)."""
    assert bench.s3 is not None
    return {"key": bench.s3.key, "secret": bench.s3.secret, "endpoint_url": bench.s3.endpoint_url}


def s3_source(bench: Bench, url: str) -> dict[str, Any]:
    """A config-file source for ``url`` on the bench's S3 endpoint."""
    return {"source": url, "kind": "remote", "settings": s3_settings(bench)}


def _s3_spec(bench: Bench, impl: str, bucket: str, base: Path) -> dict[str, Any]:
    return {
        "impl": impl,
        "kind": "remote",
        "url": f"s3://{bucket}",
        "settings": s3_settings(bench),
        "base": str(base),
    }


def s3_contenders(bench: Bench, bucket: str) -> list[Contender]:
    """Everyone pulling ``s3://bucket`` (scenarios 1-3)."""
    assert bench.s3 is not None
    endpoint = bench.s3.endpoint_url
    prefect_python = bench.peers.prefect_python
    prefect_env = bench.prefect_env()
    rclone_env = {
        f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_{key}": value
        for key, value in {
            "TYPE": "s3",
            "PROVIDER": "Other",
            "ENDPOINT": endpoint,
            "ACCESS_KEY_ID": bench.s3.key,
            "SECRET_ACCESS_KEY": bench.s3.secret,
            "REGION": "us-east-1",
            "FORCE_PATH_STYLE": "true",
        }.items()
    }
    rclone_env["RCLONE_CONFIG"] = str(bench.work / "no-rclone.conf")  # no config file
    aws_env = {
        "AWS_ACCESS_KEY_ID": bench.s3.key,
        "AWS_SECRET_ACCESS_KEY": bench.s3.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(bench.work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(bench.work / "no-aws-credentials"),
    }

    def published(base: Path) -> Path:
        return base / bucket

    def tree(base: Path) -> Path:
        return base / "tree"

    def rclone(*options: str) -> Any:
        return lambda base: [
            bench.peers.rclone, "sync", f"{RCLONE_REMOTE}:{bucket}", str(tree(base)), *options,
        ]  # fmt: skip

    return [
        Contender(
            "runner-storage CLI",
            ours=True,
            dest=published,
            argv=lambda base: _cli(base, [s3_source(bench, f"s3://{bucket}")]),
        ),
        Contender(
            PULL_CLI,
            ours=True,
            dest=published,
            argv=lambda base: [str(OUR_CLI), "pull", f"s3://{bucket}", "--dest", str(base)],
            env={**aws_env, "AWS_ENDPOINT_URL": endpoint},
        ),
        Contender(
            "runner-storage in-process",
            ours=True,
            dest=published,
            spec=lambda base: _s3_spec(bench, "ours", bucket, base),
        ),
        Contender(
            "Prefect process",
            ours=False,
            dest=published,
            argv=lambda base: [
                str(prefect_python),
                str(WORKER_SCRIPT),
                "once",
                json.dumps(_s3_spec(bench, "prefect", bucket, base)),
            ],
            env=prefect_env,
        ),
        Contender(
            "Prefect in-process",
            ours=False,
            dest=published,
            spec=lambda base: _s3_spec(bench, "prefect", bucket, base),
            env=prefect_env,
            python=prefect_python,
        ),
        Contender(
            "rclone tuned",
            ours=False,
            dest=tree,
            argv=rclone("--fast-list", "--checksum"),
            env=rclone_env,
        ),
        Contender("rclone", ours=False, dest=tree, argv=rclone(), env=rclone_env),
        Contender(
            "aws s3 sync",
            ours=False,
            dest=tree,
            argv=lambda base: [
                bench.peers.aws,
                "s3",
                "sync",
                f"s3://{bucket}",
                str(tree(base)),
                "--endpoint-url",
                endpoint,
                "--delete",
                "--no-progress",
                "--only-show-errors",
            ],
            env=aws_env,
        ),
    ]


# --- git -------------------------------------------------------------------------------------


def git_source(bench: Bench, repo: str, name: str, directories: list[str] | None) -> dict[str, Any]:
    """A config-file git source with the server's credentials taken from the environment."""
    assert bench.git is not None
    source: dict[str, Any] = {
        "source": bench.git.url_for(repo),
        "kind": "git",
        "name": name,
        "credentials": {"username": bench.git.username, "token": {"env": GIT_TOKEN_VARIABLE}},
    }
    if directories:
        source["directories"] = directories
    return source


def git_spec(
    bench: Bench, impl: str, repo: str, name: str, base: Path, directories: list[str] | None
) -> dict[str, Any]:
    """A worker request pulling ``repo`` (ours: credentials through the API)."""
    assert bench.git is not None
    spec: dict[str, Any] = {
        "impl": impl,
        "kind": "git",
        "url": bench.git.url_for(repo),
        "name": name,
        "base": str(base),
        "directories": directories,
    }
    if impl == "ours":
        spec["credentials"] = {"username": bench.git.username, "access_token": bench.git.password}
    return spec


def our_git_env(bench: Bench) -> dict[str, str]:
    """Our processes get the token by variable, as a config file refers to it."""
    assert bench.git is not None
    return {GIT_TOKEN_VARIABLE: bench.git.password}


def plain_git_env(bench: Bench) -> dict[str, str]:
    """Plain git and Prefect's git: the credentials as an ``http.extraHeader`` by environment.

    Prefect puts credentials into the URL only for https; over the bench's plain http the
    header is how both authenticate, without a 401 round trip.
    """
    assert bench.git is not None
    return bench.git.auth_env()


def git_contenders(
    bench: Bench, repo: str, directories: list[str] | None, *, fetch_reset: bool = False
) -> list[Contender]:
    """Everyone pulling ``repo`` (scenarios 4-5), the whole tree or a cone of ``directories``.

    With ``fetch_reset`` the list ends with plain git updating an existing clone
    (``git fetch --depth 1`` + ``git reset --hard``): only for pulls after the first.
    """
    assert bench.git is not None
    url = bench.git.url_for(repo)
    name = "code"
    prefect_python = bench.peers.prefect_python
    prefect_env = {**bench.prefect_env(), **plain_git_env(bench)}
    sparse = bool(directories)

    def published(base: Path) -> Path:
        return base / name

    def clone_dir(base: Path) -> Path:
        return base / "clone"

    if sparse:
        assert directories is not None
        plain_name = "git sparse clone"

        def plain(base: Path) -> list[str]:
            dest = shlex.quote(str(clone_dir(base)))
            dirs = " ".join(shlex.quote(d) for d in directories)
            script = (
                f"git clone -q --depth 1 --filter=blob:none --sparse"
                f" {shlex.quote(url)} {dest} && git -C {dest} sparse-checkout set {dirs}"
            )
            return ["sh", "-c", script]
    else:
        plain_name = "git clone --depth 1"

        def plain(base: Path) -> list[str]:
            dest = shlex.quote(str(clone_dir(base)))
            return ["sh", "-c", f"git clone -q --depth 1 {shlex.quote(url)} {dest}"]

    suffix = " (sparse)" if sparse else ""
    contenders = [
        Contender(
            "runner-storage CLI" + suffix,
            ours=True,
            dest=published,
            argv=lambda base: _cli(base, [git_source(bench, repo, name, directories)]),
            env=our_git_env(bench),
        ),
        Contender(
            "runner-storage in-process" + suffix,
            ours=True,
            dest=published,
            spec=lambda base: git_spec(bench, "ours", repo, name, base, directories),
        ),
        Contender(
            "Prefect process" + suffix,
            ours=False,
            dest=published,
            argv=lambda base: [
                str(prefect_python),
                str(WORKER_SCRIPT),
                "once",
                json.dumps(git_spec(bench, "prefect", repo, name, base, directories)),
            ],
            env=prefect_env,
        ),
        Contender(
            "Prefect in-process" + suffix,
            ours=False,
            dest=published,
            spec=lambda base: git_spec(bench, "prefect", repo, name, base, directories),
            env=prefect_env,
            python=prefect_python,
        ),
        Contender(
            plain_name, ours=False, dest=clone_dir, argv=plain, env=plain_git_env(bench), fresh=True
        ),
    ]
    if fetch_reset:
        contenders.append(
            Contender(
                "git fetch + reset --hard" + suffix,
                ours=False,
                dest=clone_dir,
                argv=lambda base: [
                    "sh",
                    "-c",
                    f"cd {shlex.quote(str(clone_dir(base)))} && git fetch -q --depth 1 origin"
                    " && git reset -q --hard FETCH_HEAD",
                ],
                env=plain_git_env(bench),
                prepare=plain,
            )
        )
    return contenders
