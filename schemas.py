"""Pydantic request and response models, and the status vocabularies they share with the tables."""

import re
import unicodedata
import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypedDict

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
    """An RFC 9457 problem document: every error the API sends has these members."""

    type: str = Field(description="urn:booking:problem:<code in kebab case>")
    title: str
    status: int
    detail: str = Field(description="Prose for people; may change")
    code: str = Field(description="Stable machine-readable error code; each operation lists the ones it can return")
    request_id: str | None = Field(None, description="This request's X-Request-ID: quote it when reporting a failure")


# One problem schema per status, with the members its codes add, typed. The OpenAPI document
# narrows `code` per operation to the codes that operation can return (errors.problems).


class UnauthorizedProblem(Problem):
    """401: no bearer token where one is needed, or one that is not valid (`WWW-Authenticate: Bearer`)."""

    status: Literal[401]


class ForbiddenProblem(Problem):
    """403: authenticated, but not allowed to do this."""

    status: Literal[403]


class NotFoundProblem(Problem):
    """404: the named resource does not exist."""

    status: Literal[404]


class ConflictProblem(Problem):
    """409: the request clashes with the current state."""

    status: Literal[409]


class SlotUnavailableProblem(Problem):
    """409 `SLOT_UNAVAILABLE`: the slot has a live claim (members absent when a concurrent claim has just ended)."""

    status: Literal[409]
    slot_status: SlotStatus | None = Field(None, description="BOOKED, HELD_BY_ME or HELD_BY_OTHER")
    held_until: datetime | None = Field(None, description="When the live hold ends (absent when booked)")
    hold_id: uuid.UUID | None = Field(None, description="The caller's own hold, when it is the caller's (else null)")


class SlotOverlapProblem(Problem):
    """409 `SLOT_OVERLAP`: the new slot overlaps another slot of the room."""

    status: Literal[409]
    overlapping_slot_id: uuid.UUID


class HoldLimitProblem(Problem):
    """409 `HOLD_LIMIT_REACHED`: the caller already has as many live holds as one user may."""

    status: Literal[409]
    active_holds: int = Field(description="The caller's live (unexpired, unconfirmed) holds")
    limit: int = Field(description="HOLD_MAX_ACTIVE_PER_USER")
    earliest_ends_at: datetime = Field(description="When the first of them ends")


class HoldCooldownProblem(Problem):
    """409 `HOLD_COOLDOWN`: the caller's own claim on this slot ended moments ago (`Retry-After`)."""

    status: Literal[409]
    retry_at: datetime = Field(description="When the caller may hold this slot again")


class BadRequestProblem(Problem):
    """400: a header the API reads is malformed."""

    status: Literal[400]


class PayloadTooLargeProblem(Problem):
    """413: the request body is over 64 KiB; refused before it was read."""

    status: Literal[413]


class RateLimitedProblem(Problem):
    """429: too many requests of this kind (`Retry-After` says when to retry)."""

    status: Literal[429]
    limit: str = Field(description="The limit that was reached, in the `limits` notation (e.g. 120/minute)")


class HoldGoneProblem(Problem):
    """410: the hold has expired, or was released or cancelled."""

    status: Literal[410]
    hold_status: HoldStatus = Field(description="The hold's status now")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` or `header`, then the field")
    msg: str
    type: str


class ValidationProblem(Problem):
    """422: the request does not match the schema, or breaks a rule the schema cannot express."""

    status: Literal[422]
    errors: list[ValidationIssue] | None = Field(
        None, description="Each schema violation (VALIDATION_ERROR, and MALFORMED_JSON where the parser says where)"
    )


class ServiceUnavailableProblem(Problem):
    """503: the database is busy (`Retry-After` says when to retry) or does not answer."""

    status: Literal[503]
    database: str | None = Field(None, description="The backend /health tried (GET /health only)")


class UserCreate(InputModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Alice Example", "handle": "alice"}]})

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
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "Blue room", "capacity": 8}]})

    name: DisplayName
    capacity: int = Field(ge=1, le=100_000)


class RoomRead(ReadModel):
    id: uuid.UUID
    name: str
    capacity: int
    created_date: datetime
    last_updated_date: datetime


class SlotCreate(InputModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"start_time": "2031-05-04T09:00:00Z", "end_time": "2031-05-04T10:00:00Z"}]}
    )

    start_time: UtcDatetime
    end_time: UtcDatetime

    @model_validator(mode="after")
    def _start_before_end(self) -> "SlotCreate":
        if self.start_time >= self.end_time:
            raise ValueError("start_time must be before end_time")
        return self


class SlotRead(BaseModel):
    # Every member is always sent (null when it does not apply), so the document lists them all as required.
    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                    "room_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                    "start_time": "2031-05-04T09:00:00Z",
                    "end_time": "2031-05-04T10:00:00Z",
                    "status": "HELD_BY_ME",
                    "hold_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "expires_at": "2031-05-03T12:05:00Z",
                    "held_until": "2031-05-03T12:05:00Z",
                    "created_date": "2031-05-01T08:00:00Z",
                    "last_updated_date": "2031-05-01T08:00:00Z",
                }
            ]
        },
    )

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
    model_config = ConfigDict(json_schema_extra={"examples": [{"slot_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}]})

    slot_id: uuid.UUID
    user_id: uuid.UUID | None = Field(None, description="Optional; must be the token's user")


class HoldAction(InputModel):
    """Optional for every action: the body may be left out."""

    model_config = ConfigDict(json_schema_extra={"examples": [{}]})

    user_id: uuid.UUID | None = Field(None, description="Optional; must be the token's user")


class HoldRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "hold_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "slot_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                    "user_id": "9b2f3c1e-8a4d-4e6f-9c3b-2d1e0f7a6b5c",
                    # Not a live HOLD: FastAPI drops nulls from examples, and a hold's confirmed_at is null.
                    "status": "CONFIRMED",
                    "expires_at": "2031-05-03T12:05:00Z",
                    "confirmed_at": "2031-05-03T12:01:30Z",
                    "extensions_used": 0,
                    "extensions_left": 1,
                    "created_date": "2031-05-03T12:00:00Z",
                    "last_updated_date": "2031-05-03T12:01:30Z",
                }
            ]
        }
    )

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


class HoldReadFields(TypedDict):
    """HoldRead's fields, in its order, as a plain dict: what the hold routes encode in one step.

    Every value comes typed from the database, so validating it again as a HoldRead would only
    cost time; pydantic-core's serializer writes the same JSON for the dict as for the model
    (tests/test_holds.py compares the bytes).
    """

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
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    status: str
    database: str
    details: dict[str, Any] = Field(default_factory=dict)
