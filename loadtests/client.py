"""The client side of a load test: a :class:`~sim.strategies.client.ClientPolicy` carried out over
real HTTP with gevent. The life of a request and of a renewal is the shared
:mod:`sim.strategies.flow`, which the simulator's engine runs too; this module carries its
effects out.

One :class:`UserDriver` is one user: visits (login, tabs, leave), tabs as greenlets doing page
views (bursts of parallel requests, so races are real), a timer greenlet per tab when the policy
has one, single-flight refreshes and logins. Every decision is the policy's; this module only acts
and records, in *scenario time* (wall seconds since ``t0`` times the time scale, the same clock
as the reference server's ledger).

HTTP goes through a :class:`Transport` (the Locust user supplies one over its ``FastHttpSession``),
so nothing here imports Locust.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gevent
from gevent.event import AsyncResult, Event
from gevent.pool import Group

from sim.engine.streams import AuthRoundTrip, UserStreams, arrival_times, user_traits
from sim.scenario import Scenario, Variant
from sim.strategies.client import Held, Response, StoreWrite, TabView
from sim.strategies.flow import (
    LIVE, LOGIN_RETRY_S, Adopt, Await, Backoff, Clear, Close, Cookies, Jitter, Join, Login, Open, Pause, Refresh, Renew,
    Request, Reread, Send, Sleep, WakePhase, Spawn, drive, jar_write, renew_flow, request_flow, user_flow,
)
from loadtests.targets.classify import Classifier
from loadtests.targets.profile import TargetProfile, reference_profile
from loadtests.targets.tokens import expires_unix, held_of, token_id
#: columns of the client's record files: the ``events`` columns without strategy/replication,
#: plus ``expires_s`` (scenario expiry of the token a ``mint`` or ``logout`` row is about)
RECORD_COLUMNS = ["t_s", "user", "tab", "session", "event", "token", "basis", "outcome", "latency_ms", "expires_s"]
#: columns of the Locust request rows a process writes (``events.request``; ``t_s`` in scenario time)
LOCUST_COLUMNS = ["t_s", "request_type", "name", "response_time_ms", "response_length", "exception"]
#: columns of the control rows a process writes: the added latency (wall ms) of every request that
#: made one attempt and waited for nothing (no renewal, no retry), which the model puts at exactly 0:
#: what the host alone adds to a request in that run (``direct-*.parquet``)
DIRECT_COLUMNS = ["t_s", "added_ms"]


class ScenarioClock:
    """Scenario time of a load-test process: ``(wall − t0) × time_scale``.

    Receives the time scale (scenario seconds per wall second) and ``t0`` (epoch seconds, set
    later with :meth:`start` when None). Converts epoch instants (JWT ``exp``) and wall durations."""

    def __init__(self, time_scale: float, t0_unix_s: float | None = None) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = float(time_scale)
        self.t0_unix_s = t0_unix_s

    def start(self, t0_unix_s: float | None = None) -> None:
        """Set scenario time 0 to ``t0_unix_s`` (now when None), unless already set."""
        if self.t0_unix_s is None:
            self.t0_unix_s = time.time() if t0_unix_s is None else t0_unix_s

    def now_s(self) -> float:
        """Scenario seconds since t0."""
        return (time.time() - self.t0_unix_s) * self.time_scale

    def at_unix(self, unix_s: float) -> float:
        """The scenario time of an epoch instant."""
        return (unix_s - self.t0_unix_s) * self.time_scale

    def wall(self, seconds: float) -> float:
        """A scenario duration in wall seconds."""
        return seconds / self.time_scale

    def sleep(self, seconds: float) -> None:
        """Sleep a scenario duration."""
        gevent.sleep(max(seconds, 0.0) / self.time_scale)


@dataclass(slots=True)
class Reply:
    """What a transport got back: ``status`` (0 when no answer came: refused, reset, timed out),
    the JSON body (None when none), ``reissued`` / ``reissued_expires_in`` (sliding header pair),
    ``error`` (``error_description`` of a 400 or 401), and ``received_unix_s`` (epoch seconds)."""

    status: int
    body: dict | None = None
    reissued: str | None = None
    reissued_expires_in: float | None = None
    error: str | None = None
    received_unix_s: float = 0.0
    #: a 503's ``Retry-After`` in wall seconds (None when absent or not a number of seconds)
    retry_after_s: float | None = None


class Transport(Protocol):
    """The three HTTP calls a client makes; each returns a :class:`Reply` and never raises for
    network or HTTP errors."""

    def login(self, index: int) -> Reply:
        """Log in user ``index`` (the profile says with which credentials)."""

    def refresh(self, refresh_token: str, basis: str | None) -> Reply: ...

    def api(self, access_token: str) -> Reply: ...


@dataclass(frozen=True, slots=True)
class Token:
    """A token as the client holds it: the JWT string, what the policy sees of it (``held``:
    ``jti`` and expiry in scenario seconds), and its ``sid`` claim."""

    raw: str
    held: Held
    session: str | None

    @property
    def id(self) -> str:
        return self.held.id


def read_token(raw: str, clock: ScenarioClock, received_unix_s: float, expires_in: Any = None,
               fmt: str = "jwt", default_ttl_s: float | None = None) -> Token:
    """What the client learns of a token (:mod:`loadtests.targets.tokens`): a JWT's ``jti``,
    ``sid`` and ``exp`` read without verifying it (``exp`` refined by ``expires_in``), or for an
    opaque token a hash of the string and the expiry ``expires_in`` (else ``default_ttl_s``,
    scenario seconds) says."""
    expires = expires_unix(raw, received_unix_s, expires_in, fmt, default_ttl_s, clock.time_scale)
    held, sid = held_of(raw, clock.at_unix(expires) if math.isfinite(expires) else math.inf)
    return Token(raw, held, sid)


class RecordSink:
    """A process's client records and counters.

    Rows (:data:`RECORD_COLUMNS`) are kept in memory and written as parquet chunks
    ``client-<pid>-<n>.parquet`` into ``folder`` when ``chunk_rows`` accumulate and on :meth:`flush`;
    with no folder, only the counters are kept. ``counters`` are running totals (see
    :data:`COUNTERS`); :meth:`take_counters` hands out what accumulated since the last call."""

    def __init__(self, folder: str | Path | None = None, chunk_rows: int = 200_000) -> None:
        self.folder = Path(folder) if folder else None
        self.chunk_rows = chunk_rows
        self.rows: list[tuple] = []
        #: (t_s, added wall ms) of requests that made one attempt and waited for nothing
        self.direct: list[tuple] = []
        self.counters: Counter[str] = Counter()
        self._unsent: Counter[str] = Counter()
        self._chunks = itertools.count()

    def record(self, t_s: float, user: int, tab: int | None, session: str | None, event: str,
               token: str | None = None, basis: str | None = None, outcome: str = "",
               latency_ms: float = math.nan, expires_s: float = math.nan) -> None:
        """Keep one row (the vocabulary of :mod:`sim.metrics`)."""
        if self.folder is None:
            return
        self.rows.append((t_s, user, tab, session, event, token, basis, outcome, latency_ms, expires_s))
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self.counters[name] += n
        self._unsent[name] += n

    def take_counters(self) -> dict[str, int]:
        """The counts accumulated since the previous call (to send to a Locust master)."""
        out, self._unsent = dict(self._unsent), Counter()
        return out

    def flush(self) -> Path | None:
        """Write the kept rows as one parquet chunk; returns its path (None when nothing to write)."""
        rows, self.rows = self.rows, []
        direct, self.direct = self.direct, []
        self.write_chunk("direct", DIRECT_COLUMNS, direct)
        return self.write_chunk("client", RECORD_COLUMNS, rows, strings=("session", "token", "basis"))

    def write_chunk(self, prefix: str, columns: list[str], rows: list[tuple], strings: tuple[str, ...] = ()) -> Path | None:
        """Write ``rows`` as ``<prefix>-<pid>-<n>.parquet`` into the folder (``strings``: columns
        stored as text); returns the path, or None when there is no folder or no row."""
        if self.folder is None or not rows:
            return None
        import pandas as pd

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{prefix}-{os.getpid()}-{next(self._chunks)}.parquet"
        frame = pd.DataFrame(rows, columns=columns)
        for col in strings:
            frame[col] = frame[col].astype("string")
        frame.to_parquet(path, index=False)
        return path

    def write_meta(self, **meta: Any) -> None:
        """Write ``meta-<pid>.json`` (this process's t0, time scale, counters, …) into the folder."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {"pid": os.getpid(), "counters": dict(self.counters), **meta}
        (self.folder / f"meta-{os.getpid()}.json").write_text(json.dumps(body, indent=2, default=str) + "\n")


#: the counters a :class:`RecordSink` keeps (client-side view of the run)
COUNTERS = (
    "requests", "failed_requests", "attempts", "expiry_failures", "refresh_calls", "refresh_failures",
    "reuse_detected", "logins", "forced_logins", "access_mints", "renewal_mints", "duplicate_tokens",
    "refresh_mints", "resent_pairs", "rotated_tokens", "inferred_classifications", "task_errors", "login_failures",
    "refused_sessions", "retried_refreshes", "login_unavailable", "stranded", "unsettled_calls",
)


class Calls:
    """The calls (API, refresh, login) a load-test process's users have under way, and the end of
    a run: after :meth:`close` no call starts (the flow that would start one ends there), and
    :meth:`close` waits, bounded, until those under way are answered and recorded. A call counts
    from its first record to its last: the client's records and the server's log then cover the
    same calls (a call cut off as Locust kills its users may or may not have reached the server)."""

    def __init__(self) -> None:
        self.open = 0
        self.closed = False
        self._idle = Event()
        self._idle.set()

    @contextmanager
    def call(self):
        """One call under way; ends the calling flow (:class:`_Ended`) once the run is closing."""
        if self.closed:
            raise _Ended
        self.open += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.open -= 1
            if self.open == 0:
                self._idle.set()

    def close(self, bound_s: float) -> int:
        """Start no call any more and wait up to ``bound_s`` wall seconds for those under way;
        returns how many are still under way then."""
        self.closed = True
        self._idle.wait(timeout=bound_s)
        return self.open

    def reopen(self) -> None:
        """Calls may start again (a new test in the same process)."""
        self.closed = False


class Population:
    """Who the users are: arrival times, tabs and clock skews drawn from the simulator's own
    streams (:mod:`sim.engine.streams`), so a load test's users do what the simulated ones do.

    Receives the scenario (users, seed); arrays grow when a user index beyond the scenario's
    population is asked for (more Locust users than the scenario has)."""

    def __init__(self, scenario: Scenario, replication: int = 0) -> None:
        self.scenario = scenario
        self.replication = replication
        self._size = 0
        self._grow(scenario.population.users)

    def _grow(self, n: int) -> None:
        scenario = self.scenario.replace(population={"users": n}) if n != self.scenario.population.users else self.scenario
        seed = scenario.run.seed
        self.arrivals = arrival_times(scenario, seed, self.replication)
        self.tabs, self.skews = user_traits(scenario, seed, self.replication)
        self._size = n

    def user(self, index: int) -> tuple[float, int, float, UserStreams]:
        """User ``index``'s arrival (scenario s), tab count, clock skew (s) and draw streams."""
        if index >= self._size:
            self._grow(max(index + 1, 2 * self._size))
        streams = UserStreams(self.scenario, self.scenario.run.seed, self.replication, index)
        return float(self.arrivals[index]), int(self.tabs[index]), float(self.skews[index]), streams


@dataclass(eq=False)
class Store:
    """Where an access token lives: shared by a user's tabs, or one per tab."""

    token: Token | None = None


@dataclass(eq=False)
class Flight:
    """The single-flight scope of refreshes (a tab, or the user with a cross-tab lock): the
    refresh in flight, whose value is True when it left its tab holding a new token."""

    inflight: AsyncResult | None = None
    #: when (scenario s) and from which tab the refresh in flight started
    since: float = 0.0
    owner: Any = None


@dataclass(eq=False)
class Visit:
    """One presence of a user between login and leaving: the cookie jar (refresh token), the
    session, the login in progress (one at a time per user) and the user-wide flight."""

    jar: str | None = None
    session: str | None = None
    over: bool = False
    login: AsyncResult | None = None
    flight: Flight = field(default_factory=Flight)
    newest: Token | None = None
    tabs: list = field(default_factory=list)
    #: the ``Retry-After`` (wall seconds) of the last 503 a refresh got
    retry_after_wall_s: float | None = None
    #: the refresh tokens (strings) this visit's tabs presented
    presented: set = field(default_factory=set)
    #: the shared store's last write by a renewal (client ``stale_read``; scenario seconds)
    written: StoreWrite | None = None


@dataclass(eq=False)
class _Trace:
    """What a request's driver remembers between effects: the last attempt's round trip (wall
    seconds) and the token a sliding server re-issued with its answer."""

    rtt_s: float = 0.0
    #: attempts sent, and whether the request waited for anything else (a renewal, a backoff)
    sends: int = 0
    waited: bool = False
    reissued: Token | None = None
    #: the refresh token (string) the flow's last refresh call presented
    presented: str | None = None


@dataclass(eq=False)
class Tab:
    index: int
    visit: Visit
    store: Store
    flight: Flight
    #: wall (perf counter) intervals the tab's work spent waiting out a 503's Retry-After (scaled
    #: by the time scale): a page view's length counts them in scenario time
    scaled_waits: list = field(default_factory=list)
    #: the user's policy and scenario clock (whether a sibling's refresh is visible yet)
    policy: Any = None
    now: Any = None

    def view(self) -> TabView:
        token, flight = self.store.token, self.flight
        if self.visit.written is not None and self.policy is not None and (
                stale := self.policy.unseen(self.visit.written, self, self.now())):
            token = stale.access_before
        refreshing = flight.inflight is not None
        if refreshing and flight.owner is not self and self.policy is not None:
            refreshing = self.policy.sees_refresh(False, flight.since, self.now())
        return TabView(token.held if token else None, refreshing)


class _Ended(Exception):
    """The scenario's end came while a flow slept: the flow stops there."""


@dataclass(eq=False)
class _Pace:
    """A greenlet's pacing: the scenario instant its current work was due and the wall instant
    (perf counter) it began."""

    due: float
    began: float


class _Watched(Group):
    """A greenlet group whose crashed greenlets are counted (``task_errors``), so a run whose
    users fail does not look like a quiet one; gevent prints the traceback to the log."""

    def __init__(self, sink: "RecordSink") -> None:
        super().__init__()
        self.sink = sink

    def spawn(self, *args, **kwargs):
        greenlet = super().spawn(*args, **kwargs)
        greenlet.link_exception(lambda g: self.sink.count("task_errors"))
        return greenlet


class UserDriver:
    """One user carrying out ``variant.client`` against a server through ``transport``.

    Receives the scenario and variant, the user's global ``index`` (its draws come from the
    simulator's streams for that index), a :class:`Transport`, the process's :class:`ScenarioClock`
    (started) and :class:`RecordSink`. :meth:`run` lives the user's visits until the scenario's end
    (``run.warmup + run.duration``) and returns; :meth:`stop` kills what is still running.
    """

    def __init__(self, scenario: Scenario, variant: Variant, index: int, transport: Transport,
                 clock: ScenarioClock, sink: RecordSink, population: Population | None = None,
                 profile: TargetProfile | None = None, inject_rtt: bool = False, calls: Calls | None = None) -> None:
        self.scenario = scenario
        #: the process's calls under way (shared by its users: the end of a run drains them)
        self.calls = calls or Calls()
        self.policy = variant.client
        self.index = index
        self.profile = profile or reference_profile()
        self.classifier = Classifier(self.profile.classify)
        self.transport = transport
        #: add the scenario's round trip (drawn from the user's own streams, as the simulator
        #: does) to every call, so a loopback test sees the network the scenario describes
        self.inject_rtt = inject_rtt
        self.clock = clock
        self.sink = sink
        self.end_s = scenario.run.end_s
        self.arrival_s, self.n_tabs, self.skew_s, self.streams = (population or Population(scenario)).user(index)
        self.greenlets = _Watched(sink)
        self.bases: set[tuple[str | None, str]] = set()
        #: what the device kept from its last visit ("remember me"): jar, shared token, session
        self.kept: tuple | None = None
        #: every token string this user received: a mint is a string not seen before
        self.seen: set[str] = set()
        #: refresh tokens (ids) the user saw exchanged for a newer one, and known refresh expiries
        self.rotated: set[str] = set()
        self.jar_expiry: dict[str, float] = {}
        self.refused_sessions: set[str | None] = set()
        self.visits = itertools.count(1)
        #: API calls sent and not yet answered (``network.in_order`` with ``inject_rtt``)
        self.unanswered: set[AsyncResult] = set()

    # -- top level --------------------------------------------------------------------------

    def run(self) -> None:
        """Live the user's life (:func:`~sim.strategies.flow.user_flow`: arrive, visit, come back
        after ``away``) until the scenario's end."""
        s = self.streams
        flow = user_flow(self.policy, s, [s.tab(i) for i in range(self.n_tabs)], self.arrival_s,
                         self.scenario.population.idle_probability, self.client_clock,
                         self.scenario.population.tab_offsets_s(self.n_tabs), bulk=False)
        self._run(_arriving_from_t0(flow, self.clock.now_s()), None)

    def stop(self) -> None:
        """Kill this user's tabs, timers and requests (the load test is stopping)."""
        self.greenlets.kill(block=True, timeout=5)

    def client_clock(self) -> float:
        """The user's own clock: scenario time plus its skew."""
        return self.clock.now_s() + self.skew_s

    def _run(self, flow, tab: Tab | None) -> Any:
        """Carry out ``flow`` in this greenlet for ``tab``; returns what it returns (None when
        the scenario ended first)."""
        pace, trace = _Pace(self.clock.now_s(), time.perf_counter()), _Trace()
        try:
            return drive(flow, lambda effect: self.carry_out(tab, effect, trace, pace))
        except _Ended:
            return None

    def view(self, tab: Tab) -> TabView:
        return tab.view()

    # -- requests ---------------------------------------------------------------------------

    def request(self, tab: Tab, cookie: Any = LIVE) -> None:
        """One request (:func:`~sim.strategies.flow.request_flow`) whose renewals present
        ``cookie``; records one ``request`` row at its issue time."""
        clock, visit = self.clock, tab.visit
        issued, issued_wall, session, trace = clock.now_s(), time.perf_counter(), visit.session, _Trace()
        flow = request_flow(self.policy, tab.view, self.client_clock, cookie=cookie)

        def step(effect):
            if type(effect) is Send:
                trace.sends += 1
            elif type(effect) not in (Adopt, Cookies):
                trace.waited = True
            return self.carry_out(tab, effect, trace)

        ok = drive(flow, step)
        added_ms = max((time.perf_counter() - issued_wall - trace.rtt_s) * 1000.0, 0.0) if ok else math.nan
        self._request_done(issued, tab, session, added_ms)
        if ok and trace.sends == 1 and not trace.waited and self.sink.folder is not None:
            self.sink.direct.append((issued, added_ms))

    def carry_out(self, tab: Tab | None, effect: Any, trace: "_Trace", pace: _Pace | None = None) -> Any:
        """Carry out one effect of :mod:`sim.strategies.flow` with gevent and HTTP; returns its
        result."""
        match effect:
            case Send():
                sent = tab.store.token
                reply, trace.rtt_s, outcome = self.attempt(tab, sent)
                trace.reissued = self._reissued(reply, sent, tab.visit)
                return Response(reply.status if reply.status in (200, 401) else 0,
                                trace.reissued.held if trace.reissued else None, outcome == "expired")
            case Request(cookie=cookie):
                self.request(tab, cookie)
            case Cookies():
                return tab.visit.jar
            case Renew(action=action, basis=basis, cookie=cookie):
                return drive(renew_flow(self.policy, action, basis, tab.view, cookie),
                             lambda inner: self.carry_out(tab, inner, trace, pace))
            case Join(timeout_s=timeout_s):
                try:
                    return tab.flight.inflight.get(timeout=None if timeout_s is None else self.clock.wall(timeout_s))
                except gevent.Timeout:
                    return None
            case Refresh(basis=basis, cookie=cookie):
                return self.refresh_in_flight(tab, basis, trace, cookie)
            case Reread():
                return tab.visit.jar is not None and tab.visit.jar != trace.presented
            case Clear(every_tab=every_tab):
                visit = tab.visit
                self._drop(tab, visit.jar)
                visit.jar = None
                for t in (visit.tabs if every_tab else (tab,)):
                    t.store.token = None
            case Jitter():
                self.clock.sleep(self.policy.timer_jitter_s * self.streams.jitter())
            case WakePhase():
                return self.streams.wake_phase()
            case Login(forced=forced, lapsed=lapsed):
                return self.login(effect.tab if effect.tab is not None else tab, forced=forced, lapsed=lapsed)
            case Backoff():
                # the server's Retry-After (wall seconds) in scenario seconds, else the scenario's
                retry_after_s = (tab.visit.retry_after_wall_s * self.clock.time_scale
                                 if tab.visit.retry_after_wall_s is not None else self.scenario.auth.retry_after_s)
                wait_s = self.policy.retry_delay_s(retry_after_s, self.streams.backoff())
                self.sink.record(self.clock.now_s(), self.index, tab.index, tab.visit.session, "backoff",
                                 latency_ms=wait_s * 1000.0)
                self.sink.count("retried_refreshes")
                self._scaled_sleep(tab, wait_s)
            case Adopt():
                tab.store.token = trace.reissued
            case Sleep(seconds=seconds):
                if not self._sleep_until(self.clock.now_s() + seconds):
                    raise _Ended
                if pace is not None:
                    pace.due, pace.began = self.clock.now_s(), time.perf_counter()
            case Pause(seconds=seconds):
                pace.due = self._next(pace.due, pace.began, seconds, tab)
                if not self._sleep_until(pace.due):
                    raise _Ended
                pace.began = time.perf_counter()
            case Spawn(effect=inner, tab=on):
                return self.greenlets.spawn(self._run, _one(inner), on if on is not None else tab)
            case Await(handles=handles):
                gevent.joinall(handles)
            case Open(n_tabs=n):
                visit, policy, shared = Visit(), self.policy, Store()
                visit.tabs = [Tab(i, visit, shared if policy.storage == "shared" else Store(),
                                  visit.flight if policy.cross_tab_lock else Flight(), policy=policy, now=self.clock.now_s)
                              for i in range(n)]
                if self.kept is not None:
                    visit.jar, shared.token, visit.session = self.kept
                return visit
            case Close(visit=visit):
                if self.scenario.population.remember_me:
                    # the cookie jar and localStorage survive; sessionStorage does not
                    kept_token = visit.tabs[0].store.token if self.policy.storage == "shared" else None
                    self.kept = (visit.jar, kept_token, visit.session)
                newest = visit.newest
                self.sink.record(self.clock.now_s(), self.index, None, visit.session, "logout",
                                 expires_s=newest.held.expires_at_s if newest else math.nan)
        return None

    def _request_done(self, issued: float, tab: Tab, session: str | None, added_ms: float) -> None:
        self.sink.record(issued, self.index, tab.index, session, "request",
                         outcome="failed" if added_ms != added_ms else "ok", latency_ms=added_ms)
        self.sink.count("requests")
        if added_ms != added_ms:
            self.sink.count("failed_requests")

    def attempt(self, tab: Tab, sent: Token) -> tuple[Reply, float, str]:
        """One HTTP send of a request with ``sent``; returns the reply, its wall round trip and
        its ``attempt`` outcome (``ok``, ``expired``, ``invalid`` or ``lost``)."""
        with self.calls.call():
            return self._attempt(tab, sent)

    def _attempt(self, tab: Tab, sent: Token) -> tuple[Reply, float, str]:
        sent_at, started = self.clock.now_s(), time.perf_counter()
        tab_streams = self.streams.tab(tab.index)
        answered = AsyncResult()
        self.unanswered.add(answered)
        try:
            half = self._network_out(lambda: tab_streams.api_round_trip(sent_at))
            reply = self.transport.api(sent.raw)
            self.clock.sleep(half)
        finally:
            self.unanswered.discard(answered)
            answered.set(True)
        rtt = time.perf_counter() - started
        if reply.status == 200:
            outcome = "ok"
        elif reply.status == 401:
            outcome, how = self.classifier.access(reply.error, sent.held.expires_at_s, self.clock.now_s())
            if how == "client":
                self.sink.count("inferred_classifications")
        else:
            outcome = "lost"
        self.sink.record(sent_at, self.index, tab.index, sent.session, "attempt", sent.id, outcome=outcome,
                         latency_ms=rtt * 1000.0)
        self.sink.count("attempts")
        if outcome == "expired":
            self.sink.count("expiry_failures")
        return reply, rtt, outcome

    def _reissued(self, reply: Reply, sent: Token, visit: Visit) -> Token | None:
        """The token a sliding server re-issued with ``reply`` on behalf of ``sent``, else None."""
        if reply.status != 200 or not reply.reissued:
            return None
        token = self._read(reply.reissued, reply, reply.reissued_expires_in)
        self._minted(token, "access_reissue", sent.id, visit)
        return token

    # -- renewal ----------------------------------------------------------------------------

    def _drop(self, tab: Tab, jar: str | None) -> None:
        """The client lets go of the refresh token ``jar``: stranded when never presented."""
        if jar is not None and jar not in tab.visit.presented:
            self.sink.record(self.clock.now_s(), self.index, tab.index, tab.visit.session, "stranded", token_id(jar))
            self.sink.count("stranded")

    def refresh_in_flight(self, tab: Tab, basis: str | None, trace: "_Trace | None" = None,
                          cookie: Any = LIVE) -> str:
        """A refresh call, registered as the one in flight in the tab's single-flight scope when
        the policy is single-flight; returns its outcome (``"ok"`` or a ``refresh_end``
        outcome). Those who joined it learn whether the tab then holds a new token."""
        flight, done = tab.flight, AsyncResult()
        if self.policy.single_flight:
            flight.inflight, flight.since, flight.owner = done, self.clock.now_s(), tab
        outcome = "lost"
        try:
            outcome = self.refresh(tab, basis, trace, cookie)
        finally:
            if self.policy.releases_lock(outcome):
                if flight.inflight is done:
                    flight.inflight = None
                done.set(outcome == "ok")
        return outcome

    def refresh(self, tab: Tab, basis: str | None, trace: "_Trace | None" = None, cookie: Any = LIVE) -> str:
        """One refresh call with the jar's refresh token (``cookie``: LIVE, or a server-rendered
        page's snapshot of it); on success the tab's store gets the access token. Returns
        ``"ok"`` or the ``refresh_end`` outcome."""
        visit = tab.visit
        if visit.login is not None:  # a login is replacing the session: its tokens will do
            visit.login.get()
            return "ok" if tab.store.token is not None else "no_token"
        stale = self.policy.unseen(visit.written, tab, self.clock.now_s()) if cookie is LIVE else None
        jar = (visit.jar if stale is None else stale.refresh_before) if cookie is LIVE else cookie
        if jar is None:
            return "signed_out"
        with self.calls.call():
            return self._refresh(tab, jar, basis, trace)

    def _refresh(self, tab: Tab, jar: str, basis: str | None, trace: "_Trace | None") -> str:
        """:meth:`refresh`'s call: present ``jar``, record and count what came back."""
        clock, visit, sink = self.clock, tab.visit, self.sink
        if trace is not None:
            trace.presented = jar
        visit.presented.add(jar)
        sent_at, started = clock.now_s(), time.perf_counter()
        jar_id = token_id(jar)
        sink.record(sent_at, self.index, tab.index, visit.session, "refresh_start", jar_id, basis)
        sink.count("refresh_calls")
        earlier = tuple(self.unanswered)
        trip = self._auth_out()
        reply = self.transport.refresh(jar, basis)
        refused = reply.status in self.classifier.spec.refresh_rejected_statuses
        if trip is not None:
            self.clock.sleep(trip.answer_leg_s(refused, clock.now_s()) * self.clock.time_scale)
            if self.scenario.network.in_order:
                # the injected network keeps the order a one-process server would (see the field)
                for answered in earlier:
                    answered.wait()
        latency_ms = (time.perf_counter() - started) * 1000.0
        if reply.status == 200 and reply.body and reply.body.get("access_token"):
            outcome = "ok"
        elif refused:
            outcome, how = self.classifier.refresh(reply.error, jar_id in self.rotated,
                                                   self.jar_expiry.get(jar_id, math.inf), clock.now_s())
            if how == "client":
                sink.count("inferred_classifications")
        elif reply.status == 503:
            outcome = "unavailable"
            visit.retry_after_wall_s = reply.retry_after_s
        else:
            outcome = "lost"
        sink.record(clock.now_s(), self.index, tab.index, visit.session, "refresh_end", jar_id, basis,
                    outcome=outcome, latency_ms=latency_ms)
        if outcome == "ok":
            token = self._read(reply.body["access_token"], reply, reply.body.get("expires_in"))
            new_jar = reply.body.get("refresh_token")
            if token.raw in self.seen:
                # the server answered with tokens it had already issued (a concurrent replay of a
                # just-rotated refresh token): neither a mint nor a duplicate
                sink.record(clock.now_s(), self.index, tab.index, visit.session, "resent_pair", token.id, basis)
                sink.count("resent_pairs")
            else:
                self._minted(token, "access_refresh", basis, visit)
            visit.written = self.policy.store_write(clock.now_s(), tab, tab.store.token, visit.jar)
            tab.store.token = token
            if new_jar and new_jar != jar:
                if jar_id not in self.rotated:
                    self.rotated.add(jar_id)
                    sink.count("rotated_tokens")
                if new_jar not in self.seen:
                    self._minted(self._read_jar(new_jar, reply), "refresh_refresh", None, visit)
            visit.jar, dropped = jar_write(self.policy, visit.jar, jar, new_jar)
            self._drop(tab, dropped)
            return outcome
        sink.count("refresh_failures")
        if outcome == "reuse_detected":
            sink.count("reuse_detected")
        if outcome in ("reuse_detected", "revoked") and visit.session not in self.refused_sessions:
            # a server that revokes the family on reuse revoked this session's: one revocation
            self.refused_sessions.add(visit.session)
            sink.count("refused_sessions")
        return outcome

    def login(self, tab: Tab, *, forced: bool, lapsed: bool = False) -> None:
        """Log the user in (again, when ``forced``); one login at a time per user. The tab that
        logs in gets the access token (every tab, with ``copied`` storage); the jar gets the
        refresh token."""
        visit = tab.visit
        if visit.login is not None:
            visit.login.get()
            return
        with self.calls.call():
            self._login(tab, forced, lapsed)

    def _login(self, tab: Tab, forced: bool, lapsed: bool) -> None:
        clock, visit, sink = self.clock, tab.visit, self.sink
        visit.login = AsyncResult()
        # the row is kept when the login ends, at the instant it began and with the session it
        # leaves: its latency is the wall ms until the tokens were stored (a login's own length,
        # which validate tells the simulation, see loadtests.cli.told_login_time)
        began_s, left, started = clock.now_s(), visit.session, time.perf_counter()
        done_ms = math.nan
        try:
            sink.count("forced_logins" if forced else "logins")
            while True:
                trip = self._auth_out()
                reply = self.transport.login(self.index)
                if trip is not None:
                    self.clock.sleep(trip.answer_leg_s(False, clock.now_s()) * self.clock.time_scale)
                if reply.status == 200 and reply.body and "access_token" in reply.body:
                    break
                # a 503 is the auth tier shedding load (the protocol working), anything else a failure
                sink.count("login_unavailable" if reply.status == 503 else "login_failures")
                if self.calls.closed or not self._sleep_until(clock.now_s() + LOGIN_RETRY_S):
                    return
            body = reply.body
            token = self._read(body["access_token"], reply, body.get("expires_in"))
            # a server that names no session (no sid claim): the visit's login is one
            visit.session = token.session or f"{self.index}.{next(self.visits)}"
            token = Token(token.raw, token.held, visit.session)
            self._minted(token, "access_login", None, visit)
            visit.jar, visit.written = body.get("refresh_token"), None
            if visit.jar:
                self._minted(self._read_jar(visit.jar, reply), "refresh_login", None, visit)
            for filled in (visit.tabs if self.policy.storage == "copied" else (tab,)):
                filled.store.token = token
            done_ms = (time.perf_counter() - started) * 1000.0
        finally:
            sink.record(began_s, self.index, tab.index, left, "login",
                        outcome="lapsed" if lapsed else "forced" if forced else "visit", latency_ms=done_ms)
            done, visit.login = visit.login, None
            done.set(True)

    def _read(self, raw: str, reply: Reply, expires_in: Any) -> Token:
        tokens = self.profile.tokens
        return read_token(raw, self.clock, reply.received_unix_s, expires_in, tokens.format, tokens.access_ttl_s)

    def _read_jar(self, raw: str, reply: Reply) -> Token:
        """A refresh token as the client knows it; its expiry is remembered to classify refusals."""
        tokens = self.profile.tokens
        token = read_token(raw, self.clock, reply.received_unix_s, None, tokens.format, tokens.refresh_ttl_s)
        self.jar_expiry[token.id] = token.held.expires_at_s
        return token

    def _minted(self, token: Token, outcome: str, basis: str | None, visit: Visit) -> None:
        """Record a mint as the client sees it (a token string it had not received before),
        flagging an access token whose (session, basis) the user has received before as a
        duplicate."""
        self.seen.add(token.raw)
        if token.session is None and visit.session is not None:
            token = Token(token.raw, token.held, visit.session)
        if outcome.startswith("refresh"):
            self.sink.count("refresh_mints")
        if outcome.startswith("access"):
            visit.newest = token
            self.sink.count("access_mints")
            if outcome != "access_login":
                self.sink.count("renewal_mints")
                if basis is not None:
                    key = (token.session, basis)
                    if key in self.bases:
                        outcome += "_duplicate"
                        self.sink.count("duplicate_tokens")
                    else:
                        self.bases.add(key)
        self.sink.record(self.clock.now_s(), self.index, None, token.session, "mint", token.id, basis,
                         outcome=outcome, expires_s=token.held.expires_at_s)

    # -- time -------------------------------------------------------------------------------

    def _network_out(self, draw) -> float:
        """With ``inject_rtt``: draw a round trip, sleep its first half and return the half still
        to come back (as scenario seconds to hand to ``clock.sleep``); 0 otherwise. The round trip
        is slept in real time, unscaled, like every real round trip (see :meth:`_next`): the
        injected network then stands beside the loopback's own as a real one would, long against
        the scheduling jitter of the load test's users, and its milliseconds are the scenario's."""
        if not self.inject_rtt:
            return 0.0
        half = draw() / 2 * self.clock.time_scale
        self.clock.sleep(half)
        return half

    def _auth_out(self) -> "AuthRoundTrip | None":
        """:meth:`_network_out` for a call to the auth tier: with ``inject_rtt``, draw the call's
        :class:`~sim.engine.streams.AuthRoundTrip`, sleep its request leg and return it (the
        answer leg depends on the answer); None otherwise."""
        if not self.inject_rtt:
            return None
        trip = self.streams.auth_round_trip(self.clock.now_s())
        self.clock.sleep(trip.request_leg_s * self.clock.time_scale)
        return trip

    def _sleep_until(self, t_s: float) -> bool:
        """Sleep until scenario time ``t_s``, at most until the scenario's end; False when the
        end came first."""
        now = self.clock.now_s()
        self.clock.sleep(min(t_s, self.end_s) - now)
        return t_s < self.end_s

    def _next(self, due: float, began_wall: float, seconds: float, tab: Tab | None = None) -> float:
        """The scenario instant ``seconds`` after work that was due at ``due`` and started at
        wall time ``began_wall`` (perf counter), counting the work's wall duration unscaled,
        except its waits for a 503's Retry-After (``tab.scaled_waits``), which count as the
        scenario time they stood for (a few milliseconds of scheduling overshoot on seconds of
        waiting; injected round trips, a few milliseconds long, stay unscaled: their overshoot
        times the scale would slow the user down).

        HTTP round trips are real: scaling them up by the time scale (a 10 ms page view would
        be 0.6 s of scenario time at scale 60) would slow every user down; and counting from when
        the work was due, not from when a busy event loop got to it, keeps lateness from piling
        up over a user's page views. A scaled wait counted unscaled would speed the user up
        instead: after waiting out an 8 s Retry-After (1 wall second at scale 8) it would think
        7 s too early."""
        now = time.perf_counter()
        work = now - began_wall
        if tab is not None and tab.scaled_waits:
            scaled = _union_s(tab.scaled_waits, began_wall, now)
            tab.scaled_waits.clear()
            work += scaled * (self.clock.time_scale - 1.0)
        return due + work + seconds

    def _scaled_sleep(self, tab: Tab | None, seconds: float) -> None:
        """Sleep ``seconds`` of scenario time for ``tab``'s work, remembering the wall interval."""
        started = time.perf_counter()
        self.clock.sleep(seconds)
        if tab is not None:
            tab.scaled_waits.append((started, time.perf_counter()))

def _union_s(intervals: list, lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by the (start, end) ``intervals`` (overlaps counted once)."""
    covered, reach = 0.0, lo
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            covered += end - start
            reach = end
    return covered


def _one(effect: Any):
    return (yield effect)


def _arriving_from_t0(flow, started_s: float):
    """A user's ``flow`` begun at scenario time ``started_s`` (when Locust spawned the user)
    instead of 0: its first effect, the wait for the user's arrival, is shortened by that much, so
    a user arrives at its scenario instant however late it was spawned (spawning a few dozen
    users takes a wall second, many scenario seconds at a high time scale)."""
    effect = next(flow)
    if type(effect) is Sleep:
        effect = Sleep(max(effect.seconds - started_s, 0.0))
    while True:
        result = yield effect
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            return stop.value

