"""The database itself keeps the invariant (never two live claims on a slot): raw inserts, clock skew,
the invariant checker, and what the naive statement does without the unique index."""

import functools
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from tests.factories import TTL, assert_problem, make_hold, make_slot, make_user
from tests.invariant import Claim, claim_interval, overlapping_claims, slots_with_two_live_claims
from tests.race import Racers

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)


def _raw_insert_live_hold(engine: Engine, slot_id: str, user_id: str) -> None:
    """INSERT a live hold with plain SQL, bypassing every rule of the application."""
    if engine.dialect.name == "sqlite":
        sql = (
            "INSERT INTO holds (id, slot_id, user_id, status, expires_at, extension_count, created_date,"
            " last_updated_date) VALUES (lower(hex(randomblob(16))), :slot, :user, 'HOLD',"
            " '2999-01-01 00:00:00.000000', 0, '2000-01-01 00:00:00.000000', '2000-01-01 00:00:00.000000')"
        )
        params = {"slot": uuid.UUID(slot_id).hex, "user": uuid.UUID(user_id).hex}
    else:
        sql = (
            "INSERT INTO holds (id, slot_id, user_id, status, expires_at, extension_count, created_date,"
            " last_updated_date) VALUES (gen_random_uuid(), :slot, :user, 'HOLD', now() + interval '1 day', 0,"
            " now(), now())"
        )
        params = {"slot": slot_id, "user": user_id}
    with engine.begin() as conn:
        conn.execute(text(sql), params)


@pytest.mark.parametrize("first_claim", ["hold", "booking"])
def test_raw_sql_insert_of_second_live_claim_is_refused_by_the_database(client: TestClient, first_claim: str) -> None:
    alice, mallory, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    if first_claim == "booking":
        assert client.post(f"/holds/{hold['hold_id']}/confirm", headers=alice.auth).status_code == 200
    engine = client.app.state.db.engine  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError):
        _raw_insert_live_hold(engine, slot, mallory.id)
    with engine.connect() as conn:
        assert slots_with_two_live_claims(conn, datetime.now(UTC)) == []


def test_raw_sql_insert_on_a_free_slot_is_accepted(client: TestClient) -> None:
    """The control for the test above: the raw statement itself is valid."""
    alice, slot = make_user(client), make_slot(client)
    _raw_insert_live_hold(client.app.state.db.engine, slot, alice.id)  # type: ignore[attr-defined]
    assert client.get(f"/slots/{slot}").json()["status"] == "HELD_BY_OTHER"


def test_clock_skew_between_hosts_cannot_confirm_or_extend_over_another_claim(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time(T0):
        slot = make_slot(client)
        stale = make_hold(client, alice, slot)["hold_id"]
    with freeze_time(T0 + timedelta(seconds=TTL + 60)):  # host A, whose clock runs ahead
        bobs = make_hold(client, bob, slot)
    with freeze_time(T0 + timedelta(seconds=60)):  # host B, whose clock says alice's hold is live
        assert_problem(client.post(f"/holds/{stale}/confirm", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert_problem(client.post(f"/holds/{stale}/extend", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert_problem(client.post(f"/holds/{stale}/release", headers=alice.auth), 410, "HOLD_EXPIRED")
        view = client.get(f"/slots/{slot}", headers=alice.auth).json()
    assert view["status"] == "HELD_BY_OTHER"
    assert client.get(f"/holds/{bobs['hold_id']}", headers=bob.auth).json()["status"] == "HOLD"


def test_clock_skew_the_other_way_cannot_take_a_slot_that_is_live(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time(T0):
        slot = make_slot(client)
    with freeze_time(T0 + timedelta(seconds=60)):  # host A, ahead, creates the hold
        held = make_hold(client, alice, slot)["hold_id"]
    with freeze_time(T0):  # host B, behind: the hold is (more than) live for it
        assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")
    with freeze_time(T0 + timedelta(seconds=60 + TTL - 1)):
        assert client.post(f"/holds/{held}/confirm", headers=alice.auth).status_code == 200


# --- the invariant checker itself ----------------------------------------------------------------


def test_overlap_checker_flags_a_real_double_claim_and_passes_a_handover() -> None:
    start = T0
    released_then_taken = [
        Claim("s", *claim_interval("RELEASED", start, start + timedelta(minutes=5), start + timedelta(minutes=1))),
        Claim("s", *claim_interval("CONFIRMED", start + timedelta(minutes=1), start + timedelta(minutes=6), start)),
    ]
    assert overlapping_claims(released_then_taken, timedelta(seconds=1)) == []
    double = [
        Claim("s", *claim_interval("HOLD", start, start + timedelta(minutes=5), start)),
        Claim("s", *claim_interval("HOLD", start + timedelta(seconds=2), start + timedelta(minutes=5), start)),
    ]
    assert len(overlapping_claims(double, timedelta(seconds=1))) == 1


# --- the negative control: the naive statement on PostgreSQL READ COMMITTED ----------------------

NAIVE_TABLE = """
CREATE TABLE naive_holds (
    id uuid PRIMARY KEY, slot_id uuid NOT NULL, user_id uuid NOT NULL, status text NOT NULL,
    expires_at timestamptz NOT NULL, created_date timestamptz NOT NULL
)"""
NAIVE_INSERT = """
INSERT INTO naive_holds (id, slot_id, user_id, status, expires_at, created_date)
SELECT gen_random_uuid(), :slot, :user, 'HOLD', :expires, :now
WHERE NOT EXISTS (
    SELECT 1 FROM naive_holds
    WHERE slot_id = :slot AND (status = 'CONFIRMED' OR (status = 'HOLD' AND expires_at > :now))
)"""


def test_naive_insert_select_double_books_on_postgres_read_committed(postgres_engine: Engine) -> None:
    """What the unique index guards against is real: without it, concurrent statements double-claim."""
    connections, slot_count = 8, 100
    with postgres_engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS naive_holds"))
        conn.execute(text(NAIVE_TABLE))
    slots = [uuid.uuid4() for _ in range(slot_count)]
    now = datetime.now(UTC)

    @contextmanager
    def read_committed() -> Iterator[Connection]:
        with postgres_engine.connect() as conn:
            assert conn.get_isolation_level() == "READ COMMITTED"
            yield conn

    def claim(slot: uuid.UUID, conn: Connection) -> None:
        params = {"slot": slot, "user": uuid.uuid4(), "now": now, "expires": now + timedelta(seconds=TTL)}
        conn.execute(text(NAIVE_INSERT), params)
        conn.commit()

    with Racers(connections, read_committed) as racers:
        for slot in slots:  # every connection claims each slot, all at once
            racers.race([functools.partial(claim, slot)] * connections)
    with postgres_engine.begin() as conn:
        rows = conn.execute(text("SELECT slot_id, status, created_date, expires_at FROM naive_holds")).all()
        conn.execute(text("DROP TABLE naive_holds"))
    per_slot = Counter(row.slot_id for row in rows)
    doubled = [slot for slot, count in per_slot.items() if count > 1]
    # The same overlap check the stress test applies to the service's table sees the doubles.
    claims = [Claim(r.slot_id, *claim_interval(r.status, r.created_date, r.expires_at, r.created_date)) for r in rows]
    print(f"naive statement: {len(doubled)} of {slot_count} slots got more than one live hold")
    assert doubled, "the naive statement should have double-claimed at least one slot"
    assert len(overlapping_claims(claims, timedelta(seconds=1))) >= len(doubled)
