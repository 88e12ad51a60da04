"""/health (routers/health.py): 200 with the backend and the connection pool's state."""

from fastapi.testclient import TestClient


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
