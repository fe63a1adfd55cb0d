# runner-storage: keeps workers' code in sync, as a container (sidecar, init container, or alone).
#
# Online (pip reaches the package index):
#     podman build -t runner-storage .            # or: docker build -t runner-storage .
# Offline (wheels made beforehand with `make wheels`, for the base image's Python version):
#     podman build --network=none --build-arg PIP_NO_INDEX=1 -t runner-storage .
# Another Debian-based image with Python >= 3.10 can be the base:
#     --build-arg BASE_IMAGE=... (git, ssh, CA certificates and tini are installed only if it
#     lacks them, so a base that already has them builds without any network).
# docs/deploy.md explains the choices made here.

ARG BASE_IMAGE=python:3.12-slim

# --- builder: a virtual environment holding the project and its dependencies ---------------
FROM ${BASE_IMAGE} AS builder

# Set to 1 to install only from build/wheels in the build context (no index, no network).
ARG PIP_NO_INDEX=
# Optional backends: "all" = S3, GCS and Azure Blob; "s3", "gcs,azure"...; empty = git, HTTP
# and local folders only (a smaller image).
ARG EXTRAS=all
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY . /src
RUN python3 -m venv /opt/runner-storage \
    && if [ -n "${PIP_NO_INDEX}" ]; then \
         set -- /src/build/wheels/runner_storage-*.whl \
         && /opt/runner-storage/bin/pip install --no-cache-dir --no-index \
              --find-links=/src/build/wheels "$1${EXTRAS:+[$EXTRAS]}"; \
       else \
         /opt/runner-storage/bin/pip install --no-cache-dir "/src${EXTRAS:+[$EXTRAS]}"; \
       fi \
    && /opt/runner-storage/bin/runner-storage --version

# --- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="runner-storage" \
      org.opencontainers.image.description="Keeps workers' code in sync with git repositories, object stores, HTTP and local folders; atomic publish, health endpoints, Prometheus metrics." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deploy.md"

# git and ssh for git sources, CA certificates for HTTPS, tini as PID 1 to reap the git and
# hook processes the daemon starts and to forward signals. Installed only when missing, so a
# base image that already carries them needs no network and no package lists.
# Versions are not pinned: they follow whatever Debian release the base image is built on.
# hadolint ignore=DL3008
RUN set -eu; \
    set --; \
    for pkg in ca-certificates git openssh-client tini; do \
      if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]; then \
        set -- "$@" "$pkg"; \
      fi; \
    done; \
    if [ "$#" -gt 0 ]; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 runner; \
    useradd --uid 10001 --gid 10001 --no-log-init --home-dir /home/runner --create-home \
      --shell /usr/sbin/nologin runner; \
    mkdir -p /data; \
    chown 10001:10001 /data

COPY --from=builder /opt/runner-storage /opt/runner-storage

# HTTP_HOST: the daemon listens on loopback by default, which inside a container only the
# container itself can reach; kubelet probes, `docker run -p` and Prometheus come from
# outside its network namespace, so the image listens on every address of its namespace.
# The HEALTHCHECK below talks to loopback either way.
ENV PATH=/opt/runner-storage/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUNNER_STORAGE_ROOT=/data \
    RUNNER_STORAGE_HTTP_HOST=0.0.0.0 \
    RUNNER_STORAGE_HTTP_PORT=8080

# The published code (and the daemon's state) lives in /data: mount a volume there and share
# it with the workers, read-only for them.
VOLUME /data
WORKDIR /data
EXPOSE 8080

# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001

# Healthy = /readyz answers 200: every source published and not stale. Python's urllib, as the
# image has no curl; proxies from the environment are ignored; an address the daemon was told
# to listen on is used as is, a wildcard becomes loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/runner-storage/bin/python", "-c", "import os, urllib.request as r; e = os.environ.get; h = e('RUNNER_STORAGE_HTTP_HOST') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = '[' + h + ']' if ':' in h else h; r.build_opener(r.ProxyHandler({})).open('http://' + h + ':' + (e('RUNNER_STORAGE_HTTP_PORT') or '8080') + '/readyz', timeout=4)"]

# The daemon exits 0 on SIGTERM after abandoning an unfinished pull (nothing half-published).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "runner-storage"]
CMD ["run"]
