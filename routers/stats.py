"""/stats: what the board looks like right now, for operators; no personal data."""

import uuid
from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, Response

import booking
from clock import utc_now
from errors import Code
from openapi import problems
from routers import json_response
from schemas import Stats
from state import DatabaseDep, HubDep

router = APIRouter(tags=["health"])


@router.get("/stats", response_model=Stats, operation_id="getStats", responses=problems(Code.VALIDATION_ERROR))
async def stats(db: DatabaseDep, hub: HubDep, room_id: uuid.UUID | None = None, day: date | None = None) -> Response:
    """Slots by status for a room (or all rooms) and a UTC day (default today), and this worker's open streams."""
    day = day or utc_now().date()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    counts, _ = await db.run(
        lambda session: booking.slot_counts(
            session, room_id=room_id, start_from=start, start_to=start + timedelta(days=1)
        )
    )
    return json_response(
        Stats(
            room_id=room_id,
            day=day,
            slots=counts,
            live_holds=counts.held,
            bookings=counts.booked,
            open_streams=hub.open_streams,
        )
    )
