"""The discrete-event engine: one strategy variant in one replication, in virtual time.

A user's life is the shared flows of :mod:`sim.strategies.flow` (visits, tabs, page views, timers,
requests, renewals); this module only interprets their effects: it keeps the clock (a queue of
timed callbacks, :func:`event_queue`), runs each flow as a *task* (a stack of generators, so a
sub-flow costs no extra layer), carries requests to the API and refresh and login calls through
the auth tier (a finite pool of workers with a FIFO queue and a queue timeout), and records what
happened.

The event loop is written here rather than taken from SimPy because it runs one kind of event
(resume a task, or call a callback) and the model's cost is dominated by that step: SimPy's
general events, callbacks and process objects cost several times more per step than the model
itself. Ties are broken first-scheduled, first-run, as in SimPy. The queue, the plain page views
and the random streams' refills run compiled where the package was built with its kernel
(:mod:`sim.engine.kernel`), in Python otherwise: the same answers either way.

:class:`FastSimulation` (``engine = "fast"``) is the same engine with plain page views — every
request of the burst sends a token that stays valid with margin, nothing in flight, nothing to
renew — carried out in one step instead of one event per half round trip; it draws the same
numbers from the same streams and records the same counts, so its results are identical.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sim.engine.kernel import KERNEL as _KERNEL, QUIET_TICKS as _QUIET_TICKS
from sim.engine.recorder import Recorder
from sim.engine.streams import Source, TabStreams, UserStreams, arrival_times, generator, user_traits
from sim.scenario import Scenario, Variant
from sim.strategies.client import Action, Held, Response, StoreWrite, TabView, TimerClient
from sim.strategies.flow import (
    LIVE, LOGIN_RETRY_S, Adopt, AttemptOutcome, Backoff, Await, Call, Clear, Close, Cookies, Jitter, Join, Login,
    LoginCause, Open,
    Pause, WakePhase, Refresh, RefreshOutcome, Renew, Reread, Request, Send, Sleep, Spawn, Views, answer_is_done, jar_write,
    plain_page_views, renew_flow, request_flow, sends_at_once, user_flow,
)
from sim.strategies.ledger import Ledger, Token
from sim.strategies.server import Grant, Rejection
from sim.strategies.service import ServiceTimes

#: a handler's answer meaning "the task waits; something will resume it"
PENDING = object()
UNAVAILABLE = RefreshOutcome.UNAVAILABLE  # the auth tier's queue timed out (HTTP 503)
_OK, _UNAUTHORIZED, _EXPIRED, _LOST = Response(200), Response(401), Response(401, expired=True), Response(0)
_VERDICT = {o.value: o for o in AttemptOutcome}
# enum members as module names where the engine asks per request (see sim.strategies.client)
_ATTEMPT_OK, _ATTEMPT_EXPIRED, _SEND = AttemptOutcome.OK, AttemptOutcome.EXPIRED, Action.SEND
_DONE, _NOTHING, _REFRESH_OK, _REFRESH_LOST = Action.DONE, Action.NOTHING, RefreshOutcome.OK, RefreshOutcome.LOST
_NEVER = -math.inf  # a task's wake while it runs or waits on others


_GC_LOCK = threading.Lock()
_GC_HOLDERS = [0]
_GC_RUNS = [0]  # simulations started in this process


@contextlib.contextmanager
def _no_cyclic_gc():
    """Python's cyclic garbage collector off while a simulation runs (and back as it was after
    the last one running in this process ends).

    A run keeps every user's state alive, hundreds of objects a user, and each full collection
    walks all of them: a collector that finds next to nothing (the only cycles a run leaves
    behind are ended visits, their tabs and stores: under 1 KB each) took about a quarter of the
    engine's time at a few thousand users, and more as the population grows. Reference
    counting still frees everything else at once; what an earlier run left in cycles is
    collected before the collector goes off."""
    with _GC_LOCK:
        if _GC_HOLDERS[0] == 0:
            _GC_HOLDERS.append(gc.isenabled())
            if gc.isenabled() and _GC_RUNS[0]:
                # a finished run's state is mostly cycles (users and their tasks): collect it
                # now, or it would stay through this run, twice the memory of a worker process.
                # Not before a process's first run: there is none to collect, and a full
                # collection would walk every object the imports made (a tenth of a second)
                gc.collect()
            _GC_RUNS[0] += 1
            gc.disable()
        _GC_HOLDERS[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_HOLDERS[0] -= 1
            if _GC_HOLDERS[0] == 0 and _GC_HOLDERS.pop():
                # everything the run allocated is still in the youngest generation, and the
                # first allocation after enabling would walk all of it (a tenth of a short
                # run's time) only to find it alive: move it to the oldest generation without
                # a walk (freeze, then unfreeze); a full collection takes what is garbage.
                # Not when the caller froze objects of its own: unfreezing would release them
                if not gc.get_freeze_count():
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


class Signal:
    """Something tasks wait for (a login or a refresh in flight); fired once with a value."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list = []


@dataclass(eq=False, slots=True)
class Store:
    """Where an access token lives: shared by a user's tabs, or one per tab."""

    held: Held | None = None


@dataclass(eq=False, slots=True)
class Flight:
    """The single-flight scope of refreshes: a tab, or a user with a cross-tab lock; the
    refresh in flight, when and from which tab it started."""

    inflight: Signal | None = None
    since: float = 0.0
    owner: object = None


@dataclass(eq=False, slots=True)
class User:
    index: int
    streams: UserStreams
    skew_s: float
    sim: "Simulation"
    tasks: list = field(default_factory=list)
    #: what the device kept from its last visit ("remember me"): refresh token, shared access
    #: token, session
    kept: tuple | None = None
    #: when the last answer to an API call the user has sent comes back (``network.in_order``)
    answers_due_s: float = -math.inf

    def clock(self) -> float:
        """The user's own clock (client clock: server time plus skew)."""
        return self.sim.now + self.skew_s


@dataclass(eq=False, slots=True)
class Visit:
    """One user's presence between a login and leaving: the session and its cookie jar."""

    user: User
    tabs: list = field(default_factory=list)
    jar: Token | None = None  # the refresh token, shared by every tab
    session: int | None = None
    over: bool = False
    login: Signal | None = None
    flight: Flight = field(default_factory=Flight)
    #: ids of the refresh tokens this visit's tabs presented: a list while they are a few (a
    #: quarter of a set's memory), a set beyond
    presented: list | set = field(default_factory=list)
    #: the shared store's last write by a renewal (client ``stale_read``)
    written: StoreWrite | None = None


@dataclass(eq=False, slots=True)
class Tab:
    index: int
    visit: Visit
    store: Store
    flight: Flight
    draws: TabStreams

    _view: TabView | None = None
    #: a view and, by the client's clock, until when the policy sends what it holds at once and
    #: takes a plain 200 as done (``sends_until_s``, less a margin for rounding): asked once a view
    _sure_view: TabView | None = None
    _sure_until: float = -math.inf

    def view(self) -> TabView:
        # a view is asked for several times per request and rarely changes: reuse it
        flight = self.flight
        v, held, refreshing = self._view, self.store.held, flight.inflight is not None
        if self.visit.written is not None and (
                stale := self.visit.user.sim.client.unseen(self.visit.written, self, self.visit.user.sim.now)):
            held = stale.access_before
        if refreshing and flight.owner is not self:
            sim = self.visit.user.sim
            refreshing = sim.client.sees_refresh(False, flight.since, sim.now)
        if v is None or v.held is not held or v.refreshing is not refreshing:
            v = self._view = TabView(held, refreshing)
            self._sure_view = None  # (it holds no view but the current one: nor its token)
        return v


class Task:
    """A running flow: a stack of generators (the innermost runs), its tab and its user."""

    __slots__ = ("stack", "tab", "user", "done", "waiters", "awaiting", "rtt", "until", "wake", "timer", "timer_grid", "presented",
                 "cookie")

    def __init__(self, gen, tab, user):
        self.stack = [gen] if gen is not None else []
        self.tab = tab
        self.user = user
        self.done = False
        self.waiters: list | None = None
        self.awaiting = 0
        self.rtt = 0.0
        self.until = 0.0  # (fast engine) when the work the task has done in bulk ends
        self.wake = -math.inf  # when a timed sleep ends; -inf while running or waiting on others
        self.timer: float | None = None  # a renewal timer sleeping until its next tick: its origin
        self.timer_grid: float | None = None  # ... and the wake-up grid of its hidden tab (None: visible)
        self.presented = None  # the refresh token this task's last refresh call presented
        self.cookie = LIVE  # the refresh cookie this task's request carries (a server-rendered page's snapshot)
        user.tasks.append(self)


# not frozen: made per mint, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class _HeldToken(Held):
    """What a simulated client holds of an access token, with the token itself: while any client
    (or call in flight) holds it, the ledger keeps it (:meth:`Simulation._forget`)."""

    token: Token = field(default=None, compare=False, repr=False)


def held(token: Token) -> Held:
    return _HeldToken(token.id, token.expires_at_s, token)


def _references_of_unheld() -> int:
    """What ``sys.getrefcount`` says of a token that only the ledger holds, as seen by the
    ``held`` callback of :meth:`~sim.strategies.ledger.Ledger.forget_unreachable` (the loop's and
    the call's own references, which differ between Python versions)."""
    probe, seen = Ledger(), []
    probe.mint("access", probe.new_session(0, 0.0), 0.0, 1.0, cause="login")
    probe.forget_unreachable(lambda token: seen.append(sys.getrefcount(token)), lambda token: ())
    return seen[0]


def _presented(visit: Visit, token_id: int) -> None:
    """Note that a tab of ``visit`` presented the refresh token ``token_id`` (a list of a few, a
    set beyond: see :attr:`Visit.presented`)."""
    presented = visit.presented
    if type(presented) is set:
        presented.add(token_id)
    elif token_id not in presented:
        presented.append(token_id)
        if len(presented) > 8:
            visit.presented = set(presented)


def _dismantled(visit: Visit) -> bool:
    """Let go of what an ended visit holds once none of its tabs' tasks runs any more (False
    while one does): its tokens, and the cycles between it, its tabs and their single-flight
    scopes, which would otherwise stay until the run ends (the cyclic collector is off)."""
    if any(task.tab is not None and task.tab.visit is visit for task in visit.user.tasks):
        return False
    for tab in visit.tabs:
        tab.store.held = None
        tab.flight.inflight = tab.flight.owner = None
        tab._view = tab._sure_view = None
    visit.jar = visit.login = None
    visit.flight.inflight = visit.flight.owner = None
    visit.tabs = []
    return True


def _one(effect):
    return (yield effect)


class _Acquire:
    """Internal effect: wait for an auth worker; sends back True, or False on queue timeout."""

    __slots__ = ()


_ACQUIRE = _Acquire()


#: a bucket's length times the population (seconds × users): see :func:`bucket_s`
BUCKET_USER_S = 4096.0


def bucket_s(users: int) -> float:
    """The length of a bucket of the event queue (:class:`CalendarQueue`) for a run of
    ``users``: a power of two (seconds) in which the population has some tens of events (the
    busier the population, the shorter), so that a bucket's heap stays small and few buckets are
    empty."""
    return 2.0 ** min(max(round(math.log2(BUCKET_USER_S / max(users, 1))), -8), 8)


class CalendarQueue:
    """The pending events, ``(instant, order, callback, argument)``: :meth:`run` calls
    ``callback(argument)`` at ``instant`` (setting its owner's ``now``), events of one instant in
    the order they were scheduled (:meth:`at`). An event at or after ``end_s`` is never taken.
    The compiled :class:`sim.engine._kernel.EventQueue` keeps the same order in one heap of C
    structs; this is the engine's queue where it is not built.

    The events are kept by buckets of instants (a calendar queue): a heap of those in the
    current bucket, a list for each later one, made a heap when the loop reaches it. A heap of
    every pending event (a few per user) would be walked from root to leaf at each event, across
    memory the size of the population's; the current bucket's is small. The order is the same:
    every event of a bucket comes before any of a later one (a bucket's length, ``width_s``, is a
    power of two, so where an instant falls is exact), and within one the heap orders by
    (instant, order)."""

    def __init__(self, end_s: float, width_s: float) -> None:
        self.end_s, self.width_s = end_s, width_s
        self.heap: list = []  # the current bucket's
        self._later: dict[int, list] = {}
        self._buckets: list[int] = []  # a heap of the later buckets' numbers
        self._bucket_end = 0.0  # where the current bucket ends
        self._seq = itertools.count()

    def at(self, t: float, fn, arg) -> None:
        """Schedule ``fn(arg)`` at instant ``t``, after every event scheduled for ``t`` before."""
        event = (t, next(self._seq), fn, arg)
        if t < self._bucket_end:
            heapq.heappush(self.heap, event)
        elif t < self.end_s:
            b = int(t / self.width_s)
            later = self._later.get(b)
            if later is None:
                self._later[b] = [event]
                heapq.heappush(self._buckets, b)
            else:
                later.append(event)

    def run(self, owner) -> None:
        """Take the events in order, setting ``owner.now`` to each one's instant and calling it,
        until none is left."""
        heap, pop, later, buckets, width = self.heap, heapq.heappop, self._later, self._buckets, self.width_s
        while True:
            while heap:
                t, _, fn, arg = pop(heap)
                owner.now = t
                fn(arg)
            if not buckets:
                return
            b = pop(buckets)
            self.heap = heap = later.pop(b)
            heapq.heapify(heap)
            # (never past the end: an event there is not taken)
            self._bucket_end = min((b + 1) * width, self.end_s)


def event_queue(end_s: float, users: int):
    """The engine's queue of pending events for a run of ``users`` ending at ``end_s``: the
    compiled one where it is built, else :class:`CalendarQueue` (the same order)."""
    if _KERNEL is not None:
        return _KERNEL.EventQueue(end_s)
    return CalendarQueue(end_s, bucket_s(users))


class Simulation:
    """One variant, one replication. :meth:`run` returns the filled :class:`Recorder`."""

    #: scenario seconds between two looks at the ledger's size (None: keep every token minted)
    FORGET_EVERY_S: float | None = 60.0
    #: the fewest tokens kept at which the ledger forgets the unreachable ones
    FORGET_MIN_TOKENS = 4096
    #: how much the tokens kept grow between two passes: a pass walks every token kept, so its
    #: cost per mint is about ``growth / (growth - 1)`` looks (a microsecond or two each); the
    #: ledger holds up to ``growth`` times the live tokens (2: half of its memory dead tokens)
    FORGET_GROWTH = 1.5
    #: how many times a run tells its ``progress`` callback how far it has come
    PROGRESS_STEPS = 100

    def __init__(self, scenario: Scenario, variant: Variant, replication: int, seed: int, keep_events: bool,
                 users=None, progress: Callable[[float], None] | None = None):
        # ``users``: the indices of the users to simulate (those of one auth-tier instance), all by default
        self.users = users
        #: called with the share of the run's scenario time simulated so far (0.01, 0.02, ...)
        self.progress = progress
        self.scenario = scenario
        self.variant = variant
        self.client = variant.client
        self.server = variant.server
        self.replication = replication
        self.seed = seed
        self.end_s = scenario.run.end_s
        self.now = 0.0
        #: the pending events (:func:`event_queue`); ``at(t, fn, arg)`` schedules ``fn(arg)`` at ``t``
        self.queue = event_queue(self.end_s, scenario.population.users if users is None else len(users))
        self.at = self.queue.at
        self.rec = Recorder(variant.name, replication, keep_events, scenario.run.warmup_s, scenario.run.duration_s)
        self.events = keep_events
        self.ledger = Ledger(observer=self.rec)
        self._forget_at = self.FORGET_MIN_TOKENS
        self._closed: list[Visit] = []  # visits that ended, their tabs perhaps still finishing
        self._open_visits: set[Visit] = set()
        self._users: list[User] = []
        self._unheld_refs = _references_of_unheld()
        # the server's own draws (a race window per rotated token), one stream per replication
        self.server_rng = generator(seed, replication, 3, int(Source.RACE))
        self._attempts_ok = self.rec.counts.bins_of("attempt", "ok")
        self._requests_ok = self.rec.counts.bins_of("request", "ok")
        auth = scenario.auth
        self.workers_free = auth.workers
        self.auth_queue: list = []  # FIFO of [task, asked_s, waiting]
        self.auth_queue_head = 0
        self.auth_waiting = 0  # calls in the queue that still wait
        self.queue_limit = auth.queue_limit
        self.remember_me = scenario.population.remember_me
        self.service = ServiceTimes(auth, self.server)
        self.login_service_s = self.service.login_mean_s
        self.refresh_service_s = self.service.refresh_mean_s
        self.api_verify_s = scenario.api.verify_time_s
        self.timeout_s = scenario.network.timeout_s
        self.queue_timeout_s = auth.queue_timeout_s
        self.loss_p = scenario.network.loss_probability
        self.in_order = scenario.network.in_order
        self.leeway_s = scenario.clocks.leeway_s
        self.handlers = {
            Sleep: self._sleep, Pause: self._pause, Call: self._call, Open: self._open, Close: self._close,
            Spawn: self._spawn, Await: self._await, Request: self._request, Send: self._send,
            Renew: self._renew, Join: self._join, Refresh: self._refresh, Login: self._login, Adopt: self._adopt, Backoff: self._backoff,
            _Acquire: self._acquire, _Waiting: self._waiting, Views: self._views,
            Clear: self._clear, Reread: self._reread, Jitter: self._jitter,
            WakePhase: lambda task, effect: task.user.streams.wake_phase(),
            Cookies: lambda task, effect: task.tab.visit.jar,
            # the engine's own flows (renewal and login calls) yield a bare number of seconds
            # to sleep: no effect object to build for each of their three waits
            float: self._delay,
        }
        #: whether the flows offer page views in bulk (:class:`~sim.strategies.flow.Views`): only
        #: an engine whose handler may carry them out asks for them
        self.bulk_views = False
        # the callbacks the heap holds, bound once: a bound method made per event is 48 bytes
        # for as long as the event waits (a few per user at any time)
        self.resume, self.step, self._arrive, self._answered = self.resume, self.step, self._arrive, self._answered
        self._join_timeout, self._queue_timeout = self._join_timeout, self._queue_timeout

    # -- the loop ---------------------------------------------------------------------------

    def advance(self) -> None:
        """Take the events in order (:attr:`queue`), calling each, until none is left before the
        end of the run."""
        self.queue.run(self)

    def run(self) -> Recorder:
        with _no_cyclic_gc():
            return self._run()

    def _run(self) -> Recorder:
        scenario = self.scenario
        arrivals = arrival_times(scenario, self.seed, self.replication)
        tabs, skews = user_traits(scenario, self.seed, self.replication)
        p_idle = scenario.population.idle_probability
        offsets = {}  # one tuple per number of tabs, shared by the users that open that many
        for u in range(scenario.population.users) if self.users is None else map(int, self.users):
            streams = UserStreams(scenario, self.seed, self.replication, u)
            user = User(u, streams, float(skews[u]), self)
            n_tabs = int(tabs[u])
            if n_tabs not in offsets:
                offsets[n_tabs] = scenario.population.tab_offsets_s(n_tabs)
            flow = user_flow(self.client, streams, [streams.tab(i) for i in range(n_tabs)],
                             float(arrivals[u]), p_idle, user.clock, offsets[n_tabs], self.bulk_views)
            self.step(Task(flow, None, user), None)
            self._users.append(user)
        del arrivals, tabs, skews  # every user's (a job of one auth-tier instance runs some): not needed now
        if self.FORGET_EVERY_S is not None:
            self.at(self.FORGET_EVERY_S, self._forget, None)
        if self.progress is not None:
            self.at(self.end_s / self.PROGRESS_STEPS, self._progress, 1)
        self.advance()
        self.now = end = self.end_s
        rec = self.rec
        rec.busy.add(0, end)
        rec.queued.add(0, end)
        rec.counts.auth_busy_s = np.asarray(rec.busy.bins)
        rec.counts.auth_queue_s = np.asarray(rec.queued.bins)
        rec.counts.valid_tokens_per_session_max = rec.valid_max
        return rec

    def _progress(self, step: int) -> None:
        # an event of its own that changes nothing: the model's events keep their order
        self.progress(step / self.PROGRESS_STEPS)
        if step + 1 < self.PROGRESS_STEPS:
            self.at(self.end_s * (step + 1) / self.PROGRESS_STEPS, self._progress, step + 1)

    def _forget(self, _) -> None:
        """Drop from the ledger (and from the recorder's per-session state) the tokens no one can
        present or look up again — none of the clients, calls in flight or flows holds them, and
        the server reaches them by no id (:meth:`~sim.strategies.ledger.Ledger.forget_unreachable`)
        — and then the sessions left with no token that no visit or device names, so that memory
        follows the live tokens and sessions, not every one minted. Every answer and count stays
        the same. A pass costs a walk over the tokens kept: it runs when they have grown by
        ``FORGET_GROWTH`` since the last one (checked every ``FORGET_EVERY_S`` scenario seconds)."""
        ledger, now = self.ledger, self.now
        if len(ledger.tokens) >= self._forget_at:
            self._closed = [visit for visit in self._closed if not _dismantled(visit)]
            unheld, sessions = self._unheld_refs, ledger.sessions

            def held(token: Token) -> bool:
                if sys.getrefcount(token) > unheld:
                    return True
                # a visit's end reads its session's newest access token (its exposure) until it expires
                return token.expires_at_s > now and sessions[token.session].newest_access == token.id

            gone = ledger.forget_unreachable(held, functools.partial(self.server.looked_up_from, ledger))
            # a session is read through its tokens, and by a visit (or a device remembering it)
            # naming it, whose end reads it and whose forced login records it
            named = {visit.session for visit in self._open_visits}
            named.update(visit.session for visit in self._closed)
            named.update(user.kept[2] for user in self._users if user.kept is not None)
            self.rec.forget(gone, ledger.forget_sessions(named), now)
            self._forget_at = max(int(self.FORGET_GROWTH * len(ledger.tokens)), self.FORGET_MIN_TOKENS)
        self.at(now + self.FORGET_EVERY_S, self._forget, None)

    def resume(self, arg) -> None:
        self.step(*arg)

    def step(self, task: Task, value=None) -> None:
        """Run ``task`` from where it waits, sending it ``value``, until it waits again or ends.
        A task woken with nothing to send is scheduled as ``at(t, self.step, task)``: one call
        fewer than through :meth:`resume`."""
        task.wake = _NEVER  # it runs
        stack, handlers = task.stack, self.handlers
        while True:
            try:
                effect = stack[-1].send(value)
            except StopIteration as stop:
                stack.pop()
                value = stop.value
                if stack:
                    continue
                self._finish(task)
                return
            value = handlers[type(effect)](task, effect)
            if value is PENDING:
                return

    def _finish(self, task: Task) -> None:
        task.done = True
        task.user.tasks.remove(task)
        if task.waiters:
            for waiter in task.waiters:
                waiter.awaiting -= 1
                if not waiter.awaiting:
                    if waiter.until > self.now:
                        self.at(waiter.until, self.step, waiter)
                    else:
                        self.step(waiter, None)

    def _fire(self, signal: Signal, value) -> None:
        for waiter in signal.waiters:
            if type(waiter) is _TimedWait:
                if not waiter.alive:
                    continue
                waiter.alive = False
                waiter = waiter.task
            self.at(self.now, self.resume, (waiter, value))

    # -- structure: sleeps, sub-flows, visits, concurrency ------------------------------------

    def _sleep(self, task, effect):
        task.timer = effect.timer_origin_s
        task.timer_grid = effect.timer_grid
        task.wake = self.now + effect.seconds
        if effect.seconds != math.inf:
            self.at(task.wake, self.step, task)
        return PENDING

    def _delay(self, task, seconds):
        task.timer = task.timer_grid = None
        task.wake = wake = self.now + seconds
        if seconds != math.inf:
            self.at(wake, self.step, task)
        return PENDING

    def _pause(self, task, effect):
        # after waiting for requests carried out in bulk (fast engine), count from their end
        now = self.now
        task.wake = wake = (task.until if task.until > now else now) + effect.seconds
        self.at(wake, self.step, task)
        return PENDING

    def _call(self, task, effect):
        task.stack.append(effect.flow)
        return None

    def _open(self, task, effect):
        user, client = task.user, self.client
        visit = Visit(user)
        shared = Store()
        # the first tab takes the visit's store and single-flight scope even where each tab has
        # its own (no one else uses them then): two objects fewer a visit
        visit.tabs = [Tab(i, visit, shared if client.storage == "shared" or i == 0 else Store(),
                          visit.flight if client.cross_tab_lock or i == 0 else Flight(), user.streams.tab(i))
                      for i in range(effect.n_tabs)]
        if user.kept is not None:
            visit.jar, shared.held, visit.session = user.kept
            user.kept = None  # read here only: it would keep the visit's first tokens (and their successors)
        self.rec.counts.active(self.now, 1)
        self._open_visits.add(visit)
        return visit

    def _close(self, task, effect):
        visit, now = effect.visit, self.now
        if self.remember_me:
            # the cookie jar and localStorage survive; sessionStorage (per-tab storage) does not
            shared = visit.tabs[0].store.held if self.client.storage == "shared" else None
            visit.user.kept = (visit.jar, shared, visit.session)
        self.rec.counts.active(now, -1)
        for tab in visit.tabs:
            # until the user's next visit, keep only the draws still to come
            tab.draws.trim()
        self._open_visits.discard(visit)
        self._closed.append(visit)
        self.rec.record(now, "logout", user=visit.user.index, session=visit.session)
        if visit.session is not None:
            session = self.ledger.sessions[visit.session]
            if session.newest_access is not None:
                newest = self.ledger.tokens.get(session.newest_access)  # forgotten: it had expired
                self.rec.counts.exposure(now, 0.0 if newest is None else max(0.0, newest.expires_at_s - now))
        return None

    def _spawn(self, task, effect):
        inner = effect.effect
        child = Task(None, effect.tab if effect.tab is not None else task.tab, task.user)
        # the sub-flow goes straight onto the child's stack: no extra generator layer
        if type(inner) is Request:
            self._request(child, inner)
            return child
        if type(inner) is Call:
            child.stack.append(inner.flow)
        else:
            child.stack.append(_one(inner))
        self.step(child, None)
        return child

    def _await(self, task, effect):
        pending = 0
        for handle in effect.handles:
            if type(handle) is float:  # (fast engine) a request carried out in bulk, done then
                if handle > task.until:
                    task.until = handle
            elif not handle.done:
                pending += 1
                if handle.waiters is None:
                    handle.waiters = []
                handle.waiters.append(task)
        if not pending:
            return None
        task.awaiting = pending
        return PENDING


    # -- requests ---------------------------------------------------------------------------

    def _request(self, task, effect):
        """Begin a request in ``task``'s tab, presenting the effect's cookie. When the policy
        sends the token it holds at once (:func:`~sim.strategies.flow.sends_at_once`), the engine
        sends it itself and runs :func:`~sim.strategies.flow.request_flow` only if the answer is
        not a plain success, so most requests cost their two network events and no generator;
        else the flow runs now."""
        task.cookie = effect.cookie
        tab, now = task.tab, self.now
        view, clock = tab.view(), now + tab.visit.user.skew_s
        if view is not tab._sure_view:
            tab._sure_view, tab._sure_until = view, _below(self.client.sends_until_s(view))
        if clock < tab._sure_until and view.held is not None:
            sent = view.held  # what sends_at_once answers, by the policy's pure answer
        else:
            sent = sends_at_once(self.client, view, clock)
        if sent is None:
            task.stack.append(self._request_flow(task, now, None))
            if len(task.stack) == 1:  # a spawned request: its own task
                self.step(task, None)
            return None
        task.rtt = self._transmit(task, sent, True)
        return PENDING

    def _views(self, task, effect):
        return False  # every page view event by event

    def _request_flow(self, task, issued, sent):
        tab = task.tab
        ok = yield from request_flow(self.client, tab.view, task.user.clock, sent, task.cookie)
        self._requested(task, issued, ok)
        return ok

    def _requested(self, task, issued, ok) -> None:
        """Record a request issued at ``issued`` (``ok``: it succeeded)."""
        if ok:
            added_ms = (self.now - issued - task.rtt - self.api_verify_s) * 1000.0
            if added_ms < 4e-7 and not self.events:  # rounds to 0 (the common case: no delay)
                self.rec.counts.requests_without_delay(issued, 1)
                return
        visit, tab = task.tab.visit, task.tab
        if ok:
            self.rec.request(issued, max(round(added_ms, 6), 0.0), visit.user.index, tab.index, visit.session)
        else:
            self.rec.request(issued, None, visit.user.index, tab.index, visit.session)

    def _send(self, task, effect):
        task.rtt = self._transmit(task, effect.held, False)
        return PENDING

    def _transmit(self, task, sent, started: bool) -> float:
        """Send ``sent`` to the API: its arrival and its answer are events. ``started``: the
        request was sent by :meth:`_request`, with no flow running for it yet."""
        draws = task.tab.draws
        now = self.now
        rtt = draws.api_round_trip(now) if draws.moments is not None else draws.api_rtt()
        lost = bool(self.loss_p) and draws.loss() < self.loss_p
        if self.in_order and not lost:
            user = task.tab.visit.user
            user.answers_due_s = max(user.answers_due_s, now + rtt + self.api_verify_s)
        self.at(now + rtt / 2, self._arrive, (task, sent, now, rtt, lost, started))
        return rtt

    def _arrive(self, arg) -> None:
        task, sent, sent_at, rtt, lost, started = arg
        now, ledger = self.now, self.ledger
        # the token itself, which the ledger keeps while held (``ledger.tokens[sent.id]``): one
        # lookup in a large table fewer a request
        verdict = self.server.authorize(ledger, sent.token, now, self.leeway_s)
        if lost:
            done = now + max(self.timeout_s - rtt / 2, 0.0)
            outcome, response = AttemptOutcome.LOST, _LOST
        else:
            done = now + (rtt / 2 + self.api_verify_s)
            outcome = _VERDICT[verdict.status]
            if verdict.reissued:
                response = Response(200 if outcome is _ATTEMPT_OK else 401, held(verdict.reissued),
                                    outcome is _ATTEMPT_EXPIRED)
            else:
                response = (_OK if outcome is _ATTEMPT_OK else
                            _EXPIRED if outcome is _ATTEMPT_EXPIRED else _UNAUTHORIZED)
        self.at(done, self._answered, (task, sent, sent_at, outcome, response, started))

    def _answered(self, arg) -> None:
        task, sent, sent_at, outcome, response, started = arg
        tab = task.tab
        if started and response is _OK and not self.events:
            # the common case first: a request the engine sent itself, answered a plain 200
            now, view = self.now, tab.view()
            clock = now + tab.visit.user.skew_s
            if ((view is tab._sure_view and clock < tab._sure_until and sent is view.held)  # the policy's pure answer
                    or answer_is_done(self.client, view, sent, response, clock)):
                # its attempt and the request counted together: straight into the bins when it
                # added no latency (it rounds to 0), the common case
                attempts_ok = self._attempts_ok
                if (attempts_ok is not None and (now - sent_at - task.rtt - self.api_verify_s) * 1000.0 < 4e-7
                        and sent_at > -1.0):  # int(sent_at) >= 0
                    i = int(sent_at)
                    attempts_ok[i] += 1
                    self._requests_ok[i] += 1
                    counts = self.rec.counts
                    if counts.lo <= sent_at < counts.hi:
                        latency = counts.latency
                        latency.n += 1
                        latency.zeros += 1
                else:
                    self.rec.counts.count("attempt", "ok", sent_at)
                    self._requested(task, sent_at, True)
                if task.stack:
                    self.step(task, True)  # the tab's own request: its flow goes on
                else:
                    self._finish(task)
                return
            self.rec.counts.count("attempt", outcome, sent_at)
            self._request_takes_over(task, sent_at, sent, response)
            return
        visit = tab.visit
        if self.events:
            self.rec.record(sent_at, "attempt", outcome, visit.user.index, tab.index, visit.session, sent.id,
                            latency_ms=(self.now - sent_at) * 1000.0)
        elif not (started and outcome is _ATTEMPT_OK):  # else counted with its request
            self.rec.counts.count("attempt", outcome, sent_at)
        if not started:
            self.step(task, response)
            return
        if response is _OK and answer_is_done(self.client, tab.view(), sent, response, self.now + visit.user.skew_s):
            self._requested(task, sent_at, True)  # (every record kept: its attempt is recorded above)
            if task.stack:
                self.step(task, True)  # the tab's own request: its flow goes on
            else:
                self._finish(task)
            return
        if outcome is _ATTEMPT_OK and not self.events:
            self.rec.counts.count("attempt", outcome, sent_at)
        self._request_takes_over(task, sent_at, sent, response)

    def _request_takes_over(self, task, sent_at, sent, response) -> None:
        """Not a plain success: the request's flow takes over from its first answer."""
        flow = self._request_flow(task, sent_at, sent)
        flow.send(None)  # up to the Send already carried out
        task.stack.append(flow)
        self.step(task, response)

    def _backoff(self, task, effect):
        u = task.user.streams.backoff()
        wait_s = self.client.retry_delay_s(self.scenario.auth.retry_after_s, u)
        tab = task.tab
        self.rec.record(self.now, "backoff", "", tab.visit.user.index, tab.index, tab.visit.session,
                        latency_ms=wait_s * 1000.0)
        return self._sleep(task, Sleep(wait_s))

    def _adopt(self, task, effect):
        task.tab.store.held = effect.held
        return None

    # -- renewal ----------------------------------------------------------------------------

    def _renew(self, task, effect):
        task.stack.append(renew_flow(self.client, effect.action, effect.basis, task.tab.view, effect.cookie))
        return None

    def _join(self, task, effect):
        if effect.timeout_s is None:
            task.tab.flight.inflight.waiters.append(task)
            return PENDING
        wait = _TimedWait(task)
        task.tab.flight.inflight.waiters.append(wait)
        task.wake = self.now + effect.timeout_s  # (fast engine) when this task may run again
        self.at(task.wake, self._join_timeout, wait)
        return PENDING

    def _join_timeout(self, wait) -> None:
        if wait.alive:
            wait.alive = False
            self.resume((wait.task, None))

    def _refresh(self, task, effect):
        task.stack.append(self._refresh_in_flight(task, task.tab, effect.basis, effect.cookie))
        return None

    def _clear(self, task, effect):
        tab = task.tab
        visit = tab.visit
        self._drop(visit, visit.jar)
        visit.jar = None
        for t in (visit.tabs if effect.every_tab else (tab,)):
            t.store.held = None
        return None

    def _reread(self, task, effect):
        jar = task.tab.visit.jar
        return jar is not None and jar.id != task.presented

    def _jitter(self, task, effect):
        return self._sleep(task, Sleep(self.client.timer_jitter_s * task.user.streams.jitter()))

    def _drop(self, visit: Visit, token: Token | None) -> None:
        """The client lets go of ``token``: stranded when none of its tabs ever presented it."""
        if token is not None and token.id not in visit.presented:
            self.rec.record(self.now, "stranded", user=visit.user.index, session=token.session, token=token.id)

    def _refresh_in_flight(self, task: Task, tab: Tab, basis, cookie=LIVE):
        """A refresh call, registered as the one in flight in the tab's single-flight scope when
        the policy is single-flight; returns its outcome. Those who joined it learn whether the
        tab then holds a new token."""
        flight, done = tab.flight, Signal()
        if self.client.single_flight:
            flight.inflight, flight.since, flight.owner = done, self.now, tab
        outcome = yield from self._refresh_call(task, tab, basis, cookie)
        if self.client.releases_lock(outcome):
            if flight.inflight is done:
                flight.inflight = None
            self._fire(done, outcome == RefreshOutcome.OK)
        return outcome

    def _refresh_call(self, task: Task, tab: Tab, basis, cookie=LIVE):
        visit, rec = tab.visit, self.rec
        user = visit.user
        if visit.login is not None:  # a login is replacing the session: its tokens will do
            yield from self._wait(visit.login)
            return RefreshOutcome.OK if tab.store.held is not None else RefreshOutcome.NO_TOKEN
        stale = self.client.unseen(visit.written, tab, self.now) if cookie is LIVE else None
        token = (visit.jar if stale is None else stale.refresh_before) if cookie is LIVE else cookie
        if token is None:
            return RefreshOutcome.SIGNED_OUT
        task.presented = token.id
        _presented(visit, token.id)
        sent_at, trip = self.now, user.streams.auth_round_trip(self.now)
        due_s = user.answers_due_s  # the answers to calls sent before this one (network.in_order)
        lost = bool(self.loss_p) and user.streams.auth_loss() < self.loss_p
        rec.record(sent_at, "refresh_start", user=user.index, tab=tab.index, session=visit.session,
                   token=token.id, basis=basis)
        yield trip.request_leg_s
        result = yield from self._auth_call(
            self.service.refresh_s(user.streams.service),
            lambda now: self.server.begin_refresh(self.ledger, token, basis, now, self.server_rng, sent_at),
            lambda pending, now: self.server.finish_refresh(self.ledger, pending, now),
        )
        if lost:
            yield max(self.timeout_s - (self.now - sent_at), 0.0)
            outcome = RefreshOutcome.LOST
        else:
            yield trip.answer_leg_s(isinstance(result, Rejection), self.now)
            if self.in_order and due_s > self.now:
                yield due_s - self.now
            outcome = (result if isinstance(result, RefreshOutcome) else
                       RefreshOutcome.OK if isinstance(result, Grant) else RefreshOutcome(result.reason))
        rec.record(self.now, "refresh_end", outcome, user.index, tab.index, visit.session, token.id, basis,
                   latency_ms=(self.now - sent_at) * 1000.0)
        if outcome is RefreshOutcome.OK:
            visit.written = self.client.store_write(self.now, tab, tab.store.held, visit.jar)
            tab.store.held = held(result.access)
            visit.jar, dropped = jar_write(self.client, visit.jar, token, result.refresh)
            self._drop(visit, dropped)
        return outcome

    def _wait(self, signal: Signal):
        return (yield _Waiting(signal))

    def _waiting(self, task, effect):
        effect.signal.waiters.append(task)
        return PENDING

    def _login(self, task, effect):
        tab = effect.tab if effect.tab is not None else task.tab
        cause = LoginCause.LAPSED if effect.lapsed else LoginCause.FORCED if effect.forced else LoginCause.VISIT
        task.stack.append(self._login_flow(tab, cause))
        return None

    def _login_flow(self, tab: Tab, cause: LoginCause):
        """Log the user in (for a visit, or forced); one login at a time per user."""
        visit = tab.visit
        user = visit.user
        if visit.login is not None:
            yield from self._wait(visit.login)
            return
        visit.login = Signal()
        self.rec.record(self.now, "login", cause, user.index, tab.index, visit.session)
        while True:
            trip = user.streams.auth_round_trip(self.now)
            yield trip.request_leg_s
            grant = yield from self._auth_call(
                self.service.login_s(user.streams.service), lambda now: None, lambda _, now: self.server.login(self.ledger, user.index, now)
            )
            yield trip.answer_leg_s(False, self.now)
            if grant is not UNAVAILABLE:
                break
            yield LOGIN_RETRY_S  # the login page shows an error; the user tries again
        visit.session, visit.jar, visit.written = grant.access.session, grant.refresh, None
        for filled in (visit.tabs if self.client.storage == "copied" else (tab,)):
            filled.store.held = held(grant.access)
        done, visit.login = visit.login, None
        self._fire(done, None)

    # -- the auth tier ----------------------------------------------------------------------

    def _auth_call(self, service_s: float, begin, finish):
        """Queue for an auth worker (giving up after the queue timeout), then serve: ``begin``
        when the worker picks the call up, ``finish`` after the service time."""
        asked = self.now
        if self._queue_full():
            return UNAVAILABLE  # the queue is full: shed at once (503 with Retry-After)
        served = yield _ACQUIRE
        self.rec.counts.queue_waited(asked, (self.now - asked) * 1000.0)
        if not served:
            return UNAVAILABLE
        self.rec.busy.add(1, self.now)
        pending = begin(self.now)
        yield float(service_s)
        result = finish(pending, self.now)
        self.rec.busy.add(-1, self.now)
        self._release()
        return result

    def _acquire(self, task, effect):
        if self.workers_free:
            self.workers_free -= 1
            return True
        self._enqueue(task)
        return PENDING

    def _queue_full(self) -> bool:
        """No worker free and ``auth.queue_limit`` calls already waiting: a call is shed at once."""
        return self.queue_limit is not None and not self.workers_free and self.auth_waiting >= self.queue_limit

    def _enqueue(self, waiter) -> None:
        """Queue ``waiter`` (a task, or a fast engine's :class:`_RefreshCall`) for an auth worker,
        with its queue timeout."""
        entry = [waiter, self.now, True]
        self.auth_queue.append(entry)
        self.auth_waiting += 1
        self.rec.queued.add(1, self.now)
        self.at(self.now + self.queue_timeout_s, self._queue_timeout, entry)

    def _queue_timeout(self, entry) -> None:
        if entry[2]:
            entry[2] = False
            self.auth_waiting -= 1
            self.rec.queued.add(-1, self.now)
            if type(entry[0]) is _RefreshCall:
                self._call_acquired((entry[0], False))
            else:
                self.step(entry[0], False)

    def _release(self) -> None:
        # a queued refresh call of the fast engine (a _RefreshCall, queued only by
        # FastSimulation) goes on by its callback; a task, by resuming it
        queue = self.auth_queue
        while self.auth_queue_head < len(queue):
            entry = queue[self.auth_queue_head]
            self.auth_queue_head += 1
            if entry[2]:
                entry[2] = False
                self.auth_waiting -= 1
                self.rec.queued.add(-1, self.now)
                waiter = entry[0]
                self.at(self.now, self._call_acquired if type(waiter) is _RefreshCall else self.resume, (waiter, True))
                break
        else:
            self.workers_free += 1
        if self.auth_queue_head > 1024 and self.auth_queue_head * 2 > len(queue):
            del queue[:self.auth_queue_head]
            self.auth_queue_head = 0


class _RefreshCall:
    """A refresh call of the fast engine carried by callbacks: what :meth:`Simulation._refresh_in_flight`
    and :meth:`Simulation._refresh_call` keep in their frames between the call's events."""

    # ``stale`` too: the ledger forgets what no one holds, and the exact engine's frame holds it
    __slots__ = ("task", "tab", "token", "stale", "basis", "done", "sent_at", "trip", "due_s", "lost", "asked", "pending")


class _TimedWait:
    """A task waiting for a :class:`Signal` with a timeout; ``alive`` until either comes."""

    __slots__ = ("task", "alive")

    def __init__(self, task) -> None:
        self.task = task
        self.alive = True


class _Waiting:
    """Internal effect: wait for a :class:`Signal`; sends back the value it fires with."""

    __slots__ = ("signal",)

    def __init__(self, signal: Signal) -> None:
        self.signal = signal



#: below this instant (seconds) a plain request's added latency, (t + rtt/2) + (rtt/2 + verify)
#: less t, rtt and verify, is a rounding error of a few 2**-36 s: counted as none whatever it is
_EXACT_BELOW_S = 2.0 ** 16


def _below(t: float) -> float:
    """An instant safely before ``t``: closer to it, rounding could decide either way."""
    return t - (1e-6 + abs(t) * 1e-12) if math.isfinite(t) else t


class FastSimulation(Simulation):
    """The same model, with plain requests carried out in one step.

    A request is plain when the policy would send the token it holds right away (no renewal,
    nothing to wait for), the answer cannot be lost (its loss draw says so), and the server would
    answer a plain ``ok`` when it arrives (:meth:`~sim.strategies.server.ServerPolicy.plain_at`):
    nothing it does can change any state, so its attempt and its record are counted at once, its
    round trip drawn from the same stream, and the task that waits for it resumes when it would
    have ended. A send inside a request's flow (the retry after a renewal) whose answer is sure
    to be plain is one event, its answer, instead of two. A renewal timer whose ticks cannot act
    (:meth:`~sim.strategies.client.ClientPolicy.on_timer` says NOTHING) while nothing else of
    its user can happen sleeps through them to the first that may. Everything else — renewals,
    logins, the auth tier, lost or refused requests — runs exactly as in :class:`Simulation`;
    a refresh call's steps are callbacks at the same events instead of generator layers resumed
    at each. With ``keep_events`` (per-record output) nothing is skipped."""

    #: the compiled loop over the page views that are plain without asking (None: the Python one)
    sure_views = None if _KERNEL is None else staticmethod(_KERNEL.sure_views)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # bound once (see Simulation.__init__)
        self._answer_plain, self._call_arrive, self._call_served = self._answer_plain, self._call_arrive, self._call_served
        self._call_answered, self._call_lost, self._call_in_order = self._call_answered, self._call_lost, self._call_in_order
        self._call_acquired = self._call_acquired
        # correlated round trips depend on what else of the user's is in flight: event by event
        if not self.events and not self.scenario.network.rtt_correlation and not self.scenario.network.in_order:
            self.handlers[Request] = self._request_fast
            self.handlers[Spawn] = self._spawn_fast
            self.handlers[Views] = self._views
            self.bulk_views = True
            self.handlers[Send] = self._send_fast
        else:
            self.handlers[Views] = super()._views
        self.handlers[Refresh] = self._refresh_fast
        #: a timer's next_tick_s and wake_s as numbers, for the walk over its quiet ticks
        self._tick_rule = self.client.tick_rule if type(self.client) is TimerClient else None

    def _plain(self, tab: Tab) -> float | None:
        """Carry out a plain request of ``tab`` now, returning when it ends; None (nothing
        taken or counted) when the request is not plain."""
        view = tab.view()
        sent = view.held
        if sent is None:
            return None
        client, now = self.client, self.now
        clock = now + tab.visit.user.skew_s
        if client.before_send(view, clock) is not _SEND:
            return None
        draws = tab.draws
        rtt = draws.api_rtt.peek(1)[0]
        if self.loss_p and draws.loss.peek(1)[0] < self.loss_p:
            return None
        arrive = now + rtt / 2
        if not self.server.plain_at(self.ledger, self.ledger.tokens[sent.id], arrive, self.leeway_s):
            return None
        if client.on_response(view, sent, _OK, 1, clock) is not _DONE:
            return None
        draws.api_rtt.skip(1)
        if self.loss_p:
            draws.loss.skip(1)
        done = arrive + (rtt / 2 + self.api_verify_s)
        if done < self.end_s:
            counts = self.rec.counts
            counts.count("attempt", "ok", now)
            counts.request(now, max(round((done - now - rtt - self.api_verify_s) * 1000.0, 6), 0.0))
        return done

    def _views(self, task, effect):
        """Page views in bulk (:func:`~sim.strategies.flow.plain_page_views`) until the next
        instant anything else of this user can happen: none of its other tasks (visit, tabs,
        timers, requests) runs before then, and other users touch nothing of its own (only the
        auth tier, which plain requests do not use), so what the views do is what they would
        do event by event. The compiled kernel's :attr:`sure_views` carries out those that are
        plain without asking, :meth:`_asked_views` the rest."""
        tab = task.tab
        view = tab.view()
        sent = view.held
        if sent is None:
            return False
        horizon, timers = math.inf, None
        for other in tab.visit.user.tasks:
            if other is not task:
                if other.timer is not None and other.wake > -math.inf:
                    timers = (timers or []) + [other]
                elif other.wake < horizon:
                    horizon = other.wake
        if timers:
            for timer in timers:
                horizon = self._timer_acts(timer, horizon)
        client, server, ledger, loss_p = self.client, self.server, self.ledger, self.loss_p
        token = ledger.tokens[sent.id]
        skew, end = tab.visit.user.skew_s, self.end_s
        if loss_p:
            sure_sends, sure_arrives = -math.inf, -math.inf  # every view asks its loss draws
        else:
            # the policies' pure answers, with a margin for the rounding of the engine's sums
            sure_sends = _below(min(client.sends_until_s(view), client.pages_until_s(view)) - skew)
            sure_arrives = _below(server.plain_until_s(ledger, token, self.leeway_s))
        counts = self.rec.counts
        # below this instant a view whose last request ends in the run counts as none added
        # latency at once (see :data:`_EXACT_BELOW_S`)
        at_once_below = min(end, _EXACT_BELOW_S) if self._attempts_ok is not None and not loss_p else -math.inf
        draws, t_next, views = tab.draws, self.now, 0
        if self.sure_views is not None and at_once_below > t_next:
            views, t_next = self.sure_views(
                draws.burst, draws.api_rtt, draws.think, draws.idle_coin, draws.idle_gap, effect.idle_probability,
                t_next, min(horizon, end), sure_sends, sure_arrives, self.api_verify_s, at_once_below,
                self._attempts_ok, self._requests_ok, counts.latency, counts.lo, counts.hi)
        if t_next < horizon and t_next < end:
            more, t_next = self._asked_views(tab, view, sent, token, effect.idle_probability, t_next, horizon,
                                             sure_sends, sure_arrives, at_once_below)
            views += more
        if not views:
            return False
        task.wake = t_next
        # stopped before the horizon and the end: at a view that is not plain, which asking
        # again at t_next would find (nothing of the user's changes before the horizon), so the
        # flow does that one itself
        self.at(t_next, self.resume, (task, not (t_next < horizon and t_next < end)))
        return PENDING

    def _asked_views(self, tab: Tab, view: TabView, sent: Held, token: Token, idle_probability: float, start: float,
                     horizon: float, sure_sends: float, sure_arrives: float, at_once_below: float) -> tuple[int, float]:
        """:meth:`_views`' page views from ``start`` in Python
        (:func:`~sim.strategies.flow.plain_page_views`): those the compiled kernel does not carry
        out, or all where it is not built. Returns (views done, when the next one starts)."""
        client, server, ledger, leeway, loss_p = self.client, self.server, self.ledger, self.leeway_s, self.loss_p
        skew, verify, end = tab.visit.user.skew_s, self.api_verify_s, self.end_s
        draws = tab.draws
        loss = draws.loss if loss_p else None
        counts = self.rec.counts
        send = _SEND
        done_ = _DONE

        def plain(t, rtts, top):
            clock = t + skew
            if client.before_send(view, clock) is not send or client.on_response(view, sent, _OK, 1, clock) is not done_:
                return False
            if client.before_page(view, clock) is not _NOTHING:
                return False
            if loss_p and min(loss.peek(len(rtts))) < loss_p:
                return False
            return server.plain_at(ledger, token, t + top / 2, leeway)

        attempts_ok, requests_ok = self._attempts_ok, self._requests_ok
        latency, lo, hi = counts.latency, counts.lo, counts.hi

        def view_done(t, rtts, top):
            # the arithmetic of the event-by-event engine; rounding is monotonic, so the request
            # with the slowest round trip ``top`` ends last
            h = top / 2
            done_max = (t + h) + (h + verify)
            if done_max < at_once_below:
                # every request ends in the run, and its added latency is rounding noise under
                # one unit in the last place of the instant (an ulp under 2**16 s is 2**-36 s),
                # far under the 1e-6 ms the sketch counts as none: all count as none, straight
                # into the bins (Counts.bins_of)
                n, i = len(rtts), int(t)
                attempts_ok[i] += n
                requests_ok[i] += n
                if lo <= t < hi:
                    latency.n += n
                    latency.zeros += n
                return done_max
            done_max, ok, zero = t, 0, 0
            for rtt in rtts:
                h = rtt / 2
                done = (t + h) + (h + verify)
                if done > done_max:
                    done_max = done
                if done < end:
                    ok += 1
                    added_ms = (done - t - rtt - verify) * 1000.0
                    if added_ms <= 1e-6:
                        zero += 1
                    else:
                        counts.request(t, max(round(added_ms, 6), 0.0))
            if loss_p:
                loss.skip(len(rtts))
            if ok:
                if attempts_ok is not None:  # straight into the bins (Counts.bins_of)
                    i = int(t)
                    attempts_ok[i] += ok
                    if zero:
                        requests_ok[i] += zero
                        if lo <= t < hi:
                            latency.n += zero
                            latency.zeros += zero
                else:
                    counts.count("attempt", "ok", t, ok)
                    if zero:
                        counts.requests_without_delay(t, zero)
            return done_max

        return plain_page_views(draws, idle_probability, start, horizon, end, plain, view_done, sure_sends,
                                sure_arrives)

    def _timer_acts(self, timer: Task, limit: float) -> float:
        """When the sleeping renewal timer ``timer`` may first do anything, looking over its
        ticks (:func:`~sim.strategies.flow.timer_flow`, with the same arithmetic) until ``limit``:
        a tick whose :meth:`~sim.strategies.client.ClientPolicy.on_timer` says NOTHING changes
        nothing, so page views need not stop for it while nothing else of the user happens.
        Returns ``limit`` when no tick before it may act."""
        return min(self._timer_next(timer, limit), limit)

    def _timer_next(self, timer: Task, limit: float) -> float:
        """The first tick of the sleeping timer ``timer`` (from its wake on) that may act or
        that is at ``limit`` or later (:meth:`_timer_acts`)."""
        client, view, skew, origin = self.client, timer.tab.view(), timer.user.skew_s, timer.timer
        w, nothing = timer.wake, _NOTHING
        quiet_until = _below(client.timer_quiet_until_s(view))  # (with a margin for rounding)
        budget = 10_000
        if self._tick_rule is not None:  # the ticks before quiet_until, in one call (compiled where built)
            expires = None if view.held is None else view.held.expires_at_s
            w, walked = _QUIET_TICKS(w, limit, skew, quiet_until, origin, *self._tick_rule, expires,
                                     timer.timer_grid, budget)
            budget -= walked
        for _ in range(budget):
            if not w < limit:
                return w
            clock = w + skew
            if not clock < quiet_until and client.on_timer(view, clock) is not nothing:
                return w
            w = w + max(client.wake_s(client.next_tick_s(view, clock, origin), timer.timer_grid) - clock, 0.0)
        return w

    def _sleep(self, task, effect):
        """A renewal timer sleeping until its next tick wakes at the first tick that may act
        instead (:meth:`_timer_next`), when that comes before anything else of its user can
        happen: every other task of the user sleeps until a known instant (none runs, waits for
        a call or for another task), and other users touch nothing of its own, so the ticks in
        between see what this one sees and do nothing, as they would event by event."""
        if effect.timer_origin_s is None or effect.seconds == math.inf:
            return super()._sleep(task, effect)
        horizon = self.end_s
        for other in task.user.tasks:
            if other is not task and other.wake < horizon:
                horizon = other.wake
        task.timer = effect.timer_origin_s
        task.timer_grid = effect.timer_grid
        task.wake = self.now + effect.seconds
        if task.wake < horizon:
            task.wake = self._timer_next(task, horizon)
        self.at(task.wake, self.step, task)
        return PENDING

    def _send_fast(self, task, effect):
        """A send inside a request's flow (a retry after a renewal, most often): when the
        answer is sure to be a plain ``ok`` (the same test as :meth:`_plain`), its attempt is
        counted now and the flow resumes with it when it would have come, one event instead of
        two; the policy reads the answer in the flow, as it would event by event."""
        draws = task.tab.draws
        rtt = draws.api_rtt.head()
        loss_p = self.loss_p
        if loss_p and draws.loss.head() < loss_p:
            return self._send(task, effect)
        now = self.now
        arrive = now + rtt / 2
        if not self.server.plain_at(self.ledger, self.ledger.tokens[effect.held.id], arrive, self.leeway_s):
            return self._send(task, effect)
        draws.api_rtt.skip(1)
        if loss_p:
            draws.loss.skip(1)
        task.rtt = rtt
        done = arrive + (rtt / 2 + self.api_verify_s)
        if done < self.end_s:
            if self._attempts_ok is not None:  # straight into the bins (Counts.bins_of)
                self._attempts_ok[int(now)] += 1
            else:
                self.rec.counts.count("attempt", "ok", now)
        self.at(done, self._answer_plain, (task, _OK))
        return PENDING


    # -- a refresh call by callbacks --------------------------------------------------------
    # The same steps as Simulation._refresh_in_flight, _refresh_call and _auth_call, at the same
    # events pushed in the same order (so ties between equal instants break the same way), with
    # the task resumed only at the answer instead of through three generator layers at each.

    def _refresh_fast(self, task, effect):
        tab = task.tab
        visit = tab.visit
        cookie = effect.cookie
        # (no stale read to ask the policy about without a write: unseen(None, ...) is None)
        stale = self.client.unseen(visit.written, tab, self.now) if cookie is LIVE and visit.written is not None else None
        token = (visit.jar if stale is None else stale.refresh_before) if cookie is LIVE else cookie
        if visit.login is not None or token is None:  # waits for a login, or signed out: as the exact engine
            return self._refresh(task, effect)
        call = _RefreshCall()
        call.task, call.tab, call.token, call.stale, call.basis = task, tab, token, stale, effect.basis
        now = self.now
        call.done = None  # what those who joined the call wait for: only a single-flight scope's
        if self.client.single_flight:
            flight = tab.flight
            call.done = flight.inflight = Signal()
            flight.since, flight.owner = now, tab
        user = visit.user
        task.presented = token.id
        _presented(visit, token.id)
        call.trip = trip = user.streams.auth_round_trip(now)
        call.sent_at = now
        call.due_s = user.answers_due_s
        call.lost = bool(self.loss_p) and user.streams.auth_loss() < self.loss_p
        self.rec.record(now, "refresh_start", "", user.index, tab.index, visit.session, token.id, effect.basis)
        self._call_wait(call, trip.request_leg_s, self._call_arrive)
        return PENDING

    def _call_wait(self, call: _RefreshCall, seconds: float, then) -> None:
        task = call.task
        task.timer = task.timer_grid = None
        task.wake = wake = self.now + seconds
        if seconds != math.inf:
            self.at(wake, then, call)

    def _call_arrive(self, call: _RefreshCall) -> None:
        call.task.wake = _NEVER
        call.pending = self.service.refresh_s(call.task.user.streams.service)  # the service time, until served
        call.asked = self.now
        if self.queue_limit is not None and self._queue_full():
            self._call_answer(call, UNAVAILABLE)  # the queue is full: shed at once
        elif self.workers_free:
            self.workers_free -= 1
            self._call_acquired((call, True))
        else:
            self._enqueue(call)

    def _call_acquired(self, arg) -> None:
        call, served = arg
        if served:
            call.task.wake = _NEVER
        now = self.now
        self.rec.counts.queue_waited(call.asked, (now - call.asked) * 1000.0)
        if not served:
            self._call_answer(call, UNAVAILABLE)
            return
        self.rec.busy.add(1, now)
        service_s = call.pending
        call.pending = self.server.begin_refresh(self.ledger, call.token, call.basis, now, self.server_rng, call.sent_at)
        self._call_wait(call, float(service_s), self._call_served)

    def _call_served(self, call: _RefreshCall) -> None:
        call.task.wake = _NEVER
        result = self.server.finish_refresh(self.ledger, call.pending, self.now)
        self.rec.busy.add(-1, self.now)
        self._release()
        self._call_answer(call, result)

    def _call_answer(self, call: _RefreshCall, result) -> None:
        call.pending = result
        if call.lost:
            self._call_wait(call, max(self.timeout_s - (self.now - call.sent_at), 0.0), self._call_lost)
        else:
            self._call_wait(call, call.trip.answer_leg_s(isinstance(result, Rejection), self.now), self._call_answered)

    def _call_lost(self, call: _RefreshCall) -> None:
        call.task.wake = _NEVER
        self._call_end(call, _REFRESH_LOST)

    def _call_answered(self, call: _RefreshCall) -> None:
        call.task.wake = _NEVER
        if self.in_order and call.due_s > self.now:
            self._call_wait(call, call.due_s - self.now, self._call_in_order)
            return
        self._call_outcome(call)

    def _call_in_order(self, call: _RefreshCall) -> None:
        call.task.wake = _NEVER
        self._call_outcome(call)

    def _call_outcome(self, call: _RefreshCall) -> None:
        result = call.pending
        self._call_end(call, _REFRESH_OK if type(result) is Grant else
                       result if isinstance(result, RefreshOutcome) else RefreshOutcome(result.reason))

    def _call_end(self, call: _RefreshCall, outcome) -> None:
        tab, token, now = call.tab, call.token, self.now
        visit = tab.visit
        self.rec.record(now, "refresh_end", outcome, visit.user.index, tab.index, visit.session, token.id, call.basis,
                        latency_ms=(now - call.sent_at) * 1000.0)
        if outcome is _REFRESH_OK:
            result = call.pending
            visit.written = self.client.store_write(now, tab, tab.store.held, visit.jar)
            tab.store.held = held(result.access)
            visit.jar, dropped = jar_write(self.client, visit.jar, token, result.refresh)
            if dropped is not None:
                self._drop(visit, dropped)
        done = call.done
        if done is not None and self.client.releases_lock(outcome):
            flight = tab.flight
            if flight.inflight is done:
                flight.inflight = None
            if done.waiters:
                self._fire(done, outcome == _REFRESH_OK)
        self.step(call.task, outcome)

    def _answer_plain(self, arg) -> None:
        self.step(*arg)

    def _request_fast(self, task, effect):
        done = self._plain(task.tab)
        if done is None:
            return self._request(task, effect)
        task.until = done
        return True

    def _spawn_fast(self, task, effect):
        if type(effect.effect) is Request and effect.tab is None:
            done = self._plain(task.tab)
            if done is not None:
                return done
        return self._spawn(task, effect)
