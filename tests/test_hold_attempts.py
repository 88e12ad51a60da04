"""A rush on one slot (booking.HoldAttempts): one claim per slot at a time in a worker, refusals from what it saw.

- Requests that read a slot free wait while one of them claims it; a claim written in a turn
  that began after they arrived refuses them without another read (theirs: HELD_BY_ME).
- So does the claim a turn's write was refused by (another worker's), when it names one.
- A turn that claims nothing, or began before a request arrived, sends it to read again.
- A read that went out before a turn ended is not trusted to take the next turn.
- With no fast read, requests go to the unit of work as before, without turns.
- Over HTTP, on PostgreSQL with two workers: one 201 per slot, every other answer a true 409.
"""

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import booking
import fastread
import rawsql
from booking import ClaimTurn, HoldAttempts
from errors import Code, LiveClaim, SlotUnavailable
from schemas import HoldReadFields, HoldStatus
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import ADMIN_TOKEN, make_hold, make_room, make_slot, make_user
from tests.race import http_racers
from tests.server import running_server, seed_over_http

SLOT = uuid.uuid4()
ALICE, BOB, CAROL = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
LATER = datetime.now(UTC) + timedelta(days=1)
FREE = SimpleNamespace(start_time=LATER, claim_id=None)


def _hold(user_id: uuid.UUID) -> HoldReadFields:
    now = datetime.now(UTC)
    return {
        "hold_id": uuid.uuid4(),
        "slot_id": SLOT,
        "user_id": user_id,
        "status": HoldStatus.HOLD,
        "expires_at": now + timedelta(minutes=5),
        "confirmed_at": None,
        "extensions_used": 0,
        "extensions_left": 2,
        "created_date": now,
        "last_updated_date": now,
    }


def _taken_by(hold: HoldReadFields) -> SimpleNamespace:
    return SimpleNamespace(
        start_time=LATER,
        claim_id=hold["hold_id"],
        claim_status=HoldStatus.HOLD,
        claim_user_id=hold["user_id"],
        claim_expires_at=hold["expires_at"],
    )


class _Reads:
    """Stands in for Database.reads: each slot read waits until the test answers it; nothing shared."""

    def __init__(self, *, answers: bool = True) -> None:
        self.out: list[asyncio.Future[list[Any] | None]] = []
        self.sent = 0
        self._answers = answers

    async def shared(self, key: object, read: Callable[[], Awaitable[Any]]) -> Any:
        return await read()

    async def fetch(self, statement: rawsql.Statement, params: Any) -> list[Any] | None:
        params()  # the judging time is read as the read goes out
        self.sent += 1
        if not self._answers:
            return None
        answer: asyncio.Future[list[Any] | None] = asyncio.get_running_loop().create_future()
        self.out.append(answer)
        return await answer

    def answer(self, row: SimpleNamespace, count: int | None = None) -> None:
        """Answer the oldest `count` reads out (all by default) with this slot row."""
        for future in self.out[:count]:
            future.set_result([row])
        del self.out[:count]


def _run(scenario: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, 5))  # a turn never handed on would hang the test, not fail it


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class _SharingReads(_Reads):
    """As _Reads, but shared as on PostgreSQL (fastread._SharedReads): one read for the callers of a slot meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self._shared: fastread._SharedReads | None = None

    async def shared(self, key: object, read: Callable[[], Awaitable[Any]]) -> Any:
        if self._shared is None:
            self._shared = fastread._SharedReads(asyncio.get_running_loop())
        return await self._shared.get(key, read)


class _Rush:
    """Hold requests on SLOT through one HoldAttempts, each told when to finish its turn."""

    def __init__(self, reads: _Reads) -> None:
        self.reads = reads
        self.attempts = HoldAttempts(SimpleNamespace(reads=reads))  # type: ignore[arg-type]
        self.in_turn: list[str] = []
        self.turns: dict[str, ClaimTurn] = {}
        self.finish: dict[str, asyncio.Future[HoldReadFields | Exception | None]] = {}

    async def all_read(self, row: SimpleNamespace, *requests: tuple[str, uuid.UUID]) -> "list[asyncio.Task[str]]":
        """Start these requests, then answer every read they sent with `row`."""
        tasks = [self.request(name, user_id) for name, user_id in requests]
        await _settle()
        self.reads.answer(row)
        await _settle()
        return tasks

    def request(self, name: str, user_id: uuid.UUID) -> "asyncio.Task[str]":
        async def hold() -> str:
            async with self.attempts.turn(SLOT, user_id) as turn:
                self.in_turn.append(name)
                self.turns[name] = turn
                self.finish[name] = asyncio.get_running_loop().create_future()
                claimed = await self.finish[name]  # the claim's unit of work
                if isinstance(claimed, Exception):
                    raise claimed
                if claimed is not None:
                    turn.claimed(claimed)
                return "claimed" if claimed is not None else "refused by the write"

        return asyncio.create_task(hold())


def _refusal(task: "asyncio.Task[str]") -> dict[str, object]:
    error = task.exception()
    assert isinstance(error, SlotUnavailable), error
    return {"code": error.code, **error.extra}


def test_requests_that_read_a_slot_free_wait_for_one_claim_and_are_refused_from_it() -> None:
    async def scenario() -> None:
        rush = _Rush(_Reads())
        # All three read the slot free.
        first, second, third = await rush.all_read(FREE, ("first", ALICE), ("bob", BOB), ("alice", ALICE))
        assert rush.in_turn == ["first"]  # one claims, the others wait
        held = _hold(ALICE)
        rush.finish["first"].set_result(held)
        assert await first == "claimed"
        await _settle()
        assert rush.reads.sent == 3 and not rush.reads.out  # refused without another read
        assert _refusal(second) == {
            "code": "SLOT_UNAVAILABLE",
            "slot_status": "HELD_BY_OTHER",
            "held_until": held["expires_at"],
            "hold_id": None,
        }
        assert _refusal(third) == {
            "code": "SLOT_UNAVAILABLE",
            "slot_status": "HELD_BY_ME",
            "held_until": held["expires_at"],
            "hold_id": held["hold_id"],
        }
        assert rush.attempts._slots == {}  # nothing kept once no request is under way

    _run(scenario())


def _lapsed_hold() -> HoldReadFields:
    return {**_hold(ALICE), "expires_at": datetime.now(UTC) - timedelta(seconds=1)}


@pytest.mark.parametrize(
    "outcome",
    [
        # Another worker won the row lock first (seen as no claim here), or the write failed.
        pytest.param(lambda: None, id="claimed-nothing"),
        # "Claimed concurrently": the write saw no live claim, so there is none to be refused from.
        pytest.param(lambda: SlotUnavailable(Code.SLOT_UNAVAILABLE, "claimed concurrently"), id="refused-naming-none"),
        # A hold already over when the waiting wakes may never have been live.
        pytest.param(_lapsed_hold, id="claim-lapsed-since"),
    ],
)
def test_a_turn_with_no_live_claim_to_name_sends_the_waiting_to_read_again(
    outcome: Callable[[], HoldReadFields | Exception | None],
) -> None:
    """What the slot holds now is then for a new read to say; a free slot goes to the next turn."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, second = await rush.all_read(FREE, ("first", ALICE), ("second", BOB))
        rush.finish["first"].set_result(outcome())
        await asyncio.wait([first])
        first.exception()  # its own answer (a refusal or none) is not what this test is about
        await _settle()
        assert not second.done() and len(rush.reads.out) == 1  # the waiting request reads again
        rush.reads.answer(FREE)
        await _settle()
        assert rush.in_turn == ["first", "second"]
        rush.finish["second"].set_result(_hold(BOB))
        assert await second == "claimed"

    _run(scenario())


def test_a_turn_whose_write_fails_sends_the_waiting_to_read_again() -> None:
    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, second = await rush.all_read(FREE, ("first", ALICE), ("second", BOB))
        rush.finish["first"].set_result(RuntimeError("the database went away"))
        with pytest.raises(RuntimeError):
            await first
        await _settle()
        rush.reads.answer(_taken_by(_hold(CAROL)))  # its new read: another worker's claim
        await _settle()
        assert _refusal(second)["slot_status"] == "HELD_BY_OTHER"
        assert rush.in_turn == ["first"] and rush.attempts._slots == {}

    _run(scenario())


def test_a_turn_refused_by_another_workers_claim_refuses_the_waiting_from_it() -> None:
    """The claim its write met was live after the turn began: the waiting are told so, without another read."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, carol, bob = await rush.all_read(FREE, ("first", ALICE), ("carol", CAROL), ("bob", BOB))
        theirs = _hold(BOB)
        met = LiveClaim(BOB, HoldStatus.HOLD, theirs["expires_at"], theirs["hold_id"])
        rush.finish["first"].set_result(SlotUnavailable(Code.SLOT_UNAVAILABLE, "taken", claim=met))
        with pytest.raises(SlotUnavailable):
            await first
        await _settle()
        assert rush.reads.sent == 3 and not rush.reads.out
        assert (_refusal(carol)["slot_status"], _refusal(carol)["hold_id"]) == ("HELD_BY_OTHER", None)
        assert (_refusal(bob)["slot_status"], _refusal(bob)["hold_id"]) == ("HELD_BY_ME", theirs["hold_id"])

    _run(scenario())


def test_a_booking_met_by_a_turn_refuses_the_waiting_however_old_its_hold() -> None:
    """A booking stays live after its hold's expires_at: the waiting are told it is booked."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, second = await rush.all_read(FREE, ("first", ALICE), ("second", CAROL))
        booked = LiveClaim(BOB, HoldStatus.CONFIRMED, datetime.now(UTC) - timedelta(hours=1), uuid.uuid4())
        rush.finish["first"].set_result(SlotUnavailable(Code.SLOT_UNAVAILABLE, "booked", claim=booked))
        with pytest.raises(SlotUnavailable):
            await first
        await _settle()
        assert _refusal(second)["slot_status"] == "BOOKED" and not rush.reads.out

    _run(scenario())


def test_a_shared_read_answers_each_caller_as_they_see_the_slot() -> None:
    """One read for a worker's concurrent holds of a slot (PostgreSQL): its owner is told HELD_BY_ME, others not."""

    async def scenario() -> None:
        rush = _Rush(_SharingReads())
        mine, theirs = rush.request("mine", ALICE), rush.request("theirs", BOB)
        await _settle()
        assert rush.reads.sent == 1
        held = _hold(ALICE)
        rush.reads.answer(_taken_by(held))
        await _settle()
        assert (_refusal(mine)["slot_status"], _refusal(mine)["hold_id"]) == ("HELD_BY_ME", held["hold_id"])
        assert (_refusal(theirs)["slot_status"], _refusal(theirs)["hold_id"]) == ("HELD_BY_OTHER", None)

    _run(scenario())


def test_a_claim_from_a_turn_begun_before_a_request_arrived_does_not_refuse_it() -> None:
    """Its claim may predate the request (and be released since): only a read sent after the request arrived may say."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        (first,) = await rush.all_read(FREE, ("first", ALICE))
        assert rush.in_turn == ["first"]
        late = rush.request("late", BOB)  # arrives during the turn
        await _settle()
        rush.reads.answer(FREE)  # its read finds the slot free: it waits for the turn
        await _settle()
        rush.finish["first"].set_result(_hold(ALICE))
        assert await first == "claimed"
        await _settle()
        assert not late.done() and len(rush.reads.out) == 1  # it reads again
        rush.reads.answer(FREE)  # released meanwhile
        await _settle()
        assert rush.in_turn == ["first", "late"]
        rush.finish["late"].set_result(_hold(BOB))
        assert await late == "claimed"

    _run(scenario())


def test_a_read_sent_before_a_turn_ended_does_not_take_the_next_turn() -> None:
    """A slow read answering "free" after a claim committed: the claim refuses the request, no second write."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, slow = rush.request("first", ALICE), rush.request("slow", BOB)
        await _settle()
        rush.reads.answer(FREE, count=1)  # only the first read is back
        await _settle()
        held = _hold(ALICE)
        rush.finish["first"].set_result(held)
        assert await first == "claimed"
        rush.reads.answer(FREE)  # the slow read, sent before the claim committed
        await _settle()
        assert rush.in_turn == ["first"]
        assert _refusal(slow)["slot_status"] == "HELD_BY_OTHER"

    _run(scenario())


def test_a_read_that_sees_the_slot_taken_refuses_at_once_without_waiting() -> None:
    async def scenario() -> None:
        rush = _Rush(_Reads())
        (first,) = await rush.all_read(FREE, ("first", ALICE))
        other = rush.request("other", CAROL)
        await _settle()
        rush.reads.answer(_taken_by(_hold(BOB)))  # a claim from another worker
        await _settle()
        assert _refusal(other)["slot_status"] == "HELD_BY_OTHER"
        assert not first.done()
        rush.finish["first"].set_result(None)
        await first

    _run(scenario())


def test_a_cancelled_request_leaves_the_turn_to_the_others() -> None:
    """A client gone while waiting, or while its claim is written: the others go on, nothing is left behind."""

    async def scenario() -> None:
        rush = _Rush(_Reads())
        first, gone, third = await rush.all_read(FREE, ("first", ALICE), ("gone", BOB), ("third", CAROL))
        gone.cancel()
        first.cancel()  # the turn's own request
        await _settle()
        assert gone.cancelled() and first.cancelled()
        assert len(rush.reads.out) == 1  # the third reads again, and claims
        rush.reads.answer(FREE)
        await _settle()
        assert rush.in_turn == ["first", "third"]
        rush.finish["third"].set_result(_hold(CAROL))
        assert await third == "claimed"
        assert rush.attempts._slots == {}

    _run(scenario())


def test_without_a_fast_read_every_request_goes_to_the_unit_of_work_without_a_turn() -> None:
    async def scenario() -> None:
        rush = _Rush(_Reads(answers=False))
        first, second = rush.request("first", ALICE), rush.request("second", BOB)
        await _settle()
        assert rush.in_turn == ["first", "second"]
        assert not rush.turns["first"].read and not rush.turns["second"].read  # create_hold reads itself
        for name in ("first", "second"):
            rush.finish[name].set_result(None)
        await asyncio.gather(first, second)

    _run(scenario())


def test_a_refused_claim_names_the_claim_it_met_and_the_body_does_not(client: TestClient) -> None:
    """What a turn passes on comes from create_hold's own refusal; the problem body shows only what it did before."""
    alice, bob = make_user(client), make_user(client)
    slot = make_slot(client, make_room(client))
    held = make_hold(client, alice, slot)
    state = client.app.state  # type: ignore[attr-defined]
    with Session(state.db.engine) as session, pytest.raises(SlotUnavailable) as refused:
        booking.create_hold(
            session,
            slot_id=uuid.UUID(slot),
            user_id=uuid.UUID(bob.id),
            settings=state.settings,
            refusal_read=False,  # as in a turn: straight to the write, which is refused
        )
    assert refused.value.claim == (
        uuid.UUID(alice.id),
        HoldStatus.HOLD,
        _at(held["expires_at"]),
        uuid.UUID(held["hold_id"]),
    )
    body = client.post("/holds", json={"slot_id": slot}, headers=bob.auth).json()
    assert set(body) == {
        "type",
        "title",
        "status",
        "detail",
        "code",
        "slot_status",
        "held_until",
        "hold_id",
        "request_id",
    }


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.slow
def test_a_rush_on_postgres_workers_gives_one_hold_per_slot_and_true_refusals(postgres_engine: Engine) -> None:
    """Twenty clients, four users, one slot at a time, two workers: each 409 names the one hold as its user sees it.

    Whichever way each answer came (a read, a turn's claim, the write), it must be true.
    """
    empty_postgres(postgres_engine)
    env = {
        "DATABASE_URL": POSTGRES_URL,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "HOLD_MAX_ACTIVE_PER_USER": "10",  # one user may win every slot
    }
    with running_server(env, workers=2) as base_url:
        users, slots = seed_over_http(base_url, ADMIN_TOKEN, users=4, slots=5)
        with http_racers(base_url, 20) as racers:
            for slot in slots:
                clicks = [users[i % 4] for i in range(20)]
                responses = racers.race(
                    [lambda c, h=h, s=slot: c.post("/holds", json={"slot_id": s}, headers=h) for h in clicks]  # type: ignore[misc]
                )
                assert Counter(r.status_code for r in responses) == {201: 1, 409: 19}
                (winner,) = [(h, r.json()) for h, r in zip(clicks, responses, strict=True) if r.status_code == 201]
                owner, hold = winner
                for headers, response in zip(clicks, responses, strict=True):
                    if response.status_code == 201:
                        continue
                    body = response.json()
                    mine = headers == owner
                    assert (body["code"], body["slot_status"], body.get("hold_id")) == (
                        "SLOT_UNAVAILABLE",
                        "HELD_BY_ME" if mine else "HELD_BY_OTHER",
                        hold["hold_id"] if mine else None,
                    ), body
                    assert body["held_until"] == hold["expires_at"]
                listed = httpx.get(f"{base_url}/holds", params={"status": "HOLD"}, headers=owner).json()["items"]
                assert [h["hold_id"] for h in listed if h["slot_id"] == slot] == [hold["hold_id"]]
