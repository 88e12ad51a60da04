"""Slots: the user-aware listing, its filters and pagination, the admin slot rules, and racing
transactions adding overlapping slots to one room."""

import base64
import functools
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import catalog
from errors import Conflict
from schemas import SlotCreate
from tests.factories import (
    ADMIN,
    BAD_TOKEN,
    TTL,
    UNKNOWN,
    ApiUser,
    assert_problem,
    make_hold,
    make_room,
    make_slot,
    make_user,
    parse_time,
    post_slot,
)
from tests.race import Racers

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def _confirm(client: TestClient, user: ApiUser, hold_id: str) -> None:
    response = client.post(f"/holds/{hold_id}/confirm", headers=user.auth)
    assert response.status_code == 200, response.text


def _all_pages(client: TestClient, params: dict, headers: dict | None = None) -> tuple[list[dict], int]:
    """Follow next_cursor to the end; return every item and the number of pages read."""
    items, cursor, pages = [], None, 0
    while True:
        response = client.get("/slots", params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


# --- the user-aware listing ---------------------------------------------------------------------


@pytest.fixture
def scene(client: TestClient) -> dict:
    """One room with four slots: alice holds one, bob booked one, bob holds one, one is free."""
    alice, bob = make_user(client), make_user(client)
    room = make_room(client)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    alice_held, bob_booked, bob_held, free = (
        make_slot(client, room, start=start + timedelta(hours=i)) for i in range(4)
    )
    alice_hold = make_hold(client, alice, alice_held)
    booking = make_hold(client, bob, bob_booked)
    _confirm(client, bob, booking["hold_id"])
    bob_hold = make_hold(client, bob, bob_held)
    return {
        "alice": alice,
        "bob": bob,
        "room": room,
        "slots": [alice_held, bob_booked, bob_held, free],
        "alice_hold": alice_hold,
        "booking": booking,
        "bob_hold": bob_hold,
    }


def _view(client: TestClient, scene: dict, headers: dict | None) -> list[dict]:
    response = client.get("/slots", params={"room_id": scene["room"]}, headers=headers)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == scene["slots"]  # ordered by start time
    return items


def test_list_slots_shows_alice_her_hold_and_others_claims(client: TestClient, scene: dict) -> None:
    mine, booked, other, free = _view(client, scene, scene["alice"].auth)
    assert mine["status"] == "HELD_BY_ME"
    assert mine["hold_id"] == scene["alice_hold"]["hold_id"]
    assert parse_time(mine["expires_at"]) == parse_time(scene["alice_hold"]["expires_at"])
    assert booked["status"] == "BOOKED" and booked["hold_id"] is None and booked["expires_at"] is None
    assert other["status"] == "HELD_BY_OTHER" and other["hold_id"] is None and other["expires_at"] is None
    assert free["status"] == "AVAILABLE" and free["hold_id"] is None and free["expires_at"] is None


def test_list_slots_shows_bob_his_booking_and_hold(client: TestClient, scene: dict) -> None:
    alices, booked, mine, free = _view(client, scene, scene["bob"].auth)
    assert alices["status"] == "HELD_BY_OTHER" and alices["hold_id"] is None and alices["expires_at"] is None
    assert booked["status"] == "BOOKED" and booked["hold_id"] == scene["booking"]["hold_id"]
    assert booked["expires_at"] is None  # a booking does not expire
    assert mine["status"] == "HELD_BY_ME" and mine["hold_id"] == scene["bob_hold"]["hold_id"]
    assert parse_time(mine["expires_at"]) == parse_time(scene["bob_hold"]["expires_at"])
    assert free["status"] == "AVAILABLE"


def test_list_slots_anonymous_sees_every_live_hold_as_held_by_other(client: TestClient, scene: dict) -> None:
    items = _view(client, scene, None)
    assert [item["status"] for item in items] == ["HELD_BY_OTHER", "BOOKED", "HELD_BY_OTHER", "AVAILABLE"]
    assert all(item["hold_id"] is None and item["expires_at"] is None for item in items)


def test_get_slot_returns_the_same_view_as_the_listing(client: TestClient, scene: dict) -> None:
    for headers in (scene["alice"].auth, scene["bob"].auth, None):
        listed = _view(client, scene, headers)
        for item in listed:
            response = client.get(f"/slots/{item['id']}", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json() == item


@pytest.mark.parametrize(
    ("viewer", "status", "expected"),
    [
        ("alice", "HELD_BY_ME", [0]),
        ("alice", "HELD_BY_OTHER", [2]),
        ("alice", "BOOKED", [1]),
        ("alice", "AVAILABLE", [3]),
        ("bob", "HELD_BY_ME", [2]),
        ("bob", "HELD_BY_OTHER", [0]),
        (None, "HELD_BY_OTHER", [0, 2]),
        (None, "HELD_BY_ME", []),
    ],
)
def test_list_slots_status_filter_uses_the_callers_view(
    client: TestClient, scene: dict, viewer: str | None, status: str, expected: list[int]
) -> None:
    headers = scene[viewer].auth if viewer else None
    response = client.get("/slots", params={"room_id": scene["room"], "status": status}, headers=headers)
    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [scene["slots"][i] for i in expected]


def test_list_slots_unknown_status_returns_422(client: TestClient) -> None:
    assert_problem(client.get("/slots", params={"status": "FREE"}), 422, "VALIDATION_ERROR")


def test_list_slots_hold_reads_available_after_expiry(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time(NOW) as clock:
        slot = make_slot(client)
        make_hold(client, alice, slot)
        clock.tick(TTL)
        items = client.get("/slots", params={"status": "AVAILABLE"}, headers=alice.auth).json()["items"]
    assert [item["id"] for item in items] == [slot]


# --- user_id, room and error cases ---------------------------------------------------------------


def test_list_slots_user_id_matching_token_returns_200(client: TestClient, scene: dict) -> None:
    alice = scene["alice"]
    response = client.get("/slots", params={"room_id": scene["room"], "user_id": alice.id}, headers=alice.auth)
    assert response.status_code == 200
    assert response.json()["items"][0]["status"] == "HELD_BY_ME"
    slot = client.get(f"/slots/{scene['slots'][0]}", params={"user_id": alice.id}, headers=alice.auth)
    assert slot.status_code == 200 and slot.json()["status"] == "HELD_BY_ME"


def test_list_slots_user_id_of_another_user_returns_403(client: TestClient, scene: dict) -> None:
    alice, bob = scene["alice"], scene["bob"]
    assert_problem(client.get("/slots", params={"user_id": bob.id}, headers=alice.auth), 403, "USER_MISMATCH")
    response = client.get(f"/slots/{scene['slots'][0]}", params={"user_id": bob.id}, headers=alice.auth)
    assert_problem(response, 403, "USER_MISMATCH")


def test_list_slots_user_id_without_token_returns_401(client: TestClient, scene: dict) -> None:
    alice = scene["alice"]
    assert_problem(client.get("/slots", params={"user_id": alice.id}), 401, "MISSING_TOKEN")
    assert_problem(client.get(f"/slots/{scene['slots'][0]}", params={"user_id": alice.id}), 401, "MISSING_TOKEN")


def test_list_slots_invalid_token_returns_401(client: TestClient) -> None:
    assert_problem(client.get("/slots", headers=BAD_TOKEN), 401, "INVALID_TOKEN")


def test_list_slots_unknown_room_returns_404(client: TestClient) -> None:
    assert_problem(client.get("/slots", params={"room_id": UNKNOWN}), 404, "ROOM_NOT_FOUND")


def test_list_slots_non_uuid_room_returns_422(client: TestClient) -> None:
    assert_problem(client.get("/slots", params={"room_id": "room-1"}), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("cursor", ["not-a-cursor", "!!!", base64.urlsafe_b64encode(b"2030-01-01T00:00:00|x").decode()])
def test_list_slots_bad_cursor_returns_422(client: TestClient, cursor: str) -> None:
    assert_problem(client.get("/slots", params={"cursor": cursor}), 422, "INVALID_CURSOR")


def test_list_slots_cursor_with_naive_time_returns_422(client: TestClient) -> None:
    cursor = base64.urlsafe_b64encode(f"2030-01-01T00:00:00|{UNKNOWN}".encode()).decode()
    assert_problem(client.get("/slots", params={"cursor": cursor}), 422, "INVALID_CURSOR")


def test_list_slots_cursor_with_out_of_range_time_returns_422(client: TestClient) -> None:
    cursor = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+14:00|{UNKNOWN}".encode()).decode()
    assert_problem(client.get("/slots", params={"cursor": cursor}), 422, "INVALID_CURSOR")


@pytest.mark.parametrize("limit", [0, -1, 501, "ten"])
def test_list_slots_limit_out_of_range_returns_422(client: TestClient, limit: object) -> None:
    assert_problem(client.get("/slots", params={"limit": limit}), 422, "VALIDATION_ERROR")


def test_list_slots_limit_500_is_accepted(client: TestClient) -> None:
    assert client.get("/slots", params={"limit": 500}).status_code == 200


def test_get_slot_unknown_returns_404_and_non_uuid_returns_422(client: TestClient) -> None:
    assert_problem(client.get(f"/slots/{UNKNOWN}"), 404, "SLOT_NOT_FOUND")
    assert_problem(client.get("/slots/slot-1"), 422, "VALIDATION_ERROR")


def test_get_slot_returns_one_item_with_its_fields(client: TestClient) -> None:
    room = make_room(client)
    start = datetime(2030, 1, 2, 10, tzinfo=UTC)
    with freeze_time(NOW):
        slot = make_slot(client, room, start=start, hours=2)
        body = client.get(f"/slots/{slot}").json()
    assert body["id"] == slot and body["room_id"] == room and body["status"] == "AVAILABLE"
    assert parse_time(body["start_time"]) == start and parse_time(body["end_time"]) == start + timedelta(hours=2)
    assert body["hold_id"] is None and body["expires_at"] is None


# --- pagination and time filters -----------------------------------------------------------------


def test_list_slots_pagination_walks_every_slot_once_in_start_order(client: TestClient) -> None:
    first, second = make_room(client), make_room(client)
    with freeze_time(NOW):
        base = datetime(2030, 1, 2, tzinfo=UTC)
        # Eleven slots, three of them sharing a start time with a slot of the other room.
        expected = [make_slot(client, first, start=base + timedelta(hours=h)) for h in range(8)]
        expected += [make_slot(client, second, start=base + timedelta(hours=h)) for h in (0, 3, 7)]
        items, pages = _all_pages(client, {"limit": 3})
    ids = [item["id"] for item in items]
    assert pages == 4
    assert len(ids) == len(set(ids)) == 11
    assert set(ids) == set(expected)
    starts = [parse_time(item["start_time"]) for item in items]
    assert starts == sorted(starts)


def test_list_slots_pagination_respects_the_status_filter(client: TestClient) -> None:
    alice, room = make_user(client), make_room(client)
    with freeze_time(NOW):
        base = datetime(2030, 1, 2, tzinfo=UTC)
        slots = [make_slot(client, room, start=base + timedelta(hours=h)) for h in range(9)]
        for slot in slots[::3]:
            make_hold(client, alice, slot)
        free, _ = _all_pages(client, {"room_id": room, "status": "AVAILABLE", "limit": 2})
        mine, _ = _all_pages(client, {"room_id": room, "status": "HELD_BY_ME", "limit": 2}, alice.auth)
    assert [item["id"] for item in free] == [s for i, s in enumerate(slots) if i % 3]
    assert [item["id"] for item in mine] == slots[::3]


def test_list_slots_last_full_page_has_no_next_cursor(client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        for h in range(4):
            make_slot(client, room, start=datetime(2030, 1, 2, h, tzinfo=UTC))
        page = client.get("/slots", params={"room_id": room, "limit": 4}).json()
    assert len(page["items"]) == 4 and page["next_cursor"] is None


def test_list_slots_default_from_is_now_so_started_slots_are_hidden(client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW) as clock:
        soon = make_slot(client, room, start=NOW + timedelta(hours=1))
        later = make_slot(client, room, start=NOW + timedelta(hours=3))
        clock.tick(timedelta(hours=2))  # `soon` has started, `later` has not
        default = client.get("/slots", params={"room_id": room}).json()["items"]
        since = client.get("/slots", params={"room_id": room, "from": NOW.isoformat()}).json()["items"]
    assert [item["id"] for item in default] == [later]
    assert [item["id"] for item in since] == [soon, later]


def test_list_slots_from_and_to_select_by_start_time(client: TestClient) -> None:
    room = make_room(client)
    base = datetime(2030, 1, 2, 10, tzinfo=UTC)
    with freeze_time(NOW):
        slots = [make_slot(client, room, start=base + timedelta(hours=h)) for h in range(5)]

        def listed(**params: str) -> list[str]:
            response = client.get("/slots", params={"room_id": room, **params})
            assert response.status_code == 200, response.text
            return [item["id"] for item in response.json()["items"]]

        # `from` is inclusive, `to` exclusive, both on start_time; "+01:00" must be URL-encoded.
        assert listed(**{"from": (base + timedelta(hours=1)).isoformat()}) == slots[1:]
        assert listed(to=(base + timedelta(hours=3)).isoformat()) == slots[:3]
        window = {"from": "2030-01-02T12:00:00+01:00", "to": "2030-01-02T13:30:00+01:00"}  # 11:00Z-12:30Z
        assert listed(**window) == slots[1:3]
        assert listed(**{"from": (base + timedelta(minutes=30)).isoformat()}) == slots[1:]
        assert listed(**{"from": base.isoformat(), "to": base.isoformat()}) == []


def test_list_slots_naive_from_returns_422(client: TestClient) -> None:
    assert_problem(client.get("/slots", params={"from": "2030-01-02T10:00:00"}), 422, "VALIDATION_ERROR")
    assert_problem(client.get("/slots", params={"to": "tomorrow"}), 422, "VALIDATION_ERROR")


# --- POST /rooms/{room_id}/slots ---------------------------------------------------------------------


def test_create_slot_returns_201_available_slot(client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        response = post_slot(client, room, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["room_id"] == room and body["status"] == "AVAILABLE"
    assert parse_time(body["start_time"]) == datetime(2030, 1, 2, 10, tzinfo=UTC)
    assert uuid.UUID(body["id"]).version == 4


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2030-01-02T10:00:00", "2030-01-02T11:00:00"),
        ("2030-01-02T10:00:00Z", "2030-01-02T11:00:00"),
        ("2030-01-02T10:00:00", "2030-01-02T11:00:00Z"),
    ],
)
def test_create_slot_with_naive_time_returns_422(client: TestClient, start: str, end: str) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        assert_problem(post_slot(client, room, start, end), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2030-01-02T10:00:00Z", "2030-01-02T10:00:00Z"),
        ("2030-01-02T11:00:00Z", "2030-01-02T10:00:00Z"),
        ("2030-01-02T10:00:00Z", "2030-01-02T11:00:00+02:00"),  # ends 09:00Z, before it starts
    ],
)
def test_create_slot_not_starting_before_it_ends_returns_422(client: TestClient, start: str, end: str) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        assert_problem(post_slot(client, room, start, end), 422, "VALIDATION_ERROR")


def test_create_slot_in_the_past_returns_422(client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        assert_problem(post_slot(client, room, "2030-01-01T11:00:00Z", "2030-01-01T13:00:00Z"), 422, "SLOT_IN_PAST")
        assert_problem(post_slot(client, room, "2030-01-01T12:00:00Z", "2030-01-01T13:00:00Z"), 422, "SLOT_IN_PAST")
        assert post_slot(client, room, "2030-01-01T12:00:01Z", "2030-01-01T13:00:00Z").status_code == 201


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2030-01-02T10:00:00Z", "2030-01-02T12:00:00Z"),  # same times
        ("2030-01-02T10:30:00Z", "2030-01-02T11:30:00Z"),  # inside
        ("2030-01-02T09:00:00Z", "2030-01-02T13:00:00Z"),  # around
        ("2030-01-02T09:30:00Z", "2030-01-02T10:30:00Z"),  # over the start
        ("2030-01-02T11:59:59Z", "2030-01-02T13:00:00Z"),  # over the end
    ],
)
def test_create_slot_overlapping_another_in_the_same_room_returns_409(client: TestClient, start: str, end: str) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        existing = post_slot(client, room, "2030-01-02T10:00:00Z", "2030-01-02T12:00:00Z").json()["id"]
        body = assert_problem(post_slot(client, room, start, end), 409, "SLOT_OVERLAP")
        listed = client.get("/slots", params={"room_id": room}).json()["items"]
    assert body["overlapping_slot_id"] == existing
    assert [item["id"] for item in listed] == [existing]


def test_create_slot_adjacent_to_another_returns_201(client: TestClient) -> None:
    room = make_room(client)
    with freeze_time(NOW):
        assert post_slot(client, room, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z").status_code == 201
        assert post_slot(client, room, "2030-01-02T11:00:00Z", "2030-01-02T12:00:00Z").status_code == 201
        assert post_slot(client, room, "2030-01-02T09:00:00Z", "2030-01-02T10:00:00Z").status_code == 201


def test_create_slot_overlapping_a_slot_of_another_room_returns_201(client: TestClient) -> None:
    first, second = make_room(client), make_room(client)
    with freeze_time(NOW):
        assert post_slot(client, first, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z").status_code == 201
        assert post_slot(client, second, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z").status_code == 201


def test_create_slot_without_the_admin_token_returns_403_or_401(client: TestClient) -> None:
    room, alice = make_room(client), make_user(client)
    with freeze_time(NOW):
        start, end = "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z"
        assert_problem(post_slot(client, room, start, end, headers=alice.auth), 403, "ADMIN_REQUIRED")
        assert_problem(post_slot(client, room, start, end, headers=None), 401, "MISSING_TOKEN")
        assert_problem(post_slot(client, room, start, end, headers=BAD_TOKEN), 401, "INVALID_TOKEN")
        assert client.get("/slots", params={"room_id": room}).json()["items"] == []


def test_create_slot_in_unknown_room_returns_404(client: TestClient) -> None:
    with freeze_time(NOW):
        response = post_slot(client, UNKNOWN, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z")
    assert_problem(response, 404, "ROOM_NOT_FOUND")


# --- racing slot creation ------------------------------------------------------------------------


def _race_overlapping_slots(engine: Engine, room: uuid.UUID, racers: int) -> Counter[str]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)

    def add(index: int, session: Session) -> str:
        begin = start + timedelta(minutes=index)  # every pair of these overlaps
        slot = SlotCreate(start_time=begin, end_time=begin + timedelta(hours=1))
        try:
            catalog.create_slot(session, room, slot)
        except Conflict as exc:
            return exc.code
        finally:
            session.close()  # hand its connection back at once (in-memory SQLite's pool holds one)
        return "created"

    with Racers(racers, lambda: Session(engine)) as pool:
        return Counter(pool.race([functools.partial(add, i) for i in range(racers)], timeout=60))


def test_racing_overlapping_slot_creation_creates_exactly_one(client: TestClient) -> None:
    """The room-row lock: concurrent transactions adding overlapping slots to one room; one wins."""
    engine: Engine = client.app.state.db.engine  # type: ignore[attr-defined]
    racers = 12
    for _ in range(5):
        outcomes = _race_overlapping_slots(engine, uuid.UUID(make_room(client)), racers)
        assert outcomes == {"created": 1, "SLOT_OVERLAP": racers - 1}, outcomes


# --- DELETE /slots/{id} --------------------------------------------------------------------------


def test_delete_free_slot_returns_204_and_it_is_gone(client: TestClient) -> None:
    room = make_room(client)
    slot = make_slot(client, room)
    response = client.delete(f"/slots/{slot}", headers=ADMIN)
    assert response.status_code == 204 and response.content == b""
    assert_problem(client.get(f"/slots/{slot}"), 404, "SLOT_NOT_FOUND")
    assert client.get("/slots", params={"room_id": room}).json()["items"] == []
    assert_problem(client.delete(f"/slots/{slot}", headers=ADMIN), 404, "SLOT_NOT_FOUND")


def test_delete_held_slot_returns_409_until_released(client: TestClient) -> None:
    alice, slot = make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    assert_problem(client.delete(f"/slots/{slot}", headers=ADMIN), 409, "SLOT_IN_USE")
    assert client.get(f"/holds/{hold['hold_id']}", headers=alice.auth).json()["status"] == "HOLD"
    assert client.post(f"/holds/{hold['hold_id']}/release", headers=alice.auth).status_code == 200
    assert client.delete(f"/slots/{slot}", headers=ADMIN).status_code == 204
    assert_problem(client.get(f"/slots/{slot}"), 404, "SLOT_NOT_FOUND")


def test_delete_booked_slot_returns_409_until_cancelled(client: TestClient) -> None:
    alice, slot = make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)["hold_id"]
    _confirm(client, alice, hold)
    assert_problem(client.delete(f"/slots/{slot}", headers=ADMIN), 409, "SLOT_IN_USE")
    assert client.get(f"/holds/{hold}", headers=alice.auth).json()["status"] == "CONFIRMED"
    assert client.post(f"/holds/{hold}/cancel", headers=alice.auth).status_code == 200
    assert client.delete(f"/slots/{slot}", headers=ADMIN).status_code == 204


def test_delete_slot_after_its_hold_expired_returns_204(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time(NOW) as clock:
        slot = make_slot(client)
        make_hold(client, alice, slot)
        clock.tick(TTL - 1)
        assert_problem(client.delete(f"/slots/{slot}", headers=ADMIN), 409, "SLOT_IN_USE")
        clock.tick(1)
        assert client.delete(f"/slots/{slot}", headers=ADMIN).status_code == 204
        assert_problem(client.get(f"/slots/{slot}"), 404, "SLOT_NOT_FOUND")


def test_delete_slot_without_the_admin_token_returns_403_or_401(client: TestClient) -> None:
    alice, slot = make_user(client), make_slot(client)
    assert_problem(client.delete(f"/slots/{slot}", headers=alice.auth), 403, "ADMIN_REQUIRED")
    assert_problem(client.delete(f"/slots/{slot}"), 401, "MISSING_TOKEN")
    assert client.get(f"/slots/{slot}").status_code == 200


def test_delete_unknown_slot_returns_404_and_non_uuid_returns_422(client: TestClient) -> None:
    assert_problem(client.delete(f"/slots/{UNKNOWN}", headers=ADMIN), 404, "SLOT_NOT_FOUND")
    assert_problem(client.delete("/slots/slot-1", headers=ADMIN), 422, "VALIDATION_ERROR")
