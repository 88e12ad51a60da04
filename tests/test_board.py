"""The room boards behind GET /slots (board.py): the same bytes as SQL, current after one position check.

Each guarantee on both backends: pages equal the SQL path's over random states and viewers; a
hold that lapses while the board is kept reads AVAILABLE without any write (frozen clock); a
write answered by one app is in the next listing of another app on the same database; a slot
created or deleted in a kept room appears or disappears; a pruned gap reloads the room.
"""

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import event, text
from sqlalchemy.orm import Session

import board
import booking
import changelog
import live
import rawsql
import stream
import tokens
from board import Boards
from config import Settings
from main import create_app
from schemas import SlotPage, SlotStatus
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ADMIN, TTL, ApiUser, count_runs, isolated_settings, make_hold, make_room, make_user

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
DAY = datetime(2030, 1, 2, tzinfo=UTC)


def _slot_at(client: TestClient, room_id: str, hour: float) -> str:
    start = DAY + timedelta(hours=hour)
    body = {"start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat()}
    response = client.post(f"/rooms/{room_id}/slots", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _boards(client: TestClient) -> Boards:
    boards = client.app.state.boards  # type: ignore[attr-defined]
    assert isinstance(boards, Boards)
    return boards


def _sql_page(client: TestClient, viewer: ApiUser | None, params: dict[str, object]) -> bytes:
    """What the SQL path (booking.list_slots, as before the boards) answers for these parameters."""
    engine = client.app.state.db.engine  # type: ignore[attr-defined]
    cursor = params.get("cursor")
    with Session(engine, expire_on_commit=False) as session:
        page = booking.list_slots(
            session,
            viewer_id=uuid.UUID(viewer.id) if viewer else None,
            room_id=uuid.UUID(str(params["room_id"])),
            start_from=datetime.fromisoformat(str(params["from"])) if "from" in params else None,
            start_to=datetime.fromisoformat(str(params["to"])) if "to" in params else None,
            status=SlotStatus(params["status"]) if "status" in params else None,
            limit=int(str(params.get("limit", 50))),
            cursor=str(cursor) if cursor is not None else None,
        )
    return SlotPage.__pydantic_serializer__.to_json(page)


def _listing(client: TestClient, room_id: str, viewer: ApiUser | None = None, **params: object) -> list[dict]:
    response = client.get("/slots", params={"room_id": room_id, **params}, headers=viewer.auth if viewer else None)
    assert response.status_code == 200, response.text
    items: list[dict] = response.json()["items"]
    return items


def _statuses(client: TestClient, room_id: str, viewer: ApiUser | None = None) -> dict[str, str]:
    return {item["id"]: item["status"] for item in _listing(client, room_id, viewer)}


def _act(client: TestClient, path: str, user: ApiUser) -> None:
    assert client.post(path, headers=user.auth).status_code == 200


@pytest.mark.parametrize("room_slots", [board.ROOM_SLOTS, 4], ids=["whole-room", "cut-board"])
def test_board_pages_equal_the_sql_path_over_random_states(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, room_slots: int
) -> None:
    """Random holds, bookings, releases, cancels and lapses; every viewer, filter and page: the same bytes.

    A cut board (a room with more slots than it keeps) answers what it holds and leaves the rest to SQL.
    """
    monkeypatch.setattr(board, "ROOM_SLOTS", room_slots)
    rng = random.Random(11)
    with freeze_time(NOW) as clock:
        users = [make_user(client) for _ in range(2)]
        room = make_room(client)
        slots = [_slot_at(client, room, hour) for hour in (8, 9, 10, 11, 12, 13, 14, 15.5, 16, 17, 18, 19)]
        compared = 0
        for _round in range(8):
            for slot in rng.sample(slots, 5):
                user = rng.choice(users)
                response = client.post("/holds", json={"slot_id": slot}, headers=user.auth)
                if response.status_code != 201:
                    continue
                hold = response.json()["hold_id"]
                action = rng.choice(["keep", "confirm", "release", "confirm-cancel"])
                if action != "keep":
                    _act(client, f"/holds/{hold}/{action.split('-')[0]}", user)
                if action == "confirm-cancel":
                    _act(client, f"/holds/{hold}/cancel", user)
            # Some holds lapse (no write), some stay live: TTL is 300 s.
            clock.tick(rng.choice([30, 170, 301]))
            for viewer in (None, *users):
                for _query in range(6):
                    params: dict[str, object] = {"room_id": room, "limit": rng.choice([1, 2, 3, 5, 50])}
                    if rng.random() < 0.5:
                        params["from"] = (DAY + timedelta(hours=rng.choice([7, 9, 12.5, 16]))).isoformat()
                    if rng.random() < 0.5:
                        params["to"] = (DAY + timedelta(hours=rng.choice([10, 14, 19, 30]))).isoformat()
                    if rng.random() < 0.3:
                        params["status"] = rng.choice(list(SlotStatus)).value
                    while True:  # every page of the walk, each compared
                        expected = _sql_page(client, viewer, params)
                        response = client.get("/slots", params=params, headers=viewer.auth if viewer else None)
                        assert response.status_code == 200, response.text
                        assert response.content == expected, params
                        assert response.headers["content-type"] == "application/json"
                        compared += 1
                        cursor = response.json()["next_cursor"]
                        if cursor is None:
                            break
                        params["cursor"] = cursor
    assert compared > 150
    assert len(_boards(client)) == 1  # the board answered, not SQL


def test_a_hold_lapsing_while_the_board_is_kept_reads_available_without_a_write(client: TestClient) -> None:
    with freeze_time(NOW) as clock:
        alice, bob = make_user(client), make_user(client)
        room = make_room(client)
        slot = _slot_at(client, room, 10)
        hold = make_hold(client, alice, slot)
        clock.tick(TTL - 1)
        assert _statuses(client, room, bob)[slot] == "HELD_BY_OTHER"
        (mine,) = _listing(client, room, alice)
        assert (mine["status"], mine["hold_id"]) == ("HELD_BY_ME", hold["hold_id"])
        clock.tick(1)
        assert _statuses(client, room, bob)[slot] == "AVAILABLE"
        assert _statuses(client, room)[slot] == "AVAILABLE"
        (mine,) = _listing(client, room, alice)
        assert mine["status"] == "AVAILABLE"
        assert (mine["hold_id"], mine["expires_at"], mine["held_until"]) == (None, None, None)


def test_a_board_reaches_back_a_day_at_most_and_older_ranges_still_answer_from_sql(client: TestClient) -> None:
    alice = make_user(client)
    with freeze_time(NOW - timedelta(days=3)):
        room = make_room(client)
        old = _slot_at(client, room, -48)  # a day before NOW, then in the future
    with freeze_time(NOW):
        new = _slot_at(client, room, 10)
        params = {"room_id": room, "from": (NOW - timedelta(days=2)).isoformat()}
        response = client.get("/slots", params=params, headers=alice.auth)
        assert response.content == _sql_page(client, alice, params)
        assert [item["id"] for item in response.json()["items"]] == [old, new]
        (kept,) = _boards(client)._boards.values()
        assert kept.lower == NOW - board.LOOKBACK
        assert list(_statuses(client, room, alice)) == [new]


def test_a_board_reaches_back_to_an_earlier_from_within_a_day_and_moves_on_with_the_clock(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A board loaded from "now" serves a later request from the viewer's midnight, and a long-lived one keeps up."""
    alice = make_user(client)
    with freeze_time(NOW) as clock:
        room = make_room(client)
        slot = _slot_at(client, room, 10)
        assert list(_statuses(client, room, alice)) == [slot]  # loaded from NOW
        (kept,) = _boards(client)._boards.values()
        assert kept.lower == NOW
        midnight = {"from": NOW.replace(hour=0).isoformat()}
        assert [item["id"] for item in _listing(client, room, alice, **midnight)] == [slot]
        (kept,) = _boards(client)._boards.values()
        assert kept.lower == NOW.replace(hour=0)  # reloaded once, reaching back

        def no_sql(*args: object, **kwargs: object) -> SlotPage:
            raise AssertionError("answered from SQL, not from the board")

        monkeypatch.setattr(booking, "list_slots", no_sql)
        assert [item["id"] for item in _listing(client, room, alice, **midnight)] == [slot]
        clock.tick(timedelta(days=2, seconds=1))  # the bound falls more than two days behind
        later = _slot_at(client, room, 72)
        assert list(_statuses(client, room, alice)) == [later]
        (kept,) = _boards(client)._boards.values()
        assert kept.lower == NOW + timedelta(days=2, seconds=1) - board.LOOKBACK


def test_a_current_board_answers_after_one_fast_head_read_and_nothing_else(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first listing, the next reads the log's head as a fast read: no other statement, no unit of work."""
    alice = make_user(client)
    room = make_room(client)
    _slot_at(client, room, 10)
    _listing(client, room, alice)
    db = client.app.state.db  # type: ignore[attr-defined]
    reads: list[str] = []
    fetch = db.reads.fetch

    async def counted_fetch(statement: rawsql.Statement, params: dict[str, object]) -> object:
        reads.append(statement.compiled(db.engine.dialect).sql)
        return await fetch(statement, params)

    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    monkeypatch.setattr(db.reads, "fetch", counted_fetch)
    runs = count_runs(db, monkeypatch)
    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        assert _statuses(client, room, alice) != {}
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    head_sql = changelog.HEAD.compiled(db.engine.dialect).sql
    assert (reads, runs, statements) == ([head_sql], [], [])


def test_a_board_behind_the_head_takes_the_unit_of_work_and_catches_up(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write after the board was kept: the fast read finds the board behind, and the listing shows the write."""
    alice, bob = make_user(client), make_user(client)
    room = make_room(client)
    slot = _slot_at(client, room, 10)
    assert _statuses(client, room, alice) == {slot: "AVAILABLE"}
    make_hold(client, bob, slot)
    monkeypatch.setattr(tokens, "CACHE_SECONDS", 3600.0)  # no token re-check among the counted requests
    runs = count_runs(client.app.state.db, monkeypatch)  # type: ignore[attr-defined]
    assert _statuses(client, room, alice) == {slot: "HELD_BY_OTHER"}
    assert _statuses(client, room, alice) == {slot: "HELD_BY_OTHER"}
    assert len(runs) == 1  # the first caught the board up; the second was answered by the fast read


@pytest.fixture
def two_apps(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps (two workers, or two hosts) on one database: a SQLite file, or the PostgreSQL test database."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        empty_postgres(request.getfixturevalue("postgres_engine"))
        url = POSTGRES_URL
    settings: Settings = isolated_settings(database_url=url, event_retention_seconds=60)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        yield first, second


def test_a_write_answered_by_one_app_is_in_the_next_listing_of_another(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    alice, bob = make_user(a), make_user(a)
    room = make_room(a)
    slot = _slot_at(a, room, 10)
    assert _statuses(b, room, bob) == {slot: "AVAILABLE"}  # b keeps the room's board
    hold = make_hold(a, alice, slot)["hold_id"]
    assert _statuses(b, room, bob) == {slot: "HELD_BY_OTHER"}
    assert _statuses(b, room, alice) == {slot: "HELD_BY_ME"}
    _act(a, f"/holds/{hold}/confirm", alice)
    assert _statuses(b, room, alice) == {slot: "BOOKED"}
    _act(a, f"/holds/{hold}/cancel", alice)
    assert _statuses(b, room, bob) == {slot: "AVAILABLE"}
    # And back: b's write, a's listing (a kept the board since its last listing? it has none yet).
    assert _statuses(a, room, alice) == {slot: "AVAILABLE"}
    make_hold(b, bob, slot)
    assert _statuses(a, room, alice) == {slot: "HELD_BY_OTHER"}


def test_a_slot_created_or_deleted_in_a_kept_room_appears_or_disappears(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    room = make_room(a)
    first = _slot_at(a, room, 10)
    assert list(_statuses(b, room)) == [first]
    earlier, later = _slot_at(a, room, 8), _slot_at(a, room, 12)
    assert list(_statuses(b, room)) == [earlier, first, later]  # in start order
    assert a.delete(f"/slots/{first}", headers=ADMIN).status_code == 204
    assert list(_statuses(b, room)) == [earlier, later]


@pytest.mark.parametrize("limit", ["CATCH_UP_SLOTS", "CATCH_UP_POSITIONS"])
def test_a_board_far_behind_reloads_the_room(
    two_apps: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    a, b = two_apps
    alice = make_user(a)
    room = make_room(a)
    slots = [_slot_at(a, room, hour) for hour in (9, 10, 11)]
    assert set(_statuses(b, room).values()) == {"AVAILABLE"}
    monkeypatch.setattr(board, limit, 1)
    for slot in slots:
        make_hold(a, alice, slot)
    assert _statuses(b, room, alice) == dict.fromkeys(slots, "HELD_BY_ME")


def test_a_board_whose_gap_was_pruned_reloads_the_room(two_apps: tuple[TestClient, TestClient]) -> None:
    """The events after the board's position are gone (retention): it must not trust what is left."""
    a, b = two_apps
    alice = make_user(a)
    with freeze_time(NOW) as clock:
        room, other = make_room(a), make_room(a)
        slot = _slot_at(a, room, 10)
        busy = [_slot_at(a, other, hour) for hour in range(8, 20)]
        assert _statuses(b, room) == {slot: "AVAILABLE"}
        make_hold(a, alice, slot)  # the event b has not read
        clock.tick(120)  # past the 60 s retention: each write below prunes the oldest events
        for busy_slot in busy:
            make_hold(a, alice, busy_slot)
        assert _statuses(b, room) == {slot: "HELD_BY_OTHER"}


def test_a_stream_snapshot_from_a_kept_board_equals_the_sql_snapshot_after_another_apps_write(
    two_apps: tuple[TestClient, TestClient],
) -> None:
    a, b = two_apps
    alice, bob = make_user(a), make_user(a)
    with freeze_time(NOW):
        room = make_room(a)
        slots = [_slot_at(a, room, hour) for hour in (9, 10, 11, 12)]
        scope = live.Range(uuid.UUID(room), NOW, None)
        assert len(_statuses(b, room)) == 4  # b keeps the room's board
        make_hold(a, alice, slots[0])
        booked = make_hold(a, bob, slots[1])["hold_id"]
        _act(a, f"/holds/{booked}/confirm", bob)
        state = b.app.state  # type: ignore[attr-defined]

        def snapshot(viewer: ApiUser | None, from_board: bool) -> bytes:
            with Session(state.db.engine, expire_on_commit=False) as session:
                if from_board:
                    opening = stream._open(state.boards, scope, None, session)
                    assert opening.entries is not None
                else:
                    opening = live.open_stream(session, scope, None)
                    assert opening.entries is None

            viewer_id = uuid.UUID(viewer.id) if viewer else None

            async def first_frame() -> bytes:
                events = stream._events(state.hub, live.Subscriber(), scope, viewer_id, opening)
                try:
                    return await anext(events)
                finally:
                    await events.aclose()

            return asyncio.run(first_frame())

        for viewer in (None, alice, bob):
            frame = snapshot(viewer, from_board=True)
            assert frame == snapshot(viewer, from_board=False)
            assert frame.count(b'"room_id"') == 4 and (b"HELD_BY" in frame) and b"BOOKED" in frame


def test_the_head_read_leaves_no_pooled_connection_in_autocommit(
    client: TestClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reads the head in autocommit; a connection must go back to the pool as it came, even on an error."""
    if backend != "postgresql":
        pytest.skip("SQLite's connections are in autocommit for every read (db.py)")
    room = make_room(client)
    engine = client.app.state.db.engine  # type: ignore[attr-defined]
    assert client.get("/slots", params={"room_id": room}).status_code == 200
    monkeypatch.setattr(changelog, "HEAD", rawsql.Statement(text("SELECT no_such_column FROM slot_events")))
    assert client.get("/slots", params={"room_id": room}).status_code >= 500
    monkeypatch.undo()
    for _ in range(engine.pool.size()):
        connection = engine.raw_connection()
        try:
            assert connection.driver_connection.autocommit is False
        finally:
            connection.close()
    assert client.get("/slots", params={"room_id": room}).status_code == 200
