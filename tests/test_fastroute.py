"""The fast path (fastroute.py) answers exactly as FastAPI's handler: the same seeded requests, valid and not, sent to
two identical worlds, one with the fast path and one without, give the same transcript, metrics included."""

import random
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from fastapi.testclient import TestClient
from freezegun import freeze_time
from pydantic import BaseModel
from sqlalchemy import text

import fastroute
import metrics
from config import Settings
from main import create_app
from tests.conftest import TABLES
from tests.factories import ADMIN_TOKEN, make_room, make_slot, make_user

NOW = datetime(2031, 5, 1, 8, 0, tzinfo=UTC)
DAY = datetime(2031, 5, 2, tzinfo=UTC)
REQUESTS = 400
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{11,12}"
)  # truncated forms too


@dataclass
class World:
    """One app's ids: what a drawn request names, rendered in this world."""

    tokens: list[str]
    users: list[str]
    room: str
    slots: list[str]
    holds: list[str] = field(default_factory=list)


Request = tuple[str, str, dict[str, str], bytes]
Recipe = Callable[[World], Request]


def _uuid_form(rng: random.Random) -> Callable[[str], str]:
    forms: list[Callable[[str], str]] = [
        lambda u: u,
        lambda u: u,
        lambda u: u.upper(),
        lambda u: "%7B" + u + "%7D",
        lambda u: "urn:uuid:" + u,
        lambda u: u.replace("-", ""),
        lambda u: u[:-1],
        lambda u: u + "%20",
        lambda u: "not-a-uuid",
        lambda u: "",
    ]
    return forms[0] if rng.random() < 0.7 else rng.choice(forms)


def _instant(rng: random.Random) -> str:
    at = DAY + timedelta(hours=rng.choice([0, 9, 12, 24]))
    if rng.random() < 0.7:
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return rng.choice(
        [
            at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            at.strftime("%Y-%m-%dT%H:%M:%S+00:00"),  # `+` is a space once decoded
            at.strftime("%Y-%m-%dT%H:%M:%S%%2B02:00"),
            at.strftime("%Y-%m-%dT%H:%M:%S-05:00"),
            at.strftime("%Y-%m-%dT%H:%M:%S.123Z"),
            at.strftime("%Y-%m-%dT%H:%M:%S.1234567Z"),
            at.strftime("%Y-%m-%dT%H:%M:%S"),
            at.strftime("%Y-%m-%d"),
            at.strftime("%Y-%m-%dt%H:%M:%Sz"),
            at.strftime("%Y-%m-%d%%20%H:%M:%SZ"),
            "1935000000",
            "0001-01-01T00:00:00%2B14:00",
            "yesterday",
            "",
        ]
    )


def _token(rng: random.Random) -> Callable[[World], dict[str, str]]:
    def user(index: int, scheme: str = "Bearer") -> Callable[[World], dict[str, str]]:
        return lambda world: {"authorization": f"{scheme} {world.tokens[index]}"}

    return rng.choice(
        [
            user(0),
            user(0),
            user(1),
            user(0, "bearer"),
            lambda world: {},
            lambda world: {"authorization": "Bearer not-a-token"},
            lambda world: {"authorization": "Basic dXNlcjpwYXNz"},
            lambda world: {"authorization": f"Bearer {ADMIN_TOKEN}"},
        ]
    )


def _listing(rng: random.Random) -> Recipe:
    auth = _token(rng)
    parts: list[Callable[[World], str]] = []
    room = _uuid_form(rng)
    if rng.random() < 0.9:
        parts.append(lambda world: "room_id=" + room(world.room))
    for key in ("from", "to"):
        if rng.random() < 0.8:
            value = _instant(rng)
            parts.append(lambda world, key=key, value=value: f"{key}={value}")
    if rng.random() < 0.2:
        value = rng.choice(["AVAILABLE", "HELD_BY_ME", "BOOKED", "available", ""])
        parts.append(lambda world: "status=" + value)
    if rng.random() < 0.2:
        limit = rng.choice(["1", "2", "50", "100", "0", "101", "007", "-1", "1e2", "abc"])
        parts.append(lambda world: "limit=" + limit)
    if rng.random() < 0.1:
        cursor = rng.choice(["abc", "x" * 129, ""])
        parts.append(lambda world: "cursor=" + cursor)
    if rng.random() < 0.2:
        who, form = rng.choice([0, 1]), _uuid_form(rng)
        parts.append(lambda world: "user_id=" + form(world.users[who]))
    extra = (
        None if rng.random() < 0.8 else rng.choice(["x=1", "limit=5&limit=6", "flag", "&", "%72oom_id=x", "from=2031"])
    )
    if extra is not None:
        parts.append(lambda world: extra)
    rng.shuffle(parts)

    def render(world: World) -> Request:
        return "GET", "/slots?" + "&".join(part(world) for part in parts), auth(world), b""

    return render


_CONTENT_TYPES = [
    "application/json",
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=utf-8",
    "APPLICATION/JSON",
    "application/problem+json",
    "text/plain",
    None,
]


def _idempotency(rng: random.Random) -> dict[str, str]:
    key = rng.choice([None, None, None, "k-1", "k-2", "", "x" * 256])
    return {} if key is None else {"idempotency-key": key}


def _hold(rng: random.Random) -> Recipe:
    auth, idem = _token(rng), _idempotency(rng)
    content_type = "application/json" if rng.random() < 0.7 else rng.choice(_CONTENT_TYPES)
    slot, form = rng.randrange(6), _uuid_form(rng)
    claimed = rng.choice([None, None, 0, 1])
    shape = (
        "object" if rng.random() < 0.7 else rng.choice(["extra", "null", "list", "broken", "empty", "deep", "latin-1"])
    )
    query = rng.choice(["", "", "", "?x=1"])

    def render(world: World) -> Request:
        fields = {"slot_id": form(world.slots[slot])}
        if claimed is not None:
            fields["user_id"] = world.users[claimed]
        body = {
            "object": "{" + ", ".join(f'"{k}": "{v}"' for k, v in fields.items()) + "}",
            "extra": '{"slot_id": "' + world.slots[slot] + '", "x": 1}',
            "null": "null",
            "list": "[]",
            "broken": '{"slot_id": ',
            "empty": "",
            "deep": "[" * 3000 + "]" * 3000,
            "latin-1": '{"slot_id": "\xe9"}',
        }[shape].encode("latin-1")
        headers = {**auth(world), **idem}
        if content_type is not None:
            headers["content-type"] = content_type
        return "POST", "/holds" + query, headers, body

    return render


def _action(rng: random.Random) -> Recipe:
    auth, idem, form = _token(rng), _idempotency(rng), _uuid_form(rng)
    action = rng.choice(["confirm", "release", "extend", "cancel", "history", ""])
    which, claimed = rng.randrange(8), rng.choice([None, None, 0, 1])
    body = "" if rng.random() < 0.6 else rng.choice(["{}", "claimed", "{", "null"])

    def render(world: World) -> Request:
        hold = world.holds[which % len(world.holds)] if world.holds else str(uuid.UUID(int=which))
        path = f"/holds/{form(hold)}" + (f"/{action}" if action else "")
        payload = body
        if body == "claimed":
            payload = "{}" if claimed is None else '{"user_id": "' + world.users[claimed] + '"}'
        headers = {**auth(world), **idem}
        if payload:
            headers["content-type"] = "application/json"
        method = "POST" if action not in ("history", "") else "GET"
        return method, path, headers, payload.encode() if method == "POST" else b""

    return render


def _slot(rng: random.Random) -> Recipe:
    auth, form, slot = _token(rng), _uuid_form(rng), rng.randrange(6)
    claimed = rng.choice([None, 0, 1])

    def render(world: World) -> Request:
        query = "" if claimed is None else f"?user_id={world.users[claimed]}"
        return "GET", f"/slots/{form(world.slots[slot])}{query}", auth(world), b""

    return render


def _recipes(seed: int) -> list[Recipe]:
    rng = random.Random(seed)
    kinds = [_listing, _listing, _hold, _hold, _action, _action, _slot]
    return [rng.choice(kinds)(rng) for _ in range(REQUESTS)]


def _requests_by_route() -> dict[tuple[str, ...], float]:
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in (metrics.REQUESTS, metrics.HOLDS_CREATED, metrics.HOLDS_REFUSED, metrics.RATE_LIMITED)
        for sample in family.collect()[0].samples
    }


def _never() -> None:
    """Not a dependency of any route: an override of it changes nothing but turns the fast path off."""


def _transcript(settings: Settings, recipes: list[Recipe], *, fast: bool) -> tuple[list[object], int]:
    """Every answer to `recipes` in a new world (ids named by first appearance), and how many the fast path gave."""
    answered = 0
    real_answer = fastroute._answer

    async def counting(plan: fastroute.Plan, request: fastroute.Request) -> fastroute.Response | None:
        nonlocal answered
        try:
            response = await real_answer(plan, request)
        except Exception:
            answered += 1  # a dependency's refusal (401, 403, 429...), raised on the fast path
            raise
        answered += response is not None
        return response

    names: dict[str, str] = {}

    def named(text: str) -> str:
        def name(match: re.Match[str]) -> str:
            key = match.group(0).lower().replace("-", "")
            return names.setdefault(key, f"<id{len(names)}>")

        return _UUID.sub(name, text)

    transcript: list[object] = []
    before = _requests_by_route()
    with pytest.MonkeyPatch.context() as patch, freeze_time(NOW), TestClient(create_app(settings)) as client:
        patch.setattr(fastroute, "_answer", counting)
        if not fast:
            client.app.dependency_overrides[_never] = _never  # type: ignore[attr-defined]
        users = [make_user(client, f"user_{i}") for i in range(2)]
        room = make_room(client, "Equivalence")
        slots = [make_slot(client, room, start=DAY + timedelta(hours=9 + i)) for i in range(6)]
        world = World([u.token for u in users], [u.id for u in users], room, slots)
        for value in (*world.users, world.room, *world.slots):
            named(value)
        for index, recipe in enumerate(recipes):
            method, url, headers, body = recipe(world)
            response = client.request(method, url, headers={**headers, "x-request-id": f"r{index}"}, content=body)
            if response.status_code == 201:
                world.holds.append(response.json()["hold_id"])
            transcript.append(
                (
                    index,
                    method,
                    named(url),
                    response.status_code,
                    named(str(response.headers.multi_items())),
                    named(response.text),
                )
            )
    after = _requests_by_route()
    transcript.append({key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)})
    return transcript, answered


@pytest.fixture
def worlds(settings: Settings, backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], None]]:
    """Empties PostgreSQL before each world, change-log positions from 1 (each SQLite app has its own memory)."""

    def reset() -> None:
        if backend == "postgresql":
            engine = request.getfixturevalue("postgres_engine")
            with engine.begin() as connection:
                if connection.scalar(text("SELECT to_regclass('public.holds') IS NOT NULL")):
                    connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))

    yield reset


@pytest.mark.parametrize("seed", [11, 12])
def test_fast_path_answers_exactly_as_fastapi(settings: Settings, worlds: Callable[[], None], seed: int) -> None:
    settings = settings.model_copy(update={"rate_limit_holds": "40/minute"})
    recipes = _recipes(seed)
    worlds()
    slow, fell_back = _transcript(settings, recipes, fast=False)
    worlds()
    fast, answered = _transcript(settings, recipes, fast=True)
    assert fell_back == 0
    for expected, got in zip(slow, fast, strict=True):
        assert got == expected
    # Not vacuous: the fast path answered a good share, and FastAPI the rest.
    assert REQUESTS * 0.25 < answered < REQUESTS * 0.9, answered


# ------------------------------------------------------------------ what a plan must not express


async def _deny() -> None:
    raise HTTPException(403, "denied")


def _small_app(**app_kwargs: Any) -> tuple[FastAPI, APIRouter]:
    app = FastAPI(**app_kwargs)
    router = APIRouter(route_class=fastroute.FastRoute)
    return app, router


@pytest.mark.parametrize("where", ["app", "include"])
def test_a_dependency_added_where_the_route_is_included_is_never_skipped(where: str) -> None:
    app, router = _small_app(**({"dependencies": [Depends(_deny)]} if where == "app" else {}))

    @router.get("/secret")
    async def secret() -> Response:
        return Response("secret")

    app.include_router(router, **({"dependencies": [Depends(_deny)]} if where == "include" else {}))
    with TestClient(app) as client:
        assert client.get("/secret").status_code == 403


def test_a_default_factory_is_called_for_every_request() -> None:
    app, router = _small_app()

    @router.get("/nonce")
    async def nonce(value: Annotated[str, Query(default_factory=lambda: uuid.uuid4().hex)]) -> Response:
        return Response(value)

    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/nonce").text != client.get("/nonce").text


def test_fastapis_own_body_limit_still_answers_413() -> None:
    app, router = _small_app()

    class Body(BaseModel):
        name: str

    @router.post("/small", max_body_size=16)
    async def small(body: Body) -> Response:
        return Response(body.name)

    app.include_router(router)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is met while reading
        yield b'{"name": "'
        yield b"x" * 40
        yield b'"}'

    answers: list[int] = []
    client = TestClient(app)  # no lifespan: a request that hangs must fail the test, not hang its exit
    caller = threading.Thread(
        target=lambda: answers.append(
            client.post("/small", content=chunks(), headers={"content-type": "application/json"}).status_code
        ),
        daemon=True,
    )
    caller.start()
    caller.join(10)
    assert answers == [413]
