"""The hold lifecycle over HTTP: every success and failure row of the contract's table, and both sides
of a hold's expiry on a frozen clock."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time

from config import Settings
from main import create_app
from tests.factories import (
    ADMIN,
    BAD_TOKEN,
    CONFIRM_GONE,
    TTL,
    UNKNOWN,
    assert_problem,
    hold_status,
    make_hold,
    make_slot,
    make_user,
    parse_time,
    slot_status,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


def _post(client: TestClient, hold_id: str, action: str, user, body: dict | None = None):
    return client.post(f"/holds/{hold_id}/{action}", headers=user.auth, json=body)


# --- POST /holds -------------------------------------------------------------------------------


def test_create_hold_returns_201_with_expiry_after_ttl(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z"):
        slot = make_slot(client)
        response = client.post("/holds", json={"slot_id": slot, "user_id": alice.id}, headers=alice.auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "HOLD"
    assert body["slot_id"] == slot and body["user_id"] == alice.id
    assert parse_time(body["expires_at"]) == datetime(2030, 1, 1, 12, tzinfo=UTC) + timedelta(seconds=TTL)
    assert uuid.UUID(body["hold_id"]).version == 4


def test_create_hold_unknown_slot_returns_404(client: TestClient) -> None:
    assert_problem(
        client.post("/holds", json={"slot_id": UNKNOWN}, headers=make_user(client).auth), 404, "SLOT_NOT_FOUND"
    )


def test_create_hold_on_slot_held_by_other_returns_409_with_end_of_hold(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    first = make_hold(client, alice, slot)
    body = assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")
    assert body["slot_status"] == "HELD_BY_OTHER"
    assert parse_time(body["held_until"]) == parse_time(first["expires_at"])
    assert body["hold_id"] is None  # another user's hold id is not disclosed


def test_create_hold_on_slot_held_by_caller_returns_409(client: TestClient) -> None:
    alice, slot = make_user(client), make_slot(client)
    first = make_hold(client, alice, slot)
    body = assert_problem(client.post("/holds", json={"slot_id": slot}, headers=alice.auth), 409, "SLOT_UNAVAILABLE")
    assert body["slot_status"] == "HELD_BY_ME"
    assert body["hold_id"] == first["hold_id"]


def test_create_hold_on_booked_slot_returns_409(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    assert _post(client, hold["hold_id"], "confirm", alice).status_code == 200
    body = assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")
    assert body["slot_status"] == "BOOKED"


def test_create_hold_on_started_slot_returns_409(client: TestClient) -> None:
    start = datetime(2030, 1, 1, 10, tzinfo=UTC)
    alice = make_user(client)
    with freeze_time(start - timedelta(days=1)):
        slot = make_slot(client, start=start)
    with freeze_time(start):
        assert_problem(client.post("/holds", json={"slot_id": slot}, headers=alice.auth), 409, "SLOT_STARTED")


def test_create_hold_without_a_valid_user_token_returns_401(client: TestClient) -> None:
    slot = make_slot(client)
    assert_problem(client.post("/holds", json={"slot_id": slot}), 401, "MISSING_TOKEN")
    assert_problem(client.post("/holds", json={"slot_id": slot}, headers=BAD_TOKEN), 401, "INVALID_TOKEN")
    assert_problem(client.post("/holds", json={"slot_id": slot}, headers=ADMIN), 401, "INVALID_TOKEN")


def test_create_hold_for_another_user_id_returns_403(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    response = client.post("/holds", json={"slot_id": slot, "user_id": bob.id}, headers=alice.auth)
    assert_problem(response, 403, "USER_MISMATCH")
    assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"


def test_create_hold_without_slot_id_returns_422(client: TestClient) -> None:
    alice = make_user(client)
    assert_problem(client.post("/holds", json={"user_id": alice.id}, headers=alice.auth), 422, "VALIDATION_ERROR")
    assert_problem(client.post("/holds", json={"slot_id": "s-1"}, headers=alice.auth), 422, "VALIDATION_ERROR")


# --- GET /holds/{id} and GET /holds ----------------------------------------------------------------


def test_get_hold_returns_owner_view_and_refuses_others(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    response = client.get(f"/holds/{hold['hold_id']}", headers=alice.auth)
    assert response.status_code == 200 and response.json()["status"] == "HOLD"
    assert_problem(client.get(f"/holds/{hold['hold_id']}", headers=bob.auth), 403, "NOT_HOLD_OWNER")
    assert_problem(client.get(f"/holds/{UNKNOWN}", headers=alice.auth), 404, "HOLD_NOT_FOUND")


def test_get_hold_status_is_derived_at_read_time(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slots = [make_slot(client, start=datetime(2030, 1, 2, h, tzinfo=UTC)) for h in range(10, 14)]
        held, confirmed, released, cancelled = (make_hold(client, alice, s)["hold_id"] for s in slots)
        assert _post(client, confirmed, "confirm", alice).status_code == 200
        assert _post(client, cancelled, "confirm", alice).status_code == 200
        assert _post(client, cancelled, "cancel", alice).status_code == 200
        assert _post(client, released, "release", alice).status_code == 200
        clock.tick(TTL)
        ids = (held, confirmed, released, cancelled)
        statuses = {h: client.get(f"/holds/{h}", headers=alice.auth).json()["status"] for h in ids}
    assert statuses == {held: "EXPIRED", confirmed: "CONFIRMED", released: "RELEASED", cancelled: "CANCELLED"}


def test_list_holds_shows_only_the_callers_holds_filtered_and_paginated(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    mine = [make_hold(client, alice, make_slot(client))["hold_id"] for _ in range(5)]
    make_hold(client, bob, make_slot(client))
    assert _post(client, mine[0], "confirm", alice).status_code == 200

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/holds", params=params, headers=alice.auth).json()
        seen += [item["hold_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(mine) and len(seen) == len(set(seen))

    confirmed = client.get("/holds", params={"status": "CONFIRMED"}, headers=alice.auth).json()["items"]
    assert [item["hold_id"] for item in confirmed] == [mine[0]]
    held = client.get("/holds", params={"status": "HOLD"}, headers=alice.auth).json()["items"]
    assert sorted(item["hold_id"] for item in held) == sorted(mine[1:])
    assert_problem(client.get("/holds"), 401, "MISSING_TOKEN")
    assert_problem(client.get("/holds", params={"status": "NOPE"}, headers=alice.auth), 422, "VALIDATION_ERROR")


# --- confirm ---------------------------------------------------------------------------------------


def test_confirm_returns_booking_and_is_idempotent(client: TestClient) -> None:
    alice, slot = make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    first = _post(client, hold["hold_id"], "confirm", alice, {"user_id": alice.id})
    assert first.status_code == 200
    body = first.json()
    assert body["status"] == "CONFIRMED" and body["slot_id"] == slot and body["confirmed_at"]
    again = _post(client, hold["hold_id"], "confirm", alice)
    assert again.status_code == 200 and again.json()["confirmed_at"] == body["confirmed_at"]
    assert client.get(f"/slots/{slot}").json()["status"] == "BOOKED"


def test_confirm_released_hold_returns_410(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))
    assert _post(client, hold["hold_id"], "release", alice).status_code == 200
    body = assert_problem(_post(client, hold["hold_id"], "confirm", alice), 410, "HOLD_RELEASED")
    assert body["detail"] == CONFIRM_GONE


def test_confirm_another_users_hold_returns_403_and_changes_nothing(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    assert_problem(_post(client, hold["hold_id"], "confirm", bob), 403, "NOT_HOLD_OWNER")
    assert_problem(_post(client, hold["hold_id"], "confirm", bob, {"user_id": alice.id}), 403, "USER_MISMATCH")
    assert client.get(f"/holds/{hold['hold_id']}", headers=alice.auth).json()["status"] == "HOLD"


def test_confirm_unknown_hold_returns_404(client: TestClient) -> None:
    assert_problem(_post(client, UNKNOWN, "confirm", make_user(client)), 404, "HOLD_NOT_FOUND")


# --- release ---------------------------------------------------------------------------------------


def test_release_frees_the_slot_and_is_idempotent(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)
    first = _post(client, hold["hold_id"], "release", alice)
    assert first.status_code == 200 and first.json()["status"] == "RELEASED"
    again = _post(client, hold["hold_id"], "release", alice)
    assert again.status_code == 200 and again.json()["status"] == "RELEASED"
    assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"
    make_hold(client, bob, slot)


def test_release_confirmed_hold_returns_409(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))
    assert _post(client, hold["hold_id"], "confirm", alice).status_code == 200
    assert_problem(_post(client, hold["hold_id"], "release", alice), 409, "HOLD_CONFIRMED")


def test_release_expired_hold_returns_410(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        hold = make_hold(client, alice, make_slot(client))
        clock.tick(TTL)
        assert_problem(_post(client, hold["hold_id"], "release", alice), 410, "HOLD_EXPIRED")


def test_release_another_users_hold_returns_403(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    hold = make_hold(client, alice, make_slot(client))
    assert_problem(_post(client, hold["hold_id"], "release", bob), 403, "NOT_HOLD_OWNER")
    assert client.get(f"/holds/{hold['hold_id']}", headers=alice.auth).json()["status"] == "HOLD"


def test_release_unknown_hold_returns_404(client: TestClient) -> None:
    assert_problem(_post(client, UNKNOWN, "release", make_user(client)), 404, "HOLD_NOT_FOUND")


# --- extend ----------------------------------------------------------------------------------------


def test_extend_moves_expiry_to_now_plus_ttl_then_hits_the_limit(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        hold = make_hold(client, alice, make_slot(client))
        clock.tick(TTL - 60)
        response = _post(client, hold["hold_id"], "extend", alice)
        assert response.status_code == 200, response.text
        body = response.json()
        assert parse_time(body["expires_at"]) == datetime(2030, 1, 1, 12, tzinfo=UTC) + timedelta(seconds=2 * TTL - 60)
        assert body["extensions_used"] == 1 and body["extensions_left"] == 0
        assert_problem(_post(client, hold["hold_id"], "extend", alice), 409, "EXTENSION_LIMIT_REACHED")
        clock.tick(TTL - 1)  # the extended hold is still live just before its new expiry
        assert client.get(f"/holds/{hold['hold_id']}", headers=alice.auth).json()["status"] == "HOLD"


def test_extend_expired_or_released_hold_returns_410(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        expired = make_hold(client, alice, make_slot(client))["hold_id"]
        released = make_hold(client, alice, make_slot(client))["hold_id"]
        assert _post(client, released, "release", alice).status_code == 200
        assert_problem(_post(client, released, "extend", alice), 410, "HOLD_RELEASED")
        clock.tick(TTL)
        assert_problem(_post(client, expired, "extend", alice), 410, "HOLD_EXPIRED")


def test_extend_booking_returns_409(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    assert _post(client, hold, "confirm", alice).status_code == 200
    assert_problem(_post(client, hold, "extend", alice), 409, "HOLD_CONFIRMED")


def test_extend_another_users_or_unknown_hold_is_refused(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    assert_problem(_post(client, hold, "extend", bob), 403, "NOT_HOLD_OWNER")
    assert_problem(_post(client, UNKNOWN, "extend", alice), 404, "HOLD_NOT_FOUND")
    assert client.get(f"/holds/{hold}", headers=alice.auth).json()["extensions_used"] == 0


def test_extend_with_max_extensions_0_returns_409_limit_reached(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"hold_max_extensions": 0}))) as strict:
        alice = make_user(strict)
        hold = make_hold(strict, alice, make_slot(strict))["hold_id"]
        assert_problem(_post(strict, hold, "extend", alice), 409, "EXTENSION_LIMIT_REACHED")


# --- cancel ----------------------------------------------------------------------------------------


def test_cancel_booking_frees_the_slot_and_is_idempotent(client: TestClient) -> None:
    alice, bob, slot = make_user(client), make_user(client), make_slot(client)
    hold = make_hold(client, alice, slot)["hold_id"]
    assert _post(client, hold, "confirm", alice).status_code == 200
    response = _post(client, hold, "cancel", alice)
    assert response.status_code == 200 and response.json()["status"] == "CANCELLED"
    assert _post(client, hold, "cancel", alice).json()["status"] == "CANCELLED"
    assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"
    make_hold(client, bob, slot)


def test_cancel_unconfirmed_hold_returns_409(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    assert_problem(_post(client, hold, "cancel", alice), 409, "HOLD_NOT_CONFIRMED")
    assert client.get(f"/holds/{hold}", headers=alice.auth).json()["status"] == "HOLD"


def test_cancel_after_slot_started_returns_409(client: TestClient) -> None:
    alice, start = make_user(client), datetime(2030, 1, 2, 10, tzinfo=UTC)
    with freeze_time(start - timedelta(minutes=2)) as clock:
        hold = make_hold(client, alice, make_slot(client, start=start))["hold_id"]
        assert _post(client, hold, "confirm", alice).status_code == 200
        clock.tick(120)
        assert_problem(_post(client, hold, "cancel", alice), 409, "SLOT_STARTED")


def test_cancel_another_users_or_unknown_booking_is_refused(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    assert _post(client, hold, "confirm", alice).status_code == 200
    assert_problem(_post(client, hold, "cancel", bob), 403, "NOT_HOLD_OWNER")
    assert_problem(_post(client, UNKNOWN, "cancel", alice), 404, "HOLD_NOT_FOUND")
    assert client.get(f"/holds/{hold}", headers=alice.auth).json()["status"] == "CONFIRMED"


def test_hold_actions_without_a_token_return_401_and_with_a_bad_id_422(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    for action in ("confirm", "release", "extend", "cancel"):
        assert_problem(client.post(f"/holds/{hold}/{action}"), 401, "MISSING_TOKEN")
    assert_problem(client.get(f"/holds/{hold}"), 401, "MISSING_TOKEN")
    assert_problem(client.post("/holds/not-a-uuid/confirm", headers=alice.auth), 422, "VALIDATION_ERROR")


# --- expiry: both sides of expires_at ---------------------------------------------------------------


def test_hold_is_live_one_second_before_expires_at_and_gone_at_it(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time(NOW) as clock:
        slot = make_slot(client)
        hold = make_hold(client, alice, slot)
        expires_at = parse_time(hold["expires_at"])
        assert expires_at == NOW + timedelta(seconds=TTL)

        clock.move_to(expires_at - timedelta(seconds=1))
        mine = client.get(f"/slots/{slot}", headers=alice.auth).json()
        assert mine["status"] == "HELD_BY_ME" and mine["hold_id"] == hold["hold_id"]
        assert slot_status(client, slot, bob) == "HELD_BY_OTHER"
        assert slot_status(client, slot) == "HELD_BY_OTHER"
        assert hold_status(client, hold["hold_id"], alice) == "HOLD"
        assert_problem(client.post("/holds", json={"slot_id": slot}, headers=bob.auth), 409, "SLOT_UNAVAILABLE")

        clock.move_to(expires_at)
        mine = client.get(f"/slots/{slot}", headers=alice.auth).json()
        assert mine["status"] == "AVAILABLE" and mine["hold_id"] is None and mine["expires_at"] is None
        assert slot_status(client, slot, bob) == "AVAILABLE"
        assert slot_status(client, slot) == "AVAILABLE"
        assert hold_status(client, hold["hold_id"], alice) == "EXPIRED"


def test_confirm_one_second_before_expiry_returns_200(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time(NOW) as clock:
        hold = make_hold(client, alice, make_slot(client))
        clock.tick(TTL - 1)
        response = client.post(f"/holds/{hold['hold_id']}/confirm", headers=alice.auth)
    assert response.status_code == 200, response.text
    assert response.json()["confirmed_at"] == "2030-01-01T12:04:59Z"


@pytest.mark.parametrize("after", [0, 1])
def test_confirm_expired_hold_returns_410_with_contract_detail(client: TestClient, after: int) -> None:
    alice = make_user(client)
    with freeze_time(NOW) as clock:
        hold = make_hold(client, alice, make_slot(client))
        clock.tick(TTL + after)
        body = assert_problem(client.post(f"/holds/{hold['hold_id']}/confirm", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert hold_status(client, hold["hold_id"], alice) == "EXPIRED"
    assert body["detail"] == CONFIRM_GONE


def test_after_expiry_second_user_holds_and_first_can_neither_confirm_nor_extend(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    with freeze_time(NOW) as clock:
        slot = make_slot(client)
        first = make_hold(client, alice, slot)["hold_id"]
        clock.tick(TTL + 1)
        second = make_hold(client, bob, slot)

        confirm = assert_problem(client.post(f"/holds/{first}/confirm", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert confirm["detail"] == CONFIRM_GONE
        assert_problem(client.post(f"/holds/{first}/extend", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert_problem(client.post(f"/holds/{first}/release", headers=alice.auth), 410, "HOLD_EXPIRED")
        assert_problem(client.post("/holds", json={"slot_id": slot}, headers=alice.auth), 409, "SLOT_UNAVAILABLE")

        # Bob's hold is untouched by alice's attempts and still his to confirm.
        assert hold_status(client, first, alice) == "EXPIRED"
        assert hold_status(client, second["hold_id"], bob) == "HOLD"
        assert slot_status(client, slot, bob) == "HELD_BY_ME"
        assert slot_status(client, slot, alice) == "HELD_BY_OTHER"
        assert client.post(f"/holds/{second['hold_id']}/confirm", headers=bob.auth).status_code == 200
        assert slot_status(client, slot, alice) == "BOOKED"


@pytest.mark.parametrize("microseconds", [0, 1, 654321])
@pytest.mark.parametrize("confirmed", [False, True])
@pytest.mark.parametrize("stored_status", ["HOLD", "CONFIRMED", "RELEASED", "EXPIRED"])
def test_a_hold_is_encoded_once_as_the_bytes_of_its_response_model(
    microseconds: int, confirmed: bool, stored_status: str
) -> None:
    from types import SimpleNamespace

    import booking
    from routers import json_response
    from schemas import HoldRead, HoldStatus

    at = datetime(2031, 5, 3, 12, 0, 0, microseconds, tzinfo=UTC)
    row = SimpleNamespace(
        id=uuid.uuid4(),
        slot_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        status=HoldStatus(stored_status),
        expires_at=at + timedelta(minutes=5),
        confirmed_at=at + timedelta(seconds=90) if confirmed else None,
        extension_count=1,
        created_date=at,
        last_updated_date=at + timedelta(seconds=1, microseconds=microseconds),
    )
    settings = Settings(seed_demo_data=False)
    for now in (at, at + timedelta(hours=1)):  # before and after its expiry: the derived status differs
        fields = booking.hold_fields(row, now, settings)
        model = HoldRead.model_validate(fields)
        assert bytes(json_response(fields).body) == HoldRead.__pydantic_serializer__.to_json(model)
        assert bytes(json_response(fields).body) == model.model_dump_json().encode()


def test_the_plain_hold_fields_mirror_the_response_model_name_for_name_and_type_for_type() -> None:
    # HoldReadFields is encoded in HoldRead's place (the same JSON, without validating again):
    # a field added to one and not the other would change the response silently.
    from typing import get_type_hints

    from schemas import HoldRead, HoldReadFields

    model = {name: field.annotation for name, field in HoldRead.model_fields.items()}
    assert list(get_type_hints(HoldReadFields).items()) == list(model.items())
