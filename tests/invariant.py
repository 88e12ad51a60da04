"""Checks of the one invariant, read straight from the database: never two live claims on a slot."""

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, func, select

from booking import live_claim
from models import Hold
from schemas import HoldStatus

FOREVER = datetime.max.replace(tzinfo=UTC)


def slots_with_two_live_claims(conn: Connection, now: datetime) -> list[uuid.UUID]:
    """Slots that have more than one live claim at `now`, judged as the service judges it."""
    stmt = select(Hold.slot_id).where(live_claim(now)).group_by(Hold.slot_id).having(func.count() > 1)
    return list(conn.scalars(stmt))


@dataclass(frozen=True)
class Claim:
    slot_id: object
    start: datetime
    end: datetime | None  # None: still claims the slot (a booking)


def claim_interval(
    status: str, created: datetime, expires: datetime, updated: datetime
) -> tuple[datetime, datetime | None]:
    """When a hold row claimed its slot, from the row's final state."""
    if status == HoldStatus.CONFIRMED:
        return created, None
    if status in (HoldStatus.RELEASED, HoldStatus.CANCELLED):
        return created, updated
    return created, expires  # HOLD or EXPIRED: it claimed the slot until it lapsed


def overlapping_claims(claims: list[Claim], tolerance: timedelta) -> list[tuple[Claim, Claim]]:
    """Pairs of claims on one slot whose live intervals overlap by more than `tolerance`.

    Each operation reads the clock just before its statement, so two operations racing in
    the same instant can carry timestamps a few milliseconds out of their commit order; the
    tolerance absorbs that, while a real double claim overlaps by (nearly) a whole TTL.
    """
    by_slot: dict[object, list[Claim]] = defaultdict(list)
    for claim in claims:
        by_slot[claim.slot_id].append(claim)
    overlaps = []
    for slot_claims in by_slot.values():
        slot_claims.sort(key=lambda c: c.start)
        latest = slot_claims[0]
        for claim in slot_claims[1:]:
            latest_end = latest.end or FOREVER
            if latest_end - claim.start > tolerance:
                overlaps.append((latest, claim))
            claim_end = claim.end or FOREVER
            if claim_end > latest_end:
                latest = claim
    return overlaps


def hold_claims(conn: Connection) -> list[Claim]:
    """Every hold row of the service's table as a claim interval."""
    rows = conn.execute(select(Hold.slot_id, Hold.status, Hold.created_date, Hold.expires_at, Hold.last_updated_date))
    return [Claim(row.slot_id, *claim_interval(row.status, row[2], row[3], row[4])) for row in rows]
