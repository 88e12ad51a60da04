"""Idempotency-Key: a retried POST changes nothing more and gets the first answer again."""

import hashlib
import re
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

import idempotency
from models import Hold, SlotEvent, User
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ADMIN, ADMIN_TOKEN, assert_problem, make_hold, make_slot, make_user
from tests.race import http_racers
from tests.server import running_server, seed_over_http


def _count(client: TestClient, table: type) -> int:
    with Session(client.app.state.db.engine) as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(table)) or 0


def _replays(client: TestClient) -> float:
    """The replay counter of /metrics (process-wide: compare before and after)."""
    found = re.search(r"^booking_idempotent_replays_total (\S+)$", client.get("/metrics").text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def _key(value: str | bytes) -> dict[str, Any]:
    return {"Idempotency-Key": value}


def test_a_repeat_returns_the_first_response_and_changes_nothing(client: TestClient) -> None:
    alice = make_user(client)
    slot = make_slot(client)
    headers = {**alice.auth, **_key("hold-1")}
    first = client.post("/holds", json={"slot_id": slot}, headers=headers)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    events, replays_before = _count(client, SlotEvent), _replays(client)
    again = client.post("/holds", json={"slot_id": slot}, headers=headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert _count(client, Hold) == 1 and _count(client, SlotEvent) == events
    assert _replays(client) == replays_before + 1


def test_json_spacing_and_key_order_do_not_make_another_request(client: TestClient) -> None:
    alice = make_user(client)
    slot = make_slot(client)
    headers = {**alice.auth, **_key("k"), "content-type": "application/json"}
    first = client.post("/holds", content=f'{{"slot_id": "{slot}", "user_id": "{alice.id}"}}', headers=headers)
    again = client.post("/holds", content=f'{{ "user_id":"{alice.id}","slot_id":"{slot}" }}', headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"


def test_the_same_key_for_another_body_or_path_is_422_reused(client: TestClient) -> None:
    alice = make_user(client)
    slot, other = make_slot(client), make_slot(client)
    hold = client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, **_key("k")}).json()["hold_id"]
    assert_problem(
        client.post("/holds", json={"slot_id": other}, headers={**alice.auth, **_key("k")}),
        422,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert_problem(
        client.post(f"/holds/{hold}/confirm", headers={**alice.auth, **_key("k")}), 422, "IDEMPOTENCY_KEY_REUSED"
    )
    assert _count(client, Hold) == 1


def test_keys_belong_to_their_user(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    first = client.post("/holds", json={"slot_id": make_slot(client)}, headers={**alice.auth, **_key("k")})
    second = client.post("/holds", json={"slot_id": make_slot(client)}, headers={**bob.auth, **_key("k")})
    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["user_id"] == bob.id


@pytest.mark.parametrize("key", [b"", b"x" * 256, "caf\u00e9".encode("latin-1"), b"tab\there", b"del\x7f"])
def test_a_malformed_key_is_400(client: TestClient, key: bytes) -> None:
    alice = make_user(client)
    response = client.post("/holds", json={"slot_id": make_slot(client)}, headers={**alice.auth, **_key(key)})
    assert_problem(response, 400, "INVALID_IDEMPOTENCY_KEY")
    assert _count(client, Hold) == 0


def test_a_refused_request_is_not_kept_so_its_retry_runs_again(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    slot = make_slot(client)
    bobs = make_hold(client, bob, slot)["hold_id"]
    headers = {**alice.auth, **_key("retry-me")}
    assert_problem(client.post("/holds", json={"slot_id": slot}, headers=headers), 409, "SLOT_UNAVAILABLE")
    client.post(f"/holds/{bobs}/release", headers=bob.auth)
    retried = client.post("/holds", json={"slot_id": slot}, headers=headers)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers


def test_a_key_is_forgotten_after_its_ttl(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        slot = make_slot(client, start=None)
        hold = make_hold(client, alice, slot)["hold_id"]
        headers = {**alice.auth, **_key("extend")}
        assert client.post(f"/holds/{hold}/extend", headers=headers).status_code == 200
        clock.tick(60)
        assert client.post(f"/holds/{hold}/extend", headers=headers).headers["Idempotent-Replayed"] == "true"
        clock.tick(timedelta(days=1))
        assert_problem(client.post(f"/holds/{hold}/extend", headers=headers), 410, "HOLD_EXPIRED")


def test_every_hold_action_replays(client: TestClient) -> None:
    alice = make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    for action in ("extend", "confirm", "cancel"):
        headers = {**alice.auth, **_key(action)}
        first = client.post(f"/holds/{hold}/{action}", headers=headers)
        again = client.post(f"/holds/{hold}/{action}", headers=headers)
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    # A replayed extend did not use a second extension.
    assert client.get(f"/holds/{hold}", headers=alice.auth).json()["extensions_used"] == 1


def test_an_anonymous_sign_up_retried_creates_one_user(client: TestClient) -> None:
    body = {"name": "Carol", "handle": "carol"}
    first = client.post("/users", json=body, headers=_key("signup-1"))
    again = client.post("/users", json=body, headers=_key("signup-1"))
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert _count(client, User) == 1


def test_admin_posts_replay(client: TestClient) -> None:
    headers = {**ADMIN, **_key("room-1")}
    first = client.post("/rooms", json={"name": "Lab", "capacity": 2}, headers=headers)
    again = client.post("/rooms", json={"name": "Lab", "capacity": 2}, headers=headers)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()


def test_a_crash_before_commit_leaves_neither_the_change_nor_the_key(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_user(client)
    slot = make_slot(client)
    finish = idempotency.Claim.finish

    def crash_before_commit(self: idempotency.Claim, session: Session, status_code: int, body: str) -> None:
        session.commit = lambda: (_ for _ in ()).throw(RuntimeError("killed"))  # type: ignore[method-assign]
        finish(self, session, status_code, body)

    monkeypatch.setattr(idempotency.Claim, "finish", crash_before_commit)
    with pytest.raises(RuntimeError):
        client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, **_key("k")})
    monkeypatch.undo()
    assert _count(client, Hold) == 0
    with Session(client.app.state.db.engine) as session:  # type: ignore[attr-defined]
        assert idempotency.count(session) == 0
    assert client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, **_key("k")}).status_code == 201


def test_a_twin_still_running_is_409_in_use_on_postgres(postgres_engine: Engine) -> None:
    from main import create_app
    from tests.factories import isolated_settings

    empty_postgres(postgres_engine)
    with TestClient(create_app(isolated_settings(database_url=POSTGRES_URL))) as client:
        alice = make_user(client)
        slot = make_slot(client)
        digest = hashlib.sha256(f"{alice.id}\nbusy".encode()).digest()
        lock_id = int.from_bytes(digest[:8], "big", signed=True)
        held, release = threading.Event(), threading.Event()

        def twin() -> None:  # holds the key's lock as a running twin would
            with postgres_engine.connect() as conn, conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
                held.set()
                release.wait(10)

        thread = threading.Thread(target=twin)
        thread.start()
        held.wait(10)
        try:
            response = client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, **_key("busy")})
            assert_problem(response, 409, "IDEMPOTENCY_KEY_IN_USE")
        finally:
            release.set()
            thread.join(10)
        assert _count(client, Hold) == 0


@pytest.mark.slow
def test_twenty_concurrent_repeats_on_two_postgres_workers_make_one_change(postgres_engine: Engine) -> None:
    empty_postgres(postgres_engine)
    env = {"DATABASE_URL": POSTGRES_URL, "ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false"}
    with running_server(env, workers=2) as base_url:
        for round_ in range(3):
            (user,), (slot,) = seed_over_http(base_url, ADMIN_TOKEN, users=1, slots=1)
            headers = {**user, **_key(f"race-{round_}")}
            with http_racers(base_url, 20) as racers:
                responses = racers.race(
                    [lambda c, h=headers, s=slot: c.post("/holds", json={"slot_id": s}, headers=h)] * 20
                )
            codes = Counter(r.status_code for r in responses)
            assert set(codes) <= {201, 409}, codes
            created = [r.json() for r in responses if r.status_code == 201]
            assert created and all(body == created[0] for body in created), created
            assert {r.json()["code"] for r in responses if r.status_code == 409} <= {"IDEMPOTENCY_KEY_IN_USE"}
            holds = httpx.get(f"{base_url}/holds", headers=user).json()["items"]
            assert [h["hold_id"] for h in holds] == [created[0]["hold_id"]]


def test_an_expired_key_is_free_for_a_new_request(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time("2030-01-01T12:00:00Z") as clock:
        later = datetime(2030, 1, 5, 9, tzinfo=UTC)
        first, second = make_slot(client, start=later), make_slot(client, start=later + timedelta(hours=2))
        headers = {**alice.auth, **_key("reused-next-day")}
        assert client.post("/holds", json={"slot_id": first}, headers=headers).status_code == 201
        clock.tick(timedelta(days=1, seconds=1))
        again = client.post("/holds", json={"slot_id": second}, headers=headers)
    assert again.status_code == 201, again.text  # not 422 REUSED, not a unique-key 409
    assert "Idempotent-Replayed" not in again.headers and again.json()["slot_id"] == second
