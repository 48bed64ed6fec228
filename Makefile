# Concord: `make run` starts the whole portal, `make test` runs every check. Both install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck format bench clean chromium

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

# The embedded default: SQLite (WAL) and kombu's filesystem transport, unless DATABASE_URL and
# REDIS_URL are set. The secret key and the credentials key are generated into var/ on first use
# unless DJANGO_SECRET_KEY / CONCORD_FERNET_KEYS are set. Plain HTTP on loopback, so the
# HTTPS-only protections are switched off here by variables; production keeps their defaults.
run: $(STAMP)
	DJANGO_SECURE_SSL_REDIRECT=0 DJANGO_SECURE_COOKIES=0 DJANGO_HSTS_SECONDS=0 \
	$(PY) manage.py run_portal

# lint-imports checks the layers of ARCHITECTURE.md (.importlinter): each imports only those below.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Browser tests drive Debian's Chromium (never a browser downloaded by a test tool).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "Installing Debian's chromium package for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y --no-install-recommends chromium \
	    || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }; }

# Runs on real PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379); see README.
test: lint typecheck chromium $(STAMP)
	DJANGO_SETTINGS_MODULE=config.settings_test DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
	  $(PY) manage.py makemigrations --check --dry-run
	DJANGO_SETTINGS_MODULE=config.settings DJANGO_SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	  DJANGO_ALLOWED_HOSTS=concord.example.com CONCORD_FERNET_KEYS=$$($(PY) -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
	  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \
	  $(PY) manage.py check --deploy --fail-level WARNING
	DJANGO_SETTINGS_MODULE=config.settings_test $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(PY) -m pytest

# Throughput figures (one JSON line each) on real PostgreSQL and Redis, with the sandbox; see
# tests/benchmarks/__main__.py. Takes about 14 minutes (plus about 7 the first time, to seed the million-case pages database).
bench: $(STAMP)
	$(PY) -m tests.benchmarks

clean:
	rm -rf var staticfiles .pytest_cache .mypy_cache .ruff_cache
