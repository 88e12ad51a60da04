"""The fan-out's typed result record, and how its deliveries and boards are checked.

How delivery is matched. The writer records, for each 2xx, the hold id, the status it produced
and when the answer arrived. After the run `GET /holds/{id}/history` gives each of those
transitions its change-log position, which is the stream's event id. A write reaches a
subscriber with the first event on its slot whose id is at or past the write's position: its
own event, or a later one that superseded it (the hub sends the newest change per slot in a
batch). Latency can be negative when the event beats the write's response; nothing is clamped.

Field names and their order are the JSON keys of `bench/results/fanout.json`.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.fanout_writers import Write
from bench.subscribers import Parsed


@dataclass
class Delivery:
    p50: float | None
    p99: float | None
    min: float | None
    max: float | None
    samples: int
    superseded_share: float | None  # reached the subscriber by a later event on its slot, not its own


@dataclass
class Memory:
    before_mb: float
    idle_mb: float
    per_idle_subscriber_kb: float | None
    peak_during_churn_mb: float


@dataclass
class FanoutRow:
    backend: str
    topology: str
    subscribers: int
    connected: int
    with_token: int
    churn_seconds: float
    write_rate_target: float
    writes_2xx: int
    writes_per_s: float
    write_errors: dict[str, int]
    write_latency_ms: dict[str, float | None]
    events_received: int
    events_per_s: float
    delivery_ms: Delivery
    missing_deliveries: int
    memory: Memory
    board_server_cpu_share: float
    board_server_cpu_us_per_event: float | None  # the streams server's CPU time per event received by a subscriber
    boards_checked: int
    boards_mismatched: int
    mismatch_samples: list[str]
    streams_lost_early: int
    stream_errors: list[str]
    out_of_order_events: int
    connect_seconds: float
    load_average_1m_before: float
    notes: list[str] = field(default_factory=list)


def deliveries(parsed: list[Parsed], writes: list[Write]) -> tuple[list[float], int, int]:
    """Latency of every (write, subscriber) pair in ms, how many writes never reached a subscriber, and
    how many arrived by a later event than their own."""
    by_slot: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.position is not None:
            by_slot[w.slot_id].append(w)
    for ws in by_slot.values():
        ws.sort(key=lambda w: w.position or 0)
    latencies: list[float] = []
    missing = superseded = 0
    for p in parsed:
        events: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for arrived, event_id, slot_id in p.events:
            events[slot_id].append((arrived, event_id))
        for slot_id, ws in by_slot.items():
            got = events.get(slot_id, [])
            k = 0
            for w in ws:
                while k < len(got) and got[k][1] < (w.position or 0):
                    k += 1
                if k == len(got):
                    missing += 1
                    continue
                latencies.append((got[k][0] - w.answered) * 1000)
                superseded += got[k][1] != w.position
    latencies.sort()
    return latencies, missing, superseded


def difference(p: Parsed, expected: dict[str, Any]) -> str:
    """One line on how a subscriber's board differs from `GET /slots` for the same caller."""
    board = p.board or {}
    if p.board is None:
        return f"subscriber {p.caller}: no board (status {p.status}, {p.error})"
    diff = [k for k in set(board) | set(expected) if board.get(k) != expected.get(k)]
    k = diff[0]
    return (
        f"subscriber {p.caller}: {len(diff)} slot(s) differ, e.g. {k}: stream {board.get(k)} vs GET {expected.get(k)}"
    )


def problems(row: FanoutRow) -> list[str]:
    """What makes the run fail (never speed): boards that differ, lost streams, undelivered writes."""
    where = f"{row.backend} x {row.subscribers}"
    out = []
    if row.connected < row.subscribers:
        out.append(f"{where}: only {row.connected} of {row.subscribers} streams opened: {row.stream_errors}")
    if row.boards_mismatched:
        out.append(f"{where}: {row.boards_mismatched} boards differ from GET /slots: {row.mismatch_samples}")
    if row.streams_lost_early:
        out.append(f"{where}: {row.streams_lost_early} streams closed by the server during the run")
    if row.missing_deliveries:
        out.append(f"{where}: {row.missing_deliveries} (write, subscriber) pairs never delivered")
    if not row.writes_2xx:
        out.append(f"{where}: no write succeeded: {row.write_errors}")
    return out
