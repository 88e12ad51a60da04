"""Live board fan-out: 100 and 1,000 subscribers of `GET /slots/stream` on one room while hold churn runs on it.

    .venv/bin/python -m bench.fanout            # in-memory SQLite, SQLite file, PostgreSQL x 100 and 1,000 subscribers
    .venv/bin/python -m bench.fanout --quick    # 100 subscribers, in-memory SQLite, 3 s of churn

Per backend and subscriber count: delivery latency (a write's 2xx arriving at its client to the
event carrying it arriving at a subscriber) p50/p99, events/s received, server RSS per idle
subscriber, and whether every subscriber's final board equals `GET /slots` for the same caller.

This module is the command line: options, the run's metadata, JSON and exit status. The run and
its topology are in bench.fanout_suite, the writers in bench.fanout_writers, the subscribers in
bench.subscribers, the record with delivery matching and the board check in bench.fanout_record,
the targets and the table in bench.fanout_report.
"""

import argparse
import json
import os
import platform
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import log
from bench.fanout_report import DELIVERY_P99_MS, render, targets
from bench.fanout_suite import HOLD_TTL_SECONDS, Fanout, Options
from bench.record import FILE, MEMORY, POSTGRES, RESULTS
from bench.run import git_commit
from bench.server import stop_all
from bench.subscribers import raise_fd_limit
from serving import uvicorn_command


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 subscribers, in-memory SQLite, 3 s of churn")
    parser.add_argument("--backends", help=f"comma list of {MEMORY},{FILE},{POSTGRES}")
    parser.add_argument("--subscribers", help="comma list of subscriber counts (default 100,1000)")
    parser.add_argument("--seconds", type=float, help="seconds of hold churn (default 10; --quick 3)")
    parser.add_argument("--rate", type=float, default=10.0, help="hold transitions per second, all writers together")
    parser.add_argument("--writers", type=int, default=4, help="writer clients (threads), each on its own slots")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds between the last write and the board check")
    parser.add_argument("--users", type=int, default=50, help="users created; subscribers with a token cycle over them")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/fanout.json or fanout-quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs in bench/results/logs/")
    a = parser.parse_args(argv)

    def names(value: str | None, default: str) -> list[str]:
        return [n.strip() for n in (value if value is not None else default).split(",") if n.strip()]

    options = Options(
        quick=a.quick,
        backends=names(a.backends, MEMORY if a.quick else f"{MEMORY},{FILE},{POSTGRES}"),
        subscribers=[int(n) for n in names(a.subscribers, "100" if a.quick else "100,1000")],
        seconds=a.seconds if a.seconds is not None else (3.0 if a.quick else 10.0),
        rate=a.rate,
        writers=a.writers,
        settle=a.settle,
        users=a.users,
        pg_url=a.pg_url.rstrip("/"),
        out=a.out or RESULTS / ("fanout-quick.json" if a.quick else "fanout.json"),
        keep_logs=a.keep_logs,
    )
    for name in options.backends:
        if name not in DELIVERY_P99_MS:
            parser.error(f"unknown backend {name!r}")
    if options.writers < 1 or options.rate <= 0 or min(options.subscribers, default=0) < 1:
        parser.error("--writers, --rate and --subscribers must be positive")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    bench = Fanout(options)
    started = time.monotonic()
    try:
        bench.run()
    except BaseException:
        stop_all()
        raise
    finally:
        bench.dbs.cleanup()
    result = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.fanout " + " ".join(sys.argv[1:] if argv is None else argv),
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "project_commit": git_commit(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "server": " ".join(uvicorn_command("main:app", 0, 1)).replace("--port 0", "--port <free>"),
            "settings": {"HOLD_TTL_SECONDS": HOLD_TTL_SECONDS, "SEED_DEMO_DATA": "false"},
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        },
        "rows": [asdict(r) for r in bench.rows],
        "targets": targets(bench.rows),
        "notes": bench.notes,
        "failures": bench.failures,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    log(f"wrote {options.out}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
