"""Locust users that behave as a scenario's client policy says (``loadtests.client``).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
        --scenario scenarios/validation.toml --strategy dual_token --time-scale 30 \\
        [--records-dir runs/records] [--headless -u 100 -r 100 -t 60s] [--processes 2]

Each Locust user is one scenario user (arrival, tabs, think times, bursts drawn from the
simulator's streams); logins and refreshes appear in Locust's statistics under their own request
types (``login``, ``refresh``), API calls as ``GET``. With ``--records-dir``, every process writes its client records
(``client-*.parquet``), Locust's raw request rows (``locust-*.parquet``) and ``meta-<pid>.json``
there; the master (or the only process) also writes ``counters.json`` with the custom counters
summed over workers, which travel through ``report_to_master`` / ``worker_report``.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import time
from collections import Counter
from pathlib import Path

import gevent
from locust import FastHttpUser, events, task
from locust.runners import MasterRunner, WorkerRunner

from loadtests.client import COUNTERS, LOCUST_COLUMNS, Calls, Population, RecordSink, ScenarioClock, UserDriver
from loadtests.targets.profile import ApiPath, TargetProfile, load_profile, reference_profile
from loadtests.targets.transport import LocustHttp, ProfileTransport
from sim.scenario import ScenarioError, load_scenario

log = logging.getLogger("refreshlab")

T0_MESSAGE = "refreshlab_t0"
#: at the end of a test, the longest wait (wall seconds) for the calls under way: their own
#: timeouts end them sooner, unless a call waits on an earlier one (``network.in_order``)
DRAIN_CAP_S = 20.0


class _State:
    """What this process shares between its users: scenario, variant, clock, sink, counters."""

    scenario = None
    variant = None
    population: Population | None = None
    clock: ScenarioClock | None = None
    sink = RecordSink()
    #: the calls under way in this process's users (drained at the end of the test)
    calls = Calls()
    drain_bound_s = DRAIN_CAP_S
    profile: TargetProfile | None = None
    inject_rtt = False
    locust_rows: list[tuple] = []
    master_counters: Counter = Counter()
    users_started = 0
    #: the counters last logged, so test_stop and quitting do not log the same line twice
    logged: dict | None = None
    stride = 1
    offset = 0


state = _State()


@events.init_command_line_parser.add_listener
def _options(parser):
    group = parser.add_argument_group("refreshlab")
    group.add_argument("--scenario", type=str, default="", help="Scenario file (TOML).")
    group.add_argument("--strategy", type=str, default="", help="Strategy variant (its name in the scenario).")
    group.add_argument("--time-scale", type=float, default=1.0,
                       help="Scenario seconds per wall second; must match the server's.")
    group.add_argument("--records-dir", type=str, default="",
                       help="Folder for client records, Locust request rows and counters.")
    group.add_argument("--target-profile", type=str, default="reference",
                       help="Target profile: a bundled name, a TOML file, or a resolved profile.json "
                            "(default %(default)s).")
    group.add_argument("--inject-rtt", action="store_true",
                       help="Add the scenario's network round trips to every call (scaled by the time scale).")
    group.add_argument("--api-path", type=str, default="",
                       help="Protected path the users call (overrides the profile's API paths).")


@events.init.add_listener
def _init(environment, **kwargs):
    # gevent's loop caches "now" and has not run during the seconds spent importing: a timer armed
    # from that stale time (Locust's --run-time) would end the test seconds early
    gevent.get_hub().loop.update_now()
    options = environment.parsed_options
    if options is None or not getattr(options, "scenario", ""):
        return
    try:
        scenario = load_scenario(options.scenario)
        variant = scenario.variant(options.strategy or scenario.names[0])
    except ScenarioError as exc:
        raise SystemExit(f"refreshlab: {exc.render()}") from None
    except KeyError as exc:
        raise SystemExit(f"refreshlab: {exc.args[0]}") from None
    state.scenario, state.variant = scenario, variant
    state.population = Population(scenario)
    state.clock = ScenarioClock(options.time_scale)
    state.sink = RecordSink(options.records_dir or None)
    try:
        state.profile = _profile(options.target_profile, options.api_path)
    except ScenarioError as exc:
        raise SystemExit(f"refreshlab: {exc.render()}") from None
    state.inject_rtt = bool(options.inject_rtt)
    tls = state.profile.tls
    PolicyUser.insecure = tls.insecure
    if tls.ca_bundle:
        PolicyUser.ssl_context_factory = lambda: ssl.create_default_context(cafile=tls.ca_bundle)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(T0_MESSAGE, _on_t0)
    timeout_s = scenario.network.timeout_s / options.time_scale
    PolicyUser.network_timeout = PolicyUser.connection_timeout = timeout_s
    # a refresh may wait for an earlier API call before its own answer counts: two timeouts
    state.drain_bound_s = min(2 * timeout_s + 5.0, DRAIN_CAP_S)


def _profile(spec: str, api_path: str) -> TargetProfile:
    if spec.endswith(".json"):
        profile = TargetProfile.model_validate(json.loads(Path(spec).read_text()))
    else:
        profile = reference_profile() if spec == "reference" else load_profile(spec)
    if api_path:
        profile = profile.model_copy(update={"api": profile.api.model_copy(update={"paths": [ApiPath(path=api_path)]})})
    return profile


def _on_t0(environment, msg, **kwargs):
    """A worker learns the master's t0 and the user numbering (index = offset + k × stride)."""
    state.clock.t0_unix_s = msg.data["t0"]
    state.stride = max(1, msg.data["workers"])
    state.offset = environment.runner.worker_index
    state.users_started = 0


@events.test_start.add_listener
def _test_start(environment, **kwargs):
    if state.clock is None:
        return
    state.calls.reopen()
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return  # t0 comes from the master
    state.clock.t0_unix_s = time.time()
    state.users_started = 0
    if isinstance(runner, MasterRunner):
        state.master_counters.clear()
        runner.send_message(T0_MESSAGE, {"t0": state.clock.t0_unix_s, "workers": runner.worker_count})


@events.test_stopping.add_listener
def _test_stopping(environment, **kwargs):
    """Before Locust kills its users: no call starts any more, and those under way are answered
    and recorded (bounded), so the records cover the calls the server saw; a call still under
    way at the bound is counted (``unsettled_calls``: the run then does not count)."""
    if state.clock is None:
        return
    left = state.calls.close(state.drain_bound_s)
    if left:
        log.warning("refreshlab: %d calls still under way %g s after the end of the test", left, state.drain_bound_s)
        state.sink.count("unsettled_calls", left)


@events.request.add_listener
def _request(request_type, name, response_time, response_length, exception, start_time=None, **kwargs):
    if state.sink.folder is None or state.clock is None or state.clock.t0_unix_s is None:
        return
    t_s = state.clock.at_unix(start_time) if start_time else math.nan
    state.locust_rows.append((t_s, request_type, name, response_time, response_length,
                              None if exception is None else str(exception)))


@events.report_to_master.add_listener
def _report(client_id, data, **kwargs):
    data["refreshlab"] = state.sink.take_counters()


@events.worker_report.add_listener
def _worker_report(client_id, data, **kwargs):
    state.master_counters.update(data.get("refreshlab", {}))


def _write_out(environment) -> None:
    """Flush this process's rows; the master or the only process also writes ``counters.json``."""
    if state.clock is None:
        return
    sink, runner = state.sink, environment.runner
    sink.flush()
    rows, state.locust_rows = state.locust_rows, []
    sink.write_chunk("locust", LOCUST_COLUMNS, rows)
    role = "master" if isinstance(runner, MasterRunner) else "worker" if isinstance(runner, WorkerRunner) else "local"
    sink.write_meta(role=role, t0_unix_s=state.clock.t0_unix_s, time_scale=state.clock.time_scale,
                    strategy=state.variant.name, worker_index=getattr(runner, "worker_index", 0))
    if role != "worker":
        counters = {k: int(state.master_counters[k] if role == "master" else sink.counters[k]) for k in COUNTERS}
        if counters != state.logged:
            log.info("refreshlab counters: %s", json.dumps(counters))
            state.logged = counters
        if sink.folder is not None:
            sink.folder.mkdir(parents=True, exist_ok=True)
            (sink.folder / "counters.json").write_text(json.dumps({"role": role, **counters}, indent=2) + "\n")


@events.test_stop.add_listener
def _test_stop(environment, **kwargs):
    _write_out(environment)


@events.quitting.add_listener
def _quitting(environment, **kwargs):
    _write_out(environment)


class PolicyUser(FastHttpUser):
    """One scenario user driven by the strategy variant's client policy (``--strategy``)."""

    # a tab's burst and its timer run in parallel on this user's connections
    concurrency = 32

    def on_start(self):
        if state.scenario is None:
            raise SystemExit("refreshlab: pass --scenario FILE (and --strategy NAME) to this locustfile")
        state.clock.start()
        index = state.offset + state.users_started * state.stride
        state.users_started += 1
        transport = ProfileTransport(state.profile, LocustHttp(self.client), self.host)
        self.driver = UserDriver(state.scenario, state.variant, index, transport,
                                 state.clock, state.sink, state.population, state.profile, state.inject_rtt,
                                 state.calls)

    @task
    def live(self):
        self.driver.run()
        # the scenario is over for this user: stay idle until Locust stops the test
        while True:
            gevent.sleep(3600)

    def on_stop(self):
        driver = getattr(self, "driver", None)
        if driver is not None:
            driver.stop()
