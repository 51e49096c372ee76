"""Calibration: measured PyJWT and server times written as a profile that a scenario loads."""

from __future__ import annotations

import tomllib

import pytest

import sim
from sim.calibrate import auth_times, format_seconds
from sim.scenario import ScenarioError
from sim.units import parse_duration
from tests.conftest import SCENARIOS

SMOKE = (SCENARIOS / "smoke.toml").read_text()


def with_profile(tmp_path, profile: str, algorithm: str, extra_auth: str = "") -> str:
    path = tmp_path / "scenario.toml"
    path.write_text(SMOKE.replace("[tokens]", f'[auth]\nprofile = "{profile}"\n{extra_auth}\n[tokens]\nalgorithm = "{algorithm}"', 1))
    return path


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    from sim.calibrate import calibrate as measure

    path = tmp_path_factory.mktemp("calibration") / "calibration.toml"
    measure(["HS256", "EdDSA"], samples=50).save(path)
    return path


def test_calibrate_command_writes_a_profile(cli, tmp_path):
    out = tmp_path / "profiles" / "cal.toml"
    code, stdout, err = cli("calibrate", "--algorithms", "HS256,ES256", "--samples", "30", "--out", out)
    assert code == 0, err
    data = tomllib.loads(out.read_text())
    assert set(data["algorithms"]) == {"HS256", "ES256"}
    for times in data["algorithms"].values():
        for key in ("sign_time_mean", "sign_time_p50", "sign_time_p99", "verify_time_mean"):
            assert parse_duration(times[key]) > 0
        assert parse_duration(times["sign_time_p50"]) <= parse_duration(times["sign_time_p99"])
        for key in ("sign_time", "verify_time"):
            # the measured distribution: equally likely quantiles of the samples, ascending
            assert times[key]["dist"] == "empirical" and len(times[key]["values"]) == 100
            values = [parse_duration(v) for v in times[key]["values"]]
            assert values == sorted(values) and values[0] > 0
    assert data["machine"]["samples"] == 30 and data["machine"]["pyjwt"]
    assert 'profile = "cal.toml"' in stdout

    code, _, err = cli("calibrate", "--algorithms", "HS512", "--out", out)
    assert code == 2 and "HS512" in err and "Traceback" not in err


def test_a_scenario_takes_its_auth_times_from_the_profile(profile, tmp_path, cli):
    measured = tomllib.loads(profile.read_text())["algorithms"]["EdDSA"]
    path = with_profile(tmp_path, profile.name, "EdDSA", 'login_time = "30ms"')
    (tmp_path / profile.name).write_text(profile.read_text())
    scenario = sim.load_scenario(path)
    # the measured distributions themselves, whose means are near the measured means (the
    # quantiles leave out the farthest half percent of the tail)
    assert scenario.auth.sign_time.dist == "empirical"
    assert [parse_duration(v) for v in measured["sign_time"]["values"]] == pytest.approx(scenario.auth.sign_time.values)
    for key in ("sign_time", "verify_time"):
        mean = parse_duration(measured[f"{key}_mean"])
        assert getattr(scenario.auth, f"{key}_s") == pytest.approx(mean, rel=0.5)
    assert scenario.auth.login_time_s == pytest.approx(0.03)  # what the scenario sets itself wins
    assert scenario.auth.profile is None  # replaced by the times, so the resolved scenario stands alone
    resolved = tomllib.loads(scenario.to_toml())["auth"]
    assert resolved["sign_time"] and "profile" not in resolved


@pytest.mark.parametrize("profile_name, algorithm, expected", [
    ("missing.toml", "HS256", "no such profile"),
    ("calibration.toml", "RS256", "has no RS256 times"),
])
def test_a_bad_profile_is_refused_naming_the_field(profile, tmp_path, profile_name, algorithm, expected):
    (tmp_path / "calibration.toml").write_text(profile.read_text())
    path = with_profile(tmp_path, profile_name, algorithm)
    with pytest.raises(ScenarioError) as caught:
        sim.load_scenario(path)
    assert caught.value.problems[0][0] == "auth.profile" and expected in caught.value.render()
    assert str(path) in caught.value.render()


def test_a_measured_distribution_keeps_the_shape_of_the_samples():
    import numpy as np

    from sim.calibrate import measured_distribution
    from sim.distributions import Empirical

    samples = np.random.default_rng(3).lognormal(np.log(1e-3), 0.8, 20_000)
    dist = Empirical.model_validate(measured_distribution(samples), context={"from_file": True})
    values = np.asarray(dist.values)
    assert len(values) == 100
    assert values.mean() == pytest.approx(samples.mean(), rel=0.03)
    # the second moment, which queue waits depend on, is kept too
    assert (values ** 2).mean() == pytest.approx((samples ** 2).mean(), rel=0.1)
    assert np.quantile(values, 0.9) == pytest.approx(np.quantile(samples, 0.9), rel=0.05)


def test_profiles_of_means_only_still_load(tmp_path):
    (tmp_path / "old.toml").write_text('[algorithms.HS256]\nsign_time = "20us"\nverify_time = "30us"\n')
    path = with_profile(tmp_path, "old.toml", "HS256")
    scenario = sim.load_scenario(path)
    assert scenario.auth.sign_time_s == pytest.approx(20e-6) and scenario.auth.sign_time.dist == "constant"


def test_durations_are_written_as_scenarios_spell_them():
    for seconds in (5e-7, 3.07e-5, 0.00099999, 0.0014, 0.99999, 1.5, 1234.0):
        assert parse_duration(format_seconds(seconds)) == pytest.approx(seconds, rel=5e-3)


@pytest.mark.loadtest
def test_calibrate_measures_a_running_reference_server(cli, tmp_path, profile):
    pytest.importorskip("uvicorn")
    from loadtests.server.process import serve_in_subprocess

    out = tmp_path / "server.toml"
    # the server spends no simulated service time: what is measured is its own cost
    with serve_in_subprocess(SCENARIOS / "smoke.toml", "dual_token", service_time=False) as url:
        code, _, err = cli("calibrate", "--algorithms", "HS256", "--samples", "20", "--server", url,
                           "--concurrency", "4", "--duration", "1", "--out", out)
    assert code == 0, err
    endpoints = tomllib.loads(out.read_text())["endpoints"]
    assert endpoints["algorithm"] == "HS256" and endpoints["refresh_mints"] in (1, 2)
    login, refresh = parse_duration(endpoints["login_call"]), parse_duration(endpoints["refresh_call"])
    assert 0 < login < 1 and 0 < refresh < 1
    times = auth_times(out, "HS256")
    assert parse_duration(times["login_time"]) <= login and parse_duration(times["refresh_time"]) <= refresh
