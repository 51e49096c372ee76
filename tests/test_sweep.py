"""Sweeps: every point written atomically as it finishes, an interrupted sweep resumed without
recomputing or duplicating a point, and a chart that never joins unrelated combinations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

import sim
from sim.report import charts
from sim.report.sweep import distinct_fields, layout
from sim.sweep import Point, SweepFolderError, prepare, run_sweep
from tests.conftest import ROOT, SCENARIOS

SWEEP_ARGS = ["--set", "population.users=4,8", "--set", "auth.workers=1,2", "--replications", "1", "--no-report",
              "--processes", "1"]
POINTS = ["users=4,workers=1", "users=4,workers=2", "users=8,workers=1", "users=8,workers=2"]


def sweep_cmd(scenario, out, *extra):
    return [sys.executable, "-m", "sim.cli", "sweep", str(scenario), *SWEEP_ARGS, *extra, "--out", str(out)]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_sweep_killed_mid_way_resumes_with_every_point_once(cli, tmp_path, how):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(sweep_cmd(SCENARIOS / "smoke.toml", out), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()  # the run reports its progress, then its first finished point
        while first.startswith("simulating: "):
            first = proc.stderr.readline()
        assert first.startswith("[1/4] "), first + proc.stderr.read()
        os.killpg(proc.pid, how)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert "to resume" in err and str(out) in err.replace("\n", ""), err
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["complete"] is False and not (out / "report.html").exists()
    written = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert written and len(written) < 4, "killed after its first point, before its last"
    kept = {name: (out / name / "summary.csv").stat().st_mtime_ns for name in written}

    # resumed (and, below, run straight through) in this process: only the kill needs a process
    code, _, err = cli(*sweep_cmd(SCENARIOS / "smoke.toml", out)[3:])
    assert code == 0, err
    reused = [line for line in err.splitlines() if "already in" in line]
    assert len(reused) == len(written)
    # the progress of the simulations it ran: the other points' only
    variants = len(sim.load_scenario(SCENARIOS / "smoke.toml").names)
    assert f"simulating: {variants * (4 - len(written))}/{variants * (4 - len(written))} (100%)" in err, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == POINTS  # each once, no partial folder left
    assert {name: (out / name / "summary.csv").stat().st_mtime_ns for name in written} == kept, "not recomputed"
    assert json.loads((out / "sweep.json").read_text())["complete"] is True
    if how == signal.SIGINT:
        return
    # the resumed sweep equals one run straight through
    straight = tmp_path / "straight"
    code, _, err = cli(*sweep_cmd(SCENARIOS / "smoke.toml", straight)[3:])
    assert code == 0, err
    for name in POINTS:
        assert (out / name / "summary.csv").read_text() == (straight / name / "summary.csv").read_text()


def test_a_sweep_refuses_a_folder_of_another_sweep(tmp_path):
    def points(users, seed=7):
        settings = {"population.users": users}
        return [Point(settings, sim.load_scenario(SCENARIOS / "smoke.toml", settings).replace(run={"seed": seed}))]

    out = tmp_path / "sweep"
    first = points(4)
    run_sweep([Point(p.settings, p.scenario.replace(run={"replications": 1, "duration_s": 60.0})) for p in first],
              out, processes=1)
    with pytest.raises(SweepFolderError, match="holds a different sweep"):
        prepare(out, points(5), "smoke.toml")
    with pytest.raises(SweepFolderError, match="different scenario"):
        prepare(out, points(4, seed=99), "smoke.toml")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.csv").write_text("a run\n")
    with pytest.raises(SweepFolderError, match="not a sweep folder"):
        prepare(tmp_path / "other", points(4), "smoke.toml")


@pytest.fixture(scope="module")
def grid():
    base = sim.load_scenario(SCENARIOS / "smoke.toml").replace(run={"replications": 1, "duration_s": 180.0})
    return [sim.run(base.replace(population={"users": u}, auth={"workers": w}, tokens={"access_ttl_s": 300.0}),
                    processes=1)
            for u in (4, 8, 16) for w in (1, 2)]


def test_the_sweep_chart_gives_each_other_field_its_own_facet(grid):
    lay = layout(grid)
    assert lay.xlabel == "population.users" and lay.facet_order == ["workers = 1", "workers = 2"]
    table = charts.sweep_table(grid)
    # within a facet, a variant's line has one point per user count: no unrelated runs joined
    per_line = table.groupby(["facet", "variant"])["population.users"].apply(list)
    assert all(sorted(xs) == [4.0, 8.0, 16.0] for xs in per_line)
    fig = charts.sweep(grid, measures=["refresh_rate", "queue_wait_p99"])
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 * 2  # measures x facets


def test_fields_that_only_echo_another_make_no_facet():
    runs = [sim.run(sim.load_scenario(SCENARIOS / "smoke.toml", {"tokens.access_ttl": ttl, "population.users": 2,
                                                                  "run.duration": "1m", "run.replications": 1}),
                    processes=1) for ttl in ("5m", "10m")]
    assert "tokens.access_ttl" in distinct_fields(runs) and len(distinct_fields(runs)) == 1
    assert layout(runs).facet_order == [""]
