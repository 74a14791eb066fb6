# The two set-up commands: `make demo` (the main job on the shipped model) and `make test` (every test).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test figures
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(PY) scripts/cipher_figure.py

test: setup
	$(PY) -m pytest

figures: setup
	$(PY) scripts/cipher_figure.py
