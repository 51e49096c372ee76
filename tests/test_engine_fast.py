"""The fast engine gives the exact engine's answers: identical summary and timeseries tables."""

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

import sim
from tests.conftest import SCENARIOS
from tests.test_properties import scenarios


def both(scenario):
    exact = sim.run(scenario, processes=1, engine="exact")
    fast = sim.run(scenario, processes=1, engine="fast")
    return exact, fast


def assert_identical(exact, fast):
    pd.testing.assert_frame_equal(exact.summary, fast.summary, check_exact=True)
    pd.testing.assert_frame_equal(exact.timeseries, fast.timeseries, check_exact=True)
    pd.testing.assert_frame_equal(exact.latency, fast.latency, check_exact=True)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_fast_engine_equals_exact_on_every_bundled_scenario(path):
    scenario = sim.load_scenario(path)
    # smaller, so that the test stays quick; everything else as bundled
    users = min(scenario.population.users, 24)
    run = {"replications": 1, "duration_s": min(scenario.run.duration_s, 1200.0)}
    scenario = scenario.replace(population={"users": users}, run=run)
    exact, fast = both(scenario)
    assert exact.summary["requests"].iloc[0] > 0
    assert_identical(exact, fast)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_fast_engine_equals_exact_on_generated_scenarios(scenario):
    assert_identical(*both(scenario))


@pytest.mark.slow  # the same, many more examples (in .ci/run's second pass)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_fast_engine_equals_exact_on_many_more_generated_scenarios(scenario):
    assert_identical(*both(scenario))


def test_fast_engine_with_events_is_the_exact_engine(make_scenario):
    scenario = make_scenario(workload={"burst_size": 3})
    exact = sim.run(scenario, events=True, engine="exact")
    fast = sim.run(scenario, events=True, engine="fast")
    pd.testing.assert_frame_equal(exact.events, fast.events)
    assert_identical(exact, fast)


@pytest.mark.slow  # about 2 s: a 19-hour timeseries, twice
def test_fast_engine_equals_exact_past_the_instant_where_page_views_are_counted_at_once(make_scenario):
    """Past 2**16 s a plain request's added latency is no longer counted as none at once but
    request by request (its rounding noise grows with the instant): both ways agree with the
    exact engine, in one run that crosses that instant."""
    scenario = make_scenario(run={"duration": "19h"},
                             workload={"think_time": {"dist": "exponential", "mean": "10m"},
                                       "burst_size": {"dist": "uniform", "low": 1, "high": 4}},
                             network={"rtt": {"dist": "lognormal", "mean": "80ms", "sd": "30ms"}},
                             api={"verify_time": "200us"}, tokens={"access_ttl": "1h"})
    assert scenario.run.end_s > 2 ** 16
    assert_identical(*both(scenario))


@pytest.mark.slow  # about 1.5 s
def test_fast_engine_equals_exact_when_refresh_calls_queue_time_out_and_are_shed(make_scenario):
    """Refresh calls (carried by callbacks in the fast engine) queue behind each other and the
    logins on one worker, time out in the queue and find it full: every user's token expires at
    the same instant."""
    scenario = make_scenario(
        run={"duration": "2m"},
        population={"users": 40, "arrival": {"pattern": "all_at_once"}},
        workload={"think_time": "2s", "burst_size": 1},
        network={"rtt": {"dist": "exponential", "mean": "20ms"}},
        auth={"login_time": "5ms", "refresh_time": {"dist": "exponential", "mean": "60ms"},
              "workers": 1, "queue_limit": 2, "queue_timeout": "60ms"},
        tokens={"access_ttl": "1m"},
    )
    exact, fast = both(scenario)
    assert exact.summary["unavailable_refreshes"].iloc[0] > 0
    assert_identical(exact, fast)
