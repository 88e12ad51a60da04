"""Hoarding: a user's live holds are capped, and a slot a user just let go cannot be re-held at once."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine

from config import Settings
from main import create_app
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import (
    ADMIN_TOKEN,
    TTL,
    assert_problem,
    isolated_settings,
    make_hold,
    make_room,
    make_slot,
    make_user,
    parse_time,
)
from tests.race import http_racers
from tests.server import running_server, seed_over_http

CAP, COOLDOWN = 4, 60


@pytest.fixture
def limited(settings: Settings) -> Iterator[TestClient]:
    """An app with the service's default limits (the suite's other apps switch them off)."""
    defaults = Settings.model_fields
    assert (defaults["hold_max_active_per_user"].default, defaults["hold_rehold_cooldown_seconds"].default) == (
        CAP,
        COOLDOWN,
    )
    limits = {"hold_max_active_per_user": CAP, "hold_rehold_cooldown_seconds": COOLDOWN}
    with TestClient(create_app(settings.model_copy(update=limits))) as client:
        yield client


def _slots(client: TestClient, count: int, start: datetime) -> list[str]:
    room = make_room(client)
    return [make_slot(client, room, start=start + timedelta(hours=i)) for i in range(count)]


START = datetime(2030, 1, 2, 9, tzinfo=UTC)


# --- the cap on live holds ----------------------------------------------------------------------


def test_a_user_past_the_cap_gets_409_hold_limit_reached_with_count_and_first_end(limited: TestClient) -> None:
    alice = make_user(limited)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slots = _slots(limited, CAP + 1, START)
        first = make_hold(limited, alice, slots[0])
        for slot in slots[1:CAP]:
            clock.tick(10)
            make_hold(limited, alice, slot)
        body = assert_problem(
            limited.post("/holds", json={"slot_id": slots[CAP]}, headers=alice.auth), 409, "HOLD_LIMIT_REACHED"
        )
    assert (body["active_holds"], body["limit"]) == (CAP, CAP)
    assert parse_time(body["earliest_ends_at"]) == parse_time(first["expires_at"])


def test_bookings_and_lapsed_holds_do_not_count_toward_the_cap(limited: TestClient) -> None:
    alice = make_user(limited)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slots = _slots(limited, CAP + 2, START)
        holds = [make_hold(limited, alice, slot)["hold_id"] for slot in slots[:CAP]]
        assert limited.post(f"/holds/{holds[0]}/confirm", headers=alice.auth).status_code == 200
        make_hold(limited, alice, slots[CAP])  # the booking freed a place
        assert_problem(
            limited.post("/holds", json={"slot_id": slots[CAP + 1]}, headers=alice.auth), 409, "HOLD_LIMIT_REACHED"
        )
        clock.tick(TTL)  # every hold lapses (lazily: nothing written)
        make_hold(limited, alice, slots[CAP + 1])


def test_the_cap_is_per_user(limited: TestClient) -> None:
    alice, bob = make_user(limited), make_user(limited)
    slots = _slots(limited, CAP + 1, datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))
    for slot in slots[:CAP]:
        make_hold(limited, alice, slot)
    make_hold(limited, bob, slots[CAP])


# --- no re-holding one's own slot at once -------------------------------------------------------


def test_releasing_and_re_holding_waits_out_the_cooldown(limited: TestClient) -> None:
    alice = make_user(limited)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        (slot,) = _slots(limited, 1, START)
        hold = make_hold(limited, alice, slot)["hold_id"]
        limited.post(f"/holds/{hold}/release", headers=alice.auth)
        clock.tick(COOLDOWN - 1)
        response = limited.post("/holds", json={"slot_id": slot}, headers=alice.auth)
        body = assert_problem(response, 409, "HOLD_COOLDOWN")
        assert response.headers["Retry-After"] == "1"
        assert parse_time(body["retry_at"]) == datetime(2030, 1, 1, 12, 1, tzinfo=UTC)
        clock.tick(1)
        make_hold(limited, alice, slot)  # the cooldown is over


def test_another_user_may_hold_a_slot_during_its_cooldown(limited: TestClient) -> None:
    alice, bob = make_user(limited), make_user(limited)
    (slot,) = _slots(limited, 1, datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))
    hold = make_hold(limited, alice, slot)["hold_id"]
    limited.post(f"/holds/{hold}/release", headers=alice.auth)
    make_hold(limited, bob, slot)


@pytest.mark.parametrize("ending", ["lapse", "cancel"])
def test_a_lapsed_or_cancelled_claim_starts_the_cooldown_too(limited: TestClient, ending: str) -> None:
    alice = make_user(limited)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        (slot,) = _slots(limited, 1, START)
        hold = make_hold(limited, alice, slot)["hold_id"]
        if ending == "lapse":
            clock.tick(TTL)  # ended at expires_at
        else:
            limited.post(f"/holds/{hold}/confirm", headers=alice.auth)
            limited.post(f"/holds/{hold}/cancel", headers=alice.auth)
        clock.tick(COOLDOWN - 1)
        assert_problem(limited.post("/holds", json={"slot_id": slot}, headers=alice.auth), 409, "HOLD_COOLDOWN")
        clock.tick(1)
        make_hold(limited, alice, slot)


def test_a_cooldown_of_zero_lets_a_user_re_hold_at_once() -> None:
    with TestClient(create_app(isolated_settings(hold_rehold_cooldown_seconds=0))) as client:
        alice = make_user(client)
        slot = make_slot(client)
        hold = make_hold(client, alice, slot)["hold_id"]
        client.post(f"/holds/{hold}/release", headers=alice.auth)
        make_hold(client, alice, slot)


# --- race-safe across workers ---------------------------------------------------------------------


@pytest.mark.slow
def test_twenty_concurrent_holds_by_one_user_on_two_postgres_workers_give_exactly_the_cap(
    postgres_engine: Engine,
) -> None:
    empty_postgres(postgres_engine)
    env = {
        "DATABASE_URL": POSTGRES_URL,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "HOLD_MAX_ACTIVE_PER_USER": str(CAP),
        "HOLD_REHOLD_COOLDOWN_SECONDS": "0",
    }
    with running_server(env, workers=2) as base_url:
        for _ in range(3):  # three rounds, each a fresh user and fresh slots
            (user,), slots = seed_over_http(base_url, ADMIN_TOKEN, users=1, slots=20)
            with http_racers(base_url, 20) as racers:
                responses = racers.race(
                    [lambda c, s=slot, h=user: c.post("/holds", json={"slot_id": s}, headers=h) for slot in slots]  # type: ignore[misc]
                )
            codes = Counter(r.status_code for r in responses)
            assert codes == {201: CAP, 409: 20 - CAP}, codes
            assert {r.json()["code"] for r in responses if r.status_code == 409} == {"HOLD_LIMIT_REACHED"}
            live = httpx.get(f"{base_url}/holds", params={"status": "HOLD"}, headers=user).json()["items"]
            assert len(live) == CAP
