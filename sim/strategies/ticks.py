"""When a renewal timer ticks, as arithmetic on numbers, written once:
:class:`~sim.strategies.client.TimerClient`'s ``next_tick_s`` and
:meth:`~sim.strategies.client.ClientPolicy.wake_s` are :func:`next_tick` and :func:`grid_wake`,
and :func:`quiet_ticks` walks a sleeping timer's ticks that cannot act with the same two (the
fast engine's look-ahead). ``setup.py`` also compiles this file as it is (Cython, with the C
types of ``_ticks.pxd``) into ``sim.strategies._ticks``, which the engine uses where it was built:
the same IEEE operations in the same order (floating-point contraction off), so the same instants
to the bit, in about a fourteenth of the time a tick. Plain Python: no annotations (the ``.pxd`` types
the compiled twin), whole numbers kept as floats (``x // 1.0`` is ``math.floor(x)``)."""

#: instants this close, relative to the interval or grid, are one instant (rounding)
SAME_INSTANT = 1e-9

#: ``TimerClient.timer_phase`` as the functions here take it
PHASES = {"rearm": 0, "fixed": 1, "poll": 2, "exp": 3}


def floor(x):
    return x // 1.0


def ceil(x):
    return -(-x // 1.0)


def next_tick(phase, now, origin, interval, threshold, exp, held):
    """When the timer ticks next, by the client's clock, after ``now``: ``phase`` (of
    :data:`PHASES`) from ``origin`` every ``interval``, for a tab that holds a token (``held``)
    expiring at ``exp`` (already cut to whole seconds where the policy counts them) and the
    policy's renewal ``threshold``."""
    if phase == 0:  # re-armed at the end of each tick's work
        return now + interval
    if phase == 3:  # at exp - threshold, polling every interval while that is past or there is no token
        if held and (exp - threshold) - now > SAME_INSTANT * interval:
            return exp - threshold
        return now + interval
    # a tick that is due within rounding of ``now`` is the one being served, not the next:
    # sleeping the difference would not move the clock
    k = floor((now - origin) / interval + SAME_INSTANT) + 1
    if phase == 2 and held:
        # skip the polls that cannot renew: the first one at or after exp - threshold
        k = max(k, ceil((exp - threshold - origin) / interval - SAME_INSTANT))
    return origin + k * interval


def counted_exp(expires_at, whole_seconds):
    """A token's ``exp`` as the timer counts it: cut to whole seconds where the policy counts them."""
    return floor(expires_at) if whole_seconds else expires_at


def on_grid(grid_phase, grid):
    """Whether a tab's ticks wait for the wake-up grid (a hidden tab, ``grid_phase`` its phase,
    and a grid of ``grid`` seconds); else they run when due."""
    return grid_phase is not None and grid > 0


def grid_wake(tick, grid_phase, grid):
    """The first instant of the wake-up grid ``grid_phase + k * grid`` at or after ``tick``."""
    return grid_phase + ceil((tick - grid_phase) / grid - SAME_INSTANT) * grid


def quiet_ticks(w, limit, skew, quiet_until, origin, phase, interval, threshold, whole_seconds, wake_up,
                expires_at, grid_phase, budget):
    """A sleeping timer's ticks whose client clock (``w + skew``) is before ``quiet_until``
    (the policy's ``timer_quiet_until_s``: no tick there acts), walked from the tick at ``w``
    (server time): each next one at ``w + max(tick - clock, 0)``, ``tick`` the policy's
    :func:`next_tick` put on the wake-up grid (``wake_up``, ``grid_phase``; None: a visible tab)
    by :func:`grid_wake`, for a tab holding a token that expires at ``expires_at`` (None: none).
    Stops at the first tick at or after ``limit``, or whose clock is not before ``quiet_until``,
    or after ``budget`` ticks. Returns (that tick's instant, the ticks walked over)."""
    held = expires_at is not None
    exp = counted_exp(expires_at, whole_seconds) if held else 0.0
    hidden = on_grid(grid_phase, wake_up)
    grid_at = grid_phase if hidden else 0.0
    walked = 0
    while walked < budget and w < limit:
        clock = w + skew
        if not clock < quiet_until:
            break
        tick = next_tick(phase, clock, origin, interval, threshold, exp, held)
        if hidden:
            tick = grid_wake(tick, grid_at, wake_up)
        w = w + max(tick - clock, 0.0)
        walked += 1
    return w, walked
