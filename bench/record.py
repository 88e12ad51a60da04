"""What a benchmark run measured, as typed records, and their JSON form (bench/results/*.json).

Field names and their order are the JSON keys: `latest.json` reads as it always has. A field
marked `OMIT_NONE` is left out of the JSON rather than written as null, as the
history-only figures always were.
"""

import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY, FILE, POSTGRES = "memory", "sqlite-file", "postgresql"
CHURN, HOT, LISTING = "hold churn", "hot slot", "listing"


OMIT_NONE = {"omit_none": True}  # field metadata: no JSON key at all while the value is None


@dataclass
class Latency:
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass
class Figures:
    """One wrk run, as bench/lua/common.lua counted it (bench.loadgen)."""

    requests: int
    seconds: float
    rps: float
    latency_ms: Latency
    ok_2xx: int
    conflict_409: int
    server_5xx: int
    other_non_2xx: int
    socket_errors: int
    wrk_errors: dict[str, int]
    counts: dict[str, int]
    gauges: dict[str, Any]
    responses_per_second: list[int]
    silent_seconds: int
    clients_answered: float
    stalled: bool
    samples: list[str]
    stuck_clients: int


@dataclass
class Rss:
    """The server tree's resident memory while wrk ran (sum of VmRSS over its processes)."""

    start_mb: float
    end_mb: float
    peak_mb: float
    hwm_sum_mb: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class LoadAverage:
    before: float
    after: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass
class Ratio:
    rps: float | None
    p99: float | None


@dataclass
class ServerLog:
    tracebacks: int
    database_is_locked: int
    excerpt: str | None


@dataclass
class CeilingRow(Figures):
    """The bare FastAPI app (bench/ceiling_app.py) under the same server command and load."""

    workers: int
    endpoint: str
    connections: int
    rss: Rss
    server_cpu_ms_per_request: float | None
    load_average_1m: LoadAverage


@dataclass
class ScenarioRow(Figures):
    """One scenario on one backend, with its ratios to the ceiling and its invariant check."""

    server_cpu_ms_per_request: float | None
    server_cpu_share: float
    load_average_1m: LoadAverage
    health_answered_after_s: float | None
    backend: str
    workers: int
    history_rows: int
    scenario: str
    connections: int
    rss: Rss
    server_log: ServerLog
    invariant: dict[str, Any]  # bench.checks.verdict, plus the method ("sql" or "api")
    ratio_to_ceiling: Ratio
    history_seed: dict[str, Any] | None = field(default=None, metadata=OMIT_NONE)  # bench.seed.insert_history
    ratio_to_empty: dict[str, float | None] | None = field(default=None, metadata=OMIT_NONE)

    def problems(self, recover_seconds: int) -> list[str]:
        """Why this run fails the benchmark: a failed invariant, a stall, 5xx answers or tracebacks."""
        where = f"{self.backend} {self.scenario} history={self.history_rows}"
        out = []
        if self.invariant["result"] != "PASS":
            out.append(f"invariant {self.invariant['result']}: {where}: {self.invariant}")
        if self.stalled:
            recovered = self.health_answered_after_s
            out.append(
                f"stall: {where}: {self.requests} responses to {self.connections} clients in "
                f"{self.seconds}s, {self.silent_seconds} whole second(s) without any response, about "
                f"{self.stuck_clients} of {self.connections} clients waiting on an unanswered request (req/s x mean "
                f"latency = {self.clients_answered}); /health answered again after "
                f"{recovered if recovered is not None else f'more than {recover_seconds}'}s"
            )
        if self.server_5xx or self.server_log.tracebacks:
            out.append(
                f"5xx: {where}: {self.server_5xx} responses, "
                f"{self.server_log.tracebacks} tracebacks; samples {self.samples[:2]}"
            )
        return out


@dataclass
class SoakChunk:
    requests_so_far: int
    rps: float
    rss_mb: float
    server_5xx: int


@dataclass
class Soak:
    """Hold churn in 15 s chunks on one server: does its memory stay flat?"""

    backend: str
    workers: int
    requests: int
    seconds: float
    chunks: list[SoakChunk]
    rss_after_first_chunk_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    growth_pct: float | None
    server_5xx: int
    invariant: dict[str, Any]


@dataclass
class Target:
    target: str
    result: str  # MET, MISSED or n/a
    figures: str


@dataclass
class Meta:
    when: str
    command: str
    elapsed_seconds: float
    project_commit: str
    machine: dict[str, Any]
    load_generator: str
    server: str
    settings: dict[str, str]
    options: dict[str, Any]


@dataclass
class Result:
    """A whole run: what bench.run prints and writes."""

    meta: Meta
    ceiling: list[CeilingRow]
    scenarios: list[ScenarioRow]
    soak: Soak | None
    targets: list[Target]
    notes: list[str]
    failures: list[str]

    def to_json(self) -> str:
        return json.dumps(_jsonable(self), indent=2, default=str) + "\n"


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in fields(value)
            if not (f.metadata.get("omit_none") and getattr(value, f.name) is None)
        }
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return str(value) if isinstance(value, Path) else value
