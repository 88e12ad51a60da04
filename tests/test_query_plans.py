"""Live-claim checks read the small partial index, never a slot's history of dead holds.

Lazy expiry means the holds table only grows; these plans are what keeps holding and
listing as fast with a year of history as on an empty database.
"""

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, Select, create_engine, event, select

from booking import _slot_query, live_claim
from db import create_schema
from models import Hold

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def explaining_engine() -> Iterator[Engine]:
    """An empty SQLite schema whose every statement is answered with its query plan."""
    engine = create_engine("sqlite://")
    create_schema(engine)

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def explain(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        return "EXPLAIN QUERY PLAN " + statement, params

    yield engine
    engine.dispose()


def _plan(engine: Engine, stmt, params: dict | None = None) -> str:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return "\n".join(row[-1] for row in conn.execute(stmt, params or {}).cursor.fetchall())


def test_live_claim_lookup_uses_the_partial_unique_index(explaining_engine: Engine) -> None:
    engine = explaining_engine
    plan = _plan(engine, select(Hold.id).where(Hold.slot_id == uuid.uuid4(), live_claim(NOW)))
    assert "USING INDEX uq_holds_active_slot" in plan, plan


def test_slot_listing_joins_claims_through_the_partial_unique_index(explaining_engine: Engine) -> None:
    engine = explaining_engine
    stmt = _slot_query(viewer=True, room=True)
    params = {"p_now": NOW, "p_viewer": uuid.uuid4(), "p_from": NOW, "p_room": uuid.uuid4(), "p_limit": 51}
    plan = _plan(engine, stmt, params)
    assert "holds_1 USING INDEX uq_holds_active_slot" in plan, plan
    assert "SCAN" not in plan, plan


# The claim's parameters: any values will do for a plan.
_CLAIM_PARAMS = {
    "p_hold_id": uuid.uuid4(),
    "p_slot_id": uuid.uuid4(),
    "p_user_id": uuid.uuid4(),
    "p_now": NOW,
    "p_expires_at": NOW,
    "p_max_active": 4,
    "p_cooldown_since": NOW,
}


def _assert_claim_reads_only_indexes(plan: str) -> None:
    assert "USING INDEX uq_holds_active_slot" in plan, plan  # the live claim
    assert "USING INDEX ix_holds_user_id_expires_at" in plan, plan  # the user's live holds, not their history
    assert "USING INDEX ix_holds_slot_id_user_id" in plan, plan  # the user's past claims on this slot
    scans = [line for line in plan.splitlines() if line.startswith("SCAN") and line != "SCAN CONSTANT ROW"]
    assert scans == [], plan


def test_claiming_a_slot_reads_only_indexes_for_the_live_claim_the_cap_and_the_cooldown(
    explaining_engine: Engine,
) -> None:
    from booking import _INSERT_HOLD

    _assert_claim_reads_only_indexes(_plan(explaining_engine, _INSERT_HOLD.statement, _CLAIM_PARAMS))


def test_the_claim_as_run_below_the_orm_reads_only_indexes() -> None:
    # The plan of the very text and arguments rawsql sends to the driver, not of a recompilation.
    from booking import _INSERT_HOLD

    engine = create_engine("sqlite://")
    create_schema(engine)
    compiled = _INSERT_HOLD.compiled(engine.dialect)
    with engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        rows = cursor.execute("EXPLAIN QUERY PLAN " + compiled.sql, compiled.arguments(_CLAIM_PARAMS)).fetchall()
    engine.dispose()
    _assert_claim_reads_only_indexes("\n".join(row[-1] for row in rows))


def _statements_on_holds() -> Iterator[tuple[str, str]]:
    """(name, SQLite text) of every prebuilt statement of booking.py and of the listing's variants."""
    import itertools

    import booking
    import rawsql

    dialect = create_engine("sqlite://").dialect
    for name, value in vars(booking).items():
        if isinstance(value, booking._Transition):
            value = value.statement
        if isinstance(value, rawsql.Statement):
            yield name, value.compiled(dialect).sql
        elif isinstance(value, Select):
            yield name, str(value.compile(dialect=dialect))
    for flags in itertools.product((False, True), repeat=4):
        viewer, room, to, status = flags
        stmt = _slot_query(viewer=viewer, room=room, to=to, status=status)
        yield f"_slot_query{flags}", str(stmt.compile(dialect=dialect))
    yield "_slot_read", str(_slot_query(viewer=True, one=True).compile(dialect=dialect))


def test_no_statement_compares_a_hold_status_with_a_bound_parameter() -> None:
    # SQLite looks at the value bound to `status = ?` to decide whether a partial index
    # (`WHERE status = 'HOLD'`, `WHERE status IN (...)`) applies, and then prepares the statement
    # again every time that parameter is bound: several times the statement's own cost. Status
    # values are written into the SQL instead (booking._status_in).
    bound_status = re.compile(r"\bstatus\s*(?:=|!=|IN)\s*\(?\s*(?:\?|:)", re.IGNORECASE)
    found = []
    for name, sql in _statements_on_holds():
        decided = re.split(r"\b(?:FROM|WHERE)\b", sql, maxsplit=1)  # the SET and select lists assign, not compare
        if len(decided) == 2 and bound_status.search(decided[1]):
            found.append((name, sql))
    assert found == []
