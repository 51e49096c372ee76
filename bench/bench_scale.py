"""Capacity-planning scale: ``refreshlab compare`` of the bundled baseline scaled to many users,
timed and its memory watched, and what a bigger run would take, extrapolated from it.

The scenario is ``scenarios/baseline.toml`` with ``--users`` users, one replication and
``--workers`` auth workers (the baseline has 4 for 1,000 users; a population 100 times as big
needs more, or its auth tier only measures its own overload), every other field as bundled.
The command is the real one (``refreshlab compare SCENARIO --out DIR``, in a child process, with
the default engine and the default worker processes); its wall time is measured, and its memory
is the sum of the resident sets of the command and its worker processes, sampled every 0.2 s
(psutil), the peak printed.

Printed: wall seconds, peak memory of the process tree, CPU seconds of the tree, simulated
user-hours per CPU second, the goal met or not where there is one (the four variants of 100,000
users in at most 60 s and 2 GB, of 1,000,000 users in a minute), and the extrapolation:
``--project-users`` users x the scenario's hours x its four variants (when more than ``--users``).
The same command is also run on the bundled 1,000 users (``--small-users``) so that what does not
grow with users (start-up, imports, the report) is taken out: CPU and memory per user are the
differences between the two runs over the difference in users (the projection assumes time per
user flat in the population: about so up to 100,000 users since the engine stopped the cyclic
garbage collector, but at 1,000,000 users it was measured 30% higher, see the end), the CPU spread
over this machine's cores, the memory per worker process. The machine is shared: the load average
before and after is printed with the numbers.

``--strategy NAME`` keeps one variant of the four (the projection is then of that variant alone);
``--processes N`` is passed to the command (1: everything in one process, whose memory is then
the simulation's own).

    python bench/bench_scale.py [--users 100000] [--workers 40] [--project-users 1000000]
                                [--strategy dual_token] [--processes 1]

Measured with ``--users 20000 --workers 8`` on the shared 2-core machine (load average 5-11):
before the fast engine's timers slept through ticks that cannot act (and the rest listed in
``bench_engine.py``), 2.22 ms of CPU per user and variant beyond the fixed costs; after, 1.79 ms
(1M users x 1 h x 4 variants: about 2.5 h -> 2.0 h of CPU, 60 min on two idle cores). Peak
memory of the process tree 1.04 GB in both. Memory, in one command at load 3.5-8.6, before and
after the simulated ledger forgot unreachable tokens (and the engine's per-user objects took
slots): peak 1,037 -> 954 MB, 15.0 -> 12.8 KB per user per worker process (1M users: about
14.3 -> 12.2 GB per worker process). Before and after cheaper random-number refills (see
``bench_engine.py``), one after the other at load 7-8: 2.10 -> 1.95 ms of CPU per user and
variant (1M x 1.08 h x 4 variants: 8,394 -> 7,783 CPU s, about 70 -> 65 min on two idle cores).
Before and after the cheaper whole-number draws and page views counted in one step (see
``bench_engine.py``), the two commands at once, load 2.6-6.4: 2.47 -> 2.26 ms of CPU per user and
variant (1M x 1.08 h x 4 variants: 9,883 -> 9,049 CPU s, about 82 -> 75 min on two idle cores);
peak memory of the tree 896 and 894 MB.

Memory per user, after a tab's streams let go of draws already taken at the end of its visit,
rarely used streams are made on first use, the busiest tab streams draw in batches half as big
and the race bookkeeping keeps (session, token) pairs instead of a set per session (outputs
byte-identical): traced with tracemalloc in one process (4,000 users, ``dual_token``), the peak
went from about 12.0 to 10.0 KB per user; the draw buffers and states from 4.3 to 2.6 KB. The 100,000-user
compare itself (``refreshlab compare`` of this scaled scenario, 40 workers, default 2 processes,
under ``/usr/bin/time -v``, before the pairs change), load average 5.6-7.0, with another 20,000-user
run sharing the cores: wall 32 min 49 s (the command got 51% of one core on average), 1,021 CPU
s (2.55 ms per user and variant), largest process 1.36 GB, process tree at most 2.68 GB. Neither
goal (60 s, 2 GB) is met: the tree holds two worker processes of about 1.25 GB (the population's
objects, about 11 KB per user resident) plus about 0.3 GB of interpreters. 1M users x 1 h x 4
variants, projected from it: about 10,000 CPU s (85 min on two idle cores) and about 11.5 GB
per worker process, which two at once would not fit in this machine's 24 GB.

Before and after a refresh call of the fast engine carried by callbacks instead of generator
layers (see ``bench_engine.py``), ``--users 20000 --workers 8``, one after the other (load 4.9
before, 4.4 -> 10.6 during the second): 2.14 -> 2.13 ms of CPU per user and variant (183 -> 181
CPU s in all; 1M x 1.08 h x 4 variants: 8,554 -> 8,523 CPU s, about 71 min on two idle cores);
peak memory of the tree 893 and 888 MB: the 12% less CPU measured on the reactive-refresh
workload of ``bench_engine.py`` does not show over these four variants at this host's noise.

The ledger's forget pass (``Simulation.FORGET_GROWTH``, a pass when the tokens kept have grown
by a quarter) takes 7.5% of a 100,000-user run of the baseline's dual_token (py-spy), spread
over a dozen walks of the tokens, sessions and per-session records. Passes half as often
(growth 2.0), the two runs at once, one process each (``simulate_one``, 40 workers): CPU 187.9
-> 184.4 s (-1.9%, within this host's noise), peak RSS 930 -> 974 MB, the same output. Not
kept: 44 MB a worker process (two in the compare) out of the 100,000-user compare's 250 MB of
headroom under its 2 GB goal, for 2%. Counted later without the host's noise (valgrind, the
2,000-user baseline-like workload of ``bench_engine.py``, fast engine, whole process): growth 1.5
-2.8% instructions, 2.0 -4.8%, and a pass that walks the tokens once (no list of the held ones,
no stack entry for a token that reaches nothing) -1%. Kept: growth 1.5 and the one walk (see
below).

Before and after page views in bulk that stop at one that is not plain let the flow do it (see
``bench_engine.py``), this command (``--users 100000 --workers 40``) on each code in turn, alone
on the host (load 0.1-1.5): wall 385 -> 353 s, CPU 692 -> 627 s (1.71 -> 1.54 ms per user and
variant), peak of the process tree 1,796 and 1,799 MB; 1M users x 1.08 h x 4 variants
projected at 6,860 -> 6,178 CPU s, about 57 -> 51 min on two idle cores. One run each, so the
host's noise is in the 10%: on the 2,000-user baseline-like workload the change counts 3.5%
fewer instructions.

Memory, after a simulation worker stopped importing pandas and scipy (each job hands its counts
back and the parent makes the tables, after the simulations; a built-in command loads no plugin
command), a stream's packed state moved to the head of its draw buffer, buffers made at their
exact size and their batches halved again (busy streams 8 draws, round trips 16), streams sharing
what every stream of their kind has, a session's bases and a visit's presented tokens kept without
a set each, and the ledger forgetting when its tokens have grown by a quarter (outputs
byte-identical): ``--users 20000 --workers 8``, before and after one after the other, load average
4.3-7.2: peak of the process tree 888 -> 503 MB; CPU 2.40 -> 2.72 ms per user and variant (the
smaller batches refill more often; the two runs met different loads). A worker process holds
49 MB (131 MB before) before its first user and about 8-8.5 KB per user (resident), the parent
about 55 MB while the simulations run. The 100,000-user compare (this command with
``--users 100000 --workers 40``, under ``/usr/bin/time -v``, load average 2.5-7 with other runs
sharing the cores): peak of the process tree 1,768 MB (goal 2048 MB: met; 2.68 GB before),
largest process 909 MB, two workers of about 0.85-0.9 GB; wall 1,563 s (the command got about
three quarters of one core), 1,153 CPU s (2.85 ms per user and variant; 2.55 before: the price of
the smaller batches, mostly). 1M users would need about 8.6 GB per worker process.

After a stream's batches grow with use up to a cap set from a memory budget (13 draws at 100,000
users, none past about 175,000), a renewal's cheaper bookkeeping and a tab's one Pause effect (see
``bench_engine.py``; outputs byte-identical): ``--users 100000 --workers 40``, alone on the host,
load average 1.3-1.7: wall 513 s (goal 60 s: not met), peak of the process tree 1,786 MB (goal
2048 MB: met), 919 CPU s (2.27 ms per user and variant, against 2.85 above at a higher load);
1M users x 1.08 h x 4 variants projected at 9,099 CPU s (about 76 min on two idle cores) and
about 7.8 GB per worker process. At this size the heap's pop was a fifth of a worker's time (a
sampled profile of one worker for 20 s), against a twentieth at 2,000 users: the heap holds
several hundred thousand events whose tuples lie all over memory.

After the event queue became a calendar queue (a small heap per bucket of instants, see
``sim.engine.model.CalendarQueue``, now the compiled queue's fallback; outputs byte-identical):
``--users 100000 --workers 40``, alone on the host, load average 0.7-1.5: wall 453 s (goal 60 s:
not met), peak of the process tree 1,796 MB (goal 2048 MB: met), 782 CPU s (1.93 ms per user and
variant, against 2.27 above); 1M users x 1.08 h x 4 variants projected at 7,711 CPU s (about 64 min
on two idle cores) and about 7.8 GB per worker process.

Before and after the fast engine's compiled kernel (plain page views over the streams' buffers,
batches of draws by numpy's C distributions; see ``bench_engine.py``; outputs byte-identical),
this command on each code in turn, alone on the host (load 0.9-1.7): wall 330 -> 242 s (goal
60 s: not met), CPU 597 -> 421 s (1.48 -> 1.03 ms per user and variant), peak of the process
tree 1,804 and 1,797 MB (goal 2048 MB: met); 1M users x 1.08 h x 4 variants projected at 5,926
-> 4,117 CPU s, about 49 -> 34 min on two idle cores, about 7.8 GB per worker process. In a
100,000-user run of the baseline's dual_token (py-spy, after), page views in bulk take 16% (the
kernel included), refills 7% (at 13 draws a batch a stream is refilled every few views), the
forget pass 10%; the renewal path and the event loop most of the rest.

After the event queue was compiled too (see ``bench_engine.py``; outputs byte-identical), alone
on the host (load 1.0-1.4): wall 223 s, CPU 377 s (0.92 ms per user and variant), peak of the
process tree 1,748 MB (a pending event is a 32-byte struct, not a tuple and a float); 1M users x
1.08 h x 4 variants projected at 3,680 CPU s, about 31 min on two idle cores, about 7.6 GB per
worker process.

Before and after the value types made per renewal stopped being frozen dataclasses, the forget
pass walked its tokens once and ran at half again the tokens kept, and the timers' ticks were
looked over without asking each one (``timer_quiet_until_s``; see ``bench_engine.py``; outputs
byte-identical), this command on each code, two runs each, alone on the host (load 0.4-1.6):
wall 188 and 204 -> 166 and 155 s (goal 60 s: not met), CPU 316 and 347 -> 292 and 270 s (0.77
and 0.85 -> 0.71 and 0.66 ms per user and variant), peak of the process tree 1,758-1,771 MB
before and 1,763-1,767 MB after (goal 2048 MB: met); 1M users x 1.08 h x 4 variants projected
at 3,085-3,402 -> 2,633-2,860 CPU s, about 26-28 -> 22-24 min on two idle cores, 7.7 GB per
worker process. The same code with the forget pass at growth 2.0 instead of 1.5, once: wall
173 s, CPU 298 s, peak 1,821 MB: not kept. Four variants on two cores leave one core idle for
a while: at 20,000 users (``simulate_one``, this code) the variants take 11.9, 9.8, 8.5 and 13.2
CPU s in the scenario's order, so the last one started (silent_refresh, the costliest) ends
about 3.4 s after the other worker's last: the wall is about 15% over an even split.

After a sleeping timer's quiet ticks were walked by compiled code (see ``bench_engine.py``; outputs
byte-identical), this command on each code, three runs each, alone on the host (load 0.4-2.0): wall
153, 166 and 157 s -> 146, 159 and 154 s (goal 60 s: not met), CPU 266, 291 and 267 s -> 257, 280
and 265 s (0.65-0.71 -> 0.62-0.69 ms per user and variant), peak of the process tree 1,763-1,774 MB
before and 1,768-1,781 MB after (goal 2048 MB: met); 1M users x 1.08 h x 4 variants projected at
about 2,600 CPU s, 22 min on two idle cores, either way: the gain (the silent_refresh variant alone
at 100,000 users, 78 -> 75 s) is within this host's noise over the four variants. Starting the
costliest variants first (each variant's cost measured on a 500-user sample in the parent, the
least of two rounds, about 2 s) was tried and not kept: with the four variants now within 1.5x of
each other, at 20,000 users (``sim.run``, two processes, two runs each alternated) it took 26.9 and
27.3 s against 26.4 and 25.8 s in the scenario's order, the samples' time eating what the better
balance saved, and at 100,000 users 141 and 145 s against 143 s.

Where the wall time of one such compare went (the command in one process with each job's end
stamped, load 1.2-1.6): the four simulations took 78 s (dual_token), 64 s (single-flight), 65 s
(sliding) and 77 s (silent_refresh) on their workers; in the scenario's order the worker that ran
single-flight then sliding was idle for the last 26 s, when silent_refresh ended at 155 s; the
tables took 1 s after it and the report 3 s. An even split would have ended the simulations at
about 142 s. Then, with every run following its progress (a no-op event per hundredth of the
scenario's time, the workers' shares sent through a queue the parent reads while it waits), this
command once, load 0.9-1.5: wall 140 s, CPU 246 s (0.60 ms per user and variant), peak of the
process tree 1,767 MB; 1M users x 1.08 h x 4 variants projected at 2,402 CPU s, about 20 min on
two idle cores, 7.7 GB per worker process.

The million-user run itself, not projected: this command with ``--users 1000000 --workers 400``,
alone on the host (load 0.7-1.5), the same code: wall 1,761 s (29 min; goal one minute: not met),
CPU 3,136 s (0.78 ms per user and variant, against 0.60 at 100,000 users; likely memory: each event
reaches objects spread over 7.5 GB, not profiled), peak of the process tree 15,468 MB (two worker
processes of 7.0-7.9 GB each; the machine has 24 GB), the four variants about 10-17 min each on
their workers (from the workers' memory, sampled every 2 min). The projection from 100,000 users
(2,402 CPU s) was a quarter short. As at 100,000 users, one worker sat idle for the last 4-5 min.

Then the simulations started longest first (``sim.engine.dispatch.longest_first``: each variant
timed on a 500-user sample in the parent, about 0.9 s for the four; outputs byte-identical). On
this code the four variants differ more than when that was tried above: their samples cost 50, 44,
37 and 47 (dual_token, single-flight, sliding, silent_refresh), so in the scenario's order the
costliest two run one after the other on one worker. The 100,000-user compare (``refreshlab
compare`` of this scaled scenario, the two codes alternated, alone on the host, load 1.5-1.9): wall
140, 136 and 137 s in the scenario's order, 125, 128 and 127 s longest first (goal 60 s: not met).
Then each sample run twice and the least taken (one run each misranked the variants in 5 of 10
tries; about 2 s for the four). This script before and after that, load 0.6-1.8: wall 131 and 131
s, CPU 250 and 250 s (0.61 ms per user and variant), peak of the process tree 1,824 and 1,778 MB
(goal 2,048 MB: met). The million-user run on that code (``--users 1000000 --workers 400``, alone
on the host, load 0.2-1.9): wall 1,679 s (28 min, against 1,761 s in the scenario's order; goal
one minute: not met), CPU 3,248 s (0.81 ms per user and variant; 3,136 s before, the same work
within this host's noise; the wall is now 55 s over an even split of the CPU over the two
cores, against 193 s before), peak of the process tree 15,995 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def scaled_scenario(users: int, workers: int, folder: Path, strategy: str | None = None) -> Path:
    text = (ROOT / "scenarios/baseline.toml").read_text()
    data = tomllib.loads(text)
    assert data["population"]["users"] == 1000 and data["run"]["replications"] == 3 and data["auth"]["workers"] == 4
    text = (text.replace("\nusers = 1000\n", f"\nusers = {users}\n")
                .replace("\nreplications = 3\n", "\nreplications = 1\n")
                .replace("\nworkers = 4\n", f"\nworkers = {workers}\n"))
    if strategy is not None:
        head, *blocks = text.split("\n[[strategies]]\n")
        kept = [b for b in blocks if f'\nname = "{strategy}"\n' in "\n" + b]
        if len(kept) != 1:
            raise SystemExit(f"no strategy {strategy!r} in the baseline")
        text = head + "\n[[strategies]]\n" + kept[0]
    path = folder / f"baseline_{users}.toml"
    path.write_text(text)
    return path


#: the goals of a compare of the four variants, by population: (wall seconds, peak MB of the tree)
GOALS = {100_000: (60, 2048), 1_000_000: (60, None)}


def _verdict(value: float, goal: float | None, unit: str) -> str:
    return "" if goal is None else f" (goal {goal:,} {unit}: {'met' if value <= goal else 'NOT met'})"


def run_watched(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds, peak summed RSS (MB) of its process tree (and the peak while it
    has worker processes: the simulations, without the tables and report made after them), tree
    CPU seconds."""
    started = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, peak_simulating, cpu = 0, 0, {}
    while proc.poll() is None:
        rss = 0
        tree = [proc, *proc.children(recursive=True)]
        for p in tree:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        peak = max(peak, rss)
        if len(tree) > 2:  # the command, the resource tracker and worker processes
            peak_simulating = max(peak_simulating, rss)
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "peak_mb": peak / 2**20, "simulating_mb": (peak_simulating or peak) / 2**20,
            "cpu_s": sum(cpu.values()), "status": proc.returncode, "output": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=40)
    parser.add_argument("--project-users", type=int, default=1_000_000)
    parser.add_argument("--small-users", type=int, default=1000)
    parser.add_argument("--strategy", help="only this variant of the baseline (default: all four)")
    parser.add_argument("--processes", type=int, help="worker processes of the command (default: its own)")
    args = parser.parse_args()
    load = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        refreshlab = Path(sys.executable).with_name("refreshlab")
        for users, workers in ((args.small_users, max(4, args.workers * args.small_users // args.users)),
                               (args.users, args.workers)):
            scenario = scaled_scenario(users, workers, Path(tmp), args.strategy)
            options = ["--processes", str(args.processes)] if args.processes else []
            runs[users] = r = run_watched([str(refreshlab), "compare", str(scenario), "--out", str(Path(tmp) / f"run{users}"),
                                           *options])
            if r["status"] != 0:
                print(r["output"])
                raise SystemExit(f"refreshlab compare failed with status {r['status']}")
    small, r = runs[args.small_users], runs[args.users]
    variants, hours, cores = 1 if args.strategy else 4, 65 / 60, os.cpu_count() or 1
    user_hours = args.users * hours * variants
    grown = args.users - args.small_users
    per_user_cpu_s = (r["cpu_s"] - small["cpu_s"]) / (grown * variants)
    processes = min(args.processes or cores, variants)
    # from the peaks while the simulations ran: the small run's overall peak is its report's
    per_user_mb = (r["simulating_mb"] - small["simulating_mb"]) / grown / processes
    print(f"refreshlab compare, baseline scaled to {args.users:,} users, {args.workers} auth workers, "
          f"1 replication, {variants} variants ({hours:.2f} simulated h each, warm-up included)")
    print(f"  load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; after: "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    wall_goal_s, peak_goal_mb = GOALS.get(args.users, (None, None)) if variants == 4 else (None, None)
    print(f"  wall {r['wall_s']:.0f} s{_verdict(r['wall_s'], wall_goal_s, 's')}, "
          f"peak memory of the process tree {r['peak_mb']:,.0f} MB{_verdict(r['peak_mb'], peak_goal_mb, 'MB')} "
          f"({r['simulating_mb']:,.0f} MB while simulating, {small['simulating_mb']:,.0f} MB at {args.small_users:,} users)")
    print(f"  CPU {r['cpu_s']:.0f} s in all ({small['cpu_s']:.0f} s at {args.small_users:,} users): "
          f"{per_user_cpu_s * 1e3:.2f} ms per user and variant beyond the fixed costs, "
          f"{user_hours / r['cpu_s']:,.0f} simulated user-hours per CPU second in all")
    n = args.project_users
    if n <= args.users:  # measured, not projected
        return
    cpu_needed = per_user_cpu_s * n * variants
    print(f"  projected, {n:,} users x {hours:.2f} h x {variants} variants: {cpu_needed:,.0f} CPU s, "
          f"about {cpu_needed / processes / 60:,.0f} min on {processes} idle cores; memory about "
          f"{per_user_mb * n / 1024:,.1f} GB per worker process ({per_user_mb * 1024:.1f} KB per user)")


if __name__ == "__main__":
    main()
