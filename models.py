"""Typed ORM tables: users, their API tokens, rooms, time slots and holds."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import NullType, TypeEngine

from clock import utc_now
from schemas import EventKind, HoldStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Rows in these states take part in the one-live-claim-per-slot unique index.
ACTIVE_STATUSES = (HoldStatus.HOLD, HoldStatus.CONFIRMED)
ACTIVE_PREDICATE = "status IN ('HOLD', 'CONFIRMED')"
UNCONFIRMED_PREDICATE = "status = 'HOLD'"
EVENT_KINDS_SQL = ", ".join(f"'{kind.value}'" for kind in EventKind)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, one canonical stored form.

    SQLite has no timestamp type and compares text, so every value (rows and bound
    parameters alike) is written as naive UTC in SQLAlchemy's fixed
    `YYYY-MM-DD HH:MM:SS.ffffff` format; PostgreSQL gets `timestamptz`. Naive values
    are refused rather than guessed at, so the server's local zone never leaks in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _aware_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC)


class HoldStatusString(TypeDecorator[HoldStatus]):
    """A HoldStatus stored as its plain value in a VARCHAR(16): no native enum, no migration."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else HoldStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> HoldStatus | None:
        return None if value is None else HoldStatus(value)


# --- the stored forms, for statements run on the driver connection (rawsql.py) --------------------
# What SQLAlchemy's processors for these types send and receive, written once as plain functions:
# rows written below the ORM read back through it unchanged, and the other way round
# (tests/test_rawsql.py holds each against SQLAlchemy's own processors on both dialects).

Convert = Callable[[Any], Any]


def _sqlite_datetime_in(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME text, `YYYY-MM-DD HH:MM:SS.ffffff`, of naive UTC.
    return _aware_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_datetime_out(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _postgresql_datetime_out(value: datetime) -> datetime:
    return value.astimezone(UTC)  # timestamptz arrives in the session's time zone


def _uuid_hex(value: uuid.UUID) -> str:
    return value.hex  # SQLite: CHAR(32), hex digits without dashes


def _uuid_from_hex(value: str) -> uuid.UUID:
    return uuid.UUID(hex=value)


def _status_in(value: str) -> str:
    return HoldStatus(value).value


# Types whose values the drivers take and give as they are.
_AS_IS = (Integer, String, NullType)


def stored_form(type_: TypeEngine[Any], dialect_name: str) -> tuple[Convert | None, Convert | None]:
    """How a value of this column type is written (to the driver) and read back (from it); None: as it is.

    None values pass through untouched on both sides. An unknown type is refused, so a new
    column type cannot be run below the ORM in a form the ORM would not read.
    """
    sqlite = dialect_name == "sqlite"
    if isinstance(type_, UTCDateTime):
        return (_sqlite_datetime_in, _sqlite_datetime_out) if sqlite else (_aware_utc, _postgresql_datetime_out)
    if isinstance(type_, Uuid):
        return (_uuid_hex, _uuid_from_hex) if sqlite else (None, None)  # psycopg: native uuid
    if isinstance(type_, HoldStatusString):
        return _status_in, HoldStatus
    if isinstance(type_, _AS_IS):
        return None, None
    raise TypeError(f"no stored form for {type_!r} on {dialect_name}")


class Table(DeclarativeBase):
    """Every table: one metadata with stable constraint names; datetimes are UTCDateTime."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[type, type[UTCDateTime]]] = {datetime: UTCDateTime}


class Base(Table):
    """An entity: a UUID id and its created / last-updated times."""

    __abstract__ = True

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_date: Mapped[datetime] = mapped_column(default=utc_now)
    last_updated_date: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(200))
    # Stored lowercase (the schema normalises it), so a plain unique index is case-insensitive.
    handle: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))


class ApiToken(Base):
    """A bearer token, kept only as its SHA-256 so a database leak does not leak tokens.

    It works while `revoked_at` is unset and `expires_at` (if any) is in the future. Rows are
    kept after revocation, so a token id stays explainable.
    """

    __tablename__ = "api_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Written at most once a minute per token (tokens.py), so the hot path stays read-only.
    last_used_at: Mapped[datetime | None]


def _room_name_key(context: DefaultExecutionContext) -> str:
    # SQLAlchemy leaves get_current_parameters unannotated.
    name: str = context.get_current_parameters()["name"]  # type: ignore[no-untyped-call]
    return name.casefold()


class Room(Base):
    __tablename__ = "rooms"
    __table_args__ = (CheckConstraint("capacity >= 1", name="capacity_positive"),)

    name: Mapped[str] = mapped_column(String(200))
    # Unicode case folding done here, not by the database: SQLite's lower() folds only ASCII.
    name_key: Mapped[str] = mapped_column(String(200), unique=True, default=_room_name_key)
    capacity: Mapped[int]


class TimeSlot(Base):
    __tablename__ = "time_slots"
    __table_args__ = (
        CheckConstraint("start_time < end_time", name="starts_before_end"),
        Index("ix_time_slots_room_id_start_time", "room_id", "start_time"),
        Index("ix_time_slots_start_time", "start_time"),
    )

    room_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("rooms.id"))
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]


class Hold(Base):
    """A claim on a slot. The row of a confirmed hold *is* the booking.

    `status` is what was last written; a HOLD whose `expires_at` has passed is judged
    expired at query time (lazy expiry) and is only rewritten as EXPIRED when a new
    claim on its slot needs the unique index slot.
    """

    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint("status IN ('HOLD', 'CONFIRMED', 'RELEASED', 'CANCELLED', 'EXPIRED')", name="status_known"),
        CheckConstraint("extension_count >= 0", name="extension_count_non_negative"),
        # The database itself refuses a second active claim on a slot, whoever writes it.
        Index(
            "uq_holds_active_slot",
            "slot_id",
            unique=True,
            sqlite_where=text(ACTIVE_PREDICATE),
            postgresql_where=text(ACTIVE_PREDICATE),
        ),
        # By slot, then owner: a slot's holds, and one user's past claims on it (the re-hold cooldown).
        Index("ix_holds_slot_id_user_id", "slot_id", "user_id"),
        Index("ix_holds_user_id_created_date", "user_id", "created_date"),
        # A user's unconfirmed holds by end: counting the live ones (the per-user cap) reads only those.
        Index(
            "ix_holds_user_id_expires_at",
            "user_id",
            "expires_at",
            sqlite_where=text(UNCONFIRMED_PREDICATE),
            postgresql_where=text(UNCONFIRMED_PREDICATE),
        ),
    )

    slot_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("time_slots.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    status: Mapped[HoldStatus] = mapped_column(HoldStatusString())
    expires_at: Mapped[datetime]
    extension_count: Mapped[int] = mapped_column(default=0)
    confirmed_at: Mapped[datetime | None]


class ServiceSecret(Base):
    """A secret every worker and host must share, e.g. the hash of the admin token generated when none is set.

    Never a plain credential: a database dump must not hand out the admin token.
    """

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(64), unique=True)
    value: Mapped[str] = mapped_column(String(200))


class SlotEvent(Table):
    """One committed change to a slot or its claim: the change log behind the live board.

    Written by `changelog.flush` in the transaction of the change itself, so a rolled-back
    change leaves no event. `position` only grows, and on PostgreSQL positions are taken in
    commit order (see changelog.py), so a reader that has seen position N has seen every
    committed event before it. No foreign keys: a deleted slot's events outlive it.
    """

    __tablename__ = "slot_events"
    __table_args__ = (
        CheckConstraint(f"kind IN ({EVENT_KINDS_SQL})", name="kind_known"),
        Index("ix_slot_events_hold_id", "hold_id"),
        # AUTOINCREMENT: SQLite must never reuse a position, even after pruning empties the table.
        {"sqlite_autoincrement": True},
    )

    position: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    slot_id: Mapped[uuid.UUID]
    room_id: Mapped[uuid.UUID]
    # The slot's start, so a subscriber's time range filters even a deleted slot's event.
    starts_at: Mapped[datetime]
    hold_id: Mapped[uuid.UUID | None]
    # The claim's owner: internal, never shown to anyone but that owner.
    user_id: Mapped[uuid.UUID | None]
    # The hold's status after the change (None for slot events).
    status: Mapped[str | None] = mapped_column(String(16))
    held_until: Mapped[datetime | None]
    occurred_at: Mapped[datetime]


class IdempotencyKey(Base):
    """A request made with an `Idempotency-Key`, and the response it got (idempotency.py).

    Written in the transaction of the change it answers, so neither outlives the other.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
        Index("ix_idempotency_keys_created_date", "created_date"),
    )

    # Whose key: a user's id, "admin", or "anonymous" (sign-up): one client's keys never meet another's.
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of the method, path and body: a key reused for another request is refused.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    body: Mapped[str] = mapped_column(Text)
