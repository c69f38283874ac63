# spamgate: `make run` and `make test` do all set-up on a fresh Debian machine (as root).
# System packages are installed only when missing; the Python side lives in .venv.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= config/spamgate.yaml

# Building pymilter needs libmilter's headers and a C compiler; the tests drive real software.
RUN_PACKAGES := libmilter-dev gcc
TEST_PACKAGES := $(RUN_PACKAGES) postfix rbldnsd swaks

.PHONY: run test lint typecheck unit e2e system-run system-test venv clean

run: system-run $(VENV)/.installed
	exec $(VENV)/bin/spamgate run -c $(CONFIG)

test: system-test $(VENV)/.installed lint typecheck
	$(VPY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check milter tests
	$(VENV)/bin/ruff format --check milter tests

typecheck: $(VENV)/.installed
	# From inside milter/, so mypy sees pymilter's C module `milter`, not our source root.
	cd milter && ../$(VENV)/bin/mypy --config-file ../pyproject.toml --strict -p spamgate

unit: $(VENV)/.installed
	$(VPY) -m pytest -m "not e2e"

e2e: system-test $(VENV)/.installed
	$(VPY) -m pytest -m e2e

system-run:
	@$(call ensure_packages,$(RUN_PACKAGES) $(python_packages))

system-test:
	@$(call ensure_packages,$(TEST_PACKAGES) $(python_packages))

# Debian packages the Python interpreter needs to build a venv with pymilter in it; none when
# the interpreter already has venv/ensurepip and its C headers (e.g. a pyenv build).
python_packages = $(shell $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv) \
	$(shell $(PYTHON) -c 'import os, sysconfig; \
	  raise SystemExit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  2>/dev/null || echo python3-dev)

# Install the named Debian packages that are not installed yet, non-interactively. Postfix is
# preseeded to "No configuration" so the system MTA is neither configured nor started: the
# tests run their own private Postfix instances.
define ensure_packages
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
  apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
