"""The mechanisms the browser lab exposed, as exact event logs on constant inputs: per-tab
polling timers over a store every tab copied at login (oidc-client-ts), hidden tabs whose timers
wake on one coarse grid (Chrome's throttling), and a client that keeps a dead refresh token and
tries it again (``on_refused = "keep"``); a cross-tab lock whose next holder may read storage
not yet updated (``stale_read``), and a lock wait that gives up (``on_lock_timeout``)."""

import pandas as pd
import pytest

import sim
from sim.engine.streams import UserStreams
from sim.strategies.client import Held, TabView, TimerClient

OIDC = {"trigger": "timer", "timer_phase": "poll", "check_interval": "5s", "threshold": "60s", "storage": "copied",
        "on_refused": "keep"}


def _tabs(make_scenario, client, tabs=4, gap="300ms", think="10m", duration="100s"):
    return make_scenario(
        run={"seed": 1, "duration": duration, "warmup": "0s", "replications": 1},
        population={"users": 1, "tabs": tabs, "tab_opening_gap": gap},
        workload={"think_time": think, "burst_size": 1},
        network={"rtt": "20ms"},
        tokens={"access_ttl": "90s"},
        strategies=[{"name": "lab", "client": client, "server": {"preset": "oidc-provider"}}])


def _log(result, events=("login", "refresh_start", "refresh_end", "reuse_detected", "revoke")):
    ev = result.events
    rows = ev[ev["event"].isin(events)]
    return [(round(r.t_s, 6), None if pd.isna(r.tab) else int(r.tab), r.event, r.outcome) for r in rows.itertuples()]


def test_poll_timers_renew_once_per_tab_at_each_tabs_own_poll(make_scenario):
    # login mints at 0.01 (exp 90.01): every tab holds a copy; tab i opened at 0.3 i polls every
    # 5 s from then and renews at its first poll at or after 30.01 with the jar's newest refresh
    # token: tabs 1-3 at 30.3, 30.6, 30.9, tab 0 at 35; each then every 30 s from its own renewal
    result = sim.run(_tabs(make_scenario, OIDC), events=True, engine="exact")
    starts = [t for t, _, e, _ in _log(result) if e == "refresh_start"]
    assert starts == [30.3, 30.6, 30.9, 35.0, 60.32, 60.62, 60.92, 65.02, 90.34, 90.64, 90.94, 95.04]
    row = result.replications.iloc[0]
    assert row["refresh_calls"] == 12 and row["reuse_detections"] == 0 and row["forced_logins"] == 0


def test_hidden_tabs_on_one_wake_up_present_the_same_token_and_collapse(make_scenario):
    # Chrome's 1 s grid, its phase drawn per visit (seed 2: 0.187): hidden tabs 1 and 2 (polls
    # at 30.3 and 30.6) both run at 31.187 and present the refresh token tab 3 (in front, not
    # throttled, 30.9) just got: one rotates it, the other is reuse; the grant is revoked, and
    # every later renewal meets the revoked grant (tab 1 re-armed at its renewal, 31.21: its next
    # poll after 61.20 is 61.21, on the grid 62.19). Each tab's timer then waits for a new token
    # that never comes (no login: the dead session is kept)
    scenario = _tabs(make_scenario, {**OIDC, "wake_up": "1s"}).replace(run={"seed": 2})
    phase = UserStreams(scenario, 2, 0, 0).wake_phase()
    assert phase == pytest.approx(0.187, abs=1e-3)
    result = sim.run(scenario, events=True, engine="exact")
    g = 31 + phase
    assert [(pytest.approx(t, abs=1e-4), tab, e, o) for t, tab, e, o in _log(result)] == [
        (0.0, 0, "login", "visit"),
        (30.9, 3, "refresh_start", ""), (30.92, 3, "refresh_end", "ok"),
        (g, 1, "refresh_start", ""), (g, 2, "refresh_start", ""),
        (g + 0.01, None, "reuse_detected", ""), (g + 0.01, None, "revoke", ""),
        (g + 0.02, 1, "refresh_end", "ok"), (g + 0.02, 2, "refresh_end", "reuse_detected"),
        (g + 4, 0, "refresh_start", ""), (g + 4.02, 0, "refresh_end", "revoked"),
        (60.92, 3, "refresh_start", ""), (60.94, 3, "refresh_end", "revoked"),
        (g + 31, 1, "refresh_start", ""), (g + 31.02, 1, "refresh_end", "revoked"),
    ]
    row = result.replications.iloc[0]
    assert row["reuse_detections"] == 1 and row["forced_logins"] == 0
    # a grid phase between the two polls (seed 3: 0.406) puts them on different wake-ups: no race
    apart = _tabs(make_scenario, {**OIDC, "wake_up": "1s"}).replace(run={"seed": 3})
    assert UserStreams(apart, 3, 0, 0).wake_phase() == pytest.approx(0.406, abs=1e-3)
    assert sim.run(apart, engine="exact").replications.iloc[0]["reuse_detections"] == 0


def test_the_front_tab_is_not_throttled(make_scenario):
    # one tab: it is in front, so the wake-up grid does not move its polls
    alone = sim.run(_tabs(make_scenario, {**OIDC, "wake_up": "1s"}, tabs=1), events=True, engine="exact")
    assert [t for t, _, e, _ in _log(alone) if e == "refresh_start"] == [35.0, 65.02, 95.04]


def test_keep_tries_the_dead_refresh_token_on_every_need(make_scenario):
    # two tabs, a shared cache, no lock: page views 40 s after the previous one ended (the
    # first at 0.02, after the login); at 40.04 the token has 50 s left (stale under 60 s) and
    # both renew with one refresh token: reuse, the grant is revoked. With "keep" nobody logs
    # in: every later page view presents the dead token again and its request fails
    client = {"trigger": "proactive", "threshold": "60s", "storage": "shared", "on_refused": "keep", "max_retries": 0}
    result = sim.run(_tabs(make_scenario, client, tabs=2, gap="0s", think="40s", duration="130s"), events=True,
                     engine="exact")
    log = [(t, e, o) for t, _, e, o in _log(result) if e in ("refresh_end", "login")]
    assert log == [(0.0, "login", "visit"),
                   (40.06, "refresh_end", "ok"), (40.06, "refresh_end", "reuse_detected"),
                   (80.08, "refresh_end", "revoked"), (80.1, "refresh_end", "revoked"),
                   (120.1, "refresh_end", "revoked"), (120.12, "refresh_end", "revoked")]
    row = result.replications.iloc[0]
    # every request from 40 s on fails: the winner's new token was revoked with the grant
    # (oidc-provider revokes access tokens on reuse) and the SDK does not renew on a 401
    assert row["forced_logins"] == 0 and row["failed_requests"] == 6
    relogin = sim.run(_tabs(make_scenario, {**client, "on_refused": "login"}, tabs=2, gap="0s", think="40s",
                            duration="130s"), events=True, engine="exact")
    assert relogin.replications.iloc[0]["forced_logins"] >= 1


def test_tabs_opened_at_one_instant_poll_together_and_race_without_throttling(make_scenario):
    # a burst: tabs 1 and 2 open together 0.3 s after tab 0, so their 5 s polls fall at the same
    # instants: both renew at 30.3 with the refresh token tab 0's login left (tab 0 polls at
    # 35): one rotates it, the other is reuse and the grant is revoked
    scenario = _tabs(make_scenario, OIDC, tabs=3, duration="40s").replace(
        population={"tab_opening_offsets": ["300ms", "300ms"]})
    # a fourth tab would follow the last by the gap (300 ms)
    assert scenario.population.tab_offsets_s(4) == (0.0, 0.3, 0.3, 0.6)
    log = [(t, tab, e, o) for t, tab, e, o in _log(sim.run(scenario, events=True, engine="exact"))]
    assert log == [(0.0, 0, "login", "visit"), (30.3, 1, "refresh_start", ""), (30.3, 2, "refresh_start", ""),
                   (30.31, None, "reuse_detected", ""), (30.31, None, "revoke", ""),
                   (30.32, 1, "refresh_end", "ok"), (30.32, 2, "refresh_end", "reuse_detected"),
                   (35.0, 0, "refresh_start", ""), (35.02, 0, "refresh_end", "revoked")]
    # a mean gap of 0.2 s instead (0, 0.2, 0.4) would put them apart: no race
    apart = _tabs(make_scenario, OIDC, tabs=3, gap="200ms", duration="40s")
    assert sim.run(apart, engine="exact").replications.iloc[0]["reuse_detections"] == 0


LOCKED = {"trigger": "proactive", "threshold": "60s", "storage": "shared", "single_flight": True, "cross_tab_lock": True,
          "on_refused": "keep", "max_retries": 0}


@pytest.mark.parametrize("engine", ["exact", "fast"])
def test_a_lock_with_a_stale_read_window_hands_the_old_refresh_token_to_the_next_holder(make_scenario, engine):
    # two tabs, one shared cache under a cross-tab lock, both page views at 40.04 (the token
    # stale under 60 s): tab 0 renews, tab 1 waits for the lock. Reading storage fresh, tab 1
    # finds tab 0's new token when the lock comes to it at 40.06; inside a 5 ms stale-read
    # window it reads the old pair, presents the rotated refresh token and the grant is revoked
    def log(stale_read):
        result = sim.run(_tabs(make_scenario, {**LOCKED, "stale_read": stale_read}, tabs=2, gap="0s", think="40s",
                               duration="90s"), events=True, engine=engine)
        return _log(result), result.replications.iloc[0]

    fresh, row = log("0s")
    assert fresh == [(0.0, 0, "login", "visit"), (40.04, 0, "refresh_start", ""), (40.06, 0, "refresh_end", "ok"),
                     (80.08, 0, "refresh_start", ""), (80.1, 0, "refresh_end", "ok")]
    assert row["reuse_detections"] == 0 and row["failed_requests"] == 0
    stale, row = log("5ms")
    assert stale == [(0.0, 0, "login", "visit"), (40.04, 0, "refresh_start", ""), (40.06, 0, "refresh_end", "ok"),
                     (40.06, 1, "refresh_start", ""), (40.07, None, "reuse_detected", ""), (40.07, None, "revoke", ""),
                     (40.08, 1, "refresh_end", "reuse_detected"),
                     (80.08, 0, "refresh_start", ""), (80.1, 0, "refresh_end", "revoked")]
    assert row["reuse_detections"] == 1


@pytest.mark.parametrize("engine", ["exact", "fast"])
def test_a_lock_timeout_that_gives_up_fails_the_need_instead_of_refreshing(make_scenario, engine):
    # tab 0's renewal holds the lock 20 ms (40.04-40.06); tab 1 waits at most 10 ms: refreshing
    # on its own it presents the token in flight (reuse); auth0-spa-js 2.x's TimeoutError
    # instead fails tab 1's page view and nothing else happens
    def run(action):
        client = {**LOCKED, "lock_timeout": "10ms", "on_lock_timeout": action}
        result = sim.run(_tabs(make_scenario, client, tabs=2, gap="0s", think="40s", duration="50s"), events=True,
                         engine=engine)
        return _log(result), result.replications.iloc[0]

    log, row = run("refresh")
    assert log[1:] == [(40.04, 0, "refresh_start", ""), (40.05, 1, "refresh_start", ""), (40.06, 0, "refresh_end", "ok"),
                       (40.06, None, "reuse_detected", ""), (40.06, None, "revoke", ""),
                       (40.07, 1, "refresh_end", "reuse_detected")]
    log, row = run("fail")
    assert log[1:] == [(40.04, 0, "refresh_start", ""), (40.06, 0, "refresh_end", "ok")]
    assert (row["refresh_calls"], row["reuse_detections"], row["failed_requests"]) == (1, 0, 1)


def test_the_stale_read_window_as_a_pure_answer():
    client = sim.strategies.client.ProactiveClient(threshold="60s", stale_read="5ms")
    assert client.reads_stale(False, 40.0, 40.004) and not client.reads_stale(False, 40.0, 40.005)
    assert not client.reads_stale(True, 40.0, 40.0) and not client.reads_stale(False, None, 40.0)
    assert not sim.strategies.client.ProactiveClient(threshold="60s").reads_stale(False, 40.0, 40.0)


@pytest.mark.parametrize("client", [OIDC, {**OIDC, "wake_up": "1s"}])
def test_the_fast_engine_agrees(make_scenario, client):
    scenario = _tabs(make_scenario, client, think="7s", duration="200s")
    exact = sim.run(scenario, events=True, engine="exact")
    fast = sim.run(scenario, events=True, engine="fast")
    pd.testing.assert_frame_equal(exact.summary, fast.summary)


def test_poll_ticks_and_the_wake_up_grid_as_pure_answers():
    policy = TimerClient.model_validate({**OIDC, "wake_up": "1s", "whole_seconds": True})
    view = TabView(Held("a", 90.7))
    # due at floor(90.7) - 60 = 30: polls from 0.3 every 5 s; the first at or after 30 is 30.3
    assert policy.next_tick_s(view, 0.3, 0.3) == pytest.approx(30.3)
    assert policy.wake_s(30.3, 0.0) == 31.0 and policy.wake_s(30.3, None) == 30.3
    assert policy.wake_s(31.0, 0.0) == 31.0 and policy.wake_s(30.3, 0.55) == pytest.approx(30.55)
    assert policy.rearmed_s(0.3, 31.02) == 31.02
    assert not policy.renews_again("a", "a") and policy.renews_again("b", "a")
