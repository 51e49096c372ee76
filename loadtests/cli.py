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
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from loadtests.targets.profile import ApiPath, TargetProfile, load_profile, parse_profile, reference_profile
from sim.cli import (Engine, EngineOpt, FailOnOpt, GateOnOpt, JsonOpt, OutOpt, ScenarioArg, check_gates, default_out,
                     emit_json,
                     err_console, fail, gates_exit, gates_table, out_console, read_gates, read_scenario)
from sim.results import RunResult, atomic_dir
from sim.scenario import Scenario, ScenarioError
from sim.units import format_duration, format_number, parse_duration

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: wall seconds Locust runs past the scenario's end, so the last records are in before it stops
RUN_TIME_MARGIN_S = 2.0
#: the scale ``validate`` uses unless told: a 30-minute scenario in 45 s, see docs/loadtests.md
VALIDATE_TIME_SCALE = 40.0


class RttClock(str, Enum):
    """Which clock validate tells the simulation a load test's round trips on (see ``validate``)."""

    wall = "wall"
    scenario = "scenario"


class RaceWindow(str, Enum):
    """Which race window validate simulates a check-then-write server with."""

    run = "run"
    profile = "profile"


#: the relative difference under which a measured metric agrees with the simulated one
AGREEMENT = 0.10


class LoadTestError(Exception):
    """Locust or the server could not run; the message says which and quotes their output.
    ``code`` is the exit status it means (1: the run failed, 2: bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


#: the share of calls that may fail outside the protocol (no answer, unexpected status, failed
#: logins, crashed user tasks) before a run counts as failed
MAX_ERROR_SHARE = 0.05


@dataclass
class LoadTest:
    """One measured run: what was asked, and what it produced. ``result`` is None only when
    nothing at all was recorded. ``failure`` says why the run does not count (None: it does);
    ``target_lost``: the server stopped answering during the run."""

    scenario: Scenario
    strategy: str
    time_scale: float
    result: RunResult | None
    interrupted: bool
    locust_log: str
    locust_requests: pd.DataFrame | None = None
    locust_stats: pd.DataFrame | None = None
    #: why the run does not count as a measurement (nothing measured, errors beyond the bound); None when it does
    failure: str | None = None
    #: the server stopped answering (or the reference server died) during the run: the folder is partial
    target_lost: bool = False
    findings: list[str] | None = None


def effective_scenario(scenario: Scenario, users: int | None, duration: str | None) -> Scenario:
    """``scenario`` with ``--users`` and ``--duration`` applied; ``ValueError`` for a bad duration."""
    changes: dict = {}
    if users is not None:
        changes["population"] = {"users": users}
    if duration is not None:
        changes["run"] = {"duration_s": parse_duration(duration)}
    return scenario.replace(**changes) if changes else scenario


@contextlib.contextmanager
def _target(scenario_file: Path, strategy: str, time_scale: float, profile: TargetProfile):
    """Yields (base URL, ``died()``: the exit status of a reference server we started that has
    died since, else None)."""
    if profile.base_url:
        yield profile.base_url, lambda: None
        return
    if profile.name != "reference":
        raise LoadTestError(f"target profile {profile.name!r} names no base_url: pass --target URL", code=2)
    from loadtests.server.process import ServerStartError, run_uvicorn_process, free_port, serve_args

    port = free_port()
    try:
        with run_uvicorn_process(serve_args(scenario_file, strategy, time_scale, port=port), port) as (url, server):
            yield url, server.poll
    except ServerStartError as exc:
        raise LoadTestError(f"the reference server did not start: {exc}") from None


def locust_command(scenario_file: Path, strategy: str, url: str, users: int, time_scale: float,
                   run_time_s: float, records: Path, processes: int | None, html: Path | None = None,
                   profile_file: Path | None = None, inject_rtt: bool = False) -> list[str]:
    """The headless Locust command line of a load test. Locust keeps its own exit code on errors
    (1 when a call failed outside the protocol); the caller judges the share."""
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "-u", str(users), "-r", str(max(users, 1)), "--run-time", f"{math.ceil(run_time_s)}s",
        "--scenario", str(scenario_file), "--strategy", strategy, "--time-scale", repr(time_scale),
        "--records-dir", str(records), "--only-summary", "--csv", str(records / "locust"),
    ]
    if profile_file is not None:
        command += ["--target-profile", str(profile_file)]
    if inject_rtt:
        command.append("--inject-rtt")
    if processes and processes > 1:
        command += ["--processes", str(processes)]
    if html is not None:
        command += ["--html", str(html)]
    return command


def run_loadtest(scenario: Scenario, strategy: str, *, time_scale: float, target: str | None = None,
                 processes: int | None = None, quiet: bool = False, html: Path | None = None,
                 profile: TargetProfile | None = None, max_error_share: float = MAX_ERROR_SHARE,
                 inject_rtt: bool | None = None) -> LoadTest:
    """Run one load test of variant ``strategy`` against the target ``profile`` describes (the
    reference server in a child process unless it or ``target`` names a URL).

    A preflight (:mod:`loadtests.targets.preflight`) runs first; Ctrl-C stops Locust early and
    what was measured until then is kept and marked partial. Raises :class:`LoadTestError` when
    the preflight fails or Locust or the server cannot run; a run that measured nothing or
    failed beyond ``max_error_share`` comes back with ``failure`` set. ``inject_rtt``: add the
    scenario's round trips to every call (default: when the target is on this machine)."""
    from loadtests.measure import Records, fetch_ledger, measured_result, reference_server_info
    from loadtests.targets.preflight import PreflightError, preflight, wait_answering
    from loadtests.server import lifecycle

    profile = (profile or reference_profile()).with_target(target)
    users = scenario.population.users
    end_s = scenario.run.end_s
    # the reaper removes the folder and stops the server and Locust even after a kill -9 of this
    # process; SIGTERM stops the run like Ctrl-C
    with tempfile.TemporaryDirectory(prefix="refreshlab-loadtest-") as work, \
            lifecycle.Reaper(work), lifecycle.SigtermAsInterrupt():
        work_dir = Path(work)
        scenario_file = work_dir / "scenario.toml"
        scenario_file.write_text(scenario.to_toml(), encoding="utf-8")
        profile_file = work_dir / "profile.json"
        profile_file.write_text(profile.model_dump_json(by_alias=True), encoding="utf-8")
        records = work_dir / "records"
        records.mkdir()
        log_path = work_dir / "locust.log"
        interrupted = False
        server_died = None
        with _target(scenario_file, strategy, time_scale, profile) as (url, died):
            reference = reference_server_info(url) if profile.ledger else None
            if reference is not None and reference.get("clock", "real") != "real":
                raise LoadTestError(
                    f"{url} runs on a test clock (serve --test-clock): its time stands still, so a load "
                    f"test against it would measure nothing real; serve it without --test-clock", code=2)
            if reference is not None and (reference["strategy"] != strategy
                                          or abs(reference["time_scale"] - time_scale) > 1e-9):
                raise LoadTestError(
                    f"{url} serves strategy {reference['strategy']!r} at time scale {reference['time_scale']:g}, "
                    f"not {strategy!r} at {time_scale:g}")
            try:
                findings = preflight(profile, url, user=users)
            except PreflightError as exc:
                raise LoadTestError(str(exc)) from None
            if not quiet:
                for line in findings.lines():
                    err_console.print(line, highlight=False)
            command = locust_command(scenario_file, strategy, url, users, time_scale,
                                     end_s / time_scale + RUN_TIME_MARGIN_S, records, processes,
                                     Path(html).resolve() if html is not None else None, profile_file,
                                     _loopback(url) if inject_rtt is None else inject_rtt)
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
                        server_died = f"the reference server died during the run (exit status {status})"
                        err_console.print(f"{server_died}: stopping Locust; the measurement is partial")
                        _stop(locust)
                except KeyboardInterrupt:
                    interrupted = True
                    err_console.print("interrupted: stopping Locust and keeping what was measured")
                    _stop(locust)
            elapsed_s = (time.time() - started) * time_scale
            locust_log = log_path.read_text(errors="replace")
            if locust.returncode not in (0, 1, None) and not interrupted and server_died is None:
                raise LoadTestError(f"Locust exited with status {locust.returncode}:\n{_tail(locust_log)}")
            if server_died is None and died() is not None:
                server_died = f"the reference server died during the run (exit status {died()})"
            alive = server_died is None and wait_answering(url, profile)
            ledger = fetch_ledger(url) if reference is not None and alive else None
        try:
            measured = Records(records)
        except FileNotFoundError:
            if interrupted or server_died:
                return LoadTest(scenario, strategy, time_scale, None, interrupted, locust_log,
                                failure=server_died, target_lost=server_died is not None)
            raise LoadTestError(f"Locust wrote no records:\n{_tail(locust_log)}") from None
        measured_s = min(elapsed_s, end_s) if interrupted else None
        if not alive:
            measured_s = _last_answer_s(measured.locust, end_s)
        failure = _judge(measured, max_error_share, alive)
        result = measured_result(
            scenario, strategy, measured, ledger,
            measured_s=measured_s, partial=interrupted or not alive or failure is not None,
            meta={"target": url if target or profile.base_url else "reference server", "profile": profile.name,
                  "users": users, "processes": processes or 1,
                  "status": "failed" if failure else "partial" if interrupted or not alive else "complete",
                  "failure": "; ".join(filter(None, (server_died, failure))) or None,
                  "locust_exit_code": locust.returncode,
                  "preflight": findings.lines(), "preflight_user": findings.user,
                  "preflight_calls": findings.calls,
                  "latency_floor_ms": latency_floor_ms(measured.direct, scenario)},
            revokes_session_on_reuse=profile.revokes_session_on_reuse,
        )
        if failure:
            result.partial = True
        stats = records / "locust_stats.csv"
        return LoadTest(scenario, strategy, time_scale, result, interrupted, locust_log, measured.locust,
                        pd.read_csv(stats) if stats.is_file() else None, failure, not alive, findings.lines())


def latency_floor_ms(direct: pd.DataFrame, scenario: Scenario) -> float | None:
    """The host's own added latency in a load test: the p99 of what requests that made one
    attempt and waited for nothing took beyond their round trip (the model puts them at exactly
    0), over the measured window; None when there was none."""
    added = direct.loc[(direct["t_s"] >= scenario.run.warmup_s) & (direct["t_s"] < scenario.run.end_s), "added_ms"]
    return round(float(np.quantile(added.to_numpy(float), 0.99)), 3) if len(added) else None


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _last_answer_s(rows: pd.DataFrame, end_s: float) -> float:
    """Scenario time of the last call the target answered (how long the measurement lasted)."""
    answered = rows[rows["exception"].isna() | ~rows["exception"].astype(str).str.startswith("no answer")]
    return float(min(answered["t_s"].max(), end_s)) if len(answered) else 0.0


def _judge(measured, max_error_share: float, alive: bool) -> str | None:
    """Why a run does not count as a measurement, or None when it does."""
    counters = measured.counters or {}
    requests = int(counters.get("requests", 0))
    ok = measured.client[(measured.client["event"] == "attempt") & (measured.client["outcome"] == "ok")]
    if requests == 0 or len(ok) == 0:
        logins = int(counters.get("login_failures", 0))
        why = f" ({logins} failed logins)" if logins else ""
        return f"measured nothing: no API call was answered with success{why}"
    if not alive:
        return None  # calls after the target died failed, of course: the run is partial instead
    rows = measured.locust
    calls = len(rows)
    errors = int(rows["exception"].notna().sum()) if calls else 0
    if calls and errors / calls > max_error_share:
        return (f"{errors} of {calls} calls failed outside the protocol ({errors / calls:.1%} > "
                f"{max_error_share:.0%}): no answer or an unexpected status; see locust.log")
    logins = int(counters.get("logins", 0)) + int(counters.get("forced_logins", 0))
    failed_logins = int(counters.get("login_failures", 0))
    if failed_logins and failed_logins / max(logins + failed_logins, 1) > max_error_share:
        return f"{failed_logins} of {logins + failed_logins} logins failed (> {max_error_share:.0%})"
    task_errors = int(counters.get("task_errors", 0))
    if task_errors:
        return f"{task_errors} user tasks crashed; see locust.log"
    unsettled = int(counters.get("unsettled_calls", 0))
    if unsettled:
        return (f"{unsettled} calls still unanswered when the test ended (after waiting for them): the client's "
                "records and the server's may not cover the same calls")
    return None


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
    (folder / "locust.log").write_text(test.locust_log, encoding="utf-8")


# -- validate ---------------------------------------------------------------------------------

#: the relative difference under which a measured added-latency percentile agrees, and the
#: absolute one (ms) under which it agrees whatever the ratio: a load test's own scheduling
#: shows as a fraction of a millisecond where the simulation has exactly 0
LATENCY_AGREEMENT = 0.20
LATENCY_FLOOR_MS = 1.0


def one_more_run(ci95: float, replications: int) -> float:
    """Half-width of the 95% prediction interval for one more run, about the replications' mean,
    from their 95% CI half-width ``ci95`` (``t·sd/√n``): ``t·sd·√(1 + 1/n) = ci95·√(n + 1)``. NaN
    below two replications.

    A load test replays replication 0's users, but not its host: the round trips the simulation
    draws for them come from the measured distribution through a host state of its own, and an
    added-latency percentile is set by the few hundred renewing requests whose round trips that
    state stretches. For that percentile the measurement is one more run, not replication 0
    again; on a busy host the replications' own p99 spreads by 15% or more."""
    if replications < 2 or ci95 != ci95:
        return math.nan
    return ci95 * math.sqrt(replications + 1)

#: (metric, title, how it is compared[, tolerance[, absolute floor]]): "rate" metrics must agree
#: within their relative tolerance (AGREEMENT unless given) or their absolute floor, "count" ones
#: too or inside the simulated 95% CI, "occurs" ones on whether they are above zero, "info" ones
#: are shown only
VALIDATE_METRICS = [
    ("refresh_rate_per_s", "refresh rate /s", "rate"),
    ("expiry_failures_per_request", "expiry failures / request", "rate"),
    ("duplicates_occur", "duplicates occur", "occurs"),
    ("duplicate_tokens", "duplicate tokens", "info"),
    ("failed_requests_per_request", "failed / request", "info"),
    ("reuse_detections", "reuse detections", "count"),
    ("forced_logins", "forced logins", "count"),
    ("spurious_logouts", "spurious logouts", "count"),
    ("stranded_tokens", "stranded refresh tokens", "count"),
    ("requests", "requests", "info"),
    ("added_latency_ms_p99", "added latency p99 ms", "rate", LATENCY_AGREEMENT, LATENCY_FLOOR_MS),
]
#: how many events a measured count may differ by whatever the ratio, against a third-party
#: server: one run's rare events (none or one of something the model puts at about one per run)
#: are the same finding; a count the model puts at 0 ±0 and a run measures at 2 is not
COUNT_FLOOR = 1.0
#: the checks against a real (third-party) server: every one must agree (``count`` metrics also
#: agree when the measured value lies inside the simulated 95% CI over replications, or within
#: ``COUNT_FLOOR`` events)
TARGET_METRICS = [
    ("refresh_calls", "refresh calls", "count", AGREEMENT, COUNT_FLOOR),
    ("refresh_rate_per_s", "refresh rate /s", "rate"),
    ("expiry_failures_per_request", "expiry 401s / request", "rate"),
    ("reuse_detections", "refused refreshes: reuse", "count", AGREEMENT, COUNT_FLOOR),
    ("expired_refreshes", "refused refreshes: expiry", "count", AGREEMENT, COUNT_FLOOR),
    ("forced_logins", "forced logins", "count", AGREEMENT, COUNT_FLOOR),
    ("duplicate_tokens", "duplicate tokens", "count", AGREEMENT, COUNT_FLOOR),
    ("resent_pairs", "re-sent pairs", "count", AGREEMENT, COUNT_FLOOR),
    ("spurious_logouts", "spurious logouts", "count", AGREEMENT, COUNT_FLOOR),
    ("stranded_tokens", "stranded refresh tokens", "count", AGREEMENT, COUNT_FLOOR),
    ("requests", "requests", "info"),
    ("added_latency_ms_p99", "added latency p99 ms", "info"),
]


#: the checks added when the auth tier sheds (``auth.queue_limit``): the storm's shed refreshes,
#: their retries, the requests that failed when retries ran out and the refresh calls must each
#: lie as close to replication 0 (the replay of the measured users) as two independent simulated
#: runs lie to each other at 95% (``spread``: a storm decides who is shed by milliseconds, so one
#: measured run may differ from the replay of its users as much as another run would);
#: answered auth calls must wait less than the queue bound in both worlds (``bound``)
SHED_METRICS = [
    ("refresh_calls", "refresh calls", "spread"),
    ("unavailable_refreshes", "refreshes shed (503)", "spread"),
    ("retried_refreshes", "refreshes retried after 503", "spread"),
    ("failed_requests", "failed requests", "spread"),
    ("forced_logins", "forced logins", "spread"),
    ("auth_queue_wait_ms_p99", "auth queue wait p99 ms", "bound"),
]


#: wall milliseconds a real server may add to an answered auth call's wait beyond the model's
#: queue bound: its workers' holds overrun the service time by the event loop's lag, and the
#: longest wait is a hold or more. On a 2-core machine shared with other jobs, logins held for a
#: nominal 2.5 ms wall were answered in 8-34 ms and the storm's waits overran the bound by up to
#: 26 ms; counted in scenario time (× time scale)
SCHEDULING_SLACK_WALL_MS = 40.0


def validation_metrics(scenario: Scenario, external: bool) -> list:
    """The rows ``validate`` checks: against the reference server or a third-party one, plus
    :data:`SHED_METRICS` (in place of rows of the same metric) when the auth tier sheds."""
    base = TARGET_METRICS if external else VALIDATE_METRICS
    if scenario.auth.queue_limit is None:
        return base
    shed = {metric for metric, _, _ in SHED_METRICS}
    # a storm's latency is its queue, which the "bound" row checks
    return [row for row in base if row[0] not in shed and row[0] != "added_latency_ms_p99"] + SHED_METRICS


def queue_bound_ms(scenario: Scenario) -> float:
    """The longest an answered auth call can wait for a worker (scenario ms): at most
    ``queue_limit`` calls wait, so one let in finds at most ``queue_limit - 1`` ahead of it and is
    served after ``queue_limit`` departures from ``workers`` workers, each taking at most the
    longest service time (its mean: exact for constant service times, as a storm scenario has
    them); never more than the queue timeout."""
    auth = scenario.auth
    if auth.queue_limit is None:
        return auth.queue_timeout_s * 1000.0
    services = []
    for variant in scenario.strategies:
        server = variant.server
        services.append(auth.login_time_s + auth.sign_time_s * server.mints_per_login())
        services.append(auth.refresh_time_s + auth.verify_time_s + auth.sign_time_s * server.mints_per_refresh())
    rounds = math.ceil(auth.queue_limit / auth.workers)
    return min(rounds * max(services), auth.queue_timeout_s) * 1000.0


def wire_retry_after(scenario: Scenario, time_scale: float) -> tuple[Scenario, str | None]:
    """``scenario`` with ``auth.retry_after`` as the reference server puts it on the wire at
    ``time_scale``: ``Retry-After`` carries whole wall seconds (at least 1), so a load test's
    clients wait ``ceil(retry_after / time_scale) * time_scale`` scenario seconds. Both worlds
    then run the wait the clients will really observe. Returns the scenario and a note saying
    what changed (None when nothing did)."""
    asked = scenario.auth.retry_after_s
    on_wire = max(1, math.ceil(round(asked / time_scale, 9))) * time_scale
    if abs(on_wire - asked) < 1e-9:
        return scenario, None
    note = (f"auth.retry_after: {format_number(asked)} s is {format_number(asked / time_scale)} wall s at time "
            f"scale {time_scale:g}, and Retry-After carries whole seconds (at least 1): both worlds use "
            f"{format_number(on_wire)} s")
    return scenario.replace(auth={"retry_after_s": on_wire}), note


def _derived(row: pd.Series) -> dict[str, tuple[float, float]]:
    """Per metric: (value, 95% CI half-width or NaN) from an aggregated summary row."""
    def ci(col):
        return float(row.get(f"{col}_ci95", math.nan))

    requests = float(row["requests"]) or math.nan
    # every numeric column of the summary row can be a check; derived ratios follow
    out = {col: (float(row[col]), ci(col)) for col in row.index
           if not str(col).endswith("_ci95") and isinstance(row[col], (int, float, np.number)) and not isinstance(row[col], bool)}
    out["expiry_failures_per_request"] = (row["expiry_failures"] / requests, ci("expiry_failures") / requests)
    out["failed_requests_per_request"] = (row["failed_requests"] / requests, ci("failed_requests") / requests)
    out["duplicates_occur"] = (float(row["duplicate_tokens"] > 0), math.nan)
    return out


def compare(simulated: RunResult, measured: RunResult, strategy: str, metrics=None,
            latency_scale: float = 1.0) -> pd.DataFrame:
    """The validation rows of one variant: metric, simulated mean and 95% CI over replications,
    simulated replication 0, measured, relative difference and whether they agree.

    The load test's users make replication 0's draws (same arrivals, think times, bursts), so the
    difference and the verdict pair the measurement with that replication: what remains is the
    model's error, not one sample's luck. The mean and CI show how much replications vary.
    An added-latency percentile also agrees inside the prediction interval of one more run
    (:func:`one_more_run`; ``agreed_by`` is ``"in PI"``): its host is not replayed.

    ``latency_scale``: scenario milliseconds per measured (wall) millisecond of an added latency,
    when the simulation was told the round trips in scenario time (``--rtt-clock scenario``):
    the measured latencies and the host's floor are compared times that."""
    sim_mean = _derived(simulated.aggregate.loc[strategy])
    per = simulated.replications
    n_reps = int((per["strategy"] == strategy).sum())
    bound = queue_bound_ms(simulated.scenario)
    same_users = _derived(per[(per["strategy"] == strategy) & (per["replication"] == 0)].iloc[0])
    meas_row = _derived(measured.aggregate.loc[strategy])
    rows = []
    for metric, title, kind, *rest in metrics or VALIDATE_METRICS:
        tolerance = rest[0] if rest else AGREEMENT
        floor = rest[1] if len(rest) > 1 else 0.0
        by = ""
        (mean, ci), (s, _), (m, _) = sim_mean[metric], same_users[metric], meas_row[metric]
        latency = metric.startswith("added_latency_ms")
        if latency:
            m, floor = m * latency_scale, floor * latency_scale
        if kind == "occurs":
            rel, agree = math.nan, bool((s > 0) == (m > 0))
        elif kind == "spread":
            # the measurement replays replication 0's users, but who a storm sheds is decided by
            # milliseconds of real timing (a busy machine decides them differently): at worst the
            # measurement is another independent run, and two runs differ by t·sd·sqrt(2) at 95%
            # (sd of one replication), which is ci95·sqrt(2n) (as ci95 = t·sd/sqrt(n))
            rel = (m - s) / s if s else (0.0 if m == 0 else math.inf)
            half = ci * math.sqrt(2 * n_reps) if ci == ci else 0.0
            agree = bool(abs(m - s) <= max(half, AGREEMENT * abs(s)))
        elif kind == "bound":
            # the measured waits are scenario time on a real event loop: every wall millisecond a
            # loaded loop adds to a worker's hold counts time-scale times over
            slack = SCHEDULING_SLACK_WALL_MS * float(measured.meta.get("time_scale") or 1.0)
            title = f"{title} (≤ {format_number(bound)}, measured ≤ {format_number(bound + slack)})"
            rel = (m - s) / s if s else (0.0 if m == 0 else math.inf)
            agree = bool(s <= bound * (1 + 1e-9) and m == m and m <= bound + slack)
        else:
            if latency and kind == "rate":
                # the host's own share of a request's time, measured in the same run on requests
                # that waited for nothing: a difference inside it is the host's, not the model's
                host = measured.meta.get("latency_floor_ms")
                if host is not None and host * latency_scale > floor:
                    floor = float(host) * latency_scale
                    title = f"{title} (host floor {format_number(floor)})"
            rel = (m - s) / s if s else (0.0 if m == 0 else math.inf)
            agree = bool(abs(rel) <= tolerance or abs(m - s) <= floor) if kind in ("rate", "count") else None
            if kind == "count" and not agree and ci == ci:
                # a count the replications themselves spread wider than 10%: inside their CI agrees
                agree = bool(abs(m - mean) <= ci)
            elif latency and kind == "rate" and not agree:
                # not paired with replication 0 (see one_more_run): inside where one more
                # simulated run would fall agrees
                interval = one_more_run(ci, n_reps)
                if abs(m - mean) <= interval:
                    agree, by = True, "in PI"
        rows.append({"strategy": strategy, "metric": metric, "title": title, "kind": kind, "tolerance": tolerance,
                     "simulated_mean": mean, "simulated_ci95": ci, "simulated": s, "measured": m,
                     "relative_difference": rel, "agree": agree, "agreed_by": by})
    return pd.DataFrame(rows)


def _cells(r: pd.Series) -> tuple[str, str, str, str, str]:
    """Text of one validation row: simulated mean ±CI, simulated (same users), measured,
    relative difference, agree."""
    if r["kind"] == "count" and r["agree"] and abs(r["relative_difference"]) > r.get("tolerance", AGREEMENT):
        r = r.copy()
        r["agree"] = "in CI"
    elif r.get("agreed_by") == "in PI":
        r = r.copy()
        r["agree"] = "in PI"
    if r["kind"] == "occurs":
        mean, same, meas = _yes(r["simulated_mean"] > 0), _yes(r["simulated"] > 0), _yes(r["measured"] > 0)
    else:
        ci = r["simulated_ci95"]
        mean = _num(r["simulated_mean"]) + (f" ±{_num(ci)}" if ci == ci else "")
        same, meas = _num(r["simulated"]), _num(r["measured"])
    rel = r["relative_difference"]
    rel_text = "" if rel != rel else f"{rel:+.1%}" if math.isfinite(rel) else "∞"
    agree = r["agree"] if isinstance(r["agree"], str) else (
        "" if r["agree"] is None or r["agree"] != r["agree"] else _yes(bool(r["agree"])))
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
        agree = {"yes": "[green]yes[/]", "in CI": "[green]in CI[/]", "in PI": "[green]in PI[/]",
                 "no": "[bold red]no[/]"}.get(agree, agree)
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


TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", help="Base URL of the server [default: the profile's, or start the reference server].")]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--target-profile", help="Target profile: a bundled name (reference, seed, keycloak, auth0, okta, hydra, "
    "spring, simplejwt, ...) or a TOML file [default: the scenario's [target] table, else reference].")]
ApiPathOpt = Annotated[Optional[str], typer.Option("--api-path", help="Protected path to call (overrides the profile).")]
ErrorShareOpt = Annotated[float, typer.Option(
    "--max-error-share", help="Share of calls that may fail outside the protocol before the run counts as failed.",
    min=0.0, max=1.0)]


def loadtest(
    scenario_path: ScenarioArg,
    strategy: StrategyOpt,
    users: Annotated[Optional[int], typer.Option("--users", help="Override the scenario's users.", min=1)] = None,
    time_scale: TimeScaleOpt = 1.0,
    duration: Annotated[Optional[str], typer.Option(
        "--duration", help="Override the measurement window (scenario time, e.g. '10m').")] = None,
    target: TargetOpt = None,
    target_profile: ProfileOpt = None,
    api_path: ApiPathOpt = None,
    out: OutOpt = None,
    processes: ProcessesOpt = None,
    max_error_share: ErrorShareOpt = MAX_ERROR_SHARE,
    html: Annotated[Optional[Path], typer.Option(
        "--html", help="Also write Locust's own HTML report to this file.", show_default=False)] = None,
    as_json: JsonOpt = False,
    fail_on: FailOnOpt = None,
    gate_on: GateOnOpt = None,
):
    """Load-test one strategy variant over real HTTP with Locust and write a measured run folder."""
    scenario = _scenario(scenario_path, [strategy], users, duration, time_scale)
    profile = resolve_profile(scenario_path, scenario, target_profile, api_path)
    if profile.name == "reference" and not (target or profile.base_url):
        scenario, note = wire_retry_after(scenario, time_scale)
        if note and not as_json:
            err_console.print(f"note: {note}", highlight=False)
    gates = read_gates(scenario, fail_on, gate_on)
    out = out or default_out(scenario_path, "loadtest")
    test = _measure(scenario, strategy, time_scale, target, processes, profile, max_error_share, html, quiet=as_json)
    if test.result is None:
        if test.failure:
            raise fail(f"{test.failure} before anything was measured: no run folder was written", code=1)
        raise fail("interrupted before anything was measured: no run folder was written", code=130)
    with atomic_dir(out) as tmp:
        write_measured(test, tmp)
        outcome = None if test.failure else check_gates(gates, [("", test.result.aggregate)], tmp, as_json=True)
    if test.target_lost:
        err_console.print("[bold red]error:[/] the target stopped answering during the run; the folder is partial")
    if test.failure:
        err_console.print(f"[bold red]failed:[/] {test.failure}", highlight=False)
        err_console.print(f"wrote {out} (marked failed in run.json, Locust's log in locust.log)")
        raise typer.Exit(130 if test.interrupted else 1)
    row = test.result.aggregate.loc[strategy]
    if as_json:
        from sim.cli import summary_json

        emit_json(summary_json(test.result, out, outcome, partial=test.result.partial))
    else:
        out_console.print(
            f"{strategy}: {int(row['requests'])} requests, refresh rate {_num(row['refresh_rate_per_s'])}/s, "
            f"{int(row['duplicate_tokens'])} duplicates, {int(row['expiry_failures'])} expiry failures, "
            f"{int(row['forced_logins'])} forced logins")
        counters = test.result.meta.get("client_counters") or {}
        if counters.get("resent_pairs"):
            out_console.print(f"{counters['resent_pairs']} refresh answers re-sent a pair already issued (not mints)")
        if outcome is not None:
            out_console.print(gates_table(outcome))
        reason = "interrupted" if test.interrupted else "the target stopped answering" if test.target_lost else ""
        out_console.print(f"wrote {out}" + (f" (partial: {reason})" if test.result.partial else ""))
    if test.interrupted:
        raise typer.Exit(130)
    if test.target_lost:
        raise typer.Exit(1)
    gates_exit(outcome)


def resolve_profile(scenario_path: Path, scenario: Scenario, spec: str | None, api_path: str | None = None) -> TargetProfile:
    """The target profile of a command: ``--target-profile``, else the scenario's ``[target]``
    table, else the reference server's; exits 2 naming the file and field when it is invalid."""
    try:
        if spec:
            profile = load_profile(spec)
        elif scenario.target is not None:
            profile = parse_profile(scenario.target, str(scenario_path), scenario_path.parent, "target")
        else:
            profile = reference_profile()
    except ScenarioError as exc:
        raise fail(exc.render()) from None
    if api_path:
        profile = profile.model_copy(update={"api": profile.api.model_copy(update={"paths": [ApiPath(path=api_path)]})})
    return profile


def validate(
    scenario_path: ScenarioArg,
    strategy: Annotated[Optional[list[str]], typer.Option(
        "--strategy", help="Variant(s) to validate [default: all].", show_default=False)] = None,
    time_scale: Annotated[Optional[float], typer.Option(
        "--time-scale", help="Scenario seconds per wall second [default: 40 against the reference server, "
        "1 against any other].")] = None,
    target: TargetOpt = None,
    target_profile: ProfileOpt = None,
    out: OutOpt = None,
    processes: ProcessesOpt = None,
    measured_rtt: Annotated[Optional[bool], typer.Option(
        "--measured-rtt/--scenario-rtt", help="Simulate each variant with the round trips its load test measured "
        "(real wall time, unscaled: on loopback the scenario's, slept for real, plus the calls' own time), or "
        "with the scenario's network as written [default: measured, unless the auth tier sheds].",
        show_default=False)] = None,
    rtt_clock: Annotated[RttClock, typer.Option(
        "--rtt-clock", help="(--measured-rtt) Tell the simulation the measured round trips as wall time (wall: "
        "the load test paces page views with them unscaled) or as the scenario time they span (scenario: wall × "
        "time scale; for races of a round trip against a scenario-time clock, e.g. sibling tabs' timers). "
        "With scenario, added latencies are compared in scenario milliseconds, refused calls' round trips are told "
        "from those sent alone and the login lasts as long as measured.")] = RttClock.wall,
    as_json: JsonOpt = False,
    fail_on: FailOnOpt = None,
    gate_on: GateOnOpt = None,
    engine: EngineOpt = Engine.fast,
    browser: Annotated[bool, typer.Option(
        "--browser", help="Validate the SDK presets against the browser lab instead: run each variant's SDK in "
        "headless Chromium (refreshlab browser) and simulate the same set-up; compare refresh calls, same-token "
        "races and logged-out tabs.")] = False,
    tabs: Annotated[Optional[int], typer.Option("--tabs", help="(--browser) tabs per user [default: the "
                                                "scenario's].")] = None,
    users: Annotated[Optional[int], typer.Option("--users", help="(--browser) users, each an independent draw of "
                                                 "the race [default: the scenario's].")] = None,
    throttling: Annotated[str, typer.Option("--throttling", help="(--browser) off or chrome.")] = "off",
    tab_opening: Annotated[str, typer.Option("--tab-opening", help="(--browser) sequential, burst or spaced.")] = "sequential",
    cross_tab_lock: Annotated[bool, typer.Option("--cross-tab-lock", help="(--browser) oidc-client-ts with the app's "
                                                 "cross-tab lock (see refreshlab browser).")] = False,
    lab_run: Annotated[Optional[Path], typer.Option("--lab-run", help="(--browser, one variant) compare this lab run "
                                                    "folder (refreshlab browser --out) instead of running the lab.")] = None,
    race_window: Annotated[RaceWindow, typer.Option(
        "--race-window", help="A check-then-write server (a profile with a race_window): simulate each variant with "
        "the window its own load test met (run: the window moves with the host's load) or the profile's "
        "calibrated one (profile).")] = RaceWindow.run,
):
    """Simulate a scenario and load-test it over real HTTP; print and write how far they agree.

    Against the reference server (the default) both worlds run the scenario's own server models.
    With ``--target-profile`` naming another server, the simulation runs the server model the
    profile names (``server_model``, a preset, with its ``server_settings``) for every variant and
    the load test measures the real server at time scale 1 (its clock is real). Each variant is
    simulated with the round trips its load test measured (``--measured-rtt``, the default; on
    loopback the load test sleeps the scenario's round trips for real), or with the scenario's
    network as written (``--scenario-rtt``).

    With ``--browser``, each variant's SDK runs in the browser lab and the simulator predicts the
    lab's set-up with the SDK's preset (:func:`loadtests.browser_lab.validate_browser`)."""
    scenario = read_scenario(scenario_path)
    if browser:
        _validate_browser(scenario_path, scenario, strategy, tabs, throttling, tab_opening, out, cross_tab_lock, lab_run,
                          users)
        return
    names = strategy or scenario.names
    profile = resolve_profile(scenario_path, scenario, target_profile)
    external = profile.name != "reference" or bool(target or profile.base_url)
    if external and not profile.ledger:
        if time_scale not in (None, 1.0):
            raise fail(f"--time-scale: a third-party server runs on real time; expected 1, got {time_scale:g}")
        time_scale = 1.0
        if not profile.server_model:
            raise fail(f"target profile {profile.name!r}: validate needs server_model (a preset name) to simulate it")
        scenario = with_server_model(scenario, profile.server_model, scenario_path, profile.server_settings)
    time_scale = VALIDATE_TIME_SCALE if time_scale is None else time_scale
    scenario = _scenario(scenario_path, names, None, None, time_scale, scenario)
    if profile.name == "reference":
        scenario, note = wire_retry_after(scenario, time_scale)
        if note:
            err_console.print(f"note: {note}", highlight=False)
    metrics = validation_metrics(scenario, external)
    # the network both worlds see: on loopback the load test sleeps the scenario's round trips for
    # real; the simulation is told the round trips measured (those plus the real ones' own time),
    # unless the auth tier sheds: then a refresh's time is mostly the queue the simulation models
    measured_rtt = (scenario.auth.queue_limit is None) if measured_rtt is None else measured_rtt
    gates = read_gates(scenario, fail_on, gate_on)
    out = out or default_out(scenario_path, "validate")
    from sim.cli import simulate

    # the window of a check-then-write server moves with the host's load: the run's own, when asked
    race_from_run = (race_window is RaceWindow.run and external and not profile.ledger
                     and profile.server_settings.get("race_window") is not None)

    def simulation(told: Scenario | None = None, **network) -> RunResult:
        # the network the simulation sees: the given round trips, and a third-party target's own
        # traits (its profile's network settings, e.g. one event loop answering in order)
        told = told or scenario
        settings = {**network, **(profile.network_settings if external else {})}
        return simulate(told.replace(network=settings) if settings else told, None, None, False,
                        engine=engine.value)

    planned = None if measured_rtt or race_from_run else simulation()
    tests: dict[str, LoadTest] = {}
    interrupted = False
    for name in names:
        err_console.print(f"load testing {name} ({scenario.run.end_s / time_scale:.0f} s at time scale {time_scale:g})")
        test = _measure(scenario, name, time_scale, target, processes, profile)
        if test.failure or test.target_lost:
            raise fail(f"{name}: the measurement failed: {test.failure or 'the target stopped answering'}", code=1)
        if test.result is not None:
            tests[name] = test
        if test.interrupted or test.failure:
            interrupted = True
            if test.failure:
                err_console.print(f"{name}: {test.failure}")
            break
    if not tests:
        raise fail("interrupted before anything was measured: no folder was written", code=130)
    pooled = pooled_window(tests, time_scale) if external and not profile.ledger else None
    windows = run_race_windows(tests, time_scale, pooled) if race_from_run else {}
    for name in tests if race_from_run else ():
        whose = windows[name][1] if name in windows else "the profile's race window (no token was presented twice)"
        err_console.print(f"{name}: simulated with {whose}", highlight=False)

    def told(name: str) -> Scenario:
        return with_race_window(scenario, name, windows[name][0]) if name in windows else scenario

    # at time scale s a round trip slept for real spans s times its length in scenario time: a race
    # between it and a scenario-time clock (a sibling tab's timer) is s times wider measured
    clock_scale = time_scale if measured_rtt and rtt_clock is RttClock.scenario else 1.0

    def replay(name: str, test: LoadTest) -> RunResult:
        if not measured_rtt:
            return simulation(told(name))
        network = round_trips(test, clock_scale)
        login = told_login_time(test, network, clock_scale) if clock_scale != 1.0 else None
        return simulation(told(name).replace(auth={"login_time": login}) if login else told(name), **network)

    sims = {n: planned if planned is not None else replay(n, t) for n, t in tests.items()}
    rows = pd.concat([compare(sims[n], t.result, n, metrics, clock_scale) for n, t in tests.items()],
                     ignore_index=True)
    model = f", server model {profile.server_model}" if external and profile.server_model else ""
    title = (f"{scenario_path.name}: simulated (mean of {scenario.run.replications} replications{model}) "
             f"vs measured ({profile.name if external else 'reference server'}, time scale {time_scale:g})")
    if measured_rtt:
        title += ", simulated with the measured round trips"
        if clock_scale != 1.0:
            title += f" in scenario time (× {time_scale:g}; added latency in scenario ms)"
    race = _race_window(pooled)
    for name, test in tests.items():
        kept, could = answer_order(test.result.events, time_scale)
        if could:
            err_console.print(f"{name}: {kept} of {could} refreshes sent while an earlier API call of the same user "
                              "was unanswered came back after it (network.in_order "
                              f"{'on' if sims[name].scenario.network.in_order else 'off'} in the simulation)",
                              highlight=False)
    with atomic_dir(out) as tmp:
        if planned is not None:
            (tmp / "simulated").mkdir()
            planned.write_into(tmp / "simulated")
        for name, test in tests.items():
            if planned is None:
                (tmp / f"simulated-{name}").mkdir()
                sims[name].write_into(tmp / f"simulated-{name}")
            (tmp / f"measured-{name}").mkdir()
            write_measured(test, tmp / f"measured-{name}")
        write_validation(rows, tmp, title)
        outcome = check_gates(gates, [
            ("simulated", pd.concat([sims[n].aggregate.loc[[n]] for n in tests])),
            ("measured", pd.concat([t.result.aggregate.loc[[n]] for n, t in tests.items()])),
        ], tmp, as_json=True)
        if race is not None:
            (tmp / "race_window.toml").write_text(race + "\n", encoding="utf-8")
        if interrupted:
            (tmp / "PARTIAL").write_text("interrupted: not every variant was measured\n")
    checked = rows["agree"].dropna().astype(bool)
    if as_json:
        from sim.jsonout import records

        from sim.gates import to_json

        emit_json({"out": str(out), "agree": bool(checked.all()), "partial": interrupted, "checks": records(rows),
                   **({"gates": to_json(outcome)} if outcome is not None else {})})
    else:
        out_console.print(validation_table(rows, title))
        if outcome is not None:
            out_console.print(gates_table(outcome))
        out_console.print(f"{int(checked.sum())}/{len(checked)} checks agree; wrote {out}")
    if interrupted:
        raise typer.Exit(130)
    if not checked.all():
        raise typer.Exit(1)
    gates_exit(outcome)


#: quantiles of the measured round trips the simulation is told
RTT_QUANTILES = 50


def _validate_browser(scenario_path, scenario, strategy, tabs, throttling, tab_opening, out, lock=False,
                      lab_run=None, users=None) -> None:
    from loadtests.browser_lab import LabError, validate_browser

    if throttling not in ("off", "chrome"):
        raise fail(f"--throttling: expected off or chrome, got {throttling!r}")
    if tab_opening not in ("sequential", "burst", "spaced"):
        raise fail(f"--tab-opening: expected sequential, burst or spaced, got {tab_opening!r}")
    names = strategy or scenario.names
    for name in names:
        try:
            scenario.variant(name)
        except KeyError as exc:
            raise fail(f"{scenario_path}: {exc.args[0]}") from None
    if lab_run is not None and len(names) != 1:
        raise fail("--lab-run: name the one variant it measured with --strategy")
    out = out or default_out(scenario_path, "validate-browser")
    try:
        agreed = validate_browser(scenario_path, scenario, names, tabs, throttling, tab_opening, out, lock=lock,
                                  lab_run=lab_run, users=users)
    except LabError as exc:
        raise fail(str(exc), code=exc.code) from None
    out_console.print(f"wrote {out}")
    if not agreed:
        raise typer.Exit(1)


def round_trips(test: LoadTest, clock_scale: float = 1.0) -> dict:
    """The round trips a load test met, as ``[network]`` fields (scenario distributions of
    ``RTT_QUANTILES`` quantiles weighted equally): ``rtt`` from its API attempts, ``auth_rtt``
    from its refresh calls less the scenario's refresh service time (which the simulation adds),
    and, when at least ``MIN_REFUSED`` refresh calls were refused, ``auth_rtt`` from the granted
    ones and ``auth_rtt_refused`` from the refused ones (a server that refuses before it writes
    answers sooner) — on the scenario clock from those sent alone when ``MIN_REFUSED`` were
    (:func:`refusals_sent_alone`). Latencies are real wall time, counted unscaled like every real
    round trip, or times ``clock_scale`` (the time scale: the scenario time they spanned,
    ``--rtt-clock scenario``), and so is the correlation time."""
    events = test.result.events

    def quantiles(event: str, less_s: float = 0.0, outcomes=None) -> dict | None:
        rows = events[events["event"] == event]
        if outcomes is not None:
            rows = rows[rows["outcome"].astype(str).isin(outcomes)]
        spans_s = rows["latency_ms"].dropna().to_numpy(float) / 1000.0 * clock_scale
        return empirical(spans_s, less_s) if len(spans_s) else None

    rtt = quantiles("attempt")
    if rtt is None:
        raise fail(f"{test.strategy}: no API attempt was timed; cannot tell the simulation its round trips", code=1)
    from sim.strategies.service import ServiceTimes

    service_s = ServiceTimes(test.scenario.auth, test.scenario.variant(test.strategy).server).refresh_mean_s
    network = {"rtt": rtt}
    correlated = rtt_correlation(events, getattr(test, "time_scale", 1.0))
    if correlated is not None:
        network["rtt_correlation"], tau_s = correlated
        network["rtt_correlation_time"] = f"{tau_s * clock_scale * 1000:g}ms"
    refreshes = events[events["event"] == "refresh_end"]
    outcomes = refreshes["outcome"].astype(str)
    refused = outcomes.isin(REFUSED_OUTCOMES)
    if int(refused.sum()) >= MIN_REFUSED and (outcomes == "ok").any():
        refusals = quantiles("refresh_end", service_s, REFUSED_OUTCOMES)
        if clock_scale != 1.0:
            # a refusal sent together with a sibling's call lost that race by its round trip: the
            # burst's slowest calls, a selection the simulation's own race makes again; the
            # server's refusals themselves are those sent alone (see refusals_sent_alone)
            alone = refusals_sent_alone(events, getattr(test, "time_scale", 1.0))
            if len(alone) >= MIN_REFUSED:
                refusals = empirical(alone / 1000.0 * clock_scale, service_s)
        return {**network, "auth_rtt": quantiles("refresh_end", service_s, ("ok",)), "auth_rtt_refused": refusals}
    return {**network, "auth_rtt": quantiles("refresh_end", service_s) or rtt}


def empirical(spans_s: np.ndarray, less_s: float = 0.0) -> dict:
    """A scenario distribution of ``RTT_QUANTILES`` quantiles of ``spans_s`` (seconds), each less
    ``less_s`` and at least 0, weighted equally."""
    q = np.quantile(spans_s, (np.arange(RTT_QUANTILES) + 0.5) / RTT_QUANTILES)
    return {"dist": "empirical", "values": [max(float(v) - less_s, 0.0) for v in q]}


def refusals_sent_alone(events: pd.DataFrame, time_scale: float = 1.0) -> np.ndarray:
    """The wall round trips (ms) of refused refresh calls that no other refresh call of the same
    user was sent within ``TOGETHER_S`` wall seconds of. A refusal sent together with siblings
    (a page opening in several tabs, each renewing) was refused because a sibling reached the
    server first: it is the slower part of its burst, and a simulation told it draws that
    slowness for every refusal, also for the lone late presentation of a multi-tab race. Send
    times are answer times less the wall round trip (× ``time_scale``)."""
    calls = events.loc[(events["event"] == "refresh_end") & events["latency_ms"].notna(),
                       ["user", "t_s", "latency_ms", "outcome"]]
    sent_s = (calls["t_s"] - calls["latency_ms"] * (time_scale / 1000.0)).to_numpy(float)
    users = pd.factorize(calls["user"])[0]
    order = np.lexsort((sent_s, users))
    users, sent = users[order], sent_s[order]
    near_s = TOGETHER_S * time_scale
    same_before = np.r_[False, users[1:] == users[:-1]]
    same_after = np.r_[users[1:] == users[:-1], False]
    gap_before = np.r_[np.inf, np.diff(sent)]
    gap_after = np.r_[np.diff(sent), np.inf]
    together = (same_before & (gap_before < near_s)) | (same_after & (gap_after < near_s))
    refused = calls["outcome"].astype(str).to_numpy()[order]
    lone = ~together & np.isin(refused, REFUSED_OUTCOMES)
    return calls["latency_ms"].to_numpy(float)[order][lone]


def told_login_time(test: LoadTest, network: dict, clock_scale: float = 1.0) -> dict | None:
    """The ``auth.login_time`` that makes the simulation's login as long as the load test's
    (``--rtt-clock scenario``), or None when fewer than ``MIN_LOGINS`` logins were timed. The
    simulation's login is one auth round trip (``network``'s ``auth_rtt``, else ``rtt``) and the
    login's service; a load test's login, timed until its tokens are stored, also takes the
    host's work on a login and on its answer, which the time scale multiplies (about 7 wall ms
    here, 70 scenario ms at time scale 10: a forced login that ends later sees fewer sibling
    refusals come back after it). The constant told is the median measured login less the median
    told round trip and the signatures a login makes (at least 0)."""
    events = test.result.events
    logins = events.loc[(events["event"] == "login") & events["latency_ms"].notna(), "latency_ms"]
    if len(logins) < MIN_LOGINS:
        return None
    from sim.strategies.service import ServiceTimes

    auth = test.scenario.auth
    signs_s = auth.sign_time_s * ServiceTimes(auth, test.scenario.variant(test.strategy).server).login_mints
    told = network.get("auth_rtt") or network["rtt"]
    extra_s = float(np.median(logins.to_numpy(float))) / 1000.0 * clock_scale - float(np.median(told["values"])) - signs_s
    return {"dist": "constant", "value": f"{max(extra_s, 0.0) * 1000.0:.3f}ms"}


#: refresh outcomes of a call the server refused (``invalid_grant``)
REFUSED_OUTCOMES = ("reuse_detected", "revoked", "expired")
#: refused refresh calls a load test needs before validate tells the simulation their round trips apart
MIN_REFUSED = 20
#: timed logins a load test needs before validate tells the simulation how long a login took
MIN_LOGINS = 20
#: API attempts sent within this many wall seconds of each other were sent together
TOGETHER_S = 0.005
#: wall lags (seconds) over which validate sees how fast the host's state changes
DECAY_LAGS_S = (0.2, 1.0)
#: pairs of attempts sent together a load test needs before validate tells the simulation how alike they were
MIN_PAIRS = 50
#: the most alike validate calls round trips sent together (the last digit it reports): no two
#: calls over a real loopback and event loop take exactly the same time
MAX_RTT_CORRELATION = 0.999


def answer_order(events: pd.DataFrame, time_scale: float = 1.0) -> tuple[int, int]:
    """(kept, could overtake): of the refresh calls a user sent while an API call that user had
    sent earlier was still unanswered, how many came back no earlier than every such call. A
    server that answers in the order calls reach it keeps (nearly) all; independent round trips
    let a quick refresh overtake a slow 401 of the same page view. Answer times are send times
    plus the wall round trips (× ``time_scale``)."""
    attempts = events.loc[(events["event"] == "attempt") & events["latency_ms"].notna(), ["user", "t_s", "latency_ms"]]
    ends = events.loc[(events["event"] == "refresh_end") & events["latency_ms"].notna(), ["user", "t_s", "latency_ms"]]
    scale_s = time_scale / 1000.0
    by_user = {user: (rows["t_s"].to_numpy(float), (rows["t_s"] + rows["latency_ms"] * scale_s).to_numpy(float))
               for user, rows in attempts.groupby("user")}
    kept = could = 0
    for user, end_s, latency_ms in ends.itertuples(index=False):
        if user not in by_user:
            continue
        sent_s, answered_s = by_user[user]
        start_s = end_s - latency_ms * scale_s
        pending = answered_s[(sent_s < start_s) & (answered_s > start_s)]
        if len(pending):
            could += 1
            kept += bool(end_s >= pending.max())
    return kept, could


def rtt_correlation(events: pd.DataFrame, time_scale: float = 1.0) -> tuple[float, float] | None:
    """How alike the round trips of API attempts sent at the same moment were, by anyone
    (``network.rtt_correlation`` ρ), and how fast that fades (``rtt_correlation_time`` τ,
    seconds), from normal scores of the attempts' round trips (ranks mapped through the standard
    normal's quantile function). For unit scores correlated ρ, ``E[(z₁ − z₂)²] = 2(1 − ρ)``: ρ is
    one less half the mean squared difference of the scores of every pair sent within
    ``TOGETHER_S`` wall seconds of each other, and τ fits ``ρ·exp(−Δ/τ)`` to the same at wall lags
    Δ in ``DECAY_LAGS_S``. Differences, not products: calls sent together are sent at busy
    moments, whose scores spread wider than the run's, and a mean product then reads above 1 —
    a correlation of 1 would make the simulation's calls sent together take identical round
    trips, where what decides a race between them is how unlike they are. Round trips are real
    time, unscaled, and so is τ. None with fewer than ``MIN_PAIRS`` pairs sent together, or no
    correlation to speak of (none to tell when every round trip took the same time)."""
    from scipy.special import ndtri

    rows = events.loc[(events["event"] == "attempt") & events["latency_ms"].notna(), ["t_s", "latency_ms"]]
    if len(rows) < 2:
        return None
    rows = rows.sort_values("t_s")
    wall = rows["t_s"].to_numpy(float) / time_scale
    score = ndtri((rows["latency_ms"].rank(method="average").to_numpy() - 0.5) / len(rows))
    spread = np.sqrt(np.mean(score ** 2))
    if not spread > 0:  # every round trip the same (a constant one needs no correlation)
        return None
    score = score / spread
    near = [0.0, 0]
    far = [0.0, 0.0, 0]
    for k in range(1, len(wall)):
        lag = wall[k:] - wall[:-k]
        if lag.min() >= DECAY_LAGS_S[1]:
            break
        squared = (score[k:] - score[:-k]) ** 2
        together = lag < TOGETHER_S
        near[0] += float(squared[together].sum())
        near[1] += int(together.sum())
        decay = (lag >= DECAY_LAGS_S[0]) & (lag < DECAY_LAGS_S[1])
        far[0] += float(squared[decay].sum())
        far[1] += float(lag[decay].sum())
        far[2] += int(decay.sum())
    if near[1] < MIN_PAIRS:
        return None
    rho = min(1.0 - near[0] / near[1] / 2.0, MAX_RTT_CORRELATION)
    if rho < 0.01:
        return None
    if far[2] == 0:
        return round(rho, 3), DECAY_LAGS_S[0]
    c, lag = 1.0 - far[0] / far[2] / 2.0, far[1] / far[2]
    tau = lag / math.log(rho / c) if 0 < c < rho else (60.0 if c >= rho else lag / 5)
    return round(rho, 3), round(min(max(tau, 0.001), 60.0), 3)


#: later presentations of a refresh token (within the window's reach) a variant's load test must
#: have met for validate to simulate that variant with its own window; fewer: the window all the
#: variants met together
MIN_RACE_PRESENTATIONS = 30


def pooled_window(tests: dict[str, "LoadTest"], time_scale: float):
    """The race window all the variants' load tests met together, or None when no refresh token
    was presented twice."""
    return _met_window(pd.concat([t.result.events for t in tests.values()], ignore_index=True), time_scale)


def run_race_windows(tests: dict[str, "LoadTest"], time_scale: float, pooled) -> dict[str, tuple[dict, str]]:
    """Per variant, the race window its load test met (:func:`loadtests.targets.race.window_from_records`),
    as a scenario distribution, and a phrase saying whose: the variant's own when it met at least
    ``MIN_RACE_PRESENTATIONS`` later presentations, else ``pooled``, the window of all the
    variants' load tests together (:func:`pooled_window`); a variant is left out when no refresh
    token was presented twice at all."""
    out = {}
    for name, test in tests.items():
        own = _met_window(test.result.events, time_scale)
        if own is not None and sum(own.counted) >= MIN_RACE_PRESENTATIONS:
            out[name] = (own.window(), f"the race window its own load test met ({sum(own.counted)} later "
                                       f"presentations, {sum(own.passed)} passed)")
        elif pooled is not None:
            out[name] = (pooled.window(), f"the race window the load tests met together ({sum(pooled.counted)} later "
                                          f"presentations, {sum(pooled.passed)} passed)")
    return out


def _met_window(events: pd.DataFrame, time_scale: float):
    """The race window met in ``events`` (one or more variants' records: a token is the same
    only within its variant), or None."""
    from loadtests.targets.race import window_from_records

    events = events.copy()
    events["token"] = events["token"].astype(str) + "@" + events["strategy"].astype(str)
    return window_from_records(events, time_scale=time_scale)


def with_race_window(scenario: Scenario, name: str, window: dict) -> Scenario:
    """``scenario`` with variant ``name``'s server given the race window ``window`` (a scenario
    distribution table, or ``{"dist": "constant", "value": ...}``)."""
    index = [v.name for v in scenario.strategies].index(name)
    value = window["value"] if window.get("dist") == "constant" else window
    try:
        return scenario.with_settings({f"strategies[{index}].server.race_window": value},
                                      source=f"race window measured for {name}")
    except ScenarioError as exc:
        raise fail(exc.render()) from None


def _race_window(probe) -> str | None:
    """Print and return the race window the load tests met together (:func:`pooled_window`; the
    profile lines that set it), or None when no refresh token was presented twice."""
    if probe is None:
        return None
    shares = ", ".join(f"{format_duration(o)}: {p}/{c}" for o, p, c in zip(probe.offsets_s, probe.passed, probe.counted) if c)
    err_console.print(f"race window met by the load tests (later presentations that passed, by offset): {shares}",
                      highlight=False)
    return probe.toml()


def with_server_model(scenario: Scenario, preset: str, source: Path, settings: dict | None = None) -> Scenario:
    """``scenario`` with every variant's server replaced by the preset ``preset`` (its lifetimes
    from the scenario's ``[tokens]`` unless the preset sets them), with the profile's
    ``server_settings`` laid over it."""
    from sim.scenario import parse_scenario

    raw = scenario.to_file_dict()
    raw.pop("target", None)
    tokens = raw.get("tokens", {})
    for variant in raw["strategies"]:
        # the scenario's [tokens] describe the deployment measured: they win over the preset's
        variant["server"] = {"preset": preset, **{k: tokens[k] for k in ("access_ttl", "refresh_ttl") if k in tokens},
                             **(settings or {})}
    try:
        return parse_scenario(raw, f"{source} with server model {preset!r}")
    except ScenarioError as exc:
        raise fail(exc.render()) from None


def probe_race(
    target_profile: ProfileOpt = None,
    target: TargetOpt = None,
    trials: Annotated[int, typer.Option("--trials", help="Pairs of presentations per offset.", min=1)] = 20,
    offsets: Annotated[Optional[str], typer.Option(
        "--offsets", help="Comma-separated offsets between the two presentations [default: 0,1ms,2ms,5ms,10ms,20ms,50ms].",
        show_default=False)] = None,
    user: Annotated[int, typer.Option("--user", help="User number to log in as (one the load tests do not use).",
                                      min=0)] = 0,
):
    """Measure a server's race window: present one refresh token twice, the second some
    milliseconds after the first, and print how often both succeed and the ``race_window``
    a target profile should set (``[server_settings]``)."""
    from loadtests.targets.race import DEFAULT_OFFSETS_S, ProbeError
    from loadtests.targets.race import probe_race as run_probe

    try:
        profile = load_profile(target_profile or "reference").with_target(target)
    except ScenarioError as exc:
        raise fail(exc.render()) from None
    if not profile.base_url:
        raise fail("probe-race needs the server's URL: pass --target URL")
    try:
        offsets_s = DEFAULT_OFFSETS_S if offsets is None else tuple(
            0.0 if o.strip() == "0" else parse_duration(o.strip()) for o in offsets.split(","))
    except ValueError as exc:
        raise fail(f"--offsets: {exc}") from None
    if list(offsets_s) != sorted(offsets_s):
        raise fail("--offsets: expected increasing offsets")
    try:
        probe = run_probe(profile, profile.base_url, user=user, trials=trials, offsets_s=offsets_s)
    except ProbeError as exc:
        raise fail(str(exc), code=1) from None
    table = Table(title=f"race window of {profile.name} at {profile.base_url}", title_justify="left")
    for name in ("offset", "pairs", "second passed", "P(window > offset)"):
        table.add_column(name, justify="right")
    for offset, passed, counted, s in zip(probe.offsets_s, probe.passed, probe.counted, probe.survival()):
        table.add_row(format_duration(offset), str(counted), str(passed), f"{s:.2f}")
    out_console.print(table)
    out_console.print(probe.toml(), markup=False, highlight=False, soft_wrap=True)


def register_probe_race(app: typer.Typer) -> None:
    """Add ``probe-race`` to the console script's Typer ``app`` (entry point)."""
    app.command("probe-race")(probe_race)


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


def _measure(scenario: Scenario, strategy: str, time_scale: float, target, processes,
             profile: TargetProfile | None = None, max_error_share: float = MAX_ERROR_SHARE, html=None,
             quiet: bool = False, inject_rtt: bool | None = None) -> LoadTest:
    try:
        return run_loadtest(scenario, strategy, time_scale=time_scale, target=target, processes=processes,
                            profile=profile, max_error_share=max_error_share, html=html, quiet=quiet,
                            inject_rtt=inject_rtt)
    except LoadTestError as exc:
        raise fail(str(exc), code=exc.code) from None
