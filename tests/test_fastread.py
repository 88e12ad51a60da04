"""Fast reads (fastread.py) and what answers from them: a board's head check, a hold's refusal read.

- A shared read (FastReads.shared: a board's head check, a hold's refusal read) never answers
  a request with a read sent before the request asked, and one caller's cancellation leaves
  the others' answer; SQLite shares none.
- PostgreSQL: at most DB_FAST_READ_CONNECTIONS connections per process; a dropped one is
  discarded and the request takes the usual path; a failed connect pauses fast reads; a new
  event loop gets new connections; shutdown closes them.
- A hold on a taken slot is refused from a fast read without a unit of work, with the same
  answer as before; a keyed hold and a failed fast read take the unit of work.
"""

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine, Integer, func, select, text

import fastread
import rawsql
import tokens
from db import Database
from main import create_app
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ADMIN, count_runs, isolated_settings, make_hold, make_room, make_slot, make_user

_PID = rawsql.Statement(select(func.pg_backend_pid(type_=Integer)))
_SLOW_PID = rawsql.Statement(select(func.pg_backend_pid(type_=Integer)).select_from(text("pg_sleep(0.05)")))


class _GatedRead:
    """A read whose answers wait until the test lets each go: the n-th read sent answers n * 10."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []

    async def __call__(self) -> int | None:
        gate = asyncio.Event()
        self.gates.append(gate)
        answer = len(self.gates) * 10
        await gate.wait()
        return answer


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_caller_that_asks_during_a_shared_read_waits_for_the_next_read() -> None:
    """Read-your-writes: a read already sent may predate the caller's write, so its answer is not the caller's."""

    async def scenario() -> None:
        shared, read = fastread._SharedReads(asyncio.get_running_loop()), _GatedRead()
        first = asyncio.create_task(shared.get("head", read))
        await _settle()
        assert len(read.gates) == 1  # the first read is out
        second = asyncio.create_task(shared.get("head", read))
        third = asyncio.create_task(shared.get("head", read))
        await _settle()
        assert len(read.gates) == 1  # they wait: no read per caller
        read.gates[0].set()
        assert await first == 10
        await _settle()
        assert not second.done() and not third.done()  # not answered by the read sent before they asked
        assert len(read.gates) == 2  # the next read went out for both
        read.gates[1].set()
        assert (await second, await third) == (20, 20)

    asyncio.run(scenario())


def test_shared_reads_of_different_keys_go_out_apart() -> None:
    async def scenario() -> None:
        shared, one, other = fastread._SharedReads(asyncio.get_running_loop()), _GatedRead(), _GatedRead()
        first = asyncio.create_task(shared.get(("refusal", 1), one))
        second = asyncio.create_task(shared.get(("refusal", 2), other))
        await _settle()
        assert (len(one.gates), len(other.gates)) == (1, 1)
        other.gates[0].set()
        assert await second == 10 and not first.done()
        one.gates[0].set()
        assert await first == 10

    asyncio.run(scenario())


def test_a_cancelled_caller_leaves_the_shared_answer_to_the_others() -> None:
    async def scenario() -> None:
        shared, read = fastread._SharedReads(asyncio.get_running_loop()), _GatedRead()
        gone = asyncio.create_task(shared.get("head", read))
        staying = asyncio.create_task(shared.get("head", read))
        await _settle()
        gone.cancel()
        await _settle()
        read.gates[0].set()
        assert await staying == 10
        assert gone.cancelled()

    asyncio.run(scenario())


class _FailingOnceRead(_GatedRead):
    async def __call__(self) -> int | None:
        answer = await super().__call__()
        if len(self.gates) == 1:
            raise RuntimeError("a bug in the read")
        return answer


def test_a_shared_read_that_raises_answers_everyone_waiting_and_the_next_caller_reads_afresh() -> None:
    async def scenario() -> None:
        shared, read = fastread._SharedReads(asyncio.get_running_loop()), _FailingOnceRead()
        first = asyncio.create_task(shared.get("head", read))
        await _settle()
        second = asyncio.create_task(shared.get("head", read))  # waits for the read after the failing one
        await _settle()
        read.gates[0].set()
        assert await first is None  # the usual path answers it
        await _settle()
        read.gates[1].set()
        assert await second == 20
        later = asyncio.create_task(shared.get("head", read))
        await _settle()
        read.gates[2].set()
        assert await later == 30

    asyncio.run(scenario())


def test_sqlite_shares_no_read(tmp_path: Any) -> None:
    """In-process reads answer at once: each caller runs its own; one that raises answers None, as on PostgreSQL."""
    db = Database(isolated_settings(database_url=f"sqlite:///{tmp_path / 'reads.db'}"))
    calls: list[int] = []

    async def read() -> int:
        calls.append(1)
        mine = len(calls)
        await asyncio.sleep(0)
        return mine

    async def scenario() -> list[int | None]:
        return await asyncio.gather(*(db.reads.shared("head", read) for _ in range(3)))

    try:
        assert sorted(asyncio.run(scenario())) == [1, 2, 3]  # type: ignore[type-var]

        async def broken() -> int:
            raise RuntimeError("a bug in the read")

        assert asyncio.run(db.reads.shared("head", broken)) is None  # logged; the usual path answers
    finally:
        db.dispose()


@pytest.fixture
def pg_database(postgres_engine: Engine) -> Iterator[Database]:
    """A Database on the PostgreSQL test database with two fast-read connections."""
    empty_postgres(postgres_engine)
    db = Database(isolated_settings(database_url=POSTGRES_URL, db_fast_read_connections=2))
    yield db
    db.dispose()


def _backends(engine: Engine, pids: set[int]) -> set[int]:
    """Which of these PostgreSQL backends are still connected."""
    with engine.connect() as conn:
        alive = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": list(pids)})
        return {row.pid for row in alive}


def _gone(engine: Engine, pid: int) -> bool:
    """Whether this backend has exited (its exit follows the socket's close, not at once)."""
    for _ in range(100):
        if not _backends(engine, {pid}):
            return True
        time.sleep(0.02)
    return False


def test_postgres_fast_reads_share_at_most_their_connections(pg_database: Database) -> None:
    """Eight overlapping reads on two connections: all answered, by two backends."""

    async def scenario() -> list[list[Any] | None]:
        return await asyncio.gather(*(pg_database.reads.fetch(_SLOW_PID, {}) for _ in range(8)))

    answers = asyncio.run(scenario())
    assert all(rows is not None for rows in answers)
    assert len({rows[0][0] for rows in answers if rows is not None}) == 2


def test_a_dropped_fast_read_connection_takes_the_usual_path_once_then_reconnects(
    pg_database: Database, postgres_engine: Engine
) -> None:
    async def scenario() -> None:
        rows = await pg_database.reads.fetch(_PID, {})
        assert rows is not None
        with postgres_engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": rows[0][0]})
        assert _gone(postgres_engine, rows[0][0])
        assert await pg_database.reads.fetch(_PID, {}) is None  # the usual path answers this one
        again = await pg_database.reads.fetch(_PID, {})
        assert again is not None and again[0][0] != rows[0][0]

    asyncio.run(scenario())


def test_a_read_cut_short_by_a_cancelled_request_leaves_no_connection_mid_query(pg_database: Database) -> None:
    """A client gone while its read is out: that connection is closed, and the next read is answered."""

    async def scenario() -> None:
        cut = asyncio.create_task(pg_database.reads.fetch(_SLOW_PID, {}))
        await asyncio.sleep(0.02)  # the read is on the wire
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        for _ in range(4):  # on every connection the pool may hand out
            assert await pg_database.reads.fetch(_PID, {}) is not None

    asyncio.run(scenario())


def test_a_failed_connect_sends_every_waiting_read_the_usual_way_at_once(postgres_engine: Engine) -> None:
    """One connect failing answers all reads queued for a connection: they do not each wait out a connect in turn."""
    empty_postgres(postgres_engine)
    db = Database(isolated_settings(database_url=POSTGRES_URL, db_fast_read_connections=1))
    attempts: list[int] = []

    async def failing() -> None:
        attempts.append(1)
        await asyncio.sleep(0.05)
        db.reads._paused_until = time.monotonic() + fastread.RECONNECT_PAUSE_SECONDS
        return None

    db.reads._connect = failing  # type: ignore[assignment, method-assign]

    async def scenario() -> list[list[Any] | None]:
        return await asyncio.gather(*(db.reads.fetch(_PID, {}) for _ in range(4)))

    try:
        assert asyncio.run(scenario()) == [None] * 4
        assert len(attempts) == 1
    finally:
        db.dispose()


def test_a_read_over_its_time_takes_the_usual_path_and_frees_its_connection(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastread, "READ_TIMEOUT_SECONDS", 0.2)
    stuck = rawsql.Statement(select(func.pg_backend_pid(type_=Integer)).select_from(text("pg_sleep(5)")))

    async def scenario() -> None:
        assert await pg_database.reads.fetch(stuck, {}) is None
        assert await pg_database.reads.fetch(stuck, {}) is None
        for _ in range(3):  # both places are free again
            assert await pg_database.reads.fetch(_PID, {}) is not None

    asyncio.run(scenario())


def test_a_failed_connect_pauses_fast_reads() -> None:
    db = Database(isolated_settings(database_url="postgresql://postgres@127.0.0.1:1/none"))
    attempts: list[int] = []
    connect = db.reads._connect

    async def counted() -> Any:
        attempts.append(1)
        return await connect()

    db.reads._connect = counted  # type: ignore[method-assign]
    try:
        with freeze_time("2030-01-01 12:00:00") as clock:
            assert asyncio.run(db.reads.fetch(_PID, {})) is None
            assert asyncio.run(db.reads.fetch(_PID, {})) is None
            assert len(attempts) == 1  # paused: the second did not try
            clock.tick(timedelta(seconds=fastread.RECONNECT_PAUSE_SECONDS + 0.1))
            assert asyncio.run(db.reads.fetch(_PID, {})) is None
            assert len(attempts) == 2
    finally:
        db.dispose()


def test_a_new_event_loop_gets_new_connections_and_the_old_are_closed(
    pg_database: Database, postgres_engine: Engine
) -> None:
    first = asyncio.run(pg_database.reads.fetch(_PID, {}))
    second = asyncio.run(pg_database.reads.fetch(_PID, {}))
    assert first is not None and second is not None
    assert first[0][0] != second[0][0]
    assert _gone(postgres_engine, first[0][0])
    pg_database.dispose()
    assert _gone(postgres_engine, second[0][0])
    assert asyncio.run(pg_database.reads.fetch(_PID, {})) is None  # closed: no new connection


def test_no_fast_read_connections_sends_every_read_the_usual_way(postgres_engine: Engine) -> None:
    empty_postgres(postgres_engine)
    db = Database(isolated_settings(database_url=POSTGRES_URL, db_fast_read_connections=0))
    try:
        assert not db.reads.enabled
        assert asyncio.run(db.reads.fetch(_PID, {})) is None
    finally:
        db.dispose()


def test_a_hold_on_a_taken_slot_is_refused_without_a_unit_of_work(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = make_user(client), make_user(client)
    slot = make_slot(client, make_room(client))
    held = make_hold(client, alice, slot)
    monkeypatch.setattr(tokens, "CACHE_SECONDS", 3600.0)  # no token re-check among the counted requests
    assert client.get("/holds", headers=bob.auth).status_code == 200  # bob's token, checked once
    runs = count_runs(client.app.state.db, monkeypatch)  # type: ignore[attr-defined]
    refused = client.post("/holds", json={"slot_id": slot}, headers=bob.auth)
    mine = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
    missing = client.post("/holds", json={"slot_id": str(uuid.uuid4())}, headers=bob.auth)
    assert (refused.status_code, refused.json()["code"], refused.json()["slot_status"]) == (
        409,
        "SLOT_UNAVAILABLE",
        "HELD_BY_OTHER",
    )
    assert (mine.json()["slot_status"], mine.json()["hold_id"]) == ("HELD_BY_ME", held["hold_id"])
    assert (missing.status_code, missing.json()["code"]) == (404, "SLOT_NOT_FOUND")
    assert runs == []


def test_a_refused_hold_answers_the_same_when_the_fast_read_cannot(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast read failing (None): the unit of work reads the slot itself, with the same answer."""
    alice, bob = make_user(client), make_user(client)
    slot = make_slot(client, make_room(client))
    make_hold(client, alice, slot)
    monkeypatch.setattr(tokens, "CACHE_SECONDS", 3600.0)  # no token re-check among the counted requests
    fast = client.post("/holds", json={"slot_id": slot}, headers=bob.auth)
    db = client.app.state.db  # type: ignore[attr-defined]

    async def cannot(statement: rawsql.Statement, params: dict[str, object]) -> None:
        return None

    monkeypatch.setattr(db.reads, "fetch", cannot)
    runs = count_runs(client.app.state.db, monkeypatch)  # type: ignore[attr-defined]
    usual = client.post("/holds", json={"slot_id": slot}, headers=bob.auth)
    assert len(runs) == 1
    answers = [
        (
            response.status_code,
            {**response.json(), "request_id": None},
            {name: value for name, value in response.headers.items() if name not in ("x-request-id", "date")},
        )
        for response in (fast, usual)
    ]
    assert answers[0] == answers[1]


def test_a_keyed_hold_retried_after_success_replays_its_201(client: TestClient) -> None:
    """Not refused by a fast read (its own hold takes the slot): a keyed request finds its stored answer first."""
    alice = make_user(client)
    slot = make_slot(client, make_room(client))
    headers = {**alice.auth, "Idempotency-Key": "k-1"}
    first = client.post("/holds", json={"slot_id": slot}, headers=headers)
    again = client.post("/holds", json={"slot_id": slot}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


def test_a_postgres_listing_after_its_fast_read_connection_dropped_is_still_current(
    postgres_engine: Engine,
) -> None:
    """The board's head check falls back to the unit of work, which answers with the write."""
    empty_postgres(postgres_engine)
    with TestClient(create_app(isolated_settings(database_url=POSTGRES_URL))) as client:
        alice, bob = make_user(client), make_user(client)
        room = make_room(client)
        slot = make_slot(client, room)

        def statuses() -> dict[str, str]:
            response = client.get("/slots", params={"room_id": room}, headers=alice.auth)
            assert response.status_code == 200, response.text
            return {item["id"]: item["status"] for item in response.json()["items"]}

        assert statuses() == {slot: "AVAILABLE"}
        assert statuses() == {slot: "AVAILABLE"}  # answered from the board after a fast read
        with postgres_engine.connect() as conn:
            dropped = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'booking-api' AND state = 'idle'"
                )
            ).all()
        assert dropped
        make_hold(client, bob, slot)
        assert statuses() == {slot: "HELD_BY_OTHER"}
        assert client.get("/health", headers=ADMIN).status_code == 200
