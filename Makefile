# Two commands from a fresh clone (Python 3.10+, no GPU needed):
#   make demo        virtual environment + install + the quick-start training on the built-in demo data
#   make test        virtual environment + install with the dev group + the whole test suite
#   make test-fast   the same without the slow (training / subprocess) tests
#
# torch: installed ($(TORCH_SPEC)) only where `import torch` fails inside $(VENV). A cuda or
# torch_sdaa build is kept: put it in the environment first (VENV=/path/to/your/env, or
# VENV_FLAGS=--system-site-packages to see the system's torch), or set TORCH_SPEC=skip.
# `make -n demo` prints every step without running it.

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
PY := $(VENV)/bin/python
PIP ?= $(PY) -m pip
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PIP_FLAGS ?= -q
DEMO_FLAGS ?=
PYTEST_FLAGS ?= -q

.PHONY: demo test test-fast torch install install-dev clean-venv

demo: install
	$(PY) run_scripts/run_pspnet.py --config configs/demo.yaml --device cpu $(DEMO_FLAGS)

test: install-dev
	$(PY) -m pytest $(PYTEST_FLAGS)

test-fast: install-dev
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow"

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

# The one decision about torch: keep an importable one, else install TORCH_SPEC (skip: never).
torch: $(PY)
	@if [ "$(TORCH_SPEC)" = "skip" ]; then \
		echo "torch: TORCH_SPEC=skip, not installing torch"; \
	elif $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "torch: keeping torch $$($(PY) -c 'import torch; print(torch.__version__)') already in $(VENV)"; \
	else \
		echo "torch: none importable in $(VENV), installing $(TORCH_SPEC)"; \
		$(PIP) install $(PIP_FLAGS) $(TORCH_SPEC); \
	fi

install: torch
	$(PIP) install $(PIP_FLAGS) -e .

install-dev: torch
	$(PIP) install $(PIP_FLAGS) -e ".[dev]"

clean-venv:
	rm -rf $(VENV)
