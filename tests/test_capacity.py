"""Capacity answers: the search over workers finds the fewest that meet an objective, checked
against a closed form, without simulating a grid; the command writes its table and chart."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sim.capacity import Search, capacity, parse_slo, parse_users
from sim.metrics import SKETCH_RELATIVE_ERROR
from tests.conftest import SCENARIOS

LOGIN_S = 0.1


def login_wave(make_scenario, users=40):
    """``users`` users log in at the same instant on a tier whose only work is 100 ms logins;
    the window ends before any token expires, so the queue sees the logins and nothing else."""
    return make_scenario(
        run={"seed": 3, "duration": "2m", "warmup": "0s", "replications": 1},
        population={"users": users, "arrival": {"pattern": "all_at_once"}},
        auth={"login_time": "100ms", "refresh_time": "0s", "sign_time": "0s", "verify_time": "0s", "workers": 1},
    )


def wave_p99_ms(users: int, workers: int) -> float:
    """Closed form: with ``users`` simultaneous calls served in order by ``workers`` workers of
    constant service D, call i waits floor(i / workers) * D."""
    waits = [math.floor(i / workers) * LOGIN_S * 1000 for i in range(users)]
    return float(np.quantile(waits, 0.99))


def fewest(users: int, threshold_ms: float) -> int:
    return next(w for w in range(1, users + 1) if wave_p99_ms(users, w) < threshold_ms)


def test_the_search_finds_the_fewest_workers_of_the_closed_form(make_scenario):
    threshold = 350.0
    expected = {n: fewest(n, threshold) for n in (20, 40)}
    assert expected == {20: 5, 40: 10}
    for n, w in expected.items():  # the objective is not on a knife's edge
        assert wave_p99_ms(n, w) <= threshold - 40 and wave_p99_ms(n, w - 1) >= threshold + 40
    result = capacity(login_wave(make_scenario), f"auth_queue_wait_ms_p99 < {threshold:g}", [20, 40], processes=1)
    assert result.table.set_index("users")["workers_needed"].to_dict() == expected
    for n, w in expected.items():
        probes = result.probes[result.probes["users"] == n].set_index("workers")
        # the answer met the objective and one worker fewer was simulated and failed it
        assert probes.loc[w, "met"] and not probes.loc[w - 1, "met"]
        # percentiles without per-request records come from a sketch with a stated relative error
        assert probes.loc[w, "auth_queue_wait_ms_p99"] == pytest.approx(wave_p99_ms(n, w), rel=SKETCH_RELATIVE_ERROR)
        # a search, not a grid: doubling then bisection
        assert len(probes) <= 2 * math.ceil(math.log2(w)) + 1
    assert len(result.probes[result.probes["users"] == 40]) < expected[40]
    assert isinstance(result.figure(), Figure)


def test_search_by_doubling_or_halving_then_bisection():
    for needed in (1, 2, 3, 37, 64, 1000):
        search = Search("v", 100, max_workers=1024)
        while (w := search.next_workers()) is not None:
            search.record(w, float(w), math.nan, w >= needed)
        assert search.answer == needed
        assert len(search.probes) <= 2 * math.ceil(math.log2(needed + 1)) + 1
    for needed in (1, 2, 5, 37, 64):
        for start in (1, 3, 8, 40, 200):
            search = Search("v", 100, max_workers=1024, start=start)
            while (w := search.next_workers()) is not None:
                search.record(w, float(w), math.nan, w >= needed)
            assert search.answer == needed, (needed, start)
            assert needed == 1 or not search.probes[needed - 1][2]  # one fewer was simulated, and failed
    search = Search("v", 100, max_workers=16)
    while (w := search.next_workers()) is not None:
        search.record(w, 1.0, math.nan, False)
    assert search.answer is None and sorted(search.probes) == [1, 2, 4, 8, 16]


def test_with_replications_the_upper_confidence_bound_must_meet_the_objective():
    slo = parse_slo("auth_queue_wait_ms_p99 < 50")
    assert slo.met(40.0, math.nan) and slo.met(40.0, 9.0)
    assert not slo.met(40.0, 11.0) and not slo.met(math.nan, math.nan)
    assert parse_slo("auth_utilization<=0.7").met(0.7, 0.0)


@pytest.mark.parametrize("text, expected", [
    ("auth_queue_wait_ms_p99 > 50", "expected METRIC < NUMBER"),
    ("queue_wait < 50", "unknown metric 'queue_wait'"),
    ("refresh_rate_per_s < 5", "can grow with workers"),
])
def test_bad_objectives_say_what_is_expected(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_slo(text)


def test_user_counts_take_suffixes():
    assert parse_users("10k,100k,1M") == [10_000, 100_000, 1_000_000]
    assert parse_users("1.5k, 500") == [500, 1500]
    with pytest.raises(ValueError, match="10k,100k,1M"):
        parse_users("ten")


def test_capacity_command_prints_writes_and_draws(cli, tmp_path):
    out = tmp_path / "cap"
    code, stdout, err = cli("capacity", SCENARIOS / "smoke.toml", "--slo", "auth_queue_wait_ms_p99 < 100",
                            "--users", "10,20", "--replications", "1", "--strategy", "dual_token",
                            "--strategy", "silent_refresh", "--out", out)
    assert code == 0, err
    assert "fewest auth workers" in stdout and "dual_token" in stdout
    table = pd.read_csv(out / "capacity.csv")
    assert list(table["variant"]) == ["dual_token", "dual_token", "silent_refresh", "silent_refresh"]
    assert (table["status"] == "met").all() and (table["workers_needed"] >= 1).all()
    probes = pd.read_csv(out / "probes.csv")
    assert len(probes) >= len(table)
    assert (out / "charts" / "capacity.png").read_bytes().startswith(b"\x89PNG")
    assert "capacity:" in err or "workers:" in err  # progress on stderr

    code, _, err = cli("capacity", SCENARIOS / "smoke.toml", "--slo", "p99 wait < 5", "--users", "10", "--out", out)
    assert code == 2 and "--slo" in err and "Traceback" not in err
