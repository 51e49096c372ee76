"""Simulator speed and memory: a naive SimPy model, the exact engine and the fast engine on the
same workloads, in one invocation.

The naive model is what one would write by hand in SimPy for the same workload: one process per
user, one per parallel request, every half round trip an event, the token checked when the
request reaches the API, a refresh through a ``simpy.Resource`` auth tier on a 401 and a retry;
it draws from the same streams (:mod:`sim.engine.streams`). It keeps counters only (no records,
no ledger), so it is the floor for this detail. Two workloads: ``baseline`` (the bundled
baseline's users, bursts, idle gaps, round trips; no visits ending, so that the naive model stays
simple; reactive refresh without single-flight) and ``poisson`` (single requests every 20 s on
average, 50 ms round trips, 15-minute tokens, 4 auth workers).

Each run goes in a fresh process, so that its peak memory (max RSS) is its own; the libraries a
model uses (simpy; pandas for the engines' summary tables) are imported before its clock starts.
The models run in turn (naive, exact, fast, naive, ...) for ``--rounds`` rounds, so that a
noisy host slows all of them alike. Printed per workload: simulated user-hours per CPU second
of each (median over the rounds), the median of each round's ratio to the naive model and its
range, peak RSS, and the requests each simulated (same workload, same detail).

    python bench/bench_engine.py [--users 2000] [--hours 1] [--workloads baseline,poisson] [--rounds 3]

Measured on the shared 2-core machine, ``--users 2000``, as CPU-second ratios to the naive model
(load average 4-5; the exact engine's runs met more contention, so its ratios move by a fifth
from run to run):

    fast engine                                                    baseline        poisson
                                                                   exact   fast    exact   fast
    page views in bulk                                             0.73x   3.18x   0.78x   2.38x
    + timers sleep through ticks that cannot act, a retry whose    0.93x   3.18x   0.66x   2.52x
      answer is sure to be plain is one event, the collector does
      not walk a run's objects when it comes back
    + cheaper random-number refills (whole numbers drawn       0.90x   2.99x   0.56x   2.29x
      over raw draws, a stream's first state from a copied
      hasher), no full collection before a process's first run
      (same command just before on the code without them, load
      8-10: 0.92x 2.25x 0.68x 2.20x; fast-engine CPU 5.21 s ->
      3.29 s on baseline, 3.43 -> 2.90 s on poisson)
    + a batch's whole numbers computed in Python over its raw  0.73x   2.67x   0.67x   2.52x
      draws (numpy's calls on 32 numbers cost more), lognormal
      parameters computed once, no floor for draws that cannot
      be negative; page views in bulk find the slowest round
      trip once, and a view whose requests all end before
      2**16 s is counted into the bins in one step
      (same command just before on the code without them,
      load 2-4: 0.91x 2.91x 0.79x 2.38x; fast-engine CPU 4.47
      -> 3.76 s on baseline, 4.06 -> 3.70 s on poisson; the
      naive model's own CPU moved 10-13 s between the runs)
    + a refresh call carried by callbacks on a small per-call  0.79x   2.55x   0.77x   3.70x
      state (the same events, pushed in the same order), the
      flow resumed only at its answer (same command just
      before on the code without it, load 5.0-6.2: 1.07x
      2.92x 0.63x 1.98x; the fast engine alone, --engines
      fast, four runs of each alternated, load 5.0-5.1: CPU
      3.49-4.63 s, mean 3.95 -> 3.17-3.82 s, mean 3.48 on
      baseline, about 12% less; 2.51-3.78 -> 2.92-3.69 s on
      poisson, whose few renewals leave it unchanged; one
      run's ratios move by a fifth or more at this load, the
      alternated runs are the comparison)

The rows above were single runs of each model, one after the other, with imports inside the
clock. From here on, ``--users 2000 --rounds 3``: medians of three rounds in turn, each round's
ratio with its [min-max]; the row before is this command run on the code before the row (the
same script, the same load):

    exact engine, 3 rounds                                     baseline               poisson
                                                               exact        fast      exact        fast
    before (load 2.9-5.8)                                      1.00x        2.99x     0.73x        2.46x
                                                               [0.93-1.03]            [0.70-0.81]
    + constant distributions drawn as one shared fixed         1.20x        2.93x     0.88x        2.26x
      stream (a call of functools.partial: no batch to         [1.16-1.26]            [0.84-1.05]
      refill, no Python frame); streams made on first use
      as properties, not __getattr__, whose hook every
      attribute read of a class pays (the busy streams'
      too); Enum members read as module names (an Enum
      class's attributes go through the same hook in 3.11);
      flows offer page views in bulk only to an engine that
      takes them; a plain answer counted where it is read;
      a task woken with nothing to send resumed without a
      wrapper; a view of one request takes no list; one
      authorize layer; the API checks the token a request
      carries; a request's send and its plain answer decided
      by the policy's pure answer (sends_until_s, asked once
      a view) where it holds (load 1.8-3.0)
    before (load 0.1-1.1)                                      1.04x        2.63x     0.91x        2.47x
                                                               [0.99-1.06]            [0.69-1.06]
    + a stream's batches grow with use (the first as before,   1.33x        3.07x     1.03x        2.76x
      then four times what its buffer held, up to a cap that   [1.00-1.39]            [0.70-1.06]
      keeps a run's draws within 96 MB: 256 draws at 2,000
      users, 69 at 20,000, 13 at 100,000, no growth from
      about 175,000 users on); numpy's own call for batches
      of more than 24 whole numbers; what a stream's kind
      draws decided once (load 1.0-1.9). Refills per
      simulated user-hour 41.4 -> 14.2 on baseline, 22.9 ->
      3.8 on poisson; CPU (median) fast 3.56 -> 2.68 s and
      2.88 -> 1.72 s, exact 8.91 -> 8.21 s and 7.69 -> 4.63 s;
      the naive model draws from the same streams (9.37 ->
      9.89 s, within the noise; 5.40 -> 4.79 s). Peak RSS
      at 2,000 users +10 MB; one simulation of the baseline
      at 20,000 users 274 -> 296 MB

    fast engine, the renewal path, 3 rounds                    baseline
                                                               exact        fast
    before (load 0.9-1.7)                                      1.26x        2.79x
                                                               [0.76-1.61]  [2.68-3.30]
    + a renewal's bookkeeping: mints counted and named         1.38x        3.42x
      without a string made per mint, a mint's record         [1.24-1.40]  [2.99-3.59]
      counted straight when no rows are kept, a forget pass
      without a generator or a list per token kept, the
      effects made per renewal (Send, Renew, Refresh) not
      frozen, the refresh call's callbacks bound once, no
      policy call for a stale read with no write (load
      1.7-1.9)

    (both lines of this row measured on the code before the streams row above, which came in
    at the same time: each row's before is its own). Fast engine CPU (median) 3.44 -> 2.91 s
    on baseline. Counted instructions (valgrind, 200
    users, the whole process, run as is less run with 2-hour access tokens, which renew nothing,
    over its 1,639 refresh calls): 331,000 -> 303,000 per refresh call (-8%; at 200 users the
    ledger never holds enough tokens for a forget pass, whose cheaper walk the 2,000-user CPU
    figure includes).

    exact engine CPU (median): baseline 14.99 -> 11.43 s, poisson 15.96 -> 7.60 s; the naive
    model's own CPU 15.01 -> 14.39 s and 11.35 -> 6.72 s (the shared streams got cheaper for
    it too, and the load was lower). Counted instructions (valgrind, the simulation alone, 100
    users, not timed, so free of the host's noise): exact engine 1,543 -> 984 million on
    poisson, where the naive model takes 1,190 -> 1,007 million; 1,611 -> 1,272 million on the
    baseline-like workload, where the naive model takes 1,649 million.

    both rows together, and a tab's Pause effect made once      1.21x        3.28x     0.89x        3.31x
      and set anew after each page view (2.5% fewer            [0.98-1.31]  [3.07-4.02] [0.89-1.03] [2.64-3.55]
      instructions on poisson's exact engine), the command
      alone on this code (load 0.7-1.0); CPU (median) naive
      12.61 and 6.23 s, exact 10.89 and 6.94 s, fast 3.46
      and 1.87 s. Counted instructions (valgrind, the
      simulation alone: 400 users less 200, PYTHONHASHSEED=0)
      on poisson: exact 1,959 million, naive 2,067 million

    the event queue a calendar queue (a small heap per          1.27x        3.09x     1.18x        2.88x
      bucket of instants, the same order), the command         [1.26-1.38]  [2.86-3.30] [1.15-1.22] [2.54-3.09]
      alone on this code (load 0.3-0.9); CPU (median) naive
      12.03 and 7.43 s, exact 8.76 and 6.10 s, fast 3.64
      and 2.63 s. Whole runs of the fast engine at 20,000
      users (the baseline's dual_token, 8 workers), this
      code against the last row's, in turn: 0.87x the CPU
      (median of three pairs, 0.86-0.88; 34.5 against
      39.7 s)

    before (the command on the code before the row, just      1.20x        3.34x     0.87x        3.13x
      after the row's, load 1.0-1.2)                           [1.14-1.32]  [3.17-3.39] [0.76-0.93] [2.22-3.18]
    + page views in bulk that stop at one that is not plain   1.24x        2.93x     1.12x        3.10x
      let the flow do that one, instead of being asked again   [0.94-1.50]  [2.72-3.29] [0.90-1.24] [2.46-3.10]
      at its start (which found no plain view: calls to
      start bulk views 13,220 -> 8,596 on baseline, of which
      none 4,674 -> 50; 16,000 -> 10,000 on poisson, of
      which none 6,000 -> 0); load 0.5-1.1. CPU (median)
      naive 8.39 and 6.00 s, exact 6.84 and 5.35 s, fast
      3.08 and 2.06 s. The exact engine's code is the same
      in both lines: its ratio on poisson moved from 0.87x
      to 1.12x with the host alone (the naive model took
      4.85 s in one run and 6.00 s in the other). Counted
      instructions (valgrind, the whole process at 500
      users less a 1-user run, outputs the same): fast
      engine 2,040 -> 1,968 million on baseline (-3.5%),
      1,766 -> 1,675 million on poisson (-5.2%); the fast
      engine alone, eight runs of each alternated at 2,000
      users: CPU 0.985x on baseline, 0.90x on poisson. On
      poisson at 500 users the exact engine takes 4,595
      million instructions and the naive model 4,955
      million (0.93x): fewer, but not by so much that a
      noisy host cannot turn one run's CPU ratio under 1x

    before (the command on the code before the row, just      1.40x        3.56x     0.91x        2.52x
      before the row's, load 0.9-1.1)                          [1.35-1.42]  [3.03-3.73] [0.76-1.18] [1.72-2.69]
    + a compiled kernel (Cython, sim/engine/_kernel.pyx):     1.22x        4.32x     1.06x        5.04x
      the page views that are plain without asking carried     [1.18-1.39]  [3.94-4.42] [0.68-1.13] [3.08-5.90]
      out over the tab's streams' buffers, refilling them as
      it goes, and every stream's batch drawn by numpy's own
      C distributions on the stream's PCG64 state (no
      Generator call, no state put into a lender and taken
      out); load 0.7-1.1. CPU (median) naive 10.03 -> 8.42 s
      and 5.03 -> 4.17 s (it draws from the same streams:
      its refills got cheaper too, so the ratios understate
      the change), exact 7.18 -> 6.80 s and 5.31 -> 5.35 s,
      fast 3.05 -> 2.04 s and 2.08 -> 1.03 s. Counted
      instructions (valgrind, the whole process at 500 users
      less a 1-user run, outputs the same): fast engine
      1,971 -> 1,466 million on baseline (-26%), 1,653 -> 733
      million on poisson (-56%). The exact engine's ratio on
      poisson still swings across 1x from round to round
    + the event queue compiled (one binary heap of C         1.43x        4.77x     1.19x        4.63x
      structs: instant, order, callback, argument; no tuple    [1.38-1.64]  [3.53-4.96] [1.00-1.45] [4.29-4.92]
      or float object an event, no Python in the loop that
      takes them), the same order; load 1.0-1.3. CPU
      (median) naive 6.63 and 4.37 s, exact 4.69 and 3.18 s,
      fast 1.55 and 0.89 s. Counted instructions (as above,
      500 users): exact engine on poisson 4,514 -> 3,153
      million (-30%); fast engine 1,463 -> 1,387 million on
      baseline (-5%), 727 -> 662 million on poisson (-9%)

    before (the command on the code before the row, just      1.47x        4.14x     1.26x        4.61x
      after the row's, load 1.0-1.3)                           [1.44-1.50]  [4.04-4.42] [1.25-1.34] [4.60-4.84]
    + the value types and effects made per renewal (a held     1.61x        5.42x     1.16x        5.20x
      token, a grant, a pending refresh, a tab's view,         [1.56-1.71]  [5.18-5.50] [1.12-1.44] [4.99-5.33]
      a sleep, a call) not frozen: a frozen dataclass's
      __init__ sets each field through object.__setattr__,
      several times the cost; a sure retry's attempt
      counted into its bin; no signal made for a refresh
      call no one can join (no single-flight scope); an
      access token's mint keeps its session's valid tokens
      without a list made per mint; hot enum members read
      as module names; the ledger's forget pass walking its
      tokens once, and run when they have grown by half, not
      a quarter (see bench_scale.py); load 1.1-1.4. CPU
      (median) naive 5.94 and 3.32 s before, 6.62 and 3.32 s
      after; exact 4.03 -> 4.06 s and 2.59 -> 2.77 s (the same
      within the noise: its instructions moved 1.6%); fast
      1.42 -> 1.26 s and 0.70 -> 0.64 s. Counted instructions
      (valgrind, the whole process at 500 users, of which a
      1-user run is about 2,480 million, PYTHONHASHSEED=0,
      outputs the same): fast engine 3,901 -> 3,752 million
      on baseline (about -10% of the simulation's), 3,179 ->
      3,092 million on poisson (-10%); exact engine 5,644 ->
      5,578 million on poisson (-2%). The frozen dataclasses
      alone were 93 million of the 149

Before the calendar queue, at 2,000 users the poisson workload's exact engine spent more time
per instruction than the naive model: the heap's pop was a fifth of its time, and each request
reads a dozen small objects of its user (task, tab, visit, store, single-flight scope, view,
token, session, streams) where the naive model keeps its state in two generator frames and a
dict, so the goal (exact >= 1x on both workloads) held on the baseline-like one and not reliably
on poisson (rounds from 0.69x to 1.06x at the same load); with the calendar queue every round
of the row above is over 1x on both. Tried and measured, not kept (instructions, poisson,
exact, 200 users): the heap keyed by bare instants with a table of the callbacks due at each
(float comparisons instead of tuples': +1.7%), and a request's state held on its task instead
of a tuple per event (+0.7%).

The baseline-like workload has no timer, so what helps the bundled baseline's silent-refresh
variant (about a quarter less CPU) does not show here. Where its fast-engine time went before
the rows "+ a batch's whole numbers computed in Python" and "+ a refresh call carried by
callbacks" (py-spy, share of the simulation): page views in bulk 37% (random-number refills 13%),
the renewal path on a 401 about 35% (the 401's two events, the refresh call's three through the
auth tier with its mint, the retry's answer and the flow resuming), other resumes 13%, the event
loop 6%, logins 3%. A refresh call whose worker is free already took its worker at once (no
event to acquire or release one): booking the auth tier ahead saves events only for calls that
queue, which this workload hardly has; what the second removed is the call's three generator
layers at each of its events (cProfile: 5.22 -> 4.87 million Python calls per run). The goal
(fast >= 10x, aim 50x) is not met: at about 2 ms per user-hour and
some 60 events per user-hour, each event's Python work (tens of microseconds) is what remains;
it needs the renewal path compiled or advanced over arrays of users.

What the renewal path costs, and so what 10x needs: the baseline-like workload with 2-hour
access tokens (nothing renews) takes the fast engine 1.39 s of CPU against 2.55 s with 15-minute
ones (the best of three runs each in one process): its 16,397 refresh calls cost about 70 us
each (their 401s, the calls, the mints, the retries, the page views in bulk started again). The
naive model takes 8.4-9.2 s, so with renewals free the fast engine would be at about 6x; 10x
needs the plain page views (3.2 us a request) and the renewal path both about 2.5 times cheaper.
Neither is one function: the profile is flat (the largest share of a 100,000-user run, py-spy,
is the event loop's own 5.8%). Compiling the engine's modules as they are (the model, streams,
flows, ledger, metrics and recorder; Cython 3.3 in pure-Python mode, annotations not taken as C
types; the policies are pydantic models, which it cannot compile) gave the same CPU: 2.08-2.49 s
against 2.10-2.19 s, three runs of each alternated. Again later, on the code of the last rows
(2,000 users, fast engine, one process, runs alternated with the plain code, load under 1): the
model, streams, flows, ledger and recorder compiled by Cython as they are, 1.18-1.20 s against
1.16-1.17 s; by mypyc (2.4, which takes annotations as types: the engine's own classes become C
structs where a function's arguments are annotated with them), the model alone 1.22-1.31 s against
1.18 s, the six modules together 1.08 s against 1.18 s (about 9% less), and that only after changes
that mypyc's rules ask of the code (no ``__slots__``, no subclass of ``functools.partial``, values
checked against their annotations at run time; its output then differed, not looked into). The time
is in attribute reads and calls on objects that the compiled code still sees as Python objects
(tokens, views, effects, policies, streams): only a core whose state is typed throughout, with the
policies' rules in typed objects, would be compiled to C operations. What such a core would still
pay if the rules stayed in the pydantic policies: one refresh call's decisions and writes alone —
the 401's ``authorize``, ``on_response``, ``begin_refresh``, ``finish_refresh`` with its mint and
the recorder's hook, ``store_write``, ``jar_write``, the retry's ``plain_at`` and ``on_response``,
with their views and held tokens — called in a loop on this workload's dual_token policies cost 9.0
us a call, 12.7 us with its two records (100,000 calls, two runs each), against 58 us for the whole
path in the engine (29 minutes of this workload with 15-minute and with 2-hour tokens, the
difference over the 5,543 refresh calls, the least of three runs each): the other four fifths are
the engine's events and tasks, the flows' generators and effects, and the counting. numba (0.68,
tried outside the project): its ``Generator`` methods draw the same numbers as numpy's (lognormal,
exponential, uniform and whole numbers, 50 seeds x 20,000 draws each, and the same states after),
but a compiled function handed a ``Generator`` costs about 15 us a call (numpy's own call for 13
lognormals about 2.4 us), and the first compile 2.7 s a process: a compiled inner loop would carry
PCG64 and its transforms itself over the streams' packed states, and would pay off only over many
views or users a call.

The compiled kernel (the last two rows) does what the paragraph above asked of a compiled loop,
for the event queue, the plain page views and the draws: it calls numpy's own C distributions (``c_distributions``,
linked from numpy's ``npyrandom`` library) with numpy's PCG64 functions on a state of its own
copied from the stream's buffer, so the draws are numpy's by construction (a test checks every
kind against numpy's ``Generator`` calls, states included). Where the fast engine's time goes
after both rows (py-spy, 2,000 users, baseline-like workload): the renewal path about 65% (the
401 and its request flow 14%, the refresh call's events 12-16% each with its mint and its
records, the retry's answer 11%, burst requests spawned 7%), page views in bulk 14% (the
kernel's own loop a small part of it: most of it is setting each bulk run up), the forget pass
7%, refills 4%; by function, no share over 8% (the tasks' step loop 7.6%, counting into the
bins 6.4%, frozen dataclasses' __init__ 4.6%). The renewal path is Python objects and events;
10x needs it compiled too. Tried and not kept: the tasks' step loop in the kernel (a flow's
return read from ``PyIter_Send``, no StopIteration raised and caught): instructions (500 users,
as above) 3,132 -> 3,056 million for the exact engine on poisson (-2.4%), 1,390 -> 1,342 million
for the fast engine on baseline (-3.4%), for a second copy of the loop.

What 10x asks of the renewal path, on the code of the last row (``--users 2000``, one process,
three rounds, each model with 15-minute and with 10-hour access tokens, which renew nothing; load
under 1; CPU seconds): the naive model takes 5.67-5.90 s, of which its 16,397 renewals about
0.25 s (5.39-5.64 s with nothing renewed: some 15 us a renewal, SimPy events and counters); the
fast engine takes 1.25-1.46 s, of which 0.38-0.40 s with nothing renewed, so about 57 us a
renewal. 10x is at most 0.58 s: its renewals would have to cost 12 us each at the most, less than
the naive model's own, while carrying what the naive model leaves out (the policies' decisions,
the ledger's mints, the records). Those alone, called in a loop on this workload's policies (the
calls listed two paragraphs above), cost 8.6-9.0 us a renewal, 12.5 us with their two records. So
with the rules as Python objects, 10x holds only if the rest of the renewal path (its events,
tasks, flows and counts, some 45 us now) costs nothing: it needs a core whose state and rules are
typed and compiled together (the flows' effects, the tasks, the ledger's tokens, the policies'
rules as C structures), not the engine's Python around them made cheaper; compiling the modules
as they are gave 0-9% (above).

The silent-refresh variant's timers (not in this workload): at 20,000 users of the bundled
baseline, looking over a sleeping timer's ticks for the first that may act (``_timer_next``)
takes 12% of that variant's time (py-spy), about 8 ticks a look. Tried and not kept: keeping
the ticks already looked over for the next look with the same wake and view: on_timer calls the
same (169,250 at 2,000 users), instructions 0.1% fewer (400 users): a timer that sleeps already
moves its wake to the first tick that may act, so a look is rarely repeated. A pure answer of
the policy (until when no tick acts) spares the on_timer calls but not the ticks themselves: their
sums must be made tick by tick for the same instants. Kept, as ``timer_quiet_until_s`` (a test
checks it against ``on_timer``): the bundled baseline's silent_refresh variant at 1,000 users
(``simulate_one``, fast engine, valgrind, the whole process, PYTHONHASHSEED=0, the same output)
5,197 -> 4,868 million instructions, about -12% of the simulation's. Then the ticks before that
instant walked in one call (``sim.strategies.ticks.quiet_ticks``, with the arithmetic of
``TimerClient.next_tick_s`` and ``wake_s``, which the policy's hooks now call too), compiled from
that same file (``sim.strategies._ticks``), the same count: 4,846 -> 4,408 million, about -19% of
the simulation's; the Python loop now only asks ``on_timer`` at the ticks from that instant on. A
copy of the arithmetic written in the kernel's Cython counted 4,362 million: 1% fewer, for a
timer rule written twice. In CPU time the gain is smaller than in instructions (the ticks were
cheap, cache-friendly work; what remains waits on memory): ``simulate_one`` of that variant at
20,000 users (8 auth workers), two runs of each code alternated, 11.7 and 12.9 -> 11.0 and 11.6 CPU
s, about as much as the reactive dual_token variant (11.9 s; single-flight 9.4 s, sliding 8.0 s);
at 100,000 users (``bench_scale.py --strategy silent_refresh --processes 1``) 78 -> 75 s.

Tried and measured, not kept (random-number refills): whole numbers in batches of more than 24
(burst sizes, ``CountUniform``) drawn by numpy's own method (Lemire's, over the 32-bit halves of
the raw draws) on numpy arrays instead of numpy's ``integers``, its call kept only for a batch
that meets a redraw: the same numbers and states. One refill of 96 or 256 burst sizes, the two
alternated in one process (load 0.4-1.1): 12.3-19.3 -> 11.2-17.9 us and 14.1-25.9 -> 12.6-21.5
us, about 1.5 us less (numpy 2.4's calls cost about 2 us each on arrays this small, and the path
needs six); shorter batches are cheaper with Python's integers, as now. Whole runs of the fast
engine (the baseline scaled, dual token, four alternated runs each, CPU median): 2,000 users
5.20 -> 4.69 s (ratio 0.86, runs 0.74-1.45, load 0.4-1.3), 20,000 users 42.6 -> 44.0 s (ratio
1.04, runs 0.85-1.16, load 1.1-2.9): within the noise, and at 100,000 users no batch is longer
than 13. Building a stream's buffer without the intermediate bytes was slower, and putting a
state into the lender and taking it out costs about 0.6 us each: the other fills' fixed cost
leaves little to take.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def workload(name: str, users: int, hours: float):
    import sim

    if name == "baseline":
        scenario = sim.load_scenario(ROOT / "scenarios/baseline.toml")
        scenario = scenario.replace(population={"users": users, "session_length": None, "away": None},
                                    run={"replications": 1, "warmup_s": 0.0, "duration_s": hours * 3600.0})
        return scenario, "dual_token"
    if name == "poisson":
        scenario = sim.parse_scenario({
            "run": {"seed": 1, "duration": f"{hours * 3600:.0f}s", "warmup": "0s"},
            "population": {"users": users, "arrival": {"pattern": "ramp", "over": "20s"}},
            "workload": {"think_time": {"dist": "exponential", "mean": "20s"}, "burst_size": 1},
            "network": {"rtt": "50ms"},
            "auth": {"workers": 4},
            "tokens": {"access_ttl": "15m"},
            "strategies": [{"name": "reactive", "client": {"trigger": "reactive"}, "server": {"kind": "dual_token"}}],
        })
        return scenario, "reactive"
    raise SystemExit(f"unknown workload {name!r}")


def naive(scenario) -> int:
    """The workload written the obvious way in SimPy; returns the requests it completed."""
    import simpy

    from sim.engine.streams import UserStreams, arrival_times, user_traits

    env = simpy.Environment()
    auth = simpy.Resource(env, capacity=scenario.auth.workers)
    a, ttl = scenario.auth, scenario.tokens.access_ttl_s
    login_s, refresh_s = a.login_time_s + 2 * a.sign_time_s, a.refresh_time_s + a.verify_time_s + a.sign_time_s
    verify_s, p_idle = scenario.api.verify_time_s, scenario.population.idle_probability
    seed, done = scenario.run.seed, [0]
    arrivals = arrival_times(scenario, seed, 0)
    tabs, _ = user_traits(scenario, seed, 0)

    def auth_call(s, service_s):
        rtt = s.auth_rtt()
        yield env.timeout(rtt / 2)
        with auth.request() as req:
            yield req
            yield env.timeout(service_s)
        yield env.timeout(rtt / 2)
        return env.now

    def request(s, tab, user):
        for attempt in range(2):
            rtt = tab.api_rtt()
            yield env.timeout(rtt / 2)
            ok = env.now <= user["exp"]
            yield env.timeout(rtt / 2 + verify_s)
            if ok:
                done[0] += 1
                return
            minted = yield from auth_call(s, refresh_s)
            user["exp"] = minted + ttl

    def user(u, s):
        yield env.timeout(float(arrivals[u]))
        state = {"exp": (yield from auth_call(s, login_s)) + ttl}
        for i in range(1, int(tabs[u])):
            env.process(tab_process(s, s.tab(i), state))
        yield from tab_process(s, s.tab(0), state)

    def tab_process(s, tab, state):
        while True:
            others = [env.process(request(s, tab, state)) for _ in range(int(tab.burst()) - 1)]
            yield from request(s, tab, state)
            if others:
                yield env.all_of(others)
            pause = tab.idle_gap() if p_idle and tab.idle_coin() < p_idle else 0.0
            yield env.timeout(pause + tab.think())

    for u in range(scenario.population.users):
        env.process(user(u, UserStreams(scenario, seed, 0, u)))
    env.run(until=scenario.run.end_s)
    return done[0]


def _measure(args):
    kind, name, users, hours = args
    scenario, variant = workload(name, users, hours)
    # the libraries each model uses are imported before the clock starts, for every model alike:
    # a process pays them once (about half a second for pandas, which the engines' summary
    # tables need), however many user-hours it simulates
    if kind == "naive":
        import simpy  # noqa: F401
    else:
        import pandas  # noqa: F401

        from sim.engine import simulate_one
    started, cpu = time.perf_counter(), time.process_time()
    if kind == "naive":
        requests = naive(scenario)
    else:
        requests = int(simulate_one(scenario, variant, 0, scenario.run.seed, False, kind)[0]["requests"])
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "requests": requests}


def measure(kind: str, name: str, users: int, hours: float) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, ((kind, name, users, hours),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--workloads", default="baseline,poisson")
    parser.add_argument("--engines", default="naive,exact,fast")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the models in turn (naive, exact, fast, naive, ...) per workload")
    args = parser.parse_args()
    user_hours = args.users * args.hours
    print(f"{args.users:,} users x {args.hours:g} h = {user_hours:,.0f} simulated user-hours per run, "
          f"{args.rounds} rounds of the models in turn (CPU seconds: the machine is shared)")
    kinds = args.engines.split(",")
    for name in args.workloads.split(","):
        runs = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                runs[kind].append(measure(kind, name, args.users, args.hours))
        base = runs.get("naive")
        print(f"\n{name}: medians over the rounds; x naive is the median of each round's ratio, [min-max]")
        print(f"  {'model':<6} {'requests':>11} {'cpu s':>8} {'wall s':>8} {'user-h/cpu-s':>13} {'x naive':>8} "
              f"{'range':>13} {'peak RSS MB':>12}")
        for kind, rs in runs.items():
            ratios = [b["cpu_s"] / r["cpu_s"] for b, r in zip(base, rs)] if base else [float("nan")]
            cpu_s = statistics.median(r["cpu_s"] for r in rs)
            print(f"  {kind:<6} {rs[0]['requests']:>11,} {cpu_s:>8.2f} {statistics.median(r['wall_s'] for r in rs):>8.2f} "
                  f"{user_hours / cpu_s:>13,.0f} {statistics.median(ratios):>8.2f} "
                  f"{f'[{min(ratios):.2f}-{max(ratios):.2f}]':>13} {max(r['peak_mb'] for r in rs):>12,.0f}")


if __name__ == "__main__":
    main()
