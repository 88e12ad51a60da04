"""The benchmark (bench/) still runs end to end: `python -m bench.run --quick` produces figures.

Checks that every figure is there and positive and that the invariant held, never how fast
anything was: speed depends on the machine, a missing number means the benchmark rotted.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if shutil.which("wrk") is None:
        pytest.skip("the benchmark needs wrk: apt-get install -y wrk")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.exists(), f"no JSON written (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    result["_stdout"] = done.stdout
    return result


def _positive_figures(row: dict) -> None:
    assert row["requests"] > 0
    assert row["rps"] > 0
    for key in ("p50", "p95", "p99"):
        assert row["latency_ms"][key] > 0, key
    assert row["rss"]["peak_mb"] > 0


def test_quick_bench_measures_the_ceiling(quick_result: dict) -> None:
    assert quick_result["ceiling"]
    for row in quick_result["ceiling"]:
        _positive_figures(row)


def test_quick_bench_covers_every_scenario_with_ratios(quick_result: dict) -> None:
    rows = quick_result["scenarios"]
    seen = {(r["backend"], r["scenario"], r["history_rows"]) for r in rows}
    assert {("memory", "hold churn", 0), ("memory", "hot slot", 0), ("memory", "listing", 0)} <= seen
    assert ("sqlite-file", "hold churn", 10_000) in seen
    assert ("sqlite-file", "listing", 10_000) in seen
    for row in rows:
        ratio = row["ratio_to_ceiling"]
        assert ratio["rps"] is not None and ratio["rps"] > 0, (row["backend"], row["scenario"])
        assert ratio["p99"] is not None and ratio["p99"] > 0, (row["backend"], row["scenario"])


def test_quick_bench_figures_are_present_and_positive(quick_result: dict) -> None:
    for row in quick_result["scenarios"]:
        _positive_figures(row)
        assert not row["stalled"], f"{row['backend']} {row['scenario']}: the server stopped answering"


def test_quick_bench_invariant_passes_after_every_scenario(quick_result: dict) -> None:
    for row in quick_result["scenarios"]:
        assert row["invariant"]["result"] == "PASS", (row["backend"], row["scenario"], row["invariant"])


def test_quick_bench_prints_the_table_and_targets(quick_result: dict) -> None:
    out = quick_result["_stdout"]
    assert "Framework ceiling" in out
    assert "Service scenarios" in out
    assert "Targets of issue 4" in out
    assert quick_result["targets"]


@pytest.fixture(scope="module")
def fanout_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("fanout") / "fanout-quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.exists(), f"no JSON written (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_quick_fanout_measures_delivery_and_memory(fanout_result: dict) -> None:
    (row,) = fanout_result["rows"]
    assert (row["backend"], row["subscribers"], row["connected"]) == ("memory", 100, 100)
    assert row["writes_2xx"] > 0
    assert row["events_received"] > 0 and row["events_per_s"] > 0
    assert row["delivery_ms"]["samples"] > 0
    assert row["delivery_ms"]["p50"] is not None and row["delivery_ms"]["p99"] is not None
    assert row["memory"]["per_idle_subscriber_kb"] is not None
    assert row["memory"]["idle_mb"] > 0


def test_quick_fanout_every_board_matches_get_slots(fanout_result: dict) -> None:
    (row,) = fanout_result["rows"]
    assert row["boards_checked"] == 100
    assert row["boards_mismatched"] == 0, row["mismatch_samples"]
    assert row["missing_deliveries"] == 0
    assert row["streams_lost_early"] == 0
    assert not fanout_result["failures"], fanout_result["failures"]
