"""The hold lifecycle: race-safe claims, conditional transitions judged at query time, user-aware slots.

Every write to `holds` goes through `_write_holds`, running prebuilt statements. Each is one SQL
statement whose WHERE clause carries the whole rule (ownership, state, expiry against the
application clock), so the database decides atomically and no decision rests on a value read
earlier. The partial unique index `uq_holds_active_slot` backs this up: whatever the isolation
level, the database refuses a second HOLD/CONFIRMED row for a slot.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, lru_cache, partial
from math import ceil
from typing import Any, NoReturn, Protocol

from pydantic_core import to_jsonable_python
from sqlalchemy import (
    Column,
    ColumnElement,
    Row,
    Select,
    Table,
    Uuid,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.selectable import ScalarSelect

import changelog
import rawsql
from clock import utc_now
from config import Settings
from db import Database, read_transaction, write_transaction
from errors import (
    BOOKING_CONFLICT_CODES,
    CONFIRM_GONE_DETAIL,
    HOLD_GONE_CODES,
    Code,
    Conflict,
    HoldGone,
    LiveClaim,
    NotFound,
    NotHoldOwner,
    SlotUnavailable,
)
from models import ACTIVE_STATUSES, Hold, HoldStatusString, Room, TimeSlot, User, UTCDateTime
from pagination import DEFAULT_LIMIT, cut_page, decode_cursor, fetch_limit
from schemas import (
    EventKind,
    HoldEvent,
    HoldHistory,
    HoldPage,
    HoldRead,
    HoldReadFields,
    HoldStatus,
    SlotCounts,
    SlotPage,
    SlotRead,
    SlotStatus,
)

HOLD, CONFIRMED = HoldStatus.HOLD, HoldStatus.CONFIRMED
RELEASED, CANCELLED, EXPIRED = HoldStatus.RELEASED, HoldStatus.CANCELLED, HoldStatus.EXPIRED

assert isinstance(Hold.__table__, Table) and isinstance(TimeSlot.__table__, Table)
assert isinstance(User.__table__, Table)
_holds: Table = Hold.__table__
_users: Table = User.__table__
_time_slots: Table = TimeSlot.__table__

HoldColumns = type[Hold] | ReadOnlyColumnCollection[str, Column[Any]]
"""Where a rule finds a hold's columns: the mapped class, an alias of it, or the table's `.c`."""


class StoredFields(Protocol):
    """What every stored row has: an ORM object or a plain row alike."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def created_date(self) -> datetime: ...
    @property
    def last_updated_date(self) -> datetime: ...


class HoldFields(StoredFields, Protocol):
    """A hold as read: an ORM `Hold` or a plain row of the holds table."""

    @property
    def slot_id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> uuid.UUID: ...
    @property
    def status(self) -> HoldStatus: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def confirmed_at(self) -> datetime | None: ...
    @property
    def extension_count(self) -> int: ...


# --- what "live" means, in SQL and in Python --------------------------------------------------


def _status_in(hold: HoldColumns, *statuses: HoldStatus) -> ColumnElement[bool]:
    """`status = 'X'` or `status IN ('X', 'Y')`, the statuses written into the SQL, never bound.

    A planner may use a partial index only when the query's WHERE visibly implies the index's,
    and a bound `IN (?, ?)` does not (SQLite never, PostgreSQL not in a generic plan for a
    prepared statement): without it, every live-claim check scans the slot's whole history of
    dead holds. And SQLite, to decide that, looks at the value bound to a `status = ?` compared
    with a partial index's `status = 'HOLD'`, then prepares the statement again on every run
    because that parameter is bound anew each time (docs/performance.md#where-the-time-goes).
    """
    values: list[ColumnElement[Any]] = [literal_column(f"'{status.value}'") for status in statuses]
    return hold.status == values[0] if len(values) == 1 else hold.status.in_(values)


def _is_active(hold: HoldColumns = Hold) -> ColumnElement[bool]:
    # The unique index's own predicate (see _status_in).
    return _status_in(hold, *ACTIVE_STATUSES)


def live_claim(now: datetime | ColumnElement[datetime], hold: HoldColumns = Hold) -> ColumnElement[bool]:
    """A row that claims its slot at `now`: a booking, or a hold that has not expired."""
    return and_(_is_active(hold), or_(_status_in(hold, CONFIRMED), hold.expires_at > now))


def hold_status(hold: HoldFields, now: datetime) -> HoldStatus:
    """The status a reader sees: an unexpired HOLD whose time is up reads EXPIRED."""
    if hold.status == HOLD and hold.expires_at <= now:
        return HoldStatus.EXPIRED
    return hold.status


def _status_filter(status: HoldStatus, now: datetime) -> ColumnElement[bool]:
    if status is HoldStatus.HOLD:
        return and_(_status_in(Hold, HOLD), Hold.expires_at > now)
    if status is HoldStatus.EXPIRED:
        return or_(_status_in(Hold, EXPIRED), and_(_status_in(Hold, HOLD), Hold.expires_at <= now))
    return _status_in(Hold, status)


def hold_fields(hold: HoldFields, now: datetime, settings: Settings) -> HoldReadFields:
    """A hold row as the API shows it, its status derived at `now` (encoded as is by the hold routes)."""
    return {
        "hold_id": hold.id,
        "slot_id": hold.slot_id,
        "user_id": hold.user_id,
        "status": hold_status(hold, now),
        "expires_at": hold.expires_at,
        "confirmed_at": hold.confirmed_at,
        "extensions_used": hold.extension_count,
        "extensions_left": max(settings.hold_max_extensions - hold.extension_count, 0),
        "created_date": hold.created_date,
        "last_updated_date": hold.last_updated_date,
    }


def hold_read(hold: HoldFields, now: datetime, settings: Settings) -> HoldRead:
    """Render a hold row for the API as a model (inside a page), its status derived at `now`."""
    return HoldRead(**hold_fields(hold, now, settings))


# --- the statements that write holds, built once -------------------------------------------------
# Each is built at import with named parameters and run below the ORM (rawsql.py): compiled once
# per dialect, executed on the transaction's driver connection.

_NOW = bindparam("p_now", type_=UTCDateTime)
_HOLD_ID = bindparam("p_hold_id", type_=Uuid)
_SLOT_ID = bindparam("p_slot_id", type_=Uuid)
_USER_ID = bindparam("p_user_id", type_=Uuid)


def _live_holds_of(user_id: ColumnElement[uuid.UUID], now: ColumnElement[datetime]) -> ScalarSelect[Any]:
    """How many unconfirmed holds of this user are live at `now` (the per-user cap)."""
    # `status = 'HOLD'`: the partial index ix_holds_user_id_expires_at's own predicate, so only
    # the user's unconfirmed holds are read (see _status_in).
    return (
        select(func.count())
        .select_from(_holds)
        .where(_holds.c.user_id == user_id, _status_in(_holds.c, HOLD), _holds.c.expires_at > now)
        .scalar_subquery()
    )


def _recent_claim_by(
    user_id: ColumnElement[uuid.UUID],
    slot_id: ColumnElement[uuid.UUID],
    since: ColumnElement[datetime],
    now: ColumnElement[datetime],
) -> ColumnElement[bool]:
    """This user's own claim on this slot ended after `since` (released, cancelled, or lapsed by `now`)."""
    ended_by_hand = and_(_status_in(_holds.c, RELEASED, CANCELLED), _holds.c.last_updated_date > since)
    lapsed = and_(_status_in(_holds.c, HOLD, EXPIRED), _holds.c.expires_at > since, _holds.c.expires_at <= now)
    return and_(_holds.c.slot_id == slot_id, _holds.c.user_id == user_id, or_(ended_by_hand, lapsed))


# INSERT … SELECT … WHERE the slot is open and has no live claim, the user is under the cap and
# not in a cooldown on this slot; RETURNING is empty when refused (RETURNING, not rowcount:
# psycopg 3.3 resets rowcount when SQLAlchemy closes the cursor).
_INSERT_HOLD = rawsql.Statement(
    insert(_holds)
    .from_select(
        ["id", "slot_id", "user_id", "status", "expires_at", "extension_count", "created_date", "last_updated_date"],
        select(
            _HOLD_ID,
            _SLOT_ID,
            _USER_ID,
            literal(HOLD, HoldStatusString()),
            bindparam("p_expires_at", type_=UTCDateTime),
            literal(0),
            _NOW,
            _NOW,
        ).where(
            exists().where(TimeSlot.id == _SLOT_ID, TimeSlot.start_time > _NOW),
            ~exists().where(Hold.slot_id == _SLOT_ID, live_claim(_NOW)),
            _live_holds_of(_USER_ID, _NOW) < bindparam("p_max_active"),
            ~exists().where(
                _recent_claim_by(_USER_ID, _SLOT_ID, bindparam("p_cooldown_since", type_=UTCDateTime), _NOW)
            ),
        ),
    )
    .returning(*_holds.c)
)

# The unique index predicate cannot mention the time, so a hold that lapsed still occupies the
# slot's index entry until it is marked EXPIRED, in the same transaction as a new claim.
_RETIRE_EXPIRED = rawsql.Statement(
    update(_holds)
    .where(_holds.c.slot_id == _SLOT_ID, _is_active(_holds.c), _status_in(_holds.c, HOLD), _holds.c.expires_at <= _NOW)
    .values(status=EXPIRED, last_updated_date=_NOW)
    .returning(*_holds.c)
)


def _transition_statement(*rule: ColumnElement[bool], **values: object) -> rawsql.Statement:
    """A conditional UPDATE of one hold, by its owner, under `rule`, judged at p_now."""
    return rawsql.Statement(
        update(_holds)
        .where(_holds.c.id == _HOLD_ID, _holds.c.user_id == _USER_ID, *rule)
        .values(**values, last_updated_date=_NOW)
        .returning(*_holds.c)
    )


# PostgreSQL: every hold write first locks its slot's row (a transition: then its hold's row,
# in that order, as a claim does), and only then reads the clock (write_transaction). A write
# that queued behind another on the same slot judges expiry by the time it runs, and one slot's
# writes commit in the order of their timestamps, as under SQLite's write lock.
# FOR NO KEY UPDATE: it queues writers of the slot, but not the foreign-key checks of new holds.
_LOCK_SLOT = rawsql.Statement(
    select(_time_slots.c.id).where(_time_slots.c.id == _SLOT_ID).with_for_update(key_share=True)
)
# A new hold then locks its user's row: two holds of one user cannot both hold it (the cap).
_LOCK_USER = rawsql.Statement(select(_users.c.id).where(_users.c.id == _USER_ID).with_for_update(key_share=True))
_LOCK_SLOT_THEN_HOLD = rawsql.Statement(
    select(_holds.c.id)
    .where(
        _holds.c.id == _HOLD_ID,
        _holds.c.slot_id
        == select(_time_slots.c.id)
        .where(_time_slots.c.id == select(_holds.c.slot_id).where(_holds.c.id == _HOLD_ID).scalar_subquery())
        .with_for_update(key_share=True)
        .scalar_subquery(),
    )
    .with_for_update(key_share=True)
)

# Deleting a slot takes its history of dead holds with it.
_DELETE_DEAD_HOLDS = rawsql.Statement(delete(_holds).where(_holds.c.slot_id == _SLOT_ID, ~live_claim(_NOW, _holds.c)))


_HoldWrite = tuple[rawsql.Statement, EventKind | None, dict[str, object]]
"""One prebuilt statement that writes holds, the event it logs, and its parameters."""


def _write(statement: rawsql.Statement, event: EventKind | None, **params: object) -> _HoldWrite:
    """A write for `_write_holds`: `statement` with `params` (named without their `p_`), logged as `event`."""
    return statement, event, {f"p_{name}": value for name, value in params.items()}


def _write_holds(session: Session, *writes: _HoldWrite) -> list[rawsql.Record | None]:
    """The one place hold rows are written: run prebuilt statements in order, log each change, return each one's row.

    The statements go in one batch (one round trip on PostgreSQL): none may need an earlier
    one's row. `event` is None only for deleting a slot's dead holds, logged once as the slot's
    SLOT_DELETED.
    """
    results = rawsql.execute_batch(session.connection(), [(statement, params) for statement, _, params in writes])
    holds = [rows[0] if rows else None for rows in results]
    for hold, (_, event, _) in zip(holds, writes, strict=True):
        if hold is not None and event is not None:
            changelog.record_hold(session, event, hold)
    return holds


# --- the lifecycle -------------------------------------------------------------------------------


class HoldAttempts:
    """A worker's concurrent unkeyed holds: answered from shared fast reads, one claim per slot written at a time.

    Under a rush on one slot (a hundred clicks when it frees up) every request that saw it free
    would otherwise run a write transaction, queue on the slot's row lock and be refused in turn
    by the winner's claim, each at a write's cost. Here the first one claims in its turn; the
    others of this worker wait for the turn to end. If it claimed the slot, or its write was
    refused by another worker's claim, they are refused from that claim; if not, they read
    again (docs/design.md#a-rush-on-one-slot).

    Nothing is decided here that the claim's own statement would not: a request is refused only
    for a claim seen live at a moment after it arrived (by a read sent after it asked, or by a
    turn that began after it asked), and waiting only delays its claim.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[uuid.UUID, _SlotTurns] = {}  # slots with a hold request under way here

    @asynccontextmanager
    async def turn(self, slot_id: uuid.UUID, user_id: uuid.UUID) -> AsyncIterator["ClaimTurn"]:
        """404 or 409 raised, from fast reads or from a claim written meanwhile; else this worker's turn to claim.

        The turn's `read` is True when a read found the slot free (`create_hold` skips its own),
        False when no fast read could answer (then `create_hold` reads and decides as it always
        did, and no turn is taken). A claim written in the turn is told to it (`ClaimTurn.claimed`);
        a claim that refused its write comes with the refusal (`SlotUnavailable.claim`).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): nothing of the old one carries over
            self._loop, self._slots = loop, {}
        slots = self._slots
        slot = slots.get(slot_id)
        if slot is None:
            slot = slots[slot_id] = _SlotTurns()
        slot.requests += 1
        arrived = slot.turns_begun  # a turn numbered above this began after this request arrived
        try:
            while True:
                turns_ended = slot.turns_ended
                if not await self._refuse_if_taken(slot_id, user_id):
                    yield ClaimTurn(read=False)
                    return
                if slot.claiming is not None:
                    await asyncio.wait([slot.claiming])  # not cancelled with this request: others wait on it too
                elif slot.turns_ended == turns_ended:
                    break
                # A turn ended since the read went out: the claim it made or was refused by, if
                # the turn began after this request arrived, refuses it; else the slot is read again.
                last = slot.last_turn
                claim = last.claim if last is not None and last.number > arrived else None
                if claim is not None and (claim.status == CONFIRMED or claim.held_until > utc_now()):
                    _refuse_claimed(claim, user_id)  # (unexpired now: live when seen, before now)
            slot.turns_begun += 1
            turn = ClaimTurn(read=True, number=slot.turns_begun)
            slot.claiming = loop.create_future()
            try:
                yield turn
            except SlotUnavailable as refused:
                turn.claim = refused.claim  # the claim its write found, seen live after the turn began
                raise
            finally:
                slot.last_turn = turn
                slot.turns_ended += 1
                slot.claiming.set_result(None)
                slot.claiming = None
        finally:
            slot.requests -= 1
            if slot.requests == 0:
                del slots[slot_id]

    async def _refuse_if_taken(self, slot_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """`create_hold`'s refusal read, shared (fastread.py): 404 or 409 raised; True: found free; False: not read."""
        read = await self._db.reads.shared(("refusal", slot_id), partial(_read_slot_and_claim, self._db, slot_id))
        if read is None:
            return False
        slot, now = read
        _refuse_if_claimed(slot, user_id, now)
        return True


@dataclass
class ClaimTurn:
    """A request's turn to claim a slot (`HoldAttempts.turn`): did a read find it free; the claim it made or met."""

    read: bool
    number: int = 0
    claim: LiveClaim | None = None

    def claimed(self, hold: HoldReadFields) -> HoldReadFields:
        """Record the hold this turn's claim wrote and committed; return it."""
        self.claim = LiveClaim(hold["user_id"], hold["status"], hold["expires_at"], hold["hold_id"])
        return hold


@dataclass
class _SlotTurns:
    """One slot's hold requests under way in this worker (`HoldAttempts`)."""

    requests: int = 0
    claiming: asyncio.Future[None] | None = None  # done when the turn under way ends
    turns_begun: int = 0
    turns_ended: int = 0
    last_turn: ClaimTurn | None = None


async def _read_slot_and_claim(db: Database, slot_id: uuid.UUID) -> tuple[rawsql.Record | None, datetime] | None:
    """`_slot_and_claim` as a fast read, with the time it is judged at; None when it could not be read so."""
    judged_at: list[datetime] = []

    def params() -> dict[str, object]:  # the clock read once a connection is held, as a transaction's would be
        judged_at.append(utc_now())
        return {"p_now": judged_at[0], "p_slot_id": slot_id, "p_viewer": None}

    rows = await db.reads.fetch(_one_slot_statement(False), params)
    if rows is None:
        return None
    return (rows[0] if rows else None), judged_at[0]


def create_hold(
    session: Session, *, slot_id: uuid.UUID, user_id: uuid.UUID, settings: Settings, refusal_read: bool = True
) -> HoldReadFields:
    """Claim a free slot for `settings.hold_ttl_seconds`; 404 unknown slot, 409 taken or started.

    `refusal_read=False`: the caller has just made it (`HoldAttempts.turn`).
    """
    # A slot that is plainly taken is refused from a read, so the contention path (a hundred
    # clicks on one slot) never queues for the write lock. The read only refuses: it saw a
    # live claim at `now`, so 409 is true. The write below still decides alone whether to claim.
    if refusal_read:
        with read_transaction(session) as now:
            _refuse_if_claimed(_slot_and_claim(session, slot_id, now), user_id, now)
    try:
        # The user's row after the slot's: one user's holds take turns, so the cap below counts
        # every hold committed before this one (SQLite's one writer does this already).
        with write_transaction(session, _LOCK_SLOT, _LOCK_USER, p_slot_id=slot_id, p_user_id=user_id) as now:
            # Retiring the slot's lapsed hold and the claim, in one round trip: the claim needs
            # the retirement done (the unique index), not its row.
            _, hold = _write_holds(
                session,
                _write(_RETIRE_EXPIRED, EventKind.LAPSED, slot_id=slot_id, now=now),
                _write(
                    _INSERT_HOLD,
                    EventKind.HELD,
                    hold_id=uuid.uuid4(),
                    slot_id=slot_id,
                    user_id=user_id,
                    now=now,
                    expires_at=now + timedelta(seconds=settings.hold_ttl_seconds),
                    max_active=settings.hold_max_active_per_user,
                    cooldown_since=now - timedelta(seconds=settings.hold_rehold_cooldown_seconds),
                ),
            )
            if hold is None:
                _explain_refused_claim(session, slot_id, user_id, now, settings)
    except IntegrityError:
        # A concurrent transaction won the unique index (PostgreSQL, READ COMMITTED), or the
        # slot was deleted under us: report the state as it is now.
        with read_transaction(session) as now:
            _explain_refused_claim(session, slot_id, user_id, now, settings)
    return hold_fields(hold, now, settings)


@cache
def _one_slot_statement(viewer: bool) -> rawsql.Statement:
    return rawsql.Statement(_slot_query(viewer=viewer, one=True))


def _slot_and_claim(
    session: Session, slot_id: uuid.UUID, now: datetime, viewer_id: uuid.UUID | None = None
) -> rawsql.Record | None:
    """The slot's row with its live claim at `now` (claim_* columns None when free); None if no slot."""
    params = {"p_now": now, "p_slot_id": slot_id, "p_viewer": viewer_id}
    return rawsql.first(session.connection(), _one_slot_statement(viewer_id is not None), params)


def _refuse_if_claimed(slot: rawsql.Record | None, user_id: uuid.UUID, now: datetime) -> None:
    """404 for no slot, 409 when it has started or has a live claim (saying whose, and until when)."""
    if slot is None:
        raise NotFound(Code.SLOT_NOT_FOUND, "No slot has this id.")
    if slot.start_time <= now:
        raise Conflict(Code.SLOT_STARTED, "This slot has already started and can no longer be held.")
    if slot.claim_id is None:
        return
    _refuse_claimed(LiveClaim(slot.claim_user_id, slot.claim_status, slot.claim_expires_at, slot.claim_id), user_id)


def _refuse_claimed(claim: LiveClaim, user_id: uuid.UUID) -> NoReturn:
    """409 for a slot with this live claim, as `user_id` sees it (theirs: its id too)."""
    if claim.status == CONFIRMED:
        raise SlotUnavailable(
            Code.SLOT_UNAVAILABLE, "This slot is already booked.", claim=claim, slot_status=SlotStatus.BOOKED
        )
    mine = claim.owner_id == user_id
    raise SlotUnavailable(
        Code.SLOT_UNAVAILABLE,
        f"This slot is held {'by you' if mine else 'by another user'} until {to_jsonable_python(claim.held_until)}.",
        claim=claim,
        slot_status=SlotStatus.HELD_BY_ME if mine else SlotStatus.HELD_BY_OTHER,
        held_until=claim.held_until,
        hold_id=claim.hold_id if mine else None,
    )


def _explain_refused_claim(
    session: Session, slot_id: uuid.UUID, user_id: uuid.UUID, now: datetime, settings: Settings
) -> NoReturn:
    _refuse_if_claimed(_slot_and_claim(session, slot_id, now), user_id, now)
    connection = session.connection()
    active, earliest_end = connection.execute(_USER_LIVE_HOLDS, {"p_user_id": user_id, "p_now": now}).one()
    if active >= settings.hold_max_active_per_user:
        raise Conflict(
            Code.HOLD_LIMIT_REACHED,
            f"You already hold {active} slot(s), the most one user may hold at once; confirm or release one first.",
            active_holds=active,
            limit=settings.hold_max_active_per_user,
            earliest_ends_at=earliest_end,
        )
    since = now - timedelta(seconds=settings.hold_rehold_cooldown_seconds)
    ended = connection.execute(
        _LAST_CLAIM_END, {"p_user_id": user_id, "p_slot_id": slot_id, "p_since": since, "p_now": now}
    ).scalar()
    if ended is not None:
        retry_at = ended + timedelta(seconds=settings.hold_rehold_cooldown_seconds)
        raise Conflict(
            Code.HOLD_COOLDOWN,
            "Your own hold on this slot ended moments ago; others get a turn before you may hold it again.",
            headers={"Retry-After": str(max(ceil((retry_at - now).total_seconds()), 1))},
            retry_at=retry_at,
        )
    # The competing claim ended between our statements.
    raise SlotUnavailable(Code.SLOT_UNAVAILABLE, "This slot was claimed concurrently; try again.")


# Explaining a refused hold (rare): how many live holds the user has and when the first ends,
# and when the user's own last claim on the slot ended.
_USER_LIVE_HOLDS = select(func.count(), func.min(_holds.c.expires_at)).where(
    _holds.c.user_id == _USER_ID, _status_in(_holds.c, HOLD), _holds.c.expires_at > _NOW
)
_LAST_CLAIM_END = select(
    func.max(case((_status_in(_holds.c, RELEASED, CANCELLED), _holds.c.last_updated_date), else_=_holds.c.expires_at))
).where(_recent_claim_by(_USER_ID, _SLOT_ID, bindparam("p_since", type_=UTCDateTime), _NOW))


# One hold by id, as plain columns (hold_read reads rows and ORM objects alike).
_HOLD_BY_ID = rawsql.Statement(select(_holds).where(_holds.c.id == _HOLD_ID))


def _owned_hold(session: Session, hold_id: uuid.UUID, user_id: uuid.UUID) -> rawsql.Record:
    hold = rawsql.first(session.connection(), _HOLD_BY_ID, {"p_hold_id": hold_id})
    if hold is None:
        raise NotFound(Code.HOLD_NOT_FOUND, "No hold has this id.")
    if hold.user_id != user_id:
        raise NotHoldOwner()
    return hold


def _gone(hold: HoldFields, now: datetime, detail: str) -> HoldGone:
    status = hold_status(hold, now)
    return HoldGone(HOLD_GONE_CODES[status], detail, hold_status=status)


# --- the four transitions: write, else explain why not ---------------------------------------------


def _no_params(now: datetime, settings: Settings) -> dict[str, object]:
    return {}


@dataclass(frozen=True)
class _Transition:
    """One owner's action on one hold: a conditional UPDATE, and why it may have written nothing.

    `explain` sees the caller's own hold as it is when the UPDATE wrote nothing; it raises the
    reason, or returns when the hold is already where the action leads (a repeat is a no-op).
    """

    statement: rawsql.Statement
    event: EventKind
    explain: Callable[[HoldFields, datetime, Settings], None]
    params: Callable[[datetime, Settings], dict[str, object]] = field(default=_no_params)

    def apply(self, session: Session, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
        """Write the action, else explain why not; return the hold as it now is."""
        with write_transaction(session, _LOCK_SLOT_THEN_HOLD, p_hold_id=hold_id) as now:
            params = self.params(now, settings)
            (written,) = _write_holds(
                session, _write(self.statement, self.event, hold_id=hold_id, user_id=user_id, now=now, **params)
            )
            hold: HoldFields | None = written
            if hold is None:
                hold = _owned_hold(session, hold_id, user_id)
                self.explain(hold, now, settings)
        return hold_fields(hold, now, settings)


def _why_not_confirmed(hold: HoldFields, now: datetime, settings: Settings) -> None:
    if hold.status != CONFIRMED:
        raise _gone(hold, now, CONFIRM_GONE_DETAIL)


def _why_not_released(hold: HoldFields, now: datetime, settings: Settings) -> None:
    if hold.status in (CONFIRMED, CANCELLED):
        raise Conflict(BOOKING_CONFLICT_CODES[hold.status], "A booking cannot be released; cancel it instead.")
    if hold.status != RELEASED:
        raise _gone(hold, now, "This hold has expired.")


def _why_not_extended(hold: HoldFields, now: datetime, settings: Settings) -> None:
    status = hold_status(hold, now)
    if status is HoldStatus.HOLD:
        raise Conflict(
            Code.EXTENSION_LIMIT_REACHED,
            f"A hold can be extended at most {settings.hold_max_extensions} time(s).",
        )
    if status in (HoldStatus.CONFIRMED, HoldStatus.CANCELLED):
        raise Conflict(BOOKING_CONFLICT_CODES[status], "Only a live hold can be extended.")
    raise _gone(hold, now, "This hold has expired or was released.")


def _why_not_cancelled(hold: HoldFields, now: datetime, settings: Settings) -> None:
    if hold.status == CONFIRMED:
        raise Conflict(Code.SLOT_STARTED, "A booking cannot be cancelled once its slot has started.")
    if hold.status != CANCELLED:
        raise Conflict(Code.HOLD_NOT_CONFIRMED, "Only a confirmed booking can be cancelled.")


def _extension(now: datetime, settings: Settings) -> dict[str, object]:
    return {
        "max_extensions": settings.hold_max_extensions,
        "new_expires_at": now + timedelta(seconds=settings.hold_ttl_seconds),
    }


_LIVE_HOLD = (_status_in(_holds.c, HOLD), _holds.c.expires_at > _NOW)
_CONFIRM = _Transition(
    _transition_statement(*_LIVE_HOLD, status=CONFIRMED, confirmed_at=_NOW),
    EventKind.CONFIRMED,
    _why_not_confirmed,
)
_RELEASE = _Transition(_transition_statement(*_LIVE_HOLD, status=RELEASED), EventKind.RELEASED, _why_not_released)
_EXTEND = _Transition(
    _transition_statement(
        *_LIVE_HOLD,
        _holds.c.extension_count < bindparam("p_max_extensions"),
        expires_at=bindparam("p_new_expires_at", type_=UTCDateTime),
        extension_count=_holds.c.extension_count + 1,
    ),
    EventKind.EXTENDED,
    _why_not_extended,
    _extension,
)
_CANCEL = _Transition(
    _transition_statement(
        _status_in(_holds.c, CONFIRMED),
        exists().where(TimeSlot.id == _holds.c.slot_id, TimeSlot.start_time > _NOW),
        status=CANCELLED,
    ),
    EventKind.CANCELLED,
    _why_not_cancelled,
)


class HoldTransition(Protocol):
    """confirm_hold, release_hold, extend_hold and cancel_booking: one owner's action on one hold."""

    def __call__(
        self, session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings
    ) -> HoldReadFields:
        """Apply the action; return the hold as it now is."""
        ...


def confirm_hold(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
    """Turn the caller's live hold into a booking; confirming a booking again returns it."""
    return _CONFIRM.apply(session, hold_id, user_id, settings)


def release_hold(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
    """Give the caller's live hold back; releasing it again returns it."""
    return _RELEASE.apply(session, hold_id, user_id, settings)


def extend_hold(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
    """Move the caller's live hold's expiry to now + TTL, at most `hold_max_extensions` times."""
    return _EXTEND.apply(session, hold_id, user_id, settings)


def cancel_booking(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
    """Cancel the caller's booking before its slot starts, freeing the slot; again returns it."""
    return _CANCEL.apply(session, hold_id, user_id, settings)


def hold_history(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID) -> HoldHistory:
    """The caller's hold's transitions, oldest first, from the change log (as far as it is kept)."""
    with read_transaction(session):
        _owned_hold(session, hold_id, user_id)
        events = changelog.hold_events(session, hold_id)
    items = [
        HoldEvent(
            position=e.position,
            event=EventKind(e.kind),
            status=HoldStatus(e.status),
            held_until=e.held_until,
            at=e.occurred_at,
        )
        for e in events
    ]
    return HoldHistory(hold_id=hold_id, items=items)


def get_hold(session: Session, *, hold_id: uuid.UUID, user_id: uuid.UUID, settings: Settings) -> HoldReadFields:
    """One of the caller's holds, its status derived now."""
    with read_transaction(session) as now:
        return hold_fields(_owned_hold(session, hold_id, user_id), now, settings)


def list_holds(
    session: Session,
    *,
    user_id: uuid.UUID,
    status: HoldStatus | None,
    limit: int,
    cursor: str | None,
    settings: Settings,
) -> HoldPage:
    """The caller's holds and bookings, newest first, keyset-paginated."""
    stmt = select(Hold).where(Hold.user_id == user_id)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Hold.created_date < at, and_(Hold.created_date == at, Hold.id < last_id)))
    with read_transaction(session) as now:
        if status is not None:
            stmt = stmt.where(_status_filter(status, now))
        stmt = stmt.order_by(Hold.created_date.desc(), Hold.id.desc()).limit(fetch_limit(limit))
        rows = list(session.scalars(stmt))
    page, next_cursor = cut_page(rows, limit, lambda hold: (hold.created_date, hold.id))
    return HoldPage(items=[hold_read(h, now, settings) for h in page], next_cursor=next_cursor)


# --- slots as each caller sees them ----------------------------------------------------------------


@lru_cache(maxsize=64)
def _slot_query(
    *,
    viewer: bool,
    room: bool = False,
    to: bool = False,
    status: bool = False,
    cursor: bool = False,
    one: bool = False,
    ids: bool = False,
) -> Select[Any]:
    """The slot view for a caller, built once per combination of filters, with named parameters.

    Plain columns, not ORM entities: a listing is read-only and this is the hot read path.
    """
    claim = aliased(Hold)
    whens: list[tuple[ColumnElement[bool], str]] = [
        (claim.id.is_(None), SlotStatus.AVAILABLE.value),
        (_status_in(claim, CONFIRMED), SlotStatus.BOOKED.value),
    ]
    if viewer:
        whens.append((claim.user_id == bindparam("p_viewer", type_=Uuid), SlotStatus.HELD_BY_ME.value))
    slot_status = case(*whens, else_=SlotStatus.HELD_BY_OTHER.value)
    stmt = select(
        TimeSlot.id,
        TimeSlot.room_id,
        TimeSlot.start_time,
        TimeSlot.end_time,
        TimeSlot.created_date,
        TimeSlot.last_updated_date,
        claim.id.label("claim_id"),
        claim.user_id.label("claim_user_id"),
        claim.status.label("claim_status"),
        claim.expires_at.label("claim_expires_at"),
        slot_status.label("status"),
    ).outerjoin(claim, and_(claim.slot_id == TimeSlot.id, live_claim(_NOW, claim)))
    if one:
        return stmt.where(TimeSlot.id == _SLOT_ID)
    if ids:
        return stmt.where(TimeSlot.id.in_(bindparam("p_ids", expanding=True)))
    stmt = stmt.where(TimeSlot.start_time >= bindparam("p_from", type_=UTCDateTime))
    if room:
        stmt = stmt.where(TimeSlot.room_id == bindparam("p_room", type_=Uuid))
    if to:
        stmt = stmt.where(TimeSlot.start_time < bindparam("p_to", type_=UTCDateTime))
    if status:
        stmt = stmt.where(slot_status == bindparam("p_status"))
    if cursor:
        at, last_id = bindparam("p_cursor_at", type_=UTCDateTime), bindparam("p_cursor_id", type_=Uuid)
        stmt = stmt.where(or_(TimeSlot.start_time > at, and_(TimeSlot.start_time == at, TimeSlot.id > last_id)))
    return stmt.order_by(TimeSlot.start_time, TimeSlot.id).limit(bindparam("p_limit"))


class SlotFields(StoredFields, Protocol):
    """A slot as read: an ORM `TimeSlot` or a row of the slot view."""

    @property
    def room_id(self) -> uuid.UUID: ...
    @property
    def start_time(self) -> datetime: ...
    @property
    def end_time(self) -> datetime: ...


def slot_read(
    slot: SlotFields,
    status: SlotStatus,
    *,
    hold_id: uuid.UUID | None = None,
    expires_at: datetime | None = None,
    held_until: datetime | None = None,
) -> SlotRead:
    """Render a slot for the API with its status for the caller (and the caller's own claim)."""
    # model_construct: every value comes typed from the database (UUID, aware UTC datetime,
    # a known status), so validating 50 rows again would only cost time.
    return SlotRead.model_construct(
        id=slot.id,
        room_id=slot.room_id,
        start_time=slot.start_time,
        end_time=slot.end_time,
        status=status,
        hold_id=hold_id,
        expires_at=expires_at,
        held_until=held_until,
        created_date=slot.created_date,
        last_updated_date=slot.last_updated_date,
    )


def slot_status(row: Row[Any], viewer_id: uuid.UUID | None, now: datetime) -> SlotStatus:
    """A slot's status for this caller at `now`, from its row's claim_* columns.

    The same rule as the listing's SQL CASE, judged again at `now`: a board that keeps a row
    (the live stream, a room's board) sees a hold lapse without reading the database again.
    """
    return claim_seen_as(row.claim_status, row.claim_expires_at, row.claim_user_id, viewer_id, now)


def claim_seen_as(
    status: str | None, expires_at: datetime | None, owner: uuid.UUID | None, viewer_id: uuid.UUID | None, now: datetime
) -> SlotStatus:
    """`slot_status` from the claim's values (None: no live claim when read), for boards that keep them unpacked."""
    if status is None or (status == HOLD and expires_at <= now):  # type: ignore[operator]
        return SlotStatus.AVAILABLE
    if status == CONFIRMED:
        return SlotStatus.BOOKED
    return SlotStatus.HELD_BY_ME if viewer_id is not None and owner == viewer_id else SlotStatus.HELD_BY_OTHER


def slot_view(row: Row[Any], viewer_id: uuid.UUID | None, now: datetime) -> SlotRead:
    """A slot row of the slot view as this caller sees it at `now`: no one else's ids."""
    status = slot_status(row, viewer_id, now)
    held = status in (SlotStatus.HELD_BY_ME, SlotStatus.HELD_BY_OTHER)
    mine = status is SlotStatus.HELD_BY_ME or (status is SlotStatus.BOOKED and row.claim_user_id == viewer_id)
    return slot_read(
        row,
        status,
        hold_id=row.claim_id if mine else None,
        expires_at=row.claim_expires_at if status is SlotStatus.HELD_BY_ME else None,
        held_until=row.claim_expires_at if held else None,
    )


def list_slots(
    session: Session,
    *,
    viewer_id: uuid.UUID | None,
    room_id: uuid.UUID | None,
    start_from: datetime | None,
    start_to: datetime | None,
    status: SlotStatus | None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> SlotPage:
    """Slots ordered by start time with each one's status for the caller, keyset-paginated."""
    at, last_id = decode_cursor(cursor) if cursor is not None else (None, None)
    stmt = _slot_query(
        viewer=viewer_id is not None,
        room=room_id is not None,
        to=start_to is not None,
        status=status is not None,
        cursor=cursor is not None,
    )
    with read_transaction(session) as now:
        params = {
            "p_now": now,
            "p_viewer": viewer_id,
            "p_from": start_from or now,
            "p_room": room_id,
            "p_to": start_to,
            "p_status": status.value if status else None,
            "p_cursor_at": at,
            "p_cursor_id": last_id,
            "p_limit": fetch_limit(limit),
        }
        # Plain rows through the Core connection: no ORM result layer on the hot read path.
        rows = session.connection().execute(stmt, params).all()
        # The rows name the room, so it is looked up only when there are none (404 or empty page).
        if not rows and room_id is not None and session.get(Room, room_id) is None:
            raise NotFound(Code.ROOM_NOT_FOUND, "No room has this id.")
    page, next_cursor = cut_page(rows, limit, lambda row: (row.start_time, row.id))
    return SlotPage(items=[slot_view(row, viewer_id, now) for row in page], next_cursor=next_cursor)


def slot_rows(
    session: Session,
    now: datetime,
    *,
    ids: Collection[uuid.UUID] | None = None,
    room_id: uuid.UUID | None = None,
    start_from: datetime | None = None,
    start_to: datetime | None = None,
    limit: int = 1,
) -> Sequence[Row[Any]]:
    """Slots with their live claim at `now` (claim_* columns, for `slot_read`), by ids or by range.

    For the live board, which renders each row for many callers: the claim's owner is in the
    row, so the caller-dependent status is decided in Python (`slot_status`), not in SQL.
    """
    if ids is not None:
        stmt = _slot_query(viewer=False, ids=True)
        return session.connection().execute(stmt, {"p_now": now, "p_ids": list(ids)}).all() if ids else []
    stmt = _slot_query(viewer=False, room=room_id is not None, to=start_to is not None)
    params = {
        "p_now": now,
        "p_from": start_from or now,
        "p_room": room_id,
        "p_to": start_to,
        "p_limit": limit,
    }
    return session.connection().execute(stmt, params).all()


def get_slot(session: Session, *, slot_id: uuid.UUID, viewer_id: uuid.UUID | None) -> SlotRead:
    """One slot with its status for the caller."""
    with read_transaction(session) as now:
        row = _slot_and_claim(session, slot_id, now, viewer_id)
    if row is None:
        raise NotFound(Code.SLOT_NOT_FOUND, "No slot has this id.")
    return slot_view(row, viewer_id, now)


def slot_counts(
    session: Session, *, room_id: uuid.UUID | None, start_from: datetime, start_to: datetime
) -> tuple[SlotCounts, datetime]:
    """How many slots starting in [start_from, start_to) are available, held and booked now."""
    claim = aliased(Hold)
    with read_transaction(session) as now:
        stmt = (
            select(
                func.count(TimeSlot.id),
                func.count(case((_status_in(claim, HOLD), 1))),
                func.count(case((_status_in(claim, CONFIRMED), 1))),
            )
            .outerjoin(claim, and_(claim.slot_id == TimeSlot.id, live_claim(now, claim)))
            .where(TimeSlot.start_time >= start_from, TimeSlot.start_time < start_to)
        )
        if room_id is not None:
            stmt = stmt.where(TimeSlot.room_id == room_id)
        total, held, booked = session.execute(stmt).one()
    return SlotCounts(available=total - held - booked, held=held, booked=booked), now


def delete_slot(session: Session, *, slot_id: uuid.UUID) -> None:
    """Delete a slot and its dead hold history; 409 while it is held or booked."""
    try:
        with write_transaction(session, _LOCK_SLOT, p_slot_id=slot_id) as now:
            slot = session.get(TimeSlot, slot_id)
            if slot is None:
                raise NotFound(Code.SLOT_NOT_FOUND, "No slot has this id.")
            if session.scalar(select(Hold.id).where(Hold.slot_id == slot_id, live_claim(now))) is not None:
                raise Conflict(Code.SLOT_IN_USE, "The slot is held or booked; it cannot be deleted.")
            _write_holds(session, _write(_DELETE_DEAD_HOLDS, None, slot_id=slot_id, now=now))
            session.execute(delete(_time_slots).where(TimeSlot.id == slot_id))
            changelog.record(session, EventKind.SLOT_DELETED, slot_id, room_id=slot.room_id, starts_at=slot.start_time)
    except IntegrityError as exc:
        # A claim arrived between the check and the delete; the foreign key refused the delete.
        raise Conflict(Code.SLOT_IN_USE, "The slot is held or booked; it cannot be deleted.") from exc
