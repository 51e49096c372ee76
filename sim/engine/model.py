"""The SimPy model of one strategy variant in one replication.

Processes: a user (visits separated by time away), a visit (login, tabs, leave), a tab (page
views, each a burst of parallel requests, think times and idle gaps), a timer per tab when the
client policy has one, requests with their attempts, refresh and login calls through the auth
tier (a finite pool of workers with a queue). Every decision is the strategy objects'; this
module only carries decisions out in virtual time and records what happened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from sim.engine.recorder import Recorder, max_valid_per_session
from sim.engine.streams import UserStreams, arrival_times, user_traits
from sim.scenario import Scenario, Variant
from sim.strategies.client import Held, Response, TabView
from sim.strategies.flow import (
    LOGIN_RETRY_S, RENEW, Adopt, Backoff, Join, Login, Refresh, Renew, Send, basis_of, jar_after_refresh, renew_flow,
    request_flow,
)
from sim.strategies.ledger import Ledger, Token
from sim.strategies.server import Grant

UNAVAILABLE = "unavailable"  # the auth tier's queue timed out (HTTP 503)


@dataclass(eq=False)
class Store:
    """Where an access token lives: shared by a user's tabs, or one per tab."""

    held: Held | None = None


@dataclass(eq=False)
class Flight:
    """The single-flight scope of refreshes: a tab, or a user with a cross-tab lock."""

    inflight: simpy.Event | None = None


@dataclass(eq=False)
class Visit:
    """One user's presence between a login and leaving: the session and its cookie jar."""

    user: int
    streams: UserStreams
    skew_s: float
    jar: Token | None = None  # the refresh token, shared by every tab
    session: int | None = None
    over: bool = False
    login: simpy.Event | None = None
    flight: Flight = field(default_factory=Flight)


@dataclass(eq=False)
class Tab:
    index: int
    visit: Visit
    store: Store
    flight: Flight


def held(token: Token) -> Held:
    return Held(token.id, token.expires_at_s)


class Simulation:
    """One variant, one replication. :meth:`run` returns the filled :class:`Recorder`."""

    def __init__(self, scenario: Scenario, variant: Variant, replication: int, seed: int, keep_events: bool):
        self.scenario = scenario
        self.variant = variant
        self.client = variant.client
        self.server = variant.server
        self.replication = replication
        self.seed = seed
        self.end_s = scenario.run.end_s
        self.env = simpy.Environment()
        self.rec = Recorder(variant.name, replication, keep_events)
        self.ledger = Ledger(observer=self.rec)
        self.auth = simpy.Resource(self.env, capacity=scenario.auth.workers)
        auth = scenario.auth
        mints_login = 1 if self.server.kind == "sliding" else 2
        self.login_service_s = auth.login_time_s + auth.sign_time_s * mints_login
        self.refresh_service_s = auth.refresh_time_s + auth.verify_time_s + auth.sign_time_s * self.server.mints_per_refresh()
        self.api_verify_s = scenario.api.verify_time_s
        self.timeout_s = scenario.network.timeout_s
        self.loss_p = scenario.network.loss_probability
        self.leeway_s = scenario.clocks.leeway_s

    # -- top level --------------------------------------------------------------------------

    def run(self) -> Recorder:
        arrivals = arrival_times(self.scenario, self.seed, self.replication)
        tabs, skews = user_traits(self.scenario, self.seed, self.replication)
        for u in range(self.scenario.population.users):
            streams = UserStreams(self.scenario, self.seed, self.replication, u)
            self.env.process(self.user(u, float(arrivals[u]), int(tabs[u]), float(skews[u]), streams))
        self.env.run(until=self.end_s)
        self.rec.busy.add(0, self.end_s)
        self.rec.queued.add(0, self.end_s)
        self.rec.tally.auth_busy_s = np.asarray(self.rec.busy.bins)
        self.rec.tally.auth_queue_s = np.asarray(self.rec.queued.bins)
        self.rec.tally.valid_tokens_per_session_max = max_valid_per_session(list(self.ledger.tokens.values()), self.end_s)
        return self.rec

    def user(self, u: int, arrival_s: float, n_tabs: int, skew_s: float, streams: UserStreams):
        env = self.env
        yield env.timeout(arrival_s)
        while True:
            length = streams.visit_length() if streams.visit_length else math.inf
            visit = Visit(u, streams, skew_s)
            yield from self.visit(visit, n_tabs, length)
            if streams.away is None:
                return
            yield env.timeout(streams.away())

    def visit(self, visit: Visit, n_tabs: int, length_s: float):
        env, rec = self.env, self.rec
        started = env.now
        rec.tally.active_users_delta[int(started)] += 1
        shared, client = Store(), self.client
        tabs = [Tab(i, visit, shared if client.storage == "shared" else Store(),
                    visit.flight if client.cross_tab_lock else Flight()) for i in range(n_tabs)]
        yield from self.login(tabs[0], forced=False)
        for tab in tabs:
            env.process(self.tab(tab))
            if client.timer_interval_s is not None:
                env.process(self.timer(tab))
        remaining = length_s - (env.now - started)
        if math.isinf(remaining):
            yield env.event()  # stays until the run ends
        yield env.timeout(max(remaining, 0.0))
        visit.over = True
        now = env.now
        rec.tally.active_users_delta[int(now)] -= 1
        rec.record(now, "logout", user=visit.user, session=visit.session)
        session = self.ledger.sessions[visit.session]
        if session.newest_access is not None:
            rec.tally.exposure_t_s.append(now)
            rec.tally.exposure_s.append(max(0.0, self.ledger.tokens[session.newest_access].expires_at_s - now))

    # -- tabs -------------------------------------------------------------------------------

    def tab(self, tab: Tab):
        env, s = self.env, tab.visit.streams
        p_idle = self.scenario.population.idle_probability
        while not tab.visit.over:
            # all but one request of a burst run as processes of their own; this tab's process
            # carries the last one itself (a process per request is SimPy's main cost)
            others = [env.process(self.request(tab)) for _ in range(int(s.burst()) - 1)]
            yield from self.request(tab)
            if others:
                yield env.all_of(others)
            if p_idle and s.idle_coin() < p_idle:
                yield env.timeout(s.idle_gap())
            yield env.timeout(s.think())

    def timer(self, tab: Tab):
        env, interval = self.env, self.client.timer_interval_s
        while True:
            yield env.timeout(interval)
            if tab.visit.over:
                return
            view = self.view(tab)
            action = self.client.on_timer(view, env.now + tab.visit.skew_s)
            if action in RENEW:
                yield from self.carry_out(tab, renew_flow(self.client, action, basis_of(view), lambda: self.view(tab)))

    def view(self, tab: Tab) -> TabView:
        return TabView(tab.store.held, tab.flight.inflight is not None)

    # -- requests ---------------------------------------------------------------------------

    def request(self, tab: Tab):
        env, visit = self.env, tab.visit
        issued, rtts = env.now, []
        flow = request_flow(self.client, lambda: self.view(tab), lambda: env.now + visit.skew_s)
        ok = yield from self.carry_out(tab, flow, rtts)
        if ok:
            added_ms = (env.now - issued - rtts[-1] - self.api_verify_s) * 1000.0
            self.rec.record(issued, "request", "ok", visit.user, tab.index, visit.session, latency_ms=max(round(added_ms, 6), 0.0))
        else:
            self.rec.record(issued, "request", "failed", visit.user, tab.index, visit.session)

    def carry_out(self, tab: Tab, flow, rtts: list | None = None):
        """Run a flow of :mod:`sim.strategies.flow` in virtual time; returns its result.
        The round trip of every attempt is appended to ``rtts``."""
        result = None
        while True:
            try:
                effect = flow.send(result)
            except StopIteration as stop:
                return stop.value
            match effect:
                case Send(held=held):
                    result, rtt = yield from self.attempt(tab, held)
                    rtts.append(rtt)
                case Renew(action=action, basis=basis):
                    result = yield from self.carry_out(tab, renew_flow(self.client, action, basis, lambda: self.view(tab)))
                case Join():
                    result = yield tab.flight.inflight
                case Refresh(basis=basis):
                    result = yield from self.refresh_in_flight(tab, basis)
                case Login():
                    result = yield from self.login(tab, forced=True)
                case Backoff():
                    u = tab.visit.streams.backoff()
                    result = yield self.env.timeout(self.client.retry_delay_s(self.scenario.auth.retry_after_s, u))
                case Adopt(held=held):
                    tab.store.held, result = held, None

    def attempt(self, tab: Tab, sent: Held):
        env, s, visit = self.env, tab.visit.streams, tab.visit
        sent_at, rtt = env.now, s.api_rtt()
        lost = self.loss_p and s.loss() < self.loss_p
        yield env.timeout(rtt / 2)
        verdict = self.server.authorize(self.ledger, self.ledger.tokens[sent.id], env.now, self.leeway_s)
        if lost:
            yield env.timeout(max(self.timeout_s - rtt / 2, 0.0))
            outcome, response = "lost", Response(0)
        else:
            yield env.timeout(rtt / 2 + self.api_verify_s)
            outcome = verdict.status
            reissued = held(verdict.reissued) if verdict.reissued else None
            response = Response(200 if verdict.status == "ok" else 401, reissued)
        self.rec.record(sent_at, "attempt", outcome, visit.user, tab.index, visit.session, sent.id,
                        latency_ms=(env.now - sent_at) * 1000.0)
        return response, rtt

    # -- renewal ----------------------------------------------------------------------------

    def refresh_in_flight(self, tab: Tab, basis: int | None):
        """A refresh call, registered as the one in flight in the tab's single-flight scope when
        the policy is single-flight; returns its outcome (``"ok"`` or a ``refresh_end`` outcome).
        Those who joined it learn whether the tab then holds a new token."""
        flight, done = tab.flight, self.env.event()
        if self.client.single_flight:
            flight.inflight = done
        outcome = yield from self.refresh(tab, basis)
        if flight.inflight is done:
            flight.inflight = None
        done.succeed(outcome == "ok")
        return outcome

    def refresh(self, tab: Tab, basis: int | None):
        env, visit, rec = self.env, tab.visit, self.rec
        if visit.login is not None:  # a login is replacing the session: its tokens will do
            yield visit.login
            return "ok" if tab.store.held is not None else "no_token"
        token = visit.jar
        sent_at, rtt = env.now, visit.streams.auth_rtt()
        lost = self.loss_p and visit.streams.loss() < self.loss_p
        rec.record(sent_at, "refresh_start", user=visit.user, tab=tab.index, session=visit.session,
                   token=token.id, basis=basis)
        yield env.timeout(rtt / 2)
        result = yield from self.auth_call(
            self.refresh_service_s,
            lambda now: self.server.begin_refresh(self.ledger, token, basis, now),
            lambda pending, now: self.server.finish_refresh(self.ledger, pending, now),
        )
        if lost:
            yield env.timeout(max(self.timeout_s - (env.now - sent_at), 0.0))
        else:
            yield env.timeout(rtt / 2)
        outcome = "lost" if lost else (result if isinstance(result, str) else
                                        "ok" if isinstance(result, Grant) else result.reason)
        rec.record(env.now, "refresh_end", outcome, visit.user, tab.index, visit.session, token.id, basis,
                   latency_ms=(env.now - sent_at) * 1000.0)
        if outcome == "ok":
            tab.store.held = held(result.access)
            visit.jar = jar_after_refresh(visit.jar, token, result.refresh)
        return outcome

    def login(self, tab: Tab, *, forced: bool):
        """Log the user in (again, when ``forced``); one login at a time per user."""
        env, visit = self.env, tab.visit
        if visit.login is not None:
            yield visit.login
            return
        visit.login = env.event()
        self.rec.record(env.now, "login", "forced" if forced else "visit", visit.user, tab.index, visit.session)
        while True:
            rtt = visit.streams.auth_rtt()
            yield env.timeout(rtt / 2)
            grant = yield from self.auth_call(
                self.login_service_s, lambda now: None, lambda _, now: self.server.login(self.ledger, visit.user, now)
            )
            yield env.timeout(rtt / 2)
            if grant != UNAVAILABLE:
                break
            yield env.timeout(LOGIN_RETRY_S)  # the login page shows an error; the user tries again
        visit.session, visit.jar = grant.access.session, grant.refresh
        tab.store.held = held(grant.access)
        done, visit.login = visit.login, None
        done.succeed()

    def auth_call(self, service_s: float, begin, finish):
        """Queue for an auth worker (giving up after the queue timeout), then serve: ``begin``
        when the worker picks the call up, ``finish`` after the service time."""
        env, rec, auth = self.env, self.rec, self.auth
        asked = env.now
        limit = self.scenario.auth.queue_limit
        if limit is not None and auth.count >= auth.capacity and len(auth.queue) >= limit:
            return UNAVAILABLE  # the queue is full: shed at once (503 with Retry-After)
        req = auth.request()
        if not req.triggered:
            rec.queued.add(1, asked)
            yield req | env.timeout(self.scenario.auth.queue_timeout_s)
            rec.queued.add(-1, env.now)
        else:
            yield req
        rec.tally.queue_wait_t_s.append(asked)
        rec.tally.queue_wait_ms.append((env.now - asked) * 1000.0)
        if not req.triggered:
            req.cancel()
            return UNAVAILABLE
        rec.busy.add(1, env.now)
        pending = begin(env.now)
        yield env.timeout(service_s)
        result = finish(pending, env.now)
        rec.busy.add(-1, env.now)
        auth.release(req)
        return result
