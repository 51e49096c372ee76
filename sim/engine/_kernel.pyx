# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The fast engine's compiled inner loops (``setup.py`` builds this module; where it cannot, the
engine's Python code does the same work, to the same answers, more slowly):

- :func:`sure_views`, the page views of one tab that are plain without asking (the loop of
  :func:`~sim.strategies.flow.plain_page_views`, for its commonest case);
- :func:`refill`, a stream's next batch of draws (:meth:`~sim.engine.streams.Draws._refill`)
  by numpy's own C functions, on the stream's PCG64 state, without a ``Generator`` call.

Both do the same IEEE arithmetic in the same order as the Python code they stand for (the build
turns off floating-point contraction), so the answers are identical; the test suite checks it.
"""

from cpython.array cimport array, clone
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.pycapsule cimport PyCapsule_GetPointer

import numpy as np

from numpy.random cimport bitgen_t
from numpy.random.c_distributions cimport (random_exponential, random_lognormal, random_normal,
                                           random_standard_normal, random_standard_uniform, random_uniform)

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


# -- page views ---------------------------------------------------------------------------------

#: what :func:`sure_views` stopped for: the next view is not one it carries out (or the run's
#: stop came), or a stream's buffer ran out before the next view (refill it and call again)
STOPPED, NEED_BURST, NEED_RTT, NEED_THINK, NEED_COIN, NEED_GAP = 0, 1, 2, 3, 4, 5


def sure_views(const double[:] bursts, Py_ssize_t bi, const double[:] rtts, Py_ssize_t ri,
               const double[:] thinks, Py_ssize_t ti, const double[:] coins, Py_ssize_t ci,
               const double[:] gaps, Py_ssize_t gi, double idle_probability, double t, double stop_s,
               double sure_sends_before_s, double sure_arrives_before_s, double verify_s, double at_once_below_s,
               long long[:] attempts_ok, long long[:] requests_ok, double lo_s, double hi_s):
    """Page views from ``t`` while each one starts before ``sure_sends_before_s``, its requests
    all arrive before ``sure_arrives_before_s`` and its last one ends before ``at_once_below_s``
    (so that every request counts as none added latency: see ``FastSimulation._views``), and the
    next starts before ``stop_s``; each view's requests counted into the per-second bins. A
    view's draws are its burst size, that many round trips, its idle coin (with
    ``idle_probability``) and a gap when the coin says so, and its think time, read from the
    buffers at the indices given (``gaps`` may be empty until a coin asks for one).

    Returns (views done, when the next one starts, the indices of the next draws of each stream
    in the order above, requests counted inside the window ``[lo_s, hi_s)``, and what it stopped
    for: :data:`STOPPED` or the stream to refill before calling again)."""
    cdef Py_ssize_t views = 0, in_window = 0, n, k, second
    cdef int need = STOPPED
    cdef double top, h, done, pause
    while True:
        if bi >= bursts.shape[0]:
            need = NEED_BURST
            break
        n = <Py_ssize_t>bursts[bi]
        if ri + n > rtts.shape[0]:
            need = NEED_RTT
            break
        top = rtts[ri]
        for k in range(ri + 1, ri + n):
            if rtts[k] > top:
                top = rtts[k]
        h = top / 2
        done = (t + h) + (h + verify_s)
        if not (t < sure_sends_before_s and t + h < sure_arrives_before_s and done < at_once_below_s):
            break
        # every draw the view takes must be at hand before any is taken
        if ti >= thinks.shape[0]:
            need = NEED_THINK
            break
        pause = 0.0
        if idle_probability:
            if ci >= coins.shape[0]:
                need = NEED_COIN
                break
            if coins[ci] < idle_probability:
                if gi >= gaps.shape[0]:
                    need = NEED_GAP
                    break
                pause = gaps[gi]
                gi += 1
            ci += 1
        bi += 1
        ri += n
        second = <Py_ssize_t>t
        attempts_ok[second] += n
        requests_ok[second] += n
        if lo_s <= t < hi_s:
            in_window += n
        t = done + (pause + thinks[ti])
        ti += 1
        views += 1
        if not t < stop_s:
            break
    return views, t, bi, ri, ti, ci, gi, in_window, need


# -- a stream's batch of draws --------------------------------------------------------------------

#: the distributions :func:`refill` draws, as numpy's ``Generator`` methods do: ``random(n)``,
#: ``standard_normal(n)``, ``exponential(a, n)``, ``uniform(a, a + b, n)`` (``b`` the range),
#: ``normal(a, b, n)``, ``lognormal(a, b, n)``, ``integers(a, a + b + 1, n, dtype=np.int64)``
UNIFORM01, STANDARD_NORMAL, EXPONENTIAL, UNIFORM, NORMAL, LOGNORMAL, INTEGERS = 0, 1, 2, 3, 4, 5, 6

#: words (8 bytes) of a stream's buffer before its draws: its packed state (``streams._HEAD``)
cdef Py_ssize_t HEAD = 5
cdef array DOUBLES = array("d")
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
