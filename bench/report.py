"""The printed report, and each target of issue 4 judged MET / MISSED / n/a on the run's figures."""

from bench.record import CHURN, FILE, HOT, LISTING, MEMORY, POSTGRES, Result, ScenarioRow, Soak, Target

# The targets of issue 4.
CHURN_MIN_CEILING_RPS = 0.5  # hold churn on in-memory SQLite: req/s at least this share of the ceiling's
LISTING_MIN_CEILING_RPS = 0.4  # listing: req/s at least this share of the ceiling's ...
LISTING_MAX_CEILING_P99 = 4  # ... and p99 under this multiple of the ceiling's
HISTORY_MIN_EMPTY_RPS = 0.8  # with a year of history: throughput at least this share of the empty database's
HISTORY_TARGET_ROWS = 1_000_000  # ... judged at this many historical holds
HOT_MAX_P99_MS = 100  # hot slot: no 5xx, no "database is locked", p99 under this
SOAK_MAX_GROWTH_PCT = 10  # server RSS within this much of its size after the first chunk ...
SOAK_TARGET_REQUESTS = 1_000_000  # ... across this many requests


def targets(rows: list[ScenarioRow], soak: Soak | None) -> list[Target]:
    """Each target of issue 4, MET / MISSED / n/a, with the figures it was judged on."""
    out: list[Target] = []

    def add(name: str, met: bool | None, figures: str) -> None:
        out.append(Target(target=name, result="n/a" if met is None else ("MET" if met else "MISSED"), figures=figures))

    def find(backend: str, scenario: str, history: int = 0) -> ScenarioRow | None:
        return next((r for r in rows if (r.backend, r.scenario, r.history_rows) == (backend, scenario, history)), None)

    churn = find(MEMORY, CHURN)
    ratio = churn.ratio_to_ceiling.rps if churn else None
    add(
        f"hold churn on in-memory SQLite >= {CHURN_MIN_CEILING_RPS}x ceiling req/s",
        None if ratio is None else ratio >= CHURN_MIN_CEILING_RPS,
        f"{ratio}x" if ratio is not None else "not run",
    )
    for backend in (MEMORY, FILE, POSTGRES):
        r = find(backend, LISTING)
        if r:
            rr, pr = r.ratio_to_ceiling.rps, r.ratio_to_ceiling.p99
            add(
                f"listing on {backend}: >= {LISTING_MIN_CEILING_RPS}x ceiling req/s and "
                f"p99 < {LISTING_MAX_CEILING_P99}x ceiling p99",
                rr is not None and pr is not None and rr >= LISTING_MIN_CEILING_RPS and pr < LISTING_MAX_CEILING_P99,
                f"{rr}x req/s, p99 {pr}x",
            )
    for backend in (FILE, POSTGRES):
        levels = sorted({r.history_rows for r in rows if r.backend == backend and r.history_rows})
        if not levels:
            continue
        top = levels[-1]
        parts, met = [], True
        for scenario in (CHURN, LISTING):
            r = find(backend, scenario, top)
            ratio_e = (r.ratio_to_empty or {}).get("rps") if r else None
            parts.append(f"{scenario} {ratio_e}x of empty" if ratio_e is not None else f"{scenario}: no empty run")
            met = met and ratio_e is not None and ratio_e >= HISTORY_MIN_EMPTY_RPS
        has_base = all(find(backend, s) for s in (CHURN, LISTING))
        label = f"history {top:,} rows on {backend}: throughput >= {HISTORY_MIN_EMPTY_RPS}x empty"
        at_target = "" if top >= HISTORY_TARGET_ROWS else f" (target is at {HISTORY_TARGET_ROWS // 1_000_000}M rows)"
        add(label + at_target, met if has_base else None, "; ".join(parts))
    for backend in (MEMORY, FILE, POSTGRES):
        r = find(backend, HOT)
        if r:
            locked = r.server_log.database_is_locked + sum("database is locked" in s for s in r.samples)
            p99 = r.latency_ms.p99
            add(
                f"hot slot on {backend} ({r.connections} clients): 0 5xx, 0 'database is locked', "
                f"p99 < {HOT_MAX_P99_MS} ms",
                r.server_5xx == 0 and locked == 0 and p99 < HOT_MAX_P99_MS and not r.stalled,
                f"5xx {r.server_5xx}, locked {locked}, p99 {p99:.1f} ms"
                + (
                    f"; STALLED ({r.requests} responses in {r.seconds}s, ~{r.stuck_clients} of "
                    f"{r.connections} clients never answered)"
                    if r.stalled
                    else ""
                ),
            )
    soak_target = (
        f"server RSS flat (within {SOAK_MAX_GROWTH_PCT}%) across a {SOAK_TARGET_REQUESTS // 1_000_000}M-request run"
    )
    if soak:
        growth, short = soak.growth_pct, soak.requests < SOAK_TARGET_REQUESTS
        add(
            f"{soak_target} ({soak.backend})",
            None
            if short and growth is not None and growth <= SOAK_MAX_GROWTH_PCT
            else (growth or 0) <= SOAK_MAX_GROWTH_PCT,
            f"{soak.requests:,} requests: RSS {soak.rss_after_first_chunk_mb} -> peak {soak.rss_peak_mb} MB "
            f"({growth}%)" + (" — fewer than 1M requests, not conclusive" if short else ""),
        )
    else:
        add(soak_target, None, "no soak in this run (--soak-requests)")
    invariants = [r.invariant["result"] for r in rows] + ([soak.invariant["result"]] if soak else [])
    add(
        "invariant after every scenario (no slot with two live claims, counts add up)",
        bool(invariants) and all(v == "PASS" for v in invariants),
        f"{invariants.count('PASS')}/{len(invariants)} PASS",
    )
    return out


def render(result: Result) -> str:
    """The printed report: ceiling, scenarios with ratios and invariant, history, soak, targets."""
    lines: list[str] = []
    m = result.meta
    lines.append(
        f"Booking API benchmark — {m.when}, commit {m.project_commit}, {m.machine['cpus']} CPUs, {m.load_generator}"
    )
    lines.append(f"server: {m.server}")
    lines.append("")
    lines.append("Framework ceiling (bench/ceiling_app.py, same uvicorn flags, same wrk)")
    head = (
        f"{'workers':>7} {'endpoint':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'CPU ms':>6} {'RSS MB':>7} {'load':>5}"
    )
    lines += [head, "-" * len(head)]
    for c in result.ceiling:
        lat = c.latency_ms
        errors = c.server_5xx + c.other_non_2xx + c.socket_errors
        lines.append(
            f"{c.workers:>7} {c.endpoint:<10} {c.connections:>5} {c.rps:>8.0f} {lat.p50:>7.1f} "
            f"{lat.p95:>7.1f} {lat.p99:>7.1f} {errors:>6} {_num(c.server_cpu_ms_per_request, 2):>6} "
            f"{c.rss.peak_mb:>7.1f} {c.load_average_1m.before:>5.1f}"
        )
    lines.append("")
    lines.append("Service scenarios (ratios to the ceiling with the same workers and connections)")
    head = (
        f"{'backend':<11} {'wk':>2} {'history':>9} {'scenario':<10} {'conns':>5} {'req/s':>7} {'x ceil':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'p99 x':>6} {'2xx':>7} {'409':>6} {'5xx':>4} {'other':>5} "
        f"{'stuck':>5} {'CPU ms':>6} {'RSS MB':>7} {'x empty':>7} {'load':>5} {'invariant':<9}"
    )
    lines += [head, "-" * len(head)]
    for r in result.scenarios:
        lat, ratio = r.latency_ms, r.ratio_to_ceiling
        other = r.other_non_2xx + r.socket_errors
        empty = (r.ratio_to_empty or {}).get("rps")
        lines.append(
            f"{r.backend:<11} {r.workers:>2} {r.history_rows:>9,} {r.scenario:<10} {r.connections:>5} "
            f"{r.rps:>7.0f} {_num(ratio.rps, 2):>6} {lat.p50:>7.1f} {lat.p95:>7.1f} {lat.p99:>7.1f} "
            f"{_num(ratio.p99, 1):>6} {r.ok_2xx:>7} {r.conflict_409:>6} {r.server_5xx:>4} {other:>5} "
            f"{_stall(r):>5} {_num(r.server_cpu_ms_per_request, 1):>6} {r.rss.peak_mb:>7.1f} "
            f"{_num(empty, 2):>7} {r.load_average_1m.before:>5.1f} {r.invariant['result']:<9}"
        )
    lines.append(
        "  2xx: holds won, confirms, releases, cancels (churn/hot) or listings; 409: expected refusals; "
        "other: other 4xx + socket errors; RSS: peak of the uvicorn process tree (sum of VmRSS);"
    )
    lines.append(
        "  stuck: clients left waiting on a request never answered in the run (connections - req/s x mean latency;"
        " 'all': not one answer), or whole seconds without any answer ('3s'); percentiles cover answered requests"
    )
    lines.append(
        "  CPU ms: server CPU time (all processes) per answered request; load: 1-minute load average before the run"
        " (this machine has 2 CPUs; above ~3 other work was competing)"
    )
    if result.soak:
        s = result.soak
        lines.append("")
        lines.append(
            f"Soak (hold churn on {s.backend}, {s.workers} workers): {s.requests:,} requests in "
            f"{s.seconds}s; RSS after first 15 s {s.rss_after_first_chunk_mb} MB, end {s.rss_end_mb} "
            f"MB, peak {s.rss_peak_mb} MB ({s.growth_pct}%); 5xx {s.server_5xx}; invariant "
            f"{s.invariant['result']}"
        )
    lines.append("")
    lines.append("Targets of issue 4")
    for t in result.targets:
        lines.append(f"  [{t.result:<6}] {t.target}: {t.figures}")
    for note in result.notes:
        lines.append(f"note: {note}")
    for failure in result.failures:
        lines.append(f"FAILURE: {failure}")
    lines.append(f"elapsed {m.elapsed_seconds}s")
    return "\n".join(lines)


def _stall(row: ScenarioRow) -> str:
    if not row.requests:
        return "all"
    if row.stuck_clients >= 0.25 * row.connections:
        return f"{row.stuck_clients}"
    return f"{row.silent_seconds}s" if row.silent_seconds else "-"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
