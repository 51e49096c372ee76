"""The life of a user, sans-IO: visits, tabs, page views, timers, requests and renewals.

Every function here is a generator that *yields effects* for a driver to carry out and is *sent*
the results back, as h11 and h2 do for HTTP. They hold the rules every driver must share — when a
user arrives, visits, opens tabs and leaves; what a tab does between page views; when a timer
ticks; which token a renewal is about (its basis); that every resend passes the policy's check
again; what a tab that waited for another's refresh does next — so that the SimPy-style engine
(:mod:`sim.engine`) and the gevent/Locust users (:mod:`loadtests.client`) cannot drift apart. A
driver brings its own clock, network and concurrency; it runs a flow with :func:`drive` (plain
blocking calls) or with its own scheduler.

Effects, and what the driver sends back:

- :class:`Sleep` — pause ``seconds`` from now; :class:`Pause` — pause ``seconds`` after the work
  done since the flow last paused (a driver in wall time counts from when that work was *due*, so
  lateness does not pile up); send back nothing;
- :class:`Open` — a visit starts: the driver gives the user ``n_tabs`` tabs (token stores and
  single-flight scopes) and sends back a :class:`VisitHandle`; :class:`Close` — the visit ends
  (the driver records the logout); send back nothing;
- :class:`Spawn` — carry out ``effect`` concurrently for ``tab``; send back a handle;
  :class:`Await` — wait until every handle in ``handles`` is done; send back nothing;
- :class:`Views` — the driver may carry out the tab's next page views in bulk while they are
  plain (see :func:`plain_page_views`); send back True when it did (the flow then offers the
  next page views again), False to have the flow do the next page view itself (also after views
  in bulk that stopped at one that is not plain);
- :class:`Request` — carry out one request (:func:`request_flow`) in the task's tab, recording it,
  with its ``cookie`` (see :class:`Cookies`); send back True when it succeeded;
- :class:`Send` — send the request with ``held``; send back the :class:`Response`;
- :class:`Renew` — carry out :func:`renew_flow` for ``action``, ``basis`` and ``cookie``; send back
  True when the tab then holds a token;
- :class:`Join` — wait for the refresh in flight in the tab's single-flight scope, at most
  ``timeout_s`` (None: as long as it takes); send back its result (True if it got a token), or
  None when the wait timed out;
- :class:`Refresh` — make a refresh call about ``basis`` (registering it as the one in flight
  when the policy is single-flight), presenting ``cookie``: the refresh token the jar holds when
  the call leaves (:data:`LIVE`), or the one a server-rendered page's request carried (a
  snapshot, which may be None: the jar was empty); send back its :class:`RefreshOutcome`;
- :class:`Cookies` — (server-rendered pages, ``policy.render = "server"``) the browser sends a
  page request: send back the refresh token the jar holds now (None when empty), the snapshot
  every server request of that page presents;
- :class:`Backoff` — the auth tier shed a refresh (503): wait ``policy.retry_delay_s`` of its
  ``Retry-After`` (the scenario's ``auth.retry_after`` in scenario seconds) and a uniform draw;
  send back nothing;
- :class:`Login` — log in (``forced``: the session was lost); send back nothing;
- :class:`Adopt` — store the re-issued token ``held``; send back nothing;
- :class:`Clear` — a refused refresh's failure path deletes credentials: the jar's refresh
  token and the tab's access token, or (``every_tab``) every tab's; send back nothing;
- :class:`Reread` — after a refused refresh, look at the jar again: send back True when it now
  holds a refresh token other than the one the refused call presented (a sibling's rotation);
- :class:`Jitter` — (timers) pause a uniform draw in ``[0, policy.timer_jitter_s)``; send back
  nothing;
- :class:`WakePhase` — send back a uniform draw in ``[0, 1)`` (the phase of the browser's
  wake-up grid for hidden tabs, ``policy.wake_up_s``).

The refresh token a driver keeps in the shared jar follows :func:`jar_write` (the policy's
``jar_writes``); a refresh token the client drops without ever presenting it — an answer the jar
discarded or overwrote, a jar a failure path deleted — is recorded as ``stranded``.

Outcomes are typed (:class:`RefreshOutcome`, :class:`AttemptOutcome`); they are string enums whose
values are the record vocabulary of :mod:`sim.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Generator, Protocol, Sequence

from sim.strategies.client import Action, ClientPolicy, Held, TabView


class RefreshOutcome(StrEnum):
    """How a refresh call ended, as the client saw it (``refresh_end`` outcomes)."""

    OK = "ok"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REUSE_DETECTED = "reuse_detected"
    UNAVAILABLE = "unavailable"  # the auth tier answered 503 (its queue timed out)
    LOST = "lost"  # no answer before the client's timeout
    NO_TOKEN = "no_token"  # a login replaced the session meanwhile, and left this tab no token
    SIGNED_OUT = "signed_out"  # the jar holds no refresh token (a failure path deleted it)
    UNAUTHENTICATED = "unauthenticated"  # the server accepted a replay but answered unauthenticated


class AttemptOutcome(StrEnum):
    """The API's verdict on one send of a request (``attempt`` outcomes)."""

    OK = "ok"
    EXPIRED = "expired"
    INVALID = "invalid"
    LOST = "lost"


class LoginCause(StrEnum):
    """Why a user logs in (``login`` outcomes): a visit without a remembered session; a session
    lost while in use although the server had not let it lapse (refresh refused or revoked, reuse
    detected, a store a failure path cleared); or a server-side credential that lapsed — a
    refresh token past its absolute or idle lifetime, a sliding token the API answered as
    expired. Both of the latter are forced logins; only ``forced`` ones can be spurious."""

    VISIT = "visit"
    FORCED = "forced"
    LAPSED = "lapsed"


# not frozen: made per visit and timer tick, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class Sleep:
    seconds: float
    #: a renewal timer's sleep until its next tick (the timer's phase starts at this instant, by
    #: the client's clock): a driver that knows the timer's ticks may look ahead over them
    timer_origin_s: float | None = None
    #: (a renewal timer's sleep) the tab is hidden: the phase of the wake-up grid its ticks run
    #: on (None: a visible tab)
    timer_grid: float | None = None


@dataclass(slots=True)  # not frozen: a tab yields the same one after every page view, its length set anew
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Open:
    n_tabs: int


@dataclass(frozen=True, slots=True)
class Close:
    visit: Any


@dataclass(frozen=True, slots=True)
class Spawn:
    effect: Any
    tab: Any = None


@dataclass(frozen=True, slots=True)
class Await:
    handles: tuple


class _Live:
    """The refresh token the jar holds when a refresh call leaves (not a snapshot)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LIVE"


#: a :class:`Refresh` / :class:`Renew` / :class:`Request` cookie meaning "read the jar when the
#: refresh call leaves" (a browser's own call), as opposed to a snapshot
LIVE = _Live()


@dataclass(frozen=True, slots=True)
class Request:
    #: the refresh cookie its renewals present: LIVE (a browser request) or the snapshot the
    #: page request carried (a server-rendered page's request, see :class:`Cookies`)
    cookie: Any = LIVE


@dataclass(frozen=True, slots=True)
class Cookies:
    """A server-rendered page request leaves the browser: send back the jar's refresh token."""


@dataclass(frozen=True, slots=True)
class Views:
    """Offer the driver to carry out the tab's next page views in bulk, as :func:`tab_flow`
    would (:func:`plain_page_views`), while every request of them is plain."""

    draws: Any
    idle_probability: float


@dataclass(slots=True)  # not frozen: made per renewal, and a frozen one's __init__ costs more
class Send:
    held: Held


@dataclass(slots=True)  # not frozen: made per renewal, and a frozen one's __init__ costs more
class Renew:
    action: Action
    basis: Any
    cookie: Any = LIVE


@dataclass(frozen=True, slots=True)
class Join:
    timeout_s: float | None = None


@dataclass(slots=True)  # not frozen: made per renewal, and a frozen one's __init__ costs more
class Refresh:
    basis: Any
    cookie: Any = LIVE


@dataclass(frozen=True, slots=True)
class Login:
    forced: bool = True
    tab: Any = None  # None: the tab of the task that yields it
    lapsed: bool = False  # forced because the server-side credential lapsed (see LoginCause)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait before trying a shed refresh again: ``policy.retry_delay_s`` of the ``Retry-After``
    the auth tier answered and a uniform draw of the driver's."""


@dataclass(frozen=True, slots=True)
class Adopt:
    held: Held


@dataclass(frozen=True, slots=True)
class Clear:
    """A failure path deletes credentials: the jar and this tab's access token, or every tab's."""

    every_tab: bool = False


@dataclass(frozen=True, slots=True)
class Reread:
    """Look at the jar again after a refused refresh (see the module's list of effects)."""


@dataclass(frozen=True, slots=True)
class Jitter:
    """Pause a uniform draw in ``[0, policy.timer_jitter_s)`` (a timer's random offset)."""


@dataclass(frozen=True, slots=True)
class WakePhase:
    """Draw the phase of the browser's wake-up grid for a visit: send back a uniform draw in
    [0, 1) from the user's own stream."""


# not frozen: made per timer renewal, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class Call:
    """Carry out the sub-flow ``flow`` in the same task; send back what it returns."""

    flow: Any


class VisitHandle(Protocol):
    """What a driver hands back for :class:`Open`: the visit's tabs (each with a ``view()``),
    whether the visit is over, and the refresh token in the cookie jar (``jar``: a remembered
    one when the device kept its tokens from an earlier visit, else None)."""

    tabs: list
    over: bool
    jar: Any


class UserDraws(Protocol):
    """The draws a user's life takes (:class:`sim.engine.streams.UserStreams`)."""

    visit_length: Callable[[], float] | None
    away: Callable[[], float] | None


class TabDraws(Protocol):
    """The draws one tab takes (:class:`sim.engine.streams.TabStreams`)."""

    burst: Callable[[], float]
    idle_coin: Callable[[], float]
    idle_gap: Callable[[], float]
    think: Callable[[], float]


RENEW = (Action.REFRESH, Action.WAIT)
# members bound to module names where a flow or helper asks per request (see sim.strategies.client)
_SEND, _DONE, _ADOPT, _WAIT = Action.SEND, Action.DONE, Action.ADOPT, Action.WAIT
_REFRESHED, _UNAVAILABLE = RefreshOutcome.OK, RefreshOutcome.UNAVAILABLE
_REQUEST = Request()
_SPAWN_REQUEST = Spawn(_REQUEST)
_COOKIES = Cookies()
#: refresh outcomes that mean the session is gone, so the user must log in again; a 503 or an
#: answer that never came only fails the requests that needed the token
SESSION_LOST = frozenset({RefreshOutcome.EXPIRED, RefreshOutcome.REVOKED, RefreshOutcome.REUSE_DETECTED,
                          RefreshOutcome.SIGNED_OUT, RefreshOutcome.UNAUTHENTICATED})
#: refusals a client's recovery policy and failure path act on (``invalid_grant``)
REFUSED = frozenset({RefreshOutcome.EXPIRED, RefreshOutcome.REVOKED, RefreshOutcome.REUSE_DETECTED,
                     RefreshOutcome.UNAUTHENTICATED})
Flow = Generator[Any, Any, Any]
#: seconds a user waits before trying a failed login (the auth tier answered 503) again
LOGIN_RETRY_S = 1.0


def basis_of(view: TabView) -> Any:
    """The id of the token a renewal decided now would be about (None when the tab holds none)."""
    return view.held.id if view.held is not None else None


# -- a user's life ------------------------------------------------------------------------------


def user_flow(policy: ClientPolicy, draws: UserDraws, tab_draws: list[TabDraws], arrival_s: float,
              idle_probability: float, clock: Callable[[], float], tab_offsets_s: Sequence[float] = (),
              bulk: bool = True) -> Flow:
    """A user: arrives after ``arrival_s``, then visits (each visit as long as a ``visit_length``
    draw, forever when there is none), away for an ``away`` draw between visits; never returns
    when there is no ``away``. ``tab_draws``: one set of draws per tab (its length is the number
    of tabs). ``clock()`` is the driver's clock (scenario seconds); ``tab_offsets_s``: see
    :func:`visit_flow`; ``bulk``: see :func:`tab_flow`."""
    yield Sleep(arrival_s)
    while True:
        length = draws.visit_length() if draws.visit_length is not None else math.inf
        yield Call(visit_flow(policy, tab_draws, length, idle_probability, clock, tab_offsets_s, bulk))
        if draws.away is None:
            return
        yield Sleep(draws.away())


def visit_flow(policy: ClientPolicy, tab_draws: list[TabDraws], length_s: float, idle_probability: float,
               clock: Callable[[], float], tab_offsets_s: Sequence[float] = (), bulk: bool = True) -> Flow:
    """One visit: open the tabs, log in from the first, run every tab (and its timer when the
    policy has one) until ``length_s`` after the visit began, then leave. Tab ``i`` starts
    ``tab_offsets_s[i]`` after the first (0 beyond the sequence): its page views and its
    timer's phase; the last tab is in front, the others are hidden (their timers run on the
    policy's wake-up grid). ``bulk``: see :func:`tab_flow`."""
    started = clock()
    visit = yield Open(len(tab_draws))
    first = visit.tabs[0]
    view = first.view()
    if view.held is not None and policy.remaining_s(view.held, clock()) > 0:
        pass  # a remembered access token still valid: use it
    elif visit.jar is not None:
        # a remembered refresh token: refresh; if it lapsed or was revoked, renew_flow logs in
        renewal = yield Spawn(Call(renew_flow(policy, Action.REFRESH, basis_of(view), first.view)), first)
        yield Await((renewal,))
    else:
        yield Login(forced=False, tab=first)
    last = len(visit.tabs) - 1
    grid = None
    if policy.timer_interval_s is not None and policy.wake_up_s > 0 and last > 0:
        grid = started + (yield WakePhase()) * policy.wake_up_s
    for i, (tab, draws) in enumerate(zip(visit.tabs, tab_draws)):
        delay = tab_offsets_s[i] if i < len(tab_offsets_s) else 0.0
        views = tab_flow(draws, idle_probability, visit, policy.render == "server",
                         page_renewal(policy, tab.view, clock) if policy.page_refresh_s is not None else None, bulk)
        yield Spawn(Call(_after(delay, views) if delay > 0 else views), tab)
        if policy.timer_interval_s is not None:
            timer = timer_flow(policy, tab.view, visit, clock, started + delay, grid if i != last else None)
            yield Spawn(Call(_after(delay, timer) if delay > 0 else timer), tab)
    yield Sleep(max(length_s - (clock() - started), 0.0))
    visit.over = True
    yield Close(visit)


def _after(delay_s: float, flow: Flow) -> Flow:
    """``flow``, started ``delay_s`` from now."""
    yield Sleep(delay_s)
    return (yield Call(flow))


def page_renewal(policy: ClientPolicy, tab: Callable[[], TabView], clock: Callable[[], float]) -> Callable:
    """What the browser does before a server-rendered page leaves (``policy.page_refresh``): a
    function returning the renewal flow to carry out first, or None when there is none."""
    def before_page():
        view = tab()
        action = policy.before_page(view, clock())
        return renew_flow(policy, action, basis_of(view), tab) if action in RENEW else None
    return before_page


def tab_flow(draws: TabDraws, idle_probability: float, visit: VisitHandle, server_render: bool = False,
             before_page: Callable[[], Flow | None] | None = None, bulk: bool = True) -> Flow:
    """A tab: page views until the visit is over. A page view is a burst of parallel requests;
    after it the user thinks, and now and then (``idle_probability``) first stops for an idle gap.

    ``server_render``: a page view is one page request rendered on the server (SSR, edge
    middleware), which fans out into the burst's requests made by the server: each carries the
    cookies the page request carried — the jar's refresh token when the page left the browser
    (:class:`Cookies`) — and renews with that snapshot on its own, whatever the jar holds by then;
    their answers' ``Set-Cookie`` reach the browser's one jar (``policy.jar_writes``).
    ``before_page``: returns a renewal the browser carries out before the page leaves, or None
    (:func:`page_renewal`). ``bulk``: offer the driver the page views in bulk (:class:`Views`);
    a driver that never carries them out that way passes False and is not asked."""
    views = Views(draws, idle_probability) if bulk else None
    request, spawn = _REQUEST, _SPAWN_REQUEST
    pause = Pause(0.0)  # one a tab, read by the driver as it is yielded: none to make per page view
    while not visit.over:
        if views is not None and (yield views):
            continue
        n = int(draws.burst())
        if before_page is not None:
            renewal = before_page()
            if renewal is not None:
                yield Call(renewal)
        if server_render:
            request = Request((yield _COOKIES))
            spawn = Spawn(request)
        if n > 1:
            others = []
            for _ in range(n - 1):
                others.append((yield spawn))
            yield request
            yield Await(tuple(others))
        else:
            yield request
        idle_s = draws.idle_gap() if idle_probability and draws.idle_coin() < idle_probability else 0.0
        pause.seconds = idle_s + draws.think()
        yield pause


def plain_page_views(draws: Any, idle_probability: float, start_s: float, horizon_s: float, end_s: float,
                     plain: Callable[[float, Any, float], bool], view_done: Callable[[float, Any, float], float],
                     sure_sends_before_s: float = -math.inf, sure_arrives_before_s: float = -math.inf,
                     ) -> tuple[int, float]:
    """:func:`tab_flow`'s page views in bulk, for a driver that knows nothing else happens to
    the tab before ``horizon_s``: from ``start_s``, each page view whose requests are all plain
    — ``plain(t, rtts, top)`` says so for a view starting at ``t`` whose requests would draw
    round trips ``rtts``, the slowest ``top``; a view starting before ``sure_sends_before_s`` whose requests all arrive
    before ``sure_arrives_before_s`` is plain without asking (the policies' pure
    ``sends_until_s`` / ``plain_until_s``) — is carried out at once with the same draws from the
    same streams (``draws``' streams support ``cursor``/``seek``): ``view_done(t, rtts, top)`` carries
    its requests out and returns when the last one ends; then the pause. Views go on while the
    next one starts before ``horizon_s`` and ``end_s``. Returns (views done, when the next page
    view starts: one that is not plain when that is before ``horizon_s`` and ``end_s``); (0,
    ``start_s``) when the first one is not plain.
    """
    burst, rtt_draws, think, idle_coin, idle_gap = draws.burst, draws.api_rtt, draws.think, draws.idle_coin, draws.idle_gap
    # the busiest streams are read through cursors (``draws`` streams support ``cursor``/``seek``):
    # a page view in bulk then costs a few array reads, not a dozen calls
    bb, bi = burst.cursor()
    rb, ri = rtt_draws.cursor()
    tb, ti = think.cursor()
    cb, ci = idle_coin.cursor() if idle_probability else ((), 0)
    bl, rl, tl, cl = len(bb), len(rb), len(tb), len(cb)  # the buffers' lengths, read again at each refill
    t, views = start_s, 0
    while True:
        if bi >= bl:
            burst.seek(bi)
            bb, bi = burst.cursor()
            bl = len(bb)
        n = int(bb[bi])
        if ri + n > rl:
            rtt_draws.seek(ri)
            rb, ri = rtt_draws.cursor(n)
            rl = len(rb)
        rtts = rb[ri:ri + n]
        top = max(rtts)
        if not (t < sure_sends_before_s and t + top / 2 < sure_arrives_before_s) and not plain(t, rtts, top):
            break
        bi += 1
        ri += n
        done = view_done(t, rtts, top)
        pause = 0.0
        if idle_probability:
            if ci >= cl:
                idle_coin.seek(ci)
                cb, ci = idle_coin.cursor()
                cl = len(cb)
            ci += 1
            if cb[ci - 1] < idle_probability:
                pause = idle_gap()
        if ti >= tl:
            think.seek(ti)
            tb, ti = think.cursor()
            tl = len(tb)
        ti += 1
        t_next = done + (pause + tb[ti - 1])
        views += 1
        t = t_next
        if not (t_next < horizon_s and t_next < end_s):
            break
    burst.seek(bi)
    rtt_draws.seek(ri)
    think.seek(ti)
    if idle_probability:
        idle_coin.seek(ci)
    return views, t


def timer_flow(policy: ClientPolicy, tab: Callable[[], TabView], visit: VisitHandle, clock: Callable[[], float],
               origin_s: float, grid_phase_s: float | None = None) -> Flow:
    """A tab's renewal timer (policies with :attr:`~ClientPolicy.timer_interval_s`). When it
    ticks is the policy's :meth:`~ClientPolicy.next_tick_s` (a fixed phase from ``origin_s``,
    re-armed after each tick's work, scheduled from the token's ``exp``, or polling from when the
    tab last renewed: :meth:`~ClientPolicy.rearmed_s`), in a hidden tab moved onto the wake-up
    grid of phase ``grid_phase_s`` (:meth:`~ClientPolicy.wake_s`); what a tick does is
    :meth:`~ClientPolicy.on_timer`."""
    tried = None  # the token of the last renewal this timer started, while it failed
    while True:
        now = clock()
        tick = policy.wake_s(policy.next_tick_s(tab(), now, origin_s), grid_phase_s)
        yield Sleep(max(tick - now, 0.0), origin_s, grid_phase_s)
        if visit.over:
            return
        view = tab()
        action = policy.on_timer(view, clock())
        if action in RENEW and tried is not None and not policy.renews_again(basis_of(view), tried):
            continue
        if action in RENEW and policy.timer_jitter_s > 0:
            # a random offset before the renewal the tick decided, then look again: a sibling may
            # have renewed meanwhile (ticks that renew nothing draw nothing)
            yield Jitter()
            if visit.over:
                return
            view = tab()
            action = policy.on_timer(view, clock())
        if action in RENEW:
            basis = basis_of(view)
            renewed = yield Call(renew_flow(policy, action, basis, tab))
            tried = None if renewed else basis
            origin_s = policy.rearmed_s(origin_s, clock())


# -- a request and a renewal --------------------------------------------------------------------


def request_flow(policy: ClientPolicy, tab: Callable[[], TabView], clock: Callable[[], float],
                 sent: Held | None = None, cookie: Any = LIVE) -> Flow:
    """One request. ``tab()`` returns the tab's current view, ``clock()`` the client's clock.
    Returns True when the request succeeded, False when it failed.

    A login the policy asks for (LOGIN) after the API answered that the token it was sent has
    expired is a lapse: the server let the credential expire (a sliding session unused for its
    lifetime). One asked for before sending — the tab's store holds nothing, e.g. a failure path
    cleared it — is forced: the session may well be valid on the server.

    ``sent``: the driver has already sent this token, because :func:`sends_at_once` said so when
    the request began; the flow then starts by yielding that :class:`Send` again (the driver
    answers it with the response it got) and goes on from there.

    ``cookie``: the refresh cookie its renewals present (:class:`Refresh`): LIVE, or a
    server-rendered page's snapshot."""
    attempt, lapsed = 0, False
    if sent is None:
        view = tab()
        action, basis = policy.before_send(view, clock()), basis_of(view)  # basis: what a renewal is about
    while True:
        if sent is None:
            if action in RENEW:
                if not (yield Renew(action, basis, cookie)):
                    return False
            elif action is Action.LOGIN:
                yield Login(lapsed=lapsed)
                return False
            elif action is Action.FAIL:
                return False
            elif action is Action.RETRY:  # every resend passes the policy's check again
                view = tab()
                action, basis = policy.before_send(view, clock()), basis_of(view)
                continue
            sent = tab().held
            if sent is None:
                return False
        attempt += 1
        response = yield Send(sent)
        action = policy.on_response(tab(), sent, response, attempt, clock())
        basis = sent.id  # a renewal after an answer is about the token that drew it
        lapsed = response.status == 401 and response.expired
        if action is _ADOPT:
            yield Adopt(response.reissued)
        if action is _DONE or action is _ADOPT:
            return True
        sent = None


def sends_at_once(policy: ClientPolicy, view: TabView, now: float) -> Held | None:
    """The token a request that begins now sends at once (what :func:`request_flow` sends
    first when the policy says SEND), or None when the request must first renew, wait or give up.
    A driver that sends it itself hands it to :func:`request_flow` as ``sent`` if the answer
    needs the flow."""
    if view.held is None or policy.before_send(view, now) is not _SEND:
        return None
    return view.held


def answer_is_done(policy: ClientPolicy, view: TabView, sent: Held, response: Any, now: float) -> bool:
    """Whether the first answer ``response`` to ``sent`` ends the request with nothing more to
    do (the policy says DONE): a driver may then count it a success without running
    :func:`request_flow`."""
    return policy.on_response(view, sent, response, 1, now) is _DONE


def renew_flow(policy: ClientPolicy, action: Action, basis: Any, tab: Callable[[], TabView],
               cookie: Any = LIVE) -> Flow:
    """Carry out REFRESH or WAIT. Returns True when the tab then holds a token to send. Its
    refresh calls present ``cookie`` (:class:`Refresh`).

    A waiter whose store did not get a new token from the refresh it joined (a cross-tab lock
    with per-tab storage: the other tab's token is not its own) takes its own turn. A refused
    refresh means a new login; the requests waiting for it fail."""
    while action is _WAIT and tab().refreshing:
        before = tab().held
        joined = yield Join(policy.lock_timeout_s)
        if joined is None:  # the lock was held too long: take an own turn, or give up
            if policy.on_lock_timeout == "fail":
                return False
            break
        if not joined:
            return False
        after = tab()
        if after.held is not None and after.held != before:
            return True
        action = Action.WAIT if after.refreshing else Action.REFRESH
    call = Refresh(basis, cookie)
    outcome = yield call
    for _ in range(policy.unavailable_retries):
        if outcome != _UNAVAILABLE:
            break
        yield Backoff()  # the driver waits policy.retry_delay_s(the Retry-After, its own draw)
        outcome = yield call
    if outcome in REFUSED and policy.recovery != "none":
        outcome = yield Call(recover_flow(policy, outcome, basis, tab))
    if outcome in REFUSED and policy.on_refused == "keep":
        return False  # the dead token stays: the next need presents it again
    if outcome in REFUSED and policy.on_refused != "login":
        yield Clear(every_tab=policy.on_refused == "clear_all")
        if policy.on_refused == "clear_jar":
            return False  # signed out: the login page comes with the next need of a token
    if outcome in SESSION_LOST:
        yield Login(lapsed=outcome == RefreshOutcome.EXPIRED)
    return outcome == _REFRESHED


def recover_flow(policy: ClientPolicy, refused: RefreshOutcome, basis: Any, tab: Callable[[], TabView]) -> Flow:
    """A refresh refused with ``refused``, before its failure path: the policy's ``recovery``.
    Returns the outcome that counts (OK when the tab then holds a token to send)."""
    if policy.recovery_delay_s > 0:
        yield Sleep(policy.recovery_delay_s)  # let a sibling's answer that is on its way land
    if policy.recovery == "retry":
        return (yield Refresh(basis))
    held = tab().held
    if held is not None and held.id != basis:
        return RefreshOutcome.OK  # a sibling stored a newer access token: use it
    if (yield Reread()):
        return (yield Refresh(basis))  # a sibling's rotation left a newer refresh token in the jar
    return refused


def jar_write(policy: ClientPolicy, jar: Any, sent: Any, returned: Any) -> tuple[Any, Any]:
    """The refresh token the cookie jar holds after a refresh that presented ``sent`` and got
    ``returned`` back (None: the answer named none, so the old one stays), and the token the
    write dropped (None when none): with ``keep_newer`` a newer token another tab's refresh put
    in the jar meanwhile stays and the answer is dropped; with ``last_write_wins`` the answer
    overwrites whatever the jar holds."""
    if returned is None or returned == jar:
        return jar, None
    if policy.jar_writes == "last_write_wins" or jar == sent:
        return returned, (jar if jar is not None and jar != sent else None)
    return jar, returned


def jar_after_refresh(jar: Any, sent: Any, returned: Any) -> Any:
    """The jar after a refresh with ``keep_newer`` writes (see :func:`jar_write`)."""
    return returned if returned is not None and jar == sent else jar


def drive(flow: Flow, carry_out: Callable[[Any], Any]) -> Any:
    """Run ``flow`` to its end with blocking calls: ``carry_out(effect)`` returns each result
    (a :class:`Call` runs its sub-flow the same way)."""
    result = None
    while True:
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            return stop.value
        result = drive(effect.flow, carry_out) if type(effect) is Call else carry_out(effect)
