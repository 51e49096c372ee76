# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The engine's compiled inner loops (``setup.py`` builds this module; where it cannot, the
engine's Python code does the same work, to the same answers, more slowly):

- :class:`EventQueue`, the pending events of a run (``sim.engine.model.CalendarQueue``'s order);
- :func:`sure_views`, the page views of one tab that are plain without asking (the loop of
  :func:`~sim.strategies.flow.plain_page_views`, for its commonest case);
- :func:`refill`, a stream's next batch of draws (:meth:`~sim.engine.streams.Draws._refill`)
  by numpy's own C functions, on the stream's PCG64 state, without a ``Generator`` call.

Each does the same IEEE arithmetic in the same order as the Python code it stands for (the build
turns off floating-point contraction), so the answers are identical; the test suite checks it.
"""

from cpython.array cimport array, clone
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer

import numpy as np

from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport (random_exponential, random_lognormal, random_normal,
                                           random_standard_normal, random_standard_uniform, random_uniform)

cdef array DOUBLES = array("d")  # an empty buffer of doubles, a template for new ones

cdef extern from "numpy/random/distributions.h":
    void random_bounded_uint64_fill(bitgen_t *bitgen_state, uint64_t off, uint64_t rng, Py_ssize_t cnt,
                                    bint use_masked, uint64_t *out) nogil

cdef extern from *:
    """
    /* numpy's PCG64 state (numpy/random/src/pcg64/pcg64.h): the 128-bit state and increment,
       then the half of a 64-bit draw kept for the next 32-bit one */
    typedef struct { unsigned char bytes[32]; } __attribute__((aligned(16))) rl_pcg64_core;
    typedef struct { rl_pcg64_core *core; int has_uint32; uint32_t uinteger; } rl_pcg64_state;
    """
    ctypedef struct rl_pcg64_core:
        unsigned char bytes[32]
    ctypedef struct rl_pcg64_state:
        rl_pcg64_core *core
        int has_uint32
        uint32_t uinteger


# -- the event queue -----------------------------------------------------------------------------

cdef struct Event:
    double t
    unsigned long long order
    PyObject *fn
    PyObject *arg


cdef inline bint earlier(Event *a, Event *b) noexcept nogil:
    return a.t < b.t or (a.t == b.t and a.order < b.order)


cdef class EventQueue:
    """The pending events of a run: :meth:`run` calls ``fn(arg)`` at each event's instant
    (setting its owner's ``now``), events of one instant in the order they were scheduled
    (:meth:`at`); an event at or after ``end_s`` is never taken. One binary heap of C structs
    (instant, order, two references): no tuple or float object per event, and a pop compares
    doubles in one block of memory."""

    cdef Event *events
    cdef Py_ssize_t n, size
    cdef unsigned long long order
    cdef readonly double end_s

    def __cinit__(self, double end_s):
        self.size = 1024
        self.events = <Event *>PyMem_Malloc(self.size * sizeof(Event))
        if self.events is NULL:
            raise MemoryError()
        self.n = 0
        self.order = 0
        self.end_s = end_s

    def __dealloc__(self):
        self._clear()
        PyMem_Free(self.events)

    cdef void _clear(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_DECREF(<object>self.events[i].fn)
            Py_DECREF(<object>self.events[i].arg)
        self.n = 0

    def __len__(self):
        return self.n

    def at(self, double t, fn, arg):
        """Schedule ``fn(arg)`` at instant ``t``, after every event scheduled for ``t`` before."""
        cdef Event event
        cdef Event *events
        cdef Py_ssize_t i, parent
        if not t < self.end_s:
            return
        if self.n == self.size:
            events = <Event *>PyMem_Realloc(self.events, 2 * self.size * sizeof(Event))
            if events is NULL:
                raise MemoryError()
            self.events, self.size = events, 2 * self.size
        event.t, event.order = t, self.order
        event.fn, event.arg = <PyObject *>fn, <PyObject *>arg
        Py_INCREF(fn)
        Py_INCREF(arg)
        self.order += 1
        events = self.events
        i = self.n
        self.n += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not earlier(&event, &events[parent]):
                break
            events[i] = events[parent]
            i = parent
        events[i] = event

    def run(self, owner):
        """Take the events in order, setting ``owner.now`` to each one's instant and calling it,
        until none is left (those still pending when a call raises are let go)."""
        cdef Event first, last
        cdef Event *events
        cdef Py_ssize_t i, child, n
        try:
            while self.n:
                events = self.events
                first = events[0]
                self.n -= 1
                n = self.n
                if n:
                    last = events[n]
                    i = 0
                    while True:
                        child = 2 * i + 1
                        if child >= n:
                            break
                        if child + 1 < n and earlier(&events[child + 1], &events[child]):
                            child += 1
                        if not earlier(&events[child], &last):
                            break
                        events[i] = events[child]
                        i = child
                    events[i] = last
                fn = <object>first.fn
                arg = <object>first.arg
                Py_DECREF(fn)  # the queue's references, now held by ``fn`` and ``arg``
                Py_DECREF(arg)
                owner.now = first.t
                fn(arg)
        finally:
            self._clear()


# -- page views ---------------------------------------------------------------------------------

def sure_views(burst, rtt, think, coin, gap, double idle_probability, double t, double stop_s,
               double sure_sends_before_s, double sure_arrives_before_s, double verify_s, double at_once_below_s,
               long long[:] attempts_ok, long long[:] requests_ok, latency, double lo_s, double hi_s):
    """Page views of one tab from ``t`` while each one starts before ``sure_sends_before_s``, its
    requests all arrive before ``sure_arrives_before_s`` and its last one ends before
    ``at_once_below_s`` (so that every request counts as none added latency: see
    ``FastSimulation._views``), and the next starts before ``stop_s``: each view's requests
    counted into the per-second bins, and into ``latency`` (a sketch's count of zeros) inside
    the window ``[lo_s, hi_s)``. A view's draws are its burst size, that many round trips, its
    idle coin (with ``idle_probability``; else ``coin`` and ``gap`` are not read) and a gap
    when the coin says so, and its think time, from the tab's streams (read through their
    ``cursor`` and ``seek``, as :func:`~sim.strategies.flow.plain_page_views` reads them).

    Returns (views done, when the next one starts)."""
    cdef array bb, rb, tb, cb = DOUBLES, gb = DOUBLES
    cdef Py_ssize_t bi, ri, ti, ci = 0, gi = 0, bl, rl, tl, cl = 0, gl = 0
    cdef Py_ssize_t views = 0, in_window = 0, n, k, second
    cdef double top, h, done, pause
    cdef bint gaps_read = False
    bb, bi = burst.cursor()
    rb, ri = rtt.cursor()
    tb, ti = think.cursor()
    bl, rl, tl = len(bb), len(rb), len(tb)
    if idle_probability:
        cb, ci = coin.cursor()
        cl = len(cb)
    while True:
        if bi >= bl:
            burst.seek(bi)
            bb, bi = burst.cursor()
            bl = len(bb)
        n = <Py_ssize_t>bb.data.as_doubles[bi]
        if ri + n > rl:
            rtt.seek(ri)
            rb, ri = rtt.cursor(n)
            rl = len(rb)
        top = rb.data.as_doubles[ri]
        for k in range(ri + 1, ri + n):
            if rb.data.as_doubles[k] > top:
                top = rb.data.as_doubles[k]
        h = top / 2
        done = (t + h) + (h + verify_s)
        if not (t < sure_sends_before_s and t + h < sure_arrives_before_s and done < at_once_below_s):
            break
        bi += 1
        ri += n
        second = <Py_ssize_t>t
        attempts_ok[second] += n
        requests_ok[second] += n
        if lo_s <= t < hi_s:
            in_window += n
        pause = 0.0
        if idle_probability:
            if ci >= cl:
                coin.seek(ci)
                cb, ci = coin.cursor()
                cl = len(cb)
            ci += 1
            if cb.data.as_doubles[ci - 1] < idle_probability:
                if gi >= gl:
                    if gaps_read:
                        gap.seek(gi)
                    gb, gi = gap.cursor()
                    gl, gaps_read = len(gb), True
                gi += 1
                pause = gb.data.as_doubles[gi - 1]
        if ti >= tl:
            think.seek(ti)
            tb, ti = think.cursor()
            tl = len(tb)
        ti += 1
        t = done + (pause + tb.data.as_doubles[ti - 1])
        views += 1
        if not t < stop_s:
            break
    burst.seek(bi)
    rtt.seek(ri)
    think.seek(ti)
    if idle_probability:
        coin.seek(ci)
    if gaps_read:
        gap.seek(gi)
    if in_window:
        latency.n += in_window
        latency.zeros += in_window
    return views, t


# -- a stream's batch of draws --------------------------------------------------------------------

#: the distributions :func:`refill` draws, as numpy's ``Generator`` methods do: ``random(n)``,
#: ``standard_normal(n)``, ``exponential(a, n)``, ``uniform(a, a + b, n)`` (``b`` the range),
#: ``normal(a, b, n)``, ``lognormal(a, b, n)``, ``integers(a, a + b + 1, n, dtype=np.int64)``
UNIFORM01, STANDARD_NORMAL, EXPONENTIAL, UNIFORM, NORMAL, LOGNORMAL, INTEGERS = 0, 1, 2, 3, 4, 5, 6

#: words (8 bytes) of a stream's buffer before its draws: its packed state (``streams._HEAD``)
cdef Py_ssize_t HEAD = 5
cdef bitgen_t PCG64_CALLS  # numpy's PCG64 functions, each draw made on a state of our own
_BIT_GENERATOR = np.random.PCG64(0)  # kept: PCG64_CALLS points into it
PCG64_CALLS = (<bitgen_t *>PyCapsule_GetPointer(_BIT_GENERATOR.capsule, "BitGenerator"))[0]


def refill(array buf, Py_ssize_t i, bytes state, Py_ssize_t n, int kind, double a, double b, bint clip,
           double floor):
    """A stream's buffer after a batch of ``n`` draws of ``kind`` (floored at ``floor`` when
    ``clip``): its new packed state, the draws of ``buf`` from index ``i`` not taken yet, then
    the new ones, drawn from ``state`` (40 bytes: the stream's first) or else from the state at
    the head of ``buf``."""
    cdef rl_pcg64_core core
    cdef rl_pcg64_state st
    cdef bitgen_t gen = PCG64_CALLS
    cdef const unsigned char *source
    cdef Py_ssize_t kept = len(buf) - i if i < len(buf) else 0, j
    cdef double *out
    cdef uint64_t *whole
    if state is not None:
        source = <const unsigned char *>state
    else:
        source = <const unsigned char *>buf.data.as_chars
    memcpy(core.bytes, source, 32)
    memcpy(&st.has_uint32, source + 32, 4)
    memcpy(&st.uinteger, source + 36, 4)
    st.core = &core
    gen.state = &st
    fresh = clone(DOUBLES, HEAD + kept + n, False)
    out = fresh.data.as_doubles + HEAD + kept
    if kept:
        memcpy(fresh.data.as_doubles + HEAD, buf.data.as_doubles + i, kept * 8)
    if kind == UNIFORM01:
        for j in range(n):
            out[j] = random_standard_uniform(&gen)
    elif kind == STANDARD_NORMAL:
        for j in range(n):
            out[j] = random_standard_normal(&gen)
    elif kind == EXPONENTIAL:
        for j in range(n):
            out[j] = random_exponential(&gen, a)
    elif kind == UNIFORM:
        for j in range(n):
            out[j] = random_uniform(&gen, a, b)
    elif kind == NORMAL:
        for j in range(n):
            out[j] = random_normal(&gen, a, b)
    elif kind == LOGNORMAL:
        for j in range(n):
            out[j] = random_lognormal(&gen, a, b)
    elif kind == INTEGERS:
        # whole numbers written over the doubles' place, then read back as doubles in place
        whole = <uint64_t *>out
        random_bounded_uint64_fill(&gen, <uint64_t><long long>a, <uint64_t><long long>b, n, False, whole)
        for j in range(n):
            out[j] = <double><long long>whole[j]
    else:
        raise ValueError(f"unknown kind {kind}")
    if clip:
        for j in range(n):
            if out[j] < floor:  # numpy's maximum: the draw unless it is under the floor
                out[j] = floor
    memcpy(fresh.data.as_chars, core.bytes, 32)
    memcpy(fresh.data.as_chars + 32, &st.has_uint32, 4)
    memcpy(fresh.data.as_chars + 36, &st.uinteger, 4)
    return fresh
