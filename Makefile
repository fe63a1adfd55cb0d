# Everything a fresh machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup bytecode system-deps demo test lint typecheck check clean bench wheels image

# Debian packages the tests need: sshd for ssh:// sources, openssl for the HTTPS git server;
# podman + runc + debootstrap build and run the container image for real (tests/test_deploy.py,
# tests/containers.py), systemd-analyze verifies the unit files; docker-registry serves images
# to tests/test_storage_docker.py.
SYSTEM_TOOLS := /usr/sbin/sshd /usr/bin/openssl /usr/bin/git /usr/bin/podman /usr/sbin/runc \
	/usr/sbin/debootstrap /usr/bin/systemd-analyze /usr/bin/docker-registry

system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do [ -x $$t ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    openssh-server openssh-client openssl git ca-certificates \
	    podman runc debootstrap systemd docker-registry >/dev/null; \
	fi

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U 'pip>=25.1'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[all]' --group dev
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

setup: $(STAMP) bytecode

# pip compiles the bytecode of what it installs, but not of an editable install's sources,
# and with PYTHONDONTWRITEBYTECODE set nothing ever writes it: every CLI run from the
# checkout would compile its ~60 modules again (50 ms). A stale file is simply recompiled.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 runner_storage service

demo: $(STAMP)
	$(BIN)/python examples/demo.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: system-deps $(STAMP) node_modules/.package-lock.json lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: system-deps $(STAMP) bytecode node_modules/.package-lock.json
	$(BIN)/python -m bench

# Wheels of the project and all its dependencies, for an offline image build:
#   make wheels && podman build --network=none --build-arg PIP_NO_INDEX=1 --build-arg BASE_IMAGE=...
# They are built for this venv's Python: the base image must run the same Python version.
wheels: $(STAMP)
	rm -rf build/wheels
	$(BIN)/python -m pip wheel -q --disable-pip-version-check '.[all]' --wheel-dir build/wheels

# The container image, built the usual way (pip fetches from the index): make image IMAGE=...
IMAGE ?= runner-storage:latest
CONTAINER_ENGINE ?= $(shell command -v podman || command -v docker)
image:
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .demo
