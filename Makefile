# The README's two commands: `make run` serves the API, `make test` runs the linters, the type checker and every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint migrate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-deps

run: $(VENV)/.runtime-deps
	$(BIN)/uvicorn main:app --host 127.0.0.1 --port 8000 --loop serving:OneAcceptLoop --http serving:HttpProtocol --no-access-log

# Bring DATABASE_URL's schema to the latest migration (start-up does this too).
migrate: $(VENV)/.runtime-deps
	$(BIN)/alembic upgrade head

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite in random order under a non-UTC zone, then the fast part again under UTC:
# no decision may depend on the server's local time zone.
test: lint
	TZ=Asia/Kolkata $(BIN)/python -m pytest
	TZ=UTC $(BIN)/python -m pytest -m "not slow"
