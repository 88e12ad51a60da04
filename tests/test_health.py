"""/health (routers/health.py): 200 with the backend and the connection pool's state."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from bench.server import free_port
from config import Settings
from main import create_app
from tests.factories import assert_problem


def test_health_returns_200_with_status_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health_reports_backend_and_pool(client: TestClient, backend: str) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["database"] == ("sqlite" if backend == "sqlite" else "postgresql")
    pool = body["details"]["pool"]
    assert pool["size"] >= 1 and pool["checked_out"] >= 0 and pool["timeout_seconds"] > 0


def test_deep_health_runs_a_write_that_changes_nothing_and_returns_200(client: TestClient) -> None:
    response = client.get("/health?deep=true")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


def test_deep_health_on_a_postgres_that_refuses_writes_is_a_503_database_read_only(
    settings: Settings, backend: str
) -> None:
    # A standby, or default_transaction_read_only: reads answer, writes are refused (25006).
    if backend != "postgresql":
        pytest.skip("SQLite: tests/test_crash.py makes a file refuse writes")
    app = create_app(settings)
    with TestClient(app) as client:
        engine = app.state.db.engine

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("SET default_transaction_read_only = on")
            dbapi_connection.commit()

        engine.dispose()
        assert client.get("/health").status_code == 200
        response = client.get("/health?deep=true")
        assert_problem(response, 503, "DATABASE_READ_ONLY")
        assert response.json()["database"] == "postgresql" and response.headers["retry-after"]


def test_health_of_a_postgres_that_does_not_answer_is_a_503_with_retry_after(settings: Settings, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL only: a SQLite file is opened, not connected to")
    app = create_app(settings)
    with TestClient(app) as client:
        engine = app.state.db.engine

        @event.listens_for(engine, "do_connect")
        def _nobody_listens(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            cparams["port"] = free_port()  # connection refused, as while PostgreSQL restarts

        engine.dispose()
        response = client.get("/health")
        assert_problem(response, 503, "DATABASE_UNAVAILABLE")
        assert response.json()["database"] == "postgresql" and response.headers["retry-after"]
