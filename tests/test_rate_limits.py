"""Rate limits: sign-ups per client address, holds per user; 429 RATE_LIMITED with Retry-After;
an empty setting switches one off; a Redis store shares the counts between workers."""

import uuid
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from config import Settings
from main import create_app
from ratelimit import KEY_PREFIX
from tests.factories import ADMIN_TOKEN, UNKNOWN, assert_problem, isolated_settings, make_slot, make_user
from tests.server import running_server

# Test-only Redis database; only keys under KEY_PREFIX are ever removed from it.
REDIS_URL = "redis://127.0.0.1:6379/3"


def _signup(client: TestClient | httpx.Client) -> httpx.Response:
    return client.post("/users", json={"name": "Sam", "handle": f"s_{uuid.uuid4().hex[:12]}"})


def _assert_rate_limited(response: httpx.Response, limit: str) -> None:
    body = assert_problem(response, 429, "RATE_LIMITED")
    assert body["limit"] == limit
    assert 1 <= int(response.headers["retry-after"]) <= 3600


@pytest.fixture
def limited() -> Iterator[TestClient]:
    settings = isolated_settings(rate_limit_signups="3/hour", rate_limit_holds="2/hour")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_signups_over_the_limit_are_429_with_retry_after(limited: TestClient) -> None:
    assert [_signup(limited).status_code for _ in range(3)] == [201, 201, 201]
    _assert_rate_limited(_signup(limited), "3 per 1 hour")


def test_signups_are_counted_per_client_address(limited: TestClient) -> None:
    for _ in range(3):
        _signup(limited)
    elsewhere = TestClient(limited.app, client=("203.0.113.9", 50000))  # the app is already started
    assert _signup(elsewhere).status_code == 201
    _assert_rate_limited(_signup(limited), "3 per 1 hour")


def test_refused_signups_count_too(limited: TestClient) -> None:
    for _ in range(3):
        limited.post("/users", json={"name": "no handle"})
    _assert_rate_limited(_signup(limited), "3 per 1 hour")


def test_holds_are_limited_per_user_before_any_database_work(limited: TestClient) -> None:
    alice, bob = make_user(limited), make_user(limited)
    room_slots = [make_slot(limited) for _ in range(3)]
    assert limited.post("/holds", json={"slot_id": room_slots[0]}, headers=alice.auth).status_code == 201
    assert_problem(limited.post("/holds", json={"slot_id": UNKNOWN}, headers=alice.auth), 404, "SLOT_NOT_FOUND")
    # Alice's third attempt is refused before the slot is even looked up; Bob has his own count.
    _assert_rate_limited(limited.post("/holds", json={"slot_id": UNKNOWN}, headers=alice.auth), "2 per 1 hour")
    assert limited.post("/holds", json={"slot_id": room_slots[1]}, headers=bob.auth).status_code == 201


def test_anonymous_hold_is_401_not_counted(limited: TestClient) -> None:
    for _ in range(3):
        assert_problem(limited.post("/holds", json={"slot_id": UNKNOWN}), 401, "MISSING_TOKEN")


def test_hold_actions_and_reads_are_not_limited(limited: TestClient) -> None:
    alice = make_user(limited)
    hold = limited.post("/holds", json={"slot_id": make_slot(limited)}, headers=alice.auth).json()
    for _ in range(5):
        assert limited.get(f"/holds/{hold['hold_id']}", headers=alice.auth).status_code == 200
        assert limited.post(f"/holds/{hold['hold_id']}/extend", headers=alice.auth).status_code in (200, 409)


def test_an_empty_setting_switches_a_limit_off() -> None:
    settings = isolated_settings(rate_limit_signups="", rate_limit_holds="1/hour")
    with TestClient(create_app(settings)) as test_client:
        assert {_signup(test_client).status_code for _ in range(25)} == {201}


def test_several_limits_in_one_setting_all_apply() -> None:
    settings = isolated_settings(rate_limit_signups="2/minute;3/hour")
    with TestClient(create_app(settings)) as test_client:
        assert [_signup(test_client).status_code for _ in range(2)] == [201, 201]
        _assert_rate_limited(_signup(test_client), "2 per 1 minute")


def test_defaults_are_20_signups_and_120_holds_a_minute_in_memory() -> None:
    defaults = Settings()
    assert (defaults.rate_limit_signups, defaults.rate_limit_holds) == ("20/minute", "120/minute")
    assert defaults.rate_limit_storage_url == "memory://"


@pytest.mark.parametrize("value", ["20 a minute", "fast", "20/fortnight"])
def test_a_limit_not_in_the_limits_notation_fails_at_start_up(value: str) -> None:
    with pytest.raises(ValidationError):
        isolated_settings(rate_limit_holds=value)


def test_an_unreachable_store_lets_requests_through() -> None:
    settings = isolated_settings(rate_limit_signups="1/hour", rate_limit_storage_url="redis://127.0.0.1:1/3")
    with TestClient(create_app(settings)) as test_client:
        assert [_signup(test_client).status_code for _ in range(2)] == [201, 201]


# --- a shared store across workers ---------------------------------------------------------------


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The test Redis database, without this service's rate-limit keys before and after."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        pytest.skip(f"Redis unavailable at {REDIS_URL}: {exc}")

    def forget() -> None:
        keys = list(client.scan_iter(match=f"{KEY_PREFIX}*"))
        if keys:
            client.delete(*keys)

    forget()
    yield client
    forget()
    client.close()


@pytest.mark.slow
def test_two_workers_share_the_signup_limit_through_redis(redis_db: redis.Redis) -> None:
    env = {
        "DATABASE_URL": "sqlite:///:memory:",  # each worker its own database: only the limit is shared
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "RATE_LIMIT_SIGNUPS": "6/hour",
        "RATE_LIMIT_STORAGE_URL": REDIS_URL,
    }
    with running_server(env, workers=2) as base_url:
        statuses = []
        for _ in range(12):
            # A new connection each time, so the two workers both take some.
            with httpx.Client(base_url=base_url, timeout=10) as http:
                statuses.append(_signup(http).status_code)
    assert statuses == [201] * 6 + [429] * 6
    assert any(key.startswith(KEY_PREFIX.encode()) for key in redis_db.scan_iter(match=f"{KEY_PREFIX}*"))
