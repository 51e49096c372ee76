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
