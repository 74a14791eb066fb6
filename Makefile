# The two set-up commands: `make demo` (the main job on the shipped model) and `make test` (every test).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lab test figures
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

# The demo app on the shipped backbone and adapters, offline, at http://localhost:8501, reachable from this machine
# only (`make demo ADDRESS=0.0.0.0` serves the network); it reads run folders only in RUNS (default ./runs).
ADDRESS ?= 127.0.0.1
RUNS ?= runs
demo: setup
	STREAMLIT_BROWSER_GATHER_USAGE_STATS=false $(VENV)/bin/streamlit run app/Home.py --server.headless true \
		--server.address $(ADDRESS) -- --runs $(RUNS)

# The teacher's second door: JupyterLab on the four notebooks (notebooks/) with the project's kernel (this venv's
# python3), at http://localhost:8888 (the address it prints carries the login token), on the same ADDRESS as `make demo`.
# Jupyter refuses to run as root unless told: as root (a container, a lab machine's image) it is told.
LAB_PORT ?= 8888
lab: setup
	$(VENV)/bin/jupyter lab --no-browser --ip $(ADDRESS) --port $(LAB_PORT) --ServerApp.root_dir=notebooks \
		--MultiKernelManager.default_kernel_name=python3 $(if $(filter 0,$(shell id -u)),--allow-root)

# ruff (lint and format) first: a style slip fails in a second, before the suite's minutes
test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(PY) -m pytest

figures: setup
	$(PY) scripts/cipher_figure.py
