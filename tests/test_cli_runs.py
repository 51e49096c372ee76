"""The console script running simulations: run folders, gates, JSON, sweeps, interruption."""

import re
import signal
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest

import sim
import sim.report
from sim.jsonout import dumps, records
from sim.metrics import SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from tests.conftest import ROOT, SCENARIOS, strict_json

GOOD = (SCENARIOS / "smoke.toml").read_text()
VARIANTS = ["dual_token", "dual_token_single_flight", "sliding", "silent_refresh"]


def write(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_warnings_are_shown_by_run_and_compare(cli, tmp_path):
    path = write(tmp_path, GOOD.replace('check_interval = "30s", threshold = "1m"',
                                        'check_interval = "30s", threshold = "6m"', 1)
                 .replace("users = 50", "users = 4").replace('duration = "20m"', 'duration = "4m"'))
    for command in ("run", "compare"):
        code, _, err = cli(command, path, "--replications", "1", "--out", tmp_path / command, "--no-report"
                           if command == "compare" else "--events")
        assert code == 0 and "warning:" in err and "strategies[3].client.threshold" in err, err


def test_run_writes_a_complete_folder_and_strict_json(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("run", SCENARIOS / "smoke.toml", "--out", out, "--replications", "2", "--events", "--json")
    assert code == 0, err
    printed = strict_json(stdout)
    assert [row["strategy"] for row in printed["summary"]] == VARIANTS
    summary = pd.read_csv(out / "summary.csv", dtype={"replication": str})
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert set(summary["replication"]) == {"0", "1", "mean"}
    # a number missing from a run (a measured run has no exposure, one replication no CI) is null
    frame = pd.DataFrame({"strategy": ["a"], "x": [float("nan")], "y": [np.float64("inf")], "n": [np.int64(3)]})
    assert strict_json(dumps({"summary": records(frame)})) == {"summary": [{"strategy": "a", "x": None, "y": None, "n": 3}]}
    assert list(pd.read_parquet(out / "timeseries.parquet").columns) == TIMESERIES_COLUMNS
    assert len(pd.read_parquet(out / "events.parquet")) > 0
    resolved = tomllib.loads((out / "scenario.resolved.toml").read_text())
    assert resolved["run"]["replications"] == 2 and resolved["strategies"][0]["server"]["access_ttl"] == "5m"
    # the resolved scenario reproduces the run exactly (this time following its progress, as
    # the command does when it prints no JSON: its events change nothing)
    code, _, err = cli("run", out / "scenario.resolved.toml", "--out", tmp_path / "again", "--events")
    assert code == 0, err
    assert re.search(r"^simulating: (\d+)/\1 \(100%\)$", err, re.M), err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "summary.csv"), pd.read_csv(out / "summary.csv"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gates_fail_the_command_name_the_variant_and_write_gates_json(cli, tmp_path):
    # the smoke scenario, smaller: sliding still fails requests, with a wide CI
    small = write(tmp_path, GOOD.replace("users = 50", "users = 25").replace('duration = "20m"', 'duration = "15m"'))
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", small, "--out", out, "--no-report",
                            "--fail-on", "failed_requests > 0", "--fail-on", "duplicate_per_1k_refresh > 10000")
    assert code == 1, err
    assert "gate failed: sliding (failed_requests > 0)" in err and "dual_token (" not in err
    assert "FAIL" in stdout and "pass" in stdout
    gates = strict_json((out / "gates.json").read_text())
    assert gates["passed"] is False
    verdicts = {(r["gate"], r["strategy"]): r["passed"] for r in gates["results"]}
    assert verdicts[("failed_requests > 0", "sliding")] is False
    assert verdicts[("failed_requests > 0", "dual_token_single_flight")] is True
    assert all(verdicts[("duplicate_per_1k_refresh > 10000", n)] for n in VARIANTS)
    # the same through --json, and on the CI bound: a gate the mean passes can fail on the bound
    summary = pd.read_csv(out / "summary.csv", dtype={"replication": str}).query("replication == 'mean'")
    sliding = summary.set_index("strategy").loc["sliding"]
    between = sliding["failed_requests"] + sliding["failed_requests_ci95"] / 2
    gate = f"failed_requests > {between}"
    code, stdout, _ = cli("compare", small, "--out", tmp_path / "mean", "--no-report", "--json",
                          "--fail-on", gate)
    assert code == 0 and strict_json(stdout)["gates"]["passed"] is True
    code, stdout, err = cli("compare", small, "--out", tmp_path / "ci", "--no-report", "--json",
                            "--fail-on", gate, "--gate-on", "ci")
    doc = strict_json(stdout)
    assert code == 1 and doc["gates"]["passed"] is False and "sliding" in err
    assert [r["strategy"] for r in doc["summary"]] == VARIANTS


def test_gates_from_the_scenario_and_bad_gates(cli, tmp_path):
    text = GOOD.replace("[tokens]", '[gates]\nfail_on = ["forced_logins > 1000"]\non = "ci"\n\n[tokens]', 1)
    text = text.replace("users = 50", "users = 4").replace('duration = "20m"', 'duration = "4m"')
    code, stdout, err = cli("run", write(tmp_path, text), "--out", tmp_path / "run", "--json")
    assert code == 0, err
    gates = strict_json(stdout)["gates"]
    assert gates["passed"] and {r["on"] for r in gates["results"]} == {"ci"}
    assert (tmp_path / "run" / "gates.json").is_file()
    code, _, err = cli("run", SCENARIOS / "smoke.toml", "--fail-on", "failed_request > 0", "--out", tmp_path / "x")
    assert code == 2 and "unknown metric 'failed_request' (did you mean 'failed_requests'?)" in err
    assert not (tmp_path / "x").exists()
    bad = write(tmp_path, GOOD.replace("[tokens]", '[gates]\nfail_on = ["failed_requests >> 0"]\n\n[tokens]', 1), "bad.toml")
    code, _, err = cli("check", bad)
    assert code == 2 and "gates.fail_on: fail_on[0]: expected METRIC OP NUMBER" in err, err


@pytest.mark.slow
def test_interrupted_run_leaves_nothing_complete_and_keeps_earlier_results(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.csv").write_text("earlier results\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "run", str(SCENARIOS / "smoke.toml"), "--replications", "40", "--processes", "1",
         "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # interrupt once the run reports progress: it is simulating, not starting up or done
    first = proc.stderr.readline()
    assert first.startswith("simulating: "), first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (out / "summary.csv").read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sweep_writes_one_run_per_setting_sweep_csv_and_a_report(cli, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = cli("sweep", SCENARIOS / "smoke.toml", "--set", "auth.workers=1,3",
                            "--set", "population.users=6", "--set", "strategies[1].client.single_flight=false",
                            "--replications", "1", "--out", out, "--json", "--fail-on", "requests < 0", "--no-report")
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "charts")
    assert folders == ["workers=1,users=6,single_flight=false", "workers=3,users=6,single_flight=false"]
    resolved = tomllib.loads((out / folders[1] / "scenario.resolved.toml").read_text())
    assert resolved["auth"]["workers"] == 3 and resolved["population"]["users"] == 6
    assert resolved["strategies"][1]["client"]["single_flight"] is False
    assert not (out / "report.html").exists()  # the sweep report: tests/test_report.py
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 2 * len(VARIANTS) and list(table["auth.workers"].unique()) == [1, 3]
    doc = strict_json(stdout)
    assert len(doc["sweep"]) == len(table) and doc["gates"]["passed"] is True
    assert (out / "gates.json").is_file()


def test_report_defaults_its_out_folder(cli, tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(sim.report, "build_report", lambda results, out: written.append((len(results), out)))
    scenario = sim.load_scenario(SCENARIOS / "smoke.toml").replace(
        population={"users": 4}, run={"duration": "3m", "warmup": "0s", "replications": 1})
    run = sim.run(scenario, processes=1).save(tmp_path / "small")
    code, _, err = cli("report", run)
    assert code == 0, err
    assert written[0][0] == 1 and (tmp_path / "small-report").is_dir() and (tmp_path / "small" / "summary.csv").is_file()
    code, _, err = cli("report", run, run, cwd=tmp_path)
    assert code == 0, err
    assert written[1][0] == 2 and [p.name[:7] for p in (tmp_path / "runs").iterdir()] == ["report-"]


@pytest.mark.slow
def test_baseline_compare_gate_fails_naming_sliding(cli, tmp_path):
    code, stdout, err = cli("compare", SCENARIOS / "baseline.toml", "--out", tmp_path / "b", "--no-report",
                            "--json", "--fail-on", "failed_requests > 0")
    assert code == 1
    assert "sliding (failed_requests > 0)" in err
    failed = [r["strategy"] for r in strict_json(stdout)["gates"]["results"] if not r["passed"]]
    assert failed == ["sliding"]
