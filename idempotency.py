"""`Idempotency-Key`: a retried POST does its change once and gets the first answer again.

Following the IETF httpapi idempotency-key draft. A client may send `Idempotency-Key` (1-255
printable ASCII characters) with any POST that changes state. The first request with a key runs;
its response (status and body) is stored with the key, scoped to the caller, in the **same
transaction** as the change, so a crash never leaves a change without its key or a key without
its change. A repeat with the same key, path and body gets the stored response with
`Idempotent-Replayed: true` and changes nothing; the same key with another path or body is 422
`IDEMPOTENCY_KEY_REUSED`; a repeat while the first is still writing is 409
`IDEMPOTENCY_KEY_IN_USE`. Only successful responses are stored: a refused request changed
nothing, so its retry simply runs again. Keys are kept `IDEMPOTENCY_KEY_TTL_SECONDS` (24 h).

How the change and the key share a transaction: the claim rides on the session
(`db.IDEMPOTENCY_CLAIM`); `db.write_transaction` calls `Claim.begin` once its locks are held
(PostgreSQL: a transaction-scoped advisory lock on the key, so a twin running at the same time
is told IN_USE instead of waiting; then a look for a response stored meanwhile) and leaves the
COMMIT to `Claim.finish`, which stores the response first.
"""

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Header, Request
from pydantic import WithJsonSchema
from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.responses import Response

import metrics
from clock import utc_now
from config import Settings
from db import IDEMPOTENCY_CLAIM, Database, read_transaction
from errors import Code, Conflict, DomainError, InvalidInput
from models import IdempotencyKey
from routers import Content, json_response

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
ANONYMOUS, ADMIN = "anonymous", "admin"
# Expired keys deleted per stored key: the table stays bounded with no background job.
PRUNE_BATCH = 8
_TTL = "idempotency.ttl"  # session.info key: how long keys are kept

assert isinstance(IdempotencyKey.__table__, Table)
_keys: Table = IdempotencyKey.__table__
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:lock_id)")


class InvalidIdempotencyKey(DomainError):
    """The Idempotency-Key header is empty, too long or not printable ASCII (400)."""

    def __init__(self) -> None:
        super().__init__(Code.INVALID_IDEMPOTENCY_KEY, "Idempotency-Key must be 1-255 printable ASCII characters.")


class _Replay(Exception):
    """A response is already stored for this key: answer with it."""

    def __init__(self, status_code: int, body: str) -> None:
        super().__init__("replay")
        self.status_code = status_code
        self.body = body


@dataclass(frozen=True)
class Idempotency:
    """A request's key and what identifies the request (method, path, body)."""

    key: str
    request_hash: str

    def scoped(self, scope: uuid.UUID | str) -> "Claim":
        """The key as the caller's: a user's id, ADMIN or ANONYMOUS."""
        return Claim(str(scope), self.key, self.request_hash)


# Documented, not enforced by the schema: a malformed key is 400 INVALID_IDEMPOTENCY_KEY, not 422.
_KeyText = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"})]


def _valid(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(" " <= char <= "~" for char in key)


def _request_hash(method: str, path: str, body: bytes) -> str:
    try:  # the same JSON however it is spaced or ordered
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), canonical)).hexdigest()


async def get_idempotency(
    request: Request,
    key: Annotated[
        _KeyText | None,
        Header(
            alias=HEADER,
            description="Retry-safe key, 1-255 printable ASCII characters: a repeat with the same key, "
            "path and body returns the first response (Idempotent-Replayed: true) and changes nothing",
        ),
    ] = None,
) -> Idempotency | None:
    """The request's Idempotency-Key, if it sent one; 400 for a malformed one."""
    if key is None:
        return None
    if not _valid(key):
        raise InvalidIdempotencyKey()
    return Idempotency(key, _request_hash(request.method, request.url.path, await request.body()))


IdempotencyDep = Annotated[Idempotency | None, Depends(get_idempotency)]


@dataclass
class Claim:
    """One request's key while it runs: checked when its write begins, stored with its change."""

    scope: str
    key: str
    request_hash: str
    written: bool = False

    def stored(self, session: Session, now: datetime, ttl: timedelta) -> _Replay | None:
        """The response stored for this key (422 if it was for another request), or None."""
        row = session.execute(
            select(_keys.c.request_hash, _keys.c.status_code, _keys.c.body).where(
                _keys.c.scope == self.scope, _keys.c.key == self.key, _keys.c.created_date > now - ttl
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != self.request_hash:
            raise InvalidInput(
                Code.IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was used for another request (path or body)."
            )
        return _Replay(row.status_code, row.body)

    def begin(self, session: Session, now: datetime) -> None:
        """Called by db.write_transaction once its locks are held, before the change."""
        connection = session.connection()
        if connection.dialect.name == "postgresql":
            lock_id = int.from_bytes(
                hashlib.sha256(f"{self.scope}\n{self.key}".encode()).digest()[:8], "big", signed=True
            )
            if not connection.execute(_TRY_LOCK, {"lock_id": lock_id}).scalar():
                raise Conflict(Code.IDEMPOTENCY_KEY_IN_USE, "A request with this Idempotency-Key is still running.")
        ttl = session.info[_TTL]
        replay = self.stored(session, now, ttl)
        if replay is not None:
            raise replay
        # An expired row of this key is forgotten now, not when pruning reaches it: the key is free.
        session.execute(
            delete(_keys).where(_keys.c.scope == self.scope, _keys.c.key == self.key, _keys.c.created_date <= now - ttl)
        )

    def finish(self, session: Session, status_code: int, body: str) -> None:
        """Store the response in the change's still-open transaction, and commit both."""
        assert self.written and session.in_transaction(), "the change's transaction ended before its key was stored"
        now = utc_now()
        session.execute(
            insert(_keys).values(
                id=uuid.uuid4(),
                scope=self.scope,
                key=self.key,
                request_hash=self.request_hash,
                status_code=status_code,
                body=body,
                created_date=now,
                last_updated_date=now,
            )
        )
        oldest = select(_keys.c.id).where(_keys.c.created_date <= now - session.info[_TTL])
        session.execute(delete(_keys).where(_keys.c.id.in_(oldest.order_by(_keys.c.created_date).limit(PRUNE_BATCH))))
        session.commit()


def _replayed(replay: _Replay) -> Response:
    metrics.IDEMPOTENT_REPLAYS.inc()
    return Response(replay.body, replay.status_code, media_type="application/json", headers={REPLAYED: "true"})


def _run(
    claim: Claim, ttl: timedelta, work: Callable[[Session], Content], status_code: int, session: Session
) -> Response:
    session.info[_TTL] = ttl
    with read_transaction(session) as now:
        replay = claim.stored(session, now, ttl)
    if replay is not None:
        return _replayed(replay)
    session.info[IDEMPOTENCY_CLAIM] = claim
    try:
        try:
            result = work(session)
        except _Replay as stored:
            return _replayed(stored)
        except DomainError:
            # A twin that finished meanwhile may be why this one was refused (its hold now
            # holds the slot): answer as the twin was answered. Anything this request wrote is
            # rolled back first, so no read below commits it without its key.
            if session.in_transaction():
                session.rollback()
            with read_transaction(session) as now:
                twin = claim.stored(session, now, ttl)
            if twin is None:
                raise
            return _replayed(twin)
        response = json_response(result, status_code)
        if not claim.written:
            return response  # nothing was written, so nothing to keep
        try:
            claim.finish(session, status_code, bytes(response.body).decode())
        except IntegrityError:
            session.rollback()  # a twin stored the key first (its change is the one that counts)
            with read_transaction(session) as now:
                twin = claim.stored(session, now, ttl)
            if twin is None:
                raise
            return _replayed(twin)
    finally:
        session.info.pop(IDEMPOTENCY_CLAIM, None)
        if session.in_transaction():
            session.rollback()
    return response


async def respond(
    db: Database,
    settings: Settings,
    idempotency: Idempotency | None,
    scope: uuid.UUID | str,
    work: Callable[[Session], Content],
    status_code: int = 200,
) -> Response:
    """Run a POST's database work once per key in the caller's `scope`; answer with its JSON or the stored answer."""
    if idempotency is None:
        return json_response(await db.run(work), status_code)
    ttl = timedelta(seconds=settings.idempotency_key_ttl_seconds)
    # A fresh claim per run: Database.run may run the work again after a dropped connection.
    return await db.run(lambda session: _run(idempotency.scoped(scope), ttl, work, status_code, session))


def count(session: Session) -> int:
    """Stored keys (tests)."""
    return session.scalar(select(func.count()).select_from(_keys)) or 0
