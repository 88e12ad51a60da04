"""/holds: hold a slot, then confirm, release, extend or cancel it."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

import booking
from auth import CurrentUser, ensure_acting_user
from config import SettingsDep
from db import SessionDep
from errors import problem_schema
from pagination import DEFAULT_LIMIT, MAX_LIMIT
from schemas import HoldAction, HoldCreate, HoldPage, HoldRead, HoldStatus

router = APIRouter(prefix="/holds", tags=["holds"])


@router.post("", status_code=201, response_model=HoldRead, responses=problem_schema(401, 403, 404, 409, 422))
def create_hold(data: HoldCreate, session: SessionDep, user: CurrentUser, settings: SettingsDep) -> HoldRead:
    """Hold a free slot for HOLD_TTL_SECONDS; 409 (with `held_until`) if anyone holds or booked it."""
    ensure_acting_user(user, data.user_id)
    return booking.create_hold(session, slot_id=data.slot_id, user_id=user.id, settings=settings)


@router.get("", response_model=HoldPage, responses=problem_schema(401, 422))
def list_holds(
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    status: HoldStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> HoldPage:
    """The caller's holds and bookings, newest first."""
    return booking.list_holds(session, user_id=user.id, status=status, limit=limit, cursor=cursor, settings=settings)


@router.get("/{hold_id}", response_model=HoldRead, responses=problem_schema(401, 403, 404, 422))
def get_hold(hold_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep) -> HoldRead:
    """One of the caller's holds, with its status derived now."""
    return booking.get_hold(session, hold_id=hold_id, user_id=user.id, settings=settings)


@router.post("/{hold_id}/confirm", response_model=HoldRead, responses=problem_schema(401, 403, 404, 410, 422))
def confirm(
    hold_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep, data: HoldAction | None = None
) -> HoldRead:
    """Confirm a live hold: it becomes the booking. Confirming again returns the same booking."""
    ensure_acting_user(user, data and data.user_id)
    return booking.confirm_hold(session, hold_id=hold_id, user_id=user.id, settings=settings)


@router.post("/{hold_id}/release", response_model=HoldRead, responses=problem_schema(401, 403, 404, 409, 410, 422))
def release(
    hold_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep, data: HoldAction | None = None
) -> HoldRead:
    """Release a live hold so others can take the slot. Releasing again is a no-op."""
    ensure_acting_user(user, data and data.user_id)
    return booking.release_hold(session, hold_id=hold_id, user_id=user.id, settings=settings)


@router.post("/{hold_id}/extend", response_model=HoldRead, responses=problem_schema(401, 403, 404, 409, 410, 422))
def extend(
    hold_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep, data: HoldAction | None = None
) -> HoldRead:
    """Push a live hold's expiry to now + HOLD_TTL_SECONDS, at most HOLD_MAX_EXTENSIONS times."""
    ensure_acting_user(user, data and data.user_id)
    return booking.extend_hold(session, hold_id=hold_id, user_id=user.id, settings=settings)


@router.post("/{hold_id}/cancel", response_model=HoldRead, responses=problem_schema(401, 403, 404, 409, 422))
def cancel(
    hold_id: uuid.UUID, session: SessionDep, user: CurrentUser, settings: SettingsDep, data: HoldAction | None = None
) -> HoldRead:
    """Cancel a booking before its slot starts; the slot is free again. Cancelling again is a no-op."""
    ensure_acting_user(user, data and data.user_id)
    return booking.cancel_booking(session, hold_id=hold_id, user_id=user.id, settings=settings)
