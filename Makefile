# PancreasDiNTS: the two commands of the README.
#   make demo   create .venv, install CPU torch (unless one is importable) and the package, run the offline demo
#   make test   the same set-up, then ruff, and mypy beside the whole pytest suite (what .ci/run calls)
#   make test-fast  the edit loop: the quick tests of every sub-package (no set-up step; see Testing/README.md)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo-output

.PHONY: setup demo test test-fast lint clean

# Bytecode: pip writes none at install (--no-compile: most of torch, sympy, MONAI, vtk is never imported, and
# compiling all of it took about two thirds of each install); Python writes it for the modules that are imported,
# once, so PYTHONDONTWRITEBYTECODE is not passed on to the recipes (without bytecode every engine subprocess of the
# tests would compile torch again: about 35 s each on the loaded 2-core machine). The venv's own pip (23.2 with
# Python 3.11) installs this pyproject editable, so it is not upgraded first.
unexport PYTHONDONTWRITEBYTECODE
PIP_INSTALL = $(PY) -m pip install --quiet --no-compile

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch through pip, which finds the CPU wheel this machine keeps on disk (PIP_FIND_LINKS); then the package and
# its extras through uv (installed into the venv by pip, about 2 s), which keeps that torch and installs the rest in
# about 9 s where pip took 44 s (the same versions); --native-tls: the system's certificates, as pip uses them.
setup: $(PY)
	@$(PY) -c "import torch" 2>/dev/null && echo "using the installed torch" || $(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) --native-tls -e ".[test,slicer,review]"

demo: setup
	$(VENV)/bin/pancreas-dints demo -o $(DEMO_OUT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Three pytest workers (pytest-xdist), one thread each, on the two cores: a third keeps both cores busy while a
# test waits for a server, a browser or a child process (the whole suite on a quiet 2-core machine: 721 s with two
# workers, 638 s with three); a file's tests on one worker (module fixtures run once); the ten slowest tests and
# every skipped test with its reason (the docs' blocks not run here among them) are listed at the end.
PYTEST_WORKERS ?= 3
# The quick tier waits for nothing: two workers (46 s against 58 s with three, whose extra collection costs more)
FAST_WORKERS ?= 2
FAST_MARKERS ?= not slow and not subprocess and not server and not browser

# mypy (about 30 s of one core) runs beside the suite, niced, its report printed after the suite's.
SUITE = OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=10 -rs Testing
test: setup
	$(VENV)/bin/ruff check .
	@nice -n 10 $(VENV)/bin/mypy > $(VENV)/mypy.log 2>&1 & typing=$$!; \
	echo "$(SUITE)"; $(SUITE); \
	tests=$$?; wait $$typing; typed=$$?; echo "$(VENV)/bin/mypy"; cat $(VENV)/mypy.log; \
	[ $$tests -eq 0 ] && [ $$typed -eq 0 ]

test-fast: $(PY)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(FAST_WORKERS) --dist loadfile -m "$(FAST_MARKERS)" Testing

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
