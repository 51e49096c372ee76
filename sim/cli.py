"""The ``refreshlab`` console script.

Commands from other packages (``serve``, ``loadtest``, ``validate`` from ``loadtests``) are found
through the ``refreshlab.commands`` entry-point group, so that ``sim`` never imports them.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from importlib.metadata import PackageNotFoundError, entry_points, requires, version
from pathlib import Path
from typing import Annotated, Iterator, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)
from rich.table import Table

from sim import cli_planning
from sim.scenario import Scenario, ScenarioError, load_scenario, sanity_warnings
from sim.units import format_number

app = typer.Typer(
    name="refreshlab",
    help="Simulate and load-test JWT renewal strategies: dual token, sliding expiration, silent refresh.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
out_console = Console()
err_console = Console(stderr=True)

ScenarioArg = Annotated[Path, typer.Argument(help="Scenario file (TOML).", show_default=False, metavar="SCENARIO")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder to write [default: runs/<scenario>-<time>].")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Override the scenario's seed.")]
RepsOpt = Annotated[Optional[int], typer.Option(help="Override the number of replications.", min=1)]
EventsOpt = Annotated[bool, typer.Option("--events", help="Also write events.parquet (every record).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run even when the work estimate exceeds the free memory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the results as strict JSON (null for a missing number) "
                                       "instead of tables.")]
FailOnOpt = Annotated[Optional[list[str]], typer.Option(
    "--fail-on", help="Gate for CI, e.g. 'failed_requests > 0' (any summary column; repeatable; added to the "
    "scenario's [gates]): exit 1 when it holds for a variant; results in gates.json.", show_default=False)]
GateOnOpt = Annotated[Optional[str], typer.Option(
    "--gate-on", help="Check gates on the 'mean' or on the 95% CI bound on the failing side ('ci') "
    "[default: the scenario's gates.on, else mean].", show_default=False)]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat sanity warnings (suspicious values) as errors.")]


def _version(value: bool) -> None:
    if value:
        try:
            print(f"refreshlab {version('refreshlab')}")
        except PackageNotFoundError:
            print("refreshlab (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version,
                                               is_eager=True)] = False,
):
    """Simulate and load-test JWT renewal strategies: dual token, sliding expiration, silent refresh."""


from sim.cli_planning import Engine, EngineOpt  # noqa: E402  (shared by every simulating command)

#: the headline metrics ``compare`` prints, with their column titles
HEADLINE = [
    ("requests", "requests"),
    ("refresh_calls", "refresh calls"),
    ("refresh_rate_per_s", "renewals per s"),
    ("refresh_rate_peak_per_s", "renewals, peak per s"),
    ("duplicate_tokens", "duplicate tokens"),
    ("reuse_detections", "reuse detections"),
    ("expiry_failures", "expiry failures (401)"),
    ("failed_requests", "failed requests"),
    ("forced_logins", "forced logins"),
    ("lapse_logins_per_user_day", "lapse-forced logins per user-day"),
    ("spurious_logouts", "spurious logouts"),
    ("benign_revocations", "revoked by a benign race"),
    ("stranded_tokens", "stranded refresh tokens"),
    ("added_latency_ms_p99", "added latency p99, ms"),
    ("auth_utilization", "auth utilization"),
    ("exposure_s_mean", "exposure after leaving, s"),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr and return the exit to raise (status 2: bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def read_scenario(path: Path, settings: dict | None = None, strict: bool = False, quiet: bool = False) -> Scenario:
    """Load a scenario (with dotted ``settings`` overriding it) or exit 2 with the file, field
    and what was expected. Sanity warnings are printed (to stderr), or with ``strict`` refused."""
    try:
        scenario = load_scenario(path, settings)
    except ScenarioError as exc:
        raise fail(exc.render()) from None
    warn(scenario, path, strict, quiet)
    return scenario


def warn(scenario: Scenario, path: Path, strict: bool = False, quiet: bool = False) -> list[tuple[str, str]]:
    """Print the scenario's sanity warnings (exit 2 under ``strict``); returns them."""
    found = sanity_warnings(scenario)
    if found and strict:
        raise fail(ScenarioError(str(path), found, _lines(path)).render() + "\n(--strict: warnings are errors)")
    if found and not quiet:
        for line in ScenarioError(str(path), found, _lines(path)).render().splitlines():
            err_console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return found


def _lines(path: Path) -> dict[str, int]:
    from sim.scenario import toml_lines

    try:
        return toml_lines(Path(path).read_text(encoding="utf-8"))
    except OSError:
        return {}


def emit_json(document: dict) -> None:
    """Print ``document`` as strict JSON (NaN and infinities become null)."""
    from sim.jsonout import dumps

    print(dumps(document))


# -- gates ---------------------------------------------------------------------------------------

def read_gates(scenario: Scenario, fail_on: list[str] | None, gate_on: str | None) -> list:
    """The scenario's ``[gates]`` and the ``--fail-on`` ones, parsed; exit 2 naming a bad one."""
    from sim.gates import GateError, parse_gate

    on = gate_on or scenario.gates.on
    if on not in ("mean", "ci"):
        raise fail(f"--gate-on: expected 'mean' or 'ci', got {on!r}")
    gates = []
    for source, texts in (("gates.fail_on", scenario.gates.fail_on), ("--fail-on", fail_on or [])):
        for text in texts:
            try:
                gates.append(parse_gate(text, on))
            except GateError as exc:
                raise fail(f"{source}: {exc}") from None
    return gates


def check_gates(gates: list, runs: list[tuple[str, object]], folder: Path | None, as_json: bool = False):
    """Evaluate ``gates`` on each (label, aggregate) of ``runs``; print the pass/fail table (unless
    ``as_json``) and write ``gates.json`` into ``folder``. Returns the outcome table, or None
    without gates."""
    if not gates:
        return None
    import pandas as pd

    from sim.gates import evaluate, to_json

    outcome = pd.concat([evaluate(gates, agg, label) for label, agg in runs], ignore_index=True)
    if folder is not None:
        from sim.jsonout import dumps

        (Path(folder) / "gates.json").write_text(dumps(to_json(outcome)) + "\n", encoding="utf-8")
    if not as_json:
        out_console.print(gates_table(outcome))
    return outcome


def gates_table(outcome) -> Table:
    """The pass/fail table: one row per gate, run and variant."""
    from sim.gates import all_passed

    table = Table(title="gates: " + ("all passed" if all_passed(outcome) else "FAILED"), title_justify="left")
    several = outcome["run"].nunique() > 1 or (outcome["run"] != "").any()
    for label in (["run"] if several else []) + ["gate", "on", "strategy", "value", "result"]:
        table.add_column(label, justify="right" if label == "value" else "left")
    for _, row in outcome.iterrows():
        value = format_number(row["mean"])
        if row["on"] == "ci" and row["ci95"] == row["ci95"] and row["ci95"] > 0:
            value += f" ±{format_number(row['ci95'])} (bound {format_number(row['compared'])})"
        result = {True: "[green]pass[/]", False: "[bold red]FAIL[/]"}.get(row["passed"], "[bold red]FAIL (no value)[/]")
        table.add_row(*([escape(str(row["run"]))] if several else []), escape(row["gate"]), row["on"],
                      escape(str(row["strategy"])), value, result)
    return table


def gates_exit(outcome) -> None:
    """Exit 1 naming the failing variants when a gate failed."""
    from sim.gates import all_passed, failures

    if outcome is None or all_passed(outcome):
        return
    failed = failures(outcome)
    names = ", ".join(dict.fromkeys(f"{r['strategy']} ({r['gate']}{', ' + r['run'] if r['run'] else ''})"
                                    for _, r in failed.iterrows()))
    err_console.print(f"[bold red]gate failed:[/] {escape(names)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def interruptible(out: Path | None = None) -> Iterator[None]:
    """Turn Ctrl-C into a one-line message and exit status 130; nothing half-written remains
    (run folders are only renamed into place once complete)."""
    try:
        yield
    except KeyboardInterrupt:
        where = f"; {out} was left as it was" if out is not None else ""
        raise fail(f"interrupted: no run folder was completed{where}", 130) from None


def default_out(scenario_path: Path, command: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{scenario_path.stem}{'-' + command if command else ''}-{stamp}"


#: seconds between two progress lines when stderr is not a terminal
LOG_EVERY_S = 5.0


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """A progress callback ``(done, total)`` (``done`` may count a share of the work under way);
    drawn on a terminal, with the time left, and only once a run has taken longer than a second;
    elsewhere (logs, CI) written as ``description: done/total (percent)`` lines."""
    if not enabled:
        yield lambda done, total: None
        return
    if not err_console.is_terminal:
        # logs and CI: a plain line when the numbers shown move, at most one per LOG_EVERY_S
        last = {"line": None, "at": float("-inf")}

        def log(done: float, total: int) -> None:
            now, line = time.monotonic(), f"{description}: {int(done)}/{total} ({done / total:.0%})"
            if last["line"] is None:
                last["line"] = line  # nothing done yet: nothing to say
            elif line != last["line"] and (now - last["at"] >= LOG_EVERY_S or done >= total):
                last.update(line=line, at=now)
                print(line, file=sys.stderr, flush=True)

        yield log
        return
    started = time.monotonic()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
    task = bar.add_task(description, total=None)
    state = {"shown": False}

    def update(done: float, total: int) -> None:
        if not state["shown"] and time.monotonic() - started > 1.0:
            bar.start()
            state["shown"] = True
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if state["shown"]:
            bar.stop()


def simulate(scenario: Scenario, seed, replications, events, quiet=False, processes=None, cluster=None,
             force=False, engine="fast"):
    """Run a scenario with a progress bar; a lost worker process fails the command (status 1). A
    scenario whose work estimate exceeds the free memory is refused (status 2) unless ``force``."""
    from sim.engine import run
    from sim.engine.dispatch import WorkerLost

    check_work(scenario.replace(run={"replications": replications}) if replications else scenario,
               force=force, processes=processes, events=bool(events))
    with progress_bar("simulating", enabled=not quiet) as update:
        try:
            return run(scenario, seed=seed, replications=replications, events=events,
                       progress=None if quiet else update, processes=processes, cluster=cluster, engine=engine)
        except WorkerLost as exc:
            raise fail(f"{exc}; no run folder was written", 1) from None


def check_work(scenario: Scenario, *, force: bool, processes: int | None = None, what: str = "",
               events: bool = False) -> None:
    """The work estimate of every simulating command (``run``, ``compare``, each ``sweep`` point,
    the largest ``capacity`` probe): exits with status 2 and the estimate when ``scenario`` needs
    more memory than the machine has, or warns on stderr with ``force``. ``what`` names the part
    of the command the scenario stands for (a sweep point, a population); ``events``: every
    record is kept (``--events``)."""
    from sim import estimate

    try:
        warning = estimate.check(scenario, force=force, parallel=processes, events=events)
    except estimate.TooMuchWork as exc:
        raise fail(f"{what}: {exc}" if what else str(exc)) from None
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {what + ': ' if what else ''}{warning}", highlight=False,
                          soft_wrap=True)


def headline_table(result, title: str) -> Table:
    """The headline metrics, one row each, one column per variant (mean ± 95% CI half-width)."""
    agg = result.aggregate
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    for name in agg.index:
        table.add_column(name, justify="right", overflow="fold")
    remember = result.scenario is not None and result.scenario.population.remember_me
    for col, label in HEADLINE:
        if col == "lapse_logins_per_user_day" and not remember:
            continue  # every visit logs in anew: there is no lapse to count
        cells = []
        for _, row in agg.iterrows():
            value, ci = row[col], row.get(f"{col}_ci95")
            # a half-width at rounding-noise level is no interval
            shown = ci is not None and ci == ci and ci > 1e-9 * max(1.0, abs(value))
            cells.append(format_number(value) + (f" ±{format_number(ci)}" if shown else ""))
        table.add_row(label, *cells)
    return table


def summary_json(result, out: Path, outcome=None, **extra) -> dict:
    from sim.gates import to_json
    from sim.jsonout import records

    doc = {"out": str(out), **extra, "summary": records(result.aggregate)}
    if outcome is not None:
        doc["gates"] = to_json(outcome)
    return doc


def simulate_into_folder(scenario_path: Path, out: Path | None, *, seed, replications, events, quiet: bool,
                         fail_on, gate_on, strict: bool, processes, cluster, force: bool, engine: Engine,
                         report: bool = False, print_gates: bool = False):
    """What ``run`` and ``compare`` share: read the scenario and its gates, simulate, and write the
    run folder (with ``report.html`` if asked, and ``gates.json``) atomically. Returns (scenario,
    result, gate outcome); ``result.path`` is the folder written."""
    scenario = read_scenario(scenario_path, strict=strict)
    gates = read_gates(scenario, fail_on, gate_on)
    out = out or default_out(scenario_path)
    with interruptible(out):
        result = simulate(scenario, seed, replications, events, quiet=quiet, processes=processes, cluster=cluster,
                          force=force, engine=engine.value)
        # only now: tables (pandas) are not needed while the simulations run
        from sim.results import atomic_dir

        with atomic_dir(out) as tmp:
            result.write_into(tmp)
            if report:
                from sim.report import build_report

                result.path = tmp
                build_report([result], tmp)
            outcome = check_gates(gates, [("", result.aggregate)], tmp, as_json=not print_gates)
    result.path = out
    warn_empty(result)
    return scenario, result, outcome


@app.command()
def run(
    scenario_path: ScenarioArg,
    out: OutOpt = None,
    seed: SeedOpt = None,
    replications: RepsOpt = None,
    events: EventsOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregated summary as strict JSON.")] = False,
    fail_on: FailOnOpt = None,
    gate_on: GateOnOpt = None,
    strict: StrictOpt = False,
    processes: cli_planning.ProcessesOpt = None,
    cluster: cli_planning.ClusterOpt = None,
    force: ForceOpt = False,
    engine: EngineOpt = Engine.fast,
):
    """Simulate every strategy variant of a scenario and write a run folder."""
    _, result, outcome = simulate_into_folder(
        scenario_path, out, seed=seed, replications=replications, events=events, quiet=as_json, fail_on=fail_on,
        gate_on=gate_on, strict=strict, processes=processes, cluster=cluster, force=force, engine=engine,
        print_gates=not as_json)
    out = result.path
    if as_json:
        emit_json(summary_json(result, out, outcome))
    else:
        out_console.print(f"wrote {out}")
    gates_exit(outcome)


def warn_empty(result) -> None:
    """A variant that counted no request in the window measured nothing: say so."""
    agg = result.aggregate
    if "requests" in agg:
        empty = [n for n, v in agg["requests"].items() if not v > 0]
        if empty:
            err_console.print(f"[bold yellow]warning:[/] no request in the measurement window for "
                              f"{escape(', '.join(empty))}: these numbers measure nothing", highlight=False)


@app.command()
def compare(
    scenario_path: ScenarioArg,
    out: OutOpt = None,
    seed: SeedOpt = None,
    replications: RepsOpt = None,
    events: EventsOpt = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html into the folder.")] = True,
    as_json: JsonOpt = False,
    fail_on: FailOnOpt = None,
    gate_on: GateOnOpt = None,
    strict: StrictOpt = False,
    processes: cli_planning.ProcessesOpt = None,
    cluster: cli_planning.ClusterOpt = None,
    force: ForceOpt = False,
    engine: EngineOpt = Engine.fast,
):
    """Simulate a scenario and print its variants side by side (and write the run folder)."""
    scenario, result, outcome = simulate_into_folder(
        scenario_path, out, seed=seed, replications=replications, events=events, quiet=as_json, fail_on=fail_on,
        gate_on=gate_on, strict=strict, processes=processes, cluster=cluster, force=force, engine=engine,
        report=report)
    out = result.path
    if as_json:
        emit_json(summary_json(result, out, outcome, report=str(out / "report.html") if report else None))
        gates_exit(outcome)
        return
    reps = result.replications["replication"].nunique()
    window = scenario.run.duration_s
    out_console.print(headline_table(
        result, f"{scenario_path.name}: {scenario.population.users} users, {window / 60:g} min window, "
        f"mean of {reps} replication(s) ± 95% CI"))
    if outcome is not None:
        out_console.print(gates_table(outcome))
    out_console.print(f"wrote {out}" + (f" (report: {out / 'report.html'})" if report else ""))
    gates_exit(outcome)


# sweep, capacity and calibrate live in their own module
cli_planning.register(app)


@app.command()
def check(
    scenario_path: ScenarioArg,
    resolved: Annotated[bool, typer.Option("--resolved", help="Print the scenario with every default filled in "
                                           "(presets expanded, [tokens] lifetimes given to each server), as TOML.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved scenario and the warnings as strict JSON.")] = False,
    strict: StrictOpt = False,
):
    """Validate a scenario file without running it; show its sanity warnings and what it resolves to."""
    scenario = read_scenario(scenario_path, strict=strict, quiet=as_json)
    if as_json:
        emit_json({"scenario": scenario.to_file_dict(), "warnings": [
            {"field": field, "message": message} for field, message in sanity_warnings(scenario)]})
        return
    if resolved:
        print(scenario.to_toml(), end="")
        return
    out_console.print(f"{escape(str(scenario_path))}: ok ({len(scenario.strategies)} strategy variants: "
                      f"{escape(', '.join(scenario.names))}); --resolved prints every default", highlight=False)


@app.command()
def schema():
    """Print the JSON Schema of scenario files (for editor completion)."""
    schema = Scenario.model_json_schema(by_alias=True)
    schema["title"] = "refreshlab scenario"
    print(json.dumps(schema, indent=2))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.", show_default=False, metavar="RUN_DIR...")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder for report.html, report.md and charts [default: RUN_DIR-report for one run folder, "
        "runs/report-<time> for several].")] = None,
):
    """Turn run folders into a self-contained HTML and Markdown report with charts."""
    from sim.report import build_report
    from sim.results import atomic_dir, load_run

    results = []
    for d in run_dirs:
        try:
            results.append(load_run(d))
        except (FileNotFoundError, ScenarioError) as exc:
            raise fail(str(exc)) from None
    if out is None:
        only = run_dirs[0].resolve()
        out = (only.parent / f"{only.name}-report" if len(run_dirs) == 1
               else Path("runs") / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    with interruptible(out), atomic_dir(out) as tmp:
        build_report(results, tmp)
    out_console.print(f"wrote {out / 'report.html'}")


# -- commands from other packages ------------------------------------------------------------------

def _installed(distribution: str) -> bool:
    try:
        version(distribution)
        return True
    except PackageNotFoundError:
        return False


def missing_for(extras: list[str]) -> list[str]:
    """Distributions that ``refreshlab[extras]`` needs and that are not installed."""
    import re

    try:
        needed = requires("refreshlab") or []
    except PackageNotFoundError:
        return []
    missing = []
    for requirement in needed:
        name, _, marker = requirement.partition(";")
        if any(re.search(rf"extra\s*==\s*['\"]{re.escape(e)}['\"]", marker) for e in extras):
            dist = re.split(r"[\s<>=!~\[(]", name.strip(), maxsplit=1)[0]
            if dist and not _installed(dist):
                missing.append(dist)
    return missing


def _register_plugins() -> None:
    for ep in entry_points(group="refreshlab.commands"):
        extras = list(ep.extras) or ["loadtests"]
        missing = missing_for(extras)
        if not missing:
            try:
                ep.load()(app)
                continue
            except ImportError as exc:
                if (getattr(exc, "name", None) or "").split(".")[0] in ("sim", "loadtests"):
                    raise  # a bug of ours, not a missing extra
                missing = [getattr(exc, "name", None) or str(exc)]
        _unavailable(ep.name, extras, missing)


def _unavailable(name: str, extras: list[str], missing: list[str]) -> None:
    """Register ``name`` as a command that says which extra it needs and exits 2."""
    extra = ",".join(extras)
    install = f"pip install 'refreshlab[{extra}]' (from a clone: pip install -e '.[{extra}]')"

    @app.command(name, help=f"(unavailable: needs the {extra} extra; {install})",
                 context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def unavailable(ctx: typer.Context):
        raise fail(f"'refreshlab {name}' needs the {extra} extra, which is not installed "
                   f"(missing: {', '.join(missing)}); install it with: {install}")


def _escape_help(command: click.Command) -> None:
    """Help texts are shown with rich markup on; escape their square brackets so that
    ``[default: …]`` and ``refreshlab[loadtests]`` are printed as written."""
    if command.help:
        command.help = escape(command.help)
    if getattr(command, "short_help", None):
        command.short_help = escape(command.short_help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        _escape_help(sub)


def build_command(plugins: bool = True) -> click.Command:
    """The console script as a click command: plugins registered (unless ``plugins`` is false),
    help texts escaped."""
    if plugins and not getattr(app, "_plugins_registered", False):
        _register_plugins()
        app._plugins_registered = True
    command = typer.main.get_command(app)
    _escape_help(command)
    return command


def _names_a_plugin(args: list[str]) -> bool:
    """Whether the command line may run a plugin's command or list the commands: its first word
    that is not an option is not one of this module's commands. A built-in command runs without
    importing the plugins (the load-testing half pulls in pandas and more, about 0.1 GB that the
    parent of a long simulation would hold beside its worker processes for nothing)."""
    first = next((a for a in args if not a.startswith("-")), None)
    return first is None or first not in typer.main.get_command(app).commands


def main() -> None:
    build_command(plugins=_names_a_plugin(sys.argv[1:]))(prog_name="refreshlab")


if __name__ == "__main__":
    main()
