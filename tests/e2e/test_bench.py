"""scripts/bench.py end to end, quickly, on each engine: it runs both drivers in its own lab,
prints its progress, and writes the CSV, the JSON (medians, ratios, API percentiles, spawns) and
the plot. No figure is asserted (performance is measured, never a test): only that the report
is whole and that the request path of a ``run --rm`` without ports started no process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import engines

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("engine", engines())
def test_bench_runs_both_drivers_and_writes_its_report(engine, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--engine", engine, "--quick", "--rounds", "2",
         "--containers", "3", "--networks", "3", "--lab", "mnbsm", "--driver", "mnbsm", "--out", str(out),
         "--only", "run_rm", "net_create_rm", "api", "spawns", "scale_networks"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "run_rm round 1/2: bridge" in proc.stdout + proc.stderr  # progress while it runs
    summary = json.loads((out / f"bench-{engine}.json").read_text())["summary"]
    for op in ("run_rm", "net_create_rm"):
        assert summary[op]["bridge"]["n"] == 2 and summary[op]["multinic"]["n"] == 2 and summary[op]["ratio"] > 0
    assert {f"api_{v}" for v in ("CreateEndpoint", "Join", "Leave", "DeleteEndpoint")} <= summary.keys()
    assert summary["scale_network_create"]["multinic"]["first10"] > 0
    if "spawns_run_rm" in summary:  # needs strace
        assert summary["spawns_run_rm"]["multinic"]["median"] == 0
    rows = list(csv.DictReader((out / f"bench-{engine}.csv").open()))
    assert {r["driver"] for r in rows} == {"bridge", "multinic"}
    try:
        import matplotlib  # noqa: F401 - the plot needs the bench extra
    except ImportError:
        return
    assert (out / f"bench-{engine}.png").stat().st_size > 0


@pytest.mark.parametrize("engine", engines()[-1:])
def test_bench_swarm_scale_measures_both_networks(engine, tmp_path):
    """``swarm_scale`` on its own three-node swarm: one round each of multinic and overlay, ratio reported.
    On the newest engine of the run only: the script is the same on both, and tests/e2e/test_swarm.py
    proves the swarm itself on each engine."""
    out = tmp_path / "bench"
    prefix = os.environ.get("MULTINIC_LAB_PREFIX", "mne")[:2] + "b"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--engine", engine, "--rounds", "1", "--swarm", prefix,
         "--out", str(out), "--only", "swarm_scale"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads((out / f"bench-{engine}.json").read_text())["summary"]["swarm_scale_0_to_12"]
    assert row["overlay"]["n"] == row["multinic"]["n"] == 1 and row["ratio"] > 0
