# spamgate: `make run` and `make test` do all set-up on a fresh Debian machine (as root).
# System packages are installed only when missing; the Python side lives in .venv.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CONFIG ?= config/spamgate.yaml

# Building pymilter needs libmilter's headers and a C compiler; the tests drive real software.
RUN_PACKAGES := libmilter-dev gcc
# systemd: systemd-analyze, -sysusers and -tmpfiles check the unit files.
# redis-server: the greylisting tests start their own on loopback (shared state of many MX hosts).
# rspamd: the benchmark's baseline, a private proxy worker in milter mode (bench/rspamd.py).
TEST_PACKAGES := $(RUN_PACKAGES) postfix rbldnsd swaks systemd redis-server rspamd

.PHONY: run test lint typecheck unit e2e bench soak system-run system-test venv clean install uninstall

run: system-run $(VENV)/.installed
	exec $(VENV)/bin/spamgate run -c $(CONFIG)

test: system-test $(VENV)/.installed lint typecheck
	$(VPY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check milter tests bench
	$(VENV)/bin/ruff format --check milter tests bench

typecheck: $(VENV)/.installed
	# From inside milter/, so mypy sees pymilter's C module `milter`, not our source root.
	cd milter && ../$(VENV)/bin/mypy --config-file ../pyproject.toml --strict -p spamgate
	# The benchmark imports spamgate from its source root, as the test suite does.
	MYPYPATH=milter $(VENV)/bin/mypy --config-file pyproject.toml --strict bench
	# So does the soak suite; as a package, since tests/ has no __init__.py.
	MYPYPATH=milter $(VENV)/bin/mypy --config-file pyproject.toml --strict -p tests.soak

unit: $(VENV)/.installed
	$(VPY) -m pytest -m "not e2e"

e2e: system-test $(VENV)/.installed
	$(VPY) -m pytest -m e2e

# `make bench` (as root, like `make test`): spamgate against Postfix without a milter, a no-op
# pymilter milter and rspamd, through a private Postfix, rbldnsd and smtp-sink on loopback;
# writes bench/RESULTS.md in about 25 minutes. BENCH_ARGS="--quick" for a one-minute run,
# BENCH_ARGS="--before REV" to measure spamgate at another commit in the same rounds.
BENCH_ARGS ?=
bench: system-test $(VENV)/.installed
	$(VPY) -m bench.run $(BENCH_ARGS)

# `make soak` (as root, like `make test`): the fault and load suite in full -- 200 concurrent
# sessions, DNS faults, spamgate killed, stopped and reloaded under load, a long run -- through
# a private Postfix, rbldnsd (behind a fault-injecting DNS proxy for the DNS faults), and
# smtp-sink on loopback; prints a ledger per scenario. About three minutes. `make test` runs the same scenarios small
# (tests/e2e/test_soak.py). SOAK_ARGS="--short" for that size, or name scenarios to run.
SOAK_ARGS ?=
soak: system-test $(VENV)/.installed
	$(VPY) -m tests.soak $(SOAK_ARGS)

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
# preseeded to "No configuration" so the system MTA is neither configured nor started, and a
# policy-rc.d that refuses every start (if the machine has none) keeps the packages' services
# (redis-server, rspamd) from starting: the tests run their own private instances.
define ensure_packages
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:$$missing"; \
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
  guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; \
  fi; \
  apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
  status=$$?; if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$status; \
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

# `make install` (as root) installs spamgate as a systemd service; docs/operations.md, "Running
# under systemd". DESTDIR stages everything under another root (for a package, or the tests): the
# files are written there and nothing else on this machine is changed.
#
# The program is add-on software with its own tree, so it goes to /opt/spamgate (FHS 3.13).
# The systemd snippets go to /usr/local/lib, which systemd searches for locally installed
# units, sysusers.d and tmpfiles.d files: /usr/lib belongs to Debian's packages, and /etc to
# the admin, whose overrides there (systemctl edit, /etc/tmpfiles.d/spamgate.conf) then
# survive the next `make install`, which replaces these files. The policy is the admin's:
# it is installed only if there is none.
PREFIX ?= /opt/spamgate
LOCALLIBDIR ?= /usr/local/lib
UNITDIR ?= $(LOCALLIBDIR)/systemd/system
SYSUSERSDIR ?= $(LOCALLIBDIR)/sysusers.d
TMPFILESDIR ?= $(LOCALLIBDIR)/tmpfiles.d
POLICY := /etc/spamgate/spamgate.yaml
# The service's interpreter: Debian's, which apt keeps patched. (Also for system-run, which
# inherits this and installs what that interpreter needs to build the venv.)
SERVICE_PYTHON ?= /usr/bin/python3
install: PYTHON = $(SERVICE_PYTHON)

install: system-run
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path"; exit 2;; esac
	@# ProtectHome= hides /root and /home from the service, and with them a pyenv interpreter
	@# the venv would link to.
	@$(PYTHON) -c 'import sys; home = sys.base_prefix.startswith(("/root/", "/home/")); \
	  raise SystemExit(home and f"{sys.base_prefix}: the service cannot see it (ProtectHome=)")'
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/python -m pip install --quiet .
	@# A venv writes its own path into its scripts: a staged one must name its final place.
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -lIr -e '$(DESTDIR)$(PREFIX)' $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/pyvenv.cfg \
	    | xargs -r sed -i 's|$(DESTDIR)$(PREFIX)|$(PREFIX)|g'; \
	fi
	@if [ -e $(DESTDIR)$(POLICY) ]; then \
	  echo "keeping $(DESTDIR)$(POLICY)"; \
	else \
	  install -D -m 0644 $(CONFIG) $(DESTDIR)$(POLICY) && echo "installed $(DESTDIR)$(POLICY)"; \
	fi
	@# A new version may be stricter than the policy in place: say so now, not at the restart.
	@$(DESTDIR)$(PREFIX)/bin/python -m spamgate check-config -c $(DESTDIR)$(POLICY) \
	  || echo "WARNING: spamgate will refuse to start on $(POLICY) until it is fixed"
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/opt/spamgate/|$(PREFIX)/|g' systemd/spamgate.service \
	  > $(DESTDIR)$(UNITDIR)/spamgate.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/spamgate.service
	install -D -m 0644 systemd/spamgate.sysusers $(DESTDIR)$(SYSUSERSDIR)/spamgate.conf
	install -D -m 0644 systemd/spamgate.tmpfiles $(DESTDIR)$(TMPFILESDIR)/spamgate.conf
	@# Bare names, so that an admin's /etc/sysusers.d or /etc/tmpfiles.d/spamgate.conf wins.
	@if [ -n "$(DESTDIR)" ]; then \
	  echo "staged in $(DESTDIR); on the target run: systemd-sysusers spamgate.conf;" \
	    "systemd-tmpfiles --create spamgate.conf; systemctl daemon-reload"; \
	  exit 0; \
	fi; \
	set -e; \
	systemd-sysusers spamgate.conf; \
	systemd-tmpfiles --create spamgate.conf \
	  || echo "NOTE: the unix-socket directory was not created (no postfix group?)." \
	    "Listening on inet: needs none; see docs/operations.md, Running under systemd."; \
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	echo "installed; start it with: systemctl enable --now spamgate"

# Removes the program and the systemd files; keeps the policy in /etc/spamgate and the
# spamgate user (files, such as the socket directory, may still belong to it).
uninstall:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path"; exit 2;; esac
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now spamgate.service || true; \
	fi
	rm -f $(DESTDIR)$(UNITDIR)/spamgate.service $(DESTDIR)$(SYSUSERSDIR)/spamgate.conf \
	  $(DESTDIR)$(TMPFILESDIR)/spamgate.conf
	rm -rf $(DESTDIR)$(PREFIX)
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
