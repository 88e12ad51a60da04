"""A board per room in each worker: GET /slots (and stream snapshots) answered from memory.

A room's board holds its slots from a lower time bound onward (sorted by start time, then id),
each with its live claim as the slot view (`booking._slot_query`) read it and its JSON encoded
once, and the change-log position it reflects: every row was read after every event up to
that position had committed, so a row can be newer than the position, never older.

Strict read-your-writes rests on one check per request, never on a wake-up: the request reads
the log's head first (one indexed read); a board at that head answers; a board behind it
reads the log after its position (`live.changes`, the hub's own reader) and re-reads the
slots it names, or reloads the room when the gap was pruned or is large. Positions are in
commit order on both backends (changelog.py), so a head of N means every change up to N is
visible. On PostgreSQL (READ COMMITTED) the head is read before the rows, so the rows are at
least as new as the head; on SQLite one read transaction is one snapshot.

Lazy expiry stays lazy: a kept claim is judged at the request's `now` (`booking.slot_status`),
so a hold that lapses while the board is kept reads AVAILABLE without any write.

Requests a board cannot answer take the SQL path unchanged: no room_id, a `from` before the
board's lower bound (at most a day before it was loaded), or a range running past the slots kept (a room with more than
`ROOM_SLOTS` slots from its lower bound). See docs/design.md#a-board-per-room-in-each-worker.
"""

import threading
import uuid
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Connection
from sqlalchemy.orm import Session

import booking
import changelog
import live
import rawsql
from clock import utc_now
from db import Database, read_transaction
from errors import Code, NotFound
from live import Change, Range, changes
from models import Room
from pagination import DEFAULT_LIMIT, decode_cursor, encode_cursor
from schemas import SlotPage, SlotRead, SlotStatus

# Slots one board keeps; a room with more keeps its first ones (and answers ranges within them).
ROOM_SLOTS = 500
# Boards one process keeps; the least recently used goes first.
ROOMS = 64
# A catch-up naming more slots than this, or spanning more positions, reloads the room instead.
CATCH_UP_SLOTS = 64
CATCH_UP_POSITIONS = 2_000
# How far into the past a new board reaches for a `from` before now: "today" in any time zone
# (the booking page asks from the viewer's midnight), not history, which would fill a board
# with past slots and cut it before the ones people book.
LOOKBACK = timedelta(days=1)

_SLOT_SERIALIZER = SlotRead.__pydantic_serializer__
_PAGE_SERIALIZER = SlotPage.__pydantic_serializer__
_FIRST_ID = uuid.UUID(int=0)


def head(session: Session) -> int:
    """The change log's newest position (0 for an empty log): one index read, outside any transaction.

    On the connection Database.run bound the session to (a second checkout would wait for the
    one this request already holds: in-memory SQLite has only one), below the ORM (`rawsql`,
    which translates a failure as SQLAlchemy does: a dropped connection drops the pool's older
    ones and is marked so that Database.run runs the request once more). No transaction: its
    BEGIN and end cost several times the read (docs/design.md#a-board-per-room-in-each-worker).
    """
    if session.in_transaction():
        raise RuntimeError("the log's head is read before the request's transactions")
    bind = session.get_bind()
    if isinstance(bind, Connection):
        return _head_on(bind)
    with bind.connect() as connection:  # a session on the engine (tests, tools)
        return _head_on(connection)


def _head_on(connection: Connection) -> int:
    # psycopg: in autocommit, no BEGIN and no ROLLBACK round trip around the read (SQLAlchemy's
    # own pre-ping does the same); SQLite's connections are in autocommit already (db.py).
    # `connection.connection` reaches the pooled connection without beginning a transaction.
    postgres = connection.dialect.name == "postgresql"
    driver: Any = connection.connection.driver_connection
    if postgres:
        driver.autocommit = True
    try:
        # rawsql fetches every row: a SQLite statement left unfinished would keep its snapshot open.
        return int(rawsql.execute(connection, changelog.HEAD, {})[0][0])
    finally:
        if postgres and not connection.invalidated:  # a dropped one is discarded, not reused
            driver.autocommit = False


@dataclass(slots=True, eq=False)
class Entry:
    """One kept slot: its slot-view row, its claim unpacked, and its JSON for every caller but the claim's owner."""

    row: Any
    key: tuple[datetime, uuid.UUID]
    claim_status: str | None  # None: no live claim when read
    claim_expires_at: datetime | None
    owner: uuid.UUID | None
    free: bytes  # as AVAILABLE (no claim, or the claim has lapsed)
    taken: bytes  # as BOOKED or HELD_BY_OTHER while its claim is live (== free without a claim)
    _mine: bytes | None = field(default=None, repr=False)  # the claim's owner while it is live

    @classmethod
    def of(cls, row: Any, now: datetime) -> "Entry":
        """Encode a row read at `now` (its claim, if any, was live then)."""
        free = _SLOT_SERIALIZER.to_json(booking.slot_read(row, SlotStatus.AVAILABLE))
        taken = free if row.claim_id is None else _SLOT_SERIALIZER.to_json(booking.slot_view(row, None, now))
        status = None if row.claim_id is None else row.claim_status
        return cls(row, (row.start_time, row.id), status, row.claim_expires_at, row.claim_user_id, free, taken)

    def render(self, viewer_id: uuid.UUID | None, now: datetime) -> tuple[SlotStatus, bytes]:
        """This slot for the caller at `now`: its status and its JSON."""
        if self.claim_status is None:
            return SlotStatus.AVAILABLE, self.free
        status = booking.claim_seen_as(self.claim_status, self.claim_expires_at, self.owner, viewer_id, now)
        if status is SlotStatus.AVAILABLE:
            return status, self.free
        if viewer_id is None or self.owner != viewer_id:
            return status, self.taken
        if self._mine is None:  # the same bytes while the claim lives: status and ids do not change
            self._mine = _SLOT_SERIALIZER.to_json(booking.slot_view(self.row, viewer_id, now))
        return status, self._mine


@dataclass(frozen=True, slots=True)
class RoomBoard:
    """One room's kept slots at a log position; replaced whole, never changed, so readers need no lock."""

    room_id: uuid.UUID
    position: int
    lower: datetime  # slots starting before this are not kept
    upper: datetime | None  # nor those starting at or after this (None: every later slot is kept)
    entries: Sequence[Entry]
    keys: Sequence[tuple[datetime, uuid.UUID]]

    @classmethod
    def build(
        cls,
        room_id: uuid.UUID,
        position: int,
        lower: datetime,
        upper: datetime | None,
        entries: Iterable[Entry],
    ) -> "RoomBoard":
        """A board of these entries, sorted and cut to `ROOM_SLOTS`."""
        ordered = sorted(entries, key=lambda entry: entry.key)
        if len(ordered) > ROOM_SLOTS:
            # Slots of a room never overlap, so no two share a start: the cut falls between starts.
            upper = ordered[ROOM_SLOTS].key[0]
            ordered = ordered[:ROOM_SLOTS]
        return cls(room_id, position, lower, upper, tuple(ordered), [entry.key for entry in ordered])

    def keeps(self, starts_at: datetime) -> bool:
        """Whether a slot of this room starting then belongs on this board."""
        return starts_at >= self.lower and (self.upper is None or starts_at < self.upper)

    def covers(self, start_from: datetime, start_to: datetime | None) -> bool:
        """Whether every slot starting in [start_from, start_to) is on this board."""
        return start_from >= self.lower and (self.upper is None or (start_to is not None and start_to <= self.upper))

    def apply(self, found: Sequence[Change], position: int, now: datetime) -> "RoomBoard":
        """This board moved to `position`, with the slots these changes name as read after it."""
        by_id = {entry.key[1]: entry for entry in self.entries}
        for change in found:
            by_id.pop(change.slot_id, None)
            if change.row is not None and self.keeps(change.row.start_time):
                by_id[change.slot_id] = Entry.of(change.row, now)
        return RoomBoard.build(self.room_id, position, self.lower, self.upper, by_id.values())

    def page(
        self,
        viewer_id: uuid.UUID | None,
        now: datetime,
        *,
        start_from: datetime,
        start_to: datetime | None,
        status: SlotStatus | None,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> bytes | None:
        """The page GET /slots answers, encoded; None when it needs slots this board does not keep."""
        if start_from < self.lower:
            return None
        first = bisect_left(self.keys, (start_from, _FIRST_ID))
        if after is not None:
            first = max(first, bisect_right(self.keys, after))
        items: list[bytes] = []
        last: Entry | None = None
        more = False
        for entry in self.entries[first:]:
            if start_to is not None and entry.key[0] >= start_to:
                break
            shown, data = entry.render(viewer_id, now)
            if status is not None and shown is not status:
                continue
            if len(items) == limit:
                more = True
                break
            items.append(data)
            last = entry
        else:
            # Ran past the last kept slot: later ones exist only if the board was cut.
            if self.upper is not None and (start_to is None or start_to > self.upper):
                return None
        cursor = b"null" if not more or last is None else to_json(encode_cursor(*last.key))
        return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + cursor + b"}"


class Boards:
    """This process's boards, by room, bounded (LRU); safe to use from several threads."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._boards: OrderedDict[uuid.UUID, RoomBoard] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._boards)

    async def answer(
        self,
        *,
        viewer_id: uuid.UUID | None,
        room_id: uuid.UUID | None,
        start_from: datetime | None,
        start_to: datetime | None,
        status: SlotStatus | None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> bytes | None:
        """GET /slots's body from a kept board found at the log's head by a fast read; None: `list_slots`.

        The same check as `current`, without a Session or a worker thread (fastread.py): a
        board behind the head, a failed read or a page the board cannot give take the usual path.
        """
        after = decode_cursor(cursor) if cursor is not None else None
        if room_id is None or room_id not in self._boards or not self.db.reads.enabled:
            return None
        # Shared by this worker's concurrent listings, each answered by a read sent after it asked.
        position = await self.db.reads.shared(changelog.HEAD, self._read_head)
        now = utc_now()
        board = None if position is None else self._kept_at(room_id, position, start_from, now)
        if board is None:
            return None
        return board.page(
            viewer_id, now, start_from=start_from or now, start_to=start_to, status=status, limit=limit, after=after
        )

    def list_slots(
        self,
        session: Session,
        *,
        viewer_id: uuid.UUID | None,
        room_id: uuid.UUID | None,
        start_from: datetime | None,
        start_to: datetime | None,
        status: SlotStatus | None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> bytes:
        """GET /slots's body: from the room's board when it can answer, else from SQL as before."""
        after = decode_cursor(cursor) if cursor is not None else None
        if room_id is not None:
            board = self.current(session, room_id, start_from)
            now = utc_now()
            start = start_from or now
            body = board.page(
                viewer_id, now, start_from=start, start_to=start_to, status=status, limit=limit, after=after
            )
            if body is not None:
                return body
        page = booking.list_slots(
            session,
            viewer_id=viewer_id,
            room_id=room_id,
            start_from=start_from,
            start_to=start_to,
            status=status,
            limit=limit,
            cursor=cursor,
        )
        return _PAGE_SERIALIZER.to_json(page)

    def snapshot(
        self, session: Session, room_id: uuid.UUID, start_from: datetime, start_to: datetime | None
    ) -> tuple[int, Sequence[Entry]] | None:
        """A stream's opening snapshot from the room's board: its position and the slots in range; None: read SQL."""
        board = self.current(session, room_id, start_from)
        if not board.covers(start_from, start_to):
            return None
        first = bisect_left(board.keys, (start_from, _FIRST_ID))
        last = len(board.keys) if start_to is None else bisect_left(board.keys, (start_to, _FIRST_ID))
        if last - first > live.MAX_STREAM_SLOTS:
            return None  # the SQL path refuses it (RANGE_TOO_LARGE)
        return board.position, board.entries[first:last]

    def current(self, session: Session, room_id: uuid.UUID, start_from: datetime | None) -> RoomBoard:
        """The room's board at the log's head, caught up or loaded (from `start_from`, default now) if need be.

        404 for an unknown room. A board kept from an earlier start is returned as it is; the
        caller checks that it covers what it needs.
        """
        # The head first, in its own read: whatever is read after it is at least as new.
        position = head(session)
        kept = self._kept_at(room_id, position, start_from, utc_now())
        if kept is not None:
            return kept
        board = self._boards.get(room_id)
        with read_transaction(session) as now:
            if (
                board is None
                or board.position > position
                or position - board.position > CATCH_UP_POSITIONS
                or not _reaches(board, start_from, now)
            ):
                wanted = max(min(start_from or now, now), now - LOOKBACK)
                lower = wanted if board is None else max(min(wanted, board.lower), now - LOOKBACK)
                board = _load(session, now, room_id, position, lower)
            else:
                board = _catch_up(session, now, board, position)
        self._keep(board)
        return board

    def _kept_at(
        self, room_id: uuid.UUID, position: int, start_from: datetime | None, now: datetime
    ) -> RoomBoard | None:
        """The room's kept board if it is at this head position and suits this request (marked recently used)."""
        board = self._boards.get(room_id)
        if board is None or board.position != position or not _reaches(board, start_from, now):
            return None
        with self._lock:
            if room_id in self._boards:
                self._boards.move_to_end(room_id)
        return board

    async def _read_head(self) -> int | None:
        rows = await self.db.reads.fetch(changelog.HEAD, {})
        return None if rows is None else int(rows[0][0])

    def _keep(self, board: RoomBoard) -> None:
        with self._lock:
            kept = self._boards.get(board.room_id)
            # Another request may have moved the room further meanwhile (PostgreSQL's threads).
            if kept is None or kept.position <= board.position:
                self._boards[board.room_id] = board
            self._boards.move_to_end(board.room_id)
            while len(self._boards) > ROOMS:
                self._boards.popitem(last=False)


def _reaches(board: "RoomBoard", start_from: datetime | None, now: datetime) -> bool:
    """Whether the board's lower bound suits this request, else it is reloaded from a better one.

    It does not when the request starts earlier but within LOOKBACK (the board then reaches back
    to it, once), or when the bound has fallen far behind the clock: a long-lived board would
    otherwise keep past slots until its slot cap fell before today, and answer nothing.
    """
    if board.lower < now - 2 * LOOKBACK:
        return False
    return start_from is None or start_from >= board.lower or start_from < now - LOOKBACK


def _load(session: Session, now: datetime, room_id: uuid.UUID, position: int, lower: datetime) -> RoomBoard:
    rows = booking.slot_rows(session, now, room_id=room_id, start_from=lower, limit=ROOM_SLOTS + 1)
    if not rows and session.get(Room, room_id) is None:
        raise NotFound(Code.ROOM_NOT_FOUND, "No room has this id.")
    return RoomBoard.build(room_id, position, lower, None, (Entry.of(row, now) for row in rows))


def _catch_up(session: Session, now: datetime, board: RoomBoard, position: int) -> RoomBoard:
    batch = changes(session, now, board.position, None, Range(board.room_id, board.lower, None))
    # Read after the events: had pruning removed any of them before that read, the oldest kept
    # position would now be past the board's (pruning only ever removes the oldest).
    oldest = changelog.oldest(session)
    if oldest is None or oldest > board.position + 1 or len(batch.changes) > CATCH_UP_SLOTS:
        return _load(session, now, board.room_id, position, board.lower)
    return board.apply(batch.changes, position, now)
