"""Why the service is served with `--loop serving:OneAcceptLoop --http serving:HttpProtocol` (see serving.py).

    .venv/bin/python -m bench.serving_check     # ~1 minute; wrk from Debian's packages
    .venv/bin/pip install uvloop==0.23.0         # optional: adds the uvloop rows for comparison

Serves bench/ceiling_app.py under several uvicorn loop/protocol/worker settings and drives it
with plain wrk (one thread, 10 s each, 127.0.0.1 only):
- `/busy` (3 ms of work on the event loop, as the service's SQLite work) with 64 clients: is every
  connection served in turn, or do some starve (p99, requests over wrk's 2 s timeout)?
- `/ping` with 2 workers and 16 clients: does each response leave at once, or wait ~40 ms for a
  delayed ACK (TCP_NODELAY unset on the shared socket's connections)? And do both workers serve,
  or does the first one awake take all 16 connections (asyncio's loop against OneAcceptLoop)?
"""

import importlib.util
import re
import subprocess
import tempfile
from pathlib import Path

from bench.server import Server, stop_all
from serving import UVICORN_FLAGS

CASES = (
    # (path, clients, workers, uvicorn flags)
    ("/busy", 64, 1, ("--loop", "uvloop")),
    ("/busy", 64, 1, ("--loop", "asyncio")),
    ("/ping", 16, 2, ("--loop", "uvloop")),
    ("/ping", 16, 2, ("--loop", "asyncio")),
    ("/ping", 16, 2, ("--loop", "asyncio", "--http", "serving:HttpProtocol")),
    ("/ping", 16, 2, UVICORN_FLAGS),
)


def _ms(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", text)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_case(path: str, clients: int, workers: int, flags: tuple[str, ...], logs: Path) -> str:
    # `--http auto` first: a case that names no protocol gets uvicorn's default, not serving's.
    server = Server("bench.ceiling_app:app", {}, workers, logs / "uvicorn.log", flags=("--http", "auto", *flags))
    server.start("/ping")
    try:
        url = f"{server.url}{path}"
        subprocess.run(["wrk", "-t1", f"-c{clients}", "-d2s", url], capture_output=True, check=True)  # warm-up
        out = subprocess.run(
            ["wrk", "-t1", f"-c{clients}", "-d10s", "--latency", url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        server.stop()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return (
        f"{path:6} {clients:>4} {workers:>3}  {' '.join(flags):42} {float(rps.group(1)) if rps else 0:>8.0f}"
        f" {_ms(out, '50%'):>8.1f} {_ms(out, '99%'):>8.1f} {int(timeouts.group(1)) if timeouts else 0:>8}"
    )


def main() -> None:
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    print(f"{'path':6} {'conn':>4} {'wk':>3}  {'uvicorn flags':42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'>2s':>8}")
    with tempfile.TemporaryDirectory(prefix="serving-check-") as logs:
        try:
            for path, clients, workers, flags in CASES:
                if "uvloop" in flags and not have_uvloop:
                    print(f"{path:6} {clients:>4} {workers:>3}  {' '.join(flags):42} skipped: uvloop not installed")
                    continue
                print(run_case(path, clients, workers, flags, Path(logs)), flush=True)
        finally:
            stop_all()


if __name__ == "__main__":
    main()
