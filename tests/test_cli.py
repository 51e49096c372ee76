"""The console script as a user runs it: bad input, run folders, interruption."""

import json
import signal
import subprocess
import sys
import time
import tomllib

import pandas as pd
import pytest

from sim.metrics import SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from tests.conftest import ROOT, SCENARIOS

GOOD = (SCENARIOS / "smoke.toml").read_text()


def write(tmp_path, text, name="scenario.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, field, expected", [
    (("[run]\n", "[run]\ncolour = 3\n"), "run", "unknown field 'colour'"),
    (('duration = "20m"', 'duration = "20 minutes"'), "run.duration", "duration string with a unit"),
    (('duration = "20m"', 'duration = 1200'), "run.duration", "bare number"),
    (('warmup = "2m"', 'warmup = "-2m"'), "run.warmup", "not negative"),
    (('access_ttl = "5m"', 'access_ttl = "5 parsecs"'), "tokens.access_ttl", "duration string"),
    (('single_flight = true }', 'single_flight = "yes" }'), "strategies[1].client.single_flight", "valid boolean"),
    (('trigger = "timer"', 'trigger = "timr"'), "strategies[3].client", "'timer'"),
    (('users = 50', 'users = -5'), "population.users", "greater than or equal to 1"),
])
def test_bad_scenarios_fail_with_the_file_the_field_and_what_was_expected(cli, tmp_path, edit, field, expected):
    assert edit[0] in GOOD
    path = write(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    for args in (("check",), ("run", "--out", tmp_path / "out")):
        code, out, err = cli(args[0], path, *args[1:])
        assert code == 2, (out, err)
        assert str(path) in err and f"{field}:" in err and expected in err, err
        assert "Traceback" not in err + out
    assert not (tmp_path / "out").exists()


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


def test_check_and_schema(cli):
    code, out, _ = cli("check", SCENARIOS / "baseline.toml")
    assert code == 0 and "4 strategy variants" in out
    code, out, _ = cli("schema")
    schema = json.loads(out)
    assert code == 0 and {"run", "population", "strategies"} <= set(schema["properties"])


def test_run_writes_a_complete_folder(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("run", SCENARIOS / "smoke.toml", "--out", out, "--replications", "2", "--events", "--json")
    assert code == 0, err
    printed = json.loads(stdout)
    assert {row["strategy"] for row in printed["summary"]} == {"dual_token", "dual_token_single_flight", "sliding", "silent_refresh"}
    summary = pd.read_csv(out / "summary.csv", dtype={"replication": str})
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == SUMMARY_COLUMNS
    assert set(summary["replication"]) == {"0", "1", "mean"}
    assert list(pd.read_parquet(out / "timeseries.parquet").columns) == TIMESERIES_COLUMNS
    assert len(pd.read_parquet(out / "events.parquet")) > 0
    resolved = tomllib.loads((out / "scenario.resolved.toml").read_text())
    assert resolved["run"]["replications"] == 2 and resolved["strategies"][0]["server"]["access_ttl"] == "5m"
    # the resolved scenario reproduces the run exactly
    code, _, err = cli("run", out / "scenario.resolved.toml", "--out", tmp_path / "again", "--events")
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / "summary.csv"), pd.read_csv(out / "summary.csv"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_run_leaves_nothing_complete_and_keeps_earlier_results(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.csv").write_text("earlier results\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "run", str(SCENARIOS / "baseline.toml"), "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (out / "summary.csv").read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_sweep_writes_one_run_per_setting_and_a_report(cli, tmp_path):
    out = tmp_path / "sweep"
    code, stdout, err = cli("sweep", SCENARIOS / "smoke.toml", "--set", "auth.workers=1,3",
                            "--set", "population.users=6", "--set", "strategies[1].client.single_flight=false",
                            "--replications", "1", "--out", out)
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "charts")
    assert folders == ["workers=1,users=6,single_flight=false", "workers=3,users=6,single_flight=false"]
    resolved = tomllib.loads((out / folders[1] / "scenario.resolved.toml").read_text())
    assert resolved["auth"]["workers"] == 3 and resolved["population"]["users"] == 6
    assert resolved["strategies"][1]["client"]["single_flight"] is False
    assert (out / "report.html").is_file() and (out / "charts" / "sweep.png").is_file()


@pytest.mark.parametrize("setting, expected", [
    ("auth.workers", "expected FIELD=VALUE"),
    ("auth.workers=none", "auth.workers: Input should be a valid integer"),
    ("strategies[9].client.trigger=timer", "strategies[9].client.trigger: no such place"),
])
def test_sweep_refuses_bad_settings_before_running(cli, tmp_path, setting, expected):
    code, _, err = cli("sweep", SCENARIOS / "smoke.toml", "--set", setting, "--out", tmp_path / "s")
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()
