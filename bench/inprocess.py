"""Per-operation cost of the domain layer, in-process on in-memory SQLite (no HTTP, no threads).

    .venv/bin/python -m bench.inprocess

Prints milliseconds per iteration (the best of several repeats) of (token lookup + hold + release), of (hold +
release) and of a 48-slot user-aware listing, each unit of work in its own `Database.run` call as a request's is:
what the database layer costs before FastAPI and uvicorn add theirs.
"""

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

import auth
import booking
import catalog
from config import Settings
from db import Database, prepare_schema
from schemas import RoomCreate, SlotCreate, UserCreate

REPEATS = 7


def main() -> None:
    settings = Settings(seed_demo_data=False, admin_token="x" * 20, hold_rehold_cooldown_seconds=0)
    db = Database(settings)
    prepare_schema(db)
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = auth.create_user(session, UserCreate(name="Bench", handle="bench"))
        room = catalog.create_room(session, RoomCreate(name="Bench", capacity=2))
        start = datetime.now(UTC) + timedelta(days=1)
        slots = [
            catalog.create_slot(
                session,
                room.id,
                SlotCreate(start_time=start + timedelta(hours=i), end_time=start + timedelta(hours=i + 1)),
            ).id
            for i in range(48)
        ]

    # Each unit of work runs as a request's does: one Database.run call (its session and connection).
    def churn(i: int) -> None:
        me = db._run(lambda s: auth.TokenCache().user_id(s, token))  # a fresh cache: the lookup runs every time
        assert me is not None
        hold = db._run(lambda s: booking.create_hold(s, slot_id=slots[i % len(slots)], user_id=me, settings=settings))
        db._run(lambda s: booking.release_hold(s, hold_id=hold["hold_id"], user_id=me, settings=settings))

    def hold_release(i: int) -> None:
        hold = db._run(
            lambda s: booking.create_hold(s, slot_id=slots[i % len(slots)], user_id=user.id, settings=settings)
        )
        db._run(lambda s: booking.release_hold(s, hold_id=hold["hold_id"], user_id=user.id, settings=settings))

    def listing(_: int) -> None:
        page = db._run(
            lambda s: booking.list_slots(
                s, viewer_id=user.id, room_id=room.id, start_from=None, start_to=None, status=None
            )
        )
        assert len(page.items) == len(slots)

    scenarios: dict[str, Callable[[int], None]] = {
        "token + hold + release": churn,
        "hold + release": hold_release,
        "48-slot listing": listing,
    }
    for name, run in scenarios.items():
        for i in range(50):  # warm-up: compile caches
            run(i)
        best = float("inf")
        for _ in range(REPEATS):  # the fastest repeat: the least disturbed by the rest of the machine
            count, began = 300, time.perf_counter()
            for i in range(count):
                run(i)
            best = min(best, (time.perf_counter() - began) / count)
        print(f"{name}: {best * 1000:.3f} ms per iteration (best of {REPEATS} x 300)")
    db.dispose()


if __name__ == "__main__":
    main()
