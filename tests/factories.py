"""The API tests' one set of helpers: typed factories (users, rooms, slots, holds), shared constants,
readers and the problem-document assertion."""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from httpx2 import Response

from config import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"
TTL = 300
UNKNOWN = str(uuid.uuid4())  # an id no row has
CONFIRM_GONE = "Hold not found or expired."  # the detail the contract fixes for confirming a gone hold


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)
BAD_TOKEN = bearer("not-a-token")


@dataclass(frozen=True)
class ApiUser:
    id: str
    handle: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)


def isolated_settings(**overrides: object) -> Settings:
    """Settings for an isolated in-memory app: fixed admin token, no demo data, no rate limits."""
    values: dict[str, object] = {
        "database_url": "sqlite:///:memory:",
        "admin_token": ADMIN_TOKEN,
        "seed_demo_data": False,
        "hold_ttl_seconds": TTL,
        "hold_max_extensions": 1,
        # Most tests hold, release and re-hold freely; tests/test_hold_limits.py sets the limits.
        "hold_max_active_per_user": 10_000,
        "hold_rehold_cooldown_seconds": 0,
        # Tests make many users and holds from one address; tests/test_rate_limits.py sets its own limits.
        "rate_limit_signups": "",
        "rate_limit_holds": "",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def make_user(client: TestClient, handle: str | None = None) -> ApiUser:
    handle = handle or f"u_{uuid.uuid4().hex[:12]}"
    response = client.post("/users", json={"name": handle.title(), "handle": handle})
    assert response.status_code == 201, response.text
    body = response.json()
    return ApiUser(id=body["id"], handle=body["handle"], token=body["token"])


def make_room(client: TestClient, name: str | None = None, capacity: int = 4) -> str:
    response = client.post(
        "/rooms", json={"name": name or f"Room {uuid.uuid4().hex[:8]}", "capacity": capacity}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def make_slot(
    client: TestClient, room_id: str | None = None, *, start: datetime | None = None, hours: float = 1
) -> str:
    """A slot in `room_id` (a new room by default), starting a day from now unless told."""
    room_id = room_id or make_room(client)
    start = start or datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    body = {"start_time": start.isoformat(), "end_time": (start + timedelta(hours=hours)).isoformat()}
    response = client.post(f"/rooms/{room_id}/slots", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def post_slot(client: TestClient, room_id: str, start: str, end: str, headers: dict | None = ADMIN) -> Response:
    """POST a slot with these times as given (unchecked, unlike make_slot)."""
    return client.post(f"/rooms/{room_id}/slots", json={"start_time": start, "end_time": end}, headers=headers)


def make_hold(client: TestClient, user: ApiUser, slot_id: str) -> dict:
    response = client.post("/holds", json={"slot_id": slot_id}, headers=user.auth)
    assert response.status_code == 201, response.text
    return response.json()


def parse_time(value: str) -> datetime:
    """A response's datetime ('...Z') as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def slot_status(client: TestClient, slot_id: str, user: ApiUser | None = None) -> str:
    """The slot's status as `user` (anonymous by default) sees it."""
    response = client.get(f"/slots/{slot_id}", headers=user.auth if user else None)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def hold_status(client: TestClient, hold_id: str, user: ApiUser) -> str:
    return client.get(f"/holds/{hold_id}", headers=user.auth).json()["status"]


def assert_problem(response: Response, status: int, code: str) -> dict:
    """The response is an application/problem+json error with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code, body
    assert {"type", "title", "detail"} <= body.keys()
    return body


def count_runs(db: Any, monkeypatch: Any) -> list[object]:
    """Every Database.run call (a request's unit of work) from now on; a fast read is not one."""
    runs: list[object] = []
    run = db.run

    async def counted(work: object) -> object:
        runs.append(work)
        return await run(work)

    monkeypatch.setattr(db, "run", counted)
    return runs
