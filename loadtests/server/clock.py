"""The reference server's notion of *now*: one clock object per server, read by everything that
needs the time — token stamping (``iat`` / ``nbf`` / ``exp``), verification of those claims, the
ledger's expiry and pruning, sliding windows and the auth tier's statistics.

:class:`ScenarioClock` is the real one (wall time since start-up, scaled). :class:`ManualClock`
stands still until it is told to move: tests inject it to reach "this token has expired" by
advancing the clock instead of waiting for it. A server process gets one only with
``refreshlab serve --test-clock`` (loopback hosts only; see :mod:`loadtests.server.cli`).
"""

from __future__ import annotations

import math
import threading
import time

#: the largest single step a :class:`ManualClock` takes (scenario seconds, about 30 years)
MAX_ADVANCE_S = 1e9


def check_time_scale(time_scale: float) -> float:
    """``time_scale`` as a float; ``ValueError`` unless it is a finite number > 0."""
    if isinstance(time_scale, bool) or not (isinstance(time_scale, (int, float)) and time_scale > 0
                                            and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    return float(time_scale)


class ScenarioClock:
    """Scenario time of a running server.

    Receives the time scale (scenario seconds per wall second) and the wall (epoch) time of
    scenario time 0 (now when None; several worker processes share one). :meth:`now_s` is
    scenario seconds since then, measured on the monotonic clock so that a wall-clock step cannot
    move it; :attr:`t0_unix_s` is the wall time of scenario time 0, for JWT claims.
    """

    #: what ``/healthz`` reports as the server's clock
    kind = "real"

    def __init__(self, time_scale: float, t0_unix_s: float | None = None) -> None:
        self.time_scale = check_time_scale(time_scale)
        now_unix = time.time()
        self.t0_unix_s = now_unix if t0_unix_s is None else float(t0_unix_s)
        self._t0_monotonic = time.monotonic() - (now_unix - self.t0_unix_s)

    def now_s(self) -> float:
        """Scenario seconds since start-up."""
        return (time.monotonic() - self._t0_monotonic) * self.time_scale

    def unix_at(self, t_s: float) -> float:
        """The wall (epoch) time at scenario time ``t_s`` (JWT NumericDates are stamped with it)."""
        return self.t0_unix_s + t_s / self.time_scale

    def unix_now(self) -> float:
        """The epoch time JWT time claims are verified against: :meth:`unix_at` of :meth:`now_s`."""
        return self.unix_at(self.now_s())

    def wall(self, seconds: float) -> float:
        """A scenario duration as wall seconds."""
        return seconds / self.time_scale

    def wall_until(self, seconds: float) -> float | None:
        """Wall seconds until ``seconds`` of scenario time will have passed on their own (what a
        Redis key expiry is set to); None when that never happens."""
        return self.wall(seconds)


class ManualClock(ScenarioClock):
    """A clock for tests: scenario time stands at ``start_s`` until :meth:`advance` moves it.

    Receives the time scale (only for converting durations: ``expires_in``, ``Retry-After``,
    service times, the epoch times of JWT claims) and the epoch time of scenario time 0 (now when
    None). Everything the server decides by time — expiry, sliding windows, pruning — follows
    this clock alone, so a test reaches "expired" deterministically, however busy the machine.
    Safe to advance from another thread.
    """

    kind = "manual"

    def __init__(self, time_scale: float = 1.0, t0_unix_s: float | None = None, start_s: float = 0.0) -> None:
        super().__init__(time_scale, t0_unix_s)
        self._now_s = float(start_s)
        self._lock = threading.Lock()

    def now_s(self) -> float:
        """Scenario seconds: where the clock was last set."""
        return self._now_s

    def wall_until(self, seconds: float) -> None:
        """None: scenario time moves only when told, never by waiting (Redis keys get no
        expiry; the ledger still prunes by this clock)."""
        return None

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` scenario seconds (0 allowed; never backwards)
        and return the new scenario time. ``ValueError`` for a negative, non-finite or non-numeric
        step, or one over :data:`MAX_ADVANCE_S`."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or not 0 <= seconds <= MAX_ADVANCE_S:
            raise ValueError(f"a clock step must be a number of scenario seconds from 0 to {MAX_ADVANCE_S:g}, "
                             f"got {seconds!r}")
        with self._lock:
            self._now_s += float(seconds)
            return self._now_s
