"""The simulator's ledger forgets the tokens no one can present or look up again, so its size
follows the live tokens over a long run, and every output stays what it is when it keeps them all."""

import pandas as pd
import pytest

import sim
from sim.engine.model import Simulation
from tests.conftest import scenario_dict
from sim.scenario import parse_scenario

ROTATING = {"kind": "dual_token", "rotation": True, "reuse_detection": "family"}
STRATEGIES = [
    # racing tabs without single flight: reuse detections, revocations, stranded tokens, forced logins
    {"name": "family", "client": {"trigger": "reactive", "single_flight": False}, "server": ROTATING},
    # a reuse inside the grace period is answered with the successor pair (looked up by id)
    {"name": "same_pair", "client": {"trigger": "reactive", "single_flight": False},
     "server": {**ROTATING, "grace_period": "2s", "grace_returns": "same_pair"}},
    # the session's newest refresh token is replayed to its parent (looked up by id)
    {"name": "parent_replay", "client": {"trigger": "reactive", "single_flight": False},
     "server": {**ROTATING, "parent_replay": True}},
    # an access token's first use commits its pair (looked up by id)
    {"name": "first_use", "client": {"trigger": "reactive", "single_flight": False},
     "server": {**ROTATING, "commit": "first_use"}},
    # a session row: a concurrent write displaces the token the row holds (looked up by id)
    {"name": "session_row", "client": {"trigger": "reactive", "single_flight": False},
     "server": {**ROTATING, "rotation_store": "session_row", "atomic": False}},
    {"name": "timer", "client": {"trigger": "timer", "check_interval": "60s", "threshold": "2m"},
     "server": {"kind": "dual_token"}},
    {"name": "sliding", "client": {"trigger": "sliding"}, "server": {"kind": "sliding", "window": "2m"}},
]


def long_run(names=None, hours=6, users=4):
    return parse_scenario(scenario_dict(
        run={"seed": 7, "duration": f"{hours}h", "warmup": "0s", "replications": 1},
        population={"users": users, "arrival": {"pattern": "ramp", "over": "2m"}, "tabs": 3,
                    "session_length": {"dist": "exponential", "mean": "50m"},
                    "away": {"dist": "exponential", "mean": "20m"}, "remember_me": True},
        workload={"think_time": {"dist": "exponential", "mean": "40s"}, "burst_size": 2},
        network={"rtt": {"dist": "lognormal", "mean": "60ms", "sd": "30ms"}},
        auth={"workers": 1, "login_time": "20ms", "refresh_time": "20ms"},
        tokens={"access_ttl": "5m", "refresh_ttl": "2h"},
        strategies=[s for s in STRATEGIES if names is None or s["name"] in names],
    ))


def test_forgetting_keeps_the_ledger_small_and_the_outputs_the_same(monkeypatch):
    check(monkeypatch, long_run(["same_pair"], hours=2, users=3), events=False)


@pytest.mark.slow
def test_forgetting_keeps_the_ledger_small_and_every_output_the_same_on_every_server(monkeypatch):
    check(monkeypatch, long_run(), events=True)


def check(monkeypatch, scenario, events):
    monkeypatch.setattr(Simulation, "FORGET_MIN_TOKENS", 8)
    monkeypatch.setattr(Simulation, "FORGET_EVERY_S", 30.0)
    forgot_sessions = []
    for name in scenario.names:
        run = Simulation(scenario, scenario.variant(name), 0, scenario.run.seed, False)
        run.run()
        minted = run.ledger.counters["access_mints"] + run.ledger.counters["refresh_mints"]
        assert minted > 100, name
        left = len(run.ledger.tokens)
        run.FORGET_MIN_TOKENS = 0
        run._forget_at = 0
        run._forget(None)
        live = len(run.ledger.tokens)
        # what stays is what a few users hold (a token each of theirs, the ones they remember, a
        # rotated token's successors), whatever was minted; up to twice that between two passes
        assert live <= 12 * scenario.population.users and left <= max(2 * live, 8) + 4, (name, live, left, minted)
        # and the sessions: those of the tokens kept, and one a user still names
        assert len(run.ledger.sessions) <= 3 * scenario.population.users, (name, len(run.ledger.sessions))
        forgot_sessions.append(len(run.ledger.sessions) < run.ledger.counters["sessions"])
    if len(scenario.names) > 1:
        assert any(forgot_sessions)
    forgetting = sim.run(scenario, processes=1, events=events)
    monkeypatch.setattr(Simulation, "FORGET_EVERY_S", None)
    keeping = sim.run(scenario, processes=1, events=events)
    summary = keeping.summary
    # the run met what the ledger is read for: duplicates, and reuses of rotated tokens
    assert summary["duplicate_tokens"].sum() > 0
    assert summary["reuse_detections"].sum() + summary["resent_pairs"].sum() > 0
    for table in ("summary", "timeseries", "latency") + (("events",) if events else ()):
        pd.testing.assert_frame_equal(getattr(forgetting, table), getattr(keeping, table), check_exact=True)
