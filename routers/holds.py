"""/holds: hold a slot, then confirm, release, extend or cancel it."""

import uuid
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

import booking
from auth import CurrentUserId, ensure_acting_user
from config import Settings
from db import Database
from errors import Code
from fastroute import FastRoute
from idempotency import Idempotency, IdempotencyDep, respond
from openapi import IDEMPOTENT_CODES, WRITE_CODES, problems
from pagination import DEFAULT_LIMIT, MAX_LIMIT
from ratelimit import HoldingUserId
from routers import json_response
from schemas import Cursor, HoldAction, HoldCreate, HoldHistory, HoldPage, HoldRead, HoldReadFields, HoldStatus
from state import DatabaseDep, HoldAttemptsDep, SettingsDep

router = APIRouter(prefix="/holds", tags=["holds"], route_class=FastRoute)


@router.post(
    "",
    status_code=201,
    response_model=HoldRead,
    operation_id="createHold",
    responses=problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.USER_MISMATCH,
        Code.SLOT_NOT_FOUND,
        Code.SLOT_UNAVAILABLE,
        Code.SLOT_STARTED,
        Code.HOLD_LIMIT_REACHED,
        Code.HOLD_COOLDOWN,
        Code.VALIDATION_ERROR,
        Code.MALFORMED_JSON,
        Code.RATE_LIMITED,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    ),
)
async def create_hold(
    data: HoldCreate,
    user_id: HoldingUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    attempts: HoldAttemptsDep,
) -> Response:
    """Hold a free slot for HOLD_TTL_SECONDS; 409 (with `held_until`) if anyone holds or booked it."""
    ensure_acting_user(user_id, data.user_id)

    def work(refusal_read: bool) -> Callable[[Session], HoldReadFields]:
        return partial(
            booking.create_hold, slot_id=data.slot_id, user_id=user_id, settings=settings, refusal_read=refusal_read
        )

    if idem is not None:
        # A keyed request's retry must find its stored answer (a 201 for its own hold) before any refusal.
        return await respond(db, settings, idem, user_id, work(True), 201)
    # A plainly taken slot is refused from a shared fast read, on the event loop; a free one is
    # claimed in this worker's turn for the slot (booking.HoldAttempts).
    async with attempts.turn(data.slot_id, user_id) as turn:
        claim = work(not turn.read)
        return await respond(db, settings, idem, user_id, lambda session: turn.claimed(claim(session)), 201)


@router.get(
    "",
    response_model=HoldPage,
    operation_id="listHolds",
    responses=problems(Code.MISSING_TOKEN, Code.INVALID_TOKEN, Code.VALIDATION_ERROR, Code.INVALID_CURSOR),
)
async def list_holds(
    user_id: CurrentUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    status: HoldStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Cursor | None = None,
) -> Response:
    """The caller's holds and bookings, newest first."""
    page = await db.run(
        lambda session: booking.list_holds(
            session, user_id=user_id, status=status, limit=limit, cursor=cursor, settings=settings
        )
    )
    return json_response(page)


# What reading one of the caller's holds (the hold, its history) can answer.
_READ_OWN_HOLD = problems(
    Code.MISSING_TOKEN, Code.INVALID_TOKEN, Code.HOLD_NOT_FOUND, Code.NOT_HOLD_OWNER, Code.VALIDATION_ERROR
)


@router.get(
    "/{hold_id}",
    response_model=HoldRead,
    operation_id="getHold",
    responses=_READ_OWN_HOLD,
)
async def get_hold(hold_id: uuid.UUID, user_id: CurrentUserId, db: DatabaseDep, settings: SettingsDep) -> Response:
    """One of the caller's holds, with its status derived now."""
    hold = await db.run(lambda session: booking.get_hold(session, hold_id=hold_id, user_id=user_id, settings=settings))
    return json_response(hold)


@router.get(
    "/{hold_id}/history",
    response_model=HoldHistory,
    operation_id="getHoldHistory",
    responses=_READ_OWN_HOLD,
)
async def hold_history(hold_id: uuid.UUID, user_id: CurrentUserId, db: DatabaseDep) -> Response:
    """The caller's hold's transitions with their times, oldest first (kept EVENT_RETENTION_SECONDS)."""
    history = await db.run(lambda session: booking.hold_history(session, hold_id=hold_id, user_id=user_id))
    return json_response(history)


def _action_problems(*codes: Code) -> dict[int | str, dict[str, Any]]:
    """What an owner's action on a hold can answer: these codes, and what every action can."""
    return problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.USER_MISMATCH,
        Code.HOLD_NOT_FOUND,
        Code.NOT_HOLD_OWNER,
        *codes,
        Code.VALIDATION_ERROR,
        Code.MALFORMED_JSON,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    )


async def _act(
    action: booking.HoldTransition,
    hold_id: uuid.UUID,
    user_id: uuid.UUID,
    db: Database,
    settings: Settings,
    data: HoldAction | None,
    idem: Idempotency | None,
) -> Response:
    ensure_acting_user(user_id, data.user_id if data is not None else None)

    def work(session: Session) -> HoldReadFields:
        return action(session, hold_id=hold_id, user_id=user_id, settings=settings)

    return await respond(db, settings, idem, user_id, work)


@router.post(
    "/{hold_id}/confirm",
    response_model=HoldRead,
    operation_id="confirmHold",
    responses=_action_problems(Code.HOLD_EXPIRED, Code.HOLD_RELEASED, Code.HOLD_CANCELLED_GONE),
)
async def confirm(
    hold_id: uuid.UUID,
    user_id: CurrentUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    data: HoldAction | None = None,
) -> Response:
    """Confirm a live hold: it becomes the booking. Confirming again returns the same booking."""
    return await _act(booking.confirm_hold, hold_id, user_id, db, settings, data, idem)


@router.post(
    "/{hold_id}/release",
    response_model=HoldRead,
    operation_id="releaseHold",
    responses=_action_problems(Code.HOLD_CONFIRMED, Code.HOLD_CANCELLED, Code.HOLD_EXPIRED),
)
async def release(
    hold_id: uuid.UUID,
    user_id: CurrentUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    data: HoldAction | None = None,
) -> Response:
    """Release a live hold so others can take the slot. Releasing again is a no-op."""
    return await _act(booking.release_hold, hold_id, user_id, db, settings, data, idem)


@router.post(
    "/{hold_id}/extend",
    response_model=HoldRead,
    operation_id="extendHold",
    responses=_action_problems(
        Code.EXTENSION_LIMIT_REACHED, Code.HOLD_CONFIRMED, Code.HOLD_CANCELLED, Code.HOLD_EXPIRED, Code.HOLD_RELEASED
    ),
)
async def extend(
    hold_id: uuid.UUID,
    user_id: CurrentUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    data: HoldAction | None = None,
) -> Response:
    """Push a live hold's expiry to now + HOLD_TTL_SECONDS, at most HOLD_MAX_EXTENSIONS times."""
    return await _act(booking.extend_hold, hold_id, user_id, db, settings, data, idem)


@router.post(
    "/{hold_id}/cancel",
    response_model=HoldRead,
    operation_id="cancelHold",
    responses=_action_problems(Code.SLOT_STARTED, Code.HOLD_NOT_CONFIRMED),
)
async def cancel(
    hold_id: uuid.UUID,
    user_id: CurrentUserId,
    db: DatabaseDep,
    settings: SettingsDep,
    idem: IdempotencyDep,
    data: HoldAction | None = None,
) -> Response:
    """Cancel a booking before its slot starts; the slot is free again. Cancelling again is a no-op."""
    return await _act(booking.cancel_booking, hold_id, user_id, db, settings, data, idem)
