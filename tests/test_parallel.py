"""Where simulations run: worker processes and a Dask cluster give the same answers as one
process; a worker that dies fails the run at once and leaves nothing running."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import sim
from sim.engine import dispatch
from sim.engine.dispatch import InProcess, Job, Processes, WorkerLost, longest_first, runner_for
from tests.conftest import ROOT, SCENARIOS

psutil = pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def small():
    return sim.load_scenario(SCENARIOS / "smoke.toml").replace(population={"users": 12}, run={"duration_s": 300.0})


def assert_same(a, b):
    pd.testing.assert_frame_equal(a.summary, b.summary)
    pd.testing.assert_frame_equal(a.timeseries, b.timeseries)
    pd.testing.assert_frame_equal(a.latency, b.latency)


def test_worker_processes_give_the_answer_of_one_process(small):
    assert_same(sim.run(small, processes=2), sim.run(small, processes=1))


@pytest.mark.parametrize("processes", [1, 2])
def test_progress_counts_the_share_of_each_simulation_under_way(small, processes):
    heard = []
    result = sim.run(small, processes=processes, progress=lambda done, total: heard.append((done, total)))
    jobs = len(small.names) * small.run.replications
    done = [d for d, total in heard]
    assert {total for _, total in heard} == {jobs}
    assert done[0] == 0 and done[-1] == jobs and done == sorted(done)
    # a hundredth of a simulation at a time, not only whole ones as they finish
    assert len(heard) > 50 * jobs and any(0 < d % 1 < 1 for d in done)
    # following it changes nothing: its looks are events of their own that touch no state
    assert_same(result, sim.run(small, processes=processes))


def test_small_runs_stay_in_process_and_big_ones_use_every_core(small):
    jobs = [Job(small, name, 0, 1) for name in small.names]
    with runner_for(jobs) as runner:
        assert isinstance(runner, InProcess)
    big = small.replace(population={"users": 100_000})
    with runner_for([Job(big, name, 0, 1) for name in big.names], processes=2) as runner:
        assert isinstance(runner, Processes) and runner.slots == 2


def test_the_longest_simulations_start_first(small):
    jobs = [Job(small, name, r, 1) for r in range(2) for name in small.names]
    rank = {name: i for i, name in enumerate(small.names)}  # the last variant the dearest
    order = longest_first(jobs, 2, cost=lambda job: rank[job.strategy])
    assert [(j.strategy, j.replication) for j in order] == [(n, r) for n in reversed(small.names) for r in range(2)]
    # a worker per job, or one worker: nothing to gain, nothing moved
    assert longest_first(jobs, len(jobs), cost=lambda job: rank[job.strategy]) == jobs
    assert longest_first(jobs, 1, cost=lambda job: rank[job.strategy]) == jobs
    # small simulations are put in order by their size alone, untimed: all alike here
    assert longest_first(jobs, 2) == jobs


def test_a_sweep_points_jobs_stay_together_the_biggest_point_first(small):
    bigger = small.replace(population={"users": 2 * small.population.users})
    jobs = [Job(scenario, name, 0, 1, tag=i) for i, scenario in enumerate([small, bigger]) for name in small.names]
    order = longest_first(jobs, 2, group=lambda job: job.tag)
    assert [(j.tag, j.strategy) for j in order] == [(1, name) for name in small.names] + [(0, name) for name in small.names]


def test_the_order_is_measured_once_per_variant_and_changes_no_answer(small, monkeypatch):
    timed = []
    measure = dispatch.pilot_seconds
    monkeypatch.setattr(dispatch, "pilot_seconds", lambda job: timed.append(job.strategy) or measure(job))
    # a population not many times the sample's (a week of 200 users): not timed, the sample
    # would cost as much as the simulation
    week = small.replace(run={"duration_s": 7 * 86400.0})
    longest_first([Job(week, name, 0, 1) for name in small.names], 2)
    assert not timed
    monkeypatch.setattr(dispatch, "PILOT_RATIO", 0)
    result = sim.run(small, processes=2)
    assert sorted(timed) == sorted(small.names)  # a sample per variant, not per replication
    assert all(measure(Job(small, name, 0, 1)) > 0 for name in small.names)
    monkeypatch.setattr(dispatch, "PILOT_RATIO", math.inf)
    assert_same(result, sim.run(small, processes=2))


@pytest.mark.slow  # starts a LocalCluster's scheduler and worker process
def test_dask_local_cluster_gives_the_answer_of_one_process(small, cli, tmp_path):
    distributed = pytest.importorskip("distributed")
    local = sim.run(small, processes=1).save(tmp_path / "local")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        assert_same(sim.run(small, cluster=cluster.scheduler_address), sim.load_run(local))
        # and from the command line
        scenario = tmp_path / "small.toml"
        scenario.write_text(small.to_toml())
        code, _, err = cli("run", scenario, "--cluster", cluster.scheduler_address, "--out", tmp_path / "dask")
        assert code == 0, err
    assert (tmp_path / "dask" / "summary.csv").read_text() == (local / "summary.csv").read_text()


@pytest.mark.slow  # the connection attempt times out after 10 s
def test_unreachable_cluster_is_a_clear_error(small):
    pytest.importorskip("distributed")
    with pytest.raises(WorkerLost, match="cannot reach the Dask scheduler"):
        sim.run(small, cluster="tcp://127.0.0.1:9")


def start_long_run(tmp_path):
    """A ``refreshlab run`` on two worker processes, in a session of its own, once both workers
    have started: (process, psutil handle of every process under it, its worker processes)."""
    scenario = tmp_path / "long.toml"
    # long enough that no job can finish before the test acts
    scenario.write_text(sim.load_scenario(SCENARIOS / "baseline.toml").replace(
        population={"users": 20_000}, run={"replications": 2}).to_toml())
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "run", str(scenario), "--processes", "2",
                             "--out", str(tmp_path / "run")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parent = psutil.Process(proc.pid)
    workers: list = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())]
        if len(workers) < 2:
            psutil.wait_procs([parent], timeout=0.1)  # the run's own exit, or a tenth of a second
    if len(workers) < 2:
        proc.kill()
        pytest.fail(f"workers did not start: {proc.communicate()}")
    return proc, parent.children(recursive=True), workers


def assert_nothing_left(tmp_path, everything):
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    _, alive = psutil.wait_procs(everything, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_promptly_and_leaves_nothing_running(tmp_path):
    proc, everything, workers = start_long_run(tmp_path)
    try:
        killed_at = time.monotonic()
        workers[0].kill()
        _, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "worker process died" in err and "Traceback" not in err, err
    assert elapsed < 30
    assert_nothing_left(tmp_path, everything)


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_too(tmp_path):
    proc, everything, _ = start_long_run(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert_nothing_left(tmp_path, everything)


def test_a_cluster_without_workers_fails_the_run_instead_of_waiting_forever(small):
    distributed = pytest.importorskip("distributed")
    from sim.engine.dispatch import Dask

    with distributed.LocalCluster(n_workers=0, dashboard_address=None) as cluster:
        with Dask(cluster.scheduler_address, no_worker_timeout_s=1) as runner:
            runner.submit(Job(small, small.names[0], 0, 1))
            with pytest.raises(WorkerLost, match="no worker has been connected"):
                runner.next_done()


def test_a_ctrl_c_while_workers_are_started_is_held_not_lost():
    # a Ctrl-C that lands while a worker is being started must interrupt this process as soon
    # as the start is done (ignoring it instead once made a run go on to its end)
    from sim.engine.dispatch import _interrupts_held_while_spawning

    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_held_while_spawning():
            os.kill(os.getpid(), signal.SIGINT)
            reached_end_of_block = True
    assert reached_end_of_block
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
