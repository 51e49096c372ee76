"""The console script as a user runs it: bad input, warnings, run folders, gates, JSON,
interruption. Commands run in this process (click's runner) unless a process is the point."""

import signal
import subprocess
import sys
import tomllib

import numpy as np
import pandas as pd
import pytest
import typer

import sim
from sim.jsonout import dumps, records
from sim.metrics import SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from tests.conftest import ROOT, SCENARIOS, strict_json

GOOD = (SCENARIOS / "smoke.toml").read_text()
VARIANTS = ["dual_token", "dual_token_single_flight", "sliding", "silent_refresh"]
PYDANTIC_WORDING = ("Input should", "Input tag", "found using", "Value error", "validation error", "pydantic")


def write(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize("edit, field, expected", [
    (("[run]\n", "[run]\ncolour = 3\n"), "run.colour", "unknown field 'colour'"),
    (('duration = "20m"', 'duration = "20 minutes"'), "run.duration", "duration string with a unit"),
    (('duration = "20m"', 'duration = 1200'), "run.duration", "bare number"),
    (('warmup = "2m"', 'warmup = "-2m"'), "run.warmup", "not negative"),
    (('access_ttl = "5m"', 'access_ttl = "5 parsecs"'), "tokens.access_ttl", "duration string"),
    (('single_flight = true }', 'single_flight = "yes" }'), "strategies[1].client.single_flight", "expected true or false"),
    (('trigger = "timer"', 'trigger = "timr"'), "strategies[3].client", "unknown trigger 'timr'; expected one of"),
    (('users = 50', 'users = -5'), "population.users", "expected a value at least 1, got -5"),
])
def test_bad_scenarios_fail_with_the_file_the_line_the_field_and_what_was_expected(cli, tmp_path, edit, field, expected):
    assert edit[0] in GOOD
    text = GOOD.replace(edit[0], edit[1], 1)
    path = write(tmp_path, text)
    line = line_of(text, edit[1].splitlines()[-1])
    for args in (("check",), ("run", "--out", tmp_path / "out")):
        code, out, err = cli(args[0], path, *args[1:])
        assert code == 2, (out, err)
        assert f"{path}:{line}: {field}: " in err and expected in err, err
        assert len(err.strip().splitlines()) == 1, err  # one error for one mistake
        assert "Traceback" not in err + out and not any(w in err for w in PYDANTIC_WORDING), err
    assert not (tmp_path / "out").exists()


def test_a_shared_default_is_reported_once_where_it_was_written(cli, tmp_path):
    path = write(tmp_path, GOOD.replace('access_ttl = "5m"', 'access_ttl = "5 minutes"', 1))
    code, _, err = cli("check", path)
    assert code == 2
    assert err.count("access_ttl") == 1 and "tokens.access_ttl" in err and "strategies[" not in err, err


def test_empty_strategy_list_and_unreadable_files(cli, tmp_path):
    head = GOOD[: GOOD.index("[[strategies]]")]
    code, _, err = cli("check", write(tmp_path, "strategies = []\n" + head))
    assert code == 2 and "strategies:" in err and "at least 1" in err
    code, _, err = cli("check", write(tmp_path, head, "none.toml"))
    assert code == 2 and "strategies: required field is missing" in err
    code, _, err = cli("check", write(tmp_path, "[run\n", "broken.toml"))
    assert code == 2 and "broken.toml" in err and "not valid TOML" in err
    code, _, err = cli("check", tmp_path / "missing.toml")
    assert code == 2 and "missing.toml: no such file" in err
    assert "Traceback" not in err


def test_check_resolved_json_and_schema(cli):
    code, out, _ = cli("check", SCENARIOS / "baseline.toml")
    assert code == 0 and "4 strategy variants" in out
    code, out, _ = cli("check", SCENARIOS / "smoke.toml", "--resolved")
    resolved = tomllib.loads(out)
    assert code == 0 and resolved["strategies"][0]["server"]["access_ttl"] == "5m"
    assert resolved["auth"]["workers"] == 4 and resolved["gates"]["on"] == "mean"  # defaults filled in
    code, out, _ = cli("check", SCENARIOS / "smoke.toml", "--json")
    assert code == 0 and strict_json(out)["scenario"]["tokens"]["access_ttl"] == "5m"
    code, out, _ = cli("schema")
    schema = strict_json(out)
    assert code == 0 and {"run", "population", "strategies", "gates"} <= set(schema["properties"])


SUSPICIOUS = [
    ('rtt = { dist = "lognormal", mean = "80ms", sd = "25ms" }', 'rtt = { dist = "exponential", mean = "80m" }',
     "network.rtt", "did you mean ms?"),
    ('check_interval = "30s", threshold = "1m"', 'check_interval = "30s", threshold = "6m"',
     "strategies[3].client.threshold", "not shorter than the token's life"),
    ("[tokens]", '[auth]\nqueue_timeout = "1ms"\n\n[tokens]', "auth.queue_timeout", "shorter than a login's service time"),
    ('think_time = { dist = "exponential", mean = "20s" }', 'think_time = "1h"', "workload.think_time",
     "few or no requests"),
]


@pytest.mark.parametrize("edit, replacement, field, expected", SUSPICIOUS)
def test_suspicious_values_warn_and_strict_refuses_them(cli, tmp_path, edit, replacement, field, expected):
    assert edit in GOOD
    text = GOOD.replace(edit, replacement, 1)
    path = write(tmp_path, text)
    code, out, err = cli("check", path)
    assert code == 0 and "warning:" in err and f"{field}: " in err and expected in err, err
    assert f"{path}:{line_of(text, replacement.splitlines()[-1] if field.startswith('auth') else replacement)}:" in err \
        or field.startswith("auth"), err
    code, _, err = cli("check", path, "--strict")
    assert code == 2 and field in err and "--strict" in err, err
    code, _, err = cli("compare", path, "--strict", "--out", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()


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
    # the resolved scenario reproduces the run exactly
    code, _, err = cli("run", out / "scenario.resolved.toml", "--out", tmp_path / "again", "--events")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "summary.csv"), pd.read_csv(out / "summary.csv"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_gates_fail_the_command_name_the_variant_and_write_gates_json(cli, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", SCENARIOS / "smoke.toml", "--out", out, "--no-report",
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
    code, stdout, _ = cli("compare", SCENARIOS / "smoke.toml", "--out", tmp_path / "mean", "--no-report", "--json",
                          "--fail-on", gate)
    assert code == 0 and strict_json(stdout)["gates"]["passed"] is True
    code, stdout, err = cli("compare", SCENARIOS / "smoke.toml", "--out", tmp_path / "ci", "--no-report", "--json",
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


def test_interrupted_run_leaves_nothing_complete_and_keeps_earlier_results(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.csv").write_text("earlier results\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "run", str(SCENARIOS / "smoke.toml"), "--replications", "40", "--out", str(out)],
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


@pytest.mark.parametrize("setting, expected", [
    ("auth.workers", "expected FIELD=VALUE"),
    ("auth.workers=none", "auth.workers: expected a whole number, got 'none'"),
    ("strategies[9].client.trigger=timer", "strategies[9].client.trigger: no such place"),
])
def test_sweep_refuses_bad_settings_before_running(cli, tmp_path, setting, expected):
    code, _, err = cli("sweep", SCENARIOS / "smoke.toml", "--set", setting, "--out", tmp_path / "s")
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


def test_report_defaults_its_out_folder(cli, tmp_path, monkeypatch):
    import sim.report

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


def test_replace_and_set_share_one_path():
    base = sim.load_scenario(SCENARIOS / "baseline.toml")
    ttls = lambda s: [v.server.access_ttl_s for v in s.strategies]  # noqa: E731
    assert ttls(base) == [900.0, 900.0, 1800.0, 900.0]  # sliding sets its own
    by_python = base.replace(tokens={"access_ttl_s": 60})
    by_file = base.replace(tokens={"access_ttl": "1m"})
    by_set = sim.load_scenario(SCENARIOS / "baseline.toml", {"tokens.access_ttl": "1m"})
    assert ttls(by_python) == ttls(by_file) == ttls(by_set) == [60.0, 60.0, 1800.0, 60.0]
    assert by_python.to_file_dict() == by_set.to_file_dict()
    assert by_python.replace(population={"users": 5}).strategies[0].server.access_ttl_s == 60.0
    with pytest.raises(sim.ScenarioError) as info:
        base.replace(tokens={"access_ttl": "a minute"})
    assert info.value.problems == [("tokens.access_ttl", info.value.problems[0][1])]
    assert "duration string" in info.value.problems[0][1]


def test_version_completion_and_help_texts_keep_their_brackets(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("refreshlab ")
    code, out, _ = cli("--help", env={"COLUMNS": "200"})
    assert code == 0 and "--install-completion" in out
    code, out, _ = cli("run", "--help", env={"COLUMNS": "200"})
    assert "[default: runs/<scenario>-<time>]" in out


def test_a_missing_extra_gets_a_clean_message_naming_the_command(monkeypatch):
    from click.testing import CliRunner

    import sim.cli

    monkeypatch.setattr(sim.cli, "missing_for", lambda extras: ["locust", "starlette"])
    fresh = typer.Typer()
    fresh.command()(sim.cli.check)
    monkeypatch.setattr(sim.cli, "app", fresh)
    sim.cli._register_plugins()
    command = typer.main.get_command(fresh)
    sim.cli._escape_help(command)
    for name in ("serve", "loadtest", "validate"):
        outcome = CliRunner().invoke(command, [name, "scenario.toml", "--strategy", "x"])
        assert outcome.exit_code == 2, outcome.output
        assert f"'refreshlab {name}' needs the loadtests extra" in outcome.stderr
        assert "pip install 'refreshlab[loadtests]'" in outcome.stderr
        assert "Traceback" not in outcome.output
    outcome = CliRunner().invoke(command, ["--help"], env={"COLUMNS": "300"})
    assert "refreshlab[loadtests]" in outcome.stdout


@pytest.mark.slow
def test_baseline_compare_gate_fails_naming_sliding(cli, tmp_path):
    code, stdout, err = cli("compare", SCENARIOS / "baseline.toml", "--out", tmp_path / "b", "--no-report",
                            "--json", "--fail-on", "failed_requests > 0")
    assert code == 1
    assert "sliding (failed_requests > 0)" in err
    failed = [r["strategy"] for r in strict_json(stdout)["gates"]["results"] if not r["passed"]]
    assert failed == ["sliding"]
