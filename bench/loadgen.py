"""Drive a server with wrk (C, event-driven) and a Lua script; return its figures.

One wrk thread: on this 2-core machine the server needs the other core more than wrk does, and
one thread already saturates the bare FastAPI ceiling (measured in the same run).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.record import Figures, Latency

LUA_DIR = Path(__file__).resolve().parent / "lua"
TIMEOUT_S = 10  # a request slower than this counts as a wrk timeout error


class LoadGenError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


def wrk_version() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadGenError("wrk is not installed: apt-get install -y wrk (Debian package 'wrk')")
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stdout + out.stderr).splitlines()[0].strip()


def run_wrk(
    url: str, script: str, pool_file: Path, *, seconds: int, connections: int, threads: int = 1, **env: str
) -> Figures:
    """Run wrk for `seconds` against `url` (127.0.0.1 only); return the script's BENCH_RESULT."""
    if not url.startswith("http://127.0.0.1:"):
        raise LoadGenError(f"refusing to load anything but 127.0.0.1: {url}")
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={TIMEOUT_S}s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    environment = {**os.environ, "BENCH_LUA_DIR": str(LUA_DIR), "BENCH_POOL": str(pool_file), **env}
    try:
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadGenError(f"wrk did not finish within {seconds + 60}s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            fig = _figures(json.loads(line.removeprefix("BENCH_RESULT ")))
            stuck = max(0, round(connections - fig["clients_answered"]))
            stalled = fig.pop("stalled") or fig["clients_answered"] < 0.75 * connections
            return Figures(**fig, stalled=stalled, stuck_clients=stuck)
    raise LoadGenError(f"wrk printed no result (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")


def _per_second(raw: dict[str, Any], seconds: float) -> list[int]:
    """Responses in each whole second of the run (the partial first and last seconds left out)."""
    timeline = {int(k): int(v) for k, v in (raw.get("timeline") or {}).items()}
    start = int(raw.get("started") or (min(timeline) if timeline else 0))
    return [timeline.get(start + i, 0) for i in range(1, int(seconds))]


def _figures(raw: dict[str, Any]) -> dict[str, Any]:
    """Requests/s, latency percentiles in ms, and the response classes of one wrk run."""
    counts: dict[str, int] = {k: int(v) for k, v in (raw.get("counts") or {}).items()}
    pct = raw["latency_us"]["percentiles"]
    seconds = raw["duration_us"] / 1e6
    errors = {k: int(v) for k, v in raw["errors"].items()}
    server_5xx = counts.get("server_5xx", 0)
    expected_409 = counts.get("hold_409", 0)
    ok = sum(v for k, v in counts.items() if k in ("hold_201", "confirm_200", "release_200", "cancel_200", "ok_200"))
    other = raw["requests"] - ok - server_5xx - expected_409
    per_second = _per_second(raw, seconds)
    # Little's law: a closed-loop client always has one request out, so answered req/s x mean
    # latency should be about the number of connections. Much less means clients sat on
    # requests that were never answered during the run, which no latency percentile shows.
    busy = raw["requests"] / seconds * raw["latency_us"]["mean"] / 1e6 if seconds else 0.0
    return {
        "requests": int(raw["requests"]),
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "latency_ms": Latency(
            p50=pct["50"] / 1000,
            p95=pct["95"] / 1000,
            p99=pct["99"] / 1000,
            max=raw["latency_us"]["max"] / 1000,
            mean=round(raw["latency_us"]["mean"] / 1000, 3),
        ),
        "ok_2xx": ok,
        "conflict_409": expected_409,
        "server_5xx": server_5xx,
        "other_non_2xx": other,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "wrk_errors": errors,
        "counts": counts,
        "gauges": raw.get("gauges") or {},
        "responses_per_second": per_second,
        "silent_seconds": sum(1 for n in per_second if n == 0),
        "clients_answered": round(busy, 1),
        "stalled": raw["requests"] == 0 or sum(1 for n in per_second if n == 0) > 0,
        "samples": list(raw.get("samples") or []),
    }
