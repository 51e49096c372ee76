"""Where simulations run: in this process, in worker processes on this machine, or on a Dask
cluster. Every job is one (scenario, variant, replication) simulation, a pure function of its
inputs, so where it runs never changes its answer.

A runner is used as a context manager: ``submit`` jobs, then ``next_done`` blocks until one of
them has finished and returns it with its output; a runner made with ``progress`` also hears, while
it waits, how far the jobs under way have come (in this process and in worker processes, not
from a Dask cluster). A worker process that dies fails the run at
once with :class:`WorkerLost` instead of leaving it waiting for an answer that will never come;
leaving the runner (normally, on an error or on Ctrl-C) stops every worker it started.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from sim.scenario import Scenario


class WorkerLost(RuntimeError):
    """A worker process died (killed, out of memory, crashed) while the run needed it: the run is
    incomplete and nothing is written."""


@dataclass(frozen=True, eq=False)
class Job:
    """One simulation: variant ``strategy`` of ``scenario``, replication ``replication``, from
    ``seed``. ``tag`` is the caller's, carried back untouched (which sweep point, which probe);
    ``engine`` names the engine (None: the default one); ``instance``: only the users of this
    auth-tier instance (when the scenario's tier has several, :func:`sim.engine.jobs_of`)."""

    scenario: Scenario
    strategy: str
    replication: int
    seed: int
    events: bool = False
    tag: Hashable = None
    engine: str | None = None
    instance: int | None = None
    id: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple:
        """Where its output goes among a run's outputs (see :func:`sim.engine.assemble`):
        ``(strategy, replication)``, with the instance last for one instance's job."""
        if self.instance is None:
            return self.strategy, self.replication
        return self.strategy, self.replication, self.instance


#: ``progress(job, share)``: the job under way has simulated ``share`` of its scenario time
Progress = Callable[[Job, float], None]


class JobsDone:
    """A command's ``progress(done, total)`` over ``total`` jobs: the jobs finished, plus the
    share of each one under way. Give :meth:`moved` to the runner, call :meth:`finished` with
    each job it returns."""

    def __init__(self, progress: Callable[[float, int], None], total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.under_way: dict[int, float] = {}
        progress(0, total)

    def moved(self, job: Job, share: float) -> None:
        self.under_way[job.id] = share
        self.progress(self.done + sum(self.under_way.values()), self.total)

    def finished(self, job: Job) -> None:
        self.under_way.pop(job.id, None)
        self.done += 1
        self.progress(self.done + sum(self.under_way.values()), self.total)


def execute(job: Job, progress: Callable[[float], None] | None = None):
    """Run one job (in whichever process it landed): the output of
    :func:`sim.engine.simulate_instance` (its counts, not yet tables: see
    :func:`sim.engine.assemble`), for every user or one instance's; ``progress(share)`` hears
    how far it has come."""
    from sim.engine import simulate_instance

    options = {"engine": job.engine} if job.engine is not None else {}
    return simulate_instance(job.scenario, job.strategy, job.replication, job.seed, job.events, job.instance,
                             progress=progress, **options)


#: in a worker process of a runner that follows progress: where its jobs say how far they have come
_PROGRESS_QUEUE = None


def _execute_in_worker(job: Job):
    queue = _PROGRESS_QUEUE
    return job.id, execute(job, None if queue is None else lambda share: queue.put((job.id, share)))


def _start_worker(progress_queue) -> None:
    global _PROGRESS_QUEUE
    # Ctrl-C at a terminal reaches the whole process group: the parent stops the workers, which
    # must not die on their own first (that would look like a lost worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _PROGRESS_QUEUE = progress_queue


@contextlib.contextmanager
def _interrupts_held_while_spawning():
    """Hold a Ctrl-C back while worker processes are started, and raise it once they are: SIGINT
    is blocked in this thread, a mask that a worker inherits across exec (so a Ctrl-C that comes
    while the worker is still importing, before its initializer ran, cannot kill it with a
    traceback), and a SIGINT that another thread receives meanwhile is only noted (so it cannot
    interrupt the executor half-way through starting a process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending one is noted here
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


class Runner:
    """The interface of every runner (see the module docstring)."""

    #: simulations that can run at the same time
    slots: int = 1
    #: where, for messages ("this process", "2 processes", "tcp://…")
    where: str = "this process"

    def __init__(self, progress: Progress | None = None) -> None:
        self._next_id = 0
        self._jobs: dict[int, Job] = {}
        self.progress = progress

    def submit(self, job: Job) -> Job:
        self._next_id += 1
        job = dataclasses.replace(job, id=self._next_id)
        self._jobs[job.id] = job
        self._start(job)
        return job

    def submit_all(self, jobs: list[Job], group: Callable[[Job], Hashable] | None = None) -> None:
        """Submit ``jobs`` in the order that ends them soonest on this runner's workers:
        :func:`longest_first`, with its ``group``."""
        for job in longest_first(jobs, self.slots, group=group):
            self.submit(job)

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def next_done(self) -> tuple[Job, Any]:
        """Block until a submitted job finishes; return it and its output. ``WorkerLost`` if a
        worker died; a job's own exception is raised here."""
        if not self._jobs:
            raise RuntimeError("no job is pending")
        job_id, output = self._wait_one()
        return self._jobs.pop(job_id), output

    def _start(self, job: Job) -> None:
        raise NotImplementedError

    def _wait_one(self) -> tuple[int, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop everything still running (idempotent)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcess(Runner):
    """Runs each job in this process when its result is asked for, in submission order."""

    def __init__(self, progress: Progress | None = None) -> None:
        super().__init__(progress)
        self._queue: deque[Job] = deque()

    def _start(self, job: Job) -> None:
        self._queue.append(job)

    def _wait_one(self) -> tuple[int, Any]:
        job = self._queue.popleft()
        return job.id, execute(job, None if self.progress is None else functools.partial(self.progress, job))


class Processes(Runner):
    """Worker processes on this machine (started with ``spawn``, so they import a script's
    ``__main__`` module again: keep a script's calls under ``if __name__ == "__main__":``)."""

    #: seconds between two looks at the workers' progress while waiting for a job to finish
    PROGRESS_EVERY_S = 0.5

    def __init__(self, processes: int, progress: Progress | None = None) -> None:
        super().__init__(progress)
        self.slots = processes
        self.where = f"{processes} worker processes"
        context = multiprocessing.get_context("spawn")
        # the workers' progress comes through a pipe of its own, read while waiting
        self._progress_queue = context.SimpleQueue() if progress is not None else None
        self._pool = cf.ProcessPoolExecutor(processes, mp_context=context, initializer=_start_worker,
                                            initargs=(self._progress_queue,))
        self._futures: dict[cf.Future, int] = {}

    def _start(self, job: Job) -> None:
        with _interrupts_held_while_spawning():
            self._futures[self._pool.submit(_execute_in_worker, job)] = job.id

    def _wait_one(self) -> tuple[int, Any]:
        queue = self._progress_queue
        while True:
            done, _ = cf.wait(list(self._futures), timeout=None if queue is None else self.PROGRESS_EVERY_S,
                              return_when=cf.FIRST_COMPLETED)
            while queue is not None and not queue.empty():
                job_id, share = queue.get()
                if job_id in self._jobs:
                    self.progress(self._jobs[job_id], share)
            if done:
                break
        future = next(iter(done))
        del self._futures[future]
        try:
            return future.result()
        except cf.process.BrokenProcessPool:
            raise WorkerLost(
                f"a simulation worker process died (killed or out of memory?) with "
                f"{len(self._futures) + 1} job(s) unfinished; the run is incomplete") from None

    def worker_pids(self) -> list[int]:
        """The process ids of the workers started so far (for monitoring, and tests)."""
        return [p.pid for p in list((getattr(self._pool, "_processes", None) or {}).values())]

    def close(self) -> None:
        # Python 3.11's executor has no terminate_workers(): on an interruption or an error the
        # jobs under way must stop now, not after they finish
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        manager = getattr(self._pool, "_executor_manager_thread", None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive():
                p.terminate()
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        # the executor's own thread closes its wake-up pipe as it ends; if the interpreter exits
        # first, 3.11's exit hook can write to that pipe while it closes and print a traceback
        if manager is not None:
            manager.join(timeout=30)
        self._futures.clear()
        if self._progress_queue is not None:
            self._progress_queue.close()


class Dask(Runner):
    """Jobs sent to a Dask distributed scheduler at ``address`` (``tcp://host:8786``), or to a
    ``distributed.Client`` given directly. The workers need refreshlab installed (same version).

    Dask re-runs a job whose worker died on another worker (a job is deterministic, so the
    answer is the same); the run fails with :class:`WorkerLost` when Dask gives a job up
    (``KilledWorker``), or when the scheduler has been unreachable or without a worker for
    ``no_worker_timeout_s``."""

    def __init__(self, address: Any, no_worker_timeout_s: float = 60.0) -> None:
        super().__init__()
        try:
            import distributed
        except ImportError:
            raise RuntimeError("--cluster needs Dask: pip install 'refreshlab[cluster]'") from None
        self._distributed = distributed
        if isinstance(address, distributed.Client):
            self._client, self._own_client = address, False
        else:
            try:
                self._client = distributed.Client(address, timeout="10s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise WorkerLost(f"cannot reach the Dask scheduler at {address}: {exc}") from None
            self._own_client = True
        self.where = f"Dask scheduler {self._client.scheduler.address}"
        self.slots = max(1, sum(w.get("nthreads", 1) for w in self._client.scheduler_info()["workers"].values()))
        self._no_worker_timeout_s = no_worker_timeout_s
        self._futures: dict[Any, int] = {}

    def _start(self, job: Job) -> None:
        future = self._client.submit(_execute_in_worker, job, pure=False, key=f"refreshlab-{os.getpid()}-{id(self)}-{job.id}")
        self._futures[future] = job.id

    def _wait_one(self) -> tuple[int, Any]:
        distributed = self._distributed
        trouble_since = None
        while True:
            try:
                with self._client.as_current():
                    done, _ = distributed.wait(list(self._futures), timeout=1.0, return_when="FIRST_COMPLETED")
            except (TimeoutError, OSError):
                done = set()
            if done:
                future = next(iter(done))
                del self._futures[future]
                try:
                    return future.result()
                except distributed.KilledWorker as exc:
                    raise WorkerLost(f"Dask gave a simulation up after its workers died: {exc}") from None
            status = self._client.status
            if status in ("closed", "failed"):
                raise WorkerLost(f"lost the connection to the {self.where} ({status}); the run is incomplete")
            trouble = status != "running" or not self._client.scheduler_info()["workers"]
            trouble_since = (trouble_since or time.monotonic()) if trouble else None
            if trouble_since is not None and time.monotonic() - trouble_since > self._no_worker_timeout_s:
                what = "lost the connection to" if status != "running" else "no worker has been connected to"
                raise WorkerLost(f"{what} the {self.where} for {self._no_worker_timeout_s:g} s; "
                                 f"the run is incomplete")

    def close(self) -> None:
        if self._futures:
            self._client.cancel(list(self._futures), force=True)
            self._futures.clear()
        if self._own_client:
            self._client.close()


#: below this many simulated user-seconds in all, worker processes cost more than they save
SMALL_RUN_USER_SECONDS = 5_000_000


def job_users(job: Job) -> float:
    """The users a job simulates: all of its scenario's, or one auth-tier instance's share."""
    share = job.scenario.auth.instances if job.instance is not None else 1
    return job.scenario.population.users / share


def job_size(job: Job) -> float:
    """Simulated user-seconds: what a job costs, roughly."""
    return job_users(job) * job.scenario.run.end_s


#: the users of the sample a big simulation's variant is timed on (enough to rank variants; the
#: time per user hardly depends on the population)
PILOT_USERS = 500
#: a simulation is timed on a sample only when it has this many times the sample's users: the
#: sample then costs a twentieth of it at most
PILOT_RATIO = 20


def longest_first(jobs: list[Job], slots: int, cost: Callable[[Job], float] | None = None,
                  group: Callable[[Job], Hashable] | None = None) -> list[Job]:
    """``jobs`` in the order to start them on ``slots`` workers: the longest first, so that a
    run does not end on one worker working through long simulations while the others stand idle
    (the bundled baseline's four variants at 100,000 users on two workers, in the scenario's
    order: the two dearest ran one after the other on one worker). The order never changes a
    result: outputs are assembled by key. Nothing moves with a worker per job, or one worker.

    ``cost(job)``: how long a job takes, in any unit. By default its size (:func:`job_size`),
    and for a big one (:data:`PILOT_RATIO` times :data:`PILOT_USERS` users or more) its size
    times what its variant was measured to cost, not guessed from its policies
    (:func:`pilot_seconds`: each variant simulated on a sample of its users, here).
    ``group(job)``: jobs that are used together (a sweep point, written once all of its jobs are
    done) stay together, the dearest group first, so that groups still finish one by one."""
    if slots < 2 or len(jobs) <= slots:
        return list(jobs)
    if cost is None:
        def variant(job: Job) -> tuple:  # what a sample measures: the replications share it
            return id(job.scenario), job.strategy, job.engine

        measured: dict[tuple, float] = {}
        for job in jobs:
            if variant(job) not in measured and job_users(job) >= PILOT_RATIO * PILOT_USERS:
                measured[variant(job)] = pilot_seconds(job)
        typical = sum(measured.values()) / len(measured) if measured else 1.0

        def cost(job: Job) -> float:
            return job_size(job) * measured.get(variant(job), typical)

    costs = [cost(job) for job in jobs]
    groups = [None if group is None else group(job) for job in jobs]
    totals: dict[Hashable, float] = {}
    for g, c in zip(groups, costs):
        totals[g] = totals.get(g, 0.0) + c
    return [jobs[i] for i in sorted(range(len(jobs)), key=lambda i: (-totals[groups[i]], -costs[i]))]


def pilot_seconds(job: Job) -> float:
    """CPU seconds per simulated user-second of ``job``'s variant, measured in this process on a
    sample of its population (:data:`PILOT_USERS` users) with the auth tier scaled with it, one
    replication, no records kept: the least of two runs, as a shared machine's noise only adds
    (on the baseline's four variants at 100,000 users, one run each ranked them wrongly in 5 of
    10 tries, the least of two in none of 5)."""
    scenario = job.scenario
    users = scenario.population.users
    sample = min(users, PILOT_USERS)
    workers = scenario.auth.workers * scenario.auth.instances * sample / users
    small = scenario.replace(population={"users": sample}, run={"replications": 1},
                             auth={"workers": max(1, round(workers)), "instances": 1})
    sample_job = Job(small, job.strategy, 0, job.seed, engine=job.engine)
    seconds = []
    for _ in range(2):
        start = time.process_time()
        execute(sample_job)
        seconds.append(time.process_time() - start)
    return min(seconds) / (sample * small.run.end_s)


def runner_for(jobs: list[Job] | None = None, *, processes: int | None = None, cluster: Any = None,
               progress: Progress | None = None) -> Runner:
    """The runner a command should use: a Dask one for ``cluster``; else ``processes`` worker
    processes (default: one per core when the jobs are big enough to repay starting them, never
    more than the jobs); 1 runs everything in this process. ``progress``: see the module's
    docstring (a Dask runner tells only of jobs done)."""
    if cluster is not None:
        return Dask(cluster)
    if processes is None:
        cores = os.cpu_count() or 1
        total = sum(job_size(j) for j in jobs) if jobs is not None else float("inf")
        processes = cores if total > SMALL_RUN_USER_SECONDS else 1
    if jobs is not None:
        processes = min(processes, max(len(jobs), 1))
    return Processes(processes, progress) if processes > 1 else InProcess(progress)
