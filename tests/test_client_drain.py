"""The end of a load test (``loadtests.client.Calls``): once closing, no call starts, and the
close waits for the calls under way to be answered and recorded, so the client's records cover
the calls the server saw. Driven on gevent with a transport whose answers the test releases."""

from __future__ import annotations

import time
from pathlib import Path

import gevent
import pytest
from gevent.event import Event

from loadtests.client import Calls, RecordSink, Reply, ScenarioClock, UserDriver, _Ended, _Trace
from sim.scenario import load_scenario
from sim.strategies.flow import Open

SCENARIO = Path(__file__).parent / "data" / "peer-small.toml"


class HeldTransport:
    """Answers a refresh only once ``release`` is set; counts what reached it."""

    def __init__(self) -> None:
        self.release = Event()
        self.refreshes = 0

    def login(self, index: int) -> Reply:
        return Reply(200, {"access_token": "a0", "refresh_token": "r0", "expires_in": 10}, received_unix_s=time.time())

    def refresh(self, refresh_token: str, basis: str | None) -> Reply:
        self.refreshes += 1
        self.release.wait()
        n = self.refreshes
        return Reply(200, {"access_token": f"a{n}", "refresh_token": f"r{n}", "expires_in": 10},
                     received_unix_s=time.time())

    def api(self, access_token: str) -> Reply:
        return Reply(200, received_unix_s=time.time())


def driver_and_tab(calls: Calls):
    scenario = load_scenario(SCENARIO)
    transport, sink, clock = HeldTransport(), RecordSink(), ScenarioClock(1.0)
    clock.start()
    driver = UserDriver(scenario, scenario.variant("dual_token"), 0, transport, clock, sink, calls=calls)
    visit = driver.carry_out(None, Open(1), _Trace())
    visit.jar = "r0"
    return driver, visit.tabs[0], transport, sink


def test_closing_waits_for_a_refresh_under_way_and_starts_no_new_call():
    calls = Calls()
    driver, tab, transport, sink = driver_and_tab(calls)
    first = gevent.spawn(driver.refresh, tab, None)
    gevent.sleep(0)
    assert transport.refreshes == 1 and calls.open == 1
    closing = gevent.spawn(calls.close, 5.0)
    gevent.sleep(0)
    assert not closing.ready()  # the refresh under way holds the end
    with pytest.raises(_Ended):
        driver.refresh(tab, None)  # nothing starts once closing: not counted, not sent
    with pytest.raises(_Ended):
        driver.attempt(tab, tab.store.token)
    transport.release.set()
    assert closing.get(timeout=5) == 0 and first.get(timeout=5) == "ok"
    assert transport.refreshes == 1 and sink.counters["refresh_calls"] == 1
    assert sink.counters["refresh_mints"] == 1 and sink.counters["access_mints"] == 1


def test_closing_is_bounded_and_says_how_many_calls_are_still_under_way():
    calls = Calls()
    driver, tab, transport, _ = driver_and_tab(calls)
    stuck = gevent.spawn(driver.refresh, tab, None)
    gevent.sleep(0)
    assert calls.close(0.05) == 1
    stuck.kill()
    assert calls.open == 0
