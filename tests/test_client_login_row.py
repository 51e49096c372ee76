"""A load test's ``login`` row: kept when the login ends, at the instant it began, with the session
it leaves and the login's own length (``latency_ms``, wall ms until the tokens were stored), which
``validate --rtt-clock scenario`` tells the simulation (``loadtests.cli.told_login_time``).
Driven on gevent with a transport whose login answer the test releases."""

from __future__ import annotations

import time
from pathlib import Path

import gevent
from gevent.event import Event

from loadtests.client import Calls, RecordSink, Reply, ScenarioClock, UserDriver, _Trace
from sim.scenario import load_scenario
from sim.strategies.flow import Open

SCENARIO = Path(__file__).parent / "data" / "peer-small.toml"


class HeldLogin:
    """Answers a login only once ``release`` is set; ``held_ms`` is how long it held the login
    (wall ms from the call to its answer: a part of the login's length)."""

    def __init__(self) -> None:
        self.release = Event()
        self.asked = Event()  # set when a login reaches the transport
        self.held_ms = None

    def login(self, index: int) -> Reply:
        started = time.perf_counter()
        self.asked.set()
        self.release.wait()
        self.held_ms = (time.perf_counter() - started) * 1000.0
        return Reply(200, {"access_token": "a1", "refresh_token": "r1", "expires_in": 10}, received_unix_s=time.time())


def test_a_login_row_keeps_its_start_the_session_it_leaves_and_its_length(tmp_path):
    scenario = load_scenario(SCENARIO)
    transport, sink, clock = HeldLogin(), RecordSink(tmp_path), ScenarioClock(1.0)
    clock.start()
    driver = UserDriver(scenario, scenario.variant("dual_token"), 0, transport, clock, sink, calls=Calls())
    visit = driver.carry_out(None, Open(1), _Trace())
    visit.session = "old"
    tab = visit.tabs[0]
    began_s = clock.now_s()
    login = gevent.spawn(driver.login, tab, forced=True)
    assert transport.asked.wait(timeout=5)  # the login is under way: its row is not kept yet
    seen_s = clock.now_s()
    assert not [row for row in sink.rows if row[4] == "login"]
    transport.release.set()
    login.get(timeout=5)
    (row,) = [row for row in sink.rows if row[4] == "login"]
    t_s, user, tab_index, session, _, _, _, outcome, latency_ms, _ = row
    assert (user, tab_index, session, outcome) == (0, 0, "old", "forced")
    assert began_s <= t_s <= seen_s  # when it began, not when it ended
    assert 0.0 < transport.held_ms <= latency_ms < 5000.0
    assert visit.session != "old" and sink.counters["forced_logins"] == 1
