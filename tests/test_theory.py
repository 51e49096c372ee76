"""The simulator against closed-form answers, over seeded replications.

Tolerances: each check allows the larger of a few standard errors of the replication mean and a
small relative band, and the bands were chosen from the renewal-process variance (see each test),
not from observed output.
"""

import math

import pytest
from scipy import stats

import sim


def mean_and_se(result, strategy, column):
    per = result.replications.set_index("strategy").loc[[strategy], column].astype(float)
    return per.mean(), per.std(ddof=1) / math.sqrt(len(per))


def poisson_scenario(make_scenario, *, users=200, ttl_s=60, mean_think_s=20, burst=1, strategies=None,
                     replications=5, refresh_time="0s"):
    cycle = ttl_s + mean_think_s
    return make_scenario(
        run={"seed": 11, "warmup": f"{10 * cycle}s", "duration": f"{50 * cycle}s", "replications": replications},
        population={"users": users, "arrival": {"pattern": "ramp", "over": f"{cycle}s"}},
        workload={"think_time": {"dist": "exponential", "mean": f"{mean_think_s}s"}, "burst_size": burst},
        tokens={"access_ttl": f"{ttl_s}s"},
        auth={"refresh_time": refresh_time, "workers": 64},
        strategies=strategies or [
            {"name": "reactive", "client": {"trigger": "reactive"}, "server": {"kind": "dual_token"}}],
    )


@pytest.mark.slow
def test_reactive_refresh_rate_is_users_over_lifetime_plus_mean_wait(make_scenario):
    # Poisson requests at rate λ, lifetime T, zero latency: after each refresh the token lives T,
    # then the next request comes Exp(λ) later (memoryless) and gets the 401 that triggers the
    # next refresh: a renewal process with mean cycle T + 1/λ. Per-user count variance over a
    # window W is W σ²/μ³ (σ = 1/λ): with 200 users and 50 cycles, sd ≈ 0.25% of the mean.
    users, ttl, think = 200, 60.0, 20.0
    result = sim.run(poisson_scenario(make_scenario, users=users, ttl_s=ttl, mean_think_s=think))
    expected = users / (ttl + think)
    mean, se = mean_and_se(result, "reactive", "refresh_rate_per_s")
    assert abs(mean - expected) <= max(4 * se, 0.01 * expected), (mean, expected, se)
    per = result.replications
    # each refresh follows exactly one 401, and every request eventually succeeds
    assert (per["refresh_calls"] == per["expiry_failures"]).all()
    assert (per["failed_requests"] == 0).all() and (per["duplicate_tokens"] == 0).all()


@pytest.mark.parametrize("k", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_bursts_of_k_make_k_minus_1_duplicates_per_expiry_hit_without_single_flight(make_scenario, k):
    strategies = [
        {"name": "plain", "client": {"trigger": "reactive", "single_flight": False}, "server": {"kind": "dual_token"}},
        {"name": "single_flight", "client": {"trigger": "reactive", "single_flight": True}, "server": {"kind": "dual_token"}},
    ]
    result = sim.run(poisson_scenario(make_scenario, users=50, burst=k, strategies=strategies,
                                      replications=2, refresh_time="1ms"))
    per = result.replications.set_index(["strategy", "replication"])
    for rep in range(2):
        plain, single = per.loc[("plain", rep)], per.loc[("single_flight", rep)]
        hits = plain["expiry_failures"] / k  # all k requests of the burst get the 401
        assert plain["refresh_calls"] == plain["expiry_failures"]
        # a hit straddling the window's end may count its 401s but not all its mints
        assert abs(plain["duplicate_tokens"] - (k - 1) * hits) <= k
        assert single["duplicate_tokens"] == 0
        assert single["refresh_calls"] == single["expiry_failures"] / k
    # the hit rate itself is the renewal rate of the single-request case
    mean, se = mean_and_se(result, "single_flight", "refresh_rate_per_s")
    assert abs(mean - 50 / 80) <= max(4 * se, 0.03 * 50 / 80)


def test_timer_refreshes_every_whole_number_of_ticks(make_scenario):
    # ticks every c from login; renew when ≤ h remain: every c * ceil((T - h) / c) seconds, exactly
    c, h, ttl, users = 10.0, 25.0, 60.0, 40
    period = c * math.ceil((ttl - h) / c)  # 40 s
    result = sim.run(poisson_scenario(make_scenario, users=users, ttl_s=ttl, replications=2, strategies=[{
        "name": "timer", "client": {"trigger": "timer", "check_interval": f"{c}s", "threshold": f"{h}s"},
        "server": {"kind": "dual_token"}}]))
    per = result.replications
    window = per["window_s"].iloc[0]
    # each user's count in the window is window/period rounded one way or the other
    assert ((per["refresh_calls"] - users * window / period).abs() <= users).all()
    assert (per["expiry_failures"] == 0).all()


def test_auth_utilization_obeys_the_utilization_law(make_scenario):
    # busy fraction = arrival rate × service time / workers, whatever the arrival process
    scenario = poisson_scenario(make_scenario, users=100, replications=1, refresh_time="20ms")
    result = sim.run(scenario)
    row = result.replications.iloc[0]
    service_s = 0.020 + scenario.auth.verify_time_s + scenario.auth.sign_time_s
    expected = row["refresh_calls"] * service_s / (scenario.auth.workers * row["window_s"])
    assert row["auth_utilization"] == pytest.approx(expected, rel=0.02)


def test_sliding_window_as_long_as_the_lifetime_reissues_on_every_request(make_scenario):
    scenario = poisson_scenario(make_scenario, users=20, replications=1, strategies=[{
        "name": "every", "client": {"trigger": "sliding"},
        "server": {"kind": "sliding", "access_ttl": "60s", "window": "60s"}}])
    row = sim.run(scenario).replications.iloc[0]
    # every request gets a fresh token; an exponential think time can still exceed the lifetime
    lapse = math.exp(-60 / 20)  # P(think > T): such a request finds the token expired
    assert row["refresh_rate_per_s"] * row["window_s"] == pytest.approx(row["requests"] * (1 - lapse), rel=0.05)
    assert row["expiry_failures"] == pytest.approx(row["requests"] * lapse, rel=0.25)


@pytest.mark.slow
def test_replication_ci_covers_the_truth_at_about_the_nominal_rate(make_scenario):
    # 95% t-intervals from 3 replications, 12 independent runs: coverage is Binomial(12, 0.95)
    expected = 60 / 80
    covered = 0
    for seed in range(12):
        s = poisson_scenario(make_scenario, users=60, replications=3)
        res = sim.run(s.replace(run={"seed": seed, "duration_s": 20 * 80.0}), processes=1)
        row = res.aggregate.loc["reactive"]
        covered += abs(row["refresh_rate_per_s"] - expected) <= row["refresh_rate_per_s_ci95"]
    # P(Binomial(12, .95) <= 8) ≈ 0.2%: a lower count means the intervals are too narrow
    assert covered >= 9, covered
    assert stats.binom.cdf(8, 12, 0.95) < 0.01
