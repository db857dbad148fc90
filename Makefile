# Everything installs from the lock file into .venv, with the system Python (no downloads of Python).
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .cache/uv/bin/uv
BIN := .venv/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Debian's chromium, which the browser tests drive (tests/test_docs_browser.py).
CHROMIUM := /usr/bin/chromium
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

# Debian's packages the deploy/ files run (haproxy, PgBouncer, socat for haproxy's runtime API).
# pg_auto_failover's package is built per PostgreSQL major version: the one installed here.
PG_MAJOR ?= $(or $(shell ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1),15)
DEPLOY_TOOLS := /usr/sbin/haproxy:haproxy /usr/sbin/pgbouncer:pgbouncer /usr/bin/socat:socat \
	/usr/bin/pg_autoctl:postgresql-$(PG_MAJOR)-auto-failover
PGBOUNCER_PORT ?= 6432
REPLICA_PORT ?= 5433
FAILOVER_PORT ?= 5440

.PHONY: help install run test browser deploy-tools pgbouncer-start pgbouncer-stop replica-start replica-stop failover-start failover-stop lint format clean bench fuzz

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(UV):
	$(PYTHON) -m venv .cache/uv
	.cache/uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

install: $(UV)  ## create .venv from uv.lock
	$(UV) sync --frozen --quiet

run: install  ## migrate the database (SQLite by default) and serve on http://$(HOST):$(PORT)
	$(BIN)/blogapi db upgrade
	exec $(BIN)/blogapi serve --host $(HOST) --port $(PORT)

test: install  ## the whole suite: SQLite always, PostgreSQL and MariaDB when reachable
	$(BIN)/pytest $(PYTEST_ARGS)

browser:  ## install Debian's chromium for the browser tests (make test skips them without it; CI requires it)
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "the browser tests need Chromium at $(CHROMIUM) (Debian package chromium): run 'sudo apt-get install chromium' first" >&2; exit 1; \
		fi; \
		echo "installing chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || exit 1; \
	fi

deploy-tools:  ## install Debian's haproxy, pgbouncer, socat and pg_auto_failover, which deploy/ runs (CI requires them)
	@missing=""; for tool in $(DEPLOY_TOOLS); do \
		[ -x "$${tool%%:*}" ] || missing="$$missing $${tool#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "deploy/ needs$$missing (Debian packages): run 'sudo apt-get install$$missing' first" >&2; exit 1; \
		fi; \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi

pgbouncer-start: deploy-tools  ## start PgBouncer (transaction pooling) on 127.0.0.1:$(PGBOUNCER_PORT) in front of 127.0.0.1:5432
	PGBOUNCER_PORT=$(PGBOUNCER_PORT) deploy/pgbouncer.sh start

pgbouncer-stop:  ## stop that PgBouncer (running transactions finish first)
	PGBOUNCER_PORT=$(PGBOUNCER_PORT) deploy/pgbouncer.sh stop

replica-start:  ## start a streaming replica of 127.0.0.1:5432 on 127.0.0.1:$(REPLICA_PORT) (made by pg_basebackup on first use)
	REPLICA_PORT=$(REPLICA_PORT) deploy/replica.sh start

replica-stop:  ## stop that replica (its data stays; `deploy/replica.sh destroy` removes it)
	REPLICA_PORT=$(REPLICA_PORT) deploy/replica.sh stop

failover-start:  ## start a pg_auto_failover formation: monitor on 127.0.0.1:$(FAILOVER_PORT), primary and synchronous secondary on the next two ports
	FAILOVER_PORT=$(FAILOVER_PORT) deploy/failover.sh start

failover-stop:  ## stop that formation (its data stays; `deploy/failover.sh destroy` removes it)
	FAILOVER_PORT=$(FAILOVER_PORT) deploy/failover.sh stop

lint: install  ## formatting, lint and strict typing, as CI runs them
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install  ## apply formatting and safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## remove the environment and caches
	rm -rf .venv .cache .mypy_cache .ruff_cache .pytest_cache

bench: install  ## benchmark blogapi against two baselines, and its lists at 10k and 1M posts, with wrk on PostgreSQL and MariaDB (~60 min; BENCH_ARGS=--quick: ~3 min)
	@if ! command -v wrk >/dev/null 2>&1; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make bench needs wrk (Debian package wrk): run 'sudo apt-get install wrk' first" >&2; exit 1; \
		fi; \
		echo "installing wrk (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || exit 1; \
	fi
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/observability.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick)

fuzz: install  ## schemathesis against the running service, per backend (~15 min; BACKENDS=sqlite, ROLES=user, FUZZ_ARGS=--seed 7)
	$(BIN)/python fuzz/run.py $(if $(BACKENDS),--backends $(BACKENDS)) $(if $(ROLES),--roles $(ROLES)) $(FUZZ_ARGS)
