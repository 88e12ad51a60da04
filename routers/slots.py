"""/slots: user-aware availability, and admin deletion."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

import booking
from auth import AdminDep, OptionalUser, ensure_acting_user
from db import SessionDep
from errors import Unauthenticated, problem_schema
from pagination import DEFAULT_LIMIT, MAX_LIMIT
from schemas import SlotPage, SlotRead, SlotStatus, UtcDatetime

router = APIRouter(prefix="/slots", tags=["slots"])

UserIdQuery = Annotated[uuid.UUID | None, Query(description="Optional; must be the bearer token's user")]


def _viewer(user: OptionalUser, user_id: uuid.UUID | None) -> uuid.UUID | None:
    if user is None:
        if user_id is not None:
            raise Unauthenticated("MISSING_TOKEN", "user_id needs that user's bearer token.")
        return None
    ensure_acting_user(user, user_id)
    return user.id


@router.get("", response_model=SlotPage, responses=problem_schema(401, 403, 404, 422))
def list_slots(
    session: SessionDep,
    user: OptionalUser,
    room_id: uuid.UUID | None = None,
    start_from: Annotated[
        UtcDatetime | None, Query(alias="from", description="Slots starting at or after this (default: now)")
    ] = None,
    start_to: Annotated[UtcDatetime | None, Query(alias="to", description="Slots starting before this")] = None,
    status: SlotStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
    user_id: UserIdQuery = None,
) -> SlotPage:
    """Slots by start time, each with its status for the caller (anonymous: every hold is HELD_BY_OTHER)."""
    return booking.list_slots(
        session,
        viewer_id=_viewer(user, user_id),
        room_id=room_id,
        start_from=start_from,
        start_to=start_to,
        status=status,
        limit=limit,
        cursor=cursor,
    )


@router.get("/{slot_id}", response_model=SlotRead, responses=problem_schema(401, 403, 404, 422))
def get_slot(slot_id: uuid.UUID, session: SessionDep, user: OptionalUser, user_id: UserIdQuery = None) -> SlotRead:
    """One slot with its status for the caller."""
    return booking.get_slot(session, slot_id=slot_id, viewer_id=_viewer(user, user_id))


@router.delete(
    "/{slot_id}", status_code=204, dependencies=[AdminDep], responses=problem_schema(401, 403, 404, 409, 422)
)
def delete_slot(slot_id: uuid.UUID, session: SessionDep) -> Response:
    """Admin: delete a slot that is neither held nor booked."""
    booking.delete_slot(session, slot_id=slot_id)
    return Response(status_code=204)
