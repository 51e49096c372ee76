"""``refreshlab validate`` against the reference server: the simulator and real HTTP agree on
every check of the validation scenarios — the four baseline strategies (time scale 40) and
multi-tab rotation with per-tab timers and with a cross-tab lock (time scale 10, round trips told
on the scenario clock), including
reuse detections and added latency p99 (the load test injects the scenario's round trips).

Minutes each (a load test per variant): marked ``fidelity``, run by hand (``pytest -m fidelity``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.loadtest, pytest.mark.fidelity, pytest.mark.timeout(1200)]

SCENARIOS = Path(__file__).parents[1] / "scenarios"
REFRESHLAB = Path(sys.executable).with_name("refreshlab")


def validate(out: Path, scenario: str, *extra: str):
    import subprocess

    return subprocess.run([str(REFRESHLAB), "validate", str(SCENARIOS / scenario), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=1100)


@pytest.mark.parametrize("scenario, extra", [
    ("validation.toml", ()),
    # its races are round trips against sibling tabs' timers: told in the scenario time they span
    ("validation_multi_tab.toml", ("--time-scale", "10", "--rtt-clock", "scenario")),
], ids=["baseline-strategies", "multi-tab"])
def test_reference_validation_agrees_on_every_check(tmp_path, scenario, extra):
    done = validate(tmp_path / "v", scenario, *extra)
    print("\n" + (tmp_path / "v" / "validation.md").read_text() if (tmp_path / "v").is_dir() else done.stderr)
    assert done.returncode in (0, 1), done.stderr
    rows = pd.read_csv(tmp_path / "v" / "validation.csv")
    checks = rows.dropna(subset=["agree"])
    assert {"reuse_detections", "added_latency_ms_p99"} <= set(checks["metric"])
    assert checks["agree"].astype(bool).all(), checks.to_string()
    assert done.returncode == 0
