"""Owned randomness: one seed per run, child streams per replication, user and source.

Every draw a user makes comes from that user's own stream for that source (think times, bursts,
latency, …), keyed by ``(replication, user, source)``. So every strategy variant sees the same
users doing the same things at the same times (common random numbers), however differently the
variants consume other streams.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
from array import array
from enum import IntEnum

import numpy as np

from sim.distributions import (Constant, CountConstant, CountUniform, Exponential, Lognormal, Normal, Uniform,
                               lognormal_parameters)
from sim.engine.kernel import KERNEL
from sim.scenario import AllAtOnce, Diurnal, PoissonArrivals, Ramp, Scenario


class Source(IntEnum):
    """The sources of randomness, one stream each: per tab (what the tab does and its API round
    trips) or per user (its visits and its calls to the auth tier)."""

    THINK = 0
    BURST = 1
    IDLE = 2
    API_LATENCY = 3
    AUTH_LATENCY = 4
    LOSS = 5
    VISIT = 6
    IDLE_GAP = 7
    AWAY = 8
    AUTH_LOSS = 9
    BACKOFF = 10
    # the auth tier's service times of the user's calls, one stream per part
    LOGIN_TIME = 11
    REFRESH_TIME = 12
    SIGN_TIME = 13
    VERIFY_TIME = 14
    # the server's own draws (a race window per later presentation of a refresh token)
    RACE = 15
    JITTER = 16  # a timer's random offset (``timer_jitter``)
    MOMENT = 17  # the state of the host every call meets (``network.rtt_correlation``)
    WAKE = 18  # the phase of the browser's wake-up grid for hidden tabs (``wake_up``)
    ANSWER_LEG = 19  # an auth-tier call's answer leg drawn on its own (``network.auth_legs``)


#: the stream of each part of a service time (:mod:`sim.strategies.service`)
SERVICE_SOURCES = {"login_time": Source.LOGIN_TIME, "refresh_time": Source.REFRESH_TIME,
                   "sign_time": Source.SIGN_TIME, "verify_time": Source.VERIFY_TIME}


def generator(seed: int, *key: int) -> np.random.Generator:
    """The stream identified by ``key`` under ``seed``, independent of every other key."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def stream_state(seed: int, *key: int) -> dict:
    """The starting state of the PCG64 stream identified by ``key`` under ``seed``: 128-bit state
    and odd increment taken from a BLAKE2b hash of the key, so distinct keys give unrelated
    streams. Building a numpy generator per user and source costs tens of microseconds (a
    SeedSequence each); a state costs a hash."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=32, person=b"refreshlab").digest()
    return {"bit_generator": "PCG64",
            "state": {"state": int.from_bytes(digest[:16], "little"), "inc": int.from_bytes(digest[16:], "little") | 1},
            "has_uint32": 0, "uinteger": 0}


_EMPTY = array("d")
_FLOAT = np.dtype(np.float64)


class _Uniform:
    """Uniform draws in [0, 1)."""

    @staticmethod
    def sample(gen: np.random.Generator, n: int) -> np.ndarray:
        return gen.random(n)


_UNIFORM = _Uniform()


def _initial_state(key: tuple) -> bytes:
    """:func:`stream_state` of ``key`` as a packed state (see :class:`_Lender`)."""
    # a copy of a keyed hasher costs a tenth of making one (a million users make millions of streams)
    hasher = _HASHER.copy()
    hasher.update(repr(key).encode())
    digest = hasher.digest()
    return digest[:16] + bytes((digest[16] | 1,)) + digest[17:] + _NO_UINT32


_HASHER = hashlib.blake2b(digest_size=32, person=b"refreshlab")


_NO_UINT32 = bytes(8)

#: the longest batch of whole numbers the lender draws itself (:meth:`_Lender.integers`)
_LEMIRE_MOST = 24


class _Lender:
    """One PCG64 bit generator that keyed streams borrow to draw a batch: a stream's state goes
    in, the batch is drawn, the new state comes out. A state is packed as 40 bytes: the 128-bit
    state and increment (little-endian), then ``has_uint32`` and ``uinteger`` (the half of a
    64-bit draw kept for the next 32-bit one) as two 32-bit words.

    numpy's ``state`` property builds and parses a dict of Python integers each time, which costs
    more than drawing a batch; where numpy's PCG64 lays its state out as the packing does (checked
    here against the ``state`` property), the state is copied in and out of the generator's memory
    directly (its ``ctypes.state_address``), else it goes through the property."""

    def __init__(self) -> None:
        self.gen = np.random.Generator(np.random.PCG64(0))
        self.bits = self.gen.bit_generator
        self._core = self._extra = None
        try:
            import ctypes

            address = self.bits.ctypes.state_address
            core = ctypes.c_void_p.from_address(address).value
            self._core = memoryview((ctypes.c_char * 32).from_address(core)).cast("B")
            self._extra = memoryview((ctypes.c_char * 8).from_address(address + 8)).cast("B")
            probe = _initial_state((1, 2, 3))[:32] + (1).to_bytes(4, "little") + (0x9E3779B9).to_bytes(4, "little")
            self._put_direct(probe)
            if self._take_slow() != probe or self._take_direct() != probe:
                raise ValueError("unexpected PCG64 layout")
        except Exception:  # another numpy build: the documented property
            self._core = self._extra = None
        self.put = self._put_direct if self._core is not None else self._put_slow
        self.take = self._take_direct if self._core is not None else self._take_slow

    def _put_direct(self, state: bytes) -> None:
        self._core[:] = state[:32]
        self._extra[:] = state[32:]

    def _take_direct(self) -> bytes:
        return bytes(self._core) + bytes(self._extra)

    def integers(self, state: bytes, low: int, high: int, n: int):
        """``Generator.integers(low, high + 1, n, dtype=np.int64)`` drawn from the packed
        ``state`` (as a list of Python integers), and the state after; None when only numpy's
        call can say (its fixed cost is ten times a batch's own work: a tab draws a burst size
        per page view).

        numpy draws each number with Lemire's method on a 32-bit draw when the range fits in 32
        bits: the 32-bit draws are the halves of the 64-bit ones, low half first (the high one
        waits in ``uinteger`` with ``has_uint32`` set), the number is ``low`` plus the high word
        of draw × (range + 1), and a draw whose low word falls under ``(2**32 - range - 1) %
        (range + 1)`` is drawn again. Done here over the whole batch from the raw 64-bit draws;
        None (numpy's call) when a draw would be drawn again (about one batch in a hundred
        million for small ranges), the range does not fit, or the batch is longer than
        :data:`_LEMIRE_MOST` (Python's arithmetic costs a third of a microsecond a number,
        numpy's call about nine microseconds whatever the batch: measured, it is the faster from
        about thirty numbers on)."""
        span = high - low
        if self._core is None or not 0 < span < 0xFFFFFFFF or not 0 < n <= _LEMIRE_MOST:
            return None
        waiting = state[32:36] != _NO_UINT32[:4]
        self.put(state)
        fresh = n - waiting
        # a batch is a few dozen numbers: Python's integers do the arithmetic in a tenth of the
        # time numpy's calls on so small arrays take
        raw = self.bits.random_raw((fresh + 1) // 2) if fresh > 0 else np.empty(0, np.uint64)
        words = raw.view(np.uint32).tolist()  # the 32-bit halves, low one first
        if waiting:
            words.insert(0, int.from_bytes(state[36:], "little"))
        m, threshold = span + 1, (0xFFFFFFFF - span) % (span + 1)
        products = [w * m for w in words[:n]]
        if threshold and min([p & 0xFFFFFFFF for p in products]) < threshold:
            return None
        values = [(p >> 32) + low for p in products]
        core = bytes(self._core)
        if fresh <= 0:
            after = core + _NO_UINT32[:4] + state[36:]
        else:
            # the high half of the last 64-bit draw waits when it was not taken
            after = core + (1 if fresh % 2 else 0).to_bytes(4, "little") + words[-1].to_bytes(4, "little")
        return values, after

    def _put_slow(self, state: bytes) -> None:
        self.bits.state = {"bit_generator": "PCG64",
                           "state": {"state": int.from_bytes(state[:16], "little"),
                                     "inc": int.from_bytes(state[16:32], "little")},
                           "has_uint32": int.from_bytes(state[32:36], "little"),
                           "uinteger": int.from_bytes(state[36:], "little")}

    def _take_slow(self) -> bytes:
        st = self.bits.state
        return (st["state"]["state"].to_bytes(16, "little") + st["state"]["inc"].to_bytes(16, "little")
                + st["has_uint32"].to_bytes(4, "little") + st["uinteger"].to_bytes(4, "little"))


# one lender per thread for every keyed stream (per thread: Dask workers run simulations in threads)
_LOCAL = threading.local()


def _lender() -> _Lender:
    lender = getattr(_LOCAL, "lender", None)
    if lender is None:
        lender = _LOCAL.lender = _Lender()
    return lender


_KINDS: dict[tuple, tuple] = {}


def _kind(sample, source: int, floor: float | None, batch: int, cap: int) -> tuple:
    """(sample, source, floor, batch, cap, fill, compiled): one tuple for every stream with these
    (the distribution told apart by identity; a kind holds it, so its identity is not reused
    while cached), with its :func:`_filler` and :func:`_compiled` decided once."""
    key = (id(sample), source, floor, batch, cap)
    kind = _KINDS.get(key)
    if kind is None:
        if len(_KINDS) >= 4096:  # scenarios come and go in a long process (a sweep, the tests)
            _KINDS.clear()
        kind = _KINDS[key] = (sample, source, floor, batch, max(cap, batch), _filler(sample, floor),
                              _compiled(sample, floor))
    return kind


def _compiled(sample, floor: float | None) -> tuple | None:
    """The arguments after the batch's length with which the compiled kernel draws ``sample``
    floored at ``floor`` (:func:`sim.engine._kernel.refill`: numpy's own C functions, so the
    same draws as its ``Generator`` call); None where numpy's call draws (the kernel not built,
    or a distribution it does not draw)."""
    if KERNEL is None:
        return None
    kind = type(sample)
    if kind is _Uniform:
        drawn = (KERNEL.UNIFORM01, 0.0, 0.0)
    elif kind is _Normal:
        drawn = (KERNEL.STANDARD_NORMAL, 0.0, 0.0)
    elif kind is Exponential:
        drawn = (KERNEL.EXPONENTIAL, sample.mean_, 0.0)
    elif kind is Uniform:
        drawn = (KERNEL.UNIFORM, sample.low, sample.high - sample.low)
    elif kind is Normal:
        drawn = (KERNEL.NORMAL, sample.mean_, sample.sd)
    elif kind is Lognormal:
        drawn = (KERNEL.LOGNORMAL, *lognormal_parameters(sample.mean_, sample.sd))
    elif kind is CountUniform and sample.high > sample.low:
        drawn = (KERNEL.INTEGERS, sample.low, sample.high - sample.low)
    else:
        return None
    return (*drawn, _clips(sample, floor), 0.0 if floor is None else float(floor))


def _clips(sample, floor: float | None) -> bool:
    """Whether draws of ``sample`` need flooring at ``floor`` (one that cannot be negative needs
    none at 0)."""
    return floor is not None and not (floor == 0.0 and getattr(sample, "never_negative", False))


def _filler(sample, floor: float | None):
    """``fill(lender, state, n)``: ``n`` draws of ``sample`` from the packed ``state``, floored at
    ``floor``, and the state after — the draws as a list of numbers or as packed doubles. What
    can be decided once for every stream of a kind is decided here, not at each batch."""
    numpy_fill = _numpy_filler(sample, floor)
    if type(sample) is not CountUniform or sample.high == sample.low:
        return numpy_fill
    low, high = sample.low, sample.high
    # whole numbers at least ``low`` need no floor at or under it
    below = floor is not None and floor > low

    def fill(lender: _Lender, state: bytes, n: int):
        drawn = lender.integers(state, low, high, n)
        if drawn is None:
            return numpy_fill(lender, state, n)
        values, after = drawn
        return after, ([v if v > floor else floor for v in values] if below else values)

    return fill


def _numpy_filler(sample, floor: float | None):
    """:func:`_filler` by numpy's own call."""
    clip = _clips(sample, floor)
    draw = sample.sample

    def fill(lender: _Lender, state: bytes, n: int):
        lender.put(state)
        values = draw(lender.gen, n)
        after = lender.take()
        if values.dtype != _FLOAT:
            values = values.astype(_FLOAT)
        if clip:
            np.maximum(values, floor, out=values)
        return after, values.tobytes()

    return fill


#: the bytes a run's streams may hold in draws, taken or not (a stream's whole last batch stays
#: in its buffer until the next): with every stream at its cap, they hold about this much. A
#: run of 100,000 users of the baseline holds about 40 MB of draws in batches of 4 to 16, and its
#: comparison (two processes) peaks near 1.8 GB of its 2 GB: this leaves room for the rest
PENDING_BUDGET_BYTES = 96 * 2**20
#: the longest batch: its fixed cost (a few microseconds) is then under the draws' own
_MOST_BATCH = 256
# the streams a run keeps per tab (think times, burst sizes, idle coins and gaps, round trips)
# and per user (visit lengths, time away, the auth tier's round trips, their answer legs or a
# timer's offsets; constant distributions have no stream, a lossy network one more per tab)
_STREAMS_PER_TAB, _STREAMS_PER_USER = 5, 4


def batch_cap(scenario: Scenario) -> int:
    """The longest batch a stream of a run of ``scenario`` takes: :data:`PENDING_BUDGET_BYTES`
    shared by its streams, at most :data:`_MOST_BATCH` (a stream's first batch is never cut:
    a million users keep today's small ones)."""
    pop = scenario.population
    return _batch_cap(pop.users, pop.tabs.mean)


@functools.lru_cache(maxsize=64)
def _batch_cap(users: int, tabs: float) -> int:
    streams = users * (_STREAMS_PER_TAB * max(tabs, 1.0) + _STREAMS_PER_USER)
    return min(int(PENDING_BUDGET_BYTES / (8 * max(streams, 1))), _MOST_BATCH)


#: words (8 bytes each) at the start of a stream's buffer that hold its packed state (40 bytes,
#: :class:`_Lender`), before the draws: one object a stream instead of two
_HEAD = 5

#: a batch is this many times what the stream's buffer held before it (up to the stream's cap)
_GROWTH = 4


class Draws:
    """Scalar draws from a distribution on one keyed stream, taken from numpy in batches (a
    scalar numpy call costs more than the simulation step that uses it). :meth:`peek` and
    :meth:`skip` see and take several at once; the values are the same whichever way they are
    taken, and whatever the batch size (numpy's generators carry their state from one batch to
    the next). A batch waits as packed doubles (8 bytes a draw, not a Python float's 32): with
    a million users, the draws not yet taken are most of the engine's memory.

    A batch costs about as much to set up as a few dozen draws, so a stream that is drawn from
    often should take large ones; one that is drawn from a few times an hour should not hold
    hundreds of draws it never takes. So the first batch is ``batch`` draws, and each next one
    four times what the buffer held (:data:`_GROWTH`), up to ``cap`` (:func:`batch_cap` sets it from
    the run's population, so that the draws waiting in a run fit a memory budget): a busy
    stream soon refills once every ``cap`` draws, a rare one holds a few. A stream trimmed
    (:meth:`trim`) grows again from what it still holds.

    The buffer starts with the stream's packed state (:data:`_HEAD` words, copied as bytes,
    never read as numbers), then the draws; the next draw is at index ``_i``, never before the
    state. Before the first draw the buffer is empty."""

    __slots__ = ("_kind", "_key", "_buf", "_i")

    def __init__(self, dist, key: tuple, source: int, *, floor: float | None = 0.0, batch: int = 64,
                 cap: int = 0):
        # the stream is (seed, *key, source) (:func:`stream_state`), made at the first draw;
        # ``key`` is shared by the streams of a user or tab, and what every user's stream of one
        # source has in common (distribution, source, floor, batch sizes) by all of them: an
        # object holds only what is its own (a million users have millions of streams)
        self._kind = _kind(dist if dist is not None else _UNIFORM, int(source), floor, batch, cap)
        self._key = key
        self._buf = _EMPTY
        self._i = 0

    @property
    def _state(self) -> bytes | None:
        """The packed PCG64 state after the draws in the buffer (None before the first draw)."""
        return self._buf[:_HEAD].tobytes() if len(self._buf) else None

    def _refill(self) -> None:
        _, source, _, batch, cap, fill, compiled = self._kind
        buf, i = self._buf, self._i
        if len(buf):
            state = None  # the one at the head of the buffer
            batch = min(max(batch, _GROWTH * (len(buf) - _HEAD)), cap)
        else:
            state = _initial_state((*self._key, source))
        if compiled is not None:
            self._buf = KERNEL.refill(buf, i, state, batch, *compiled)
            self._i = _HEAD
            return
        after, values = fill(_lender(), buf[:_HEAD].tobytes() if state is None else state, batch)
        # the new state, the draws not taken yet, the new ones; an array grown in place keeps
        # room for more (up to 7 words, a sixteenth beyond), a slice of it is its exact size
        fresh = array("d", after + buf[i:].tobytes() if i < len(buf) else after)
        if type(values) is list:
            fresh.extend(values)
        else:
            fresh.frombytes(values)
        self._buf = fresh[:]
        self._i = _HEAD

    def trim(self) -> None:
        """Let go of the draws already taken: the buffer keeps only those still to come (for a
        stream that will not be drawn from for a while, such as a tab's while its user is away;
        the draws to come are the same)."""
        if self._i > _HEAD:
            buf = self._buf
            self._buf = buf[:_HEAD] + buf[self._i:]
            self._i = _HEAD

    def __call__(self):
        i = self._i
        if i >= len(self._buf):
            self._refill()
            i = _HEAD
        self._i = i + 1
        return self._buf[i]

    def head(self) -> float:
        """The next draw, without taking it."""
        if self._i >= len(self._buf):
            self._refill()
        return self._buf[self._i]

    def peek(self, n: int):
        """The next ``n`` draws, without taking them."""
        while len(self._buf) - self._i < n:
            self._refill()
        return self._buf[self._i:self._i + n]

    def skip(self, n: int) -> None:
        """Take ``n`` draws already seen with :meth:`peek`."""
        self._i += n

    def cursor(self, n: int = 1) -> tuple:
        """For a caller that reads draws in a loop: the buffer and the index of the next draw,
        with at least ``n`` draws from there on. The caller reads ``buf[i]``, ``buf[i + 1]``, …
        itself, and hands the index of the first draw it did not take to :meth:`seek` before
        anything else draws from this stream (or before it asks for a new cursor)."""
        while len(self._buf) - self._i < n:
            self._refill()
        return self._buf, self._i

    def seek(self, i: int) -> None:
        """Take the draws up to index ``i`` of the buffer of the last :meth:`cursor`."""
        self._i = i


class _Fixed(functools.partial):
    """The draws of a constant distribution: the same value every time, drawn from no generator
    (numpy's ``full`` takes nothing from it), so one object serves every stream of that value
    and kind, with no state, buffer or batch of its own. The value is what :class:`Draws` would
    give (its floor applied the same way); the interface is :class:`Draws`'s. A draw is a call
    of ``float(value)`` (the value itself) made by ``functools.partial`` in C: no Python frame."""

    def __new__(cls, value: float):
        fixed = super().__new__(cls, float, value)
        fixed.value = value
        fixed._buf = array("d", [value] * 64)
        return fixed

    def head(self) -> float:
        return self.value

    def peek(self, n: int):
        return self.cursor(n)[0][:n]

    def skip(self, n: int) -> None:
        pass

    def cursor(self, n: int = 1) -> tuple:
        if len(self._buf) < n:
            self._buf = array("d", [self.value] * n)
        return self._buf, 0

    def seek(self, i: int) -> None:
        pass

    def trim(self) -> None:
        pass


#: (id of a constant distribution, floor) -> (the distribution, its fixed stream): the
#: distribution held, so that its identity is not reused while cached
_FIXED: dict[tuple, tuple] = {}


def stream(dist, key: tuple, source: int, *, floor: float | None = 0.0, batch: int = 64, cap: int = 0):
    """A keyed stream of ``dist`` (:class:`Draws`), or for a constant distribution the shared
    :class:`_Fixed` stream of its value: the same draws, without a batch to refill every few."""
    if type(dist) not in (Constant, CountConstant):
        return Draws(dist, key, source, floor=floor, batch=batch, cap=cap)
    cached = _FIXED.get((id(dist), floor))
    if cached is None or cached[0] is not dist:
        # the value as a batch of Draws would hold it: numpy's, floored the same way
        values = dist.sample(None, 1)
        if values.dtype != _FLOAT:
            values = values.astype(_FLOAT)
        if floor is not None:
            np.maximum(values, floor, out=values)
        if len(_FIXED) >= 256:  # scenarios come and go in a long process
            _FIXED.clear()
        cached = _FIXED[id(dist), floor] = (dist, _Fixed(array("d", values.tobytes())[0]))
    return cached[1]


class TabStreams:
    """The draws one tab takes, each from its own stream: what the user does in it and the
    round trips (and losses) of its API requests."""

    __slots__ = ("think", "burst", "idle_coin", "idle_gap", "api_rtt", "_loss", "moments", "_rtt", "_key")

    def __init__(self, scenario: Scenario, seed: int, replication: int, user: int, tab: int):
        pop, work, net = scenario.population, scenario.workload, scenario.network

        key = (seed, replication, 2, user, tab)
        # the first batches are small, the busy streams' grow up to the run's cap (see Draws)
        cap = batch_cap(scenario)
        self.think = stream(work.think_time, key, Source.THINK, batch=8, cap=cap)
        self.burst = stream(work.burst_size, key, Source.BURST, floor=1, batch=8, cap=cap)
        self.idle_coin = Draws(None, key, Source.IDLE, floor=None, batch=8, cap=cap)
        self.idle_gap = stream(pop.idle_gap, key, Source.IDLE_GAP, batch=4, cap=cap)
        self.api_rtt = stream(net.rtt, key, Source.API_LATENCY, batch=16, cap=cap)
        # ``loss`` is made when first asked for: most runs lose nothing
        self._loss: Draws | None = None
        self._key = key
        #: the run's :class:`HostState` when round trips are correlated (set by its UserStreams);
        #: ``api_rtt`` then draws each call's own standard normal factor
        self.moments: HostState | None = None
        self._rtt = net.rtt
        if net.rtt_correlation > 0:
            self.api_rtt = Draws(_NORMAL, key, Source.API_LATENCY, floor=None, batch=16, cap=cap)

    # made at its first use: a stream that is rarely drawn from costs nothing until then (with
    # a million users, an unused stream object is 100 MB). A property, not ``__getattr__``: a
    # class with ``__getattr__`` pays its hook on every attribute read, the busy streams' too
    @property
    def loss(self) -> Draws:
        draws = self._loss
        if draws is None:
            draws = self._loss = Draws(None, self._key, Source.LOSS, floor=None, batch=128)
        return draws

    def trim(self) -> None:
        """Let go of the draws already taken (:meth:`Draws.trim`): for a tab whose visit ended,
        whose streams wait unused until the user's next visit."""
        for draws in (self.think, self.burst, self.idle_coin, self.idle_gap, self.api_rtt):
            draws.trim()

    def api_round_trip(self, now: float) -> float:
        """The round trip of an API call sent at ``now`` (scenario seconds)."""
        if self.moments is None:
            return self.api_rtt()
        return self.moments.quantiles(now, self.api_rtt(), (self._rtt,))[0]


class _Normal:
    """Standard normal draws (a call's own factor of a correlated round trip)."""

    @staticmethod
    def sample(gen: np.random.Generator, n: int) -> np.ndarray:
        return gen.standard_normal(n)


_NORMAL = _Normal()


class HostState:
    """The state of the network and servers every call of a run meets (``network.rtt_correlation``
    = ρ > 0, ``network.rtt_correlation_time`` = τ): a stationary Gaussian process ``W(t)`` of
    scenario time, shared by every user (a busy host slows whatever is in flight at the same
    moment). A call sent at ``t`` takes its distribution's quantile at ``Φ(√ρ·W(t) + √(1−ρ)·z)``,
    ``z`` the call's own standard normal draw: a Gaussian copula, so each round trip keeps its
    distribution as written, two calls sent together have normal scores correlated ρ, and calls
    ``Δ`` apart ``ρ·exp(−Δ/τ)``. ``W`` is an Ornstein–Uhlenbeck process held constant over steps
    of τ/50, drawn from its own stream keyed by the run's seed and replication only, so it is the
    same whichever users (or auth-tier instance) a run holds."""

    #: steps per correlation time
    STEPS = 50
    _CHUNK = 4096

    def __init__(self, rho: float, tau_s: float, seed: int, replication: int) -> None:
        self.shared, self.own = math.sqrt(rho), math.sqrt(1.0 - rho)
        self.step_s = tau_s / self.STEPS
        self._a = math.exp(-1.0 / self.STEPS)
        self._gen = generator(seed, replication, 3, int(Source.MOMENT))
        self._w = np.empty(0)
        self._lock = threading.Lock()
        # scipy only where round trips are correlated: a process that simulates none is spared
        # its memory (about 25 MB)
        from scipy.special import ndtr

        self._ndtr = ndtr

    def w(self, t_s: float) -> float:
        """``W`` at scenario time ``t_s`` (at least 0)."""
        k = max(int(t_s / self.step_s), 0)
        if k >= len(self._w):
            with self._lock:
                while k >= len(self._w):
                    self._extend()
        return float(self._w[k])

    def _extend(self) -> None:
        from scipy.signal import lfilter

        a = self._a
        noise = self._gen.standard_normal(self._CHUNK) * math.sqrt(1.0 - a * a)
        if len(self._w):
            chunk, _ = lfilter([1.0], [1.0, -a], noise, zi=[a * self._w[-1]])
        else:
            noise[0] = self._gen.standard_normal()
            chunk = lfilter([1.0], [1.0, -a], noise)
        self._w = np.concatenate([self._w, chunk])

    def quantiles(self, t_s: float, z: float, dists: tuple) -> list[float]:
        """The round trips (seconds, at least 0) of a call sent at ``t_s`` with its own factor
        ``z``: one per distribution in ``dists``, all at the same quantile."""
        u = float(self._ndtr(self.shared * self.w(t_s) + self.own * z))
        return [max(float(d.quantile(np.array([u]))[0]), 0.0) for d in dists]


@functools.lru_cache(maxsize=16)
def host_state(rho: float, tau_s: float, seed: int, replication: int) -> HostState:
    """The run's :class:`HostState` (one object per seed and replication)."""
    return HostState(rho, tau_s, seed, replication)


class AuthRoundTrip:
    """One call to the auth tier on the wire: ``granted_s``, its round trip if the server grants
    (``network.auth_rtt``, else ``rtt``), and ``refused_s``, if it refuses
    (``network.auth_rtt_refused`` at the same draw; the granted one when that is not set). The
    request leg is half the granted round trip (the server cannot answer faster before it has
    read the call); the answer leg depends on the answer and, with ``network.auth_legs =
    "independent"``, on a draw of its own made when the answer leaves (``answer``: a function of
    that instant returning the (granted, refused) round trips at that draw; None: the call's own
    draw). Every driver splits a call this way."""

    __slots__ = ("granted_s", "refused_s", "answer")

    def __init__(self, granted_s: float, refused_s: float, answer=None) -> None:
        self.granted_s = granted_s
        self.refused_s = refused_s
        self.answer = answer

    @property
    def request_leg_s(self) -> float:
        """Seconds from the client's send until the server has the call."""
        return self.granted_s / 2

    def answer_leg_s(self, refused: bool, now: float | None = None) -> float:
        """Seconds from the server's answer (at scenario time ``now``, which an answer leg drawn
        on its own needs) until the client has it: the rest of the granted round trip, or of the
        refused one (at least 0) when the server refused — at the call's draw, or at the answer
        leg's own."""
        granted, refused_s = (self.granted_s, self.refused_s) if self.answer is None else self.answer(now)
        if refused:
            return max(refused_s - granted / 2, 0.0)
        return granted / 2


_AT_QUANTILE: dict[int, "_AtQuantile"] = {}


class _AtQuantile:
    """Draws of ``dist`` made as its quantiles at uniform draws, so that two of them on one
    stream give coupled values."""

    __slots__ = ("dist",)

    def __init__(self, dist) -> None:
        self.dist = dist

    @staticmethod
    def of(dist) -> "_AtQuantile":
        """The one ``_AtQuantile`` of ``dist`` (every user's stream shares its kind; told apart
        by identity, as some distributions cannot be hashed)."""
        at = _AT_QUANTILE.get(id(dist))
        if at is None or at.dist is not dist:
            if len(_AT_QUANTILE) >= 256:
                _AT_QUANTILE.clear()
            at = _AT_QUANTILE[id(dist)] = _AtQuantile(dist)
        return at

    def sample(self, gen: np.random.Generator, n: int) -> np.ndarray:
        return self.dist.quantile(gen.random(n))


class UserStreams:
    """The draws one user takes, each from its own stream: visit lengths, time away, round trips
    and losses of its calls to the auth tier, the service times of those calls
    (:meth:`service`); ``tab(i)`` gives tab ``i``'s :class:`TabStreams`. Every stream is keyed by
    the user's index, so a user draws the same numbers whichever other users share its run (or
    its auth-tier instance)."""

    __slots__ = ("visit_length", "away", "auth_rtt", "auth_rtt_refused", "_auth_loss", "_backoff", "_tabs", "_key",
                 "_scenario", "_service", "_jitter", "moments", "_wake", "_answer_legs")

    def __init__(self, scenario: Scenario, seed: int, replication: int, user: int):
        pop, net = scenario.population, scenario.network

        key = (seed, replication, 1, user)
        cap = batch_cap(scenario)
        granted = net.auth_rtt or net.rtt
        self.moments = (host_state(net.rtt_correlation, net.rtt_correlation_time_s, seed, replication)
                        if net.rtt_correlation > 0 else None)
        if self.moments is not None:
            self.auth_rtt = Draws(_NORMAL, key, Source.AUTH_LATENCY, floor=None, batch=8, cap=cap)
            self.auth_rtt_refused = None
        elif net.auth_rtt_refused is None:
            self.auth_rtt = stream(granted, key, Source.AUTH_LATENCY, batch=8, cap=cap)
            self.auth_rtt_refused = None
        else:
            # two views of one stream of uniforms, taken in step (see auth_round_trips): the n-th
            # call's granted and refused round trips are both its draw's quantile
            self.auth_rtt = Draws(_AtQuantile.of(granted), key, Source.AUTH_LATENCY, batch=8, cap=cap)
            self.auth_rtt_refused = Draws(_AtQuantile.of(net.auth_rtt_refused), key, Source.AUTH_LATENCY, batch=8,
                                          cap=cap)
        # an answer leg of its own: a uniform (or, correlated, a normal factor) per call
        self._answer_legs = (None if net.auth_legs == "one_draw" else
                             Draws(_NORMAL if self.moments is not None else None, key, Source.ANSWER_LEG,
                                   floor=None, batch=8, cap=cap))
        # ``auth_loss`` and ``backoff`` are made when first asked for (see TabStreams.loss)
        self._auth_loss: Draws | None = None
        self._backoff: Draws | None = None
        # one draw a visit: a few at a time
        self.visit_length = (stream(pop.session_length, key, Source.VISIT, batch=4, cap=cap) if pop.session_length
                             else None)
        self.away = stream(pop.away, key, Source.AWAY, batch=4, cap=cap) if pop.away else None
        self._tabs: list[TabStreams] = []
        self._key = key  # shared with its streams
        self._scenario = scenario
        self._service: dict | None = None
        self._jitter: Draws | None = None
        self._wake: Draws | None = None

    @property
    def _cap(self) -> int:
        return batch_cap(self._scenario)

    @property
    def auth_loss(self) -> Draws:
        draws = self._auth_loss
        if draws is None:
            draws = self._auth_loss = Draws(None, self._key, Source.AUTH_LOSS, floor=None, batch=8, cap=self._cap)
        return draws

    @property
    def backoff(self) -> Draws:
        draws = self._backoff
        if draws is None:
            draws = self._backoff = Draws(None, self._key, Source.BACKOFF, floor=None, batch=8, cap=self._cap)
        return draws

    @property
    def _rtts(self) -> tuple:
        """The distributions of a call's granted and refused round trips (see :class:`AuthRoundTrip`)."""
        net = self._scenario.network
        granted = net.auth_rtt or net.rtt
        return granted, net.auth_rtt_refused or granted

    def wake_phase(self) -> float:
        """A uniform draw in [0, 1) for the phase of a visit's wake-up grid (made on first use)."""
        if self._wake is None:
            self._wake = Draws(None, self._key, Source.WAKE, floor=None, batch=8, cap=self._cap)
        return self._wake()

    def auth_round_trip(self, now: float) -> "AuthRoundTrip":
        """The round trip of one call to the auth tier sent at ``now`` (scenario seconds; every
        call takes exactly one draw, and one more for its answer leg with ``network.auth_legs =
        "independent"``, taken when the call is sent)."""
        answer = None
        if self._answer_legs is not None:
            answer = functools.partial(self._answer_leg, self._answer_legs())
        if self.moments is not None:
            granted, refused = self.moments.quantiles(now, self.auth_rtt(), self._rtts)
            return AuthRoundTrip(granted, refused, answer)
        rtt = self.auth_rtt()
        return AuthRoundTrip(rtt, rtt if self.auth_rtt_refused is None else self.auth_rtt_refused(), answer)

    def _answer_leg(self, draw: float, now: float) -> tuple[float, float]:
        """The (granted, refused) round trips at an answer leg's own ``draw`` (a uniform, or with
        correlated round trips a normal factor met with the host's state at ``now``)."""
        if self.moments is not None:
            granted, refused = self.moments.quantiles(now, draw, self._rtts)
            return granted, refused
        u = np.array([draw])
        return tuple(max(float(d.quantile(u)[0]), 0.0) for d in self._rtts)

    def jitter(self) -> float:
        """A uniform draw in [0, 1) for a timer's random offset (its stream is made on first use)."""
        if self._jitter is None:
            self._jitter = Draws(None, self._key, Source.JITTER, floor=None, batch=8, cap=self._cap)
        return self._jitter()

    def service(self, part: str) -> float:
        """One draw (seconds, at least 0) of the ``[auth]`` service-time ``part`` (``login_time``,
        ``sign_time``, …) for a call of this user's, from the part's own stream."""
        streams = self._service
        if streams is None:
            streams = self._service = {}
        draws = streams.get(part)
        if draws is None:
            draws = streams[part] = stream(getattr(self._scenario.auth, part), self._key,
                                          SERVICE_SOURCES[part], batch=8, cap=self._cap)
        return draws()

    def tab(self, i: int) -> TabStreams:
        """Tab ``i``'s draws (the same object every time it is asked for)."""
        while len(self._tabs) <= i:
            seed, replication, _, user = self._key
            tab = TabStreams(self._scenario, seed, replication, user, len(self._tabs))
            tab.moments = self.moments
            self._tabs.append(tab)
        return self._tabs[i]


def arrival_times(scenario: Scenario, seed: int, replication: int) -> np.ndarray:
    """When each user first arrives, in seconds from the start of the run (user order)."""
    pop = scenario.population
    n, arrival = pop.users, pop.arrival
    rng = generator(seed, replication, 0, 0)
    if isinstance(arrival, AllAtOnce):
        return arrival.at_s + rng.uniform(0, arrival.spread_s, n) if arrival.spread_s else np.full(n, arrival.at_s)
    if isinstance(arrival, Ramp):
        return arrival.start_s + rng.uniform(0, arrival.over_s, n)
    if isinstance(arrival, PoissonArrivals):
        return arrival.start_s + np.cumsum(rng.exponential(1 / arrival.rate_per_s, n))
    if isinstance(arrival, Diurnal):
        end, out = scenario.run.end_s, np.empty(0)
        while len(out) < n:  # thinning: propose uniformly, keep in proportion to the intensity
            t = rng.uniform(0, end, 2 * n)
            keep = rng.uniform(0, 1 + arrival.amplitude, 2 * n) < 1 + arrival.amplitude * np.cos(
                2 * np.pi * (t - arrival.peak_s) / arrival.period_s)
            out = np.concatenate([out, t[keep]])
        return np.sort(out[:n])
    raise TypeError(f"unknown arrival pattern {arrival!r}")


def user_traits(scenario: Scenario, seed: int, replication: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user: number of tabs (at least 1) and clock skew in seconds (client minus server)."""
    n = scenario.population.users
    tabs = np.maximum(scenario.population.tabs.sample(generator(seed, replication, 0, 1), n), 1).astype(int)
    skew = scenario.clocks.client_skew.sample(generator(seed, replication, 0, 2), n)
    return tabs, skew
