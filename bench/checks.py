"""The invariant after each scenario: no slot has two live claims, and the counts add up.

A live claim is what `booking.live_claim` says it is: a booking, or a hold not yet expired. On
the file and PostgreSQL backends the database is asked directly, with that very expression over
the `Hold` model (so `now` is bound as the service binds it); an in-memory SQLite database lives
inside the server process, so there the API is asked instead: `GET /slots` joins each slot to
its live claims, so a slot with two live claims would come back twice.
"""

from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Engine, func, select

from bench.seed import Api, Pool, engine_for
from booking import live_claim
from models import Hold


class SqlChecker:
    """Asks the database itself (SQLite file or PostgreSQL)."""

    method = "sql"

    def __init__(self, url: str) -> None:
        self.engine: Engine = engine_for(url)

    def snapshot(self) -> dict[str, Any]:
        live = live_claim(datetime.now(UTC))
        doubles = select(Hold.slot_id).where(live).group_by(Hold.slot_id).having(func.count() > 1)
        with self.engine.connect() as conn:
            slots = [str(slot) for slot in conn.scalars(doubles)]
            count = conn.execute(select(func.count()).select_from(Hold).where(live)).scalar_one()
        return {"double_claimed_slots": slots, "live_claims": int(count)}

    def close(self) -> None:
        self.engine.dispose()


class ApiChecker:
    """Asks the service: every slot of every benchmark room, anonymously."""

    method = "api"

    def __init__(self, api: Api, pool: Pool) -> None:
        self.api, self.pool = Api(api.base_url, api.admin, timeout=10), pool

    def snapshot(self) -> dict[str, Any]:
        seen: Counter[str] = Counter()
        live = 0
        for room in self.pool.rooms:
            cursor = None
            while True:
                query = {"room_id": room, "limit": 500} | ({"cursor": cursor} if cursor else {})
                page = self.api.call("GET", f"/slots?{urlencode(query)}")
                for item in page["items"]:
                    seen[item["id"]] += 1
                    live += item["status"] != "AVAILABLE"
                cursor = page["next_cursor"]
                if not cursor:
                    break
        return {"double_claimed_slots": [s for s, n in seen.items() if n > 1], "live_claims": live}

    def close(self) -> None:
        pass


def verdict(before: dict[str, Any], after: dict[str, Any], counts: dict[str, int], tolerance: int) -> dict[str, Any]:
    """PASS when no slot is double-claimed and the change in live claims matches what clients saw.

    Clients saw `hold_201 - release_200 - cancel_200` new live claims; requests still in flight
    when wrk stopped (at most one per connection) may have changed the database unseen.
    """
    seen = counts.get("hold_201", 0) - counts.get("release_200", 0) - counts.get("cancel_200", 0)
    delta = after["live_claims"] - before["live_claims"]
    doubles = after["double_claimed_slots"]
    ok = not doubles and abs(delta - seen) <= tolerance
    return {
        "result": "PASS" if ok else "FAIL",
        "double_claimed_slots": doubles[:20],
        "live_claims_before": before["live_claims"],
        "live_claims_after": after["live_claims"],
        "live_claim_change": delta,
        "change_seen_by_clients": seen,
        "in_flight_tolerance": tolerance,
    }
