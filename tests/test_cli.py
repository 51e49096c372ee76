"""The console script as a user runs it: bad input, errors and warnings, check, replace and --set,
version, help, missing extras. Commands run in this process (click's runner)."""

import tomllib

import pytest
import typer

import sim
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


@pytest.mark.parametrize("setting, expected", [
    ("auth.workers", "expected FIELD=VALUE"),
    ("auth.workers=none", "auth.workers: expected a whole number, got 'none'"),
    ("strategies[9].client.trigger=timer", "strategies[9].client.trigger: no such place"),
])
def test_sweep_refuses_bad_settings_before_running(cli, tmp_path, setting, expected):
    code, _, err = cli("sweep", SCENARIOS / "smoke.toml", "--set", setting, "--out", tmp_path / "s")
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


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
    # a run folder's resolved scenario spells every lifetime out; [tokens] still reaches them
    loaded = sim.load_run(ROOT / "reports" / "baseline").scenario
    assert ttls(loaded.replace(tokens={"access_ttl": "1m"})) == [60.0, 60.0, 1800.0, 60.0]
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
