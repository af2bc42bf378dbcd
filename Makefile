# Carina: `make demo` starts the whole stack on the embedded simulator; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := redis-server openssh-server wget curl chromium
STAMP := $(VENV)/.installed
GUEST_USER := carina-guest

.PHONY: setup system guest-user demo test lint bench bench-quick clean

setup: system guest-user $(STAMP)

# Debian packages the stack and the tests run (idempotent: installs only what is missing).
system:
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PY) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The unprivileged user the simulator runs tenants' context scripts as (root only; README, "Security").
guest-user:
	@if [ "$$(id -u)" = 0 ] && ! getent passwd $(GUEST_USER) >/dev/null; then \
	  echo "useradd $(GUEST_USER)"; \
	  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
	    $(GUEST_USER); \
	fi

$(STAMP): requirements.txt requirements-dev.txt | system
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: setup
	$(BIN)/python bin/demo.py

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

# Benchmarks (bench/README.md): print a table, write bench/results/<date>-<mode>.json and latest-<mode>.json;
# exit 1 only when a part failed or a figure could not be measured (a SLOW verdict does not fail).
bench: setup
	$(BIN)/python bench/run.py

bench-quick: setup
	$(BIN)/python bench/run.py --quick

clean:
	@for w in var/onesim var/demo/onesim; do \
	  if [ -f $$w/guests.id ]; then rm -rf "/var/tmp/onesim-guests-$$(id -u)/$$(cat $$w/guests.id)"; fi; \
	done
	rm -rf var .pytest_cache .hypothesis
