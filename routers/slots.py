"""/slots: user-aware availability, and admin deletion."""

import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse

import booking
import live
import stream
from auth import AdminDep, ViewerId, ensure_acting_user
from clock import utc_now
from errors import Code, Unauthenticated
from fastroute import FastRoute
from openapi import WRITE_CODES, problems
from pagination import DEFAULT_LIMIT, MAX_LIMIT
from routers import json_response
from schemas import Cursor, SlotPage, SlotRead, SlotStatus, UtcDatetime
from state import BoardsDep, DatabaseDep, HubDep

router = APIRouter(prefix="/slots", tags=["slots"], route_class=FastRoute)

UserIdQuery = Annotated[uuid.UUID | None, Query(description="Optional; must be the bearer token's user")]


def _viewer(user_id: uuid.UUID | None, claimed: uuid.UUID | None) -> uuid.UUID | None:
    if user_id is None:
        if claimed is not None:
            raise Unauthenticated(Code.MISSING_TOKEN, "user_id needs that user's bearer token.")
        return None
    ensure_acting_user(user_id, claimed)
    return user_id


@router.get(
    "",
    response_model=SlotPage,
    operation_id="listSlots",
    responses=problems(
        Code.INVALID_TOKEN,
        Code.MISSING_TOKEN,
        Code.USER_MISMATCH,
        Code.ROOM_NOT_FOUND,
        Code.VALIDATION_ERROR,
        Code.INVALID_CURSOR,
    ),
)
async def list_slots(
    viewer: ViewerId,
    boards: BoardsDep,
    room_id: uuid.UUID | None = None,
    start_from: Annotated[
        UtcDatetime | None, Query(alias="from", description="Slots starting at or after this (default: now)")
    ] = None,
    start_to: Annotated[UtcDatetime | None, Query(alias="to", description="Slots starting before this")] = None,
    status: SlotStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Cursor | None = None,
    user_id: UserIdQuery = None,
) -> Response:
    """Slots by start time, each with its status for the caller (anonymous: every hold is HELD_BY_OTHER)."""
    listing = partial(
        boards.list_slots,
        viewer_id=_viewer(viewer, user_id),
        room_id=room_id,
        start_from=start_from,
        start_to=start_to,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    # A kept room board at the log's head answers after one fast read (board.py); else the board
    # is caught up, or the page read from SQL, in the request's database call.
    body = await boards.answer(**listing.keywords)
    if body is None:
        body = await boards.db.run(listing)
    return Response(body, media_type="application/json")


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    operation_id="streamSlots",
    responses={
        200: {
            "description": "Server-Sent Events: `snapshot`, then `slot` and `slot_deleted` per change",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problems(
            Code.INVALID_TOKEN,
            Code.MISSING_TOKEN,
            Code.USER_MISMATCH,
            Code.ROOM_NOT_FOUND,
            Code.VALIDATION_ERROR,
            Code.RANGE_TOO_LARGE,
        ),
    },
)
async def stream_slots(
    viewer: ViewerId,
    hub: HubDep,
    boards: BoardsDep,
    room_id: uuid.UUID | None = None,
    start_from: Annotated[
        UtcDatetime | None, Query(alias="from", description="Slots starting at or after this (default: now)")
    ] = None,
    start_to: Annotated[UtcDatetime | None, Query(alias="to", description="Slots starting before this")] = None,
    user_id: UserIdQuery = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=64, description="Resume after this event id (sent by EventSource)"),
    ] = None,
) -> EventSourceResponse:
    """Live board: the slots of GET /slots (at most 1,000) as a snapshot, then every change as it commits."""
    viewer_id = _viewer(viewer, user_id)
    scope = live.Range(room_id, start_from or utc_now(), start_to)
    events = await stream.open_events(hub, boards, scope, viewer_id, stream.parse_last_event_id(last_event_id))
    # ping=0: the stream writes its own heartbeats (stream.py), one task fewer per open stream.
    return EventSourceResponse(
        events,
        ping=0,
        shutdown_event=hub.shutting_down,
        shutdown_grace_period=stream.SHUTDOWN_GRACE_SECONDS,
        send_timeout=stream.SEND_TIMEOUT_SECONDS,
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/{slot_id}",
    response_model=SlotRead,
    operation_id="getSlot",
    responses=problems(
        Code.INVALID_TOKEN, Code.MISSING_TOKEN, Code.USER_MISMATCH, Code.SLOT_NOT_FOUND, Code.VALIDATION_ERROR
    ),
)
async def get_slot(slot_id: uuid.UUID, viewer: ViewerId, db: DatabaseDep, user_id: UserIdQuery = None) -> Response:
    """One slot with its status for the caller."""
    viewer_id = _viewer(viewer, user_id)
    return json_response(await db.run(lambda session: booking.get_slot(session, slot_id=slot_id, viewer_id=viewer_id)))


@router.delete(
    "/{slot_id}",
    status_code=204,
    operation_id="deleteSlot",
    responses=problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.ADMIN_REQUIRED,
        Code.SLOT_NOT_FOUND,
        Code.SLOT_IN_USE,
        Code.VALIDATION_ERROR,
        *WRITE_CODES,
    ),
)
async def delete_slot(_: AdminDep, slot_id: uuid.UUID, db: DatabaseDep) -> Response:
    """Admin: delete a slot that is neither held nor booked."""
    await db.run(lambda session: booking.delete_slot(session, slot_id=slot_id))
    return Response(status_code=204)
