# The two set-up commands: `make demo` (the main job on the shipped model) and `make test` (every test).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test figures
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

# The demo app on the shipped backbone and adapters, offline, at http://localhost:8501
demo: setup
	STREAMLIT_BROWSER_GATHER_USAGE_STATS=false $(VENV)/bin/streamlit run app/Home.py --server.headless true

test: setup
	$(PY) -m pytest

figures: setup
	$(PY) scripts/cipher_figure.py
