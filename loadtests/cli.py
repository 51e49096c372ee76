"""``refreshlab loadtest`` and ``refreshlab validate``: measure a strategy over real HTTP with
Locust, and check the simulator against such measurements.

Locust runs in a child process (importing it monkey-patches this process with gevent); the
reference server runs in another (:func:`loadtests.server.process.serve_in_subprocess`).
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.table import Table

from sim.cli import (FailOnOpt, GateOnOpt, JsonOpt, OutOpt, ScenarioArg, check_gates, default_out, emit_json,
                     err_console, fail, gates_exit, gates_table, out_console, read_gates, read_scenario)
from sim.results import RunResult, atomic_dir
from sim.scenario import Scenario
from sim.units import format_number, parse_duration

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: wall seconds Locust runs past the scenario's end, so the last records are in before it stops
RUN_TIME_MARGIN_S = 2.0
#: the scale ``validate`` uses unless told: a 30-minute scenario in 45 s, see docs/loadtests.md
VALIDATE_TIME_SCALE = 40.0
#: the relative difference under which a measured metric agrees with the simulated one
AGREEMENT = 0.10


class LoadTestError(Exception):
    """Locust or the server could not run; the message says which and quotes their output."""


@dataclass
class LoadTest:
    """One measured run: what was asked, and what it produced. ``result`` is None only when
    nothing at all was recorded."""

    scenario: Scenario
    strategy: str
    time_scale: float
    result: RunResult | None
    interrupted: bool
    locust_log: str
    locust_requests: pd.DataFrame | None = None
    locust_stats: pd.DataFrame | None = None
    #: why the measurement cannot be trusted whole (the server died mid-run); None when it can
    failure: str | None = None


def effective_scenario(scenario: Scenario, users: int | None, duration: str | None) -> Scenario:
    """``scenario`` with ``--users`` and ``--duration`` applied; ``ValueError`` for a bad duration."""
    changes: dict = {}
    if users is not None:
        changes["population"] = {"users": users}
    if duration is not None:
        changes["run"] = {"duration_s": parse_duration(duration)}
    return scenario.replace(**changes) if changes else scenario


@contextlib.contextmanager
def _target(scenario_file: Path, strategy: str, time_scale: float, target: str | None):
    """Yields (base URL, ``died()``: the exit status of a reference server we started that has
    died since, else None)."""
    if target:
        yield target.rstrip("/"), lambda: None
        return
    from loadtests.server.process import ServerStartError, run_uvicorn_process, free_port, serve_args

    port = free_port()
    try:
        with run_uvicorn_process(serve_args(scenario_file, strategy, time_scale, port=port), port) as (url, server):
            yield url, server.poll
    except ServerStartError as exc:
        raise LoadTestError(f"the reference server did not start: {exc}") from None


def locust_command(scenario_file: Path, strategy: str, url: str, users: int, time_scale: float,
                   run_time_s: float, records: Path, processes: int | None, html: Path | None = None) -> list[str]:
    """The headless Locust command line of a load test."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "-u", str(users), "-r", str(max(users, 1)), "--run-time", f"{math.ceil(run_time_s)}s",
        "--scenario", str(scenario_file), "--strategy", strategy, "--time-scale", repr(time_scale),
        "--records-dir", str(records), "--only-summary", "--exit-code-on-error", "0",
        "--csv", str(records / "locust"),
    ]
    if processes and processes > 1:
        command += ["--processes", str(processes)]
    if html is not None:
        command += ["--html", str(html)]
    return command


def run_loadtest(scenario: Scenario, strategy: str, *, time_scale: float, target: str | None = None,
                 processes: int | None = None, quiet: bool = False, html: Path | None = None) -> LoadTest:
    """Run one load test of variant ``strategy`` (server in a child process unless ``target``).

    Ctrl-C stops Locust early; what was measured until then is kept and marked partial. Raises
    :class:`LoadTestError` when Locust or the server cannot run."""
    from loadtests.measure import Records, fetch_ledger, measured_result, reference_server_info
    from loadtests.server import lifecycle

    users = scenario.population.users
    end_s = scenario.run.end_s
    # the reaper removes the folder and stops the server and Locust even after a kill -9 of this
    # process; SIGTERM stops the run like Ctrl-C
    with tempfile.TemporaryDirectory(prefix="refreshlab-loadtest-") as work, \
            lifecycle.Reaper(work), lifecycle.SigtermAsInterrupt():
        work_dir = Path(work)
        scenario_file = work_dir / "scenario.toml"
        scenario_file.write_text(scenario.to_toml(), encoding="utf-8")
        records = work_dir / "records"
        records.mkdir()
        log_path = work_dir / "locust.log"
        interrupted = False
        failure = None
        with _target(scenario_file, strategy, time_scale, target) as (url, died):
            reference = reference_server_info(url)
            if reference is not None and (reference["strategy"] != strategy
                                          or abs(reference["time_scale"] - time_scale) > 1e-9):
                raise LoadTestError(
                    f"{url} serves strategy {reference['strategy']!r} at time scale {reference['time_scale']:g}, "
                    f"not {strategy!r} at {time_scale:g}")
            command = locust_command(scenario_file, strategy, url, users, time_scale,
                                     end_s / time_scale + RUN_TIME_MARGIN_S, records, processes,
                                     Path(html).resolve() if html is not None else None)
            started = time.time()
            with open(log_path, "w") as log:
                # Locust gets its own process group: Ctrl-C here is forwarded once, so it stops
                # gracefully and writes its records instead of dying with us
                locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, **lifecycle.child_options())
                lifecycle.adopt(locust.pid)
                try:
                    status = _wait(locust, quiet, end_s / time_scale, died, records / "locust_stats.csv")
                    if status is not None:
                        failure = f"the reference server died during the run (exit status {status})"
                        err_console.print(f"{failure}: stopping Locust; the measurement is partial")
                        _stop(locust)
                except KeyboardInterrupt:
                    interrupted = True
                    err_console.print("interrupted: stopping Locust and keeping what was measured")
                    _stop(locust)
            elapsed_s = (time.time() - started) * time_scale
            locust_log = log_path.read_text(errors="replace")
            if locust.returncode not in (0, None) and not interrupted and failure is None:
                raise LoadTestError(f"Locust exited with status {locust.returncode}:\n{_tail(locust_log)}")
            if failure is None and died() is not None:
                failure = f"the reference server died during the run (exit status {died()})"
            ledger = fetch_ledger(url) if reference is not None and failure is None else None
        try:
            measured = Records(records)
        except FileNotFoundError:
            if interrupted or failure:
                return LoadTest(scenario, strategy, time_scale, None, interrupted, locust_log, failure=failure)
            raise LoadTestError(f"Locust wrote no records:\n{_tail(locust_log)}") from None
        cut_short = interrupted or failure is not None
        result = measured_result(
            scenario, strategy, measured, ledger,
            measured_s=min(elapsed_s, end_s) if cut_short else None, partial=cut_short,
            meta={"target": target or "reference server", "users": users, "processes": processes or 1,
                  **({"failure": failure} if failure else {})},
        )
        if failure:
            result.partial = True
        stats = records / "locust_stats.csv"
        return LoadTest(scenario, strategy, time_scale, result, interrupted, locust_log, measured.locust,
                        pd.read_csv(stats) if stats.is_file() else None, failure=failure)


def _wait(process: subprocess.Popen, quiet: bool, expected_s: float, died=lambda: None,
          stats: Path | None = None) -> int | None:
    """Wait for Locust to end; returns the exit status of the server if it died first, else None.
    Says once when Locust's ``stats`` file first counts requests (a line a log can wait for)."""
    from sim.cli import progress_bar

    started = time.monotonic()
    measured = False
    with progress_bar("load testing", enabled=not quiet) as update:
        while process.poll() is None:
            status = died()
            if status is not None:
                return status
            update(min(int(time.monotonic() - started), int(expected_s)), int(math.ceil(expected_s)))
            if not measured and stats is not None and not quiet and _requests_so_far(stats) > 0:
                # a line a log (or a test) can wait for: load is on and being measured
                measured = True
                err_console.print("load testing: first requests measured", highlight=False)
            time.sleep(0.25)
    return None


def _stop(locust: subprocess.Popen) -> None:
    """Stop Locust gracefully (it writes its records), or kill it after 30 s."""
    locust.send_signal(signal.SIGTERM)
    try:
        locust.wait(timeout=30)
    except subprocess.TimeoutExpired:
        locust.kill()
        locust.wait()


def _requests_so_far(stats: Path) -> int:
    """Requests in the Aggregated row of the stats CSV Locust rewrites every second (0 until then)."""
    try:
        rows = stats.read_text().splitlines()
    except OSError:
        return 0
    header = rows[0].split(",") if rows else []
    for row in rows[1:]:
        cells = row.split(",")
        if "Aggregated" in cells and "Request Count" in header:
            try:
                return int(cells[header.index("Request Count")])
            except (ValueError, IndexError):
                return 0
    return 0


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def write_measured(test: LoadTest, folder: Path) -> None:
    """Write a measured run into an existing folder: the METRICS.md files plus
    ``locust_requests.parquet`` (Locust's raw request rows) and ``locust_stats.csv``."""
    test.result.write_into(folder)
    if test.locust_requests is not None and len(test.locust_requests):
        test.locust_requests.to_parquet(folder / "locust_requests.parquet", index=False)
    if test.locust_stats is not None:
        test.locust_stats.to_csv(folder / "locust_stats.csv", index=False)


# -- validate ---------------------------------------------------------------------------------

#: (metric, title, how it is compared): "rate" metrics must agree within AGREEMENT,
#: "occurs" ones on whether they are above zero, "info" ones are shown only
VALIDATE_METRICS = [
    ("refresh_rate_per_s", "refresh rate /s", "rate"),
    ("expiry_failures_per_request", "expiry failures / request", "rate"),
    ("duplicates_occur", "duplicates occur", "occurs"),
    ("duplicate_tokens", "duplicate tokens", "info"),
    ("failed_requests_per_request", "failed / request", "info"),
    ("forced_logins", "forced logins", "info"),
    ("requests", "requests", "info"),
    ("added_latency_ms_p99", "added latency p99 ms", "info"),
]


def _derived(row: pd.Series) -> dict[str, tuple[float, float]]:
    """Per metric: (value, 95% CI half-width or NaN) from an aggregated summary row."""
    def ci(col):
        return float(row.get(f"{col}_ci95", math.nan))

    requests = float(row["requests"]) or math.nan
    out = {col: (float(row[col]), ci(col)) for col, _, _ in VALIDATE_METRICS if col in row.index}
    out["expiry_failures_per_request"] = (row["expiry_failures"] / requests, ci("expiry_failures") / requests)
    out["failed_requests_per_request"] = (row["failed_requests"] / requests, ci("failed_requests") / requests)
    out["duplicates_occur"] = (float(row["duplicate_tokens"] > 0), math.nan)
    return out


def compare(simulated: RunResult, measured: RunResult, strategy: str) -> pd.DataFrame:
    """The validation rows of one variant: metric, simulated mean and 95% CI over replications,
    simulated replication 0, measured, relative difference and whether they agree.

    The load test's users make replication 0's draws (same arrivals, think times, bursts), so the
    difference and the verdict pair the measurement with that replication: what remains is the
    model's error, not one sample's luck. The mean and CI show how much replications vary."""
    sim_mean = _derived(simulated.aggregate.loc[strategy])
    per = simulated.replications
    same_users = _derived(per[(per["strategy"] == strategy) & (per["replication"] == 0)].iloc[0])
    meas_row = _derived(measured.aggregate.loc[strategy])
    rows = []
    for metric, title, kind in VALIDATE_METRICS:
        (mean, ci), (s, _), (m, _) = sim_mean[metric], same_users[metric], meas_row[metric]
        if kind == "occurs":
            rel, agree = math.nan, bool((s > 0) == (m > 0))
        else:
            rel = (m - s) / s if s else (0.0 if m == 0 else math.inf)
            agree = bool(abs(rel) <= AGREEMENT) if kind == "rate" else None
        rows.append({"strategy": strategy, "metric": metric, "title": title, "kind": kind,
                     "simulated_mean": mean, "simulated_ci95": ci, "simulated": s, "measured": m,
                     "relative_difference": rel, "agree": agree})
    return pd.DataFrame(rows)


def _cells(r: pd.Series) -> tuple[str, str, str, str, str]:
    """Text of one validation row: simulated mean ±CI, simulated (same users), measured,
    relative difference, agree."""
    if r["kind"] == "occurs":
        mean, same, meas = _yes(r["simulated_mean"] > 0), _yes(r["simulated"] > 0), _yes(r["measured"] > 0)
    else:
        ci = r["simulated_ci95"]
        mean = _num(r["simulated_mean"]) + (f" ±{_num(ci)}" if ci == ci else "")
        same, meas = _num(r["simulated"]), _num(r["measured"])
    rel = r["relative_difference"]
    rel_text = "" if rel != rel else f"{rel:+.1%}" if math.isfinite(rel) else "∞"
    agree = "" if r["agree"] is None or r["agree"] != r["agree"] else _yes(bool(r["agree"]))
    return mean, same, meas, rel_text, agree


VALIDATION_HEADERS = ("strategy", "metric", "simulated mean ±95% CI", "simulated, same users", "measured",
                      "rel. diff", "agree")


def validation_table(rows: pd.DataFrame, title: str) -> Table:
    """The rich table printed by ``validate``."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(VALIDATION_HEADERS):
        table.add_column(name, justify="left" if i < 2 else "center" if i == 6 else "right")
    for _, r in rows.iterrows():
        *cells, agree = _cells(r)
        agree = {"yes": "[green]yes[/]", "no": "[bold red]no[/]"}.get(agree, agree)
        table.add_row(r["strategy"], r["title"], *cells, agree)
    return table


def _num(value: float) -> str:
    return format_number(value) if value != value or abs(value) >= 0.01 or value == 0 else f"{value:.2e}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def write_validation(rows: pd.DataFrame, out: Path, title: str) -> None:
    """Write ``validation.csv`` and ``validation.md`` into the folder ``out``."""
    rows.to_csv(out / "validation.csv", index=False)
    lines = [f"# {title}", "", "| " + " | ".join(VALIDATION_HEADERS) + " |", "|---|---|---:|---:|---:|---:|:---:|"]
    for _, r in rows.iterrows():
        lines.append("| " + " | ".join((r["strategy"], r["title"], *_cells(r))) + " |")
    (out / "validation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- commands ---------------------------------------------------------------------------------

StrategyOpt = Annotated[str, typer.Option("--strategy", help="Strategy variant (its name in the scenario).",
                                          show_default=False)]
TimeScaleOpt = Annotated[float, typer.Option(
    "--time-scale", help="Scenario seconds per wall second (40: a 15 min token lasts 22.5 s).")]
ProcessesOpt = Annotated[Optional[int], typer.Option(
    "--processes", help="Locust worker processes (distributed mode on this machine).", min=1)]


def loadtest(
    scenario_path: ScenarioArg,
    strategy: StrategyOpt,
    users: Annotated[Optional[int], typer.Option("--users", help="Override the scenario's users.", min=1)] = None,
    time_scale: TimeScaleOpt = 1.0,
    duration: Annotated[Optional[str], typer.Option(
        "--duration", help="Override the measurement window (scenario time, e.g. '10m').")] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", help="Base URL of a running server [default: start the reference server].")] = None,
    out: OutOpt = None,
    processes: ProcessesOpt = None,
    html: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write Locust's own HTML report to this file.", show_default=False)] = None,
    as_json: JsonOpt = False,
    fail_on: FailOnOpt = None,
    gate_on: GateOnOpt = None,
):
    """Load-test one strategy variant over real HTTP with Locust and write a measured run folder."""
    scenario = _scenario(scenario_path, [strategy], users, duration, time_scale)
    gates = read_gates(scenario, fail_on, gate_on)
    out = out or default_out(scenario_path, "loadtest")
    test = _measure(scenario, strategy, time_scale, target, processes, html, quiet=as_json)
    if test.result is None:
        if test.failure:
            raise fail(f"{test.failure} before anything was measured: no run folder was written", code=1)
        raise fail("interrupted before anything was measured: no run folder was written", code=130)
    with atomic_dir(out) as tmp:
        write_measured(test, tmp)
        outcome = check_gates(gates, [("", test.result.aggregate)], tmp, as_json=True)
    row = test.result.aggregate.loc[strategy]
    if as_json:
        from sim.cli import summary_json

        emit_json(summary_json(test.result, out, outcome, partial=test.result.partial))
    else:
        out_console.print(
            f"{strategy}: {int(row['requests'])} requests, refresh rate {_num(row['refresh_rate_per_s'])}/s, "
            f"{int(row['duplicate_tokens'])} duplicates, {int(row['expiry_failures'])} expiry failures, "
            f"{int(row['forced_logins'])} forced logins")
        if outcome is not None:
            out_console.print(gates_table(outcome))
        out_console.print(f"wrote {out}" + (" (partial: interrupted)" if test.interrupted else
                                            f" (partial: {test.failure})" if test.failure else ""))
    if test.interrupted:
        raise typer.Exit(130)
    if test.failure:
        raise fail(f"{test.failure}; {out} is marked partial", code=1)
    gates_exit(outcome)

def validate(
    scenario_path: ScenarioArg,
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", help="Variant(s) to validate [default: all].", show_default=False)] = None,
    time_scale: TimeScaleOpt = VALIDATE_TIME_SCALE,
    out: OutOpt = None,
    processes: ProcessesOpt = None,
    as_json: JsonOpt = False,
):
    """Simulate a scenario and load-test it over real HTTP; print and write how far they agree."""
    scenario = read_scenario(scenario_path)
    names = strategy or scenario.names
    scenario = _scenario(scenario_path, names, None, None, time_scale, scenario)
    out = out or default_out(scenario_path, "validate")
    from sim.cli import simulate

    simulated = simulate(scenario, None, None, False)
    tests: dict[str, LoadTest] = {}
    interrupted = False
    for name in names:
        err_console.print(f"load testing {name} ({scenario.run.end_s / time_scale:.0f} s at time scale {time_scale:g})")
        test = _measure(scenario, name, time_scale, None, processes)
        if test.result is not None:
            tests[name] = test
        if test.interrupted or test.failure:
            interrupted = True
            if test.failure:
                err_console.print(f"{name}: {test.failure}")
            break
    if not tests:
        raise fail("interrupted before anything was measured: no folder was written", code=130)
    rows = pd.concat([compare(simulated, t.result, n) for n, t in tests.items()], ignore_index=True)
    title = (f"{scenario_path.name}: simulated (mean of {scenario.run.replications} replications) "
             f"vs measured (time scale {time_scale:g})")
    with atomic_dir(out) as tmp:
        (tmp / "simulated").mkdir()
        simulated.write_into(tmp / "simulated")
        for name, test in tests.items():
            (tmp / f"measured-{name}").mkdir()
            write_measured(test, tmp / f"measured-{name}")
        write_validation(rows, tmp, title)
        if interrupted:
            (tmp / "PARTIAL").write_text("interrupted: not every variant was measured\n")
    checked = rows["agree"].dropna().astype(bool)
    if as_json:
        from sim.jsonout import records

        emit_json({"out": str(out), "agree": bool(checked.all()), "partial": interrupted, "checks": records(rows)})
    else:
        out_console.print(validation_table(rows, title))
        out_console.print(f"{int(checked.sum())}/{len(checked)} checks agree; wrote {out}")
    if interrupted:
        raise typer.Exit(130)
    if not checked.all():
        raise typer.Exit(1)


def register_loadtest(app: typer.Typer) -> None:
    """Add ``loadtest`` to the console script's Typer ``app`` (entry point)."""
    app.command()(loadtest)


def register_validate(app: typer.Typer) -> None:
    """Add ``validate`` to the console script's Typer ``app`` (entry point)."""
    app.command()(validate)


def _scenario(path: Path, names: list[str], users, duration, time_scale, scenario: Scenario | None = None) -> Scenario:
    scenario = scenario or read_scenario(path)
    for name in names:
        try:
            scenario.variant(name)
        except KeyError as exc:
            raise fail(f"{path}: {exc.args[0]}") from None
    if not time_scale > 0:
        raise fail(f"--time-scale must be > 0, got {time_scale:g}")
    try:
        return effective_scenario(scenario, users, duration)
    except ValueError as exc:
        raise fail(f"--duration: {exc}") from None


def _measure(scenario: Scenario, strategy: str, time_scale: float, target, processes, html=None,
             quiet: bool = False) -> LoadTest:
    try:
        return run_loadtest(scenario, strategy, time_scale=time_scale, target=target, processes=processes,
                            html=html, quiet=quiet)
    except LoadTestError as exc:
        raise fail(str(exc), code=1) from None
