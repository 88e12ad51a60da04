"""Per-operation cost of the domain layer, in-process on in-memory SQLite (no HTTP, no threads).

    .venv/bin/python -m bench.inprocess

Prints milliseconds per iteration (the best of several repeats) of (token lookup + hold + release), of (hold +
release) and of a 48-slot user-aware listing, each unit of work in its own `Database.run` call as a request's is:
what the database layer costs before FastAPI and uvicorn add theirs.

The last row is the floor under a hold: the driver calls one hold + release makes (every
statement with its parameters, BEGIN, COMMIT), recorded from the service and replayed straight on
a sqlite3 connection with a new hold id each time. No Python of this service or of SQLAlchemy
runs, only the statements the contract needs (the refusal read, the claim, the release, the
change log) in SQLite's C code and the sqlite3 module (see docs/performance.md#where-the-time-goes).
"""

import re
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Self

from sqlalchemy import event
from sqlalchemy.orm import Session

import auth
import booking
import catalog
from config import Settings
from db import Database, prepare_schema
from models import Hold
from schemas import RoomCreate, SlotCreate, UserCreate

REPEATS = 7
COUNT = 300
WARM_UP = 50
USERS = 64

# A recorded driver call: ("execute" or "executemany", sql, parameters), or ("commit",).
# Rollbacks are not recorded: on a success path the only one is the pool's reset of a
# connection already committed, which the contract does not need.
Call = tuple[Any, ...]
# How the sqlite3 module is handed a datetime (models.stored_form).
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


class _Recording(sqlite3.Connection):
    """A sqlite3 connection that notes every statement and commit while `calls` is a list."""

    calls: list[Call] | None = None

    def cursor(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:  # type: ignore[override]  # every cursor records
        return super().cursor(_RecordingCursor)

    def commit(self) -> None:
        if _Recording.calls is not None:
            _Recording.calls.append(("commit",))
        super().commit()


class _RecordingCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        if _Recording.calls is not None:
            _Recording.calls.append(("execute", sql, parameters))
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Self:
        if _Recording.calls is not None:
            parameters = list(parameters)
            _Recording.calls.append(("executemany", sql, parameters))
        return super().executemany(sql, parameters)


def _record(work: Callable[[], Any]) -> tuple[Any, list[Call]]:
    _Recording.calls = []
    try:
        return work(), _Recording.calls
    finally:
        _Recording.calls = None


def _replace(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _replace(item, change) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_replace(item, change) for item in value)
    return value


def _shifted(calls: list[Call], ids: dict[str, str], seconds: int) -> list[Call]:
    """The calls with ids swapped (stored forms) and every time `seconds` later: a later round of churn."""
    later = timedelta(seconds=seconds)

    def change(value: str) -> str:
        if value in ids:
            return ids[value]
        if _TIMESTAMP.match(value):
            return str(datetime.fromisoformat(value) + later)
        return value

    return [(call[0], call[1], _replace(call[2], change)) if len(call) > 1 else call for call in calls]


def _replay(connection: sqlite3.Connection, calls: list[Call], took: list[list[float]] | None = None) -> None:
    """Run recorded calls on the driver, reading every row as the service does; `took[i]` gets call i's time."""
    cursor = connection.cursor()
    for i, call in enumerate(calls):
        began = time.perf_counter()
        if call[0] == "execute":
            cursor.execute(call[1], call[2])
            cursor.fetchall()
        elif call[0] == "executemany":
            cursor.executemany(call[1], call[2])
        else:
            connection.commit()
        if took is not None:
            took[i].append(time.perf_counter() - began)


def _time(name: str, run: Callable[[int], None]) -> None:
    for i in range(WARM_UP):  # compile caches
        run(i)
    best = float("inf")
    for _ in range(REPEATS):  # the fastest repeat: the least disturbed by the rest of the machine
        began = time.perf_counter()
        for i in range(COUNT):
            run(i)
        best = min(best, (time.perf_counter() - began) / COUNT)
    print(f"{name}: {best * 1000:.3f} ms per iteration (best of {REPEATS} x {COUNT})", flush=True)


def main() -> None:
    settings = Settings(seed_demo_data=False, admin_token="x" * 20, hold_rehold_cooldown_seconds=0)
    db = Database(settings)

    @event.listens_for(db.engine, "do_connect")
    def _recording_connection(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["factory"] = _Recording

    prepare_schema(db)
    with Session(db.engine, expire_on_commit=False) as session:
        # As many users as the benchmark's churn spreads its holds over, taking turns.
        users = [auth.create_user(session, UserCreate(name="Bench", handle=f"bench{n}")) for n in range(USERS)]
        user = users[0][0]
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
        token = users[i // len(slots) % USERS][1]
        me = db._run(lambda s: auth.TokenCache().user_id(s, token))  # a fresh cache: the lookup runs every time
        assert me is not None
        hold = db._run(lambda s: booking.create_hold(s, slot_id=slots[i % len(slots)], user_id=me, settings=settings))
        db._run(lambda s: booking.release_hold(s, hold_id=hold["hold_id"], user_id=me, settings=settings))

    def hold_release(i: int) -> None:
        me = users[i // len(slots) % USERS][0].id
        hold = db._run(lambda s: booking.create_hold(s, slot_id=slots[i % len(slots)], user_id=me, settings=settings))
        db._run(lambda s: booking.release_hold(s, hold_id=hold["hold_id"], user_id=me, settings=settings))

    def listing(_: int) -> None:
        page = db._run(
            lambda s: booking.list_slots(
                s, viewer_id=user.id, room_id=room.id, start_from=None, start_to=None, status=None
            )
        )
        assert len(page.items) == len(slots)

    for name, run in {
        "token + hold + release": churn,
        "hold + release": hold_release,
        "48-slot listing": listing,
    }.items():
        _time(name, run)

    # The floor: a hold + release on each slot recorded from the service, then replayed on the
    # driver alone, round after round over the slots as the churn above went.
    recorded: list[tuple[list[Call], str]] = []
    for slot_id in slots:
        hold, hold_calls = _record(
            partial(db._run, partial(booking.create_hold, slot_id=slot_id, user_id=user.id, settings=settings))
        )
        _, release_calls = _record(
            partial(db._run, partial(booking.release_hold, hold_id=hold["hold_id"], user_id=user.id, settings=settings))
        )
        recorded.append((hold_calls + release_calls, hold["hold_id"].hex))
    raw = db.engine.raw_connection()  # the pool's one connection, held for the replay
    driver = raw.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    count_holds = f"SELECT count(*) FROM {Hold.__tablename__}"
    holds_before = driver.execute(count_holds).fetchone()[0]
    # Prepared before the clock starts: each round a second after the last, with its own hold id.
    total = WARM_UP + REPEATS * COUNT

    def round_(n: int) -> list[Call]:
        calls, hold_hex = recorded[n % len(slots)]
        other = users[n // len(slots) % USERS][0].id.hex
        return _shifted(calls, {hold_hex: uuid.uuid4().hex, user.id.hex: other}, 1 + n // len(slots))

    rounds = iter([round_(n) for n in range(total)])
    statements = sum(call[0] != "commit" for call in recorded[0][0])
    _time(f"hold + release, its {statements} statements alone on the driver", lambda _: _replay(driver, next(rounds)))
    # Once more, call by call: where the floor's time goes (the median of each call over the rounds).
    took: list[list[float]] = [[] for _ in recorded[0][0]]
    for n in range(total, total + COUNT):
        _replay(driver, round_(n), took)
    for call, times in zip(recorded[0][0], took, strict=True):
        what = " ".join(call[1].split()[:3]) if call[0] != "commit" else "COMMIT"
        print(f"    {statistics.median(times) * 1e6:6.1f} µs  {call[0]:<11} {what}")
    # Every replayed hold was a real claim (a refused one would have inserted nothing).
    holds_after = driver.execute(count_holds).fetchone()[0]
    assert holds_after - holds_before == total + COUNT, (holds_before, holds_after)
    raw.close()
    db.dispose()


if __name__ == "__main__":
    main()
