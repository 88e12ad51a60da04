"""Fixtures shared by the API tests: every API test runs on SQLite and on PostgreSQL.

PostgreSQL tests use TEST_POSTGRES_URL (default: the server on 127.0.0.1:5432, database
booking_test, created if missing). Without a server they skip with a message, unless
BOOKING_REQUIRE_POSTGRES=1 (as `.ci/run` sets), when they fail instead.
"""

import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from config import Settings
from db import normalise_url
from main import create_app
from tests.factories import isolated_settings

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/booking_test")
# Other suites' scratch databases are named after this one, so two checkouts with different
# TEST_POSTGRES_URLs can run their suites side by side on one server.
POSTGRES_DB = make_url(POSTGRES_URL).database or "booking_test"
REQUIRE_POSTGRES = os.environ.get("BOOKING_REQUIRE_POSTGRES") == "1"
TABLES = "idempotency_keys, slot_events, holds, api_tokens, time_slots, rooms, users, service_secrets"


def _postgres_unavailable(reason: str) -> None:
    message = f"PostgreSQL test server unavailable at {POSTGRES_URL}: {reason}"
    if REQUIRE_POSTGRES:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """An empty PostgreSQL test database (recreated once per run), or a skip."""
    url = make_url(normalise_url(POSTGRES_URL))
    try:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
        admin.dispose()
    except OperationalError as exc:
        _postgres_unavailable(str(exc.orig).strip().splitlines()[0])
    engine = create_engine(url)
    yield engine
    engine.dispose()


def empty_postgres(engine: Engine) -> None:
    """Remove every row from the PostgreSQL test database (if its tables exist yet)."""
    with engine.begin() as conn:
        exists = conn.scalar(text("SELECT to_regclass('public.holds') IS NOT NULL"))
        if exists:
            conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend a test runs on."""
    return request.param


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A URL to an empty database of the test's backend."""
    if backend == "sqlite":
        return "sqlite:///:memory:"
    engine = request.getfixturevalue("postgres_engine")
    empty_postgres(engine)
    return POSTGRES_URL


@pytest.fixture
def settings(database_url: str) -> Settings:
    return isolated_settings(database_url=database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client
