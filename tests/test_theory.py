"""The simulator against closed-form answers, over seeded replications.

Tolerances: each check allows the larger of a few standard errors of the replication mean and a
small relative band, and the bands were chosen from the renewal-process variance (see each test),
not from observed output.
"""

import math

import numpy as np

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


# -- the auth tier as a queue: M/M/1 and M/D/1 -------------------------------------------------

def single_worker_scenario(make_scenario, service, *, users=4000, rate_per_s=50.0):
    """Logins only: users arrive as a Poisson stream of ``rate_per_s``, each logs in once (zero
    round trip, so the logins reach the tier as that Poisson stream); one worker whose service is
    ``service`` (signatures cost nothing); the window leaves out the first and last 10 s."""
    arrivals_s = users / rate_per_s
    return make_scenario(
        run={"seed": 5, "warmup": "10s", "duration": f"{arrivals_s - 20:g}s", "replications": 1},
        population={"users": users, "arrival": {"pattern": "poisson", "rate_per_s": rate_per_s}},
        workload={"think_time": "1000h"},
        network={"rtt": "0s"},
        tokens={"access_ttl": "1000h", "refresh_ttl": "1000h"},
        auth={"workers": 1, "login_time": service, "sign_time": "0s"},
        strategies=[{"name": "login", "client": {"trigger": "reactive"}, "server": {"kind": "dual_token"}}],
    )


def queue_waits_ms(scenario, replications):
    """Per replication, every login's wait for the worker (ms) inside the window, exactly."""
    import numpy as np

    from sim.engine import ENGINES
    from sim.metrics import summarize

    out = []
    for r in range(replications):
        rec = ENGINES["fast"](scenario, scenario.strategies[0], r, scenario.run.seed, True).run()
        waits = np.frombuffer(rec.counts.queue_wait_values, dtype=float).copy()
        # the summary's p99 is the same sample's quantile
        row = summarize(rec.counts, strategy="login", replication=r, users=scenario.population.users,
                        warmup_s=scenario.run.warmup_s, duration_s=scenario.run.duration_s, workers=1)[0]
        assert row["auth_queue_wait_ms_p99"] == np.quantile(waits, 0.99, method="lower")
        out.append(waits)
    return out


def md1_wait_cdf(t_s, rate_per_s, service_s):
    """P(W <= t) in M/D/1 (Erlang's formula): (1-ρ) Σ_{k=0}^{⌊t/D⌋} (λ(kD-t))^k / k! e^{-λ(kD-t)}; an
    alternating sum, numerically sound for t up to a few service times."""
    rho = rate_per_s * service_s
    return (1 - rho) * sum((rate_per_s * (k * service_s - t_s)) ** k / math.factorial(k)
                           * math.exp(-rate_per_s * (k * service_s - t_s))
                           for k in range(int(t_s // service_s) + 1))


@pytest.mark.slow
def test_queue_waits_of_one_worker_at_half_load_follow_mm1_and_md1(make_scenario):
    # λ = 50/s, 10 ms mean service: ρ = 0.5. Exponential service (M/M/1): P(W > t) = ρ e^{-(μ-λ)t},
    # p99 = ln(ρ/0.01)/(μ-λ) ≈ 78 ms. Constant service (M/D/1): Erlang's formula, p99 ≈ 33 ms.
    # Means by Pollaczek–Khinchine, E[W] = λE[S²]/(2(1-ρ)): 10 ms and 5 ms. Per replication
    # ~3,000 waits; successive waits are correlated, so the tolerance is taken from the spread
    # of the replications (4 standard errors), with a floor of 5% (p99) and 8% (mean).
    from scipy.optimize import brentq

    rate, service, reps = 50.0, 0.010, 4
    rho, mu = rate * service, 1 / service
    theory = {
        "exponential": {"p99": 1000 * math.log(rho / 0.01) / (mu - rate),
                        "mean": 1000 * rate * 2 * service ** 2 / (2 * (1 - rho))},
        "constant": {"p99": 1000 * brentq(lambda t: md1_wait_cdf(t, rate, service) - 0.99, 1e-6, 0.1),
                     "mean": 1000 * rate * service ** 2 / (2 * (1 - rho))},
    }
    assert theory["exponential"]["p99"] == pytest.approx(78.2, abs=0.1)
    assert theory["constant"]["p99"] == pytest.approx(33.4, abs=0.1)
    measured = {}
    for kind, dist in (("exponential", {"dist": "exponential", "mean": "10ms"}), ("constant", "10ms")):
        per = queue_waits_ms(single_worker_scenario(make_scenario, dist, rate_per_s=rate), reps)
        assert min(len(w) for w in per) > 2500
        for stat, floor, of in (("p99", 0.05, lambda w: float(np.quantile(w, 0.99, method="lower"))),
                                ("mean", 0.08, lambda w: float(w.mean()))):
            values = np.array([of(w) for w in per])
            mean, se = values.mean(), values.std(ddof=1) / math.sqrt(reps)
            expected = theory[kind][stat]
            assert abs(mean - expected) <= max(4 * se, floor * expected), (kind, stat, mean, expected, se)
            measured[kind, stat] = mean
        # the whole wait distribution, where it is estimated more sharply than its 99th
        # percentile: P(W > 0) = ρ in any M/G/1, and the tail at 20 and 50 ms
        tail = {"exponential": lambda t: rho * math.exp(-(mu - rate) * t),
                "constant": lambda t: 1 - md1_wait_cdf(t, rate, service)}[kind]
        for t_ms in (0.0, 20.0, 50.0):
            shares = np.array([(w > t_ms).mean() for w in per])
            mean, se = shares.mean(), shares.std(ddof=1) / math.sqrt(reps)
            expected = tail(t_ms / 1000)
            assert abs(mean - expected) <= max(4 * se, 0.01), (kind, t_ms, mean, expected, se)
    # service-time variability more than doubles the tail a capacity answer must plan for
    assert measured["exponential", "p99"] > 2 * measured["constant", "p99"]


def test_auth_utilization_uses_the_mean_of_a_service_distribution(make_scenario):
    # the utilization law holds for any service distribution: busy = rate × E[S] / workers
    scenario = poisson_scenario(make_scenario, users=60, replications=1, refresh_time="0s")
    scenario = scenario.replace(auth={"refresh_time": {"dist": "exponential", "mean": "20ms"},
                                      "sign_time": {"dist": "uniform", "low": "0ms", "high": "2ms"},
                                      "workers": 1})
    row = sim.run(scenario, processes=1).replications.iloc[0]
    service_s = 0.020 + scenario.auth.verify_time_s + 0.001
    expected = row["refresh_calls"] * service_s / row["window_s"]
    # ~900 calls of sd ≈ 20 ms each: the sum's relative sd is about 3.4%
    assert row["auth_utilization"] == pytest.approx(expected, rel=0.15)
