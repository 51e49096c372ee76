"""Server mechanisms real servers have, as exact event logs in the simulator (constant inputs)."""

import pytest

import sim
from sim.scenario import ScenarioError, parse_scenario
from sim.strategies.ledger import Ledger
from sim.strategies.presets import SERVER_PRESETS
from sim.strategies.server import DualTokenServer, Grant, Rejection

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


def two_tabs_one_token(make_scenario, workers, **server):
    # two tabs, per-tab storage: at 180 s both timers present refresh token 4; with one worker the
    # second check comes one service time (10 ms) after the first, with two both check at 180 s
    return sim.run(make_scenario(
        population={"tabs": 2}, auth={"refresh_time": "10ms", "workers": workers},
        strategies=[{"name": "x", "client": {"trigger": "timer", "check_interval": "60s",
                                             "threshold": "150s", "storage": "per_tab"},
                     "server": {"kind": "dual_token", "rotation": True, "reuse_detection": "token",
                                "atomic": False, **server}}]),
        events=True)


def test_race_window_decides_whether_a_concurrent_replay_passes(make_scenario):
    # one worker: the second presentation is checked 10 ms after the first claimed the token
    short = two_tabs_one_token(make_scenario, 1, race_window="5ms")
    long = two_tabs_one_token(make_scenario, 1, race_window="50ms")
    assert event_times(short, "refresh_start")[1:3] == [180.0, 180.0]
    # 10 ms >= 5 ms: the rotation is visible, the second is reuse (the tab then logs in again)
    assert event_times(short, "refresh_end", "ok")[:2] == [0.01, 180.01]
    assert event_times(short, "refresh_end", "reuse_detected")[:1] == [180.02]
    assert event_times(short, "reuse_detected")[:1] == [180.02]
    assert event_times(short, "login", "forced")[:1] == [180.02]
    # 10 ms < 50 ms: still invisible, the second passes and mints a second pair
    assert event_times(long, "refresh_end", "ok")[:3] == [0.01, 180.01, 180.02]
    assert event_times(long, "mint", "refresh_refresh")[:3] == [0.01, 180.01, 180.02]
    assert event_times(long, "reuse_detected") == [] and event_times(long, "login", "forced") == []
    # two workers, both checked at 180 s: a window of 0 is an atomic server, while check-then-write
    # without a window lets both through (they check before either writes)
    zero = two_tabs_one_token(make_scenario, 2, race_window="0s")
    classic = two_tabs_one_token(make_scenario, 2)
    assert event_times(zero, "refresh_end", "ok")[:2] == [0.01, 180.01]
    assert event_times(zero, "reuse_detected")[:1] == [180.01]
    assert event_times(classic, "refresh_end", "ok")[:3] == [0.01, 180.01, 180.01]
    assert event_times(classic, "reuse_detected") == []


def test_race_window_is_drawn_per_later_presentation_from_the_drivers_generator():
    import numpy as np

    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="token", atomic=False,
                             race_window={"dist": "empirical", "values": ["0s", "20ms"], "weights": [1, 1]})
    rng = np.random.default_rng(5)
    # the first presentation of each token draws nothing; each later one draws once
    expected = iter(np.random.default_rng(5).choice([0.0, 0.02], 24, p=[0.5, 0.5]).tolist())
    ledger = Ledger()
    token = server.login(ledger, user=0, now=0.0).refresh
    passed = refused = 0
    for i in range(8):
        t = 10.0 * (i + 1)
        first = server.begin_refresh(ledger, token, None, t, rng)
        assert first.decision == "ok" and token.claimed_at_s == t
        # 10 ms after the claim: passes when its draw is 20 ms, reuse when it is 0
        second = server.begin_refresh(ledger, token, None, t + 0.01, rng)
        assert second.decision == ("ok" if next(expected) == 0.02 else "reuse_detected")
        grant = server.finish_refresh(ledger, first, t + 0.012)
        server.finish_refresh(ledger, second, t + 0.013)
        # 30 ms after: no draw lets it through
        late = server.refresh(ledger, token, None, t + 0.03, rng)
        assert late.reason == "reuse_detected" and next(expected) in (0.0, 0.02)
        passed += second.decision == "ok"
        refused += second.decision != "ok"
        token = grant.refresh
    totals = ledger.totals()
    assert passed and refused
    assert totals["reuse_detections"] == 8 + refused
    assert totals["refresh_mints"] == 1 + 8 + passed
    with pytest.raises(ValueError, match="generator"):
        server.begin_refresh(ledger, grant.refresh, None, 100.0)
        server.begin_refresh(ledger, grant.refresh, None, 100.001)


def test_race_window_needs_a_check_then_write_server():
    with pytest.raises(ScenarioError, match="race_window"):
        parse_scenario(scenario_dict(strategies=[{
            "name": "x", "client": {"trigger": "reactive"},
            "server": {"kind": "dual_token", "rotation": True, "race_window": "5ms"}}]))


def test_race_window_counts_between_sends_or_checks(make_scenario):
    # one worker: both presentations are sent at 180 s, the second is checked 10 ms after the
    # first (it waited for the worker). Between checks 10 ms >= 5 ms: reuse; between sends 0 < 5 ms
    checked = two_tabs_one_token(make_scenario, 1, race_window="5ms")
    sent = two_tabs_one_token(make_scenario, 1, race_window="5ms", race_window_offsets="sent")
    assert event_times(checked, "reuse_detected")[:1] == [180.02]
    assert event_times(sent, "refresh_end", "ok")[:3] == [0.01, 180.01, 180.02]
    assert [t for t in event_times(sent, "reuse_detected") if t < 181] == []
    # the reference is the earliest-sent presentation the server has seen, even one that was refused
    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="token", atomic=False,
                             race_window="5ms", race_window_offsets="sent")
    ledger = Ledger()
    token = server.login(ledger, user=0, now=0.0).refresh
    assert server.begin_refresh(ledger, token, None, 10.05, sent_s=10.0).decision == "ok"
    # sent before the first (arrives later): offset 0 from itself, passes
    assert server.begin_refresh(ledger, token, None, 10.2, sent_s=9.999).decision == "ok"
    assert token.first_sent_s == 9.999
    assert server.begin_refresh(ledger, token, None, 10.3, sent_s=10.003).decision == "ok"
    assert server.begin_refresh(ledger, token, None, 10.006, sent_s=10.006).decision == "reuse_detected"


def test_race_window_drawn_per_claim_decides_every_later_presentation_together():
    import numpy as np

    def later_decisions(scope, seed):
        server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="token", atomic=False,
                                 race_window={"dist": "empirical", "values": ["0s", "20ms"], "weights": [1, 1]},
                                 race_window_scope=scope)
        rng, ledger = np.random.default_rng(seed), Ledger()
        groups = []
        for _ in range(40):
            token = server.login(ledger, user=0, now=0.0).refresh
            first = server.begin_refresh(ledger, token, None, 10.0, rng)
            # three later presentations 10 ms after the claim
            groups.append(tuple(server.begin_refresh(ledger, token, None, 10.01, rng).decision for _ in range(3)))
            assert first.decision == "ok"
        return groups

    claim = later_decisions("claim", 1)
    # one draw per claim: all three pass (a 20 ms window) or none does (0 s)
    assert set(claim) == {("ok",) * 3, ("reuse_detected",) * 3}
    # per presentation the three are drawn apart: mixed groups appear
    assert any(len(set(g)) > 1 for g in later_decisions("presentation", 1))
    with pytest.raises(ScenarioError, match="race_window_scope"):
        parse_scenario(scenario_dict(strategies=[{
            "name": "x", "client": {"trigger": "reactive"},
            "server": {"kind": "dual_token", "rotation": True, "atomic": False, "race_window_scope": "claim"}}]))


# -- grace modes, deferred commit, GoTrue's parent replay ---------------------------------------


def test_a_grace_replay_accepted_but_answered_unauthenticated_revokes_nothing():
    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="family", grace_period="10s",
                             grace_returns="unauthenticated")
    ledger = Ledger()
    grant = server.login(ledger, user=0, now=0.0)
    assert isinstance(server.refresh(ledger, grant.refresh, None, 1.0), Grant)
    assert server.refresh(ledger, grant.refresh, None, 2.0) == Rejection("unauthenticated")
    session = ledger.session_of(grant.refresh)
    assert not session.revoked and ledger.counters["grace_reuses"] == 1 and ledger.counters["reuse_detections"] == 0
    assert ledger.counters["access_mints"] == 2  # the login's and the rotation's: the replay minted nothing
    assert server.refresh(ledger, grant.refresh, None, 20.0) == Rejection("reuse_detected") and session.revoked


def test_deferred_commit_lets_concurrent_refreshes_succeed_and_commits_a_child_on_first_use():
    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="family", commit="first_use")
    ledger = Ledger()
    grant = server.login(ledger, user=0, now=0.0)
    session = ledger.session_of(grant.refresh)
    committed = grant.refresh.id
    a, b = (server.refresh(ledger, grant.refresh, None, 10.0) for _ in range(2))
    assert isinstance(a, Grant) and isinstance(b, Grant) and a.refresh.id != b.refresh.id
    assert session.current_refresh == committed and ledger.counters["reuse_detections"] == 0
    # the committed token mints children for ever, changing nothing
    assert isinstance(server.refresh(ledger, grant.refresh, None, 11.0), Grant)
    # the first use of b's access token commits b's refresh token
    assert server.authorize(ledger, b.access, 12.0).status == "ok" and session.current_refresh == b.refresh.id
    assert server.authorize(ledger, a.access, 12.5).status == "ok" and session.current_refresh == b.refresh.id
    # the old committed token and a's child are now theft: the session is revoked
    assert server.refresh(ledger, a.refresh, None, 13.0) == Rejection("reuse_detected") and session.revoked


def test_deferred_commit_by_presenting_the_child():
    server = DualTokenServer(access_ttl="5m", rotation=True, reuse_detection="family", commit="first_use")
    ledger = Ledger()
    grant = server.login(ledger, user=0, now=0.0)
    child = server.refresh(ledger, grant.refresh, None, 10.0)
    grandchild = server.refresh(ledger, child.refresh, None, 20.0)
    session = ledger.session_of(grant.refresh)
    assert isinstance(grandchild, Grant) and session.current_refresh == child.refresh.id
    assert server.refresh(ledger, grant.refresh, None, 30.0) == Rejection("reuse_detected") and session.revoked


def test_gotrue_answers_the_parent_of_the_newest_token_at_any_time():
    server = DualTokenServer.model_validate({**SERVER_PRESETS["gotrue"], "access_ttl": "5m"})
    ledger = Ledger()
    grant = server.login(ledger, user=0, now=0.0)
    first = server.refresh(ledger, grant.refresh, None, 10.0)
    # a minute later (past the 10 s reuse interval) the parent of the newest token is answered
    # with a new access token and that same newest refresh token
    again = server.refresh(ledger, grant.refresh, None, 70.0)
    assert isinstance(again, Grant) and again.refresh.id == first.refresh.id and again.access.id != first.access.id
    assert ledger.counters["grace_reuses"] == 1 and ledger.counters["refresh_mints"] == 2
    # a grandparent inside the reuse interval gets a new pair; after it, the family is revoked
    second = server.refresh(ledger, first.refresh, None, 100.0)
    third = server.refresh(ledger, second.refresh, None, 101.0)
    swap = server.refresh(ledger, first.refresh, None, 105.0)
    assert isinstance(swap, Grant) and swap.refresh.id not in (second.refresh.id, third.refresh.id)
    session = ledger.session_of(grant.refresh)
    assert not session.revoked
    assert server.refresh(ledger, grant.refresh, None, 200.0) == Rejection("reuse_detected") and session.revoked


@pytest.mark.parametrize("store", ["per_token", "session_row"])
def test_check_then_lock_orderings_are_atomic_or_check_then_write(store):
    # two presentations of one refresh token, both checked before either writes (check A,
    # check B, then each takes the token's lock and writes, A first). Written out as the orderings
    # a server may have, each with the policy's own decision rule (_check):
    def outcomes(server: DualTokenServer, recheck: bool) -> list[str]:
        ledger = Ledger()
        token = server.login(ledger, 0, 0.0).refresh
        checked = [server._check(ledger, token, 1.0) for _ in "AB"]  # both before either writes
        got = []
        for first in checked:  # under the lock, in turn
            decision = server._check(ledger, token, 1.0) if recheck else first
            pending = server.begin_refresh(ledger, token, None, 1.0)  # a fresh call, for its write
            result = server.finish_refresh(ledger, type(pending)(token, None, decision), 1.0)
            got.append("ok" if isinstance(result, Grant) else result.reason)
        return got

    def interleaved(server: DualTokenServer) -> list[str]:
        # the option as engines run it: begin A, begin B, finish A, finish B
        ledger = Ledger()
        token = server.login(ledger, 0, 0.0).refresh
        pending = [server.begin_refresh(ledger, token, None, 1.0) for _ in "AB"]
        return ["ok" if isinstance(r, Grant) else r.reason
                for r in (server.finish_refresh(ledger, p, 1.0) for p in pending)]

    base = {"kind": "dual_token", "access_ttl": "5m", "rotation": True, "reuse_detection": "token",
            "rotation_store": store}
    atomic, racy = DualTokenServer(**base), DualTokenServer(**base, atomic=False)
    # lock-then-check, and check-lock-recheck: the check that counts is under the lock = atomic
    assert outcomes(racy, recheck=True) == interleaved(atomic) == ["ok", "reuse_detected"]
    # check-lock-write without a recheck: the lock only orders the writes = atomic = false
    assert outcomes(racy, recheck=False) == interleaved(racy) == ["ok", "ok"]
