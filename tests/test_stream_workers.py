"""GET /slots/stream across processes: a change committed by one process reaches streams on another.

Two servers on one database stand for two hosts: on PostgreSQL (woken by NOTIFY; the safety-net
poll is set to 10 s here, so a delivery within a second is NOTIFY's) and on a SQLite file (woken
by its poll). The PostgreSQL "host" A runs two workers. Then eight writer threads race on a few
slots through both servers while subscribers on both watch: none may miss a change.
"""

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
from sqlalchemy import Engine, create_engine, select, text

from db import normalise_url
from models import SlotEvent, TimeSlot
from tests.conftest import POSTGRES_DB
from tests.factories import ADMIN
from tests.server import running_server
from tests.sse import Follower, SseEvent, SseStream
from tests.test_stream import TTL, Api, is_slot, server_env, tomorrow, wait_until_equal

pytestmark = pytest.mark.slow

LIVE_DB = f"{POSTGRES_DB}_live"
DELIVERY_SECONDS = 1.0


@dataclass
class Pair:
    """Two servers on one database: `a` (two workers on PostgreSQL) and `b`."""

    backend: str
    a: Api
    b: Api
    database_url: str


def fresh_postgres(postgres_engine: Engine) -> str:
    admin = create_engine(postgres_engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{LIVE_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{LIVE_DB}"'))
    admin.dispose()  # its pooled connection would otherwise be dropped unclosed (a ResourceWarning)
    return postgres_engine.url.set(database=LIVE_DB).render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=["postgresql", "sqlite-file"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if request.param == "postgresql":
        url = fresh_postgres(request.getfixturevalue("postgres_engine"))
        # The PostgreSQL safety-net poll is 20 x STREAM_POLL_SECONDS: 10 s, so NOTIFY must do the work.
        env, workers = server_env(url, STREAM_POLL_SECONDS="0.5"), 2
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('pair')}/pair.db"
        env, workers = server_env(url), 1
    # One after the other: the first applies the migrations.
    with (
        running_server(env, workers=workers) as a_url,
        running_server(env) as b_url,
        httpx.Client(base_url=a_url, timeout=30) as a,
        httpx.Client(base_url=b_url, timeout=30) as b,
    ):
        yield Pair(request.param, Api(a_url, url, a), Api(b_url, url, b), url)


def arrives(stream: SseStream, predicate, after: float) -> SseEvent:
    """The matching event, which must arrive within DELIVERY_SECONDS of `after` (monotonic)."""
    event = stream.wait_for(predicate, DELIVERY_SECONDS + 2)
    assert event.at - after < DELIVERY_SECONDS, f"delivered after {event.at - after:.2f} s"
    return event


def test_a_change_through_one_server_reaches_streams_on_the_other(pair: Pair) -> None:
    (_, alice) = pair.a.user()
    room, start = pair.a.room(), tomorrow()
    slot_a, slot_b = pair.a.slots(room, start, 2)
    params = {"room_id": room, "from": start.isoformat()}
    # Several streams on each server (on A, with two workers, the kernel spreads them over both).
    on_a = [SseStream(pair.a.base_url, params=params, headers=h) for h in ({}, alice, {}, alice)]
    on_b = [SseStream(pair.b.base_url, params=params, headers=h) for h in ({}, alice)]
    try:
        for stream in on_a + on_b:
            assert stream.next(5).kind == "snapshot"
        for writer, watchers in ((pair.b, on_a), (pair.a, on_b), (pair.a, on_a)):
            hold = writer.hold(alice, slot_a)
            done = time.monotonic()
            for stream in watchers:
                arrives(stream, is_slot(slot_a, None), done)
            writer.act(alice, hold["hold_id"], "release")
            done = time.monotonic()
            for stream in watchers:
                arrives(stream, is_slot(slot_a, "AVAILABLE"), done)
        assert pair.b.client.delete(f"/slots/{slot_b}", headers=ADMIN).status_code == 204
        done = time.monotonic()
        for stream in on_a:
            arrives(stream, lambda e: e.kind == "slot_deleted" and e.data["id"] == slot_b, done)
        created = pair.b.slot(room, start + timedelta(hours=5))
        assert created.status_code == 201, created.text
        done = time.monotonic()
        for stream in on_a:
            arrives(stream, is_slot(created.json()["id"], "AVAILABLE"), done)
    finally:
        for stream in on_a + on_b:
            stream.close()


WRITERS, WRITE_SECONDS, HOT_SLOTS = 8, 3.0, 8


def _writer(
    base_url: str, headers: dict[str, str], slots: list[str], seed: int, deadline: float, statuses: list[int]
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while time.monotonic() < deadline:
            slot = rng.choice(slots)
            response = client.post("/holds", json={"slot_id": slot}, headers=headers)
            statuses.append(response.status_code)
            if response.status_code != 201:
                time.sleep(0.02)
                continue
            hold, roll = response.json()["hold_id"], rng.random()
            if roll < 0.35:
                statuses.append(client.post(f"/holds/{hold}/confirm", headers=headers).status_code)
                if rng.random() < 0.9:
                    statuses.append(client.post(f"/holds/{hold}/cancel", headers=headers).status_code)
            elif roll < 0.8:
                statuses.append(client.post(f"/holds/{hold}/release", headers=headers).status_code)
            elif roll < 0.93:
                statuses.append(client.post(f"/holds/{hold}/extend", headers=headers).status_code)
                if rng.random() < 0.5:
                    statuses.append(client.post(f"/holds/{hold}/release", headers=headers).status_code)
            # else: left to lapse


@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
def test_concurrent_writers_on_two_servers_never_make_a_subscriber_miss_a_change(pair: Pair) -> None:
    users = [pair.a.user() for _ in range(WRITERS)]
    room, start = pair.a.room(), tomorrow()
    hot = pair.a.slots(room, start, HOT_SLOTS + 2)  # two more, out of the writers' way
    params = {"room_id": room, "from": start.isoformat()}
    narrow = {**params, "to": (start + timedelta(hours=3)).isoformat()}
    followers = [
        Follower(pair.a.base_url, params, None),
        Follower(pair.a.base_url, params, users[0][1]),
        Follower(pair.a.base_url, narrow, users[1][1]),
        Follower(pair.b.base_url, params, None),
        Follower(pair.b.base_url, narrow, users[2][1]),
    ]
    for follower in followers:
        follower.connect()
    statuses: list[int] = []
    deadline = time.monotonic() + WRITE_SECONDS
    threads = []
    for index, (_, headers) in enumerate(users):
        base_url = (pair.a if index % 2 else pair.b).base_url
        args = (base_url, headers, hot[:HOT_SLOTS], index, deadline, statuses)
        threads.append(threading.Thread(target=_writer, args=args))
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for follower in followers:
            follower.pump()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=30)
    assert not [code for code in statuses if code >= 500], sorted(set(statuses))
    assert statuses.count(201) > HOT_SLOTS, "too little traffic to mean anything"

    time.sleep(TTL + 0.2)  # every hold left behind lapses
    engine = create_engine(normalise_url(pair.database_url))
    with engine.connect() as conn:
        stmt = select(SlotEvent.position, SlotEvent.slot_id, SlotEvent.occurred_at).where(
            SlotEvent.slot_id.in_([uuid.UUID(slot) for slot in hot])
        )
        log = [(position, str(slot_id), at.timestamp()) for position, slot_id, at in conn.execute(stmt).all()]
    engine.dispose()
    for follower in followers:
        wait_until_equal(follower, follower_api(pair, follower), follower.params, follower.headers)
        follower.check_ids()
        snapshot, *events = follower.connections[0][1]
        assert snapshot.kind == "snapshot"
        # Every change after the snapshot to a slot on this board reached it within a second
        # (as that event or a later one of the same slot: a batch sends each slot's newest).
        late = []
        for position, slot_id, at in log:
            if slot_id not in follower.board.slots or position <= snapshot.position:
                continue
            shown = next((e for e in events if e.data["id"] == slot_id and e.position >= position), None)
            if shown is None or shown.wall - at > DELIVERY_SECONDS:
                late.append((position, slot_id, shown and round(shown.wall - at, 2)))
        assert late == [], f"changes missed or late (position, slot, delay): {late}"
        follower.disconnect()
    print(
        f"writers: {len(statuses)} requests, {statuses.count(201)} holds; events per subscriber:",
        [len(f.connections[0][1]) for f in followers],
    )


def follower_api(pair: Pair, follower: Follower) -> Api:
    return pair.a if follower.base_url == pair.a.base_url else pair.b


@pytest.mark.parametrize("pair", ["postgresql"], indirect=True)
def test_a_change_committed_as_the_first_stream_of_a_process_opens_is_not_lost(pair: Pair) -> None:
    """A process with no stream restarts its log reader at the head when one opens.

    A change committed between the stream's opening read and that restart must still reach the
    stream. To widen the window the reading server has one database connection (its log read
    waits for the opening's) and the stream covers ~900 slots (a slower opening); the write
    lands 5-40 ms after the stream is requested, a sweep across the window.
    """
    (_, alice) = pair.a.user()
    room, start = pair.a.room(), tomorrow()
    *slots, spare = pair.a.slots(room, start, 9)
    engine = create_engine(normalise_url(pair.database_url))
    filler, now = start + timedelta(days=200), datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "room_id": uuid.UUID(room),
            "start_time": filler + timedelta(minutes=i),
            "end_time": filler + timedelta(minutes=i + 1),
            "created_date": now,
            "last_updated_date": now,
        }
        for i in range(900)
    ]
    with engine.begin() as conn:
        conn.execute(TimeSlot.__table__.insert(), rows)
    engine.dispose()
    params = {"room_id": room, "from": start.isoformat()}
    env = server_env(pair.database_url, STREAM_POLL_SECONDS="0.5", DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0")
    missed = []
    with running_server(env) as reader_url:
        for i, slot in enumerate(slots):
            # A change wakes the reader's hub while no stream is open: it forgets its position
            # and will restart at the head when the next stream opens.
            pair.a.act(alice, pair.a.hold(alice, spare)["hold_id"], "release")
            time.sleep(0.1)
            writer = threading.Timer(0.005 * (i + 1), pair.a.hold, args=(alice, slot))
            writer.start()
            with SseStream(reader_url, params=params) as stream:
                snapshot = stream.next(5)
                writer.join()
                events = [e for e in stream.drain(wait=0.5) if e.kind == "slot"]
            shown = {item["id"]: item["status"] for item in snapshot.data["items"]} | {
                e.data["id"]: e.data["status"] for e in events
            }
            if shown[slot] != "HELD_BY_OTHER":
                missed.append((i, snapshot.id))
    assert missed == [], f"holds committed while a first stream opened never reached it: {missed}"
