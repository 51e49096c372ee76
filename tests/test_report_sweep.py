"""A report of several run folders (a sweep): the fields that differ are found, the sweep chart
and every run's charts are drawn, and the summary names what was varied."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sim
from sim.cli import app
from sim.report import charts
from sim.report.sweep import varied_fields

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_report_of_a_sweep(tmp_path):
    result = _small()
    runs = []
    for users in (20, 40):
        run = copy.copy(result)
        run.scenario = result.scenario.replace(population={"users": users})
        runs.append(run.save(tmp_path / f"users-{users}"))
    assert varied_fields([sim.load_run(p) for p in runs]) == {"population.users": [20, 40]}
    table = charts.sweep_table([sim.load_run(p) for p in runs])
    assert list(table["population.users"].unique()) == [20, 40]

    out = tmp_path / "report"
    outcome = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    assert (out / "charts" / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert (out / "charts" / "run2-headline.svg").is_file()
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "2 runs that differ in population.users (20, 40)" in md


def _small() -> sim.RunResult:
    scenario = sim.load_scenario(ROOT / "scenarios" / "smoke.toml").replace(
        population={"users": 20}, run={"duration_s": 600.0, "warmup_s": 60.0, "replications": 2})
    return sim.run(scenario, processes=1)
