"""Pydantic request and response models, and the status vocabularies they share with the tables."""

import re
import unicodedata
import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, model_validator

HANDLE_PATTERN = re.compile(r"[a-z0-9_]{1,32}")
# What a client may send: surrounding whitespace is stripped and letters are lowercased before the check.
HANDLE_INPUT_PATTERN = r"^\s*[A-Za-z0-9_]{1,32}\s*$"
NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 320  # RFC 3696's bound: 64 before the @, 255 after
CURSOR_MAX_LENGTH = 128  # what encode_cursor makes is about 92 characters
# Control (Cc: NUL, ESC...), format (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, U+200B ZERO WIDTH SPACE, U+200D
# ZERO WIDTH JOINER...), lone surrogates (Cs) and line/paragraph separators (Zl, Zp).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class HoldStatus(StrEnum):
    """A hold's state as reported: HOLD with a past `expires_at` reads EXPIRED."""

    HOLD = "HOLD"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class EventKind(StrEnum):
    """What happened to a slot or its claim (the change log and a hold's history)."""

    HELD = "HELD"
    EXTENDED = "EXTENDED"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    CANCELLED = "CANCELLED"
    LAPSED = "LAPSED"  # a hold whose time was up, retired when the slot was claimed again
    SLOT_CREATED = "SLOT_CREATED"
    SLOT_DELETED = "SLOT_DELETED"


class SlotStatus(StrEnum):
    """A slot's state as seen by the caller."""

    AVAILABLE = "AVAILABLE"
    BOOKED = "BOOKED"
    HELD_BY_ME = "HELD_BY_ME"
    HELD_BY_OTHER = "HELD_BY_OTHER"


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00+14:00 has no UTC equivalent
        raise ValueError("datetime is out of range once converted to UTC") from exc


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A datetime that must carry an offset (naive → 422); normalised to UTC."""


def _visible_text(value: str) -> str:
    for char in value:
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            raise ValueError(f"must not contain control or invisible formatting characters (found U+{ord(char):04X})")
    # One spelling per look: a composed "é" and "e" + combining accent are the same name.
    return unicodedata.normalize("NFC", value)


DisplayName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        description="1-200 characters; no control, bidirectional-override or zero-width characters",
    ),
    AfterValidator(_visible_text),
]
"""A name shown to others (a user's, a room's): nothing in it may change how it or its neighbours look."""

Cursor = Annotated[str, Field(max_length=CURSOR_MAX_LENGTH, description="`next_cursor` from the previous page")]


def _normalise_handle(value: str) -> str:
    handle = value.lower()
    if not HANDLE_PATTERN.fullmatch(handle):
        raise ValueError("handle must be 1-32 letters, digits or underscores")
    return handle


class InputModel(BaseModel):
    """Request bodies: unknown fields are refused, so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ReadModel(BaseModel):
    """Response bodies, built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


class Problem(BaseModel):
    """An RFC 9457 problem document; extra members (e.g. `held_until`) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code")


class UserCreate(InputModel):
    name: DisplayName
    handle: Annotated[str, AfterValidator(_normalise_handle)] = Field(
        max_length=64,
        pattern=HANDLE_INPUT_PATTERN,
        description="1-32 letters, digits or underscores (surrounding whitespace is ignored); "
        "stored lowercase, unique case-insensitively",
    )
    email: Annotated[EmailStr, Field(max_length=EMAIL_MAX_LENGTH)] | None = None


class UserRead(ReadModel):
    id: uuid.UUID
    name: str
    handle: str
    email: str | None
    created_date: datetime
    last_updated_date: datetime


class UserWithToken(UserRead):
    token: str = Field(description="Bearer token; shown only in this response")


class TokenRead(BaseModel):
    user_id: uuid.UUID
    token: str = Field(description="Bearer token; shown only in this response")


class ApiTokenRead(BaseModel):
    """One of the caller's working tokens: never the token itself."""

    id: uuid.UUID
    created_date: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute")
    expires_at: datetime | None = Field(description="None: works until revoked")
    current: bool = Field(description="True for the token this request came with")


class RoomCreate(InputModel):
    name: DisplayName
    capacity: int = Field(ge=1, le=100_000)


class RoomRead(ReadModel):
    id: uuid.UUID
    name: str
    capacity: int
    created_date: datetime
    last_updated_date: datetime


class SlotCreate(InputModel):
    start_time: UtcDatetime
    end_time: UtcDatetime

    @model_validator(mode="after")
    def _start_before_end(self) -> "SlotCreate":
        if self.start_time >= self.end_time:
            raise ValueError("start_time must be before end_time")
        return self


class SlotRead(BaseModel):
    id: uuid.UUID
    room_id: uuid.UUID
    start_time: datetime
    end_time: datetime
    status: SlotStatus
    hold_id: uuid.UUID | None = Field(None, description="The caller's own hold or booking on this slot")
    expires_at: datetime | None = Field(None, description="When the caller's own hold ends")
    held_until: datetime | None = Field(
        None, description="When the slot's live hold ends, whoever holds it (null when available or booked)"
    )
    created_date: datetime
    last_updated_date: datetime


class SlotPage(BaseModel):
    items: list[SlotRead]
    next_cursor: str | None


class HoldCreate(InputModel):
    slot_id: uuid.UUID
    user_id: uuid.UUID | None = Field(None, description="Optional; must be the token's user")


class HoldAction(InputModel):
    user_id: uuid.UUID | None = Field(None, description="Optional; must be the token's user")


class HoldRead(BaseModel):
    hold_id: uuid.UUID
    slot_id: uuid.UUID
    user_id: uuid.UUID
    status: HoldStatus
    expires_at: datetime
    confirmed_at: datetime | None
    extensions_used: int
    extensions_left: int
    created_date: datetime
    last_updated_date: datetime


class HoldEvent(BaseModel):
    position: int = Field(description="The change log position (the live stream's event id)")
    event: EventKind
    status: HoldStatus = Field(description="The hold's status after this transition")
    held_until: datetime | None = Field(description="When the hold ends, while it is a live hold")
    at: datetime


class HoldHistory(BaseModel):
    hold_id: uuid.UUID
    items: list[HoldEvent]


class SlotCounts(BaseModel):
    available: int
    held: int
    booked: int


class Stats(BaseModel):
    room_id: uuid.UUID | None
    day: date
    slots: SlotCounts = Field(description="Slots of the room (all rooms if none given) starting that day (UTC)")
    live_holds: int = Field(description="Unexpired, unconfirmed holds on those slots")
    bookings: int = Field(description="Confirmed bookings on those slots")
    open_streams: int = Field(description="Live streams open on the worker that answered")


class HoldPage(BaseModel):
    items: list[HoldRead]
    next_cursor: str | None


class Health(BaseModel):
    status: str
    database: str
    details: dict[str, Any] = Field(default_factory=dict)
