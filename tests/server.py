"""A real uvicorn server in a separate process, for concurrency and stress tests (bench/server.py starts it)."""

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx

from bench.server import Server

SHUTDOWN_GRACE_SECONDS = 15  # time for uvicorn's graceful shutdown before the group is killed


# Races and load tests have many users sign up, hold, release and re-hold many slots from one
# address: the anti-hoarding limits and rate limits are off unless a test sets them.
UNLIMITED = {
    "HOLD_MAX_ACTIVE_PER_USER": "10000",
    "HOLD_REHOLD_COOLDOWN_SECONDS": "0",
    "RATE_LIMIT_SIGNUPS": "",
    "RATE_LIMIT_HOLDS": "",
}


@contextmanager
def running_server(env: dict[str, str], *, workers: int = 1, timeout: float = 30) -> Iterator[str]:
    """Start `uvicorn main:app` with these settings (limits off unless given); yield its base URL; stop it."""
    with tempfile.TemporaryDirectory(prefix="test-server-") as tmp:
        server = Server(app="main:app", env={**UNLIMITED, **env}, workers=workers, log_path=Path(tmp) / "uvicorn.log")
        try:
            server.start("/health", timeout=timeout)
            yield server.url
        finally:
            server.stop(grace=SHUTDOWN_GRACE_SECONDS)
        output = server.log_text()
    # A worker that crashed (e.g. in start-up migrations) is restarted by uvicorn and would
    # otherwise go unnoticed.
    assert "Traceback" not in output, f"the server logged an error:\n{output}"


def seed_over_http(
    base_url: str, admin_token: str, *, users: int, slots: int, start: datetime | None = None
) -> tuple[list[dict[str, str]], list[str]]:
    """Create users (returned as auth headers) and one-hour slots in a new room, over the API."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    start = start or datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        headers = []
        for _ in range(users):
            response = client.post("/users", json={"name": "Racer", "handle": f"r_{uuid.uuid4().hex[:16]}"})
            response.raise_for_status()
            headers.append({"Authorization": f"Bearer {response.json()['token']}"})
        room = client.post("/rooms", json={"name": f"Race {uuid.uuid4().hex}", "capacity": 1}, headers=admin)
        room.raise_for_status()
        slot_ids = []
        for i in range(slots):
            begin = start + timedelta(hours=i)
            body = {"start_time": begin.isoformat(), "end_time": (begin + timedelta(hours=1)).isoformat()}
            response = client.post(f"/rooms/{room.json()['id']}/slots", json=body, headers=admin)
            response.raise_for_status()
            slot_ids.append(response.json()["id"])
    return headers, slot_ids
