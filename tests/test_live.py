"""The live board's own logic, in process: lapses on a frozen clock, per-caller rendering, bounds.

Real streams over HTTP (snapshot, resume, cross-process delivery) are in tests/test_stream.py.
"""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time

import live
import stream
from booking import slot_status
from schemas import SlotStatus
from tests.factories import ADMIN, assert_problem, make_room, make_slot

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
ALICE, BOB = uuid.uuid4(), uuid.uuid4()


def _row(claim_status: str | None = "HOLD", *, owner: uuid.UUID = ALICE, until: datetime | None = None) -> Any:
    """A slot-view row as booking.slot_rows returns it."""
    claimed = claim_status is not None
    return SimpleNamespace(
        id=uuid.uuid4(),
        room_id=uuid.uuid4(),
        start_time=NOW + timedelta(days=1),
        end_time=NOW + timedelta(days=1, hours=1),
        created_date=NOW,
        last_updated_date=NOW,
        claim_id=uuid.uuid4() if claimed else None,
        claim_user_id=owner if claimed else None,
        claim_status=claim_status,
        claim_expires_at=(until or NOW + timedelta(minutes=5)) if claimed else None,
    )


# --- a hold lapses on the stream when its time is up (frozen clock) -----------------------------


def test_a_shown_hold_lapses_at_its_end_and_not_a_second_before() -> None:
    board = stream.Board(position=7)
    row = _row(until=NOW + timedelta(minutes=5))
    with freeze_time(NOW) as clock:
        board.shown(row.id, row, NOW)
        assert board.next_lapse() == NOW + timedelta(minutes=5)
        clock.tick(299)
        assert board.lapsed(datetime.now(UTC)) == []
        clock.tick(1)
        assert board.lapsed(datetime.now(UTC)) == [row]
    assert board.next_lapse() is None
    assert board.lapsed(NOW + timedelta(hours=1)) == []  # told once


def test_the_earliest_of_several_holds_sets_the_next_lapse() -> None:
    board = stream.Board(position=0)
    late, early = _row(until=NOW + timedelta(minutes=9)), _row(until=NOW + timedelta(minutes=2))
    board.shown(late.id, late, NOW)
    board.shown(early.id, early, NOW)
    assert board.next_lapse() == NOW + timedelta(minutes=2)
    assert board.lapsed(NOW + timedelta(minutes=2)) == [early]
    assert board.next_lapse() == NOW + timedelta(minutes=9)


def test_an_extension_moves_the_lapse() -> None:
    board = stream.Board(position=0)
    row = _row(until=NOW + timedelta(minutes=5))
    board.shown(row.id, row, NOW)
    extended = SimpleNamespace(**{**vars(row), "claim_expires_at": NOW + timedelta(minutes=10)})
    board.shown(row.id, extended, NOW + timedelta(minutes=1))
    assert board.lapsed(NOW + timedelta(minutes=5)) == []
    assert board.lapsed(NOW + timedelta(minutes=10)) == [extended]


@pytest.mark.parametrize("claim", ["CONFIRMED", None])
def test_a_booking_or_a_free_slot_never_lapses(claim: str | None) -> None:
    board = stream.Board(position=0)
    held = _row()
    board.shown(held.id, held, NOW)
    board.shown(held.id, _row(claim), NOW)  # the same slot, now booked or free
    assert board.next_lapse() is None and board.lapsed(NOW + timedelta(days=2)) == []


def test_a_hold_already_over_when_shown_is_not_kept() -> None:
    board = stream.Board(position=0)
    row = _row(until=NOW)
    board.shown(row.id, row, NOW)
    assert board.next_lapse() is None


@pytest.mark.parametrize(
    ("seconds", "status"), [(-1, SlotStatus.HELD_BY_OTHER), (0, SlotStatus.AVAILABLE), (1, SlotStatus.AVAILABLE)]
)
def test_a_kept_row_is_judged_again_at_the_moment_of_sending(seconds: int, status: SlotStatus) -> None:
    row = _row(until=NOW)
    assert slot_status(row, BOB, NOW + timedelta(seconds=seconds)) is status


# --- per-caller rendering: nobody sees another user's ids ---------------------------------------


def _rendered(row: Any, viewer: uuid.UUID | None, now: datetime = NOW) -> dict[str, Any]:
    return dict(json.loads(live.render(row, viewer, now)))


def test_the_owner_sees_their_hold_with_its_id_and_end() -> None:
    row = _row()
    body = _rendered(row, ALICE)
    assert body["status"] == "HELD_BY_ME"
    assert body["hold_id"] == str(row.claim_id)
    assert body["expires_at"] == body["held_until"] == "2030-01-01T12:05:00Z"


@pytest.mark.parametrize("viewer", [BOB, None], ids=["another user", "anonymous"])
def test_others_see_when_a_hold_ends_but_no_ids(viewer: uuid.UUID | None) -> None:
    row = _row()
    body = _rendered(row, viewer)
    assert body["status"] == "HELD_BY_OTHER"
    assert body["held_until"] == "2030-01-01T12:05:00Z"
    assert body["hold_id"] is None and body["expires_at"] is None
    text = live.render(row, viewer, NOW).decode()
    assert str(row.claim_id) not in text and str(ALICE) not in text


def test_a_booking_shows_its_id_to_its_owner_only() -> None:
    row = _row("CONFIRMED")
    assert _rendered(row, ALICE)["hold_id"] == str(row.claim_id)
    for viewer in (BOB, None):
        body = _rendered(row, viewer)
        assert body["status"] == "BOOKED" and body["hold_id"] is None and body["held_until"] is None


def test_a_change_frame_is_shared_by_others_but_rendered_for_the_owner() -> None:
    row = _row()
    change = live.Change(position=12, slot_id=row.id, room_id=row.room_id, starts_at=row.start_time, row=row)
    shared = change.frame(BOB, NOW)
    assert change.frame(None, NOW) is shared  # encoded once for everyone but the owner
    own = change.frame(ALICE, NOW)
    assert b"HELD_BY_ME" in own and b"HELD_BY_OTHER" in shared
    assert shared.startswith(b"event: slot\r\nid: 12\r\ndata: {") and shared.endswith(b"}\r\n\r\n")


def test_a_deleted_slot_is_a_slot_deleted_event() -> None:
    slot_id = uuid.uuid4()
    change = live.Change(position=3, slot_id=slot_id, room_id=uuid.uuid4(), starts_at=NOW, row=None)
    assert change.frame(ALICE, NOW) == b'event: slot_deleted\r\nid: 3\r\ndata: {"id":"%s"}\r\n\r\n' % (
        str(slot_id).encode()
    )


# --- ranges, resume ids, slow readers -----------------------------------------------------------


def test_a_range_covers_its_room_from_inclusive_to_exclusive() -> None:
    room = uuid.uuid4()
    scope = live.Range(room, NOW, NOW + timedelta(days=1))
    assert scope.covers(room, NOW)
    assert not scope.covers(room, NOW + timedelta(days=1))
    assert not scope.covers(room, NOW - timedelta(seconds=1))
    assert not scope.covers(uuid.uuid4(), NOW)
    assert live.Range(None, NOW, None).covers(uuid.uuid4(), NOW + timedelta(days=400))


@pytest.mark.parametrize(("header", "position"), [("42", 42), (" 7 ", 7), ("0", 0)])
def test_a_last_event_id_we_sent_is_a_position(header: str, position: int) -> None:
    assert stream.parse_last_event_id(header) == position


@pytest.mark.parametrize("header", [None, "", "abc", "-1", "1.5", "1e3"])
def test_any_other_last_event_id_means_a_fresh_snapshot(header: str | None) -> None:
    assert stream.parse_last_event_id(header) is None


def test_a_stream_that_falls_a_full_queue_behind_is_cut_off_not_buffered() -> None:
    async def scenario() -> live.Subscriber:
        subscriber = live.Subscriber()
        batch = live.Batch(0, 1, [])
        for _ in range(live.QUEUE_LIMIT):
            subscriber.offer(batch)
        assert not subscriber.overflowed
        subscriber.offer(batch)
        return subscriber

    subscriber = asyncio.run(scenario())
    assert subscriber.overflowed and subscriber.queue.qsize() == live.QUEUE_LIMIT


# --- the stream's refusals, before any byte is sent -----------------------------------------------


def test_stream_of_more_than_1000_slots_is_422_range_too_large(client: TestClient, monkeypatch: Any) -> None:
    monkeypatch.setattr(live, "MAX_STREAM_SLOTS", 3)
    room = make_room(client)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    for hour in range(4):
        make_slot(client, room, start=start + timedelta(hours=hour))
    body = assert_problem(client.get("/slots/stream", params={"room_id": room}), 422, "RANGE_TOO_LARGE")
    assert "3 slots" in body["detail"]


def test_stream_of_an_unknown_room_is_404(client: TestClient) -> None:
    assert_problem(client.get("/slots/stream", params={"room_id": str(uuid.uuid4())}), 404, "ROOM_NOT_FOUND")


def test_stream_with_an_invalid_token_is_401(client: TestClient) -> None:
    response = client.get("/slots/stream", headers={"Authorization": "Bearer nope"})
    assert_problem(response, 401, "INVALID_TOKEN")


def test_stats_count_slots_by_status_for_a_room_and_day(client: TestClient) -> None:
    from tests.factories import make_hold, make_user

    alice = make_user(client)
    room = make_room(client)
    day = (datetime.now(UTC) + timedelta(days=2)).date()
    start = datetime(day.year, day.month, day.day, 9, tzinfo=UTC)
    slots = [make_slot(client, room, start=start + timedelta(hours=i)) for i in range(4)]
    make_slot(client, room, start=start + timedelta(days=1))  # another day
    make_hold(client, alice, slots[0])
    booked = make_hold(client, alice, slots[1])["hold_id"]
    client.post(f"/holds/{booked}/confirm", headers=alice.auth)
    response = client.get("/stats", params={"room_id": room, "day": day.isoformat()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["slots"] == {"available": 2, "held": 1, "booked": 1}
    assert (body["live_holds"], body["bookings"], body["open_streams"]) == (1, 1, 0)
    assert alice.id not in response.text
    assert client.get("/stats", params={"day": "not-a-day"}, headers=ADMIN).status_code == 422


def test_a_process_reads_the_log_once_per_change_whatever_the_number_of_streams(
    client: TestClient, monkeypatch: Any
) -> None:
    from tests.factories import make_hold, make_user

    reads: list[int | None] = []
    found: list[int] = []  # per read: how many changes it brought
    read_changes = live.read_changes

    def counted(session: Any, after: int | None) -> live.Batch:
        reads.append(after)
        batch = read_changes(session, after)
        found.append(len(batch.changes))
        return batch

    monkeypatch.setattr(live, "read_changes", counted)
    hub: live.Hub = client.app.state.hub  # type: ignore[attr-defined]
    subscribers = [live.Subscriber() for _ in range(50)]
    for subscriber in subscribers:
        hub.subscribe(subscriber)
    try:
        alice = make_user(client)
        slot = make_slot(client)
        deadline = datetime.now(UTC) + timedelta(seconds=5)
        while datetime.now(UTC) < deadline and not all(s.queue.qsize() for s in subscribers):
            asyncio.run(asyncio.sleep(0.01))
        seen = -1
        while seen != len(reads):  # settled: the slot's own wake-ups (and NOTIFY echo) are read
            seen = len(reads)
            asyncio.run(asyncio.sleep(0.3))
        before = len(reads)
        make_hold(client, alice, slot)
        while datetime.now(UTC) < deadline and len(reads) == before:
            asyncio.run(asyncio.sleep(0.01))
        asyncio.run(asyncio.sleep(0.2))  # time for any further (wrong) reads to happen
    finally:
        for subscriber in subscribers:
            hub.unsubscribe(subscriber)
    # One read brings the hold's change, never one per stream: 50 are open. Reads that find
    # nothing new may follow (on PostgreSQL the commit's own NOTIFY after the local wake-up, or
    # the once-a-second safety-net poll), but never one per stream.
    assert [n for n in found[before:] if n] == [1], (reads, found)
    assert len(reads) - before < 10, reads  # far below one per stream
    last = [list(s.queue._queue)[-1] for s in subscribers]
    assert all(batch is last[0] for batch in last)  # every stream got the same batch
    assert [change.slot_id for change in last[0].changes] == [uuid.UUID(slot)]


def test_a_stream_that_reaches_a_change_after_the_hold_ended_sends_the_slot_free() -> None:
    row = _row(until=NOW + timedelta(seconds=1))
    change = live.Change(position=5, slot_id=row.id, room_id=row.room_id, starts_at=row.start_time, row=row)
    early = change.frame(BOB, NOW)  # the first stream, while the hold is live
    late = change.frame(None, NOW + timedelta(seconds=2))  # a stream held up past the hold's end
    assert b"HELD_BY_OTHER" in early and b'"status":"AVAILABLE"' in late
