"""Checks of the one invariant, read straight from the database: never two live claims on a slot.

Also what the load tests (test_stress, test_crash) need to hold the database to account: the
`Ledger` of what the clients were told, and `lifecycle_step`, the hold/confirm/cancel/release/extend
traffic they generate.
"""

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
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


# --- what the clients were told, and the traffic that tells them ----------------------------------


@dataclass
class Ledger:
    """Every response the clients got: statuses, the 5xx, and the 2xx per hold in the order they came."""

    statuses: Counter[int] = field(default_factory=Counter)
    unavailable: list[tuple[float, int, str, str | None]] = field(
        default_factory=list
    )  # (t, status, code, Retry-After)
    acknowledged: dict[str, list[tuple[str, dict[str, object]]]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, response: httpx.Response, hold_id: str | None = None) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code >= 500:
                try:
                    code = response.json().get("code", "")
                except ValueError:  # no body, or not JSON: still counted above, with no code
                    code = ""
                self.unavailable.append(
                    (time.monotonic(), response.status_code, code, response.headers.get("retry-after"))
                )
            elif response.status_code in (200, 201):
                body = response.json()
                self.acknowledged[hold_id or body["hold_id"]].append((action, body))

    def holds_by_action(self) -> defaultdict[str, set[str]]:
        """Per action ("hold", "confirm", ...), the ids of the holds it was acknowledged for."""
        with self.lock:
            by_action: defaultdict[str, set[str]] = defaultdict(set)
            for hold_id, acks in self.acknowledged.items():
                for action, _ in acks:
                    by_action[action].add(hold_id)
            return by_action


def lifecycle_step(
    client: httpx.Client,
    rng: random.Random,
    slots: Sequence[str],
    headers: dict[str, str],
    ledger: Ledger,
    *,
    confirm_below: float,
    release_below: float,
    extend_below: float,
    cancel_confirmed: float,
) -> bool:
    """One hold on a random slot, then by one roll of `rng` what its client does with it.

    roll < `confirm_below`: confirm it, and if that succeeds cancel the booking with probability
    `cancel_confirmed`; else roll < `release_below`: release it; else roll < `extend_below`:
    extend it; else abandon it, left to expire lazily. Every response goes to `ledger`.
    Returns whether the hold was granted (a 201).
    """
    response = client.post("/holds", json={"slot_id": rng.choice(slots)}, headers=headers)
    ledger.record("hold", response)
    if response.status_code != 201:
        return False
    hold, roll = response.json()["hold_id"], rng.random()
    if roll < confirm_below:
        confirmed = client.post(f"/holds/{hold}/confirm", headers=headers)
        ledger.record("confirm", confirmed, hold)
        if confirmed.status_code == 200 and rng.random() < cancel_confirmed:
            ledger.record("cancel", client.post(f"/holds/{hold}/cancel", headers=headers), hold)
    elif roll < release_below:
        ledger.record("release", client.post(f"/holds/{hold}/release", headers=headers), hold)
    elif roll < extend_below:
        ledger.record("extend", client.post(f"/holds/{hold}/extend", headers=headers), hold)
    return True
