# Every target that needs the virtualenv depends on it, so a fresh clone needs only
# Python 3.11+ and make:  `make run`  and  `make test`. Packages come from the lock file at
# the versions CI passed with; `make lock` re-resolves pyproject.toml's ranges and pins again.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock

.PHONY: install lock run mail worker redis redis-server browser logrotate valgrind test test-fast lint format bench bench-quick bench-cg clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Resolve pyproject.toml's ranges (every extra) in a fresh virtualenv and pin the result.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev,bench]'
	{ echo "# Pinned by 'make lock' from pyproject.toml (all extras); 'make install' installs these."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

# notify-service: the API with uvicorn and, with email or webhooks on, the delivery process
# beside it (restarted if it dies); both restart on code changes.
run: $(STAMP)
	$(BIN)/notify-service --reload --host 127.0.0.1 --port 8000

# The Redis backend's tests start their own redis-server on a free loopback port; this puts
# Debian's package on the machine when it is missing (as root, or through sudo).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package) for the Redis backend's tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# Headless Chromium for the tests that render /docs and /redoc the way a person sees them:
# Debian's package, installed when missing (as root, or through sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package) for the browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The log-rotation tests run Debian's logrotate against a live server (docs/operations.md);
# installed when missing (as root, or through sudo).
logrotate:
	@command -v logrotate >/dev/null 2>&1 || { \
	  echo "installing logrotate (Debian package) for the log-rotation tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq logrotate >/dev/null; }

# A Redis for trying the redis backend by hand: loopback, port 6379, in the foreground.
redis: redis-server
	@mkdir -p .redis-data
	redis-server --bind 127.0.0.1 --port 6379 --appendonly yes --dir $(CURDIR)/.redis-data

# A local SMTP server for trying email by hand: 127.0.0.1:8025, printing every message it gets.
#   NOTIFY_SMTP_URL=smtp://127.0.0.1:8025 NOTIFY_SMTP_FROM=notify@example.com make run
mail: $(STAMP)
	$(BIN)/python -m aiosmtpd -n -l 127.0.0.1:8025 -c aiosmtpd.handlers.Debugging

# A worker of the redis backend (NOTIFY_BACKEND=redis on the API): same settings, same sinks.
worker: $(STAMP)
	$(BIN)/notify-worker

test: $(STAMP) redis-server browser logrotate
	$(BIN)/python -m pytest

# The inner loop: every test but those marked slow (real servers: uvicorn subprocesses,
# redis-server, aiosmtpd, Chromium, logrotate, bench runs), in under a minute, with nothing
# to install. `make test` (and CI) still runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) redis-server
	$(BIN)/python -m bench --servers bare,same-signature,guide,service,service-ack-write,redis
	$(BIN)/python -m bench.writer
	$(BIN)/python -m bench.activity
	$(BIN)/python -m bench.many
	$(BIN)/python -m bench.email
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.apprise
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.distance

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

# Instructions per request under callgrind: slow (about a minute a server), but the same on
# every run, unlike wall-clock on a shared VM. Installs Debian's valgrind when it is missing.
valgrind:
	@command -v valgrind >/dev/null 2>&1 || { \
	  echo "installing valgrind (Debian package) for make bench-cg"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq valgrind >/dev/null; }

bench-cg: $(STAMP) valgrind redis-server
	$(BIN)/python -m bench.callgrind

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache .mypy_cache .ruff_cache .redis-data bench/results/*.tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
