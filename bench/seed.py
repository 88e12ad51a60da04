"""Benchmark data: users, rooms and slots seeded over HTTP; historical holds bulk-inserted.

The live data goes through the public API, as a real front-end would create it. The history
(dead holds: expired, released, cancelled) is written straight into the database with
SQLAlchemy Core while the service is stopped, since a year of history cannot be replayed over
HTTP in a benchmark's time; in-memory SQLite cannot be reached from outside its process, so
history runs only on the file and PostgreSQL backends.
"""

import http.client
import json
import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from sqlalchemy import Dialect, Engine, create_engine, func, insert, select
from sqlalchemy.orm import Session

import db
import models
from schemas import HoldStatus

SLOT_MINUTES = 30
LISTING_SLOTS = 48  # one room, one day of 30-minute slots: the "≈ 50 slots" listing
HOT_SLOTS = 4
HISTORY_STATUSES = tuple(s.value for s in (HoldStatus.EXPIRED, HoldStatus.RELEASED, HoldStatus.CANCELLED))


class ApiError(RuntimeError):
    """The service answered a seeding call with an unexpected status."""


class Api:
    """A tiny keep-alive JSON client (one connection per thread), for seeding and checks."""

    def __init__(self, base_url: str, admin_token: str, timeout: float = 60) -> None:
        self.base_url, self.timeout = base_url, timeout
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.admin = admin_token
        self._local = threading.local()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None, expect: int = 200) -> Any:
        """Send one request; return the decoded JSON body, or raise ApiError on another status."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if response.status != expect:
            raise ApiError(f"{method} {path} -> {response.status}: {data[:300]!r}")
        return json.loads(data) if data else None


@dataclass
class Pool:
    """What the load scripts draw from, and what the checks look at."""

    users: list[tuple[str, str]] = field(default_factory=list)  # (user_id, token)
    churn_slots: list[str] = field(default_factory=list)
    hot_slots: list[str] = field(default_factory=list)
    listing_slots: list[str] = field(default_factory=list)
    rooms: list[str] = field(default_factory=list)
    listing_room: str = ""
    listing_path: str = ""

    def all_slots(self) -> list[str]:
        return self.churn_slots + self.hot_slots + self.listing_slots

    def write(self, path: Path, *, slots: list[str] | None = None, paths: list[str] | None = None) -> Path:
        """The file a wrk script reads (see lua/common.lua): users, then slots or paths."""
        lines = [f"user {token} {user_id}" for user_id, token in self.users]
        lines += [f"slot {slot}" for slot in slots or []]
        lines += [f"path {p}" for p in paths or []]
        path.write_text("\n".join(lines) + "\n")
        return path


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def seed(api: Api, *, users: int, churn_rooms: int, slots_per_room: int, parallel: int = 8) -> Pool:
    """Create users, churn rooms, a hot room and a listing room with a mixed-state day of slots."""
    pool = Pool()
    tag = uuid.uuid4().hex[:8]
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    step = timedelta(minutes=SLOT_MINUTES)

    def new_user(i: int) -> tuple[str, str]:
        body = api.call("POST", "/users", {"name": f"Bench user {i}", "handle": f"b{tag}_{i}"}, expect=201)
        return body["id"], body["token"]

    def new_room(name: str) -> str:
        return api.call("POST", "/rooms", {"name": f"{name} {tag}", "capacity": 4}, api.admin, expect=201)["id"]

    def new_slot(args: tuple[str, datetime]) -> str:
        room, start = args
        body = {"start_time": _iso(start), "end_time": _iso(start + step)}
        return api.call("POST", f"/rooms/{room}/slots", body, api.admin, expect=201)["id"]

    with ThreadPoolExecutor(parallel) as executor:
        pool.users = list(executor.map(new_user, range(users)))
        churn = [new_room(f"Churn {r}") for r in range(churn_rooms)]
        hot = new_room("Hot")
        listing = new_room("Listing")
        pool.rooms = [*churn, hot, listing]
        jobs = [(room, tomorrow + i * step) for room in churn for i in range(slots_per_room)]
        pool.churn_slots = list(executor.map(new_slot, jobs))
        pool.hot_slots = list(executor.map(new_slot, [(hot, tomorrow + i * step) for i in range(HOT_SLOTS)]))
        day = tomorrow + timedelta(days=2)
        pool.listing_slots = list(executor.map(new_slot, [(listing, day + i * step) for i in range(LISTING_SLOTS)]))
    pool.listing_room = listing
    query = urlencode({"room_id": listing, "from": _iso(day), "to": _iso(day + timedelta(days=1))})
    pool.listing_path = f"/slots?{query}"
    # A lived-in day: a quarter of the slots held, half of those booked, by assorted users.
    rng = random.Random(7)
    for i, slot in enumerate(rng.sample(pool.listing_slots, LISTING_SLOTS // 4)):
        _, token = pool.users[i % len(pool.users)]
        hold = api.call("POST", "/holds", {"slot_id": slot}, token, expect=201)
        if i % 2 == 0:
            api.call("POST", f"/holds/{hold['hold_id']}/confirm", None, token)
    return pool


def settle_claims(api: Api, pool: Pool, slots: list[str], parallel: int = 8) -> int:
    """Release the holds and cancel the bookings that a wrk run left on `slots`; return how many.

    wrk stops mid-flow, so some won holds were never followed up (and some 201s were never
    even seen). Left alone, they would keep the hot slots taken for the whole TTL and the next
    run would measure nothing but 409s.
    """
    wanted = set(slots)
    api = Api(api.base_url, api.admin, timeout=10)

    def settle(user: tuple[str, str]) -> int:
        _, token = user
        done = 0
        for status, action in (("HOLD", "release"), ("CONFIRMED", "cancel")):
            page = api.call("GET", f"/holds?{urlencode({'status': status, 'limit': 500})}", None, token)
            for hold in page["items"]:
                if hold["slot_id"] in wanted:
                    api.call("POST", f"/holds/{hold['hold_id']}/{action}", None, token)
                    done += 1
        return done

    with ThreadPoolExecutor(parallel) as executor:
        return sum(executor.map(settle, pool.users))


# --- history, straight into the database ---------------------------------------------------------


def engine_for(url: str) -> Engine:
    """An engine on the benchmark's database (the project's driver for PostgreSQL URLs)."""
    return create_engine(db.normalise_url(url))


def insert_history(url: str, pool: Pool, rows: int, *, batch: int = 100_000, seed_value: int = 11) -> dict[str, Any]:
    """Add `rows` dead holds: half on the live slots the benchmark uses, half on past slots.

    Past slots (about 40 dead holds each, hour after hour back from yesterday) sit in their own
    room, inserted here too. Every row is EXPIRED, RELEASED or CANCELLED, so none is a live claim.
    """
    rng = random.Random(seed_value)
    engine = engine_for(url)
    db.create_schema(engine)
    now = datetime.now(UTC)
    users = [uuid.UUID(user_id) for user_id, _ in pool.users]
    live_slots = [uuid.UUID(s) for s in pool.all_slots()]
    past_count = max(1, rows // 2 // 40)
    room_id = uuid.uuid4()
    first_past = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    past_slots = [(uuid.uuid4(), first_past - timedelta(hours=i)) for i in range(past_count)]
    started = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(models.Room.__table__),
            [
                {
                    "id": room_id,
                    "name": f"History {room_id.hex[:8]}",
                    "capacity": 4,
                    "created_date": now,
                    "last_updated_date": now,
                }
            ],
        )
        conn.execute(
            insert(models.TimeSlot.__table__),
            [
                {
                    "id": sid,
                    "room_id": room_id,
                    "start_time": start,
                    "end_time": start + timedelta(hours=1),
                    "created_date": start - timedelta(days=30),
                    "last_updated_date": start - timedelta(days=30),
                }
                for sid, start in past_slots
            ],
        )

    sqlite = engine.dialect.name == "sqlite"
    table = models.Hold.__table__
    # Values are rendered once, by the model's own column types (SQLite: 32-hex UUIDs and naive-UTC
    # text; PostgreSQL: values for COPY text), then reused: rendering a million datetimes one by one
    # costs more than inserting them.
    ident = _bound(table.c.id, engine.dialect)
    moment = _bound(table.c.expires_at, engine.dialect)

    def times(created: datetime) -> tuple[str, str, str, str]:
        return (
            moment(created),
            moment(created + timedelta(seconds=300)),
            moment(created + timedelta(seconds=rng.randrange(1, 300))),
            moment(created + timedelta(seconds=60)),
        )

    live_ids = [ident(s) for s in live_slots]
    user_ids = [ident(u) for u in users]
    live_times = [times(now - timedelta(seconds=rng.randrange(600, 365 * 86_400))) for _ in range(20_000)]
    past = [
        (ident(sid), times(start - timedelta(seconds=rng.randrange(60, 14 * 86_400))))
        for sid, start in past_slots
        for _ in range(4)
    ]
    columns = [c.name for c in table.columns]

    def batch_of(count: int) -> list[tuple[Any, ...]]:
        out = []
        for i in range(count):
            if i % 2:
                slot, (created, expires, updated, confirmed) = past[rng.randrange(len(past))]
            else:
                slot = live_ids[rng.randrange(len(live_ids))]
                created, expires, updated, confirmed = live_times[rng.randrange(len(live_times))]
            status = HISTORY_STATUSES[rng.randrange(3)]
            values = {
                "id": ident(uuid.UUID(int=rng.getrandbits(128), version=4)),  # a v4 UUID, without a syscall
                "slot_id": slot,
                "user_id": user_ids[rng.randrange(len(user_ids))],
                "status": status,
                "expires_at": expires,
                "extension_count": rng.randrange(2),
                "confirmed_at": confirmed if status == "CANCELLED" else None,
                "created_date": created,
                "last_updated_date": updated,
            }
            out.append(tuple(values[c] for c in columns))
        return out

    if sqlite:
        sql = str(insert(table).compile(dialect=engine.dialect))  # INSERT INTO holds (...) VALUES (?, ...)
        with engine.connect() as conn:
            # For this loader connection only: a big page cache for the index updates, no fsync.
            conn.exec_driver_sql("PRAGMA cache_size=-262144")
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.commit()
            for offset in range(0, rows, batch):
                with conn.begin():
                    conn.exec_driver_sql(sql, batch_of(min(batch, rows - offset)))
    else:
        _copy_holds(engine, columns, (batch_of(min(batch, rows - offset)) for offset in range(0, rows, batch)))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # What autovacuum would have done long before a year of history piled up.
            conn.exec_driver_sql("VACUUM ANALYZE holds")
    with Session(engine) as session:
        # The rows read back through the ORM: same types, same forms as the service's own.
        sample = session.scalars(select(models.Hold).where(models.Hold.status.in_(HISTORY_STATUSES)).limit(5)).all()
        assert sample and all(h.expires_at < now and h.expires_at.tzinfo is not None for h in sample), sample
        total = session.scalar(select(func.count()).select_from(table))
    engine.dispose()
    seconds = (datetime.now(UTC) - started).total_seconds()
    return {"rows": rows, "past_slots": past_count, "holds_in_table": total, "seconds": round(seconds, 1)}


def _bound(column: Any, dialect: Dialect) -> Callable[[Any], Any]:
    """How `column`'s type hands a value to this dialect's driver (UTCDateTime: naive-UTC text on SQLite)."""
    return column.type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)


def _copy_holds(engine: Engine, columns: list[str], batches: Any) -> None:
    """PostgreSQL COPY of pre-rendered text rows: a million rows in seconds, not minutes of INSERTs."""
    raw = engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY holds ({', '.join(columns)}) FROM STDIN") as copy:
            for rows in batches:
                copy.write("".join("\t".join("\\N" if v is None else str(v) for v in r) + "\n" for r in rows))
        raw.commit()
    finally:
        raw.close()
