"""GET /metrics: requests by route template and status with latencies, hold outcomes, pool usage,
rate-limited requests; with PROMETHEUS_MULTIPROC_DIR, every worker's counts in one scrape."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from main import create_app
from tests.factories import (
    ADMIN_TOKEN,
    TTL,
    UNKNOWN,
    isolated_settings,
    make_hold,
    make_slot,
    make_user,
)
from tests.server import running_server

Labels = tuple[tuple[str, str], ...]


def scrape(client: TestClient | httpx.Client) -> dict[tuple[str, Labels], float]:
    """Every sample of GET /metrics, by name and sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    before = scrape(client)
    slot = make_slot(client)
    client.get(f"/slots/{slot}")
    client.get(f"/slots/{UNKNOWN}")
    client.get("/no/such/path")
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "GET", "route": "/slots/{slot_id}"}
    assert delta("booking_http_requests_total", **route, status="200") == 1
    assert delta("booking_http_requests_total", **route, status="404") == 1
    assert delta("booking_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert delta("booking_http_request_duration_seconds_count", **route, status="200") == 1
    assert delta("booking_http_request_duration_seconds_bucket", **route, status="200", le="+Inf") == 1
    assert not any(f"/slots/{slot}" in str(labels) for _, labels in after)


def test_hold_outcomes_are_counted(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    before = scrape(client)
    with freeze_time() as clock:
        confirmed = make_hold(client, alice, make_slot(client))
        client.post(f"/holds/{confirmed['hold_id']}/confirm", headers=alice.auth)
        client.post("/holds", json={"slot_id": confirmed["slot_id"]}, headers=bob.auth)  # 409 SLOT_UNAVAILABLE
        client.post("/holds", json={"slot_id": UNKNOWN}, headers=bob.auth)  # 404: not a refusal
        lapsing = make_hold(client, bob, make_slot(client))
        clock.tick(timedelta(seconds=TTL + 1))
        client.post(f"/holds/{lapsing['hold_id']}/confirm", headers=bob.auth)  # 410 HOLD_EXPIRED
    after = scrape(client)
    deltas = {
        name: value(after, name, **labels) - value(before, name, **labels)
        for name, labels in [
            ("booking_holds_created_total", {}),
            ("booking_holds_refused_total", {"code": "SLOT_UNAVAILABLE"}),
            ("booking_holds_confirmed_total", {}),
            ("booking_holds_lapsed_at_confirm_total", {}),
        ]
    }
    assert deltas == {
        "booking_holds_created_total": 2,
        "booking_holds_refused_total": 1,
        "booking_holds_confirmed_total": 1,
        "booking_holds_lapsed_at_confirm_total": 1,
    }
    assert ("booking_idempotent_replays_total", ()) in after


def test_rate_limited_requests_are_counted_by_limit() -> None:
    with TestClient(create_app(isolated_settings(rate_limit_signups="1/hour"))) as client:
        before = scrape(client)
        for handle in ("first", "second"):
            client.post("/users", json={"name": "N", "handle": handle})
        after = scrape(client)
    limited = ("booking_rate_limited_total", (("limit", "signups"),))
    assert after[limited] - before.get(limited, 0) == 1


def test_pool_usage_is_reported(client: TestClient, backend: str) -> None:
    samples = scrape(client)
    size = value(samples, "booking_db_pool_connections", state="size")
    assert value(samples, "booking_db_pool_connections", state="checked_out") >= 0
    if backend == "postgresql":
        assert size == 10  # DB_POOL_SIZE


def test_metrics_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    yield directory


@pytest.mark.slow
def test_two_workers_are_scraped_as_one(multiproc_dir: Path) -> None:
    env = {
        "DATABASE_URL": "sqlite:///:memory:",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
    }
    with running_server(env, workers=2) as base_url:
        before = 0.0
        with httpx.Client(base_url=base_url, timeout=10) as http:
            before = value(scrape(http), "booking_http_requests_total", method="GET", route="/rooms", status="200")
        for _ in range(20):
            with httpx.Client(base_url=base_url, timeout=10) as http:  # new connections: both workers answer
                assert http.get("/rooms").status_code == 200
        totals = set()
        for _ in range(4):
            with httpx.Client(base_url=base_url, timeout=10) as http:
                samples = scrape(http)
            totals.add(value(samples, "booking_http_requests_total", method="GET", route="/rooms", status="200"))
    # Whichever worker answered the scrape, it reported both workers' requests.
    assert totals == {before + 20}
    assert len({path.name.split("_")[-1] for path in multiproc_dir.glob("counter_*.db")}) == 2
