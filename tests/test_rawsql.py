"""Hot statements below the ORM (rawsql.py): the same stored forms, SQL and errors as through SQLAlchemy."""

import contextlib
import itertools
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from httpx import Response
from psycopg import pq
from sqlalchemy import Engine, Uuid, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import booking
import rawsql
from config import Settings
from db import Database, write_transaction
from errors import DomainError
from main import create_app
from models import Hold, HoldStatusString, SlotEvent, UTCDateTime, stored_form
from schemas import HoldStatus
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ApiUser, assert_problem, isolated_settings, make_slot, make_user

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.psycopg.dialect()}  # type: ignore[attr-defined]
NOW = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)
VALUES: dict[type, list[Any]] = {
    Uuid: [uuid.uuid4(), uuid.UUID(int=0)],
    UTCDateTime: [
        NOW,
        NOW.replace(microsecond=123456),
        datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))),  # not UTC: converted
        datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),  # a year of three digits stays zero-padded
    ],
    HoldStatusString: list(HoldStatus),
}


def _engine(client: TestClient) -> Engine:
    return client.app.state.db.engine  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("dialect_name", DIALECTS)
@pytest.mark.parametrize("type_", [Uuid, UTCDateTime, HoldStatusString])
def test_stored_forms_are_the_ones_sqlalchemy_writes_and_reads(dialect_name: str, type_: type) -> None:
    dialect = DIALECTS[dialect_name]
    column_type = type_()
    sqlalchemy_in = column_type._cached_bind_processor(dialect) or (lambda value: value)
    sqlalchemy_out = column_type._cached_result_processor(dialect, None) or (lambda value: value)
    to_db, from_db = stored_form(column_type, dialect_name)
    to_db, from_db = to_db or (lambda value: value), from_db or (lambda value: value)
    for value in VALUES[type_]:
        stored = to_db(value)
        assert stored == sqlalchemy_in(value)
        assert type(stored) is type(sqlalchemy_in(value))
        read = from_db(stored)
        assert read == sqlalchemy_out(stored)
        if isinstance(read, datetime):
            assert read.utcoffset() == timedelta(0) and read == value


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_a_naive_datetime_is_refused_below_the_orm_as_through_it(dialect_name: str) -> None:
    to_db, _ = stored_form(UTCDateTime(), dialect_name)
    assert to_db is not None
    with pytest.raises(ValueError, match="naive"):
        to_db(datetime(2030, 1, 1))  # noqa: DTZ001


def test_an_unknown_column_type_is_refused_rather_than_stored_in_a_guessed_form() -> None:
    with pytest.raises(TypeError):
        stored_form(postgresql.JSONB(), "postgresql")


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_the_sql_run_below_the_orm_is_the_sql_sqlalchemy_runs(dialect_name: str) -> None:
    dialect = DIALECTS[dialect_name]
    for statement in (booking._RETIRE_EXPIRED, booking._CONFIRM.statement, booking._HOLD_BY_ID, booking._LOCK_SLOT):
        assert statement.compiled(dialect).sql == str(statement.statement.compile(dialect=dialect))
    # The literal partial-index predicate survives compilation as literal SQL.
    assert "status IN ('HOLD', 'CONFIRMED')" in booking._INSERT_HOLD.compiled(dialect).sql


def test_holds_written_below_the_orm_read_back_through_it_and_the_other_way(client: TestClient) -> None:
    alice = make_user(client)
    slot = uuid.UUID(make_slot(client))
    with freeze_time(datetime.now(UTC).replace(microsecond=654321)):
        body = client.post("/holds", json={"slot_id": str(slot)}, headers=alice.auth).json()
    with Session(_engine(client), expire_on_commit=False) as session:
        orm = session.get(Hold, uuid.UUID(body["hold_id"]))
        assert orm is not None
        assert (orm.status, orm.slot_id, str(orm.user_id)) == (HoldStatus.HOLD, slot, alice.id)
        assert orm.created_date == datetime.fromisoformat(body["created_date"])
        assert orm.created_date.microsecond == 654321 and orm.created_date.tzinfo is not None
        event = session.scalars(select(SlotEvent).where(SlotEvent.hold_id == orm.id)).one()
        assert (event.kind, event.status, event.held_until) == ("HELD", "HOLD", orm.expires_at)
        # Written by the ORM, read below it.
        created = datetime(2030, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
        other = Hold(
            id=uuid.uuid4(),
            slot_id=slot,
            user_id=orm.user_id,
            status=HoldStatus.RELEASED,
            expires_at=created,
            created_date=created,
            last_updated_date=created,
        )
        session.add(other)
        session.commit()
        row = rawsql.first(session.connection(), booking._HOLD_BY_ID, {"p_hold_id": other.id})
    assert row is not None
    assert (row.id, row.slot_id, row.user_id, row.status) == (other.id, slot, orm.user_id, HoldStatus.RELEASED)
    assert type(row.status) is HoldStatus and row.created_date == created and row.confirmed_at is None


def test_a_driver_error_below_the_orm_arrives_as_sqlalchemy_s_error(client: TestClient) -> None:
    alice = make_user(client)
    slot = uuid.UUID(make_slot(client))
    hold = uuid.UUID(client.post("/holds", json={"slot_id": str(slot)}, headers=alice.auth).json()["hold_id"])
    free_slot = uuid.UUID(make_slot(client))
    with Session(_engine(client)) as session, pytest.raises(IntegrityError), write_transaction(session) as now:
        # The same id again: the primary key refuses it in the driver; callers catch IntegrityError.
        booking._write_holds(
            session,
            booking._write(
                booking._INSERT_HOLD,
                None,
                hold_id=hold,
                slot_id=free_slot,
                user_id=uuid.UUID(alice.id),
                now=now,
                expires_at=now + timedelta(minutes=5),
                max_active=100,
                cooldown_since=now,
            ),
        )


def _hold_while_locked(client: TestClient, slot: str, user: ApiUser, lock: str, **params: object) -> Response:
    """POST /holds while another session holds the locks that `lock` takes (a psql session left open, say)."""
    blocker = psycopg.connect(POSTGRES_URL)
    blocker.execute(lock, params)
    try:
        return client.post("/holds", json={"slot_id": slot}, headers=user.auth)
    finally:
        blocker.rollback()
        blocker.close()


def test_a_lock_timeout_in_the_change_log_s_pipeline_is_a_503_and_commits_nothing(postgres_engine: Engine) -> None:
    # The append lock, the events, the prune and the wake-up go in one psycopg pipeline: a
    # failure inside it must still arrive as SQLAlchemy's error (503 DATABASE_BUSY), and roll back.
    empty_postgres(postgres_engine)
    settings = isolated_settings(database_url=POSTGRES_URL, db_lock_timeout_seconds=1)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        # changelog's append lock, held
        response = _hold_while_locked(client, slot, alice, "SELECT pg_advisory_xact_lock(7240002)")
        assert_problem(response, 503, "DATABASE_BUSY")
        assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"
        assert client.post("/holds", json={"slot_id": slot}, headers=alice.auth).status_code == 201


def test_a_batch_returns_each_statement_s_rows_in_order(client: TestClient) -> None:
    alice = make_user(client)
    hold = uuid.UUID(client.post("/holds", json={"slot_id": make_slot(client)}, headers=alice.auth).json()["hold_id"])
    with Session(_engine(client)) as session, write_transaction(session):
        found, missing, again = rawsql.execute_batch(
            session.connection(),
            [
                (booking._HOLD_BY_ID, {"p_hold_id": hold}),
                (booking._HOLD_BY_ID, {"p_hold_id": uuid.uuid4()}),
                (booking._HOLD_BY_ID, {"p_hold_id": hold}),
            ],
        )
    assert [row.id for row in found] == [hold] and missing == [] and again == found


# --- PostgreSQL: the write path's round trips (docs/design.md#round-trips-of-a-write) -------------


def _round_trips(client: TestClient, work: Callable[[Session], object]) -> int:
    """How many times `work`, run as a request's unit of work, sent PostgreSQL something and waited for its answer.

    Counted from libpq's protocol trace: every turn from the client's messages to the server's.
    """
    db: Database = client.app.state.db  # type: ignore[attr-defined]

    def traced(session: Session) -> None:
        pgconn = session.get_bind().connection.dbapi_connection.pgconn  # type: ignore[union-attr]
        pgconn.trace(os.dup(trace.fileno()))
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            work(session)
        finally:
            pgconn.untrace()

    with tempfile.TemporaryFile() as trace:
        with contextlib.suppress(DomainError):
            db._run(traced)
        trace.seek(0)
        senders = [line.split(b"\t", 1)[0] for line in trace.read().splitlines() if line]
    return sum(1 for sent, answer in itertools.pairwise(senders) if (sent, answer) == (b"F", b"B"))


@pytest.fixture
def pg_client(postgres_engine: Engine) -> Iterator[TestClient]:
    empty_postgres(postgres_engine)
    with TestClient(create_app(isolated_settings(database_url=POSTGRES_URL))) as client:
        yield client


def test_a_postgres_hold_takes_four_round_trips_and_a_refused_one_one(pg_client: TestClient) -> None:
    # The refusal read; BEGIN with the slot's and the user's locks; retire with claim; the
    # change log's append with COMMIT. Each batch waits for the one before: the clock is read
    # after the locks, and the events carry the claim's row.
    alice, bob, slot = make_user(pg_client), make_user(pg_client), uuid.UUID(make_slot(pg_client))
    settings: Settings = pg_client.app.state.settings  # type: ignore[attr-defined]

    def hold(user: str) -> Callable[[Session], object]:
        return lambda session: booking.create_hold(session, slot_id=slot, user_id=uuid.UUID(user), settings=settings)

    assert _round_trips(pg_client, hold(alice.id)) == 4
    assert pg_client.get(f"/slots/{slot}", headers=alice.auth).json()["status"] == "HELD_BY_ME"
    assert _round_trips(pg_client, hold(bob.id)) == 1  # refused from the read
    assert [e["event"] for e in _history(pg_client, alice)] == ["HELD"]


def _history(client: TestClient, user: ApiUser) -> list[dict[str, Any]]:
    hold_id = client.get("/holds", headers=user.auth).json()["items"][0]["hold_id"]
    return client.get(f"/holds/{hold_id}/history", headers=user.auth).json()["items"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("action", ["confirm", "release", "extend", "cancel"])
def test_a_postgres_hold_transition_takes_three_round_trips(pg_client: TestClient, action: str) -> None:
    # BEGIN with the slot's and the hold's locks; the conditional UPDATE; the append with COMMIT.
    alice, slot = make_user(pg_client), make_slot(pg_client)
    hold_id = pg_client.post("/holds", json={"slot_id": slot}, headers=alice.auth).json()["hold_id"]
    if action == "cancel":
        assert pg_client.post(f"/holds/{hold_id}/confirm", headers=alice.auth).status_code == 200
    transition: booking.HoldTransition = {
        "confirm": booking.confirm_hold,
        "release": booking.release_hold,
        "extend": booking.extend_hold,
        "cancel": booking.cancel_booking,
    }[action]
    settings: Settings = pg_client.app.state.settings  # type: ignore[attr-defined]

    def work(session: Session) -> object:
        return transition(session, hold_id=uuid.UUID(hold_id), user_id=uuid.UUID(alice.id), settings=settings)

    assert _round_trips(pg_client, work) == 3
    expected = {"confirm": "CONFIRMED", "release": "RELEASED", "extend": "EXTENDED", "cancel": "CANCELLED"}[action]
    assert _history(pg_client, alice)[-1]["event"] == expected


def test_a_lock_timeout_inside_the_retire_and_claim_batch_is_a_503_and_commits_nothing(postgres_engine: Engine) -> None:
    # A lapsed hold's row is held by another session: retiring it waits in the batch that also
    # carries the claim. The failure must arrive as SQLAlchemy's error (503 DATABASE_BUSY), the
    # claim behind it must not run, and the transaction must roll back.
    empty_postgres(postgres_engine)
    settings = isolated_settings(database_url=POSTGRES_URL, db_lock_timeout_seconds=1)
    with TestClient(create_app(settings)) as client, freeze_time("2030-01-01T12:00:00Z") as clock:
        alice, bob = make_user(client), make_user(client)
        slot = make_slot(client)
        lapsed = client.post("/holds", json={"slot_id": slot}, headers=alice.auth).json()["hold_id"]
        clock.tick(timedelta(seconds=settings.hold_ttl_seconds + 1))
        response = _hold_while_locked(client, slot, bob, "SELECT 1 FROM holds WHERE id = %(id)s FOR UPDATE", id=lapsed)
        assert_problem(response, 503, "DATABASE_BUSY")
        assert [e["event"] for e in _history(client, alice)] == ["HELD"]  # not retired, no LAPSED event
        assert client.get("/holds", headers=bob.auth).json()["items"] == []
        assert client.post("/holds", json={"slot_id": slot}, headers=bob.auth).status_code == 201
        assert [e["event"] for e in _history(client, alice)] == ["HELD", "LAPSED"]


def test_a_statement_whose_rows_nobody_reads_leaves_the_shared_cursor_drained() -> None:
    # rawsql keeps one cursor per driver connection: on SQLite a SELECT left unread would keep
    # running (and holding its read snapshot) until that cursor's next use.
    db = Database(Settings(seed_demo_data=False))
    try:
        with db.engine.connect() as connection:
            rawsql.execute(connection, rawsql.Statement(text("SELECT 1 UNION ALL SELECT 2")), {})
            cursor = rawsql._cursor(connection.connection)
            assert cursor.fetchone() is None
    finally:
        db.dispose()
