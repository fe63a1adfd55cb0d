"""Smoke tests for the server fixtures: each server really serves what the suite needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest
from azure.core.exceptions import HttpResponseError
from servers.azurite import AzuriteServer
from servers.gcs import GCSServer
from servers.git_daemon import GitDaemon
from servers.git_http import GitHTTPServer
from servers.gitrepo import INITIAL_FILES, UpstreamRepoFactory, git_env, run_git
from servers.http_files import HTTPFileServer
from servers.procs import ServerStartError, start_process
from servers.s3 import S3Server
from servers.sshd import SSHServer


def ls_remote(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``git ls-remote URL`` with the safe git environment plus ``env``; never raises."""
    return run_git("ls-remote", url, env=git_env(**env), check=False)


def test_upstream_repo_changes_history(upstream_repo: UpstreamRepoFactory, tmp_path: Path) -> None:
    """Commits, branches, tags, symlinks, submodules and force-resets land in the bare repo."""
    repo = upstream_repo()
    first = repo.head()
    second = repo.commit({"flows/a.py": "A = 2\n", "docs/x.md": None}, message="change")
    assert repo.head() == second != first
    assert repo.create_branch("dev", from_ref=first) == first
    assert repo.tag("v1", annotated=True) == second
    link = repo.symlink("flows/link.py", "a.py")
    assert repo.git("ls-tree", link, "flows/link.py").startswith("120000 blob")
    other = upstream_repo("sub")
    with_sub = repo.add_submodule("vendor/sub", "../sub.git", clone_from=other.file_url)
    assert repo.branches() == {"main": with_sub, "dev": first}
    assert repo.tags() == {"v1": second}
    repo.force_reset("main", first)
    assert repo.head() == first
    repo.set_default_branch("dev")
    repo.delete_tag("v1")
    repo.delete_branch("main")
    assert repo.branches() == {"dev": first}
    run_git("clone", "-q", repo.path, tmp_path / "c")  # checks out the new default, "dev"
    assert all((tmp_path / "c" / name).is_file() for name in INITIAL_FILES)
    assert "url = ../sub.git" in repo.git("show", f"{with_sub}:.gitmodules")


def test_git_http_requires_basic_auth(
    git_http_server: GitHTTPServer, upstream_repo: UpstreamRepoFactory, tmp_path: Path
) -> None:
    """Without credentials git gets 401; with them ls-remote and a blobless clone work."""
    repo = upstream_repo()
    url = git_http_server.url_for(repo)
    git_http_server.reset_stats()
    refused = ls_remote(url)
    assert refused.returncode != 0
    assert git_http_server.stats(repo).unauthorized >= 1
    auth = git_http_server.extra_header_env()
    assert repo.head() in ls_remote(url, **auth).stdout
    run_git("clone", "-q", "--filter=blob:none", url, tmp_path / "c", env=git_env(**auth))
    assert (tmp_path / "c" / "lib" / "c.py").read_text() == "C = 3\n"
    stats = git_http_server.stats(repo)
    assert stats.upload_pack_requests >= 1
    assert stats.upload_pack_bytes > 0
    assert git_http_server.auth_header() in git_http_server.seen_authorization_headers
    with git_http_server.hidden(repo):
        assert "not found" in ls_remote(url, **auth).stderr
    assert git_http_server.requests_for(repo)[-1].status == 404


def test_git_https_verifies_certificate(
    git_https_server: GitHTTPServer, upstream_repo: UpstreamRepoFactory, tmp_path: Path
) -> None:
    """Over TLS git needs the throwaway CA; with it a clone completes cleanly."""
    repo = upstream_repo()
    url = git_https_server.url_for(repo)
    assert url.startswith("https://127.0.0.1:")
    no_ca = {k: v for k, v in git_https_server.extra_header_env().items() if "SSL" not in k}
    assert ls_remote(url, **no_ca).returncode != 0
    env = git_env(**git_https_server.extra_header_env())
    proc = run_git("clone", url, tmp_path / "c", env=env)
    assert "error" not in proc.stderr.lower()
    assert (tmp_path / "c" / "README.md").exists()


def test_git_daemon_serves_repos(git_daemon: GitDaemon, upstream_repo: UpstreamRepoFactory) -> None:
    """``git://`` ls-remote lists the upstream head without any credentials."""
    repo = upstream_repo()
    assert repo.head() in ls_remote(git_daemon.url_for(repo)).stdout
    assert ls_remote(git_daemon.url_for("missing")).returncode != 0


def test_sshd_checks_host_key(
    sshd_server: SSHServer, upstream_repo: UpstreamRepoFactory, tmp_path: Path
) -> None:
    """Git over ssh works with the right known_hosts and key; a wrong host or user key fails."""
    repo = upstream_repo()
    url = sshd_server.url_for(repo)
    good = ls_remote(url, **sshd_server.env())
    assert repo.head() in good.stdout, good.stderr + sshd_server.output()
    wrong_host = ls_remote(
        url, **sshd_server.env(known_hosts_file=sshd_server.wrong_known_hosts_file)
    )
    assert "host key" in wrong_host.stderr.lower()
    wrong_key = ls_remote(url, **sshd_server.env(key_file=sshd_server.wrong_client_key_file))
    assert "permission denied" in wrong_key.stderr.lower()
    scp = ls_remote(sshd_server.scp_url_for(repo), **sshd_server.config_env())
    assert repo.head() in scp.stdout, scp.stderr
    env = git_env(**sshd_server.env())
    run_git("clone", "-q", "--filter=blob:none", url, tmp_path / "c", env=env)
    assert (tmp_path / "c" / "flows" / "sub" / "b.py").exists()


def test_s3_lists_objects_and_checks_auth(s3_server: S3Server) -> None:
    """s3fs lists an object put by the helper; with auth on, a wrong secret is refused."""
    bucket = s3_server.new_bucket()
    etag = s3_server.put(bucket, "flows/a.py", b"A = 1\n")
    s3_server.reset_requests()
    fs: Any = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options())
    [entry] = fs.ls(f"{bucket}/flows", detail=True)
    assert (entry["name"], entry["size"], entry["ETag"]) == (f"{bucket}/flows/a.py", 6, etag)
    assert s3_server.request_count("GET", f"/{bucket}") >= 1
    with s3_server.enable_auth() as (key, secret):
        good: Any = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options())
        assert good.cat_file(f"{bucket}/flows/a.py") == b"A = 1\n"
        bad: Any = fsspec.filesystem(
            "s3",
            skip_instance_cache=True,
            key=key,
            secret=secret + "x",
            endpoint_url=s3_server.endpoint_url,
        )
        with pytest.raises(PermissionError):
            bad.cat_file(f"{bucket}/flows/a.py")
    s3_server.delete_bucket(bucket)


def test_gcs_lists_objects(gcs_server: GCSServer) -> None:
    """Gcsfs lists an object put by the helper, with its size and MD5."""
    bucket = gcs_server.new_bucket()
    meta = gcs_server.put(bucket, "flows/a.py", b"A = 1\n")
    fs: Any = fsspec.filesystem("gcs", skip_instance_cache=True, **gcs_server.storage_options())
    [entry] = fs.ls(f"{bucket}/flows", detail=True)
    assert (entry["name"], entry["size"], entry["md5Hash"]) == (
        f"{bucket}/flows/a.py",
        6,
        meta["md5Hash"],
    )
    assert fs.cat_file(f"{bucket}/flows/a.py") == b"A = 1\n"
    gcs_server.delete_bucket(bucket)


def test_azurite_lists_blobs(azurite_server: AzuriteServer) -> None:
    """Adlfs lists a blob put by the helper; a wrong account key is refused."""
    container = azurite_server.new_container()
    azurite_server.put(container, "flows/a.py", b"A = 1\n")
    fs: Any = fsspec.filesystem(
        "abfs", skip_instance_cache=True, **azurite_server.storage_options()
    )
    [entry] = fs.ls(f"{container}/flows", detail=True)
    assert (entry["name"], entry["size"]) == (f"{container}/flows/a.py", 6)
    bad: Any = fsspec.filesystem(
        "abfs", skip_instance_cache=True, connection_string=azurite_server.wrong_connection_string()
    )
    with pytest.raises(HttpResponseError, match="AuthorizationFailure") as refused:
        bad.cat_file(f"{container}/flows/a.py")
    assert refused.value.status_code == 403
    azurite_server.delete_container(container)


def test_http_file_server_lists_and_ranges(http_file_server: HTTPFileServer) -> None:
    """Fsspec's HTTP filesystem lists a directory, gets sizes by HEAD and reads byte ranges."""
    http_file_server.write("site/a.txt", b"0123456789")
    http_file_server.write("site/sub/b.txt", b"bb")
    fs: Any = fsspec.filesystem("http", skip_instance_cache=True)
    listing = fs.ls(http_file_server.url_for("site/"), detail=True)
    assert sorted((e["name"], e["type"]) for e in listing) == [
        (http_file_server.url_for("site/a.txt"), "file"),
        (http_file_server.url_for("site/sub/"), "directory"),
    ]
    assert fs.info(http_file_server.url_for("site/a.txt"))["size"] == 10
    assert fs.cat_file(http_file_server.url_for("site/a.txt"), start=2, end=5) == b"234"
    assert ("GET", "/site/") in http_file_server.requests
    assert ("HEAD", "/site/a.txt") in http_file_server.requests


def test_start_process_reports_output(tmp_path: Path) -> None:
    """A server that exits while starting fails with its captured stderr in the message."""
    with pytest.raises(ServerStartError, match="boom on port"):
        start_process(
            "failing",
            lambda port: [sys.executable, "-c", f"import sys; sys.exit('boom on port {port}')"],
            ready=lambda port: False,
            log_dir=tmp_path,
            attempts=2,
        )
