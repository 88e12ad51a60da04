"""The change log: one event per committed change, in the change's own transaction, bounded, in commit order."""

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

import changelog
from config import Settings
from db import Database, write_transaction
from main import create_app
from models import Hold, SlotEvent
from schemas import EventKind
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ADMIN, TTL, assert_problem, isolated_settings, make_hold, make_slot, make_user


def _engine(client: TestClient) -> Engine:
    return client.app.state.db.engine  # type: ignore[attr-defined,no-any-return]


def _events(client: TestClient) -> list[tuple[str, str | None, str | None]]:
    """Every event as (kind, status, hold id), oldest first."""
    with _engine(client).connect() as conn:
        rows = conn.execute(select(SlotEvent).order_by(SlotEvent.position)).all()
    return [(row.kind, row.status, str(row.hold_id) if row.hold_id else None) for row in rows]


def _count(client: TestClient) -> int:
    with _engine(client).connect() as conn:
        return conn.scalar(select(func.count()).select_from(SlotEvent)) or 0


def test_every_change_appends_one_event_with_the_state_after_it(client: TestClient) -> None:
    alice = make_user(client)
    slot = make_slot(client)
    assert _events(client) == [("SLOT_CREATED", None, None)]
    hold = make_hold(client, alice, slot)["hold_id"]
    assert client.post(f"/holds/{hold}/extend", headers=alice.auth).status_code == 200
    assert client.post(f"/holds/{hold}/confirm", headers=alice.auth).status_code == 200
    assert client.post(f"/holds/{hold}/cancel", headers=alice.auth).status_code == 200
    second = make_hold(client, alice, slot)["hold_id"]
    assert client.post(f"/holds/{second}/release", headers=alice.auth).status_code == 200
    assert client.delete(f"/slots/{slot}", headers=ADMIN).status_code == 204
    assert _events(client) == [
        ("SLOT_CREATED", None, None),
        ("HELD", "HOLD", hold),
        ("EXTENDED", "HOLD", hold),
        ("CONFIRMED", "CONFIRMED", hold),
        ("CANCELLED", "CANCELLED", hold),
        ("HELD", "HOLD", second),
        ("RELEASED", "RELEASED", second),
        ("SLOT_DELETED", None, None),
    ]


def test_event_carries_slot_room_start_owner_and_end_of_hold(client: TestClient) -> None:
    alice = make_user(client)
    start = datetime(2030, 1, 2, 9, tzinfo=UTC)
    with freeze_time("2030-01-01T12:00:00Z"):
        slot = make_slot(client, start=start)
        make_hold(client, alice, slot)
    with _engine(client).connect() as conn:
        event = conn.execute(select(SlotEvent).where(SlotEvent.kind == "HELD")).one()
    room = client.get(f"/slots/{slot}").json()["room_id"]
    assert (str(event.slot_id), str(event.room_id), event.starts_at) == (slot, room, start)
    assert str(event.user_id) == alice.id
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert event.held_until == now + timedelta(seconds=TTL) and event.occurred_at == now


def test_a_lapsed_hold_retired_by_a_new_claim_is_logged_as_lapsed(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slot = make_slot(client)
        first = make_hold(client, alice, slot)["hold_id"]
        clock.tick(TTL + 1)  # lazy expiry: nothing is written when the hold lapses
        assert _events(client)[-1] == ("HELD", "HOLD", first)
        second = make_hold(client, bob, slot)["hold_id"]
    assert _events(client)[-2:] == [("LAPSED", "EXPIRED", first), ("HELD", "HOLD", second)]


def test_refused_and_failed_requests_leave_no_event(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    slot = make_slot(client)
    hold = make_hold(client, alice, slot)["hold_id"]
    before = _count(client)
    assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")
    assert_problem(client.post(f"/holds/{hold}/confirm", headers=bob.auth), 403, "NOT_HOLD_OWNER")
    assert_problem(client.post(f"/holds/{hold}/cancel", headers=alice.auth), 409, "HOLD_NOT_CONFIRMED")
    assert_problem(client.delete(f"/slots/{slot}", headers=ADMIN), 409, "SLOT_IN_USE")
    assert _count(client) == before


def test_a_rolled_back_change_leaves_no_event_and_no_row(client: TestClient) -> None:
    import booking

    alice = make_user(client)
    slot = make_slot(client)
    db: Database = client.app.state.db  # type: ignore[attr-defined]
    before = _count(client)

    def hold_then_fail(session: Session) -> None:
        with write_transaction(session) as now:
            (written,) = booking._write_holds(
                session,
                booking._write(
                    booking._INSERT_HOLD,
                    EventKind.HELD,
                    hold_id=uuid.uuid4(),
                    slot_id=uuid.UUID(slot),
                    user_id=uuid.UUID(alice.id),
                    now=now,
                    expires_at=now + timedelta(seconds=TTL),
                    max_active=1,
                    cooldown_since=now,
                ),
            )
            assert written is not None  # the hold row and its event were both written ...
            raise RuntimeError("crash before commit")

    with Session(db.engine) as session:
        with pytest.raises(RuntimeError):
            hold_then_fail(session)
        assert _count(client) == before  # ... and both rolled back
        with write_transaction(session):
            pass  # the next transaction on this session does not inherit the discarded event
    assert _count(client) == before
    with _engine(client).connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Hold)) == 0


def test_writes_prune_a_bounded_number_of_events_older_than_the_retention() -> None:
    settings = isolated_settings(event_retention_seconds=3600)
    with TestClient(create_app(settings)) as client, freeze_time("2030-01-01T00:00:00Z") as clock:
        alice = make_user(client)
        slots = [make_slot(client, start=datetime(2030, 2, 1, tzinfo=UTC) + timedelta(hours=i)) for i in range(20)]
        assert _count(client) == 20
        clock.tick(3601)
        make_hold(client, alice, slots[0])  # appends one, prunes at most PRUNE_BATCH old ones
        assert _count(client) == 20 + 1 - changelog.PRUNE_BATCH
        for slot in slots[1:4]:
            make_hold(client, alice, slot)
        assert _count(client) == 4  # every old event gone, only the four new ones left
        with _engine(client).connect() as conn:
            assert conn.scalar(select(func.min(SlotEvent.position))) == 21  # positions never reused


def test_pruning_removes_only_an_unbroken_run_of_the_oldest_positions() -> None:
    """A later position stamped earlier (a writer that waited for the append lock) is not pruned before an older one."""
    settings = isolated_settings(event_retention_seconds=3600)
    with TestClient(create_app(settings)) as client, freeze_time("2030-01-01T00:00:00Z") as clock:
        alice = make_user(client)
        slots = [make_slot(client, start=datetime(2030, 2, 1, tzinfo=UTC) + timedelta(hours=i)) for i in range(6)]
        with _engine(client).begin() as conn:
            first = conn.scalar(select(func.min(SlotEvent.position)))
            assert first is not None
            # The third event is young: the run of old ones ends before it, whatever comes after.
            conn.execute(
                update(SlotEvent)
                .where(SlotEvent.position == first + 2)
                .values(occurred_at=datetime(2030, 1, 1, 1, tzinfo=UTC))
            )
        clock.tick(3601)
        make_hold(client, alice, slots[0])
        with _engine(client).connect() as conn:
            assert conn.scalar(select(func.min(SlotEvent.position))) == first + 2  # two pruned, no hole
            assert conn.scalar(select(func.count()).select_from(SlotEvent)) == 6 - 2 + 1


# --- a hold's history ---------------------------------------------------------------------------


def test_hold_history_lists_transitions_with_their_times(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slot = make_slot(client)
        hold = make_hold(client, alice, slot)["hold_id"]
        clock.tick(60)
        client.post(f"/holds/{hold}/extend", headers=alice.auth)
        clock.tick(60)
        client.post(f"/holds/{hold}/confirm", headers=alice.auth)
    response = client.get(f"/holds/{hold}/history", headers=alice.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["hold_id"] == hold
    assert [(i["event"], i["status"], i["at"], i["held_until"]) for i in body["items"]] == [
        ("HELD", "HOLD", "2030-01-01T12:00:00Z", "2030-01-01T12:05:00Z"),
        ("EXTENDED", "HOLD", "2030-01-01T12:01:00Z", "2030-01-01T12:06:00Z"),
        ("CONFIRMED", "CONFIRMED", "2030-01-01T12:02:00Z", None),
    ]
    positions = [item["position"] for item in body["items"]]
    assert positions == sorted(positions)


def test_hold_history_is_for_the_owner_only(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    assert_problem(client.get(f"/holds/{hold}/history", headers=bob.auth), 403, "NOT_HOLD_OWNER")
    assert_problem(client.get(f"/holds/{uuid.uuid4()}/history", headers=alice.auth), 404, "HOLD_NOT_FOUND")
    assert_problem(client.get(f"/holds/{hold}/history"), 401, "MISSING_TOKEN")


# --- positions in commit order on PostgreSQL ----------------------------------------------------


@pytest.fixture
def postgres_db(postgres_engine: Engine) -> Iterator[Database]:
    empty_postgres(postgres_engine)
    settings: Settings = isolated_settings(database_url=POSTGRES_URL)
    with TestClient(create_app(settings)) as client:
        yield client.app.state.db  # type: ignore[attr-defined]


def test_a_later_append_waits_for_an_earlier_one_to_commit(postgres_db: Database) -> None:
    """The trap: a sequence value drawn before commit could become visible after a later one.

    Appends take their positions under one transaction-scoped lock, so the second append
    cannot draw a position until the first has committed; a reader never sees 11 without 10.
    """
    slot = uuid.uuid4()
    room = uuid.uuid4()
    start = datetime(2030, 1, 1, tzinfo=UTC)
    first = Session(postgres_db.engine)
    changelog.record(first, EventKind.SLOT_CREATED, slot, room_id=room, starts_at=start)
    changelog.flush(first, start)  # holds its position (and the lock), not yet committed

    second_done = threading.Event()

    def second_writer() -> None:
        with Session(postgres_db.engine) as second, second.begin():
            changelog.record(second, EventKind.SLOT_DELETED, slot, room_id=room, starts_at=start)
            changelog.flush(second, start)
        second_done.set()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(0.5)
    with postgres_db.engine.connect() as reader:
        assert reader.scalar(select(func.count()).select_from(SlotEvent)) == 0
    assert not second_done.is_set(), "the second append drew a position while the first was uncommitted"
    first.commit()
    first.close()
    thread.join(10)
    assert second_done.is_set()
    with postgres_db.engine.connect() as reader:
        kinds = reader.execute(select(SlotEvent.kind).order_by(SlotEvent.position)).scalars().all()
    assert kinds == ["SLOT_CREATED", "SLOT_DELETED"]
