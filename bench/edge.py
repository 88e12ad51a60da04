"""Per-request cost of the HTTP edge, in-process: the real app with its domain calls stubbed out.

    .venv/bin/python -m bench.edge

The complement of `bench.inprocess`: what FastAPI, Starlette and this service's dependencies,
middlewares and error rendering cost around a route, without the database, uvicorn or a network.
Drives the app's ASGI callable directly with the bench's requests (an authenticated POST /holds
answered 201, the same answered with a 409 problem as on the hot slot, and a user-aware
GET /slots answered with an empty page) and prints CPU microseconds per request (the best of
several repeats), beside a bare FastAPI route's for scale. The token is in the process's cache
and the rate limit is counted, as in a benchmark run.
"""

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI
from starlette.types import ASGIApp, Message

import booking
from board import Boards
from config import Settings
from errors import Code, SlotUnavailable
from main import create_app
from schemas import HoldRead, HoldStatus, SlotPage, SlotStatus

REPEATS = 5
REQUESTS = 4000
_NOW = datetime.now(UTC)


async def _call(
    app: ASGIApp, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", query: str = ""
) -> tuple[int, bytes]:
    sent: list[Message] = []
    received = False

    async def receive() -> Message:
        nonlocal received
        if received:  # the app never reads past the body
            await asyncio.sleep(3600)
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    raw = [(b"host", b"bench"), *((name.encode(), value.encode()) for name, value in headers)]
    if body:
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": raw,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


async def _microseconds(request: Callable[[], Awaitable[tuple[int, bytes]]], expected: int) -> float:
    status, body = await request()
    assert status == expected, (status, body[:300])
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(REQUESTS):
            await request()
        best = min(best, (time.process_time() - started) / REQUESTS * 1e6)
    return best


def _ceiling() -> FastAPI:
    ceiling = FastAPI()

    @ceiling.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    return ceiling


def _stub_domain(user_id: uuid.UUID, refuse: list[bool]) -> None:
    hold = HoldRead(
        hold_id=uuid.uuid4(),
        slot_id=uuid.uuid4(),
        user_id=user_id,
        status=HoldStatus.HOLD,
        expires_at=_NOW,
        confirmed_at=None,
        extensions_used=0,
        extensions_left=1,
        created_date=_NOW,
        last_updated_date=_NOW,
    )

    def create_hold(_: Any, **__: Any) -> HoldRead:
        if refuse[0]:
            raise SlotUnavailable(
                Code.SLOT_UNAVAILABLE,
                "This slot is held by another user.",
                slot_status=SlotStatus.HELD_BY_OTHER,
                held_until=_NOW,
                hold_id=None,
            )
        return hold

    page = SlotPage(items=[], next_cursor=None).model_dump_json().encode()
    booking.create_hold = create_hold  # type: ignore[assignment]
    # The listing is answered by the room's board (board.py), not by booking.
    Boards.list_slots = lambda self, _, **__: page  # type: ignore[method-assign]


async def _run() -> None:
    settings = Settings(
        database_url="sqlite:///:memory:",
        seed_demo_data=False,
        admin_token="bench-admin-token-0123456789",
        rate_limit_holds="1000000/minute",  # counted, never reached: as in bench/server.py
        access_log=False,
    )
    app = create_app(settings)
    startup: asyncio.Queue[Message] = asyncio.Queue()
    events: asyncio.Queue[Message] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, events.put)
    )
    assert (await events.get())["type"] == "lifespan.startup.complete"
    try:
        json_headers = [("content-type", "application/json")]
        signup = json.dumps({"name": "Bench", "handle": "bench"}).encode()
        status, body = await _call(app, "POST", "/users", json_headers, signup)
        assert status == 201, body
        created = json.loads(body)
        auth = [("authorization", f"Bearer {created['token']}")]
        refuse = [False]
        _stub_domain(uuid.UUID(created["id"]), refuse)
        hold = json.dumps({"slot_id": str(uuid.uuid4())}).encode()
        # Encoded as bench/seed.py encodes the benchmark's listing (`:` as %3A).
        listing = urlencode({"room_id": uuid.uuid4(), "from": "2031-05-03T00:00:00Z", "to": "2031-05-04T00:00:00Z"})
        ceiling = _ceiling()

        post_hold = [*auth, *json_headers]
        rows = [("bare FastAPI GET /ping", await _microseconds(lambda: _call(ceiling, "GET", "/ping", []), 200))]
        held = await _microseconds(lambda: _call(app, "POST", "/holds", post_hold, hold), 201)
        rows.append(("POST /holds, 201", held))
        refuse[0] = True
        refused = await _microseconds(lambda: _call(app, "POST", "/holds", post_hold, hold), 409)
        rows.append(("POST /holds, 409 problem", refused))
        slots = await _microseconds(lambda: _call(app, "GET", "/slots", auth, query=listing), 200)
        rows.append(("GET /slots (user-aware, empty page)", slots))
    finally:
        await startup.put({"type": "lifespan.shutdown"})
        await events.get()
        await lifespan
    for name, microseconds in rows:
        print(f"{name:40} {microseconds:7.1f} us CPU per request")


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
