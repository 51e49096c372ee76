"""The compiled kernel (:mod:`sim.engine._kernel`) draws what numpy's ``Generator`` draws, a
timer's compiled ticks (:mod:`sim.strategies._ticks`) are the policy's, and the engines give the
same answers with them and without them (its event queue:
``tests/test_engine_exact.py``)."""

import os
from array import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from sim.engine import kernel, model, streams
from sim.engine.model import FastSimulation
from sim.strategies import ticks
from sim.strategies.client import Held, TabView, TimerClient
from tests.conftest import SCENARIOS
from tests.test_engine_fast import assert_identical, both

K = kernel.KERNEL
compiled = pytest.mark.skipif(K is None, reason="the kernel is not compiled here (no C compiler at install)")

# each kind with numpy's own call for its parameters: the kernel's (a, b), b a range where numpy
# takes the high end (it subtracts, as :func:`sim.engine.streams._compiled` does)
BATCHES = {
    "UNIFORM01": st.just((0.0, 0.0, lambda g, n: g.random(n))),
    "STANDARD_NORMAL": st.just((0.0, 0.0, lambda g, n: g.standard_normal(n))),
    "EXPONENTIAL": st.floats(0, 1e4).map(lambda a: (a, 0.0, lambda g, n: g.exponential(a, n))),
    "UNIFORM": st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e3)).map(
        lambda p: (p[0], (p[0] + p[1]) - p[0], lambda g, n: g.uniform(p[0], p[0] + p[1], n))),
    "NORMAL": st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e3)).map(
        lambda p: (p[0], p[1], lambda g, n: g.normal(p[0], p[1], n))),
    "LOGNORMAL": st.tuples(st.floats(-20, 5), st.floats(0, 3)).map(
        lambda p: (p[0], p[1], lambda g, n: g.lognormal(p[0], p[1], n))),
    # 32-bit ranges (Lemire's method on halves of 64-bit draws) and wider ones
    "INTEGERS": st.tuples(st.integers(0, 1000), st.one_of(st.integers(1, 64), st.integers(1, 2**32 - 1),
                                                         st.integers(2**32, 2**40))).map(
        lambda p: (float(p[0]), float(p[1]), lambda g, n: g.integers(p[0], p[0] + p[1] + 1, n, dtype=np.int64))),
}


@st.composite
def batches(draw):
    name = draw(st.sampled_from(sorted(BATCHES)))
    return (name, *draw(BATCHES[name]))


@compiled
@settings(max_examples=300, deadline=None)
@given(batch=batches(), key=st.integers(0, 2**32), waiting=st.booleans(), word=st.integers(0, 2**32 - 1),
       kept=st.integers(0, 4), n=st.integers(1, 300), floor=st.one_of(st.none(), st.floats(-10, 10)))
def test_compiled_draws_are_numpys_with_its_state_after(batch, key, waiting, word, kept, n, floor):
    """A batch drawn by the kernel from a packed state (a 32-bit half waiting or not) is numpy's
    call from that state, floored as numpy's ``maximum`` floors, with the same state after; the
    draws of the old buffer not taken yet come first."""
    name, a, b, call = batch
    state = streams._initial_state((key,))[:32] + int(waiting).to_bytes(4, "little") + word.to_bytes(4, "little")
    old = array("d", state) + array("d", [0.25 * j for j in range(3 + kept)])
    got = K.refill(old, 8, None, n, getattr(K, name), a, b, floor is not None, floor or 0.0)
    lender = streams._Lender()
    lender.put(state)
    expected = call(lender.gen, n).astype(float)
    if floor is not None:
        np.maximum(expected, floor, out=expected)
    assert got[:5].tobytes() == lender.take()
    assert got[5:].tolist() == old[8:].tolist() + expected.tolist()
    # a stream's first batch: from the state given, nothing kept
    first = K.refill(array("d"), 0, state, n, getattr(K, name), a, b, floor is not None, floor or 0.0)
    assert first[5:].tolist() == expected.tolist()


def python_quiet_ticks(client, w, limit, skew, quiet_until, origin, view, grid_phase, budget):
    """The ticks :func:`sim.strategies.ticks.quiet_ticks` walks over, by the policy's own hooks."""
    walked = 0
    while walked < budget and w < limit:
        clock = w + skew
        if not clock < quiet_until:
            break
        w = w + max(client.wake_s(client.next_tick_s(view, clock, origin), grid_phase) - clock, 0.0)
        walked += 1
    return w, walked


@settings(max_examples=400, deadline=None)
@given(phase=st.sampled_from(sorted(ticks.PHASES)), whole=st.booleans(),
       interval=st.sampled_from([0.25, 5.0, 30.0, 60.0, 61.3]), threshold=st.sampled_from([0.0, 60.0, 299.5, 300.0]),
       wake_up=st.sampled_from([0.0, 1.0, 60.0]), grid_phase=st.one_of(st.none(), st.floats(0, 100)),
       expires=st.one_of(st.none(), st.floats(0, 2e5)), skew=st.floats(-300, 300), origin=st.floats(0, 1e5),
       w=st.floats(0, 1e5), span=st.floats(0, 2e4), quiet=st.floats(-100, 2e4), budget=st.integers(0, 500))
def test_quiet_ticks_are_the_timers_own_compiled_or_not(phase, whole, interval, threshold, wake_up, grid_phase, expires,
                                                        skew, origin, w, span, quiet, budget):
    """The walk over a sleeping timer's quiet ticks lands where the policy's ``next_tick_s`` and
    ``wake_s``, tick by tick, land, after as many ticks, to the bit: as plain Python and as the
    compiled module the engine uses (where it was built)."""
    client = TimerClient(check_interval_s=interval, threshold_s=threshold, timer_phase=phase, whole_seconds=whole,
                         wake_up_s=wake_up)
    view = TabView(None if expires is None else Held(1, expires))
    limit, quiet_until = w + span, w + skew + quiet
    expected = python_quiet_ticks(client, w, limit, skew, quiet_until, origin, view, grid_phase, budget)
    for walk in {ticks.quiet_ticks, kernel.QUIET_TICKS}:
        assert walk(w, limit, skew, quiet_until, origin, *client.tick_rule, expires, grid_phase, budget) == expected


@pytest.fixture
def without_kernel(monkeypatch):
    """The engine and the streams as where the kernel could not be compiled."""
    monkeypatch.setattr(model, "_KERNEL", None)  # the Python event queue
    monkeypatch.setattr(model, "_QUIET_TICKS", ticks.quiet_ticks)
    monkeypatch.setattr(FastSimulation, "sure_views", None)
    monkeypatch.setattr(streams, "_compiled", lambda sample, floor: None)
    monkeypatch.setattr(streams, "_KINDS", {})


@compiled
@pytest.mark.parametrize("name", ["baseline", "multi_tab", "storm"])
def test_fast_engine_gives_the_same_answers_without_the_kernel(name, request):
    scenario = sim.load_scenario(SCENARIOS / f"{name}.toml")
    scenario = scenario.replace(population={"users": min(scenario.population.users, 40)},
                                run={"replications": 1, "duration_s": min(scenario.run.duration_s, 1800.0)})
    with_kernel = sim.run(scenario, processes=1, engine="fast")
    request.getfixturevalue("without_kernel")
    exact, fast = both(scenario)
    assert fast.summary["requests"].iloc[0] > 0
    assert_identical(exact, fast)
    assert_identical(with_kernel, fast)


def test_a_kernel_built_before_its_source_changed_is_not_used(tmp_path):
    source, built = tmp_path / "_kernel.pyx", tmp_path / "_kernel.so"
    source.write_text("")
    built.write_text("")
    os.utime(source, (1_000, 1_000))
    os.utime(built, (2_000, 2_000))
    assert not kernel.stale(str(built), str(source))
    os.utime(source, (3_000, 3_000))
    assert kernel.stale(str(built), str(source))
    assert not kernel.stale(str(built), str(tmp_path / "none.pyx"))  # an install without its source


@compiled
def test_a_kernel_that_reads_numpys_state_otherwise_is_not_used():
    """The check made before the kernel is used: its draws from a known state are numpy's; a
    kernel that read the state's words in another order (a numpy without native 128-bit
    integers lays them out so) would draw other numbers, and is refused."""
    from types import SimpleNamespace

    assert kernel.draws_as_numpy(K)

    def swapped(buf, i, state, *rest):
        if state is not None:  # the 128-bit words' halves the other way round
            state = state[8:16] + state[:8] + state[24:32] + state[16:24] + state[32:]
        return K.refill(buf, i, state, *rest)

    assert not kernel.draws_as_numpy(SimpleNamespace(refill=swapped, INTEGERS=K.INTEGERS, UNIFORM01=K.UNIFORM01))
