"""The benchmark of issue 4, from the command line: what users feel, as ratios to the framework ceiling.

    .venv/bin/python -m bench.run            # full run (~12-15 min on 2 cores)
    .venv/bin/python -m bench.run --quick    # < 1 min: ceiling, in-memory SQLite, 10k history on a file

Starts `uvicorn main:app --no-access-log --loop serving:OneAcceptLoop --http serving:HttpProtocol` on 127.0.0.1
(one worker for in-memory SQLite, two for the SQLite file and PostgreSQL backends), seeds it
over HTTP, drives it with wrk + Lua (bench/lua/), checks the no-double-booking invariant after
every scenario, prints a table and writes JSON (bench/results/). Needs the Debian package `wrk`;
PostgreSQL is optional (skipped with a note when it does not answer at --pg-url).
"""

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen, log
from bench.record import FILE, MEMORY, POSTGRES, RESULTS, Meta, Result
from bench.report import render, targets
from bench.scenarios import Options
from bench.server import ROOT, stop_all
from bench.suite import HOLD_TTL_SECONDS, WORKERS, Bench
from serving import uvicorn_command


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s scenarios, in-memory SQLite, 10k history on a file")
    parser.add_argument("--backends", help=f"comma list of {MEMORY},{FILE},{POSTGRES} (scenarios 1-3)")
    parser.add_argument("--history-backends", help=f"comma list of {FILE},{POSTGRES} for history growth")
    parser.add_argument("--history", help="comma list of historical hold counts, e.g. 10000,100000,1000000")
    parser.add_argument("--seconds", type=int, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=int, help="warm-up seconds before each measurement")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for hold churn and listing")
    parser.add_argument("--hot-connections", type=int, default=64, help="wrk connections for the hot slot")
    parser.add_argument("--users", type=int, help="users created over HTTP")
    parser.add_argument("--slots-per-room", type=int, help="30-minute slots in each of the 5 churn rooms")
    parser.add_argument("--soak-requests", type=int, help="hold churn until this many requests (memory target)")
    parser.add_argument("--soak-max-seconds", type=int, help="... or until this many seconds")
    parser.add_argument("--soak-backend", default=POSTGRES, help="backend of the soak (falls back to sqlite-file)")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--recover-seconds", type=int, help="how long to wait for a stalled server to answer again")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/latest.json or quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs in bench/results/logs/")
    a = parser.parse_args(argv)
    quick = a.quick

    def pick(value: Any, quick_value: Any, full_value: Any) -> Any:
        return value if value is not None else (quick_value if quick else full_value)

    def names(value: str | None, default: str) -> list[str]:
        return [n.strip() for n in (value if value is not None else default).split(",") if n.strip()]

    options = Options(
        quick=quick,
        backends=names(a.backends, MEMORY if quick else f"{MEMORY},{FILE},{POSTGRES}"),
        history_backends=names(a.history_backends, FILE if quick else f"{FILE},{POSTGRES}"),
        history=[int(n) for n in names(a.history, "10000" if quick else "10000,100000,1000000")],
        seconds=pick(a.seconds, 3, 10),
        warmup=pick(a.warmup, 0, 2),
        connections=a.connections,
        hot_connections=a.hot_connections,
        users=pick(a.users, 50, 200),
        churn_rooms=5,
        slots_per_room=pick(a.slots_per_room, 20, 100),
        soak_requests=pick(a.soak_requests, 0, 1_000_000),
        soak_max_seconds=pick(a.soak_max_seconds, 0, 120),
        soak_backend=a.soak_backend,
        pg_url=a.pg_url.rstrip("/"),
        recover_seconds=pick(a.recover_seconds, 5, 60),
        out=a.out or RESULTS / ("quick.json" if quick else "latest.json"),
        keep_logs=a.keep_logs,
    )
    for name in options.backends + options.history_backends:
        if name not in WORKERS:
            parser.error(f"unknown backend {name!r}")
    if MEMORY in options.history_backends:
        parser.error("in-memory SQLite cannot be pre-filled from outside the server process; no history there")
    return options


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", ":!bench", ":!tests/test_bench.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


def meta(o: Options, elapsed: float) -> Meta:
    """When, where and how this run was made: the header of the report and of the JSON."""
    return Meta(
        when=datetime.now(UTC).isoformat(timespec="seconds"),
        command="python -m bench.run " + " ".join(sys.argv[1:]),
        elapsed_seconds=round(elapsed, 1),
        project_commit=git_commit(),
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        load_generator=loadgen.wrk_version() + " (1 thread, Lua scripts in bench/lua/)",
        server=" ".join(uvicorn_command("<app>", 0, 2)).replace("--port 0", "--port <free>"),
        settings={"HOLD_TTL_SECONDS": HOLD_TTL_SECONDS, "SEED_DEMO_DATA": "false"},
        options=dict(vars(o)),
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers and scratch databases are cleaned up either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loadgen.wrk_version()  # fail early, with the install hint, when wrk is missing
    bench = Bench(options)
    started = time.monotonic()
    try:
        bench.run()
        result = Result(
            meta=meta(options, time.monotonic() - started),
            ceiling=bench.ceiling_rows,
            scenarios=bench.rows,
            soak=bench.soak,
            targets=targets(bench.rows, bench.soak),
            notes=bench.notes,
            failures=bench.failures,
        )
    except (KeyboardInterrupt, SystemExit):
        log("interrupted: servers stopped, scratch databases dropped")
        return 130
    except Exception:
        traceback.print_exc()
        log(f"failed: servers stopped, scratch databases dropped; server logs in {bench.logs}")
        return 2
    finally:
        stop_all()
        bench.dbs.cleanup()
    if not options.keep_logs and not result.failures:
        shutil.rmtree(bench.logs, ignore_errors=True)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(result.to_json())
    print(render(result))
    print(f"JSON: {options.out}")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
