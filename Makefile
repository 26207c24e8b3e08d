# The two commands a newcomer needs: `make run` and `make test`. Both set up
# everything they need on a fresh machine (Python venv, npm packages) first.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test check bench clean chromium

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

tests/js/node_modules/.package-lock.json: tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error

# The browser tests drive Debian's Chromium (never a downloaded one). Installed here when
# missing and we are root (CI); otherwise those tests skip with a reason (and fail under CI=true).
chromium:
	@test -x $(CHROMIUM) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "no $(CHROMIUM): browser tests will be skipped (apt-get install chromium)" >&2; fi; }

## Start the server on the embedded default (http://127.0.0.1:8000, demo at /).
run: $(INSTALLED)
	$(VENV)/bin/canvashub serve

# mypy follows the installed namespace through links (canvashub.server -> server/, ...).
TYPECHECK := .typecheck/canvashub

$(TYPECHECK):
	mkdir -p $@
	ln -sfn ../../server $@/server; ln -sfn ../../crdt $@/crdt; ln -sfn ../../storage $@/storage

# canvashub.client lives in server/client/ (pyproject package-dir); its own link, so that a
# checkout whose .typecheck/ predates it gets it too.
$(TYPECHECK)/client: | $(TYPECHECK)
	ln -sfn ../../server/client $@

## Lint, formatting, layer contracts and types: zero findings (part of `make test`).
check: $(INSTALLED) $(TYPECHECK) $(TYPECHECK)/client
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

## Run the whole test suite (after `check`). pytest exits 5 when no test ran: that is a failure too.
test: check tests/js/node_modules/.package-lock.json chromium
	$(PY) -m pytest -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

## Compare canvashub with the reference servers (see bench/README.md).
bench: $(INSTALLED)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) tests/js/node_modules .pytest_cache .typecheck .mypy_cache .ruff_cache
