"""Real concurrency: a server in its own process, dozens of client threads racing over HTTP."""

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest

from tests.factories import ADMIN_TOKEN
from tests.server import running_server, seed_over_http

pytestmark = pytest.mark.slow

RACERS = 24
SLOTS = 20
SERVER_ENV = {"ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false", "DATABASE_URL": "sqlite:///:memory:"}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(SERVER_ENV) as url:
        yield url


class Racers:
    """A pool of threads, each with its own HTTP connection, released together by a barrier."""

    def __init__(self, base_url: str, count: int) -> None:
        self.count = count
        self.pool = ThreadPoolExecutor(max_workers=count)
        self.local = threading.local()
        self.base_url = base_url

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.base_url, timeout=30)
        return self.local.client

    def race(self, calls: list[Callable[[httpx.Client], httpx.Response]]) -> list[httpx.Response]:
        """Run every call at once, one per thread; return the responses in call order."""
        barrier = threading.Barrier(len(calls))

        def run(call: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
            client = self.client()
            barrier.wait()
            return call(client)

        return list(self.pool.map(run, calls))

    def close(self) -> None:
        self.pool.shutdown()


@pytest.fixture
def racers(base_url: str) -> Iterator[Racers]:
    pool = Racers(base_url, RACERS)
    yield pool
    pool.close()


def test_racing_holds_on_each_slot_grant_exactly_one(base_url: str, racers: Racers) -> None:
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


def test_confirm_racing_release_on_one_hold_has_one_winner(base_url: str, racers: Racers) -> None:
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
    statuses: Counter[int] = Counter()
    answered: list[float] = []  # when each response arrived
    per_client: list[int] = [0] * clients
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def work(index: int) -> None:
        seen: Counter[int] = Counter()
        times: list[float] = []
        with httpx.Client(base_url=base_url, timeout=60) as client:
            start.wait()  # every client is connected before the clock starts
            deadline = time.monotonic() + seconds
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
        with lock:
            statuses.update(seen)
            answered.extend(times)
            per_client[index] = i

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(work, range(clients)))
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
