"""Server mechanisms real servers have, as exact event logs in the simulator (constant inputs)."""

import pytest

import sim
from sim.scenario import ScenarioError, parse_scenario
from sim.strategies.ledger import Ledger
from sim.strategies.server import DualTokenServer, Grant

from tests.conftest import scenario_dict


def event_times(result, event, outcome=None):
    ev = result.events
    rows = ev[(ev["event"] == event) & ((ev["outcome"] == outcome) if outcome is not None else True)]
    return rows["t_s"].round(6).tolist()


def two_racing_tabs(make_scenario, **server):
    # two tabs, per-tab storage, both timers fire at 180 s: two refreshes of one token overlap
    return sim.run(make_scenario(
        population={"tabs": 2}, auth={"refresh_time": "10ms"},
        strategies=[{"name": "x", "client": {"trigger": "timer", "check_interval": "60s",
                                             "threshold": "150s", "storage": "per_tab"},
                     "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "family", **server}}]),
        events=True)


def test_concurrent_replay_gets_the_pair_already_issued(make_scenario):
    racy = two_racing_tabs(make_scenario, atomic=False)
    resent = two_racing_tabs(make_scenario, atomic=False, concurrent_replay="same_pair")
    # tab 1 starts without a token and refreshes at 0; at 180 both timers present refresh token 4
    # and both pass the check: check-then-write mints two pairs, same_pair mints one and re-sends it
    assert event_times(racy, "refresh_end", "ok")[:5] == [0.01, 180.01, 180.01, 360.02, 360.02]
    assert event_times(resent, "refresh_end", "ok")[:5] == [0.01, 180.01, 180.01, 360.02, 360.02]
    assert event_times(racy, "mint", "refresh_refresh")[:5] == [0.01, 180.01, 180.01, 360.02, 360.02]
    assert event_times(resent, "mint", "refresh_refresh")[:3] == [0.01, 180.01, 360.02]
    assert event_times(resent, "resent_pair")[:2] == [180.01, 360.02]
    assert event_times(racy, "resent_pair") == []
    ev = resent.events
    twice = ev[(ev["event"] == "refresh_end") & (ev["t_s"].round(6) == 180.01)]
    assert list(twice["token"]) == [4, 4]
    for result in (racy, resent):
        assert event_times(result, "reuse_detected") == [] and event_times(result, "login", "forced") == []
    row = resent.replications.iloc[0]
    assert row["resent_pairs"] == len(event_times(resent, "resent_pair")) > 0
    assert row["refresh_mints"] == racy.replications.iloc[0]["refresh_mints"] - row["resent_pairs"]


def test_the_ledger_hands_out_the_successor_after_a_check_that_came_first():
    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="token", atomic=False,
                             concurrent_replay="same_pair")
    ledger = Ledger()
    grant = server.login(ledger, user=0, now=0.0)
    first = server.begin_refresh(ledger, grant.refresh, None, 10.0)
    second = server.begin_refresh(ledger, grant.refresh, None, 10.0)  # checked before the rotation
    a = server.finish_refresh(ledger, first, 10.1)
    b = server.finish_refresh(ledger, second, 10.2)
    assert isinstance(a, Grant) and isinstance(b, Grant)
    assert (b.access.id, b.refresh.id) == (a.access.id, a.refresh.id)
    assert ledger.totals()["resent_pairs"] == 1 and ledger.totals()["refresh_mints"] == 2
    late = server.refresh(ledger, grant.refresh, None, 11.0)  # after the rotation: detected
    assert late.reason == "reuse_detected"


def test_same_pair_replay_needs_a_check_then_write_server():
    with pytest.raises(ScenarioError, match="concurrent_replay"):
        parse_scenario(scenario_dict(strategies=[{
            "name": "x", "client": {"trigger": "reactive"},
            "server": {"kind": "dual_token", "rotation": True, "concurrent_replay": "same_pair"}}]))
