"""GET /slots/stream against a real uvicorn process: snapshot, changes, lapses, resume, heartbeat, SIGTERM.

Most tests share one single-worker server on a SQLite file (HOLD_TTL_SECONDS=2, heartbeat every
0.3 s); each test works in rooms of its own. The random-mix property runs on a server with
HOLD_TTL_SECONDS=1, so holds lapse while clients are connected and while they are away.
"""

import random
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, func, select, update

from bench.server import Server
from db import normalise_url
from models import SlotEvent, TimeSlot
from tests.factories import ADMIN, ADMIN_TOKEN, assert_problem
from tests.server import UNLIMITED, running_server
from tests.sse import COMMENT, END, Follower, SseEvent, SseStream, list_all_slots

pytestmark = pytest.mark.slow

TTL = 2


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Api:
    """A running server, with the few calls these tests make."""

    base_url: str
    database_url: str
    client: httpx.Client

    def user(self) -> tuple[str, dict[str, str]]:
        response = self.client.post("/users", json={"name": "Viewer", "handle": f"v_{uuid.uuid4().hex[:16]}"})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], {"Authorization": f"Bearer {body['token']}"}

    def room(self) -> str:
        response = self.client.post("/rooms", json={"name": f"Live {uuid.uuid4().hex}", "capacity": 2}, headers=ADMIN)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def slot(self, room_id: str, start: datetime, hours: float = 1) -> httpx.Response:
        body = {"start_time": start.isoformat(), "end_time": (start + timedelta(hours=hours)).isoformat()}
        return self.client.post(f"/rooms/{room_id}/slots", json=body, headers=ADMIN)

    def slots(self, room_id: str, start: datetime, count: int) -> list[str]:
        ids = []
        for i in range(count):
            response = self.slot(room_id, start + timedelta(hours=i))
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        return ids

    def hold(self, headers: dict[str, str], slot_id: str) -> dict[str, Any]:
        response = self.client.post("/holds", json={"slot_id": slot_id}, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()

    def act(self, headers: dict[str, str], hold_id: str, action: str) -> dict[str, Any]:
        response = self.client.post(f"/holds/{hold_id}/{action}", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    def listing(self, params: dict[str, str], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return list_all_slots(self.client, params, headers)


def tomorrow() -> datetime:
    """A start hour a day ahead, at a random offset so rooms' ranges differ between tests."""
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    return base + timedelta(hours=random.randrange(0, 24 * 20))


def server_env(database_url: str, **settings: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "HOLD_TTL_SECONDS": str(TTL),
        "HOLD_MAX_EXTENSIONS": "1",
        "STREAM_HEARTBEAT_SECONDS": "0.3",
        **settings,
    }


@contextmanager
def serving(tmp_path: Path, **settings: str) -> Iterator[Api]:
    """A single-worker server on a new SQLite file, and a client for it."""
    database_url = f"sqlite:///{tmp_path}/live.db"
    with (
        running_server(server_env(database_url, **settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
    ):
        yield Api(base_url, database_url, client)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(tmp_path_factory.mktemp("live")) as server:
        yield server


def wait_until_equal(follower: Follower, api: Api, params: dict[str, str], headers: dict | None, timeout: float = 2.0):
    """Pump the follower until its board equals GET /slots for the same caller and range."""
    deadline = time.monotonic() + timeout
    while True:
        follower.pump()
        expected = api.listing(params, headers)
        if follower.board.items() == expected:
            return expected
        if time.monotonic() > deadline:
            shown, truth = follower.board.slots, {item["id"]: item for item in expected}
            differ = {key: (shown.get(key), truth.get(key)) for key in shown.keys() | truth.keys()}
            differ = {key: pair for key, pair in differ.items() if pair[0] != pair[1]}
            raise AssertionError(f"board != GET /slots for {follower.headers or 'anonymous'}: (shown, listed) {differ}")
        time.sleep(0.05)


def is_slot(slot_id: str, status: str | None = None):
    def match(event: SseEvent) -> bool:
        return (
            event.kind == "slot" and event.data["id"] == slot_id and (status is None or event.data["status"] == status)
        )

    return match


# --- snapshot and per-change events ------------------------------------------------------------


def test_snapshot_then_one_event_per_change_as_each_caller_sees_it(api: Api) -> None:
    (alice_id, alice), (bob_id, bob) = api.user(), api.user()
    room, start = api.room(), tomorrow()
    slots = api.slots(room, start, 4)
    late = api.slots(room, start + timedelta(hours=10), 1)[0]  # in the room, after the range
    params = {"room_id": room, "from": start.isoformat(), "to": (start + timedelta(hours=6)).isoformat()}
    before = api.hold(alice, slots[0])  # held before anyone subscribes

    viewers = {"anonymous": None, "alice": alice, "bob": bob}
    followers = {name: Follower(api.base_url, params, headers) for name, headers in viewers.items()}
    try:
        for name, follower in followers.items():
            follower.connect()
            assert follower.stream is not None
            assert follower.stream.response_headers["content-type"].startswith("text/event-stream")
            first = follower.stream.next(5)
            follower.board.apply(first)
            follower.connections[-1][1].append(first)
            follower.last_id = first.id
            assert first.kind == "snapshot" and first.id is not None and first.id.isdigit()
            # The snapshot is GET /slots for this caller and range, unpaginated.
            assert first.data["items"] == api.listing(params, viewers[name]), name

        snap = followers["anonymous"].board.slots
        assert snap[slots[0]]["status"] == "HELD_BY_OTHER" and snap[slots[0]]["hold_id"] is None
        assert snap[slots[0]]["held_until"] == before["expires_at"]
        mine = followers["alice"].board.slots[slots[0]]
        assert (mine["status"], mine["hold_id"], mine["expires_at"]) == (
            "HELD_BY_ME",
            before["hold_id"],
            before["expires_at"],
        )

        bobs = api.hold(bob, slots[1])
        api.act(alice, before["hold_id"], "confirm")
        created = api.slot(room, start + timedelta(hours=5))
        assert created.status_code == 201
        new_slot = created.json()["id"]
        assert api.client.delete(f"/slots/{slots[3]}", headers=ADMIN).status_code == 204
        assert api.client.delete(f"/slots/{late}", headers=ADMIN).status_code == 204  # out of range: no event

        for name, follower in followers.items():
            headers = viewers[name]
            held = follower.wait_for(is_slot(slots[1], None), 2)
            assert held.data == api.client.get(f"/slots/{slots[1]}", headers=headers or {}).json(), name
            booked = follower.wait_for(is_slot(slots[0], "BOOKED"), 2)
            assert booked.data["hold_id"] == (before["hold_id"] if name == "alice" else None), name
            follower.wait_for(is_slot(new_slot, "AVAILABLE"), 2)
            deleted = follower.wait_for(lambda e: e.kind == "slot_deleted", 2)
            assert deleted.data == {"id": slots[3]}
            wait_until_equal(follower, api, params, headers)
            events = follower.connections[-1][1]
            assert all(e.kind != "slot_deleted" or e.data["id"] != late for e in events)
            positions = [e.position for e in events]
            assert positions == sorted(set(positions)), positions  # one event per change, in order

        assert followers["bob"].board.slots[slots[1]]["status"] == "HELD_BY_ME"
        assert followers["bob"].board.slots[slots[1]]["hold_id"] == bobs["hold_id"]
        other = followers["alice"].board.slots[slots[1]]
        assert (other["status"], other["hold_id"], other["expires_at"]) == ("HELD_BY_OTHER", None, None)
        assert other["held_until"] == bobs["expires_at"]
        # Another user's hold id and user id never reach anyone's stream.
        secrets = {
            "anonymous": {before["hold_id"], bobs["hold_id"], alice_id, bob_id},
            "alice": {bobs["hold_id"], bob_id, alice_id},
            "bob": {before["hold_id"], alice_id, bob_id},
        }
        for name, follower in followers.items():
            text_seen = "".join(e.raw for e in follower.connections[-1][1])
            assert not [secret for secret in secrets[name] if secret in text_seen], name
    finally:
        for follower in followers.values():
            if follower.connected:
                follower.disconnect()


def test_a_range_over_a_thousand_slots_is_refused(api: Api) -> None:
    room, start = api.room(), tomorrow() + timedelta(days=400)
    engine = create_engine(normalise_url(api.database_url))
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "room_id": uuid.UUID(room),
            "start_time": start + timedelta(minutes=i),
            "end_time": start + timedelta(minutes=i + 1),
            "created_date": now,
            "last_updated_date": now,
        }
        for i in range(1001)
    ]
    with engine.begin() as conn:
        conn.execute(TimeSlot.__table__.insert(), rows[:1000])
    params = {"room_id": room}
    with SseStream(api.base_url, params=params) as stream:
        snapshot = stream.next(5)
        assert snapshot.kind == "snapshot" and len(snapshot.data["items"]) == 1000
    with engine.begin() as conn:
        conn.execute(TimeSlot.__table__.insert(), rows[1000:])
    engine.dispose()
    response = api.client.get("/slots/stream", params=params)
    assert_problem(response, 422, "RANGE_TOO_LARGE")
    # A narrower range of the same room is fine.
    narrow = {**params, "to": (start + timedelta(minutes=10)).isoformat()}
    with SseStream(api.base_url, params=narrow) as stream:
        assert len(stream.next(5).data["items"]) == 10


def test_unknown_room_is_a_404_before_any_byte(api: Api) -> None:
    assert_problem(api.client.get("/slots/stream", params={"room_id": str(uuid.uuid4())}), 404, "ROOM_NOT_FOUND")


# --- lazy expiry ----------------------------------------------------------------------------------


def test_a_lapsed_hold_reaches_every_subscriber_within_a_second_and_an_extension_moves_it(api: Api) -> None:
    (_, alice), (_, bob) = api.user(), api.user()
    room, start = api.room(), tomorrow()
    slot_a, slot_b = api.slots(room, start, 2)
    params = {"room_id": room, "from": start.isoformat()}
    streams = [SseStream(api.base_url, params=params, headers=h) for h in ({}, alice, bob)]
    try:
        for stream in streams:
            assert stream.next(5).kind == "snapshot"
        plain = api.hold(alice, slot_a)  # left to lapse
        extended = api.hold(alice, slot_b)
        time.sleep(TTL / 2)
        moved = api.act(alice, extended["hold_id"], "extend")
        assert parse_time(moved["expires_at"]) > parse_time(extended["expires_at"])
        ends = {slot_a: parse_time(plain["expires_at"]), slot_b: parse_time(moved["expires_at"])}
        for stream in streams:
            moved_event = stream.wait_for(lambda e: e.kind == "slot" and e.data["held_until"] == moved["expires_at"], 2)
            assert moved_event.data["id"] == slot_b
            for slot_id, end in ends.items():
                free = stream.wait_for(is_slot(slot_id, "AVAILABLE"), TTL + 2)
                # Lazy expiry writes nothing, yet the stream says so within a second of the end.
                assert end <= free.wall + 0.05 and free.wall - end < 1.0, (slot_id, free.wall - end)
            # Nothing between: the slot did not flip to AVAILABLE at the original end.
            flips = [e for e in stream.events if e.kind == "slot" and e.data["status"] == "AVAILABLE"]
            assert [e.data["id"] for e in flips] == [slot_a, slot_b]
    finally:
        for stream in streams:
            stream.close()
    with httpx.Client(base_url=api.base_url) as client:
        assert {item["status"] for item in list_all_slots(client, params)} == {"AVAILABLE"}


# --- resume -----------------------------------------------------------------------------------


def test_resume_sends_the_changes_since_last_event_id_and_the_lapses_no_snapshot(api: Api) -> None:
    (_, alice), (_, bob) = api.user(), api.user()
    room, start = api.room(), tomorrow()
    slots = api.slots(room, start, 3)
    params = {"room_id": room, "from": start.isoformat()}
    follower = Follower(api.base_url, params, bob)
    follower.connect()
    lapsing = api.hold(alice, slots[0])
    follower.wait_for(is_slot(slots[0], "HELD_BY_OTHER"), 2)
    follower.disconnect()
    seen = follower.last_id
    assert seen is not None

    booked = api.hold(alice, slots[1])
    api.act(alice, booked["hold_id"], "confirm")
    api.act(bob, api.hold(bob, slots[2])["hold_id"], "release")
    time.sleep(max(parse_time(lapsing["expires_at"]) - time.time(), 0) + 0.2)  # the hold lapses while away

    follower.connect()
    events = follower.pump(wait=0.5)
    assert events and "snapshot" not in [e.kind for e in events], events
    assert all(e.position > int(seen) for e in events if e.kind != "slot" or e.data["status"] != "AVAILABLE")
    assert all(e.position >= int(seen) for e in events)
    got = {e.data["id"]: e.data["status"] for e in events}
    assert got == {slots[0]: "AVAILABLE", slots[1]: "BOOKED", slots[2]: "AVAILABLE"}, events
    positions = [e.position for e in events]
    assert positions == sorted(positions)
    wait_until_equal(follower, api, params, bob)
    follower.disconnect()


def test_resume_from_the_head_sends_nothing_until_a_change(api: Api) -> None:
    (_, alice) = api.user()
    room, start = api.room(), tomorrow()
    (slot,) = api.slots(room, start, 1)
    params = {"room_id": room, "from": start.isoformat()}
    with SseStream(api.base_url, params=params) as first:
        head = first.next(5).id
    with SseStream(api.base_url, params=params, last_event_id=head) as resumed:
        assert [e.kind for e in resumed.drain(wait=0.7) if e.kind != COMMENT] == []
        api.hold(alice, slot)
        assert resumed.wait_for(lambda e: e.kind != COMMENT, 2).kind == "slot"


@pytest.mark.parametrize("last_event_id", ["999999999", "not-a-position", "-1", ""])
def test_an_unknown_position_gets_a_snapshot(api: Api, last_event_id: str) -> None:
    room = api.room()
    with SseStream(api.base_url, params={"room_id": room}, last_event_id=last_event_id) as stream:
        event = stream.next(5)
        assert event.kind == "snapshot" and event.data == {"items": []}


def test_a_pruned_position_gets_a_snapshot(tmp_path: Path) -> None:
    with serving(tmp_path, EVENT_RETENTION_SECONDS="60") as api:
        (_, alice) = api.user()
        room, start = api.room(), tomorrow()
        slots = api.slots(room, start, 3)
        params = {"room_id": room, "from": start.isoformat()}
        with SseStream(api.base_url, params=params) as stream:
            old = stream.next(5).position
        api.act(alice, api.hold(alice, slots[0])["hold_id"], "release")  # changes after `old`...
        engine = create_engine(normalise_url(api.database_url))
        with engine.begin() as conn:  # ...then every event so far is past the retention
            conn.execute(update(SlotEvent).values(occurred_at=datetime.now(UTC) - timedelta(hours=1)))
        for slot in slots:  # each write prunes a few of the oldest events
            api.hold(alice, slot)
        with engine.connect() as conn:
            oldest = conn.scalar(select(func.min(SlotEvent.position)))
        engine.dispose()
        assert oldest > old + 1, "the writes did not prune the log past the old position"
        with SseStream(api.base_url, params=params, last_event_id=old) as stream:
            snapshot = stream.next(5)
            assert snapshot.kind == "snapshot"
            assert snapshot.data["items"] == api.listing(params)


# --- the random-mix property ------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_lapse_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(tmp_path_factory.mktemp("lapse"), HOLD_TTL_SECONDS="1") as server:
        yield server


@pytest.mark.parametrize("seed", [7])
def test_a_resuming_client_holds_what_get_slots_returns(quick_lapse_api: Api, seed: int) -> None:
    api, rng = quick_lapse_api, random.Random(seed)
    users = [api.user() for _ in range(3)]
    room, start = api.room(), tomorrow()
    hours = list(range(12))
    slots: dict[int, str] = {h: api.slot(room, start + timedelta(hours=h)).json()["id"] for h in hours[:8]}
    holds: list[tuple[int, str]] = []  # (user index, hold id)
    ranged = {
        "room_id": room,
        "from": (start + timedelta(hours=1)).isoformat(),
        "to": (start + timedelta(hours=10)).isoformat(),
    }
    followers = [
        Follower(api.base_url, ranged, None),
        Follower(api.base_url, ranged, users[0][1]),
        Follower(api.base_url, {"room_id": room, "from": start.isoformat()}, users[1][1]),
    ]
    for follower in followers:
        follower.connect()

    def act() -> None:
        roll = rng.random()
        user = rng.randrange(len(users))
        if roll < 0.3 and slots:
            response = api.client.post(
                "/holds", json={"slot_id": rng.choice(list(slots.values()))}, headers=users[user][1]
            )
            if response.status_code == 201:
                holds.append((user, response.json()["hold_id"]))
        elif roll < 0.6 and holds:
            owner, hold = rng.choice(holds)
            action = rng.choice(["confirm", "release", "extend", "cancel", "confirm"])
            api.client.post(f"/holds/{hold}/{action}", headers=users[owner][1])
        elif roll < 0.7:
            free = [h for h in hours if h not in slots]
            if free:
                hour = rng.choice(free)
                slots[hour] = api.slot(room, start + timedelta(hours=hour)).json()["id"]
        elif roll < 0.78 and slots:
            hour = rng.choice(list(slots))
            if api.client.delete(f"/slots/{slots[hour]}", headers=ADMIN).status_code == 204:
                del slots[hour]
        elif roll < 0.88:
            follower = rng.choice(followers)
            if follower.connected:
                follower.disconnect()
            else:
                follower.connect()
        else:
            present = [f for f in followers if f.connected]
            if present:
                rng.choice(present).disconnect()
            time.sleep(rng.uniform(0.3, 1.1))  # holds lapse, some shown to clients that are away

    def settle_and_compare() -> None:
        for follower in followers:
            if follower.connected and rng.random() < 0.5:
                follower.disconnect()
        time.sleep(1.2)  # every hold (TTL 1 s) lapses, those shown to clients that are away included
        for follower in followers:
            if not follower.connected:
                follower.connect()
        for follower in followers:
            wait_until_equal(follower, api, follower.params, follower.headers)

    for step in range(40):
        act()
        time.sleep(rng.uniform(0, 0.05))
        for follower in followers:
            if follower.connected:
                follower.pump()
        if step == 19:
            settle_and_compare()
    settle_and_compare()
    for follower in followers:
        follower.pump(wait=0.2)
        follower.check_ids()
        follower.disconnect()
    resumes = sum(1 for f in followers for resumed_from, _ in f.connections if resumed_from is not None)
    assert resumes >= 3, "the mix did not exercise resumption"


# --- heartbeat, shutdown, hold history --------------------------------------------------------


def test_an_idle_stream_gets_heartbeat_comments(api: Api) -> None:
    with SseStream(api.base_url, params={"room_id": api.room()}) as stream:
        assert stream.next(5).kind == "snapshot"
        events = stream.drain(wait=1.2)  # STREAM_HEARTBEAT_SECONDS=0.3
    assert [e.kind for e in events] == [COMMENT] * len(events) and len(events) >= 2, events


def test_sigterm_ends_open_streams_cleanly_and_the_server_exits_promptly(tmp_path: Path) -> None:
    env = {**UNLIMITED, **server_env(f"sqlite:///{tmp_path}/term.db", STREAM_HEARTBEAT_SECONDS="15")}
    server = Server(app="main:app", env=env, workers=1, log_path=tmp_path / "uvicorn.log").start("/health")
    try:
        missing = SseStream(server.url, params={"room_id": str(uuid.uuid4())})
        assert missing.status_code == 404
        streams = [SseStream(server.url), SseStream(server.url)]
        for stream in streams:
            assert stream.next(5).kind == "snapshot"
        sent = time.monotonic()
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for stream in streams:
            end = stream.wait_for(lambda e: e.kind == END, 5)
            assert end.at - sent < 3, end
        server.process.wait(timeout=5)
        assert time.monotonic() - sent < 5
        for stream in [missing, *streams]:
            stream.close()
    finally:
        server.stop()
    output = server.log_text()
    assert "Traceback" not in output, output
    # Ended, not cut off: each response was completed (uvicorn logs the ones it had to abandon).
    assert "without completing response" not in output, output


def test_hold_history_lists_the_transitions_for_the_owner_only(api: Api) -> None:
    (_, alice), (_, bob) = api.user(), api.user()
    room, start = api.room(), tomorrow()
    (slot,) = api.slots(room, start, 1)
    with SseStream(api.base_url, params={"room_id": room, "from": start.isoformat()}, headers=alice) as stream:
        assert stream.next(5).kind == "snapshot"
        held = api.hold(alice, slot)
        hold_id = held["hold_id"]
        extended = api.act(alice, hold_id, "extend")
        api.act(alice, hold_id, "confirm")
        api.act(alice, hold_id, "cancel")
        stream.wait_for(is_slot(slot, "AVAILABLE"), 2)
        ids = [e.position for e in stream.events if e.kind == "slot"]

    response = api.client.get(f"/holds/{hold_id}/history", headers=alice)
    assert response.status_code == 200, response.text
    history = response.json()
    assert history["hold_id"] == hold_id
    items = history["items"]
    assert [(i["event"], i["status"]) for i in items] == [
        ("HELD", "HOLD"),
        ("EXTENDED", "HOLD"),
        ("CONFIRMED", "CONFIRMED"),
        ("CANCELLED", "CANCELLED"),
    ]
    assert [i["held_until"] for i in items] == [held["expires_at"], extended["expires_at"], None, None]
    times = [parse_time(i["at"]) for i in items]
    assert times == sorted(times) and abs(times[0] - parse_time(held["created_date"])) < 1
    positions = [i["position"] for i in items]
    assert positions == sorted(set(positions))
    assert set(ids) <= set(positions) and ids[-1] == positions[-1]  # the stream's ids are these positions

    assert_problem(api.client.get(f"/holds/{hold_id}/history", headers=bob), 403, "NOT_HOLD_OWNER")
    assert_problem(api.client.get(f"/holds/{uuid.uuid4()}/history", headers=alice), 404, "HOLD_NOT_FOUND")
    assert api.client.get(f"/holds/{hold_id}/history").status_code == 401
