"""Client policies (token users), sans-IO: when to send, renew, wait, retry or give up.

A policy is told what its tab holds and what time the *client's* clock says; it answers with an
:class:`Action`. It never sleeps, sends or locks: the simulator (:mod:`sim.engine`) and the Locust
users (:mod:`loadtests`) carry the actions out, each with its own clock, network and locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from sim.model import Model
from sim.strategies import ticks
from sim.units import Duration


class Action(StrEnum):
    """What a client policy tells its driver to do."""

    SEND = "send"  # send the request with the token held
    REFRESH = "refresh"  # start a refresh, then send (or, after a response, resend)
    WAIT = "wait"  # join the refresh already in flight, then send / resend
    RETRY = "retry"  # resend now (a newer token is already held, or the answer was lost)
    DONE = "done"  # the request succeeded
    ADOPT = "adopt"  # the request succeeded and carried a re-issued token: store it
    LOGIN = "login"  # the session is gone: the user must log in again
    FAIL = "fail"  # give up on this request
    NOTHING = "nothing"  # (timer) no renewal needed


# members bound to module names for the hooks below, which run for every request: in Python 3.11
# an attribute of an Enum class is found through ``EnumType.__getattr__``'s hook, ten times
# slower than a global
_SEND, _DONE, _NOTHING, _REFRESH, _WAIT = Action.SEND, Action.DONE, Action.NOTHING, Action.REFRESH, Action.WAIT


# not frozen: made per renewal, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class Held:
    """What a client knows of the access token it holds: an opaque id and the ``exp`` claim
    (server-clock seconds)."""

    id: Any
    expires_at_s: float


# not frozen: made when a tab's token changes, and a frozen dataclass's __init__ costs several times more
@dataclass(slots=True, unsafe_hash=True)
class TabView:
    """A tab as its policy sees it: the token it would send, and whether a refresh that it may
    join (single-flight scope: the tab, or every tab with a cross-tab lock) is in flight."""

    held: Held | None
    refreshing: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """An API answer: ``status`` 200, 401, or 0 when no answer came back in time (lost or
    timed out); ``reissued`` is a token a sliding server sent along; ``expired``: a 401 that
    says the presented token has expired on the server (RFC 6750 ``invalid_token``, "expired"),
    as opposed to one that was revoked or is unknown."""

    status: int
    reissued: Held | None = None
    expired: bool = False


@dataclass(frozen=True, slots=True)
class StoreWrite:
    """A renewal's write to a shared store as a driver remembers it (client ``stale_read``): when
    (the client's clock), by which tab, and the access and refresh tokens held before it."""

    at_s: float
    writer: Any
    access_before: Any
    refresh_before: Any


class ClientPolicy(Model):
    """Base of client behaviours: sends what it holds, and on a 401 refreshes then retries.

    Options common to every client:
    - ``single_flight``: needs that arise while this tab's refresh is in flight wait for it
      instead of starting another; a 401 for a token already replaced is retried with the newer one;
    - ``cross_tab_lock``: the single-flight scope is every tab of the user (auth0-spa-js's lock);
    - ``storage``: ``shared`` (one access token for all tabs, like localStorage read on every
      use), ``per_tab`` (each tab its own, empty until the tab renews: sessionStorage or memory)
      or ``copied`` (each tab its own copy, filled by a login for every tab — an app that reads
      localStorage once, when the page loads, and keeps the user in memory — and replaced only
      by the tab's own renewals);
    - ``max_retries``: resends allowed after a 401 or a lost answer;
    - ``unavailable_retries``: refreshes tried again after the auth tier answered 503, each after
      the ``Retry-After`` it sent stretched by a random factor of up to ``1 + retry_jitter``
      (0: a 503 fails the requests that needed the token);
    - ``compare``: a token needs renewing when its remaining life is ``le`` (at most) or ``lt``
      (strictly less than) the policy's threshold; ``whole_seconds``: the remaining life is read
      as whole seconds (JWT ``exp`` minus ``Math.floor(Date.now() / 1000)``), as hand-written
      clients do.

    The credential store (where the refresh token lives and what a failure does to it):
    - ``jar_writes``: the refresh token lives in one cookie jar shared by every tab. ``keep_newer``:
      an answer replaces the jar's token only when the jar still holds the token that refresh
      presented (a newer one another tab's refresh put there stays); ``last_write_wins``: every
      answer's ``Set-Cookie`` overwrites the jar, as a browser does;
    - ``on_refused``: what the failure path of a refused refresh (``invalid_grant``) does:
      ``login`` — the user logs in again at once; ``clear_jar`` — it deletes the refresh cookie
      and the tab's access token, and the user meets the login page the next time a token is
      needed (wiping a token a sibling's refresh had just rotated in); ``clear_all`` — it clears
      the session of every tab (jar and every tab's access token), then the user logs in;
      ``keep`` — nothing: the refused refresh token stays where it was, the requests that needed
      a token fail, and the next need tries the dead token again (auth0-spa-js keeps it in its
      cache; the user is logged out in effect but never sent to the login page);
    - ``recovery``: tried before the failure path, after waiting ``recovery_delay`` (so that a
      sibling's answer already on its way can land): ``none``; ``retry`` — refresh once more with
      whatever the jar then holds; ``adopt`` — re-read storage: a newer access token a sibling
      stored is used, a newer refresh token a sibling put in the jar is presented (one more
      refresh); only when neither exists does the failure path run;
    - ``lock_visibility``: (``cross_tab_lock``) how long a tab's "refreshing" mark takes to reach
      its siblings: 0 for Web Locks (``navigator.locks``, atomic); a BroadcastChannel message
      or a localStorage flag (``storage`` event) arrives a moment later, and a sibling that
      decides inside that moment does not see it and refreshes too;
    - ``stale_read``: (``storage = "shared"``) how long after a tab wrote the store (a renewal's
      access and refresh tokens) its siblings may still read what it held before: localStorage
      is copied into each renderer process and a write reaches the others' copies a moment
      later, so a tab that takes a Web Locks lock right after its holder wrote (the lock's
      hand-over does not wait for storage) reads the old tokens and presents a refresh token
      already rotated. 0: every read sees the last write;
    - ``lock_timeout``: a need that waits for the refresh in flight in its single-flight scope
      (the tab, or every tab with ``cross_tab_lock``) waits at most this long, then refreshes on
      its own (auth0-spa-js's lock: 5 s); none: as long as it takes;
    - ``on_lock_timeout``: what a need whose ``lock_timeout`` ran out does: ``refresh`` — it
      refreshes on its own; ``fail`` — it gives up and the requests that needed the token fail
      (auth0-spa-js 2.x throws a ``TimeoutError`` from ``getTokenSilently``);
    - ``lock_release``: ``always`` — a refresh releases its scope however it ended;
      ``not_on_lost`` — a refresh whose answer never came never releases it (a promise that
      never settles): the lock is orphaned, and every later need in that scope waits for it
      (for ``lock_timeout``, or for ever);
    - ``timer_jitter``: a timer tick is delayed by a uniform random offset in ``[0, timer_jitter)``
      (0: ticks at the computed instant), so that tabs that learned one token do not all renew it
      at the same instant;
    - ``wake_up``: the browser runs a *hidden* tab's timers only on a coarse grid of wake-ups,
      common to every tab (Chrome's background-tab throttling: 1 s; after five hidden minutes,
      1 min): a tick due at ``t`` runs at the next instant of the grid (every ``wake_up``, from
      a phase drawn per visit: the grid does not care when the user arrived), so hidden tabs
      whose ticks fall due within one grid step run them at the same instant. 0: no throttling.
      A visit's tabs are hidden but the last one opened, which is in front.

    Where the requests are made:
    - ``render``: ``browser`` — a page view's requests leave the browser, and a renewal presents
      the refresh token the jar holds when its call leaves; ``server`` — a page view is one page
      request rendered on the server (SSR, edge middleware), fanning out into the page view's
      burst of server requests (the fan-out count is the workload's ``burst_size``). Each carries
      the cookies of the page request — a snapshot of the jar when the page left the browser —
      and renews per request with that snapshot, whatever the jar holds by then; its answer's
      ``Set-Cookie`` reaches the browser's one jar (``jar_writes``). ``single_flight`` with
      ``cross_tab_lock`` is then the middleware's single-flight per session (one refresh at a
      time for every server request of the user); without them the server requests share
      nothing. A server request cannot re-read the browser's jar, so ``recovery`` must be
      ``none``;
    - ``page_refresh``: (``render = "server"``) before a page request leaves, the browser renews
      itself when the access token's remaining life is at most this (one renewal, presenting the
      jar's refresh token then), so that the page's server requests carry fresh cookies and find
      nothing to renew; none: it does not.
    """

    trigger: str
    single_flight: bool = False
    cross_tab_lock: bool = False
    storage: Literal["shared", "per_tab", "copied"] = "shared"
    max_retries: int = Field(default=1, ge=0, le=1000)
    unavailable_retries: int = Field(default=0, ge=0, le=100)
    retry_jitter: float = Field(default=0.5, ge=0, le=10)
    compare: Literal["le", "lt"] = "le"
    whole_seconds: bool = False
    jar_writes: Literal["keep_newer", "last_write_wins"] = "keep_newer"
    on_refused: Literal["login", "clear_jar", "clear_all", "keep"] = "login"
    recovery: Literal["none", "retry", "adopt"] = "none"
    recovery_delay_s: Duration = Field(default="0s", alias="recovery_delay", ge=0)
    timer_jitter_s: Duration = Field(default="0s", alias="timer_jitter", ge=0)
    lock_visibility_s: Duration = Field(default="0s", alias="lock_visibility", ge=0)
    lock_timeout_s: Duration | None = Field(default=None, alias="lock_timeout", gt=0)
    stale_read_s: Duration = Field(default="0s", alias="stale_read", ge=0)
    on_lock_timeout: Literal["refresh", "fail"] = "refresh"
    lock_release: Literal["always", "not_on_lost"] = "always"
    wake_up_s: Duration = Field(default="0s", alias="wake_up", ge=0)
    render: Literal["browser", "server"] = "browser"
    page_refresh_s: Duration | None = Field(default=None, alias="page_refresh", gt=0)
    preset: str | None = None

    @model_validator(mode="after")
    def _server_render(self):
        if self.render == "server" and self.recovery != "none":
            raise ValueError("render = 'server' needs recovery = 'none' (a server request cannot re-read the browser's jar)")
        if self.page_refresh_s is not None and self.render != "server":
            raise ValueError("page_refresh needs render = 'server'")
        return self

    def before_page(self, tab: TabView, now: float) -> Action:
        """(Server-rendered pages) a page request is about to leave the browser: REFRESH or WAIT
        when ``page_refresh`` says the browser renews first, else NOTHING."""
        if self.page_refresh_s is None or (tab.held is not None and not self.due(tab.held, now, self.page_refresh_s)):
            return _NOTHING
        return self.renew(tab)

    def pages_until_s(self, tab: TabView) -> float:
        """Until when, by the client's clock, :meth:`before_page` keeps answering NOTHING for what
        ``tab`` holds (a pure answer, as :meth:`sends_until_s`)."""
        if self.page_refresh_s is None:
            return math.inf
        if tab.held is None:
            return -math.inf
        return self.due_from_s(tab.held, self.page_refresh_s)

    #: seconds between timer ticks; None means the policy has no timer
    @property
    def timer_interval_s(self) -> float | None:
        return None

    def next_tick_s(self, tab: TabView, now: float, origin_s: float) -> float:
        """When the timer ticks next, by the client's clock, given what the tab holds, the time
        ``now`` and when the timer was started (``origin_s``). Only for policies with a timer."""
        raise NotImplementedError

    def wake_s(self, tick_s: float, grid_phase_s: float | None) -> float:
        """When a timer tick due at ``tick_s`` (client clock) runs: at once in a visible tab
        (``grid_phase_s`` None), in a hidden one at the next instant of the ``wake_up`` grid
        ``grid_phase_s + k * wake_up``."""
        grid = self.wake_up_s
        return ticks.grid_wake(tick_s, grid_phase_s, grid) if ticks.on_grid(grid_phase_s, grid) else tick_s

    def renews_again(self, basis: Any, tried: Any) -> bool:
        """Whether a timer tick may renew the token ``basis`` when the timer's last renewal,
        of token ``tried``, failed (the tab still holds it): yes, but for a timer that renews
        once per token it was armed with (``timer_phase = "poll"``)."""
        return True

    def rearmed_s(self, origin_s: float, now: float) -> float:
        """The origin of a timer's phase after the tab's own renewal ended at ``now`` (it was
        ``origin_s``): unchanged, but for timers re-armed by a new token (``timer_phase = "poll"``)."""
        return origin_s

    def sees_refresh(self, own: bool, started_s: float, now: float) -> bool:
        """Whether a tab sees the refresh in flight in its single-flight scope that started at
        ``started_s`` (``own``: it is the tab's own, or the scope is the tab)."""
        return own or now - started_s >= self.lock_visibility_s

    def reads_stale(self, own: bool, written_s: float | None, now: float) -> bool:
        """Whether a tab reading the shared store at ``now`` still gets what it held before the
        store's last write, made at ``written_s`` (``own``: by this tab): within ``stale_read``
        of another tab's write."""
        return not own and written_s is not None and now - written_s < self.stale_read_s

    def store_write(self, now: float, writer: Any, access_before: Any, refresh_before: Any) -> StoreWrite | None:
        """What a driver remembers of a renewal's write to the tokens' store at ``now``: only what
        a stale read can still return (``stale_read`` on a shared store), else None."""
        if self.stale_read_s > 0 and self.storage == "shared":
            return StoreWrite(now, writer, access_before, refresh_before)
        return None

    def unseen(self, write: StoreWrite | None, tab: Any, now: float) -> StoreWrite | None:
        """``write`` when ``tab``, reading the store at ``now``, does not see it yet (so reads
        what was held before it); else None."""
        if write is not None and self.reads_stale(write.writer is tab, write.at_s, now):
            return write
        return None

    def releases_lock(self, outcome: str) -> bool:
        """Whether a refresh that ended with ``outcome`` (a ``refresh_end`` outcome) releases its
        single-flight scope (see ``lock_release``)."""
        return self.lock_release == "always" or outcome != "lost"

    def before_send(self, tab: TabView, now: float) -> Action:
        """About to send a request. ``now`` is the client's clock. Returns SEND, REFRESH or WAIT."""
        return self.renew(tab) if tab.held is None else _SEND

    def sends_until_s(self, tab: TabView) -> float:
        """Until when, by the client's clock, :meth:`before_send` keeps answering SEND and
        :meth:`on_response` keeps answering DONE to a plain 200 for what ``tab`` holds (as long as
        it holds the same): a pure answer an engine uses to carry out page views in bulk. The
        instant is exact in real arithmetic; an engine keeps a margin from it for rounding and
        asks the hooks themselves near it. ``-inf`` (the default) means "ask every time"."""
        return -math.inf

    def on_response(self, tab: TabView, sent: Held, response: Response, attempt: int, now: float) -> Action:
        """An attempt (1 = first send) with token ``sent`` got ``response``. Returns DONE or ADOPT
        on success; REFRESH, WAIT or RETRY to resend; LOGIN or FAIL to give up."""
        if response.status == 200:
            return _DONE
        if attempt > self.max_retries:
            return Action.FAIL
        if response.status != 401:
            return Action.RETRY
        if self.single_flight and tab.held is not None and tab.held.id != sent.id:
            return Action.RETRY
        return self.renew(tab)

    def retry_delay_s(self, retry_after_s: float, u: float) -> float:
        """Seconds to wait before trying a refresh the auth tier shed: its ``Retry-After`` (seconds)
        honoured, stretched by ``1 + retry_jitter * u`` for a uniform draw ``u`` in [0, 1), so
        that shed clients do not all come back at the same instant."""
        return max(retry_after_s, 0.0) * (1.0 + self.retry_jitter * u)

    def on_timer(self, tab: TabView, now: float) -> Action:
        """A timer tick (only when :attr:`timer_interval_s` is set). Returns NOTHING, REFRESH or WAIT."""
        return _NOTHING

    def timer_quiet_until_s(self, tab: TabView) -> float:
        """Until when, by the client's clock, :meth:`on_timer` keeps answering NOTHING for what
        ``tab`` holds (a pure answer, as :meth:`sends_until_s`): an engine that looks ahead over
        a sleeping timer's ticks need not ask the ticks before it."""
        return math.inf

    def renew(self, tab: TabView) -> Action:
        """A renewal is needed: join the one in flight if single-flight allows, else start one."""
        return _WAIT if self.single_flight and tab.refreshing else _REFRESH

    def remaining_s(self, held: Held, now: float) -> float:
        """Seconds of validity left by the client's own clock (whole seconds when
        ``whole_seconds``)."""
        if self.whole_seconds:
            return math.floor(held.expires_at_s) - math.floor(now)
        return held.expires_at_s - now

    def due_from_s(self, held: Held, threshold_s: float) -> float:
        """An instant (client clock) before which :meth:`due` says no for ``held`` and
        ``threshold_s`` (exact in real arithmetic; with ``whole_seconds`` a second early)."""
        if self.whole_seconds:  # due once floor(exp) - floor(now) reaches the threshold
            return math.floor(held.expires_at_s) - threshold_s - 1.0
        return held.expires_at_s - threshold_s

    def due(self, held: Held, now: float, threshold_s: float) -> bool:
        """Whether ``held`` needs renewing at ``now``: its remaining life compared with
        ``threshold_s`` as ``compare`` says."""
        remaining = self.remaining_s(held, now)
        return remaining < threshold_s if self.compare == "lt" else remaining <= threshold_s


class ReactiveClient(ClientPolicy):
    """Renews only when the API answers 401, then retries (``fetchWithRefresh``, axios-auth-refresh)."""

    trigger: Literal["reactive"] = "reactive"

    def sends_until_s(self, tab):
        return math.inf if tab.held is not None else -math.inf


class ProactiveClient(ClientPolicy):
    """Before each request, renews first when the token's remaining life is at most ``threshold``
    (keycloak-js ``updateToken(minValidity)``, auth0-spa-js, MSAL); 401s still renew reactively."""

    trigger: Literal["proactive"] = "proactive"
    threshold_s: Duration = Field(alias="threshold")

    def before_send(self, tab, now):
        if tab.held is None or self.due(tab.held, now, self.threshold_s):
            return self.renew(tab)
        return _SEND

    def sends_until_s(self, tab):
        return -math.inf if tab.held is None else self.due_from_s(tab.held, self.threshold_s)


class TimerClient(ClientPolicy):
    """Silent refresh: a timer (also running while the user idles) renews when the remaining life
    is under ``threshold``; 401s still renew reactively.

    ``timer_phase`` says when it ticks: ``fixed`` — every ``check_interval`` from when the page
    loaded, whatever the ticks did (``setInterval``); ``rearm`` — ``check_interval`` after the
    previous tick's work finished (a ``setTimeout`` re-armed at the end); ``exp`` — once, at the
    token's ``exp`` minus ``threshold`` (oidc-client-ts, as its documentation reads), polling
    every ``check_interval`` while that instant is past or there is no token; ``poll`` —
    oidc-client-ts's ``Timer`` as it runs: armed when the tab loads a token (the page opens, or
    its own renewal ends), it polls every ``check_interval`` from that instant and renews at the
    first poll at or after ``exp − threshold``, so tabs holding one token renew at different
    polls unless their phases agree (or a hidden tab's ``wake_up`` grid aligns them)."""

    trigger: Literal["timer"] = "timer"
    check_interval_s: Duration = Field(alias="check_interval", ge=0.001)
    threshold_s: Duration = Field(alias="threshold")
    timer_phase: Literal["fixed", "rearm", "exp", "poll"] = "rearm"

    @property
    def timer_interval_s(self):
        return self.check_interval_s

    @property
    def tick_rule(self) -> tuple:
        """:meth:`next_tick_s` and :meth:`wake_s` as the numbers :func:`sim.strategies.ticks.quiet_ticks`
        takes after its instants: phase, interval, threshold, whole seconds, wake-up grid."""
        return (ticks.PHASES[self.timer_phase], self.check_interval_s, self.threshold_s, self.whole_seconds,
                self.wake_up_s)

    def next_tick_s(self, tab, now, origin_s):
        held = tab.held
        exp = 0.0 if held is None else ticks.counted_exp(held.expires_at_s, self.whole_seconds)
        return ticks.next_tick(ticks.PHASES[self.timer_phase], now, origin_s, self.check_interval_s, self.threshold_s,
                               exp, held is not None)

    def rearmed_s(self, origin_s, now):
        return now if self.timer_phase == "poll" else origin_s

    def renews_again(self, basis, tried):
        return self.timer_phase != "poll" or basis != tried

    def on_timer(self, tab, now):
        if tab.held is not None and self.due(tab.held, now, self.threshold_s):
            return self.renew(tab)
        return _NOTHING

    def timer_quiet_until_s(self, tab):
        return math.inf if tab.held is None else self.due_from_s(tab.held, self.threshold_s)

    def sends_until_s(self, tab):
        return math.inf if tab.held is not None else -math.inf


class SlidingClient(ClientPolicy):
    """For sliding-expiration servers: adopts the token re-issued with a response; a 401 means the
    session is gone, so the user logs in again (a lapse when the 401 says the token expired on the
    server; see :func:`sim.strategies.flow.request_flow`). A tab with no token logs in before
    sending."""

    trigger: Literal["sliding"] = "sliding"

    def before_send(self, tab, now):
        return _SEND if tab.held is not None else Action.LOGIN

    def sends_until_s(self, tab):
        return math.inf if tab.held is not None else -math.inf

    def on_response(self, tab, sent, response, attempt, now):
        if response.status == 200:
            return Action.ADOPT if response.reissued is not None else _DONE
        if response.status == 401:
            return Action.LOGIN
        return Action.RETRY if attempt <= self.max_retries else Action.FAIL


AnyClientPolicy = Annotated[
    Union[ReactiveClient, ProactiveClient, TimerClient, SlidingClient], Field(discriminator="trigger")
]
