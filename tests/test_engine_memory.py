"""What the engine keeps per user is only what is still to come: a stream lets go of the draws
already taken when its tab's visit ends, and a stream nothing draws from is never made; neither
changes a single draw or output."""

import pandas as pd

import sim
from sim.engine.model import FastSimulation
from sim.engine.streams import _HEAD, Draws, TabStreams, UserStreams
from tests.conftest import SCENARIOS


def test_a_trimmed_stream_draws_what_it_would_have_drawn():
    scenario = sim.load_scenario(SCENARIOS / "baseline.toml")
    for dist in (None, scenario.network.rtt, scenario.workload.burst_size):
        reference = Draws(dist, (7, 0, 2, 3, 0), 3, batch=1000)
        expected = [reference() for _ in range(300)]
        draws, got = Draws(dist, (7, 0, 2, 3, 0), 3, batch=16), []
        for step in range(300):
            if step % 7 == 0:
                draws.trim()
                assert len(draws._buf) <= _HEAD + 16  # the state, the draws to come
            got.append(draws())
        buf, i = draws.cursor(20)  # a cursor reaching past a batch, then trimmed
        draws.seek(i + 20)
        draws.trim()
        assert got == expected and draws._i == _HEAD and list(buf[i:i + 20]) == [reference() for _ in range(20)]
        assert draws.head() == reference()


def test_rarely_used_streams_are_made_on_first_use_with_their_own_draws():
    scenario = sim.load_scenario(SCENARIOS / "baseline.toml")
    tab, user = TabStreams(scenario, 7, 0, 3, 0), UserStreams(scenario, 7, 0, 3)
    for streams, name, key, source in ((tab, "loss", (7, 0, 2, 3, 0), 5), (user, "auth_loss", (7, 0, 1, 3), 9),
                                       (user, "backoff", (7, 0, 1, 3), 10)):
        assert name not in _made(streams)
        eager = Draws(None, key, source, floor=None)
        assert [getattr(streams, name)() for _ in range(10)] == [eager() for _ in range(10)]
        assert name in _made(streams) and getattr(streams, name) is getattr(streams, name)


def _made(streams) -> set:
    """The streams ``streams`` holds (a stream made on first use sits in a slot of its name with
    a leading underscore, None until then)."""
    made = set()
    for name in type(streams).__slots__:
        try:
            value = object.__getattribute__(streams, name)
        except AttributeError:
            continue
        if value is not None:
            made.add(name.lstrip("_"))
    return made


def test_trimming_at_the_end_of_visits_changes_no_output(monkeypatch):
    # short visits, so that most end and users come back to streams trimmed
    scenario = sim.load_scenario(SCENARIOS / "multi_tab.toml", {
        "population.users": 4, "run.duration": "20m", "run.warmup": "0s", "run.replications": 1,
        "population.session_length": "5m", "population.away": "2m"})
    names = scenario.names[:1]
    trimmed = sim.run(scenario, processes=1, strategies=names)
    # and the engine never made a stream of losses in a run that loses nothing
    run = FastSimulation(scenario, scenario.variant(scenario.names[0]), 0, scenario.run.seed, False)
    run.run()
    tabs = [t for u in run._users for t in u.streams._tabs]
    assert tabs and not any("loss" in _made(t) for t in tabs)
    monkeypatch.setattr(TabStreams, "trim", lambda self: None)
    kept = sim.run(scenario, processes=1, strategies=names)
    assert trimmed.summary["refresh_calls"].sum() > 0
    for table in ("summary", "timeseries", "latency"):
        pd.testing.assert_frame_equal(getattr(trimmed, table), getattr(kept, table), check_exact=True)


def test_a_ledger_counts_a_basis_seen_before_as_a_duplicate_however_it_keeps_the_bases():
    # a session's bases are kept as one number, then a tuple of a few, then a set
    from sim.strategies.ledger import Ledger

    ledger = Ledger()
    session, other = ledger.new_session(0, 0.0), ledger.new_session(1, 0.0)
    bases = [5, 5, 6, 5, 7, 8, 9, 10, 11, 12, 13, 14, 6, 15, 16, 14, 16]
    for basis in bases:
        ledger.mint("access", session, 1.0, 2.0, cause="refresh", basis=basis)
    duplicates = sum(basis in bases[:i] for i, basis in enumerate(bases))
    assert duplicates == 5 and ledger.counters["duplicate_tokens"] == duplicates
    ledger.mint("access", other, 1.0, 2.0, cause="refresh", basis=5)  # another session's basis 5
    assert ledger.counters["duplicate_tokens"] == duplicates
