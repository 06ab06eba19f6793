# PancreasDiNTS: the two commands of the README.
#   make demo   create .venv, install CPU torch (unless one is importable) and the package, run the offline demo
#   make test   the same set-up, then ruff and the pytest suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: setup demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

setup: $(PY)
	@$(PY) -c "import torch" 2>/dev/null && echo "using the installed torch" || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,slicer,review]"

demo: setup
	$(VENV)/bin/pancreas-dints demo -o $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q Testing

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
