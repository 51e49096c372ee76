"""Invariants that hold for any scenario (hypothesis)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim
from sim.engine.streams import user_traits
from sim.metrics import METRIC_COLUMNS, TIMESERIES_COLUMNS
from sim.strategies.client import Action, Held, ProactiveClient, Response, TabView, TimerClient
from sim.scenario import parse_scenario
from tests.conftest import scenario_dict

seconds = st.floats(min_value=0, max_value=1e5, allow_nan=False)


@given(exp=seconds, now=seconds, threshold=st.floats(0, 600), refreshing=st.booleans(), sf=st.booleans())
def test_proactive_client_never_chooses_to_send_a_token_it_thinks_expired(exp, now, threshold, refreshing, sf):
    client = ProactiveClient(threshold_s=threshold, single_flight=sf)
    action = client.before_send(TabView(Held(1, exp), refreshing), now)
    if action is Action.SEND:
        assert exp - now > threshold >= 0
    else:
        assert action is (Action.WAIT if sf and refreshing else Action.REFRESH)


@given(attempt=st.integers(1, 5), retries=st.integers(0, 3), status=st.sampled_from([0, 200, 401, 503]))
def test_clients_stop_after_their_retries(attempt, retries, status):
    client = TimerClient(check_interval_s=60, threshold_s=60, max_retries=retries)
    action = client.on_response(TabView(Held(1, 100.0)), Held(1, 100.0), Response(status), attempt, 0.0)
    if status == 200:
        assert action is Action.DONE
    elif attempt > retries:
        assert action is Action.FAIL


client_tables = st.one_of(
    st.builds(lambda sf, lock: {"trigger": "reactive", "single_flight": sf, "cross_tab_lock": lock},
              st.booleans(), st.booleans()),
    st.builds(lambda sf, th: {"trigger": "proactive", "single_flight": sf, "threshold": f"{th}s"},
              st.booleans(), st.integers(0, 60)),
    st.builds(lambda sf, iv, th: {"trigger": "timer", "single_flight": sf, "check_interval": f"{iv}s",
                                  "threshold": f"{th}s"}, st.booleans(), st.integers(1, 60), st.integers(0, 90)),
)
server_tables = st.one_of(
    st.just({"kind": "dual_token"}),
    st.builds(lambda reuse, grace, atomic: {"kind": "dual_token", "rotation": True, "reuse_detection": reuse,
                                            "grace_period": f"{grace}s", "atomic": atomic},
              st.sampled_from(["none", "token", "family"]), st.integers(0, 5), st.booleans()),
)


@st.composite
def scenarios(draw):
    variants = [{"name": f"v{i}", "client": {**draw(client_tables), "storage": draw(st.sampled_from(["shared", "per_tab"]))},
                 "server": draw(server_tables)} for i in range(draw(st.integers(1, 2)))]
    if draw(st.booleans()):
        variants.append({"name": "sliding", "client": {"trigger": "sliding"},
                         "server": {"kind": "sliding", "access_ttl": "3m", "window": f"{draw(st.integers(1, 200))}s"}})
    return parse_scenario(scenario_dict(
        run={"seed": draw(st.integers(0, 2**16)), "duration": "15m", "warmup": f"{draw(st.integers(0, 120))}s"},
        population={"users": draw(st.integers(1, 4)), "tabs": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 3))},
                    "arrival": {"pattern": "ramp", "over": "1m"}, "idle_probability": 0.1,
                    "idle_gap": {"dist": "exponential", "mean": "3m"}},
        workload={"think_time": {"dist": "exponential", "mean": f"{draw(st.integers(2, 60))}s"},
                  "burst_size": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 5))}},
        network={"rtt": {"dist": "lognormal", "mean": f"{draw(st.integers(1, 300))}ms", "sd": "20ms"},
                 "loss_probability": draw(st.sampled_from([0.0, 0.02])), "timeout": "5s"},
        clocks={"client_skew": {"dist": "uniform", "low": "-20s", "high": "20s"}},
        auth={"refresh_time": draw(st.sampled_from([
                  f"{draw(st.integers(0, 50))}ms", {"dist": "exponential", "mean": f"{draw(st.integers(1, 50))}ms"},
                  {"dist": "lognormal", "mean": "20ms", "sd": "30ms"}])),
              "login_time": draw(st.sampled_from(["50ms", {"dist": "empirical", "values": ["10ms", "40ms", "2s"]}])),
              "sign_time": draw(st.sampled_from(["1ms", {"dist": "normal", "mean": "1ms", "sd": "2ms"}])),
              "workers": draw(st.integers(1, 3)), "instances": draw(st.sampled_from([1, 1, 2]))},
        tokens={"access_ttl": "3m"},
        strategies=variants,
    ))


#: examples per run of the property tests: a few in the default run, many more in the slow pass
#: (.ci/run runs both), whose real-time load tests leave the cores room for them
FEW, MANY = 6, 40


def check_invariants(scenario):
    result = sim.run(scenario, events=True, processes=1)
    per, series, ev = result.replications, result.timeseries, result.events
    # counts are never negative
    numeric = [c for c in METRIC_COLUMNS if c in per]
    assert (per[numeric].fillna(0) >= 0).all().all()
    assert (series[TIMESERIES_COLUMNS[3:]].fillna(0) >= 0).all().all()
    # every request ends exactly once, and needs at least one attempt to succeed
    requests = ev[ev["event"] == "request"]
    assert set(requests["outcome"]) <= {"ok", "failed"}
    for (strategy, _), group in ev.groupby(["strategy", "replication"]):
        ok = (group["event"].eq("request") & group["outcome"].eq("ok")).sum()
        assert (group["event"] == "attempt").sum() >= ok
    # every duplicate shares its (session, basis) with an earlier, first mint
    mints = ev[(ev["event"] == "mint") & ev["outcome"].str.startswith("access")]
    for (strategy, session, basis), group in mints.dropna(subset=["basis"]).groupby(["strategy", "session", "basis"]):
        flags = group.sort_values("t_s", kind="stable")["outcome"].str.endswith("_duplicate").tolist()
        assert flags[0] is False and all(flags[1:])
    assert not mints[mints["basis"].isna()]["outcome"].str.endswith("_duplicate").any()
    # a proactive client never sends a token its own clock says is expired (skew < lifetime)
    _, skew = user_traits(scenario, scenario.run.seed, 0)
    for variant in scenario.strategies:
        if variant.client.trigger != "proactive":
            continue
        mine = ev[ev["strategy"] == variant.name]
        exp = (mine[mine["event"] == "mint"].set_index("token")["t_s"] + variant.server.access_ttl_s).to_dict()
        attempts = mine[mine["event"] == "attempt"]
        client_now = attempts["t_s"].to_numpy() + skew[attempts["user"].to_numpy(int)]
        token_exp = np.array([exp[int(t)] for t in attempts["token"]])
        assert (client_now <= token_exp + 1e-9).all()


@settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_invariants_of_any_run(scenario):
    check_invariants(scenario)


@pytest.mark.slow
@settings(max_examples=MANY, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_invariants_of_many_more_runs(scenario):
    check_invariants(scenario)
