"""The fan-out's printed table, and the targets of the live-board issue judged on its rows."""

from typing import Any

from bench.fanout_record import FanoutRow
from bench.record import FILE, MEMORY, POSTGRES

# Targets of the live-board issue.
DELIVERY_P99_MS = {MEMORY: 100.0, POSTGRES: 100.0, FILE: 250.0}
TARGET_SUBSCRIBERS = 1_000
IDLE_KB_PER_SUBSCRIBER = 50.0


def targets(rows: list[FanoutRow]) -> list[dict[str, str]]:
    """Each target MET / MISSED / n/a, with the figures it was judged on."""
    out = []
    for backend, limit in DELIVERY_P99_MS.items():
        r = next((r for r in rows if (r.backend, r.subscribers) == (backend, TARGET_SUBSCRIBERS)), None)
        if r is None:
            continue
        p99 = r.delivery_ms.p99
        out.append(
            {
                "target": f"delivery p99 < {limit:.0f} ms on {backend} at {TARGET_SUBSCRIBERS:,} subscribers",
                "result": "n/a" if p99 is None else ("MET" if p99 < limit else "MISSED"),
                "figures": f"p99 {p99} ms",
            }
        )
    idle = [r for r in rows if r.memory.per_idle_subscriber_kb is not None]
    if idle:
        worst = max(idle, key=lambda r: r.memory.per_idle_subscriber_kb or 0)
        out.append(
            {
                "target": f"memory per idle subscriber < {IDLE_KB_PER_SUBSCRIBER:.0f} KB",
                "result": "MET" if (worst.memory.per_idle_subscriber_kb or 0) < IDLE_KB_PER_SUBSCRIBER else "MISSED",
                "figures": "; ".join(
                    f"{r.backend} x {r.subscribers}: {r.memory.per_idle_subscriber_kb} KB" for r in idle
                ),
            }
        )
    out.append(
        {
            "target": "every subscriber's final board equals GET /slots",
            "result": "MET" if rows and not any(r.boards_mismatched for r in rows) else "MISSED",
            "figures": ", ".join(f"{r.boards_mismatched}/{r.boards_checked}" for r in rows),
        }
    )
    return out


def render(result: dict[str, Any]) -> str:
    """The table of rows, then the targets, notes and failures, from the JSON form of the run."""
    lines = [
        f"Live board fan-out: {result['meta']['when']}, commit {result['meta']['project_commit']}",
        f"  {result['meta']['command']}",
        "",
        "| backend | topology | subs | writes/s | events/s | delivery p50 ms | p99 ms | max ms | superseded "
        "| write p99 ms | KB/idle sub | RSS idle MB | peak MB | server CPU | CPU us/event | boards ok | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d, m = r["delivery_ms"], r["memory"]
        lines.append(
            f"| {r['backend']} | {r['topology']} | {r['connected']:,} | {r['writes_per_s']} | {r['events_per_s']:,.0f} "
            f"| {d['p50']} | {d['p99']} | {d['max']} | {d['superseded_share']} | {r['write_latency_ms']['p99']} "
            f"| {m['per_idle_subscriber_kb']} | {m['idle_mb']} | {m['peak_during_churn_mb']} "
            f"| {r['board_server_cpu_share']} | {r['board_server_cpu_us_per_event']} "
            f"| {r['boards_checked'] - r['boards_mismatched']}/{r['boards_checked']} "
            f"| {r['load_average_1m_before']} |"
        )
    lines += ["", "Targets:"]
    lines += [f"  {t['result']:<7} {t['target']}: {t['figures']}" for t in result["targets"]]
    lines += [f"  note: {n}" for n in result["notes"]]
    lines += [f"  FAIL: {f}" for f in result["failures"]]
    return "\n".join(lines)
