"""The fan-out's writers: paced hold-churn clients, each on its own free slots, and the writes they made.

A writer records, for each 2xx, the hold id, the status it produced and when the answer arrived.
After the run `positions` asks `GET /holds/{id}/history` for each write's change-log position,
which is the stream's event id (bench.fanout_record matches them to the subscribers' events).
"""

import http.client
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.seed import Api


@dataclass
class Write:
    """One 2xx hold transition: the slot, the hold, the status it left, when it was sent and answered."""

    slot_id: str
    hold_id: str
    token: str
    status: str  # HOLD, CONFIRMED, RELEASED or CANCELLED
    sent: float
    answered: float
    position: int | None = None  # its change-log position, from the hold's history after the run


class Writer(threading.Thread):
    """A paced hold-churn client on its own slots: hold, then confirm and cancel (half) or release."""

    def __init__(self, url: str, token: str, slots: list[str], interval: float, deadline: float, seed_: int) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self.token, self.slots, self.interval, self.deadline = token, slots, interval, deadline
        self.rng = random.Random(seed_)
        self.writes: list[Write] = []
        self.errors: Counter[str] = Counter()
        self.next_at = time.monotonic()

    def call(self, path: str, body: Any = None) -> tuple[int, Any, float, float]:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_at = max(self.next_at + self.interval, time.monotonic())
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        sent = time.monotonic()
        self.conn.request("POST", path, body=None if body is None else json.dumps(body), headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        answered = time.monotonic()
        return response.status, json.loads(data) if data else None, sent, answered

    def step(self, slot: str, path: str, action: str, body: Any = None) -> dict[str, Any] | None:
        status, data, sent, answered = self.call(path, body)
        if status // 100 != 2:
            self.errors[f"{action} {status}"] += 1
            return None
        self.writes.append(Write(slot, data["hold_id"], self.token, data["status"], sent, answered))
        return data  # type: ignore[no-any-return]

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                slot = self.rng.choice(self.slots)
                hold = self.step(slot, "/holds", "hold", {"slot_id": slot})
                if hold is None or time.monotonic() >= self.deadline:
                    continue
                hold_id = hold["hold_id"]
                if self.rng.random() < 0.5:
                    if self.step(slot, f"/holds/{hold_id}/confirm", "confirm") and time.monotonic() < self.deadline:
                        self.step(slot, f"/holds/{hold_id}/cancel", "cancel")
                else:
                    self.step(slot, f"/holds/{hold_id}/release", "release")
        except (OSError, http.client.HTTPException) as exc:
            self.errors[f"connection: {type(exc).__name__}"] += 1
        finally:
            self.conn.close()


def positions(api: Api, writes: list[Write]) -> int:
    """Give each write its change-log position (the stream's event id) from its hold's history."""
    tokens = {w.hold_id: w.token for w in writes}

    def history(hold_id: str) -> tuple[str, dict[str, int]]:
        items = api.call("GET", f"/holds/{hold_id}/history", None, tokens[hold_id])["items"]
        return hold_id, {item["status"]: item["position"] for item in items}

    with ThreadPoolExecutor(8) as executor:
        found = dict(executor.map(history, tokens))
    missing = 0
    for w in writes:
        w.position = found[w.hold_id].get(w.status)
        missing += w.position is None
    return missing
