"""Auth-tier service times as distributions: one rule (:mod:`sim.strategies.service`) for the
simulator and the reference server, each drawing with its own randomness."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.streams import UserStreams
from sim.strategies.service import ServiceTimes

VARIANT = {"name": "dual", "client": {"trigger": "reactive"}, "server": {"kind": "dual_token", "rotation": True}}


def test_constant_service_times_need_no_draw(make_scenario):
    scenario = make_scenario(auth={"login_time": "40ms", "refresh_time": "5ms", "sign_time": "2ms",
                                   "verify_time": "1ms"}, strategies=[VARIANT])
    service = ServiceTimes(scenario.auth, scenario.strategies[0].server)

    def never(part):
        raise AssertionError("a constant needs no draw")

    assert service.constant
    assert service.login_s(never) == pytest.approx(0.040 + 2 * 0.002)
    assert service.refresh_s(never) == pytest.approx(0.005 + 0.001 + 2 * 0.002)


def test_a_call_draws_each_part_and_each_signature(make_scenario):
    scenario = make_scenario(auth={"login_time": {"dist": "exponential", "mean": "10ms"}, "sign_time": "1ms"},
                             strategies=[VARIANT])
    service = ServiceTimes(scenario.auth, scenario.strategies[0].server)
    asked = []

    def draw(part):
        asked.append(part)
        return 0.5

    assert not service.constant
    # parts given as constants are their value; the others are drawn, one signature at a time
    assert service.login_s(draw) == pytest.approx(0.5 + 2 * 0.001)
    assert asked == ["login_time"]
    spread = make_scenario(auth={"sign_time": {"dist": "uniform", "low": "1ms", "high": "3ms"}}, strategies=[VARIANT])
    asked.clear()
    ServiceTimes(spread.auth, spread.strategies[0].server).refresh_s(draw)
    assert sorted(asked) == ["refresh_time", "sign_time", "sign_time", "verify_time"]


def test_the_simulator_draws_service_times_from_streams_of_each_user(make_scenario):
    scenario = make_scenario(auth={"login_time": {"dist": "exponential", "mean": "10ms"}})
    one = UserStreams(scenario, 1, 0, 5)
    draws = np.array([one.service("login_time") for _ in range(4000)])
    assert draws.mean() == pytest.approx(0.010, rel=0.06)  # sd of the mean ≈ 1.6%
    assert draws.std() == pytest.approx(0.010, rel=0.1)
    again = UserStreams(scenario, 1, 0, 5)
    assert [again.service("login_time") for _ in range(10)] == draws[:10].tolist()
    other = UserStreams(scenario, 1, 0, 6)
    assert [other.service("login_time") for _ in range(10)] != draws[:10].tolist()


def test_the_reference_server_spends_service_times_drawn_from_the_scenario(make_scenario):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from loadtests.server import protocol as p
    from loadtests.server.app import create_app

    scenario = make_scenario(auth={"login_time": {"dist": "exponential", "mean": "10ms"}, "sign_time": "0s",
                                   "refresh_time": {"dist": "uniform", "low": "1ms", "high": "3ms"},
                                   "verify_time": "0s"}, strategies=[VARIANT])
    app = create_app(scenario, "dual", time_scale=1000.0)
    spent = []
    tier = app.state.server.tier
    real_spend = tier.spend

    async def spend(service_s):
        spent.append(service_s)
        await real_spend(service_s)

    tier.spend = spend
    with TestClient(app) as client:
        for i in range(150):
            answer = client.post(p.LOGIN_PATH, data={"username": f"u{i}", "password": p.TEST_PASSWORD})
            assert answer.status_code == 200
        logins = np.array(spent[0::2])  # login_time, then the signatures (0 s here)
        assert (np.array(spent[1::2]) == 0).all()
        spent.clear()
        refresh = answer.json()["refresh_token"]
        for _ in range(50):
            answer = client.post(p.TOKEN_PATH, data={"grant_type": "refresh_token", "refresh_token": refresh})
            assert answer.status_code == 200
            refresh = answer.json()["refresh_token"]
    # exponential with mean 10 ms: 150 draws, sd of their mean ≈ 8.2%
    assert logins.mean() == pytest.approx(0.010, rel=0.25) and len(set(logins.tolist())) == 150
    assert min(spent) >= 0.001 and max(spent) <= 0.003 and len(set(spent)) == 50
