# `make demo` and `make test` work on a fresh machine: they create .venv when missing and install first.
VENV ?= .venv
PYTHON ?= python3
# torch goes in first and on its own so that the later install finds it satisfied; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

# Inside the project workspace the dataset registry reads a local mirror; users get the public mirrors.
SHARED_DATA := $(abspath $(CURDIR)/../shared/data)
# The folder itself marks the mirror, README or not; `DIR/.` exists only when DIR is a folder.
ifneq ($(wildcard $(SHARED_DATA)/.),)
export METASHIELD_MIRROR ?= file://$(SHARED_DATA)
endif

.PHONY: demo test lint install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,parquet]"
	$(BIN)/python -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $@

demo: install
	$(BIN)/metashield demo

lint: install
	$(BIN)/ruff check metashield tests benchmarks
	$(BIN)/ruff format --check metashield tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
