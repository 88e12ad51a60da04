"""One live stream: the caller's view of the board (`Board`) and the events it sends.

The hub (live.py) reads the change log once per process and hands every stream the same batches;
this module turns them into one caller's Server-Sent Events: the snapshot or the resumed
changes, each change rendered for this caller, the lapses of holds the caller was shown (lazy
expiry writes nothing), heartbeats, and a clean end at shutdown.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from board import Boards
from booking import HOLD
from clock import utc_now
from live import Batch, Hub, Opening, Range, Subscriber, open_stream, read_gap, render, sse_frame

# A client whose socket takes no bytes for this long is cut off (it resumes when it reads again).
SEND_TIMEOUT_SECONDS = 30.0
# On shutdown, how long streams get to end cleanly before they are cut off.
SHUTDOWN_GRACE_SECONDS = 1.0


class Board:
    """One stream's view: the position it has sent and the holds it has shown, to tell their lapse."""

    def __init__(self, position: int) -> None:
        self.position = position
        self._held: dict[uuid.UUID, Any] = {}
        self._next_lapse: datetime | None = None  # kept with _held: read on every wake-up of every stream

    def shown(self, slot_id: uuid.UUID, row: Any, now: datetime) -> None:
        """The client now shows this row (None: the slot is gone)."""
        if row is not None and row.claim_status == HOLD and row.claim_expires_at > now:
            self._held[slot_id] = row
        elif self._held.pop(slot_id, None) is None:
            return
        self._next_lapse = min((held.claim_expires_at for held in self._held.values()), default=None)

    def next_lapse(self) -> datetime | None:
        """When the earliest shown hold ends."""
        return self._next_lapse

    def lapsed(self, now: datetime) -> list[Any]:
        """The shown holds that have ended by `now`; each is forgotten as it is returned."""
        if self._next_lapse is None or self._next_lapse > now:
            return []
        ended = [row for row in self._held.values() if row.claim_expires_at <= now]
        for row in ended:
            del self._held[row.id]
        self._next_lapse = min((held.claim_expires_at for held in self._held.values()), default=None)
        return ended


# --- a stream ----------------------------------------------------------------------------------


def parse_last_event_id(value: str | None) -> int | None:
    """A Last-Event-ID this service sent (a position), or None for anything else."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def open_events(
    hub: Hub, boards: Boards, scope: Range, viewer_id: uuid.UUID | None, last_event_id: int | None
) -> AsyncIterator[bytes]:
    """Subscribe, read the opening state (errors raise here, before any byte is sent), return the events."""
    subscriber = Subscriber()
    hub.subscribe(subscriber)  # before reading: every batch from here on reaches this stream
    try:
        opening = await hub.db.run(partial(_open, boards, scope, last_event_id))
    except BaseException:
        hub.unsubscribe(subscriber)
        raise
    return _events(hub, subscriber, scope, viewer_id, opening)


def _open(boards: Boards, scope: Range, last_event_id: int | None, session: Session) -> Opening:
    # A snapshot of one room from its board, current at the log's head like a listing's; a
    # resume, or a range the board does not hold, reads SQL as before.
    if last_event_id is None and scope.room_id is not None:
        snapshot = boards.snapshot(session, scope.room_id, scope.start_from, scope.start_to)
        if snapshot is not None:
            position, entries = snapshot
            return Opening(position, [entry.row for entry in entries], None, entries=entries)
    return open_stream(session, scope, last_event_id)


# After the snapshot: a reconnecting EventSource waits a second. Sent as its own write so the
# server's send loop lets go of the snapshot's bytes while the stream is idle.
_RETRY = b"retry: 1000\r\n\r\n"
_HEARTBEAT = b": ping\r\n\r\n"


async def _events(
    hub: Hub, subscriber: Subscriber, scope: Range, viewer_id: uuid.UUID | None, opening: Opening
) -> AsyncIterator[bytes]:
    board = Board(opening.position)
    now = utc_now()
    for row in opening.rows:
        board.shown(row.id, row, now)
    try:
        if opening.resumed is None:
            if opening.entries is not None:  # from a board: each slot's JSON is encoded already
                items = b",".join(entry.render(viewer_id, now)[1] for entry in opening.entries)
            else:
                items = b",".join(render(row, viewer_id, now) for row in opening.rows)
            yield sse_frame("snapshot", opening.position, b'{"items":[' + items + b"]}")
            del items
        else:
            frames = [change.frame(viewer_id, now) for change in opening.resumed.changes]
            frames += [sse_frame("slot", opening.position, render(row, viewer_id, now)) for row in opening.lapsed]
            yield b"".join(frames)
            del frames
        del opening  # an idle stream keeps only its board
        yield _RETRY
        while not (subscriber.overflowed or subscriber.closing):
            batches = await _next_batches(subscriber, board, hub.heartbeat_seconds)
            if subscriber.closing:
                return  # a clean end of the response: the client reconnects elsewhere and resumes
            now = utc_now()
            frames = []
            for batch in batches:
                if batch.after > board.position:  # the hub moved on before this stream joined it
                    gap = await hub.db.run(partial(read_gap, after=board.position, upto=batch.after, scope=scope))
                    batch = Batch(board.position, batch.upto, [*gap.changes, *batch.changes])
                for change in batch.changes:
                    if change.position > board.position and scope.covers(change.room_id, change.starts_at):
                        board.shown(change.slot_id, change.row, now)
                        frames.append(change.frame(viewer_id, now))
                board.position = max(board.position, batch.upto)
            for row in board.lapsed(now):
                frames.append(sse_frame("slot", board.position, render(row, viewer_id, now)))
            # Nothing to say for a heartbeat interval: a comment keeps proxies from closing the
            # idle connection (written here, so a stream needs no timer task of its own).
            if frames:
                yield b"".join(frames)
            elif not batches:
                yield _HEARTBEAT
    finally:
        hub.unsubscribe(subscriber)


async def _next_batches(subscriber: Subscriber, board: Board, heartbeat_seconds: float) -> list[Batch]:
    """The batches waiting (at least one, in order), or none when a shown hold lapses or a heartbeat is due."""
    queue = subscriber.queue
    lapse = board.next_lapse()
    wait = heartbeat_seconds if lapse is None else min((lapse - utc_now()).total_seconds() + 0.001, heartbeat_seconds)
    try:
        async with asyncio.timeout(max(wait, 0)):
            first = await queue.get()
    except TimeoutError:
        return []
    batches = [first]
    while not queue.empty():
        batches.append(queue.get_nowait())
    return batches
