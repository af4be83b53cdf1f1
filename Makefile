VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install deps run demo test lint format clean migration loadtest bench cluster chaos messages

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/paycode serve --demo --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Debian packages the whole suite needs beyond Python: Chromium for the page tests (Playwright
# drives it and never downloads a browser), libcairo for rasterising barcodes, nginx for the
# cluster tests, the Redis and PostgreSQL servers, and a CJK font so Chromium can lay out (and
# screenshot) the pages in Chinese. Installed when missing and this user
# can (root with apt-get); otherwise make stops and prints the one command to run.
deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/*-linux-gnu/libcairo.so.2 >/dev/null 2>&1 || missing="$$missing libcairo2"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v psql >/dev/null || missing="$$missing postgresql"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	fc-list :lang=zh 2>/dev/null | grep -q . || missing="$$missing fonts-wqy-zenhei"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "make deps: installing$$missing"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -qq $$missing; \
		else \
			echo "make test needs Debian packages that are missing:$$missing"; \
			echo "run:  sudo apt-get install -y$$missing"; \
			exit 1; \
		fi; \
	fi

# Two test processes (pytest-xdist), one per core: most tests wait on servers, sockets and
# databases, and the suite took 12 minutes in one process on a slow day. TEST_WORKERS=0 runs
# it in one process.
TEST_WORKERS ?= 2
test: deps lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Faults under load on the cluster (SIGKILL, Redis down, PostgreSQL restart); figures in
# build/chaos/ and docs/RELIABILITY.md. The tests marked chaos are left out of `make test`.
chaos: install
	$(VENV)/bin/pytest -m "chaos or not chaos" tests/chaos -v -s $(PYTEST_ARGS)

# PROCESSES app processes on PostgreSQL + Redis behind nginx on CLUSTER_PORT (Ctrl-C stops all).
PROCESSES ?= 3
CLUSTER_PORT ?= 8080
cluster: install
	$(PY) -m app.cluster --processes $(PROCESSES) --port $(CLUSTER_PORT) $(CLUSTER_ARGS)

# The pages' messages: re-extracts app/locales/messages.pot from the templates and JavaScript
# modules and merges it into each language's .po (then translate the new empty msgstr entries).
messages: install
	$(PY) -m app.i18n.extract

# Regenerates the single initial migration from the models while the schema is young.
migration: install
	rm -f models/migrations/versions/0001_initial.py
	rm -f /tmp/paycode-migration.db
	PAYCODE_DATABASE_URL=sqlite:////tmp/paycode-migration.db $(VENV)/bin/alembic -c models/alembic.ini revision --autogenerate --rev-id 0001 -m initial
	$(VENV)/bin/ruff format models/migrations
	$(VENV)/bin/ruff check --fix models/migrations

# Locust headless against a server it starts itself (or HOST_URL=http://... a running one,
# with PAYCODE_ADMIN_TOKEN set); LOCUST_PROCESSES>1 forks Locust workers sharing a Redis code queue.
USERS ?= 30
SPAWN_RATE ?= 10
DURATION ?= 60s
LOCUST_PROCESSES ?= 1
loadtest: install
	$(PY) -m loadtests.run_locust --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--duration $(DURATION) --processes $(LOCUST_PROCESSES) $(if $(HOST_URL),--host $(HOST_URL))

# The headline numbers (docs/BENCHMARKS.md): ~10 minutes, writes docs/bench/.
BENCH_ARGS ?=
bench: install
	$(PY) -m loadtests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) paycode.db paycode.db-wal paycode.db-shm paycode.webhooks.db paycode.webhooks.db-wal paycode.webhooks.db-shm
