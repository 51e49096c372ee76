"""The ``refreshlab`` console script.

Commands from other packages (``serve``, ``loadtest``, ``validate`` from ``loadtests``) are found
through the ``refreshlab.commands`` entry-point group, so that ``sim`` never imports them.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sim import cli_planning
from sim.scenario import Scenario, ScenarioError, load_scenario
from sim.units import format_number

app = typer.Typer(
    name="refreshlab",
    help="Simulate and load-test JWT renewal strategies: dual token, sliding expiration, silent refresh.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
out_console = Console()
err_console = Console(stderr=True)

ScenarioArg = Annotated[Path, typer.Argument(help="Scenario file (TOML).", show_default=False, metavar="SCENARIO")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder to write [default: runs/<scenario>-<time>].")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Override the scenario's seed.")]
RepsOpt = Annotated[Optional[int], typer.Option(help="Override the number of replications.", min=1)]
EventsOpt = Annotated[bool, typer.Option("--events", help="Also write events.parquet (every record).")]

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
    ("added_latency_ms_p99", "added latency p99, ms"),
    ("auth_utilization", "auth utilization"),
    ("exposure_s_mean", "exposure after leaving, s"),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` to stderr and return the exit to raise (status 2: bad input)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def read_scenario(path: Path, settings: dict | None = None) -> Scenario:
    """Load a scenario (with dotted ``settings`` overriding it) or exit 2 with the file, field
    and what was expected."""
    try:
        return load_scenario(path, settings)
    except ScenarioError as exc:
        raise fail(exc.render()) from None


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


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator:
    """A progress callback ``(done, total)``; drawn on a terminal, and only once a run has
    taken longer than a second."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total: None
        return
    started = time.monotonic()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err_console, transient=True)
    task = bar.add_task(description, total=None)
    state = {"shown": False}

    def update(done: int, total: int) -> None:
        if not state["shown"] and time.monotonic() - started > 1.0:
            bar.start()
            state["shown"] = True
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if state["shown"]:
            bar.stop()


def simulate(scenario: Scenario, seed, replications, events, quiet=False, processes=None, cluster=None):
    """Run a scenario with a progress bar; a lost worker process fails the command (status 1)."""
    from sim.engine import run
    from sim.engine.dispatch import WorkerLost

    with progress_bar("simulating", enabled=not quiet) as update:
        try:
            return run(scenario, seed=seed, replications=replications, events=events, progress=update,
                       processes=processes, cluster=cluster)
        except WorkerLost as exc:
            raise fail(f"{exc}; no run folder was written", 1) from None


def headline_table(result, title: str) -> Table:
    """The headline metrics, one row each, one column per variant (mean ± 95% CI half-width)."""
    agg = result.aggregate
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    for name in agg.index:
        table.add_column(name, justify="right", overflow="fold")
    for col, label in HEADLINE:
        cells = []
        for _, row in agg.iterrows():
            value, ci = row[col], row.get(f"{col}_ci95")
            # a half-width at rounding-noise level is no interval
            shown = ci is not None and ci == ci and ci > 1e-9 * max(1.0, abs(value))
            cells.append(format_number(value) + (f" ±{format_number(ci)}" if shown else ""))
        table.add_row(label, *cells)
    return table


@app.command()
def run(
    scenario_path: ScenarioArg,
    out: OutOpt = None,
    seed: SeedOpt = None,
    replications: RepsOpt = None,
    events: EventsOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the aggregated summary as JSON.")] = False,
    processes: cli_planning.ProcessesOpt = None,
    cluster: cli_planning.ClusterOpt = None,
):
    """Simulate every strategy variant of a scenario and write a run folder."""
    scenario = read_scenario(scenario_path)
    out = out or default_out(scenario_path)
    with interruptible(out):
        result = simulate(scenario, seed, replications, events, quiet=as_json, processes=processes, cluster=cluster)
        result.save(out)
    if as_json:
        records = result.aggregate.reset_index().to_dict(orient="records")
        print(json.dumps({"out": str(out), "summary": records}, indent=2, default=float))
    else:
        out_console.print(f"wrote {out}")


@app.command()
def compare(
    scenario_path: ScenarioArg,
    out: OutOpt = None,
    seed: SeedOpt = None,
    replications: RepsOpt = None,
    events: EventsOpt = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html into the folder.")] = True,
    processes: cli_planning.ProcessesOpt = None,
    cluster: cli_planning.ClusterOpt = None,
):
    """Simulate a scenario and print its variants side by side (and write the run folder)."""
    from sim.results import atomic_dir

    scenario = read_scenario(scenario_path)
    out = out or default_out(scenario_path)
    with interruptible(out):
        result = simulate(scenario, seed, replications, events, processes=processes, cluster=cluster)
        with atomic_dir(out) as tmp:
            result.write_into(tmp)
            if report:
                from sim.report import build_report

                result.path = tmp
                build_report([result], tmp)
    result.path = out
    reps = result.replications["replication"].nunique()
    window = scenario.run.duration_s
    out_console.print(headline_table(
        result, f"{scenario_path.name}: {scenario.population.users} users, {window / 60:g} min window, "
        f"mean of {reps} replication(s) ± 95% CI"))
    out_console.print(f"wrote {out}" + (f" (report: {out / 'report.html'})" if report else ""))


# sweep, capacity and calibrate live in their own module
cli_planning.register(app)


@app.command()
def check(scenario_path: ScenarioArg):
    """Validate a scenario file without running it."""
    scenario = read_scenario(scenario_path)
    out_console.print(f"{scenario_path}: ok ({len(scenario.strategies)} strategy variants: {', '.join(scenario.names)})")


@app.command()
def schema():
    """Print the JSON Schema of scenario files (for editor completion)."""
    schema = Scenario.model_json_schema(by_alias=True)
    schema["title"] = "refreshlab scenario"
    print(json.dumps(schema, indent=2))


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.", show_default=False, metavar="RUN_DIR...")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html, report.md and charts.")],
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
    with interruptible(out), atomic_dir(out) as tmp:
        build_report(results, tmp)
    out_console.print(f"wrote {out / 'report.html'}")


def _register_plugins() -> None:
    for ep in entry_points(group="refreshlab.commands"):
        try:
            ep.load()(app)
        except ImportError as exc:
            missing = getattr(exc, "name", None) or ""
            if missing.split(".")[0] in ("sim", "loadtests"):
                raise  # a bug of ours, not a missing extra
            # the optional extra is not installed: the command says how to get it

            @app.command(ep.name, help=f"(unavailable: {missing} is not installed; pip install 'refreshlab[loadtests]')")
            def _unavailable():
                raise fail(f"'refreshlab {ep.name}' needs the loadtests extra: pip install -e '.[loadtests]'")


def main() -> None:
    _register_plugins()
    app()


if __name__ == "__main__":
    main()
