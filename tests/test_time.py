"""Time handling: any offset names one instant, responses are UTC, the server's zone never leaks in,
and SQLite stores one canonical text form. (A hold's expiry edges are in test_holds.py.)"""

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time

from main import create_app
from tests.factories import (
    ADMIN,
    CONFIRM_GONE,
    TTL,
    assert_problem,
    hold_status,
    isolated_settings,
    make_hold,
    make_room,
    make_slot,
    make_user,
    parse_time,
    post_slot,
    slot_status,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
OFFSETS = ["-12:00", "-09:30", "-03:00", "Z", "+00:00", "+05:30", "+05:45", "+09:00", "+12:45", "+14:00"]
DATETIME_KEYS = {"start_time", "end_time", "expires_at", "confirmed_at", "created_date", "last_updated_date"}
CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}")


def _at(instant: datetime, offset: str) -> str:
    """`instant` written in another offset, e.g. 20:00Z as '2030-01-02T10:00:00+14:00'."""
    if offset == "Z":
        return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")
    sign = -1 if offset.startswith("-") else 1
    hours, minutes = (int(part) for part in offset[1:].split(":"))
    return instant.astimezone(timezone(sign * timedelta(hours=hours, minutes=minutes))).isoformat()


def _datetimes(body: Any) -> Iterator[str]:
    """Every datetime-valued field of a JSON body, however deeply nested."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in DATETIME_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _datetimes(value)
    elif isinstance(body, list):
        for item in body:
            yield from _datetimes(item)


@pytest.fixture(params=["UTC", "Asia/Kolkata", "Pacific/Kiritimati", "Etc/GMT+12", "America/St_Johns"])
def process_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process's local time zone set to a zone far from UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


# --- any offset names one instant ----------------------------------------------------------------


@pytest.mark.parametrize("offset", OFFSETS)
def test_slot_overlap_is_decided_on_the_instant_whatever_the_offset(client: TestClient, offset: str) -> None:
    room = make_room(client)
    start = datetime(2030, 1, 1, 20, tzinfo=UTC)
    with freeze_time(NOW):
        # 20:00Z-21:00Z written at +14:00, where the local date is already the 2nd.
        assert post_slot(client, room, "2030-01-02T10:00:00+14:00", "2030-01-02T11:00:00+14:00").status_code == 201
        same = post_slot(client, room, _at(start, offset), _at(start + timedelta(hours=1), offset))
        inside = post_slot(
            client, room, _at(start + timedelta(minutes=15), offset), _at(start + timedelta(minutes=45), offset)
        )
        before = post_slot(client, room, _at(start - timedelta(hours=1), offset), _at(start, offset))
        after = post_slot(
            client, room, _at(start + timedelta(hours=1), offset), _at(start + timedelta(hours=2), offset)
        )
    assert_problem(same, 409, "SLOT_OVERLAP")
    assert_problem(inside, 409, "SLOT_OVERLAP")
    assert before.status_code == 201, before.text
    assert after.status_code == 201, after.text


@pytest.mark.parametrize("offset", OFFSETS)
def test_slot_in_the_past_is_decided_on_the_instant_whatever_the_offset(client: TestClient, offset: str) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        past = post_slot(client, room, _at(NOW - timedelta(seconds=1), offset), _at(NOW + timedelta(hours=1), offset))
        future = post_slot(client, room, _at(NOW + timedelta(seconds=1), offset), _at(NOW + timedelta(hours=1), offset))
    assert_problem(past, 422, "SLOT_IN_PAST")
    assert future.status_code == 201, future.text
    assert parse_time(future.json()["start_time"]) == NOW + timedelta(seconds=1)


@pytest.mark.parametrize("offset", OFFSETS)
def test_list_slots_from_and_to_in_any_offset_return_the_same_items(client: TestClient, offset: str) -> None:
    room = make_room(client)
    base = datetime(2030, 1, 1, 18, tzinfo=UTC)  # the hours cross midnight at both ends of the offset range
    with freeze_time(NOW):
        slots = [make_slot(client, room, start=base + timedelta(hours=h)) for h in range(8)]
        window = {"from": base + timedelta(hours=2), "to": base + timedelta(hours=5)}
        in_utc = client.get("/slots", params={"room_id": room, **{k: _at(v, "Z") for k, v in window.items()}})
        in_offset = client.get("/slots", params={"room_id": room, **{k: _at(v, offset) for k, v in window.items()}})
    assert in_offset.status_code == 200, in_offset.text
    assert [item["id"] for item in in_offset.json()["items"]] == slots[2:5]
    assert in_offset.json() == in_utc.json()


@pytest.mark.parametrize("offset", ["-12:00", "+14:00"])
def test_hold_on_slot_starting_now_in_another_offset_returns_409_started(client: TestClient, offset: str) -> None:
    alice, room = make_user(client), make_room(client)
    start = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    with freeze_time(NOW) as clock:
        slot = post_slot(client, room, _at(start, offset), _at(start + timedelta(hours=1), offset)).json()["id"]
        clock.tick(timedelta(minutes=30) - timedelta(seconds=1))
        hold = make_hold(client, alice, slot)
        assert client.post(f"/holds/{hold['hold_id']}/release", headers=alice.auth).status_code == 200
        clock.tick(1)
        assert_problem(client.post("/holds", json={"slot_id": slot}, headers=alice.auth), 409, "SLOT_STARTED")


@pytest.mark.parametrize(
    ("path", "value"),
    [("from", "0001-01-01T00:00:00+14:00"), ("to", "9999-12-31T23:00:00-12:00"), ("slot", "9999-12-31T20:00:00-12:00")],
)
def test_time_outside_the_utc_range_returns_422_not_500(client: TestClient, path: str, value: str) -> None:
    if path == "slot":
        response = post_slot(client, make_room(client), value, "9999-12-31T23:00:00-12:00")
    else:
        response = client.get("/slots", params={path: value})
    assert_problem(response, 422, "VALIDATION_ERROR")


# --- responses are UTC ---------------------------------------------------------------------------------


def test_every_response_datetime_is_utc_with_z(client: TestClient) -> None:
    alice, room = make_user(client), make_room(client)
    with freeze_time("2030-01-01T17:30:00+05:30"):  # 12:00Z
        created = post_slot(client, room, "2030-01-02T10:00:00+14:00", "2030-01-01T09:00:00-12:00")
        slot = created.json()["id"]
        hold = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
        extended = client.post(f"/holds/{hold.json()['hold_id']}/extend", headers=alice.auth)
        confirmed = client.post(f"/holds/{hold.json()['hold_id']}/confirm", headers=alice.auth)
        bodies = [
            created.json(),
            hold.json(),
            extended.json(),
            confirmed.json(),
            client.get(f"/slots/{slot}", headers=alice.auth).json(),
            client.get("/slots", headers=alice.auth).json(),
            client.get("/holds", headers=alice.auth).json(),
            client.get(f"/holds/{hold.json()['hold_id']}", headers=alice.auth).json(),
            client.get("/users/me", headers=alice.auth).json(),
            client.get("/rooms").json(),
        ]
    values = [value for body in bodies for value in _datetimes(body)]
    assert len(values) > 30
    assert all(value.endswith("Z") for value in values), [v for v in values if not v.endswith("Z")]
    assert created.json()["start_time"] == "2030-01-01T20:00:00Z"
    assert created.json()["end_time"] == "2030-01-01T21:00:00Z"
    assert hold.json()["expires_at"] == "2030-01-01T12:05:00Z"
    assert confirmed.json()["confirmed_at"] == "2030-01-01T12:00:00Z"


def test_conflict_held_until_is_the_competing_expiry_in_utc_with_z(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time("2030-01-01T01:00:00-11:00"):  # 12:00Z
        slot = make_slot(client)
        make_hold(client, alice, slot)
        body = assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")
    assert body["held_until"] == "2030-01-01T12:05:00Z"


# --- the server's and the test clock's zones never leak in -----------------------------------------


def test_expiry_decisions_are_unchanged_by_the_process_time_zone(process_tz: str, client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time(NOW) as clock:
        slot = make_slot(client)
        hold = make_hold(client, alice, slot)
        assert hold["expires_at"] == "2030-01-01T12:05:00Z"
        clock.tick(TTL - 1)
        assert slot_status(client, slot, alice) == "HELD_BY_ME"
        assert hold_status(client, hold["hold_id"], alice) == "HOLD"
        clock.tick(1)
        assert slot_status(client, slot, bob) == "AVAILABLE"
        assert hold_status(client, hold["hold_id"], alice) == "EXPIRED"
        body = assert_problem(client.post(f"/holds/{hold['hold_id']}/confirm", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert body["detail"] == CONFIRM_GONE
        assert make_hold(client, bob, slot)["expires_at"] == "2030-01-01T12:10:00Z"


def test_slot_rules_are_unchanged_by_the_process_time_zone(process_tz: str, client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        assert_problem(post_slot(client, room, "2030-01-01T11:59:59Z", "2030-01-01T13:00:00Z"), 422, "SLOT_IN_PAST")
        created = post_slot(client, room, "2030-01-01T12:00:01Z", "2030-01-01T13:00:00Z")
        assert created.json()["start_time"] == "2030-01-01T12:00:01Z"
        assert_problem(post_slot(client, room, "2030-01-01T12:30:00Z", "2030-01-01T14:00:00Z"), 409, "SLOT_OVERLAP")
        # A naive time is refused rather than read in the server's zone.
        assert_problem(post_slot(client, room, "2030-01-02T10:00:00", "2030-01-02T11:00:00"), 422, "VALIDATION_ERROR")
        listed = client.get("/slots", params={"room_id": room}).json()["items"]
    assert [item["start_time"] for item in listed] == ["2030-01-01T12:00:01Z"]


@pytest.mark.parametrize("tz_offset", [-12, -3.5, 0, 5.5, 14])
def test_expiry_decisions_are_unchanged_by_freezegun_tz_offset(client: TestClient, tz_offset: float) -> None:
    alice, bob = make_user(client), make_user(client)
    # freezegun adds tz_offset even to datetime.now(UTC) (spulec/freezegun#553), so the app's clock is
    # whatever utc_now() reads here; the decisions relative to it must not move.
    with freeze_time("2030-01-01 12:00:00", tz_offset=tz_offset) as clock:
        slot = make_slot(client)
        hold = make_hold(client, alice, slot)
        assert parse_time(hold["expires_at"]) - parse_time(hold["created_date"]) == timedelta(seconds=TTL)
        assert hold["expires_at"].endswith("Z")
        clock.tick(TTL - 1)
        assert slot_status(client, slot, alice) == "HELD_BY_ME"
        assert slot_status(client, slot, bob) == "HELD_BY_OTHER"
        clock.tick(1)
        assert slot_status(client, slot, alice) == "AVAILABLE"
        assert hold_status(client, hold["hold_id"], alice) == "EXPIRED"
        assert_problem(client.post(f"/holds/{hold['hold_id']}/confirm", headers=alice.auth), 410, "HOLD_EXPIRED")


# --- SQLite keeps one canonical text form ------------------------------------------------------------


def _sqlite_datetime_values(path: Path) -> dict[str, list[tuple[str, object]]]:
    """(typeof, value) of every non-null value of every DATETIME/TIMESTAMP column, by table.column."""
    found: dict[str, list[tuple[str, object]]] = {}
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, declared, *_ in conn.execute(f'PRAGMA table_info("{table}")'):
                if "DATE" in declared.upper() or "TIME" in declared.upper():
                    rows = conn.execute(
                        f'SELECT typeof("{column}"), "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL'
                    )
                    found[f"{table}.{column}"] = list(rows)
    return found


def test_sqlite_stores_every_datetime_in_one_canonical_utc_text_form(tmp_path: Path) -> None:
    path = tmp_path / "canonical.db"
    with TestClient(create_app(isolated_settings(database_url=f"sqlite:///{path}"))) as client:
        alice, bob = make_user(client), make_user(client)
        client.post(f"/users/{alice.id}/token", headers=ADMIN)
        room = make_room(client)
        with freeze_time("2030-01-01T12:00:00.123456Z") as clock:
            slots = [
                post_slot(client, room, "2030-01-02T10:00:00+14:00", "2030-01-01T09:00:00-12:00").json()["id"],
                post_slot(client, room, "2030-01-01T21:00:00.5Z", "2030-01-01T22:00:00+00:00").json()["id"],
                post_slot(client, room, "2030-01-02T03:30:00+05:30", "2030-01-01T23:00:00Z").json()["id"],
            ]
            booked = make_hold(client, alice, slots[0])["hold_id"]
            client.post(f"/holds/{booked}/extend", headers=alice.auth)
            client.post(f"/holds/{booked}/confirm", headers=alice.auth)
            client.post(f"/holds/{booked}/cancel", headers=alice.auth)
            released = make_hold(client, alice, slots[1])["hold_id"]
            client.post(f"/holds/{released}/release", headers=alice.auth)
            make_hold(client, alice, slots[2])
            clock.move_to("2030-01-01T12:30:00Z")  # microsecond 0 must still be written as .000000
            make_hold(client, bob, slots[2])  # marks alice's lapsed hold EXPIRED in the same statement pair
            assert client.get(f"/holds/{booked}", headers=alice.auth).json()["status"] == "CANCELLED"

    values = _sqlite_datetime_values(path)
    written = {"holds.expires_at", "holds.confirmed_at", "holds.last_updated_date", "time_slots.start_time"}
    written |= {"time_slots.end_time", "users.created_date", "api_tokens.created_date", "rooms.created_date"}
    assert all(values.get(column) for column in written), {column: values.get(column) for column in written}
    for column, rows in values.items():
        for kind, value in rows:
            assert kind == "text" and CANONICAL.fullmatch(str(value)), (column, kind, value)
    with sqlite3.connect(path) as conn:
        starts = sorted(row[0] for row in conn.execute("SELECT start_time FROM time_slots"))
        expiries = {row[0] for row in conn.execute("SELECT expires_at FROM holds")}
    assert starts == ["2030-01-01 20:00:00.000000", "2030-01-01 21:00:00.500000", "2030-01-01 22:00:00.000000"]
    assert "2030-01-01 12:35:00.000000" in expiries  # bob's hold, written at microsecond 0


def test_sqlite_file_database_judges_expiry_on_the_instant(tmp_path: Path) -> None:
    """The text comparisons on a file database behave like instants (the '12:00Z > 13:00Z' trap)."""
    with TestClient(create_app(isolated_settings(database_url=f"sqlite:///{tmp_path}/t.db"))) as client:
        alice, bob = make_user(client), make_user(client)
        with freeze_time("2030-01-01T23:58:00-12:00") as clock:  # 2030-01-02T11:58Z
            slot = make_slot(client)
            hold = make_hold(client, alice, slot)
            clock.move_to("2030-01-03T00:02:59+12:00")  # 2030-01-02T12:02:59Z, one second before expiry
            assert slot_status(client, slot, bob) == "HELD_BY_OTHER"
            clock.move_to("2030-01-02T17:33:00+05:30")  # 12:03Z: expired
            assert slot_status(client, slot, bob) == "AVAILABLE"
            assert hold_status(client, hold["hold_id"], alice) == "EXPIRED"
