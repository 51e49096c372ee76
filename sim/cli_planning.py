"""The planning commands of the ``refreshlab`` script: ``sweep``, ``capacity`` and
``calibrate``, and the options every simulating command shares for where simulations run
(``--processes``, ``--cluster``). :func:`register` adds the commands to the script's app."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

ProcessesOpt = Annotated[Optional[int], typer.Option(
    "--processes", min=1, help="Worker processes on this machine [default: one per core for big runs].")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", metavar="ADDRESS",
    help="Send the simulations to the Dask scheduler at ADDRESS (tcp://host:8786); needs refreshlab[cluster].")]


class Engine(str, Enum):
    fast = "fast"
    exact = "exact"


EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="fast: plain requests in one step; exact: every request simulated (identical results).")]

#: what ``sweep`` prints per setting and variant
SWEEP_COLUMNS = [
    ("refresh_rate_per_s", "renewals/s"),
    ("refresh_rate_peak_per_s", "peak/s"),
    ("auth_utilization", "auth util."),
    ("auth_queue_wait_ms_p99", "queue wait p99 ms"),
    ("added_latency_ms_p99", "added p99 ms"),
    ("failed_requests", "failed req."),
    ("forced_logins", "forced logins"),
]


def say(message: str) -> None:
    """A progress line on stderr, printed at once (a terminal or a log follows the run)."""
    print(message, file=sys.stderr, flush=True)


def sweep(
    scenario_path: Annotated[Path, typer.Argument(help="Scenario file (TOML).", show_default=False, metavar="SCENARIO")],
    settings: Annotated[list[str], typer.Option(
        "--set", help="FIELD=V1,V2,... to vary (file spelling: auth.workers=1,2,4, tokens.access_ttl=5m,15m, "
        "strategies[0].server.grace_period=0s,30s); several --set vary together (every combination).",
        show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Sweep folder [default: runs/<scenario>-sweep-<time>]; "
                                                "an interrupted sweep resumes when run again with the same --out.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the scenario's seed.")] = None,
    replications: Annotated[Optional[int], typer.Option(help="Override the number of replications.", min=1)] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the sweep report.html.")] = True,
    processes: ProcessesOpt = None,
    cluster: ClusterOpt = None,
    engine: EngineOpt = Engine.fast,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sweep table (and gates) as strict JSON "
                                          "instead of tables.")] = False,
    fail_on: Annotated[Optional[list[str]], typer.Option(
        "--fail-on", help="Gate for CI, e.g. 'failed_requests > 0', checked per setting and variant: exit 1 when "
        "it holds; results in gates.json.", show_default=False)] = None,
    gate_on: Annotated[Optional[str], typer.Option(
        "--gate-on", help="Check gates on the 'mean' or on the 95% CI bound on the failing side ('ci').",
        show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat sanity warnings (suspicious values) as errors.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run even when a point's work estimate exceeds the free "
                                        "memory.")] = False,
):
    """Simulate a scenario once per combination of the --set values and compare them.

    One run folder per setting, written as soon as it is complete; running the same command
    again resumes an interrupted sweep without recomputing a point. The table shows how refresh
    load, queue wait and failures move with users, workers, lifetimes; the table is also saved as
    sweep.csv."""
    from sim.cli import (check_gates, check_work, default_out, emit_json, fail, gates_exit, gates_table, out_console,
                         progress_bar, read_gates, read_scenario)
    from sim.engine.dispatch import WorkerLost
    from sim.scenario import parse_setting, sweep_settings
    from sim.sweep import Point, SweepFolderError, finish, run_sweep
    from sim.units import format_number

    try:
        combos = sweep_settings([parse_setting(text) for text in settings])
    except ValueError as exc:
        raise fail(f"--set: {exc}") from None
    points = []
    for combo in combos:  # every point checked before any runs
        scenario = read_scenario(scenario_path, combo, strict=strict, quiet=len(points) > 0)
        points.append(Point(combo, scenario.with_run(seed, replications)))
    for point in points:  # every point's work estimated before any runs
        check_work(point.scenario, force=force, processes=processes, what=f"sweep point {point.label}")
    gates = read_gates(points[0].scenario, fail_on, gate_on)
    out = out or default_out(scenario_path, "sweep")

    written = [0]

    def on_point(point, result, reused, done, total):
        written[0] = done
        say(f"[{done}/{total}] {point.label}: {'already in ' if reused else 'wrote '}{out / point.folder}")

    try:
        with progress_bar("simulating", enabled=not as_json) as update:
            results = run_sweep(points, out, source=scenario_path.name, processes=processes, cluster=cluster,
                                on_point=on_point, engine=engine.value, progress=None if as_json else update)
        finish(out, points, results, scenario_path.name, report)
    except SweepFolderError as exc:
        raise fail(str(exc)) from None
    except WorkerLost as exc:
        raise fail(f"{exc}; {written[0]} of {len(points)} points are written in {out}; run the same command "
                   f"again with --out {out} to resume", 1) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted: {written[0]} of {len(points)} points are written in {out}; run the same "
                   f"command again with --out {out} to resume", 130) from None
    table = Table(title=f"{scenario_path.name}: sweep of {', '.join(combos[0])} (means over replications)",
                  title_justify="left")
    for label in ["setting", "strategy", *(label for _, label in SWEEP_COLUMNS)]:
        table.add_column(label, justify="left" if label in ("setting", "strategy") else "right")
    for point, result in zip(points, results):
        for strategy, row in result.aggregate.iterrows():
            table.add_row(point.label, strategy, *(format_number(row[col]) for col, _ in SWEEP_COLUMNS))
    frame = sweep_frame(points, results)
    frame.to_csv(out / "sweep.csv", index=False)
    outcome = check_gates(gates, [(p.label, r.aggregate) for p, r in zip(points, results)], out, as_json=True)
    if as_json:
        from sim.gates import to_json
        from sim.jsonout import records

        doc = {"out": str(out), "sweep": records(frame)}
        if outcome is not None:
            doc["gates"] = to_json(outcome)
        emit_json(doc)
        gates_exit(outcome)
        return
    out_console.print(table)
    if outcome is not None:
        out_console.print(gates_table(outcome))
    out_console.print(f"wrote {out}: one run folder per setting, sweep.csv"
                      + (f", report: {out / 'report.html'}" if report else ""))
    gates_exit(outcome)


def sweep_frame(points, results):
    """The sweep as one table: per setting and variant, the varied fields (file spelling) and
    every aggregated summary column (what sweep.csv holds)."""
    import pandas as pd

    from sim.scenario import spell

    rows = []
    for point, result in zip(points, results):
        rows.append(result.aggregate.reset_index().assign(
            **{"setting": point.label, "folder": point.folder}, **{k: spell(v) for k, v in point.settings.items()}))
    frame = pd.concat(rows, ignore_index=True)
    first = ["setting", *points[0].settings, "folder", "strategy"]
    return frame[first + [c for c in frame.columns if c not in first and c != "replication"]]


def capacity(
    scenario_path: Annotated[Path, typer.Argument(help="Scenario file (TOML).", show_default=False, metavar="SCENARIO")],
    slo: Annotated[str, typer.Option("--slo", help="The objective, METRIC < NUMBER: e.g. 'auth_queue_wait_ms_p99 < 50'.",
                                     show_default=False)],
    users: Annotated[str, typer.Option("--users", help="Populations, e.g. 10k,100k,1M.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for capacity.csv, probes.csv and the chart "
                                                "[default: runs/<scenario>-capacity-<time>].")] = None,
    strategies: Annotated[Optional[list[str]], typer.Option("--strategy", help="Only this variant (repeatable).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the scenario's seed.")] = None,
    replications: Annotated[Optional[int], typer.Option(
        help="Replications per probe [default: the scenario's]; with several, the upper end of the 95% CI must "
             "meet the objective.", min=1)] = None,
    max_workers: Annotated[int, typer.Option("--max-workers", min=1, help="Give up above this many workers.")] = 1024,
    processes: ProcessesOpt = None,
    cluster: ClusterOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Run even when the work estimate of the largest population "
                                        "exceeds the free memory.")] = False,
    engine: EngineOpt = Engine.fast,
):
    """Find per variant the fewest auth workers meeting an objective at each population.

    A search over worker counts (from the next smaller population's answer, doubling or halving,
    then bisection), not a grid; prints the table, writes
    it as capacity.csv (every simulated probe in probes.csv) and draws the capacity chart."""
    from sim.capacity import capacity as find_capacity
    from sim.capacity import parse_slo, parse_users
    from sim.cli import check_work, default_out, fail, interruptible, out_console, read_scenario
    from sim.engine.dispatch import WorkerLost
    from sim.scenario import ScenarioError
    from sim.units import format_number

    try:
        objective = parse_slo(slo)
    except ValueError as exc:
        raise fail(f"--slo: {exc}") from None
    try:
        populations = parse_users(users)
    except ValueError as exc:
        raise fail(f"--users: {exc}") from None
    scenario = read_scenario(scenario_path)
    for name in strategies or []:
        if name not in scenario.names:
            raise fail(f"--strategy: no strategy {name!r}; the scenario has: {', '.join(scenario.names)}")
    # the largest population is the costliest probe (worker counts change no memory to speak of)
    largest = max(populations)
    try:
        probed = scenario.replace(population={"users": largest},
                                  **({"run": {"replications": replications}} if replications else {}))
    except ScenarioError as exc:
        raise fail(f"--users: {exc.render()}") from None
    check_work(probed, force=force, processes=processes, what=f"capacity at {format_number(largest)} users")
    out = out or default_out(scenario_path, "capacity")
    with interruptible(out):
        try:
            result = find_capacity(scenario, objective, populations, strategies=strategies, seed=seed,
                                   replications=replications, max_workers=max_workers, processes=processes,
                                   cluster=cluster, progress=say, engine=engine.value)
        except WorkerLost as exc:
            raise fail(f"{exc}; nothing was written", 1) from None
        result.save(out)
    reps = result.replications
    rule = f"upper end of the 95% CI over {reps} replications" if reps > 1 else "one replication per probe"
    table = Table(title=f"{scenario_path.name}: fewest auth workers with {objective} ({rule})", title_justify="left")
    table.add_column("strategy", style="bold")
    for n in populations:
        table.add_column(f"{format_number(n)} users", justify="right")
    cells = {(r.variant, r.users): (str(int(r.workers_needed)) if r.status == "met" else
                                    f"> {max_workers}" if r.status.startswith("not met") else "n/a")
             for r in result.table.itertuples()}
    for name in result.wide().index:
        table.add_row(name, *(cells[name, n] for n in populations))
    out_console.print(table)
    unmet = (result.table["status"] != "met") & (result.table["status"] != "not measured")
    if unmet.any():
        out_console.print(f"{int(unmet.sum())} population(s) not met with {max_workers} workers (see probes.csv)")
    unmeasured = result.table["status"] == "not measured"
    if unmeasured.any():
        out_console.print(f"wrote {out}")
        raise fail(f"{int(unmeasured.sum())} search(es) measured no {objective.metric} (n/a): no auth call fell "
                   f"in the window", 1)
    out_console.print(f"wrote {out} (capacity.csv, probes.csv, charts/capacity.png)")


def calibrate(
    out: Annotated[Path, typer.Option("--out", help="The profile to write (TOML).")] = Path("calibration.toml"),
    algorithms: Annotated[str, typer.Option("--algorithms", help="JWT algorithms to measure, comma-separated.")]
    = "HS256,RS256,ES256,EdDSA",
    samples: Annotated[int, typer.Option("--samples", min=10, help="Timed operations per algorithm and operation.")] = 2000,
    server: Annotated[Optional[str], typer.Option(
        "--server", metavar="URL", help="Also measure a running reference server's /login and /token under load "
        "(e.g. http://127.0.0.1:8000, started with refreshlab serve).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel clients for --server.")] = 8,
    duration: Annotated[float, typer.Option("--duration", min=0.5, help="Seconds of load per endpoint for --server.")] = 5.0,
):
    """Measure JWT signing and verification times and write a profile scenarios can load.

    PyJWT sign and verify per algorithm on this machine (keys loaded once) and, with --server,
    a reference server's /login and /token under load; a scenario uses the profile with
    `profile = "calibration.toml"` in its auth table, so that service times are measured, not
    guessed."""
    from sim.calibrate import ALGORITHMS, calibrate as measure, measure_server
    from sim.cli import fail, interruptible, out_console

    names = [a.strip() for a in algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown or not names:
        raise fail(f"--algorithms: unknown {', '.join(unknown) or 'nothing'}; expected some of: {', '.join(ALGORITHMS)}")
    with interruptible(out):
        profile = measure(names, samples=samples, progress=say)
        if server:
            try:
                profile.endpoints = measure_server(server, concurrency=concurrency, duration_s=duration, progress=say)
            except OSError as exc:
                raise fail(f"--server: cannot measure {server}: {exc}", 1) from None
        profile.save(out)
    out_console.print(profile.table())
    out_console.print(f"wrote {out}: reference it from a scenario as [auth] profile = \"{out.name}\"", markup=False,
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``capacity`` and ``calibrate`` to the script's app."""
    app.command()(sweep)
    app.command()(capacity)
    app.command()(calibrate)
