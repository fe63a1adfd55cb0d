# Everything a fresh machine needs is installed by these targets; nothing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test lint typecheck check clean bench

# Debian packages the tests need: sshd for ssh:// sources, openssl for the HTTPS git server.
SYSTEM_TOOLS := /usr/sbin/sshd /usr/bin/openssl /usr/bin/git

system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do [ -x $$t ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    openssh-server openssh-client openssl git ca-certificates >/dev/null; \
	fi

$(STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U 'pip>=25.1'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[all]' --group dev
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: system-deps $(STAMP) node_modules/.package-lock.json lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: system-deps $(STAMP) node_modules/.package-lock.json
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache .demo
