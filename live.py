"""The live slot board: one change-log reader per process, fanning changes out to every open stream.

- The change log (changelog.py) is the truth; a wake-up only says "read it". Wake-ups come from
  this process's own commits, from PostgreSQL's NOTIFY (other workers and hosts), and from a
  short poll (a SQLite file written by other processes; a safety net on PostgreSQL).
- Each process reads the log once per wake-up (`Hub`), whatever the number of streams, and hands
  every stream the same `Batch`: all committed events in (after, upto], the last one per slot,
  with the slot's current row. A stream that finds a batch starting past its own position
  reads the gap itself, so nothing is missed whichever way the hub moved.
- Each stream (stream.py) keeps its caller's view (`Board`): the position it has sent and the
  holds it has shown, so it can say when one lapses (lazy expiry writes nothing) and render at
  send time.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import anyio
from sqlalchemy import and_, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

import changelog
from booking import HOLD, slot_rows, slot_status, slot_view
from config import Settings
from db import Database, read_transaction
from errors import Code, InvalidInput, NotFound
from models import Hold, Room, SlotEvent, TimeSlot
from schemas import SlotRead, SlotStatus

log = logging.getLogger("booking.live")

MAX_STREAM_SLOTS = 1_000
# Batches a stream may have waiting; a client that reads slower than changes arrive is cut
# off (it reconnects with Last-Event-ID and resumes) rather than buffered without bound.
QUEUE_LIMIT = 256
_SLOT_SERIALIZER = SlotRead.__pydantic_serializer__


@dataclass(frozen=True)
class Range:
    """The slots a stream covers: the filters of GET /slots."""

    room_id: uuid.UUID | None
    start_from: datetime
    start_to: datetime | None

    def covers(self, room_id: uuid.UUID, starts_at: datetime) -> bool:
        """Whether a slot of this room, starting then, is on this stream's board."""
        return (
            (self.room_id is None or room_id == self.room_id)
            and starts_at >= self.start_from
            and (self.start_to is None or starts_at < self.start_to)
        )


@dataclass
class Change:
    """The newest event of one slot in a batch, with the slot's row as read after it (None: deleted)."""

    position: int
    slot_id: uuid.UUID
    room_id: uuid.UUID
    starts_at: datetime
    row: Any
    # The frame for every caller but the claim's owner, made once per batch for all streams.
    _shared: bytes | None = field(default=None, repr=False)
    _by_status: dict[SlotStatus, bytes] = field(default_factory=dict, repr=False)

    def frame(self, viewer_id: uuid.UUID | None, now: datetime) -> bytes:
        """This change as an SSE event for the caller: the slot as GET /slots/{id} shows it at `now`."""
        if self.row is None:
            if self._shared is None:
                self._shared = sse_frame("slot_deleted", self.position, b'{"id":"%s"}' % str(self.slot_id).encode())
            return self._shared
        if viewer_id is not None and self.row.claim_user_id == viewer_id:
            return sse_frame("slot", self.position, render(self.row, viewer_id, now))
        # Keyed by the status it shows: a stream that reaches this batch after the hold ended
        # must send the slot free, not the frame an earlier stream made while it was held.
        status = slot_status(self.row, None, now)
        if status not in self._by_status:
            self._by_status[status] = sse_frame("slot", self.position, render(self.row, None, now))
        return self._by_status[status]


@dataclass(frozen=True)
class Batch:
    """Every committed event in (after, upto], as the newest change of each slot, in log order."""

    after: int
    upto: int
    changes: Sequence[Change]


def render(row: Any, viewer_id: uuid.UUID | None, now: datetime) -> bytes:
    """One slot row as JSON for this caller at `now`."""
    return _SLOT_SERIALIZER.to_json(slot_view(row, viewer_id, now))


def sse_frame(kind: str, position: int, data: bytes) -> bytes:
    """One Server-Sent Event, encoded once: the stream writes these bytes as they are."""
    return b"event: %s\r\nid: %d\r\ndata: %s\r\n\r\n" % (kind.encode(), position, data)


# --- reading the log ---------------------------------------------------------------------------


def changes(session: Session, now: datetime, after: int, upto: int | None, scope: Range | None) -> Batch:
    """The committed events in (after, upto] (None: to the newest), in `scope`, with each slot's row as read now."""
    events = SlotEvent.__table__.c
    newest = func.max(events.position).label("position")
    stmt = select(newest, events.slot_id, events.room_id, events.starts_at).where(events.position > after)
    if upto is not None:
        stmt = stmt.where(events.position <= upto)
    if scope is not None and scope.room_id is not None:
        stmt = stmt.where(events.room_id == scope.room_id)
    stmt = stmt.group_by(events.slot_id, events.room_id, events.starts_at).order_by(newest)
    found = [
        event
        for event in session.connection().execute(stmt).all()
        if scope is None or scope.covers(event.room_id, event.starts_at)
    ]
    if upto is None:
        upto = max((event.position for event in found), default=after)
    rows = {row.id: row for row in slot_rows(session, now, ids=[event.slot_id for event in found])}
    changes = [Change(e.position, e.slot_id, e.room_id, e.starts_at, rows.get(e.slot_id)) for e in found]
    return Batch(after, upto, changes)


def read_changes(session: Session, after: int | None) -> Batch:
    """The hub's read: everything committed after `after` (None: start from the head, empty)."""
    with read_transaction(session) as now:
        if after is None:
            position = changelog.head(session)
            return Batch(position, position, [])
        return changes(session, now, after, None, None)


def read_gap(session: Session, after: int, upto: int, scope: Range) -> Batch:
    """A stream's own read of events it has not had: (after, upto], in its range."""
    with read_transaction(session) as now:
        return changes(session, now, after, upto, scope)


@dataclass(frozen=True)
class Opening:
    """What a stream starts from: the board's rows at `position`, and for a resume the changes to send."""

    position: int
    rows: Sequence[Any]
    resumed: Batch | None  # None: send a snapshot
    lapsed: Sequence[Any] = ()  # resume: slots whose hold lapsed unwritten (the client may still show it)
    entries: Sequence[Any] | None = None  # a snapshot from a room's board (board.Entry): its JSON is encoded


def open_stream(session: Session, scope: Range, last_event_id: int | None) -> Opening:
    """Read the board for a new stream: a snapshot, or for a known recent position the changes since."""
    with read_transaction(session) as now:
        # The head first, the rows after it: a change committed in between is in the rows and
        # is sent again as an event, which converges; the other order could lose it.
        position = changelog.head(session)
        rows = slot_rows(
            session,
            now,
            room_id=scope.room_id,
            start_from=scope.start_from,
            start_to=scope.start_to,
            limit=MAX_STREAM_SLOTS + 1,
        )
        if len(rows) > MAX_STREAM_SLOTS:
            raise InvalidInput(
                Code.RANGE_TOO_LARGE,
                f"The range holds more than {MAX_STREAM_SLOTS} slots; narrow it (room_id, from, to).",
            )
        if not rows and scope.room_id is not None and session.get(Room, scope.room_id) is None:
            raise NotFound(Code.ROOM_NOT_FOUND, "No room has this id.")
        if last_event_id is None or not _resumable(session, last_event_id, position):
            return Opening(position, rows, None)
        resumed = changes(session, now, last_event_id, position, scope)
        if not _resumable(session, last_event_id, position):
            # Pruned while it was read (PostgreSQL reads each statement afresh): a snapshot instead.
            return Opening(position, rows, None)
        return Opening(position, rows, resumed, _lapsed_unwritten(session, now, scope))


def _resumable(session: Session, last_event_id: int, head: int) -> bool:
    # Every event after the client's position must still be in the log (not pruned), and the
    # position must be one this log has handed out (not from another database).
    if last_event_id > head:
        return False
    if last_event_id == head:
        return True
    oldest = changelog.oldest(session)
    return oldest is not None and oldest <= last_event_id + 1


def _lapsed_unwritten(session: Session, now: datetime, scope: Range) -> Sequence[Any]:
    # A hold that lapsed while the client was away wrote no event: find the slots whose active
    # row is a HOLD that has ended (at most one per slot, by the partial unique index).
    stmt = select(Hold.slot_id).join(TimeSlot, TimeSlot.id == Hold.slot_id)
    stmt = stmt.where(
        and_(Hold.status == HOLD, Hold.expires_at <= now),
        TimeSlot.start_time >= scope.start_from,
    )
    if scope.room_id is not None:
        stmt = stmt.where(TimeSlot.room_id == scope.room_id)
    if scope.start_to is not None:
        stmt = stmt.where(TimeSlot.start_time < scope.start_to)
    ids = list(session.scalars(stmt))
    return slot_rows(session, now, ids=ids)


_CLOSE = Batch(0, 0, ())  # the batch that wakes a stream to end it


class Subscriber:
    """One open stream, as the hub sees it: a bounded queue of batches."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False
        self.closing = False  # the server is shutting down: end the stream cleanly

    def close(self) -> None:
        """End the stream after what it is sending now (shutdown)."""
        self.closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(_CLOSE)  # wakes a stream waiting for its next batch

    def offer(self, batch: Batch) -> None:
        """Queue a batch; a full queue ends the stream instead of growing."""
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.overflowed = True  # the stream is busy sending, not waiting: it sees this next


class Hub:
    """This process's one reader of the change log, and the streams it feeds."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self._subscribers: set[Subscriber] = set()
        self._position: int | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        if db.backend == "postgresql":
            self._poll_seconds: float | None = settings.stream_poll_seconds * 20
        elif db.in_memory:
            self._poll_seconds = None  # one process: its own commits wake it
        else:
            self._poll_seconds = settings.stream_poll_seconds
        self.heartbeat_seconds = settings.stream_heartbeat_seconds

    @property
    def open_streams(self) -> int:
        """Streams open on this process."""
        return len(self._subscribers)

    def start(self) -> None:
        """Start reading (call on the event loop)."""
        # Set by sse-starlette when the server begins to shut down (SIGTERM): every stream then
        # ends cleanly within the grace period instead of being cut off.
        self.shutting_down = anyio.Event()
        self._tasks.append(asyncio.create_task(self._close_streams_at_shutdown(), name="live-shutdown"))
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self.db.on_log_written = wake
        self._tasks.append(asyncio.create_task(self._run(), name="live-hub"))
        if self.db.backend == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen(), name="live-listen"))

    async def stop(self) -> None:
        """Stop reading."""
        self.db.on_log_written = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: shutdown must never hang on a reader (a deploy waits for it).
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks.clear()

    async def _close_streams_at_shutdown(self) -> None:
        await self.shutting_down.wait()
        for subscriber in list(self._subscribers):
            subscriber.close()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Feed this stream every batch from now on."""
        self._subscribers.add(subscriber)
        self._wake.set()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop feeding this stream."""
        self._subscribers.discard(subscriber)

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the wake-up fires, and shutdown then waits on this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            self._wake.clear()
            if not self._subscribers:
                self._position = None  # nobody to feed: start again from the head when somebody comes
                continue
            try:
                batch = await self.db.run(partial(read_changes, after=self._position))
            except SQLAlchemyError:
                log.exception("live: reading the change log failed; retrying in a second")
                await asyncio.sleep(1)
                self._wake.set()
                continue
            restarted, self._position = self._position is None, batch.upto
            # A restart jumps to the head without reading what lies before it; a stream that
            # opened below that head must hear of the jump (its gap read fetches what it missed).
            if batch.changes or restarted:
                for subscriber in list(self._subscribers):
                    subscriber.offer(batch)

    async def _listen(self) -> None:
        import psycopg  # PostgreSQL only

        url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {changelog.NOTIFY_CHANNEL}")
                    self._wake.set()  # anything committed while (re)connecting
                    # Closed before the connection: a generator left suspended keeps the
                    # connection's lock, and closing the connection then waits for it forever.
                    async with contextlib.aclosing(conn.notifies()) as notifies:
                        async for _ in notifies:
                            self._wake.set()
            except (psycopg.Error, OSError):
                log.warning("live: LISTEN connection lost; reconnecting in a second", exc_info=True)
                await asyncio.sleep(1)
