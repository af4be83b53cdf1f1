VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run demo test lint format clean migration loadtest bench cluster chaos messages

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

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) paycode.db paycode.db-wal paycode.db-shm
