"""The change log: one `slot_events` row per committed change to a slot or its claim.

Writers record what they changed (`record`) as they change it; `db.write_transaction` then
appends the events (`flush`) as the last statements of the same transaction, just before
COMMIT, so a change and its event commit or roll back together.

Positions in commit order. A PostgreSQL sequence hands out values before commit, so without
care a transaction holding position 10 could commit after the one holding 11, and a reader
that had already moved past 11 would never see 10. Every appending transaction therefore
takes one transaction-scoped advisory lock right before it draws its positions and holds it
until its COMMIT is visible: positions are drawn, and become visible, in commit order. The
lock is taken after all of the transaction's row locks (events are appended last), so it
cannot take part in a deadlock, and it is held only for the append and the commit. SQLite
has one writer at a time, which gives the same order for free.

The log stays bounded without a background job: every appending transaction also deletes up
to `PRUNE_BATCH` of the oldest events once they are older than the retention.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, literal_column, select, text
from sqlalchemy.orm import Session

import rawsql
from models import SlotEvent, TimeSlot, UTCDateTime
from schemas import EventKind

# session.info keys: the events recorded by the open transaction, and whether a commit wrote any.
PENDING = "changelog.pending"
WRITTEN = "changelog.written"
RETENTION = "changelog.retention"

DEFAULT_RETENTION = timedelta(days=7)
# Pruned per appending transaction: several times the events one transaction appends, so
# pruning outpaces writing, while each write's extra work stays a few index entries.
PRUNE_BATCH = 8
# Any fixed number: the advisory lock that orders appends (PostgreSQL).
_APPEND_LOCK = rawsql.Statement(text("SELECT pg_advisory_xact_lock(7240002)"))
NOTIFY_CHANNEL = "booking_slot_events"
_NOTIFY = rawsql.Statement(text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"))

assert isinstance(SlotEvent.__table__, Table)
_events: Table = SlotEvent.__table__
_SLOT = bindparam("slot_id", type_=SlotEvent.slot_id.type)
# The slot's room and start come from the slot row, unless given (a deleted slot has none).
_INSERT = rawsql.Statement(
    insert(_events).values(
        kind=bindparam("kind"),
        slot_id=_SLOT,
        room_id=func.coalesce(
            bindparam("room_id", type_=SlotEvent.room_id.type),
            select(TimeSlot.room_id).where(TimeSlot.id == _SLOT).scalar_subquery(),
        ),
        starts_at=func.coalesce(
            bindparam("starts_at", type_=UTCDateTime),
            select(TimeSlot.start_time).where(TimeSlot.id == _SLOT).scalar_subquery(),
        ),
        hold_id=bindparam("hold_id", type_=SlotEvent.hold_id.type),
        user_id=bindparam("user_id", type_=SlotEvent.user_id.type),
        status=bindparam("status"),
        held_until=bindparam("held_until", type_=UTCDateTime),
        occurred_at=bindparam("occurred_at", type_=UTCDateTime),
    ),
    many=True,
)
# Only an unbroken run of the oldest positions goes: up to the first one still inside the
# retention. Writers stamp `occurred_at` before they wait for the append lock (and hosts' clocks
# differ), so a later position may carry an earlier time; deleting it while an older one stays
# would leave a hole that readers (live.py, board.py) take for "nothing happened there", as they
# rely on pruning removing the oldest positions only. Both reads stay within the window's
# primary-key range.
_window_end = select(func.min(_events.c.position)).scalar_subquery() + literal_column(str(PRUNE_BATCH))
_first_kept = (
    select(func.coalesce(func.min(_events.c.position), _window_end))
    .where(_events.c.position < _window_end, _events.c.occurred_at >= bindparam("cutoff", type_=UTCDateTime))
    .scalar_subquery()
)
_PRUNE = rawsql.Statement(delete(_events).where(_events.c.position < _first_kept))


def record(
    session: Session,
    kind: EventKind,
    slot_id: uuid.UUID,
    *,
    hold_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    status: str | None = None,
    held_until: datetime | None = None,
    room_id: uuid.UUID | None = None,
    starts_at: datetime | None = None,
) -> None:
    """Note a change made in the open write transaction; it is appended when that transaction commits."""
    event = {
        "kind": kind.value,
        "slot_id": slot_id,
        "room_id": room_id,
        "starts_at": starts_at,
        "hold_id": hold_id,
        "user_id": user_id,
        "status": status,
        "held_until": held_until,
    }
    session.info.setdefault(PENDING, []).append(event)


def record_hold(session: Session, kind: EventKind, hold: Any) -> None:
    """Note a change to a hold row (a RETURNING row or ORM object), in its state after the change."""
    held_until = hold.expires_at if hold.status == "HOLD" else None
    record(
        session, kind, hold.slot_id, hold_id=hold.id, user_id=hold.user_id, status=hold.status, held_until=held_until
    )


def discard(session: Session) -> None:
    """Forget the events of a transaction that is rolling back."""
    session.info.pop(PENDING, None)


def flush(session: Session, now: datetime, then: Sequence[rawsql.Step] = ()) -> None:
    """Append the transaction's recorded events, in its last statements; `then` (its COMMIT) rides along.

    The events and `then` go in one batch: one round trip on PostgreSQL, where the append lock
    is then held for no round trip at all, only while the server runs the batch and commits.
    """
    pending: list[dict[str, Any]] | None = session.info.pop(PENDING, None)
    steps: list[rawsql.Step] = []
    connection = session.connection()
    if pending:
        retention: timedelta = session.info.get(RETENTION, DEFAULT_RETENTION)
        steps = [
            (_INSERT, [{**event, "occurred_at": now} for event in pending]),
            (_PRUNE, {"cutoff": now - retention}),
        ]
        if connection.dialect.name == "postgresql":
            # The lock first, the wake-up last: delivered at COMMIT, to every worker and host
            # listening; only a wake-up, the log is the truth.
            steps = [(_APPEND_LOCK, {}), *steps, (_NOTIFY, {})]
    if steps or then:
        rawsql.execute_batch(connection, [*steps, *then])
    if pending:
        session.info[WRITTEN] = True


_HEAD_SELECT = select(func.coalesce(func.max(_events.c.position), 0))
# The same read below the ORM, for the room boards' check on every listing (board.head).
HEAD = rawsql.Statement(_HEAD_SELECT)


def head(session: Session) -> int:
    """The newest position (0 for an empty log)."""
    return session.scalar(_HEAD_SELECT) or 0


def oldest(session: Session) -> int | None:
    """The oldest position still kept, None for an empty log."""
    position: int | None = session.scalar(select(func.min(_events.c.position)))
    return position


def hold_events(session: Session, hold_id: uuid.UUID) -> Sequence[Any]:
    """One hold's events, oldest first."""
    stmt = select(_events).where(_events.c.hold_id == hold_id).order_by(_events.c.position)
    return session.connection().execute(stmt).all()
