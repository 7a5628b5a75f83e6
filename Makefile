# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.motfm-installed
# Prefect's local embedded mode: SQLite under this folder, no server to start.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_LOGGING_EXTRA_LOGGERS ?= motfm_core
# motfm_core also runs outside flows (the core tests, a notebook): its warnings then stay in the local log instead of
# each adding Prefect's "no flow run id" warning
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore

.PHONY: demo demo-3d demo-clinical-2d demo-clinical-3d test lint venv data postgres browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# nnunetv2 (a test extra) pulls batchgenerators -> unittest2 -> the PyPI 'argparse' 1.4 backport, which shadows
	@# the standard library's and breaks Prefect's server (no BooleanOptionalAction): the standard one is kept
	$(PY) -m pip uninstall -q -y argparse 2>/dev/null || true
	touch $@

# Debian's mricron-data gives the second real brain (Colin27 + AAL); installed when we can (root + apt).
data:
	@if [ ! -d /usr/share/mricron/templates ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq mricron-data >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mricron-data)) \
	      || echo "warning: mricron-data not installed; the demo uses the nilearn brain only"; \
	  else echo "warning: /usr/share/mricron/templates missing (sudo apt-get install mricron-data); the demo uses the nilearn brain only"; fi; \
	fi

# Debian's PostgreSQL server for the deployment tests (deployments/local.sh up --postgres); installed when we can
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq postgresql >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)) \
	      || echo "warning: postgresql not installed; the deployment tests use SQLite"; \
	  else echo "warning: PostgreSQL missing (sudo apt-get install postgresql); the deployment tests use SQLite"; fi; \
	fi

# Debian's headless Chromium for the UI test (the run page and report artifact seen in a browser; 18 packages
# without recommends); the test is skipped without it
browser:
	@if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq --no-install-recommends chromium-headless-shell >/dev/null 2>&1 \
	      || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium-headless-shell)) \
	      || echo "warning: chromium-headless-shell not installed; the UI test is skipped"; \
	  else echo "warning: Chromium missing (sudo apt-get install chromium-headless-shell); the UI test is skipped"; fi; \
	fi

demo: venv data
	$(PY) -m flows.synth_and_eval --run-name demo --preset demo

# the same DAG in 3D: sub-volume blocks of the bundled brains (outputs/demo-3d/)
demo-3d: venv data
	$(PY) -m flows.synth_and_eval --run-name demo-3d --preset demo-3d

# 2D at the bundled brains' native 1 mm: 192 x 192 slices, the size-aware network (outputs/clinical-2d/)
demo-clinical-2d: venv data
	$(PY) -m flows.synth_and_eval --run-name clinical-2d --preset clinical-2d

# 3D at clinical size: 128^3 blocks of the bundled brains at 1 mm, flow matching in an autoencoder's latent space
# (outputs/clinical-3d/)
demo-clinical-3d: venv data
	$(PY) -m flows.synth_and_eval --run-name clinical-3d --preset clinical-3d

# lint (ruff), the import contracts (layers, no Prefect in motfm_core, no circles) and types (mypy), then the tests
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: venv data postgres browser lint
	$(PY) -m pytest -q

clean:
	rm -rf outputs/demo outputs/demo-3d outputs/clinical-2d outputs/clinical-3d .prefect
