"""Profile one benchmark scenario with py-spy and say which layer the server's CPU goes to.

    .venv/bin/pip install py-spy        # a profiler: not in any requirements file
    .venv/bin/python -m bench.profile --backend sqlite-file --history 1000000 --scenario listing

Sets the scenario up exactly as `bench.run` does (same server command, same seeding, same wrk
script), records every worker process with py-spy while wrk runs, then prints the share of CPU
samples per layer (attributed from the innermost frame outwards) and the hottest functions.
The raw collapsed stacks are kept in --out (open them with speedscope or flamegraph.pl).
"""

import argparse
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import event
from sqlalchemy.orm import Session

from bench import flamegraph, loadgen
from bench.record import CHURN, FILE, HOT, LISTING, MEMORY, POSTGRES, RESULTS
from bench.run import git_commit, parse_args
from bench.seed import Api, engine_for, insert_history, settle_claims
from bench.server import ROOT, Server
from bench.suite import WORKERS, Bench

# py-spy's raw frames read "function (path/relative/to/sys.path.py:line)". A sample's layer is the
# first one its stack matches, from the innermost frame outwards.
# rawsql's execute / execute_many: their own frame is the driver call (py-spy shows no C frames).
DRIVER_CALL = ("do_execute (", "_execute_send (", "execute (rawsql.py:", "execute_many (rawsql.py:")
APP_FILES = (*(f"({p.name}:" for p in ROOT.glob("*.py")), "(routers/")
WAITING = flamegraph.WAITING
LAYERS = (
    ("database: driver call (SQLite runs in-process; PostgreSQL round trip)", DRIVER_CALL),
    ("SQLAlchemy: statement cache, compile, ORM rows and objects, pool", ("(sqlalchemy/",)),
    ("pydantic: validation and JSON serialisation", ("(pydantic/", "(pydantic_core/")),
    ("FastAPI / Starlette: routing, dependencies, encoders", ("(fastapi/", "(starlette/")),
    ("the service's own code", APP_FILES),
    ("thread-pool hand-offs and the asyncio event loop (Python code)", ("(anyio/", "(threading.py", "(asyncio/")),
    ("uvicorn (Python part)", ("(uvicorn/",)),
)
PHASES = (
    (
        "building SQL statements in Python (select(), where(), and_() ...)",
        ("(sqlalchemy/sql/coercions.py", "_generative (", "_slot_query (", "live_claim (", "Select.where ("),
    ),
    ("statement cache keys", ("_generate_cache_key (", "_gen_cache_key (")),
    ("SQL compilation (cache misses)", ("(sqlalchemy/sql/compiler.py",)),
    ("turning rows into ORM objects", ("(sqlalchemy/orm/loading.py", "InstanceState.__init__")),
    (
        "column type conversion (UUID, UTCDateTime)",
        ("result_processor", "process_result_value", "bind_processor", "process_bind_param", "(models.py:"),
    ),
    ("the driver call itself", DRIVER_CALL),
    ("response model validation and JSON", ("serialize_response (", "dump_json (", "jsonable_encoder (")),
    ("authentication (token lookup)", ("_token_user_id (", "TokenCache.user_id (")),
)
EVENT_LOOP = "event loop waiting in epoll, or C code under it (httptools parsing, socket I/O)"


def workers(server: Server) -> list[int]:
    """The processes that serve requests: the workers of a multi-worker server, else the server."""
    pids = []
    for pid in server.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        if "spawn_main" in cmdline:
            pids.append(pid)
    return pids or [server.process.pid]  # type: ignore[union-attr]


def layer_of(stack: list[str]) -> str:
    leaf = stack[-1] if stack else ""
    if any(leaf.startswith(w) for w in WAITING):
        return "idle: a thread waiting for work, a lock or a connection"
    if leaf.startswith("Runner.run ("):
        return EVENT_LOOP
    for frame in reversed(stack):
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarise(raw_files: list[Path], top: int = 15) -> str:
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not stack_text or not count_text.isdigit():
                continue
            count = int(count_text)
            stack = stack_text.split(";")
            total += count
            layer = layer_of(stack)
            layers[layer] += count
            if layer.startswith("idle"):
                continue
            leaves[stack[-1]] += count
            functions = {frame.rsplit(":", 1)[0] + ")" for frame in stack if any(n in frame for n in APP_FILES)}
            for function in functions:
                inclusive[function] += count
            for phase, needles in PHASES:
                if any(any(n in frame for n in needles) for frame in stack):
                    phases[phase] += count
    busy = total - sum(n for name, n in layers.items() if name.startswith("idle"))
    if not busy:
        return "no samples"
    lines = [f"{total} samples, {busy} of them busy; shares below are of the busy ones", "", "by layer:"]
    lines += [f"  {100 * n / busy:5.1f}%  {name}" for name, n in layers.most_common() if not name.startswith("idle")]
    lines += ["", f"hottest functions (self time, top {top}):"]
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in leaves.most_common(top)]
    lines += ["", "where the time goes inside SQLAlchemy and around it (inclusive; phases overlap):"]
    lines += [f"  {100 * n / busy:5.1f}%  {phase}" for phase, n in phases.most_common()]
    lines += ["", f"the service's functions (inclusive time, top {top}):"]
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def explain_listing(url: str, pool: Any) -> str:
    """The plan the database picks for the listing's SQL, captured from the service's own code."""
    import booking  # the service's module: its real query, whatever shape it has today

    engine = engine_for(url)
    captured: list[tuple[str, Any]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    day_from, day_to = (parse_qs(urlsplit(pool.listing_path).query)[k][0] for k in ("from", "to"))
    with Session(engine, expire_on_commit=False) as session:
        booking.list_slots(
            session,
            viewer_id=uuid.UUID(pool.users[0][0]),
            room_id=uuid.UUID(pool.listing_room),
            start_from=datetime.fromisoformat(day_from),
            start_to=datetime.fromisoformat(day_to),
            status=None,
        )
    statement, parameters = max(captured, key=lambda c: len(c[0]))  # the listing, not the room lookup
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    started = time.monotonic()
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(prefix + statement, parameters).all()
        conn.exec_driver_sql(statement, parameters).all()
    seconds = time.monotonic() - started
    engine.dispose()
    text = "\n".join("  " + " | ".join(str(v) for v in row) for row in plan)
    return f"listing SQL:\n{statement}\nplan:\n{text}\n(plan + one execution: {seconds * 1000:.0f} ms)"


def dump_threads(spy: str, pids: list[int]) -> str:
    """Where every thread of the workers is right now: innermost frame, and innermost service frame."""
    places: Counter[str] = Counter()
    for pid in pids:
        out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
        for block in out.split("\nThread ")[1:]:
            frames = [line.strip() for line in block.splitlines()[1:] if line.startswith("    ")]
            if not frames:
                continue
            app = next((f for f in frames if any(n in f for n in APP_FILES)), "-")
            places[f"{frames[0]}  <-  {app}"] += 1
    lines = ["threads by place (innermost frame <- innermost service frame), all workers:"]
    lines += [f"  {n:3d}  {place}" for place, n in places.most_common(15)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=MEMORY, choices=[MEMORY, FILE, POSTGRES])
    parser.add_argument("--history", type=int, default=0, help="historical holds to insert first (not in memory)")
    parser.add_argument("--scenario", default=LISTING, choices=[CHURN, LISTING, HOT])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=RESULTS / "profiles")
    parser.add_argument(
        "--gil", action="store_true", help="sample only threads holding the GIL: Python CPU, no sleeping or SQLite"
    )
    parser.add_argument("--dump", action="store_true", help="also show where every thread is, mid-run")
    parser.add_argument("--explain", action="store_true", help="also print the database's plan for the listing")
    a = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        parser.error("py-spy is not installed: .venv/bin/pip install py-spy")
    if a.history and a.backend == MEMORY:
        parser.error("in-memory SQLite cannot be pre-filled with history")
    a.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(parse_args(["--quick", "--users", "200", "--slots-per-room", "100"]))
    url = bench.dbs.new(a.backend)
    server = bench.service(a.backend, url)
    try:
        api, pool = bench.seed(server)
        if a.history:
            server.stop()
            insert_history(url, pool, a.history)
            server = bench.service(a.backend, url)
            api = Api(server.url, bench.admin_token)
        files = bench.pool_files(pool, "profile")
        script = "get.lua" if a.scenario == LISTING else "holds.lua"
        connections = 64 if a.scenario == HOT else a.connections
        loadgen.run_wrk(server.url, script, files[a.scenario], seconds=2, connections=connections)  # warm-up
        if a.scenario != LISTING:
            # As bench.run does: the warm-up left holds on its slots for the whole TTL, and the
            # hot slot would otherwise measure nothing but refusals.
            settle_claims(api, pool, pool.hot_slots if a.scenario == HOT else pool.churn_slots)
        tag = f"{a.backend}-{a.history}-{a.scenario.replace(' ', '-')}" + ("-gil" if a.gil else "")
        raw_files = [a.out / f"{tag}-{pid}.txt" for pid in workers(server)]
        record = [spy, "record", "--duration", str(a.seconds), "--rate", str(a.rate), "--format", "raw"]
        record += ["--gil"] if a.gil else []
        # py-spy can attach to a process only once at a time: either sample all along, or dump mid-run.
        spies = [
            subprocess.Popen(
                [*record, "--pid", str(pid), "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, path in zip(workers(server), raw_files, strict=True)
            if not a.dump
        ]
        time.sleep(0.5)
        dump: list[str] = []
        timer = threading.Timer(a.seconds / 2, lambda: dump.append(dump_threads(spy, workers(server))))
        if a.dump:
            timer.start()
        fig = loadgen.run_wrk(server.url, script, files[a.scenario], seconds=a.seconds, connections=connections)
        if a.dump:
            timer.join()
        for spy_process in spies:
            spy_process.wait(timeout=a.seconds + 60)
        print(f"project commit {git_commit()}")
        print(
            f"{a.scenario} on {a.backend} ({WORKERS[a.backend]} worker(s)), {a.history:,} historical holds, "
            f"{connections} connections: {fig.rps} req/s, p50 {fig.latency_ms.p50} ms, "
            f"p99 {fig.latency_ms.p99} ms, about {fig.stuck_clients} clients never answered"
            + ("" if a.dump else " (under py-spy, so slower than in bench.run)")
        )
        if not a.dump:
            print(summarise([p for p in raw_files if p.exists()]))
        print("\n".join(dump))
        if not a.dump:
            print(f"raw stacks: {', '.join(str(p) for p in raw_files)}")
            svg = a.out / f"{tag}.svg"
            title = f"{a.scenario}, {a.backend}, {fig.rps} req/s under py-spy, commit {git_commit()}"
            flamegraph.main([str(svg), *(str(p) for p in raw_files if p.exists()), "--title", title])
            print(f"flame graph: {svg}")
        if a.explain and a.backend != MEMORY:
            print(explain_listing(url, pool))
    finally:
        server.stop()
        bench.dbs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
