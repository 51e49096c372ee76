"""The life of a request and of a renewal, sans-IO: what a client does between a policy's answers.

:func:`request_flow` and :func:`renew_flow` are generators that *yield effects* for a driver to
carry out and are *sent* the results back, as h11 and h2 do for HTTP. They hold the rules every
driver must share — which token a renewal is about (its basis), that every resend passes the
policy's check again, what a tab that waited for another's refresh does next — so that the SimPy
engine and the Locust users cannot drift apart. A driver runs them with :func:`drive` (plain
calls) or its own loop (SimPy's ``yield from``).

Effects, and what the driver sends back:

- :class:`Send` — send the request with ``held``; send back the :class:`Response`;
- :class:`Renew` — carry out :func:`renew_flow` for ``action`` and ``basis``; send back True when
  the tab then holds a token;
- :class:`Join` — wait for the refresh in flight in the tab's single-flight scope; send back its
  result (True if it got a token);
- :class:`Refresh` — make a refresh call about ``basis`` (registering it as the one in flight
  when the policy is single-flight); send back its outcome: ``"ok"``, or why not, in the
  ``refresh_end`` vocabulary of :mod:`sim.metrics` (``expired``, ``revoked``, ``reuse_detected``,
  ``unavailable``, ``lost``);
- :class:`Backoff` — the auth tier shed a refresh (503): wait ``policy.retry_delay_s`` of its
  ``Retry-After`` (the scenario's ``auth.retry_after`` in scenario seconds) and a uniform draw;
  send back nothing;
- :class:`Login` — the session is gone: log in again (forced); send back nothing;
- :class:`Adopt` — store the re-issued token ``held``; send back nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator

from sim.strategies.client import Action, ClientPolicy, Held, TabView


@dataclass(frozen=True, slots=True)
class Send:
    held: Held


@dataclass(frozen=True, slots=True)
class Renew:
    action: Action
    basis: Any


@dataclass(frozen=True, slots=True)
class Join:
    pass


@dataclass(frozen=True, slots=True)
class Refresh:
    basis: Any


@dataclass(frozen=True, slots=True)
class Login:
    pass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait before trying a shed refresh again: ``policy.retry_delay_s`` of the ``Retry-After``
    the auth tier answered and a uniform draw of the driver's."""


@dataclass(frozen=True, slots=True)
class Adopt:
    held: Held


RENEW = (Action.REFRESH, Action.WAIT)
#: refresh outcomes that mean the session is gone, so the user must log in again; a 503 or an
#: answer that never came only fails the requests that needed the token
SESSION_LOST = frozenset({"expired", "revoked", "reuse_detected"})
Flow = Generator[Any, Any, Any]
#: seconds a user waits before trying a failed login (the auth tier answered 503) again
LOGIN_RETRY_S = 1.0


def basis_of(view: TabView) -> Any:
    """The id of the token a renewal decided now would be about (None when the tab holds none)."""
    return view.held.id if view.held is not None else None


def request_flow(policy: ClientPolicy, tab: Callable[[], TabView], clock: Callable[[], float]) -> Flow:
    """One request. ``tab()`` returns the tab's current view, ``clock()`` the client's clock.
    Returns True when the request succeeded, False when it failed."""
    view = tab()
    action, basis = policy.before_send(view, clock()), basis_of(view)  # basis: what a renewal is about
    attempt = 0
    while True:
        if action in RENEW:
            if not (yield Renew(action, basis)):
                return False
        elif action is Action.LOGIN:
            yield Login()
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
        if action is Action.ADOPT:
            yield Adopt(response.reissued)
        if action in (Action.DONE, Action.ADOPT):
            return True


def renew_flow(policy: ClientPolicy, action: Action, basis: Any, tab: Callable[[], TabView]) -> Flow:
    """Carry out REFRESH or WAIT. Returns True when the tab then holds a token to send.

    A waiter whose store did not get a new token from the refresh it joined (a cross-tab lock
    with per-tab storage: the other tab's token is not its own) takes its own turn. A refused
    refresh means a new login; the requests waiting for it fail."""
    while action is Action.WAIT and tab().refreshing:
        before = tab().held
        if not (yield Join()):
            return False
        after = tab()
        if after.held is not None and after.held != before:
            return True
        action = Action.WAIT if after.refreshing else Action.REFRESH
    outcome = yield Refresh(basis)
    for _ in range(policy.unavailable_retries):
        if outcome != "unavailable":
            break
        yield Backoff()  # the driver waits policy.retry_delay_s(the Retry-After, its own draw)
        outcome = yield Refresh(basis)
    if outcome in SESSION_LOST:
        yield Login()
    return outcome == "ok"


def jar_after_refresh(jar: Any, sent: Any, returned: Any) -> Any:
    """The refresh token the cookie jar holds after a refresh that presented ``sent`` and got
    ``returned`` back (None: the answer named none, so the old one stays). A newer refresh token
    that another tab's refresh put in the jar meanwhile stays too."""
    return returned if returned is not None and jar == sent else jar


def drive(flow: Flow, carry_out: Callable[[Any], Any]) -> Any:
    """Run ``flow`` to its end with blocking calls: ``carry_out(effect)`` returns each result."""
    result = None
    while True:
        try:
            effect = flow.send(result)
        except StopIteration as stop:
            return stop.value
        result = carry_out(effect)
