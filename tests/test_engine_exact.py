"""Exact event logs on constant inputs: fixed think time, fixed latency, known instants."""

import warnings

import pytest

import sim


def event_times(result, event, outcome=None):
    ev = result.events
    rows = ev[(ev["event"] == event) & ((ev["outcome"] == outcome) if outcome is not None else True)]
    return rows["t_s"].round(6).tolist()


def test_reactive_refreshes_at_the_first_request_after_expiry(make_scenario):
    # login at 0 (token valid to 300); requests every 60 s; the one at 360 finds it expired
    result = sim.run(make_scenario(), events=True)
    assert event_times(result, "mint", "access_login") == [0.0]
    assert event_times(result, "refresh_start") == [360.0, 720.0, 1080.0, 1440.0]
    assert event_times(result, "attempt", "expired") == [360.0, 720.0, 1080.0, 1440.0]
    assert event_times(result, "request", "ok")[:7] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0]
    row = result.replications.iloc[0]
    assert row["requests"] == 30 and row["attempts"] == 34 and row["failed_requests"] == 0
    assert row["duplicate_tokens"] == 0


def test_token_valid_when_sent_expires_in_flight(make_scenario):
    # 200 ms round trip: login mints at 0.1 (exp 300.1); requests leave at 0.2 + 60.2 k; the one
    # sent at 301.2 is expired on arrival at 301.3; with a 2 s leeway it still passes
    scenario = make_scenario(network={"rtt": "200ms"})
    result = sim.run(scenario, events=True)
    assert event_times(result, "mint", "access_login") == [0.1]
    assert event_times(result, "attempt", "expired")[0] == pytest.approx(301.2)
    lenient = sim.run(make_scenario(network={"rtt": "200ms"}, clocks={"leeway": "2s"}), events=True)
    assert event_times(lenient, "attempt", "expired")[0] > 302


def test_timer_refreshes_on_its_ticks(make_scenario):
    # ticks every 60 s; renew when at most 120 s remain: at 180 (exp 300), then 360 (exp 480), …
    scenario = make_scenario(strategies=[{
        "name": "timer", "client": {"trigger": "timer", "check_interval": "60s", "threshold": "2m"},
        "server": {"kind": "dual_token"}}])
    result = sim.run(scenario, events=True)
    assert event_times(result, "refresh_start") == [180.0, 360.0, 540.0, 720.0, 900.0, 1080.0, 1260.0, 1440.0, 1620.0]
    assert event_times(result, "attempt", "expired") == []


def test_proactive_renews_before_the_request(make_scenario):
    scenario = make_scenario(strategies=[{
        "name": "proactive", "client": {"trigger": "proactive", "threshold": "30s"},
        "server": {"kind": "dual_token"}}])
    result = sim.run(scenario, events=True)
    # at 300 only 0 s remain (≤ 30 s): renew before sending
    assert event_times(result, "refresh_start")[:3] == [300.0, 600.0, 900.0]
    assert event_times(result, "attempt", "expired") == []


def test_sliding_reissues_inside_the_window_and_lapses_after_idling(make_scenario):
    scenario = make_scenario(strategies=[{
        "name": "sliding", "client": {"trigger": "sliding"},
        "server": {"kind": "sliding", "access_ttl": "5m", "window": "2m"}}])
    result = sim.run(scenario, events=True)
    # token minted at 0 (exp 300): 240 is the first request with < 120 s left
    assert event_times(result, "mint", "access_reissue")[:3] == [240.0, 480.0, 720.0]
    assert event_times(result, "refresh_start") == []
    idle = sim.run(make_scenario(
        workload={"think_time": "6m"},
        strategies=[{"name": "sliding", "client": {"trigger": "sliding"},
                     "server": {"kind": "sliding", "access_ttl": "5m", "window": "2m"}}]), events=True)
    # every request after a 6-minute think finds the token lapsed: a forced login (a lapse: the
    # API said the token expired), a failed request
    assert event_times(idle, "login", "lapsed") == [360.0, 720.0, 1080.0, 1440.0]
    assert event_times(idle, "login", "forced") == []
    assert idle.replications.iloc[0]["failed_requests"] == 4


def test_burst_without_single_flight_mints_one_token_per_401(make_scenario):
    scenario = make_scenario(workload={"burst_size": 3},
                             auth={"refresh_time": "1ms"})
    result = sim.run(scenario, events=True)
    assert event_times(result, "refresh_start")[:3] == [360.0, 360.0, 360.0]
    row = result.replications.iloc[0]
    assert row["duplicate_tokens"] == 2 * 4 and row["valid_tokens_per_session_max"] == 3


def test_rotation_with_family_reuse_detection_logs_two_racing_tabs_out(make_scenario):
    # two tabs, per-tab storage, both timers fire together: the second presents a rotated token
    scenario = make_scenario(
        population={"tabs": 2},
        auth={"refresh_time": "10ms"},
        strategies=[{"name": "auth0", "client": {"trigger": "timer", "check_interval": "60s",
                                                  "threshold": "150s", "storage": "per_tab"},
                     "server": {"preset": "auth0"}}])
    result = sim.run(scenario, events=True)
    assert event_times(result, "reuse_detected")[0] == pytest.approx(180.01)
    assert event_times(result, "revoke")[0] == pytest.approx(180.01)
    assert event_times(result, "login", "forced")[0] == pytest.approx(180.01)
    graceful = sim.run(make_scenario(
        population={"tabs": 2}, auth={"refresh_time": "10ms"},
        strategies=[{"name": "okta", "client": {"trigger": "timer", "check_interval": "60s",
                                                "threshold": "150s", "storage": "per_tab"},
                     "server": {"preset": "okta"}}]), events=True)
    assert event_times(graceful, "reuse_detected") == [] and len(event_times(graceful, "grace_reuse")) > 0


def test_check_then_write_lets_concurrent_refreshes_both_succeed(make_scenario):
    def run(atomic):
        return sim.run(make_scenario(
            population={"tabs": 2}, auth={"refresh_time": "10ms"},
            strategies=[{"name": "x", "client": {"trigger": "timer", "check_interval": "60s",
                                                 "threshold": "150s", "storage": "per_tab"},
                         "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "family",
                                    "atomic": atomic}}]), events=True)

    assert len(event_times(run(True), "reuse_detected")) > 0
    racy = run(False)
    assert event_times(racy, "reuse_detected") == []
    assert event_times(racy, "refresh_end", "ok")[1:3] == [pytest.approx(180.01)] * 2


def test_same_seed_same_result_and_variants_share_users(make_scenario):
    base = sim.load_scenario(sim_path := __import__("pathlib").Path(__file__).parents[1] / "scenarios/smoke.toml")
    small = base.replace(population={"users": 10}, run={"duration_s": 300.0, "replications": 1})
    a = sim.run(small, processes=1)
    b = sim.run(small, processes=1)
    assert a.summary.equals(b.summary)
    per = a.replications.set_index("strategy")
    # common random numbers: the same users make the same page views under every variant
    assert per.loc["dual_token", "requests"] == per.loc["dual_token_single_flight", "requests"]
    assert sim_path.exists()


def timer_scenario(make_scenario, rtt="0s", **client):
    return make_scenario(
        run={"duration": "1h"}, network={"rtt": rtt}, workload={"think_time": "2h"}, tokens={"access_ttl": "15m"},
        strategies=[{"name": "timer", "client": {"trigger": "timer", "check_interval": "60s", "threshold": "5m", **client},
                     "server": {"kind": "dual_token"}}])


def test_seed_silent_refresh_renews_every_660_s(make_scenario):
    # setInterval from page load: ticks at 60 k; exp - now < 300 in whole seconds: at 600 exactly
    # 300 remain (not < 300), so the tick at 660 renews; the next token (exp 1560) at 1320, …
    result = sim.run(timer_scenario(make_scenario, preset="seed-silent-refresh"), events=True)
    assert event_times(result, "refresh_start") == [660.0, 1320.0, 1980.0, 2640.0, 3300.0]
    # the same with 200 ms round trips: the login mints at 0.1 (exp 900.1, read as 900)
    slow = sim.run(timer_scenario(make_scenario, "200ms", preset="seed-silent-refresh"), events=True)
    assert event_times(slow, "refresh_start") == [660.0, 1320.0, 1980.0, 2640.0, 3300.0]


def test_fixed_phase_with_at_most_renews_on_the_first_tick_under_the_threshold(make_scenario):
    # zero latency: at 600 exactly 300 remain (<= 300): every 600 s
    exact = sim.run(timer_scenario(make_scenario, timer_phase="fixed"), events=True)
    assert event_times(exact, "refresh_start") == [600.0, 1200.0, 1800.0, 2400.0, 3000.0]
    # 200 ms round trips: login mints at 0.1 (exp 900.1): at 600, 300.1 remain; the refresh at
    # 660 mints at 660.1 (exp 1560.1), so 1260 is 0.1 s early again: every 660 s
    result = sim.run(timer_scenario(make_scenario, "200ms", timer_phase="fixed"), events=True)
    assert event_times(result, "refresh_start") == [660.0, 1320.0, 1980.0, 2640.0, 3300.0]


def test_rearmed_timer_drifts_by_the_round_trip(make_scenario):
    # the timer starts when the login answers (0.2) and re-arms 60 s after each tick's work: the
    # tick at 600.2 finds 299.9 s left; the refresh answers at 600.4 (exp 1500.3), the next
    # ticks fall at 660.4 + 60 k, and 1200.4 finds 299.9 left again: every 600 s + the round trip
    result = sim.run(timer_scenario(make_scenario, "200ms", timer_phase="rearm"), events=True)
    assert event_times(result, "refresh_start") == pytest.approx([600.2, 1200.4, 1800.6, 2400.8, 3001.0])


def test_timer_scheduled_from_exp_fires_at_exp_minus_threshold(make_scenario):
    result = sim.run(timer_scenario(make_scenario, timer_phase="exp"), events=True)
    assert event_times(result, "refresh_start") == [600.0, 1200.0, 1800.0, 2400.0, 3000.0]
    strict = sim.run(timer_scenario(make_scenario, timer_phase="exp", compare="lt"), events=True)
    # at exp - threshold exactly, "lt" does not renew; the timer polls check_interval later
    assert event_times(strict, "refresh_start") == [660.0, 1320.0, 1980.0, 2640.0, 3300.0]


def test_login_cost_comes_from_the_server_policy(make_scenario):
    from sim.engine.model import Simulation

    dual = make_scenario()
    sliding = make_scenario(strategies=[{"name": "s", "client": {"trigger": "sliding"},
                                         "server": {"kind": "sliding", "window": "1m"}}])
    for scenario, mints in ((dual, 2), (sliding, 1)):
        scenario = scenario.replace(auth={"login_time": 0.05, "sign_time": 0.001})
        engine = Simulation(scenario, scenario.strategies[0], 0, 1, False)
        assert engine.login_service_s == pytest.approx(0.05 + mints * 0.001)


def returning(make_scenario, away, remember=True, **tokens):
    return make_scenario(
        run={"duration": "3h"}, population={"session_length": "10m", "away": away, "remember_me": remember},
        tokens={"access_ttl": "5m", **tokens})


def test_a_returning_user_refreshes_with_its_remembered_refresh_token_until_it_lapses(make_scenario):
    # visits at 0, 4200 and 8400 (10 minutes each, an hour away); the refresh token of the login
    # at 0 lives until 7200: the second visit refreshes with it, the third finds it lapsed
    result = sim.run(returning(make_scenario, "1h", refresh_ttl="2h"), events=True)
    assert event_times(result, "login", "visit") == [0.0]
    assert event_times(result, "login", "lapsed") == [8400.0]
    assert 4200.0 in event_times(result, "refresh_start")
    row = result.replications.iloc[0]
    assert row["forced_logins"] == 1
    assert row["lapse_logins_per_user_day"] == pytest.approx(1 / (3 / 24))
    # an idle lifetime of 30 minutes lapses over the hour away: every return logs in again
    idle = sim.run(returning(make_scenario, "1h", refresh_ttl="7d", refresh_idle_ttl="30m"), events=True)
    assert event_times(idle, "login", "lapsed") == [4200.0, 8400.0]
    # without "remember me" every visit logs in anew, and none is forced
    forget = sim.run(returning(make_scenario, "1h", remember=False, refresh_ttl="2h"), events=True)
    assert event_times(forget, "login", "visit") == [0.0, 4200.0, 8400.0]
    assert event_times(forget, "login", "lapsed") == []


def test_a_returning_user_with_a_valid_access_token_just_uses_it(make_scenario):
    # back after 2 minutes at 720: the access token refreshed at 360 lives until 660... so take a
    # 15-minute token: the login's token (exp 900) is still valid at 720: no refresh, no login
    result = sim.run(returning(make_scenario, "2m", access_ttl="15m"), events=True)
    assert event_times(result, "login") == [0.0]
    assert event_times(result, "refresh_start")[0] == 960.0  # the first 401, at 900 + 60
    assert event_times(result, "request", "ok")[10:12] == [720.0, 780.0]


def test_a_refused_refresh_comes_back_on_its_own_round_trip(make_scenario):
    # login mints at 0.05 (the server's half of a 100 ms call; exp 300.05); three requests get
    # 401 at 300.1 and refresh the same refresh token at once; an atomic server
    # grants the first and refuses the others (a reused token). Granted calls take 100 ms; a
    # refusal 70 ms: its request leg is the granted call's half (50 ms), its answer leg 20 ms
    def run(**network):
        return sim.run(make_scenario(
            network={"rtt": "0s", "auth_rtt": "100ms", **network}, workload={"burst_size": 3},
            strategies=[{"name": "x", "client": {"trigger": "reactive", "single_flight": False},
                         "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "token"}}],
            run={"duration": "301s"}), events=True)

    split = run(auth_rtt_refused="70ms")
    ends = split.events[split.events["event"] == "refresh_end"]
    assert ends["outcome"].tolist() == ["reuse_detected", "reuse_detected", "ok"]
    assert ends["t_s"].round(6).tolist() == [300.17, 300.17, 300.2]
    assert ends["latency_ms"].round(6).tolist() == [70.0, 70.0, 100.0]
    # the two refusals land together: one forced login (the second waits for it)
    assert event_times(split, "login", "forced") == [300.17]
    assert event_times(split, "mint", "access_login") == [0.05, 300.22]
    # unset, a refusal's round trip is a grant's; shorter than the request leg, the answer is immediate
    same = run()
    assert event_times(same, "refresh_end", "reuse_detected") == [300.2, 300.2]
    assert event_times(run(auth_rtt_refused="20ms"), "refresh_end", "reuse_detected") == [300.15, 300.15]


def test_granted_and_refused_round_trips_are_drawn_together():
    import numpy as np

    from sim.distributions import Empirical, Exponential, Lognormal, Normal, Uniform
    from sim.engine.streams import UserStreams
    from sim.scenario import parse_scenario
    from tests.conftest import scenario_dict

    values = ["10ms", "20ms", "30ms", "40ms"]
    scenario = parse_scenario(scenario_dict(network={
        "rtt": "0s", "auth_rtt": {"dist": "empirical", "values": values},
        "auth_rtt_refused": {"dist": "empirical", "values": ["1ms", "2ms", "3ms", "4ms"]}}))
    streams = UserStreams(scenario, 1, 0, 0)
    trips = [streams.auth_round_trip(float(t)) for t in range(200)]
    # one draw per call: the refused round trip is the same quantile of its own distribution
    assert all(t.refused_s == pytest.approx(t.granted_s / 10) for t in trips)
    assert sorted({round(t.granted_s, 6) for t in trips}) == [0.01, 0.02, 0.03, 0.04]
    # every family's quantile function is its sampler's inverse
    u = (np.arange(2000) + 0.5) / 2000
    rng = np.random.default_rng(3)
    for dist in (Exponential(mean="50ms"), Uniform(low="10ms", high="30ms"), Normal(mean="50ms", sd="5ms"),
                 Lognormal(mean="50ms", sd="20ms"), Empirical(values=values, weights=[1, 1, 1, 5])):
        drawn = np.sort(dist.sample(rng, 20000))
        assert np.quantile(drawn, [0.1, 0.5, 0.9]) == pytest.approx(np.quantile(dist.quantile(u), [0.1, 0.5, 0.9]),
                                                                     rel=0.05), dist


def test_calls_sent_together_share_a_network_moment(make_scenario):
    # a page view of 3 parallel requests every 60 s; round trips 10, 20, 30 or 40 ms
    def attempts(rho):
        result = sim.run(make_scenario(
            network={"rtt": {"dist": "empirical", "values": ["10ms", "20ms", "30ms", "40ms"]},
                     "rtt_correlation": rho},
            workload={"burst_size": 3}, tokens={"access_ttl": "1h"}, run={"duration": "20m"}), events=True)
        ev = result.events
        return ev[ev["event"] == "attempt"].groupby("t_s")["latency_ms"].apply(lambda s: sorted(s.round(6)))

    # fully alike: the three requests of a view take one round trip; views 60 s apart (the
    # host's state long changed) take different ones
    shared = attempts(1.0)
    assert all(len(set(v)) == 1 for v in shared)
    assert len({v[0] for v in shared}) > 1
    # independent draws: the requests of one view differ
    assert any(len(set(v)) > 1 for v in attempts(0.0))
    # the fast engine carries correlated round trips out event by event: the same tables
    scenario = make_scenario(network={"rtt": {"dist": "exponential", "mean": "30ms"}, "rtt_correlation": 0.6},
                             workload={"burst_size": 3}, run={"duration": "20m"})
    fast, exact = sim.run(scenario, engine="fast"), sim.run(scenario, engine="exact")
    assert fast.summary.equals(exact.summary)


def test_in_order_a_refresh_does_not_overtake_a_slower_401_of_its_page_view(make_scenario):
    # a page view of two requests at 300.27 with the login's token (exp 300): the first 401 comes
    # back at 300.28 (10 ms), the second at 300.33 (60 ms); the refresh the first starts takes 20 ms
    def run(in_order, engine="exact"):
        return sim.run(make_scenario(
            network={"rtt": {"dist": "empirical", "values": ["10ms", "60ms"]}, "auth_rtt": "20ms",
                     "in_order": in_order},
            workload={"burst_size": 2}, run={"duration": "301s"},
            strategies=[{"name": "x", "client": {"trigger": "reactive", "single_flight": False},
                         "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "family"}}]),
            events=True, engine=engine)

    def log(result):
        ev = result.events[result.events["t_s"] > 299]
        return [(round(r.t_s, 6), r.event, r.outcome) for r in ev.itertuples() if r.event != "request"]

    assert log(run(False))[:10] == [
        (300.27, "attempt", "expired"), (300.27, "attempt", "expired"),
        (300.28, "refresh_start", ""), (300.29, "mint", "access_refresh"), (300.29, "mint", "refresh_refresh"),
        # independent round trips: the refresh is back at 300.30, before the slower 401
        (300.3, "refresh_end", "ok"), (300.3, "attempt", "ok"),
        # which then refreshes the new refresh token for the same expired one: a duplicate
        (300.33, "refresh_start", ""), (300.34, "mint", "access_refresh_duplicate"),
        (300.34, "mint", "refresh_refresh")]
    kept = run(True)
    assert log(kept)[:13] == [
        (300.27, "attempt", "expired"), (300.27, "attempt", "expired"),
        (300.28, "refresh_start", ""), (300.29, "mint", "access_refresh"), (300.29, "mint", "refresh_refresh"),
        # in order: the slower 401 comes back first (300.33) and refreshes the refresh token the
        # jar still holds, already rotated; the first refresh's answer comes with it
        (300.33, "refresh_start", ""), (300.33, "refresh_end", "ok"), (300.33, "attempt", "ok"),
        (300.34, "reuse_detected", ""), (300.34, "revoke", ""), (300.34, "benign_revocation", ""),
        (300.35, "refresh_end", "reuse_detected"), (300.35, "login", "forced")]
    ends = kept.events[kept.events["event"] == "refresh_end"]
    assert ends["latency_ms"].round(6).tolist()[:2] == [50.0, 20.0]
    assert kept.replications.iloc[0]["duplicate_tokens"] == 0
    # the fast engine carries it out event by event: the same tables
    assert run(True, "fast").summary.equals(kept.summary)


def test_validate_counts_refreshes_that_came_back_after_an_earlier_unanswered_call():
    import pandas as pd

    from loadtests.cli import answer_order

    def records(overtaken: int, n: int = 20, time_scale: float = 1.0) -> pd.DataFrame:
        rows = []
        for i in range(n):
            # a 401 sent at t (answered 10 ms later) and one sent with it, answered 60 ms later; a
            # refresh sent at t + 15 ms, back at t + 40 ms (overtaking) or at t + 65 ms
            t, back_ms = 10.0 * i, 25.0 if i < overtaken else 50.0
            rows += [{"event": "attempt", "user": i % 3, "tab": 0, "t_s": t, "latency_ms": 10.0 / time_scale,
                      "outcome": "expired"},
                     {"event": "attempt", "user": i % 3, "tab": 0, "t_s": t, "latency_ms": 60.0 / time_scale,
                      "outcome": "expired"},
                     {"event": "refresh_end", "user": i % 3, "tab": 0, "t_s": t + (15 + back_ms) / 1000,
                      "latency_ms": back_ms / time_scale, "outcome": "ok"}]
        return pd.DataFrame(rows)

    assert answer_order(records(3)) == (17, 20)
    assert answer_order(records(0)) == (20, 20)
    # scenario times at a time scale, wall round trips
    assert answer_order(records(3, time_scale=40), time_scale=40) == (17, 20)


def test_validate_tells_the_simulation_how_alike_round_trips_sent_together_were():
    import numpy as np
    import pandas as pd

    from loadtests.cli import rtt_correlation

    rng = np.random.default_rng(4)

    def attempts(rho, tau_s, n=4000):
        # 20 calls a second, bursts of 2 sent together; the host's state an AR(1) of step 10 ms
        t = np.sort(np.repeat(rng.uniform(0, n / 20, n // 2), 2))
        steps = int(t[-1] / 0.01) + 1
        a = np.exp(-0.01 / tau_s)
        w = np.empty(steps)
        w[0] = rng.standard_normal()
        for k in range(1, steps):
            w[k] = a * w[k - 1] + np.sqrt(1 - a * a) * rng.standard_normal()
        z = np.sqrt(rho) * w[(t / 0.01).astype(int)] + np.sqrt(1 - rho) * rng.standard_normal(len(t))
        return pd.DataFrame({"event": "attempt", "t_s": t, "latency_ms": np.exp(3 + 0.8 * z)})

    rho, tau = rtt_correlation(attempts(0.6, 0.5))
    assert rho == pytest.approx(0.6, abs=0.08) and tau == pytest.approx(0.5, rel=0.35)
    assert rtt_correlation(attempts(0.0, 0.5)) is None or rtt_correlation(attempts(0.0, 0.5))[0] < 0.08
    # a time scale: the attempts' times are scenario seconds, the lags that count are wall seconds
    scaled = attempts(0.6, 0.5).assign(t_s=lambda d: d["t_s"] * 40)
    assert rtt_correlation(scaled, time_scale=40)[1] == pytest.approx(0.5, rel=0.35)
    assert rtt_correlation(attempts(0.6, 0.5, n=40)) is None  # too few pairs to tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no 0/0 on the way)
        assert rtt_correlation(attempts(0.6, 0.5).assign(latency_ms=25.0)) is None  # all alike: nothing to tell
    # near 1 it is how unlike calls sent together are that decides races between them: read off
    # their differences, it is never 1 (identical round trips), whatever else the run's scores do
    busy = attempts(0.97, 0.5)
    assert rtt_correlation(busy)[0] == pytest.approx(0.97, abs=0.015)
    # calls sent together at busy moments, whose round trips spread wider than the run's:
    # products of the run's scores read above 1 there; differences still give how alike they were
    lone = attempts(0.97, 0.5).iloc[::2].assign(t_s=lambda d: d["t_s"] + 1000.0, latency_ms=lambda d: np.exp(3 + 0.3 * rng.standard_normal(len(d))))
    rho, _ = rtt_correlation(pd.concat([busy, lone], ignore_index=True))
    assert 0.9 < rho < 0.999


def test_the_cyclic_garbage_collector_is_off_during_a_run_and_restored_after(make_scenario):
    import gc

    from sim.engine.model import FastSimulation, Simulation

    seen = []

    for engine in (Simulation, FastSimulation):
        class Watching(engine):
            def _sleep(self, task, effect):
                seen.append(gc.isenabled())
                return super()._sleep(task, effect)

        scenario = make_scenario()
        variant = scenario.variant(scenario.names[0])
        assert gc.isenabled()
        Watching(scenario, variant, 0, 1, False).run()
        assert gc.isenabled()
        gc.disable()
        try:
            Watching(scenario, variant, 0, 1, False).run()
            assert not gc.isenabled()  # left as the caller had it
        finally:
            gc.enable()
    assert seen and not any(seen)


def test_a_run_starts_after_collecting_what_an_earlier_run_left_in_cycles(make_scenario):
    import weakref

    from sim.engine.model import FastSimulation

    scenario = make_scenario()
    variant = scenario.variant(scenario.names[0])
    earlier = FastSimulation(scenario, variant, 0, 1, False)
    earlier.run()
    ledger = weakref.ref(earlier.ledger)
    del earlier
    alive = []

    class Watching(FastSimulation):
        def _sleep(self, task, effect):
            alive.append(ledger() is not None)
            return super()._sleep(task, effect)

    Watching(scenario, variant, 0, 1, False).run()
    assert alive and not any(alive)


def test_a_run_leaves_objects_the_caller_froze_frozen_and_freezes_nothing_itself(make_scenario):
    import gc

    from sim.engine.model import FastSimulation

    scenario = make_scenario()
    variant = scenario.variant(scenario.names[0])
    assert gc.get_freeze_count() == 0
    FastSimulation(scenario, variant, 0, 1, False).run()
    assert gc.get_freeze_count() == 0  # the run's objects were moved on, not left frozen
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        FastSimulation(scenario, variant, 0, 1, False).run()
        assert 0 < gc.get_freeze_count() <= frozen  # not released (a few may have died since)
    finally:
        gc.unfreeze()


def event_queues():
    """Every event queue the engine may run on: the Python calendar queue, and the compiled one
    where it is built."""
    from sim.engine.kernel import KERNEL
    from sim.engine.model import CalendarQueue

    queues = [("calendar", lambda end, width: CalendarQueue(end, width))]
    if KERNEL is not None:
        queues.append(("compiled", lambda end, width: KERNEL.EventQueue(end)))
    return queues


@pytest.mark.parametrize("make_queue", [q for _, q in event_queues()], ids=[name for name, _ in event_queues()])
@pytest.mark.parametrize("users", [1, 3_000, 1_000_000])
def test_the_event_queue_takes_events_by_instant_then_by_when_they_were_scheduled(make_scenario, users, make_queue):
    # instants on and around bucket boundaries, ties, events scheduled by events (some at the
    # same instant), and some at or after the end of the run, which are never taken
    import random
    from types import SimpleNamespace

    from sim.engine.model import bucket_s

    end = make_scenario().run.end_s
    width, rng = bucket_s(users), random.Random(users)
    queue, owner = make_queue(end, width), SimpleNamespace(now=0.0)
    scheduled, taken = [], []

    def instant() -> float:
        k = rng.randrange(int(end / width) + 3)
        return rng.choice([k * width, k * width + width / 3, (k + 1) * width - 2 ** -30, rng.uniform(0, end + width)])

    def schedule(t: float) -> None:
        scheduled.append((t, len(scheduled)))
        queue.at(t, fired, scheduled[-1])

    def fired(event) -> None:
        assert owner.now == event[0]
        taken.append(event)
        if rng.random() < 0.5:
            schedule(owner.now + rng.choice([0.0, width / 2, width, 3 * width, rng.uniform(0, 60)]))

    for _ in range(2_000):
        schedule(instant())
    queue.run(owner)
    assert taken == sorted(e for e in scheduled if e[0] < end)
    assert len(taken) > 2_000


def test_the_compiled_event_queue_lets_go_of_its_events_when_a_call_raises():
    import sys
    from types import SimpleNamespace

    from sim.engine.kernel import KERNEL

    if KERNEL is None:
        pytest.skip("the kernel is not compiled here")
    queue, argument = KERNEL.EventQueue(100.0), object()
    held = sys.getrefcount(argument)

    def fail(_):
        raise RuntimeError("a failing event")

    queue.at(1.0, fail, None)
    for t in (2.0, 3.0, 200.0):  # the last one past the end: never held
        queue.at(t, print, argument)
    assert len(queue) == 3 and sys.getrefcount(argument) == held + 2
    with pytest.raises(RuntimeError):
        queue.run(SimpleNamespace(now=0.0))
    assert len(queue) == 0 and sys.getrefcount(argument) == held
