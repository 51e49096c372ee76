"""The pure answers the fast engine relies on to skip work: the policies' "until when do requests
stay plain" (checked against the hooks they summarise), draws that do not depend on how they are
batched, and a measurement window read off the per-second bins."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import sim
from sim.engine.model import _below
from sim.engine.streams import Draws
from sim.metrics import Counts
from sim.strategies.client import (
    Action, Held, ProactiveClient, ReactiveClient, Response, SlidingClient, TabView, TimerClient,
)
from sim.strategies.ledger import Ledger
from sim.strategies.server import DualTokenServer, SlidingServer
from tests.conftest import SCENARIOS

CLIENTS = [
    ReactiveClient(),
    ReactiveClient(single_flight=True),
    SlidingClient(),
    TimerClient(check_interval_s=60, threshold_s=300),
    *[ProactiveClient(threshold_s=t, compare=c, whole_seconds=w)
      for t in (0.0, 30.0, 299.5) for c in ("le", "lt") for w in (False, True)],
]
times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(client=st.sampled_from(CLIENTS), expires=times, back=st.floats(min_value=0.0, max_value=5e3),
       refreshing=st.booleans())
def test_a_client_sends_and_is_done_until_it_says(client, expires, back, refreshing):
    view = TabView(Held(1, expires), refreshing)
    until = client.sends_until_s(view)
    now = _below(until) - back
    if not math.isfinite(now):
        return
    assert client.before_send(view, now) is Action.SEND
    assert client.on_response(view, view.held, Response(200), 1, now) is Action.DONE


TIMERS = [TimerClient(check_interval_s=60, threshold_s=t, compare=c, whole_seconds=w)
          for t in (0.0, 30.0, 299.5) for c in ("le", "lt") for w in (False, True)]


@settings(max_examples=60, deadline=None)
@given(client=st.sampled_from(CLIENTS + TIMERS), expires=times, back=st.floats(min_value=0.0, max_value=5e3),
       refreshing=st.booleans())
def test_a_timer_does_nothing_until_it_says(client, expires, back, refreshing):
    view = TabView(Held(1, expires), refreshing)
    now = _below(client.timer_quiet_until_s(view)) - back
    if math.isfinite(now):
        assert client.on_timer(view, now) is Action.NOTHING
    assert client.timer_quiet_until_s(TabView(None, refreshing)) == math.inf  # a timer with no token does nothing
    assert client.on_timer(TabView(None, refreshing), expires) is Action.NOTHING


def test_a_tab_without_a_token_is_never_sure_to_send():
    for client in CLIENTS:
        assert client.sends_until_s(TabView(None)) == -math.inf


SERVERS = [
    DualTokenServer(access_ttl="15m"),
    DualTokenServer(access_ttl="15m", rotation=True, reuse_detection="family", revoke_access_on_reuse=True),
    SlidingServer(access_ttl="30m", window="15m"),
    SlidingServer(access_ttl="30m", window="30m", absolute_max="1h"),
]


@settings(max_examples=50, deadline=None)
@given(server=st.sampled_from(SERVERS), issued=times, back=st.floats(min_value=0.0, max_value=5e3),
       leeway=st.sampled_from([0.0, 0.5, 30.0]))
def test_a_server_answers_plainly_until_it_says(server, issued, back, leeway):
    ledger = Ledger()
    token = server.login(ledger, 1, issued).access
    arrive = _below(server.plain_until_s(ledger, token, leeway)) - back
    if math.isfinite(arrive):
        assert server.plain_at(ledger, token, arrive, leeway)
        assert server.authorize(ledger, token, arrive, leeway).status == "ok"
    ledger.revoke_session(ledger.session_of(token), issued, access=True)
    assert server.plain_until_s(ledger, token, leeway) == -math.inf


def test_draws_do_not_depend_on_batches_or_on_how_they_are_taken():
    scenario = sim.load_scenario(SCENARIOS / "baseline.toml")
    for dist in (None, scenario.network.rtt, scenario.workload.think_time, scenario.workload.burst_size):
        reference = Draws(dist, (7, 0, 2, 3, 0), 3, batch=1000)
        expected = [reference() for _ in range(500)]
        for batch in (1, 7, 64):
            draws = Draws(dist, (7, 0, 2, 3, 0), 3, batch=batch)
            got = []
            while len(got) < 500:
                n = min(5, 500 - len(got))
                assert draws.head() == draws.peek(n)[0]
                got.extend(draws.peek(n))
                draws.skip(n)
                if len(got) < 500:
                    got.append(draws())
            assert got == expected


def test_growing_batches_draw_what_one_numpy_call_draws():
    """A stream whose batches grow (3 draws, then four times what its buffer held, up to 200)
    draws, however it is read (one at a time, ``head``, ``peek``/``skip``, ``cursor``/``seek``,
    trimmed between), what one numpy call from its starting state draws: for every kind of
    distribution, whole numbers past the lender's own (a batch of 3 leaves a 32-bit half
    waiting for the next batch, which numpy's call draws) included."""
    from sim import distributions as d
    from sim.engine import streams

    cases = [(None, None), (d.Exponential(mean=2.0), 0.0), (d.Lognormal(mean=0.08, sd=0.025), 0.0),
             (d.Normal(mean=0.01, sd=0.02), 0.0), (d.Uniform(low=-1.0, high=1.0), 0.0),
             (d.Empirical(values=[0.5, -0.2, 3.0], weights=[1.0, 2.0, 1.0]), 0.0),
             (d.CountUniform(low=0, high=6), 1), (d.CountPoisson(mean=3.0), 1), (d.CountEmpirical(values=[1, 4]), 0)]
    for source, (dist, floor) in enumerate(cases):
        gen = np.random.Generator(np.random.PCG64())
        gen.bit_generator.state = streams.stream_state(7, 0, 2, 3, 0, source)
        expected = (gen.random(600) if dist is None else dist.sample(gen, 600)).astype(float)
        if floor is not None:
            expected = np.maximum(expected, floor)
        draws, got, sizes = Draws(dist, (7, 0, 2, 3, 0), source, floor=floor, batch=3, cap=200), [], set()
        for step in range(600):
            if len(got) == 600:
                break
            n = min(1 + step % 9, 600 - len(got))
            way = step % 4
            if way == 0:
                got.append(draws())
            elif way == 1:
                assert draws.head() == draws.peek(n)[0]
                got.extend(draws.peek(n))
                draws.skip(n)
            else:
                buf, i = draws.cursor(n)
                got.extend(buf[i:i + n])
                draws.seek(i + n)
                if step % 100 == 3:  # a trim, then the stream grows again from what it holds
                    draws.trim()
            sizes.add(len(draws._buf))
        assert got == expected.tolist(), dist
        assert min(sizes) < 20 and 200 <= max(sizes) <= 200 + 20  # grown from 3 draws up to the cap


def test_streams_lend_their_state_the_same_way_by_memory_or_by_numpys_property(monkeypatch):
    """A stream's state copied in and out of the shared generator's memory draws what numpy's
    documented ``state`` property would: the same numbers as a generator made from that state,
    32-bit leftovers (integers) included; a lender without the direct path uses the property."""
    from sim.engine import streams

    scenario = sim.load_scenario(SCENARIOS / "baseline.toml")
    direct = streams._Lender()
    assert direct.put == direct._put_direct  # numpy's layout as expected on this build
    slow = streams._Lender()
    slow.put, slow.take = slow._put_slow, slow._take_slow
    seen = {}
    for name, lender in (("direct", direct), ("slow", slow)):
        monkeypatch.setattr(streams, "_lender", lambda lender=lender: lender)
        draws = [Draws(d, (7, 0, 2, 3, 0), s, batch=3) for s, d in
                 ((0, scenario.workload.burst_size), (1, scenario.network.rtt), (2, None))]
        seen[name] = [[d() for _ in range(20)] for d in draws]
    assert seen["direct"] == seen["slow"]
    state = streams.stream_state(7, 0, 2, 3, 0, 0)
    gen = np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = state
    assert seen["direct"][0] == [max(float(v), 1.0) for v in scenario.workload.burst_size.sample(gen, 20)]


@settings(max_examples=60, deadline=None)
@given(key=st.integers(0, 2**32), waiting=st.booleans(), word=st.integers(0, 2**32 - 1), low=st.integers(0, 1000),
       span=st.one_of(st.integers(1, 64), st.integers(1, 2**32 - 2)), n=st.integers(1, 130))
def test_whole_numbers_drawn_over_the_batch_are_numpys_with_its_state_after(key, waiting, word, low, span, n):
    """The lender's own bounded integers (Lemire's method over a batch of raw draws) are numpy's
    ``integers`` from the same packed state, and leave the same state (a 32-bit half waiting or
    not); where it cannot say (a draw numpy would redo) or would be slower it says None."""
    from sim.engine import streams

    lender = streams._Lender()
    state = streams._initial_state((key,))[:32] + int(waiting).to_bytes(4, "little") + word.to_bytes(4, "little")
    got = lender.integers(state, low, low + span, n)
    lender.put(state)
    expected = lender.gen.integers(low, low + span + 1, n, dtype=np.int64)
    after = lender.take()
    if got is not None:
        assert got[0] == expected.tolist()
        assert got[1] == after
    else:  # only for a range where numpy may redraw, or a batch numpy's call draws faster
        assert (0xFFFFFFFF - span) % (span + 1) > 0 or n > streams._LEMIRE_MOST


def test_window_from_bins_equals_the_window_counted_one_by_one():
    rng = np.random.default_rng(3)
    counted, binned = Counts(300.0, 3600.0), Counts(300.0, 3600.0, window_from_bins=True)
    for t in np.concatenate([rng.uniform(0, 3900, 2000), [0.0, 299.999, 300.0, 3899.999, 3900.0, 5000.0, -0.5]]):
        for counts in (counted, binned):
            counts.count("attempt", "ok", float(t))
            counts.count("request", "ok", float(t), 3)
    binned.settle()
    assert dict(binned.window) == dict(counted.window)
    assert {k: list(v) for k, v in binned.bins.items()} == {k: list(v) for k, v in counted.bins.items()}
