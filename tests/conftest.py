"""Test-suite configuration: environment set before anything imports gcsfs, server fixtures."""

from __future__ import annotations

import os

# gcsfs otherwise tries a gRPC-over-TLS bucket-type lookup that stalls ~60 s per call
# against the emulator; it reads this when it is imported, so set it first.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

pytest_plugins = [
    "servers.gitrepo",
    "servers.git_http",
    "servers.git_daemon",
    "servers.sshd",
    "servers.s3",
    "servers.gcs",
    "servers.azurite",
    "servers.ftp",
    "servers.http_files",
    "servers.kv",
    "servers.fault_proxy",
    "servers.registry",
    "servers.webhook",
    "daemon_process",
    "remote_sources",
    "containers",
    "prefect_env",
]
