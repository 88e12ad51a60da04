"""Hot statements below the ORM: compiled once per dialect, run on the transaction's driver connection.

SQLAlchemy builds each statement and compiles it, once per dialect, into its SQL text and the
order of its parameters; `execute` then runs that text on the DBAPI connection of the
SQLAlchemy connection that holds the open transaction. Begin and commit, the SQLite BEGIN
IMMEDIATE hook and the session's bookkeeping stay SQLAlchemy's; what each statement skips is
the per-execution machinery (execution context, compiled-cache lookup, processors, result
objects), which cost several times the driver call itself (docs/performance.md).

Values cross in the stored forms of `models.stored_form`, the ones SQLAlchemy's column types
write and read, so the ORM and Core paths read what is written here and the other way round.
A driver error is translated by SQLAlchemy's own connection (`IntegrityError`, a lock
timeout's `OperationalError`, a lost connection invalidated), so callers and errors.py see
what they would see through `Connection.execute`.
"""

from collections import namedtuple
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from models import Convert, stored_form

Record = Any
"""A result row: a named tuple whose fields are the statement's result columns, shaped at compile time."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # The parameters the caller gives (each once, with how its value is stored), and the
    # statement's own constants (literals, the items of an IN list), already in stored form.
    inputs: tuple[tuple[str, Convert | None], ...]
    constants: Mapping[str, object]
    # Positional drivers (SQLite's qmark): the values in placeholder order; named drivers: the dict.
    order: "itemgetter[Any] | None"
    row: Any  # a named-tuple class, or None for a statement without rows
    outputs: tuple[Convert | None, ...]

    def arguments(self, params: Mapping[str, object]) -> Sequence[object] | dict[str, object]:
        values = dict(self.constants)
        for name, convert in self.inputs:
            value = params[name]
            values[name] = value if convert is None or value is None else convert(value)
        if self.order is None:
            return values
        ordered = self.order(values)
        return ordered if isinstance(ordered, tuple) else (ordered,)

    def record(self, raw: Sequence[Any]) -> Record:
        values = zip(self.outputs, raw, strict=True)
        return self.row._make([value if conv is None or value is None else conv(value) for conv, value in values])


def _compile(statement: ClauseElement, dialect: Dialect, many: bool) -> _Compiled:
    compiled = statement.compile(dialect=dialect, for_executemany=many)
    assert isinstance(compiled, SQLCompiler)
    binds = compiled.binds
    given = {bind.key for bind in binds.values() if bind.required}
    # Renders expanding parameters (IN lists of constants) as one placeholder per item.
    expanded = compiled.construct_expanded_state(dict.fromkeys(given))
    inputs = tuple((name, stored_form(binds[name].type, dialect.name)[0]) for name in sorted(given))
    expanded_from = {item: name for name, items in expanded.parameter_expansion.items() for item in items}
    constants: dict[str, object] = {}
    for name, value in expanded.parameters.items():
        if name in given:
            continue
        bind = binds[expanded_from.get(name, name)]
        convert = stored_form(bind.type, dialect.name)[0]
        constants[name] = value if convert is None or value is None else convert(value)
    order = itemgetter(*expanded.positiontup) if expanded.positiontup else None
    columns = compiled._result_columns or []  # (name, type) of each result column, in order
    row = namedtuple("Record", [column.keyname for column in columns]) if columns and not many else None
    outputs = tuple(stored_form(column.type, dialect.name)[1] for column in columns)
    return _Compiled(expanded.statement, inputs, constants, order, row, outputs)


class Statement:
    """A prebuilt statement, compiled on its first use on each dialect."""

    __slots__ = ("_compiled", "_many", "statement")

    def __init__(self, statement: ClauseElement, *, many: bool = False) -> None:
        self.statement = statement
        self._many = many  # run with many parameter sets at once (executemany): no rows back
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        """The statement's SQL and parameter plan on this dialect."""
        key = (dialect.name, dialect.driver)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _compile(self.statement, dialect, self._many)
        return compiled


def execute(connection: Connection, statement: Statement, params: Mapping[str, object]) -> list[Record]:
    """Run one statement in the connection's open transaction; its rows (none for a statement without)."""
    compiled = statement.compiled(connection.dialect)
    arguments = compiled.arguments(params)
    cursor = _cursor(connection.connection)
    try:
        cursor.execute(compiled.sql, arguments)
        return _records(compiled, cursor)
    except connection.dialect.loaded_dbapi.Error as exc:
        _forget_cursor(connection.connection)  # SQLAlchemy's translation closes the cursor it is given
        # SQLAlchemy's own translation (and invalidation of a lost connection), as Connection.execute does.
        connection._handle_dbapi_exception(exc, compiled.sql, arguments, cursor, None)


_CURSOR = "rawsql.cursor"


def run_on(
    pooled: PoolProxiedConnection, dialect: Dialect, statement: Statement, params: Mapping[str, object]
) -> list[Record]:
    """Run one statement on a pooled driver connection checked out without SQLAlchemy's Connection.

    No translation: a driver error is raised as the driver's (fastread.py takes its usual path then).
    """
    compiled = statement.compiled(dialect)
    cursor = _cursor(pooled)
    try:
        cursor.execute(compiled.sql, compiled.arguments(params))
        return _records(compiled, cursor)
    except BaseException:
        _forget_cursor(pooled)
        raise


def _cursor(pooled: PoolProxiedConnection) -> Any:
    """The driver connection's one cursor for statements run here, made on first use.

    Opening and closing a sqlite3 cursor per statement cost more than some of the statements
    themselves (docs/performance.md#where-the-time-goes). A cursor belongs to its driver
    connection, which one request uses at a time, and every statement here reads all its rows
    before the next one runs, so one cursor serves them all. Kept in the pool's per-connection
    `info`, with the connection it was made on: a replaced connection gets a new one.
    """
    dbapi_connection = pooled.dbapi_connection
    kept = pooled.info.get(_CURSOR)
    if kept is None or kept[0] is not dbapi_connection:
        kept = pooled.info[_CURSOR] = (dbapi_connection, dbapi_connection.cursor())  # type: ignore[union-attr]
    return kept[1]


def _forget_cursor(pooled: PoolProxiedConnection) -> None:
    pooled.info.pop(_CURSOR, None)


def first(connection: Connection, statement: Statement, params: Mapping[str, object]) -> Record | None:
    """The statement's first row, None when it returned none."""
    rows = execute(connection, statement, params)
    return rows[0] if rows else None


Step = tuple[Statement, Mapping[str, object] | Sequence[Mapping[str, object]]]
"""A statement and its parameters (a list of parameter sets for a `many=True` statement)."""


def execute_batch(connection: Connection, steps: Sequence[Step]) -> list[list[Record]]:
    """Run statements in order in the open transaction; each one's rows (none for a statement without).

    On PostgreSQL they go in one psycopg pipeline: sent together, one round trip instead of
    one each; the server still runs them one after the other, in this order, and skips the
    rest once one fails. So no statement's parameters may depend on an earlier one's rows.
    A failure in any of them is raised, translated, once the pipeline is synced. SQLite runs
    them one by one, in process, as `execute` would.
    """
    if not steps:
        return []  # an empty pipeline would still cost its sync's round trip
    dialect = connection.dialect
    calls: list[tuple[_Compiled, Any, bool]] = []
    for statement, params in steps:
        compiled = statement.compiled(dialect)
        if isinstance(params, Mapping):
            calls.append((compiled, compiled.arguments(params), False))
        else:
            calls.append((compiled, [compiled.arguments(one) for one in params], True))
    dbapi_connection = connection.connection.dbapi_connection
    pipeline = getattr(dbapi_connection, "pipeline", None)  # psycopg's; SQLite runs in-process anyway
    # A cursor per statement in a pipeline (a pipelined cursor keeps only its last statement's
    # result); without one, each statement's rows are read before the next runs.
    cursors: list[Any] = []
    rows: list[list[Record]] = []
    try:
        with pipeline() if pipeline is not None else nullcontext():
            for compiled, arguments, many in calls:
                cursor = dbapi_connection.cursor() if pipeline is not None else _cursor(connection.connection)  # type: ignore[union-attr]
                cursors.append(cursor)
                (cursor.executemany if many else cursor.execute)(compiled.sql, arguments)
                if pipeline is None:
                    rows.append(_records(compiled, cursor))
        if pipeline is not None:  # the results arrived with the pipeline's sync
            rows = [_records(compiled, cursor) for (compiled, _, _), cursor in zip(calls, cursors, strict=True)]
    except dialect.loaded_dbapi.Error as exc:
        if pipeline is None:
            _forget_cursor(connection.connection)  # closed by the translation below
        sql = ";\n".join(compiled.sql for compiled, _, _ in calls)
        connection._handle_dbapi_exception(exc, sql, None, cursors[-1] if cursors else None, None)
    finally:
        if pipeline is not None:
            for cursor in cursors:
                cursor.close()
    return rows


def _records(compiled: _Compiled, cursor: Any) -> list[Record]:
    """The statement's rows, read to the end; rows nobody reads (a text() SELECT) are drained,
    so the shared cursor keeps no statement open (on SQLite, its read snapshot)."""
    if compiled.row is None:
        if cursor.description is not None:
            cursor.fetchall()
        return []
    return [compiled.record(row) for row in cursor.fetchall()]
