"""Measuring a server's race window: the probe's estimate, the estimate from a load test's
records, and the profile lines both print (see sim.strategies.server.DualTokenServer.race_window)."""

from pathlib import Path

import pandas as pd
import pytest

from loadtests.targets.race import RaceProbe, window_from_records
from sim.scenario import parse_scenario

from tests.conftest import scenario_dict


def test_survival_is_made_non_increasing_and_becomes_an_empirical_window():
    probe = RaceProbe([0.0, 0.002, 0.01, 0.05], passed=[15, 16, 6, 0], counted=[20, 20, 20, 20])
    assert probe.survival() == [0.75, 0.75, 0.3, 0.0]
    window = probe.window()
    assert window == {"dist": "empirical", "values": ["0s", "10ms", "50ms"], "weights": [0.25, 0.45, 0.3]}
    # the printed lines are a valid server setting
    line = probe.toml().splitlines()[1]
    assert line.startswith("race_window = ")
    server = {"kind": "dual_token", "rotation": True, "atomic": False, "race_window": window}
    parsed = parse_scenario(scenario_dict(strategies=[{"name": "x", "client": {"trigger": "reactive"},
                                                       "server": server}]))
    assert parsed.variant("x").server.race_window.values == [0.0, 0.01, 0.05]
    assert RaceProbe([0.0], [0], [5]).window() == {"dist": "constant", "value": "0s"}


def test_the_window_a_load_test_met_comes_from_its_refresh_answers():
    def end(t_s, token, outcome, latency_ms, user=0, tab=0):
        return {"t_s": t_s, "event": "refresh_end", "token": token, "outcome": outcome,
                "latency_ms": latency_ms, "user": user, "tab": tab}

    events = pd.DataFrame([
        # token 1 sent at 10.000 (the first), 10.0005 (passed), 10.015 (reuse), 12.0 (too late: no race)
        end(10.100, 1, "ok", 100.0), end(10.0505, 1, "ok", 50.0, tab=1),
        end(10.025, 1, "reuse_detected", 10.0, tab=2), end(12.01, 1, "reuse_detected", 10.0),
        # token 2 presented once: no race; token 3's second presentation expired: not counted
        end(20.05, 2, "ok", 50.0), end(30.01, 3, "ok", 10.0), end(30.02, 3, "expired", 10.0, tab=1),
        {"t_s": 5.0, "event": "attempt", "token": 9, "outcome": "ok", "latency_ms": 3.0, "user": 0, "tab": 0},
    ])
    probe = window_from_records(events)
    assert probe.offsets_s[:6] == [0.0, 0.001, 0.002, 0.005, 0.01, 0.02]
    assert probe.counted == [1, 0, 0, 0, 1, 0, 0, 0] and probe.passed == [1, 0, 0, 0, 0, 0, 0, 0]
    assert window_from_records(events[events["token"] == 2]) is None


def test_validate_checks_are_data_driven_with_their_own_tolerances(make_scenario):
    import dataclasses

    import sim
    from loadtests.cli import AGREEMENT, VALIDATE_METRICS, compare

    simulated = sim.run(make_scenario(run={"replications": 2}, workload={"think_time": "20s", "burst_size": 2}))
    measured = dataclasses.replace(simulated, summary=simulated.summary.copy())
    mean = measured.summary["replication"] == "mean"
    same = compare(simulated, measured, "reactive")
    assert same["agree"].dropna().astype(bool).all() and "added_latency_ms_p99" in set(same["metric"])
    # a rate 15% off fails a 10% check and passes a 20% one; a 0 against 0.6 passes a floor of 1
    measured.summary.loc[mean, "refresh_rate_per_s"] *= 1.15
    simulated.summary["failed_requests"] = 0.0
    measured.summary.loc[mean, "failed_requests"] = 0.6
    checks = [("refresh_rate_per_s", "rate", "rate"), ("refresh_rate_per_s", "rate", "rate", 0.2),
              ("failed_requests", "failed", "rate", AGREEMENT), ("failed_requests", "failed", "rate", AGREEMENT, 1.0)]
    rows = compare(simulated, measured, "reactive", checks)
    assert rows["agree"].tolist() == [False, True, False, True]
    assert rows["tolerance"].tolist() == [AGREEMENT, 0.2, AGREEMENT, AGREEMENT]
    assert all(len(check) in (3, 4, 5) for check in VALIDATE_METRICS)

    # round trips told on the scenario clock (validate --rtt-clock scenario): an added latency is
    # compared in scenario ms, the measured wall ms and the host's floor times the time scale
    simulated.summary["added_latency_ms_p99"] = 800.0  # 80 wall ms at time scale 10
    measured = dataclasses.replace(measured, meta={"latency_floor_ms": 0.5})
    measured.summary["added_latency_ms_p99"] = 80.0
    p99 = [("added_latency_ms_p99", "p99", "rate", 0.2, 1.0)]
    wall, spans = compare(simulated, measured, "reactive", p99), compare(simulated, measured, "reactive", p99, 10.0)
    assert not wall["agree"].iloc[0] and spans["agree"].iloc[0]
    assert spans["measured"].iloc[0] == pytest.approx(800.0)


def test_validate_tells_refusals_round_trips_apart_from_grants(make_scenario):
    import types

    from loadtests.cli import MIN_REFUSED, round_trips

    scenario = make_scenario(auth={"refresh_time": "0s"})

    def records(refused: int) -> pd.DataFrame:
        rows = [{"event": "attempt", "user": 0, "tab": 0, "t_s": float(i), "latency_ms": 5.0, "outcome": "ok"}
                for i in range(10)]
        rows += [{"event": "refresh_end", "user": 0, "tab": 0, "t_s": 100.0 + i, "latency_ms": 150.0,
                  "outcome": "ok"} for i in range(30)]
        rows += [{"event": "refresh_end", "user": 0, "tab": 0, "t_s": 200.0 + i, "latency_ms": 60.0,
                  "outcome": "reuse_detected"} for i in range(refused)]
        return pd.DataFrame(rows)

    def network(refused):
        test = types.SimpleNamespace(result=types.SimpleNamespace(events=records(refused)), scenario=scenario,
                                     strategy="reactive")
        return round_trips(test)

    split = network(MIN_REFUSED)
    assert set(split["auth_rtt"]["values"]) == {0.15} and set(split["auth_rtt_refused"]["values"]) == {0.06}
    pooled = network(MIN_REFUSED - 1)
    values = pooled["auth_rtt"]["values"]
    assert "auth_rtt_refused" not in pooled and (min(values), max(values)) == (0.06, 0.15)


def test_on_the_scenario_clock_validate_tells_refusals_from_calls_sent_alone(make_scenario):
    """A page opening in several tabs sends their renewals together; the server grants the first to
    arrive and refuses the rest, so the refusals sent together are their burst's slowest calls. A
    simulation told those draws them for every refusal — also for the lone late presentation of a
    multi-tab race, whose refusal then comes back after the sibling's forced login has finished (a
    spurious logout the load test seldom shows). On the scenario clock validate tells the
    refusals of calls sent alone (no other refresh call of the user within ``TOGETHER_S`` wall
    seconds); on the wall clock, as before, every refusal."""
    import types

    from loadtests.cli import MIN_REFUSED, TOGETHER_S, refusals_sent_alone, round_trips

    scenario = make_scenario(auth={"refresh_time": "0s"})
    rows = [{"event": "attempt", "user": 0, "tab": 0, "t_s": float(i), "latency_ms": 5.0, "outcome": "ok"}
            for i in range(10)]
    for burst in range(MIN_REFUSED):  # bursts of 4 sent 1 wall ms apart: one grant, three slow refusals
        sent = 100.0 * burst
        rows += [{"event": "refresh_end", "user": 1, "tab": k, "t_s": sent + 0.01 * k + (0.6 if k else 0.5),
                  "latency_ms": 60.0 if k else 50.0, "outcome": "revoked" if k else "ok"} for k in range(4)]
    # lone refusals (a tab presenting a token its sibling has rotated): quicker than the bursts'
    rows += [{"event": "refresh_end", "user": 2, "tab": 0, "t_s": 5000.0 + 10.0 * i, "latency_ms": 30.0,
              "outcome": "reuse_detected"} for i in range(MIN_REFUSED)]
    events = pd.DataFrame(rows)
    lone = refusals_sent_alone(events, 10.0)
    assert len(lone) == MIN_REFUSED and set(lone) == {30.0}
    # a call TOGETHER_S wall seconds or more from any other of its user's is alone
    apart = pd.DataFrame([{"event": "refresh_end", "user": 3, "tab": 0, "t_s": 1.0 + TOGETHER_S * 10 * 1.01 * i,
                           "latency_ms": 0.0, "outcome": "revoked"} for i in range(3)])
    assert len(refusals_sent_alone(apart, 10.0)) == 3
    test = types.SimpleNamespace(result=types.SimpleNamespace(events=events), scenario=scenario,
                                 strategy="reactive", time_scale=10.0)
    wall, spans = round_trips(test), round_trips(test, 10.0)
    assert spans["auth_rtt_refused"]["values"] == pytest.approx([0.3] * len(spans["auth_rtt_refused"]["values"]))
    values = wall["auth_rtt_refused"]["values"]
    assert (min(values), max(values)) == (0.03, 0.06)
    assert spans["auth_rtt"]["values"] == pytest.approx([0.5] * len(spans["auth_rtt"]["values"]))


def test_on_the_scenario_clock_validate_tells_the_simulation_a_login_as_long_as_measured(make_scenario):
    """The simulation's login is one auth round trip and the login's service; the load test's, timed
    until its tokens are stored, also holds the host's own work on the call and its answer, which
    the time scale multiplies. A forced login that ends sooner in the simulation lets more sibling
    refusals come back after it (spurious logouts). Validate tells ``auth.login_time``: the median
    measured login less the median told round trip and the login's signatures."""
    import types

    from loadtests.cli import MIN_LOGINS, told_login_time

    scenario = make_scenario(auth={"login_time": "50ms", "sign_time": "1ms"})
    rows = [{"event": "login", "user": i, "tab": 0, "t_s": float(i), "latency_ms": 100.0 + (i % 3),
             "outcome": "forced"} for i in range(MIN_LOGINS)]
    network = {"rtt": {"dist": "empirical", "values": [0.5]}, "auth_rtt": {"dist": "empirical", "values": [0.8, 0.9]}}

    def told(rows):
        test = types.SimpleNamespace(result=types.SimpleNamespace(events=pd.DataFrame(rows)), scenario=scenario,
                                     strategy="reactive", time_scale=10.0)
        return told_login_time(test, network, 10.0)

    mints = scenario.variant("reactive").server.mints_per_login()
    login = told(rows)  # 1.01 s measured, 0.85 s of round trip, the signatures
    assert login["dist"] == "constant"
    assert float(login["value"][:-2]) == pytest.approx(1010.0 - 850.0 - mints * 1.0, abs=1e-3)
    assert told(rows[:-1]) is None  # too few logins timed: the scenario's own
    quick = [{**row, "latency_ms": 50.0} for row in rows]
    assert float(told(quick)["value"][:-2]) == 0.0  # never below nothing


def test_a_measured_session_counts_as_revoked_at_its_first_refusal_that_says_so():
    from loadtests.measure import build_events
    from sim.metrics import Divergence

    def row(t_s, event, outcome="", session="s1", token="r1"):
        return {"t_s": t_s, "user": 0, "tab": 0, "session": session, "event": event, "token": token,
                "basis": None, "outcome": outcome, "latency_ms": 10.0, "expires_s": float("nan")}

    client = pd.DataFrame([row(1.0, "refresh_start"), row(1.01, "refresh_end", "reuse_detected"),
                           row(1.01, "login", "forced"), row(2.0, "refresh_start", session="s2", token="r2"),
                           row(2.01, "refresh_end", "revoked", session="s2", token="r2"),
                           row(2.01, "login", "forced", session="s2")])
    records = type("R", (), {"client": client, "time_scale": 1.0})()

    def spurious(family):
        events, source = build_events(records, None, "x", revokes_session_on_reuse=family)
        assert source == "client"
        revoked = set(events.loc[events["event"] == "revoke", "session"])
        return revoked, int((Divergence.rows(events)["event"] == "spurious_logout").sum())

    # a token-level reuse refusal revokes nothing (simplejwt's blacklist): that logout is spurious
    assert spurious(False) == ({"s2"}, 1)
    # a family-revoking server (oidc-provider) revoked s1 with its reuse: no spurious logout
    assert spurious(True) == ({"s1", "s2"}, 0)


def test_a_family_revoking_server_detected_one_reuse_per_rotated_token():
    from loadtests.measure import one_reuse_per_rotated_token

    def end(t_s, token, outcome, latency_ms):
        return {"t_s": t_s, "event": "refresh_end", "token": token, "outcome": outcome, "latency_ms": latency_ms}

    client = pd.DataFrame([
        # token a: sent at 10.000 (granted, answered last), 10.001 and 10.002 (refused, answered
        # first: as they arrived the client had not seen a rotated, so it said "revoked")
        end(10.100, "a", "ok", 100.0), end(10.011, "a", "revoked", 10.0), end(10.012, "a", "revoked", 10.0),
        # token b: granted first, then two refusals the client called reuse as they arrived
        end(20.050, "b", "ok", 50.0), end(20.060, "b", "reuse_detected", 30.0), end(20.070, "b", "reuse_detected", 30.0),
        # token c: never granted (its family was already revoked): stays as it was
        end(30.010, "c", "revoked", 10.0),
    ])
    fixed = one_reuse_per_rotated_token(client, 1.0)
    assert fixed["outcome"].tolist() == ["ok", "reuse_detected", "revoked", "ok", "reuse_detected", "revoked", "revoked"]


def test_validate_simulates_each_variant_with_the_race_window_its_own_load_test_met():
    import types

    from loadtests.cli import MIN_RACE_PRESENTATIONS, pooled_window, run_race_windows, with_race_window, with_server_model
    from loadtests.targets.profile import load_profile
    from sim.scenario import load_scenario

    def racing(strategy: str, pairs: int, passed_within_ms: float) -> pd.DataFrame:
        # each token presented twice, the second 7 ms after the first: passed when inside the window
        rows = []
        for k in range(pairs):
            t = 10.0 + k
            rows.append({"t_s": t + 0.05, "event": "refresh_end", "token": k, "outcome": "ok", "latency_ms": 50.0})
            rows.append({"t_s": t + 0.057, "event": "refresh_end", "token": k, "latency_ms": 50.0,
                         "outcome": "ok" if passed_within_ms > 7 else "reuse_detected"})
        return pd.DataFrame(rows).assign(strategy=strategy, user=0, tab=0)

    def test(events):
        return types.SimpleNamespace(result=types.SimpleNamespace(events=events))

    tests = {"wide": test(racing("wide", MIN_RACE_PRESENTATIONS, 10)),
             "narrow": test(racing("narrow", MIN_RACE_PRESENTATIONS, 1)),
             "few": test(racing("few", 2, 10)),
             "none": test(pd.DataFrame(columns=["t_s", "event", "token", "outcome", "latency_ms", "strategy"]))}
    windows = run_race_windows(tests, 1.0, pooled_window(tests, 1.0))
    # its own: every second presentation 7 ms after the first passed (wide: past the last offset
    # measured, 100 ms, the window reaches twice it) or was refused (narrow: none passed from 5 ms on)
    assert windows["wide"][0]["dist"] == "constant" and windows["wide"][0]["value"] == "200ms"
    assert windows["narrow"][0] == {"dist": "constant", "value": "5ms"}
    assert "own load test" in windows["wide"][1]
    # too few of its own: the window of every variant's presentations together
    assert windows["few"][0]["dist"] == "empirical" and "together" in windows["few"][1]
    assert "none" in windows  # the pooled window still applies
    path = Path(__file__).parents[1] / "scenarios" / "peers.toml"
    profile = load_profile("simplejwt-blacklist")
    scenario = with_server_model(load_scenario(path), profile.server_model, path, profile.server_settings)
    told = with_race_window(scenario, "dual_token", windows["narrow"][0])
    assert told.variant("dual_token").server.race_window.value == 0.005
    assert told.variant("silent_refresh").server.race_window == scenario.variant("silent_refresh").server.race_window
    assert told.variant("dual_token").server.race_window_scope == "claim"


def test_added_latency_agrees_within_the_hosts_own_floor_measured_in_the_run(make_scenario):
    import types

    from loadtests.cli import compare, latency_floor_ms

    scenario = make_scenario(run={"warmup": "10s", "duration": "20s"})
    # requests that waited for nothing: one early (warm-up, left out), 98 quick, two stalled by the host
    direct = pd.DataFrame({"t_s": [1.0] + [15.0] * 98 + [16.0] * 2, "added_ms": [50.0] + [0.2] * 98 + [6.0] * 2})
    floor = latency_floor_ms(direct, scenario)
    assert floor == 6.0
    assert latency_floor_ms(direct[direct["t_s"] < 10], scenario) is None

    def result(p99, meta=None):
        name = scenario.names[0]
        row = {"added_latency_ms_p99": p99, "requests": 100.0, "expiry_failures": 0.0, "failed_requests": 0.0,
               "duplicate_tokens": 0.0}
        table = pd.DataFrame([row], index=[name])
        per = pd.DataFrame([{**row, "strategy": name, "replication": 0}])
        return types.SimpleNamespace(aggregate=table, replications=per, scenario=scenario, meta=meta or {})

    metrics = [("added_latency_ms_p99", "added latency p99 ms", "rate", 0.2, 1.0)]
    name = scenario.names[0]
    inside = compare(result(0.0), result(floor, {"latency_floor_ms": floor}), name, metrics)
    assert bool(inside["agree"].iloc[0]) and "host floor" in inside["title"].iloc[0]
    # without the control, only the fixed 1 ms floor
    assert not bool(compare(result(0.0), result(floor), name, metrics)["agree"].iloc[0])
    # a real renewal's latency stands far above the floor
    assert not bool(compare(result(0.0), result(80.0, {"latency_floor_ms": floor}), name, metrics)["agree"].iloc[0])


def test_added_latency_agrees_inside_where_one_more_simulated_run_would_fall(make_scenario):
    import types

    from loadtests.cli import LATENCY_AGREEMENT, LATENCY_FLOOR_MS, _cells, compare, one_more_run

    scenario = make_scenario()
    name = scenario.names[0]
    metrics = [("added_latency_ms_p99", "added latency p99 ms", "rate", LATENCY_AGREEMENT, LATENCY_FLOOR_MS)]
    counts = {"requests": 7600.0, "expiry_failures": 350.0, "failed_requests": 0.0, "duplicate_tokens": 230.0}

    def simulated(p99s, ci95):
        mean = sum(p99s) / len(p99s)
        table = pd.DataFrame([{**counts, "added_latency_ms_p99": mean, "added_latency_ms_p99_ci95": ci95}],
                             index=[name])
        per = pd.DataFrame([{**counts, "strategy": name, "replication": i, "added_latency_ms_p99": v}
                            for i, v in enumerate(p99s)])
        return types.SimpleNamespace(aggregate=table, replications=per, scenario=scenario, meta={})

    def measured(p99):
        return types.SimpleNamespace(aggregate=pd.DataFrame([{**counts, "added_latency_ms_p99": p99}], index=[name]),
                                     meta={"latency_floor_ms": 8.0})

    # the 95% prediction interval for one more run: t·sd·sqrt(1 + 1/n) = ci95·sqrt(n + 1)
    assert one_more_run(50.0, 5) == pytest.approx(50.0 * 6 ** 0.5) and one_more_run(50.0, 1) != one_more_run(50.0, 1)
    # a busy host: the replications' p99 spread 276 ±50; the same users' replication drew a quick
    # host (223), the measurement a slow one (299): +34% from replication 0, inside one more run
    busy = simulated([223.0, 331.0, 262.0, 300.0, 264.0], 50.0)
    row = compare(busy, measured(299.0), name, metrics).iloc[0]
    assert bool(row["agree"]) and row["agreed_by"] == "in PI" and _cells(row)[-1] == "in PI"
    # the earlier model error (round trips drawn independently: 285 ±30 simulated, 157 measured)
    # stays outside it; within 20% of replication 0 agrees as before, without the interval
    wrong = simulated([280.0, 300.0, 270.0, 295.0, 280.0], 30.0)
    assert not bool(compare(wrong, measured(157.0), name, metrics)["agree"].iloc[0])
    row = compare(wrong, measured(300.0), name, metrics).iloc[0]
    assert bool(row["agree"]) and row["agreed_by"] == "" and _cells(row)[-1] == "yes"


def test_validate_tells_round_trips_on_the_scenario_clock_times_the_time_scale(make_scenario):
    """``--rtt-clock scenario``: at time scale s a round trip slept for real spans s times its wall
    length in scenario time, and that is how wide a race against a scenario-time clock is (two tabs'
    timers, ``scenarios/validation_multi_tab.toml``): the simulation is told the spans, the refresh
    service time it adds itself taken off in scenario seconds, and so is the correlation time."""
    import types

    from loadtests.cli import round_trips

    scenario = make_scenario(auth={"refresh_time": "20ms"})
    # 60 attempts sent in pairs 1 ms apart (wall) with alike round trips: a correlation to tell
    rows = [{"event": "attempt", "user": 0, "tab": 0, "t_s": 10.0 * (i // 2) + 0.01 * (i % 2),
             "latency_ms": 40.0 + (i // 2) % 30, "outcome": "ok"} for i in range(120)]
    rows += [{"event": "refresh_end", "user": 0, "tab": 0, "t_s": 1000.0 + i, "latency_ms": 100.0, "outcome": "ok"}
             for i in range(10)]
    test = types.SimpleNamespace(result=types.SimpleNamespace(events=pd.DataFrame(rows)), scenario=scenario,
                                 strategy="reactive", time_scale=10.0)
    wall, spans = round_trips(test), round_trips(test, 10.0)
    assert spans["rtt"]["values"] == pytest.approx([10.0 * v for v in wall["rtt"]["values"]])
    assert min(spans["rtt"]["values"]) == pytest.approx(0.4, rel=0.03)
    # 100 wall ms of refresh call: 80 ms of round trip beside 20 ms of service told on the wall clock,
    # 980 ms beside the same 20 ms on the scenario clock
    assert wall["auth_rtt"]["values"] == pytest.approx([0.08] * len(wall["auth_rtt"]["values"]))
    assert spans["auth_rtt"]["values"] == pytest.approx([0.98] * len(spans["auth_rtt"]["values"]))
    if "rtt_correlation_time" in wall:
        assert float(spans["rtt_correlation_time"][:-2]) == pytest.approx(10 * float(wall["rtt_correlation_time"][:-2]))



@pytest.mark.slow
def test_multi_tab_timer_races_widen_with_the_round_trip_in_scenario_time():
    """Why ``validation_multi_tab.toml`` is validated with ``--rtt-clock scenario``: its reuse
    detections come from a tab whose timer fires within a sibling's refresh round trip, so they grow
    with the round trip's length in scenario time. The load test at time scale 10 sleeps 80 ms round
    trips unscaled (0.8 s of scenario time) and measured 27 and 32 where a simulation told 80 ms gave
    16–22 for the same users; told 0.8 s, the simulation gives more in every replication (the same
    users and draws: seeded), about what was measured."""
    import sim
    from sim.scenario import load_scenario

    path = Path(__file__).parents[1] / "scenarios" / "validation_multi_tab.toml"

    def reuse(rtt_ms: float) -> list[float]:
        told = load_scenario(path, {"network.rtt": {"dist": "lognormal", "mean": f"{rtt_ms:g}ms",
                                                    "sd": f"{rtt_ms * 25 / 80:g}ms"}})
        per = sim.run(told, strategies=["multi_tab_rotation"], processes=1).replications
        return per.sort_values("replication")["reuse_detections"].tolist()

    written, spanned = reuse(80.0), reuse(800.0)
    assert all(s >= w for s, w in zip(spanned, written)), (written, spanned)
    assert sum(spanned) >= 1.25 * sum(written), (written, spanned)
