"""A huge run split by auth-tier instances: users spread at random over ``auth.instances``
independent instances, each simulated as its own job, the tables merged. Exact: parallelism
never changes an answer, and the split changes nothing that the instances do not share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import sim
from sim.engine import instance_users, jobs_of
from sim.metrics import SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from tests.conftest import SCENARIOS


@pytest.fixture(scope="module")
def smoke():
    scenario = sim.load_scenario(SCENARIOS / "smoke.toml")
    return scenario.replace(
        population={"users": 30}, run={"duration_s": 600.0, "warmup_s": 0.0, "replications": 2},
        auth={"workers": 1, "login_time": {"dist": "exponential", "mean": "2s"}},
        strategies=scenario.strategies[:2])


def assert_identical(a, b):
    pd.testing.assert_frame_equal(a.summary, b.summary, check_exact=True)
    pd.testing.assert_frame_equal(a.timeseries, b.timeseries, check_exact=True)
    pd.testing.assert_frame_equal(a.latency, b.latency, check_exact=True)


def test_users_go_to_one_instance_each_by_a_seeded_draw(smoke):
    split = smoke.replace(auth={"instances": 3})
    parts = [instance_users(split, 7, 0, i) for i in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(30))
    assert all(len(p) for p in parts)
    assert [p.tolist() for p in parts] == [instance_users(split, 7, 0, i).tolist() for i in range(3)]
    assert [p.tolist() for p in parts] != [instance_users(split, 7, 1, i).tolist() for i in range(3)]
    # one job per instance, variant and replication
    assert len(jobs_of(split, split.names)) == 3 * 2 * 2


def test_instance_jobs_finishing_in_any_order_give_the_same_tables(smoke):
    # what parallel runners change is only the order in which jobs finish
    from sim.engine import assemble
    from sim.engine.dispatch import execute

    split = smoke.replace(auth={"instances": 3}, run={"replications": 1, "duration_s": 300.0})
    jobs = jobs_of(split, split.names)
    rng = np.random.default_rng(1)
    outputs = {job.key: execute(job) for job in rng.permutation(np.array(jobs, dtype=object))}
    assert_identical(assemble(split, split.names, outputs), sim.run(split, processes=1))


@pytest.mark.slow  # starts worker processes
def test_instance_jobs_in_parallel_give_the_tables_of_one_process(smoke):
    split = smoke.replace(auth={"instances": 3})
    one = sim.run(split, processes=1)
    assert_identical(sim.run(split, processes=2), one)
    assert (one.replications["users"] == 30).all()


@pytest.mark.slow
def test_a_split_without_queueing_changes_no_count(smoke):
    # with workers to spare nothing couples users; every user draws from streams of its own, so
    # spreading them over instances changes no count, latency or series; only sums of busy time
    # are added in another order
    roomy = smoke.replace(auth={"workers": 64})
    whole, split = sim.run(roomy, processes=1), sim.run(roomy.replace(auth={"instances": 4}), processes=1)
    # (a metric that is NaN in every replication, like race_to_logout_s_mean without races, is left out)
    counts = [c for c in SUMMARY_COLUMNS if c != "auth_utilization" and c in whole.replications]
    pd.testing.assert_frame_equal(whole.replications[counts], split.replications[counts], check_exact=True)
    series = [c for c in TIMESERIES_COLUMNS if c != "auth_busy_workers"]
    pd.testing.assert_frame_equal(whole.timeseries[series], split.timeseries[series], check_exact=True)
    pd.testing.assert_frame_equal(whole.latency, split.latency, check_exact=True)
    # utilization is per worker: the split tier has four times the workers for the same work
    assert np.allclose(whole.replications["auth_utilization"], 4 * split.replications["auth_utilization"],
                       rtol=1e-12)
    assert whole.replications["auth_queue_wait_ms_p99"].eq(0).all()


@pytest.mark.slow
def test_instances_are_queues_of_their_own(smoke):
    # one slow worker for everybody queues far more than one worker per instance
    whole = sim.run(smoke, processes=1).aggregate
    split = sim.run(smoke.replace(auth={"instances": 3}), processes=1).aggregate
    for name in smoke.names:
        assert split.loc[name, "auth_queue_wait_ms_p99"] < whole.loc[name, "auth_queue_wait_ms_p99"]


def test_events_of_a_split_run_keep_sessions_and_tokens_apart(smoke):
    split = smoke.replace(auth={"instances": 2}, run={"replications": 1})
    result = sim.run(split, events=True, processes=1)
    ev, lo, hi = result.events, split.run.warmup_s, split.run.end_s
    for name in split.names:
        mine = ev[ev["strategy"] == name]
        assert mine["t_s"].is_monotonic_increasing
        # a session belongs to one user only, across instances too; a token is minted once
        requests = mine[mine["event"] == "request"]
        assert requests["session"].notna().any()
        assert (requests.dropna(subset=["session"]).groupby("session")["user"].nunique() == 1).all()
        assert mine.loc[mine["event"] == "mint", "token"].is_unique
        # the users of both instances are there, and the records add up to the summary
        assert requests["user"].nunique() == split.population.users
        row = result.replications.set_index("strategy").loc[name]
        assert requests["t_s"].between(lo, hi, inclusive="left").sum() == row["requests"]


@pytest.mark.slow  # four sweep points and two capacity searches through the command line
def test_sweep_and_capacity_take_the_engine_option_and_split_by_instances(cli, tmp_path, smoke):
    path = tmp_path / "small.toml"
    path.write_text(smoke.replace(population={"users": 8}, run={"duration_s": 300.0, "replications": 1}).to_toml())
    tables = {}
    for engine in ("exact", "fast"):
        out = tmp_path / f"sweep-{engine}"
        code, _, err = cli("sweep", path, "--set", "auth.instances=1,2", "--engine", engine, "--out", out, "--no-report")
        assert code == 0, err
        tables[engine] = pd.read_csv(out / "sweep.csv")
        assert '"engine": "%s"' % engine in (out / "instances=2" / "run.json").read_text()
    pd.testing.assert_frame_equal(tables["exact"], tables["fast"], check_exact=True)
    capacity = {}
    for engine in ("exact", "fast"):
        out = tmp_path / f"capacity-{engine}"
        code, _, err = cli("capacity", path, "--slo", "auth_queue_wait_ms_p99 < 100", "--users", "8",
                           "--strategy", "dual_token", "--engine", engine, "--out", out)
        assert code == 0, err
        capacity[engine] = pd.read_csv(out / "capacity.csv")
    pd.testing.assert_frame_equal(capacity["exact"], capacity["fast"], check_exact=True)
