"""Real concurrency: a server in its own process, dozens of client threads racing over HTTP."""

import functools
import itertools
import time
from collections import Counter
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from tests.factories import ADMIN_TOKEN
from tests.race import Racers, http_racers
from tests.server import running_server, seed_over_http

pytestmark = pytest.mark.slow

RACERS = 24
SLOTS = 20
SERVER_ENV = {"ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false", "DATABASE_URL": "sqlite:///:memory:"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(SERVER_ENV) as url:
        yield url


@pytest.fixture
def racers(base_url: str) -> Iterator[Racers[httpx.Client]]:
    with http_racers(base_url, RACERS) as pool:
        yield pool


def test_racing_holds_on_each_slot_grant_exactly_one(base_url: str, racers: Racers[httpx.Client]) -> None:
    users, slots = seed_over_http(base_url, ADMIN_TOKEN, users=RACERS, slots=SLOTS)
    for slot in slots:
        responses = racers.race(
            [lambda c, h=h, s=slot: c.post("/holds", json={"slot_id": s}, headers=h) for h in users]  # type: ignore[misc]
        )
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: 1, 409: RACERS - 1}, (slot, codes)
        assert all(r.json()["code"] == "SLOT_UNAVAILABLE" for r in responses if r.status_code == 409)
        winner = next(i for i, r in enumerate(responses) if r.status_code == 201)
        with httpx.Client(base_url=base_url) as client:
            seen = client.get(f"/slots/{slot}", headers=users[winner]).json()
        assert seen["status"] == "HELD_BY_ME" and seen["hold_id"] == responses[winner].json()["hold_id"]


def test_confirm_racing_release_on_one_hold_has_one_winner(base_url: str, racers: Racers[httpx.Client]) -> None:
    users, slots = seed_over_http(base_url, ADMIN_TOKEN, users=1, slots=SLOTS)
    owner = users[0]
    outcomes = Counter()
    with httpx.Client(base_url=base_url) as client:
        for slot in slots:
            hold = client.post("/holds", json={"slot_id": slot}, headers=owner).json()["hold_id"]
            # Several confirms and releases of the same hold, all at once.
            calls = [
                lambda c, a=action, h=hold: c.post(f"/holds/{h}/{a}", headers=owner)  # type: ignore[misc]
                for action in ("confirm", "release") * (RACERS // 2)
            ]
            responses = racers.race(calls)
            assert all(r.status_code < 500 for r in responses)
            final = client.get(f"/holds/{hold}", headers=owner).json()["status"]
            confirms = [r.status_code for r in responses[0::2]]
            releases = [r.status_code for r in responses[1::2]]
            if final == "CONFIRMED":
                assert set(confirms) == {200} and set(releases) <= {409}, (confirms, releases)
            else:
                assert final == "RELEASED"
                assert set(releases) == {200} and set(confirms) <= {410}, (confirms, releases)
            outcomes[final] += 1
    assert sum(outcomes.values()) == SLOTS


def test_in_memory_database_survives_sustained_mixed_load(base_url: str) -> None:
    clients, seconds = 64, 6.0  # more clients than FastAPI's default thread pool (40 threads)
    users, slots = seed_over_http(base_url, ADMIN_TOKEN, users=clients, slots=10)

    def work(index: int, client: httpx.Client) -> tuple[Counter[int], list[float], int]:
        seen: Counter[int] = Counter()
        times: list[float] = []  # when each response arrived
        deadline = time.monotonic() + seconds  # the clock starts as every client is released
        i = 0
        while time.monotonic() < deadline and i < 2000:
            slot, headers = slots[(index + i) % len(slots)], users[index]
            responses = [client.post("/holds", json={"slot_id": slot}, headers=headers)]
            if responses[0].status_code == 201:
                hold = responses[0].json()["hold_id"]
                responses.append(client.post(f"/holds/{hold}/release", headers=headers))
            responses.append(client.get("/slots", params={"limit": 20}, headers=headers))
            seen.update(r.status_code for r in responses)
            times.append(time.monotonic())
            i += 1
        return seen, times, i

    with http_racers(base_url, clients, timeout=60) as racers:
        results = racers.race([functools.partial(work, index) for index in range(clients)])
    statuses: Counter[int] = sum((seen for seen, _, _ in results), Counter())
    answered = [moment for _, times, _ in results for moment in times]
    per_client = [rounds for _, _, rounds in results]
    answered.sort()
    longest_silence = max(b - a for a, b in itertools.pairwise(answered))
    print(f"mixed load: {dict(statuses)}, longest silence {longest_silence:.2f}s, fewest rounds {min(per_client)}")
    assert set(statuses) <= {200, 201, 409}, statuses
    assert min(per_client) >= 2, per_client  # nobody starved
    assert longest_silence < 2.0, "the server stopped answering for a while"
    with httpx.Client(base_url=base_url) as client:
        assert client.get("/health").status_code == 200
        listing = client.get("/slots", params={"limit": 500})
        assert listing.status_code == 200
        assert {item["id"] for item in listing.json()["items"]} >= set(slots)
