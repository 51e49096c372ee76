"""The browser lab: real client SDKs in real Chromium tabs against a real token server.

``refreshlab browser SCENARIO --sdk oidc-client-ts|auth0-spa-js`` starts node-oidc-provider
(``loadtests/browser/provider.mjs``: refresh-token rotation, the scenario's access-token lifetime,
login and consent through its forms, ``offline_access``), then ``loadtests/browser/lab.mjs``, which
bundles a small single-page app per SDK with esbuild, runs headless Chromium through
puppeteer-core, logs each user in, opens its tabs and cues page views drawn from the scenario's
workload (the simulator's own per-tab streams, replication 0). The SDK decides by itself when to
renew; the lab reads every token-endpoint call off the browser's network events.

Two views are merged into one events table (the METRICS.md vocabulary, ``sim.metrics``): the
browser's (what each tab presented and got back, what the SDK reported) and the server's own
log (mints, ``grant.error`` reasons, revocations). A refused refresh is classified by the
server's reason — ``refresh token already used`` is a reuse detection (the grant is revoked),
``not found`` after a revocation is a refresh of a revoked session — and the lab's counts of
token calls must equal the server's log exactly, or the run is marked failed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer

from sim import run as simulate
from sim.cli import OutOpt, ScenarioArg, default_out, err_console, fail, out_console, read_scenario
from sim.engine.streams import TabStreams
from sim.metrics import EVENT_COLUMNS, Tally, summarize, summary_table
from sim.results import RunResult, atomic_dir
from sim.scenario import Scenario, ScenarioError
from sim.units import parse_duration

LAB = Path(__file__).parent / "browser"
#: the client presets of each SDK the lab drives: as its documentation reads, and as the lab's
#: app configures it (the one a lab run's scenario gets)
SDK_PRESETS = {"oidc-client-ts": "oidc-client-ts", "auth0-spa-js": "auth0-spa-js"}
LAB_PRESETS = {"oidc-client-ts": "oidc-client-ts-localstorage", "auth0-spa-js": "auth0-spa-js-localstorage"}
#: target profiles whose server the lab can start and log in to through a browser
BROWSER_PROFILES = ("oidc-provider",)
#: the host counts as busy when the 1-minute load per core or the CPU busy share exceeds these
BUSY_LOAD_PER_CORE = 1.0
BUSY_CPU_SHARE = 0.85
#: at the end of a run, how long the lab waits for the token calls in flight to be answered
DRAIN_BOUND_S = 30.0


class Sdk(str, Enum):
    oidc_client_ts = "oidc-client-ts"
    auth0_spa_js = "auth0-spa-js"


class Throttling(str, Enum):
    off = "off"
    chrome = "chrome"


class TabOpening(str, Enum):
    sequential = "sequential"
    burst = "burst"
    spaced = "spaced"


class LabError(Exception):
    """The lab could not run; ``code`` 2 for bad input or a missing set-up, 1 for a failed run."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def chromium_path() -> str:
    """The Chromium binary: ``REFRESHLAB_CHROMIUM``, else ``chromium`` on the PATH."""
    path = os.environ.get("REFRESHLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise LabError("no Chromium found: install it (Debian: apt-get install chromium) or set REFRESHLAB_CHROMIUM",
                       code=2)
    return path


def lab_ready() -> bool:
    """Whether the lab's npm packages are installed (``npm ci`` in ``loadtests/browser``)."""
    return shutil.which("node") is not None and all(
        (LAB / "node_modules" / pkg).is_dir()
        for pkg in ("oidc-provider", "puppeteer-core", "esbuild", "oidc-client-ts", "@auth0/auth0-spa-js"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabSettings:
    """What one lab run does (the command line over the scenario)."""

    sdk: str
    users: int
    tabs: int
    throttling: str = "off"
    tab_opening: str = "sequential"
    duration_s: float = 150.0
    access_ttl_s: int = 90
    seed: int = 0
    #: (oidc-client-ts) the app's fix: renewals under a cross-tab lock that first re-reads the store
    lock: bool = False


def lab_scenario(scenario: Scenario, sdk: str, users: int | None, tabs: int | None, duration: str | None,
                 source: str) -> tuple[Scenario, LabSettings]:
    """The scenario a lab run measures (one variant, the SDK's, against oidc-provider's model)
    and its settings; :class:`LabError` (code 2) naming what is wrong."""
    try:
        duration_s = parse_duration(duration) if duration is not None else scenario.run.duration_s
    except ValueError as exc:
        raise LabError(f"--duration: {exc}", code=2) from None
    if not 10 <= duration_s <= 3600:
        raise LabError(f"--duration: expected between 10s and 1h of wall time, got {duration_s:g} s", code=2)
    if tabs is None:
        dist = scenario.population.tabs
        if getattr(dist, "dist", "constant") != "constant":
            raise LabError(f"{source}: population.tabs: the lab opens a fixed number of tabs per user; give "
                           "--tabs N or a constant tabs", code=2)
        tabs = int(dist.mean)
    users = users if users is not None else scenario.population.users
    if not 1 <= tabs <= 10:
        raise LabError(f"--tabs: expected 1 to 10 tabs per user (Chromium on a shared machine), got {tabs}", code=2)
    if not 1 <= users <= 10:
        raise LabError(f"--users: expected 1 to 10 users, got {users}", code=2)
    access = scenario.tokens.access_ttl_s
    if access != int(access) or not 61 <= access <= 3600:
        raise LabError(f"{source}: tokens.access_ttl: expected whole seconds between 61s and 1h (both SDKs renew "
                       f"60 s before expiry), got {access:g} s", code=2)
    name = sdk
    try:
        variant = scenario.variant(name).to_file_dict()
    except KeyError:
        variant = {"name": name, "description": f"{sdk} in Chromium against oidc-provider",
                   "client": {"preset": LAB_PRESETS[sdk]}, "server": {"preset": "oidc-provider"}}
    try:
        lab = scenario.replace(strategies=[variant], population={"users": users, "tabs": tabs},
                               run={"duration_s": duration_s, "warmup_s": 0.0, "replications": 1})
    except ScenarioError as exc:
        raise LabError(exc.render(), code=2) from None
    return lab, LabSettings(sdk=sdk, users=users, tabs=tabs, duration_s=duration_s, access_ttl_s=int(access),
                            seed=scenario.run.seed)


def schedule(scenario: Scenario, settings: LabSettings) -> list[list[list[list[float]]]]:
    """Per user and tab, the page views ``[think_s, burst]`` in order: the simulator's own
    draws for that tab (replication 0), as many as the run can use."""
    out = []
    for user in range(settings.users):
        tabs = []
        for tab in range(settings.tabs):
            streams = TabStreams(scenario, settings.seed, 0, user, tab)
            views, total = [], 0.0
            while total < settings.duration_s and len(views) < 10_000:
                think = max(float(streams.think()), 0.5)
                views.append([think, int(streams.burst())])
                total += think
            tabs.append(views)
        out.append(tabs)
    return out


class HostMonitor:
    """Samples the host's load average and CPU busy share (``/proc/stat``) every ``every_s``
    while a run goes on, so that every measurement says how busy the machine was."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def _run(self) -> None:
        last = self._cpu()
        while not self._stop.wait(self.every_s):
            now = self._cpu()
            busy = None
            if last and now and now[0] > last[0]:
                busy = 1.0 - (now[1] - last[1]) / (now[0] - last[0])
            last = now
            self.samples.append({"t": time.time(), "load1": os.getloadavg()[0], "cpu_busy": busy})

    def __enter__(self) -> "HostMonitor":
        self.start_uptime = _uptime()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.end_uptime = _uptime()

    def summary(self) -> dict:
        cores = os.cpu_count() or 1
        loads = [s["load1"] for s in self.samples]
        busy = [s["cpu_busy"] for s in self.samples if s["cpu_busy"] is not None]
        out = {
            "cores": cores, "uptime_start": getattr(self, "start_uptime", None), "uptime_end": getattr(self, "end_uptime", None),
            "load1_mean": float(np.mean(loads)) if loads else None, "load1_max": float(np.max(loads)) if loads else None,
            "cpu_busy_mean": float(np.mean(busy)) if busy else None, "samples": len(self.samples),
        }
        reasons = []
        if loads and np.mean(loads) / cores > BUSY_LOAD_PER_CORE:
            reasons.append(f"load average {np.mean(loads):.2f} on {cores} cores")
        if busy and np.mean(busy) > BUSY_CPU_SHARE:
            reasons.append(f"CPU {100 * np.mean(busy):.0f}% busy")
        out["busy"] = bool(reasons)
        out["busy_reason"] = "; ".join(reasons) or None
        return out


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed process
    return rows


def _wait_line(path: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise LabError(f"{path.name}: the process exited with {process.returncode} before saying "
                           f"{text!r}:\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    raise LabError(f"{path.name}: no {text!r} within {timeout_s:g} s")


def _stop(process: subprocess.Popen | None, timeout_s: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _browser_pid(lab_log: Path) -> int | None:
    """The Chromium process id the lab announced (``lab: browser pid N``), if it did yet."""
    text = lab_log.read_text(errors="replace") if lab_log.is_file() else ""
    if "browser pid " not in text:
        return None
    word = text.split("browser pid ", 1)[1].split()
    return int(word[0]) if word and word[0].isdigit() and int(word[0]) > 0 else None


def _kill_browser(pid: int | None) -> None:
    """Chromium runs in its own process group (puppeteer starts it detached): end it by its id."""
    if not pid:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class LabRun:
    """The raw output of one lab run: the browser's records, the server's log, the host's load."""

    settings: LabSettings
    records: list[dict]
    server: list[dict]
    host: dict
    failure: str | None = None
    interrupted: bool = False
    logs: dict = field(default_factory=dict)


def run_lab(settings: LabSettings, scenario: Scenario, work: Path, quiet: bool = False) -> LabRun:
    """Start the provider and the browser, run the lab, stop both; the records in ``work``."""
    if not lab_ready():
        raise LabError("the browser lab's npm packages are missing: run `npm ci` in loadtests/browser "
                       "(Node 20 and npm needed)", code=2)
    chromium = chromium_path()
    work = work.resolve()  # the lab runs in its own folder
    work.mkdir(parents=True, exist_ok=True)
    port, spa_port = _free_port(), _free_port()
    issuer = f"http://127.0.0.1:{port}/"
    spa = f"http://127.0.0.1:{spa_port}"
    server_events, records = work / "server-events.jsonl", work / "records.jsonl"
    provider_log, lab_log = work / "provider.log", work / "lab.log"
    env = {**os.environ, "LAB_PORT": str(port), "LAB_EVENTS": str(server_events), "LAB_SPA_ORIGIN": spa,
           "LAB_ACCESS_S": str(settings.access_ttl_s)}
    config = {
        "sdk": settings.sdk, "issuer": issuer, "clientId": "refreshlab-spa", "userinfo": f"{issuer}userinfo",
        "tokenEndpoint": f"{issuer}oauth/token", "spaOrigin": spa, "spaPort": spa_port, "records": str(records),
        "users": settings.users, "tabs": settings.tabs, "tabOpening": settings.tab_opening,
        # spaced: the tabs open evenly over one renewal period (access lifetime less the SDKs' 60 s)
        "spacingS": max(settings.access_ttl_s - 60, 1) / max(settings.tabs, 1),
        "durationS": settings.duration_s, "throttling": settings.throttling, "chromium": chromium, "lock": settings.lock,
        "schedule": schedule(scenario, settings),
        # at the end, how long the lab waits for token calls in flight before the run counts as partial
        "drainS": DRAIN_BOUND_S,
    }
    (work / "lab-config.json").write_text(json.dumps(config))
    provider = lab = None
    browser_pid = None
    failure, interrupted = None, False
    with HostMonitor() as host:
        try:
            with open(provider_log, "w") as out:
                provider = subprocess.Popen(["node", str(LAB / "provider.mjs")], env=env, cwd=LAB, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
            (work / "provider.pid").write_text(str(provider.pid))
            _wait_line(provider_log, "listening on", provider, 60)
            with open(lab_log, "w") as out:
                lab = subprocess.Popen(["node", str(LAB / "lab.mjs"), str(work / "lab-config.json")], cwd=LAB,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            # logins and tab openings take a few seconds each on a busy machine
            setup_s = 60 + 15 * settings.users * settings.tabs
            deadline = time.monotonic() + setup_s + settings.duration_s + 60
            while lab.poll() is None:
                browser_pid = browser_pid or _browser_pid(lab_log)
                if provider.poll() is not None:
                    failure = f"the provider exited with {provider.returncode} during the run"
                    break
                if time.monotonic() > deadline:
                    failure = "the lab did not finish in time"
                    break
                time.sleep(0.2)
            if failure is None and lab.returncode not in (0, None):
                failure = f"the lab exited with {lab.returncode}: {_last_line(lab_log)}"
        except KeyboardInterrupt:
            interrupted, failure = True, "interrupted"
        except LabError as exc:
            failure = str(exc)
        finally:
            _stop(lab)
            _kill_browser(browser_pid or _browser_pid(lab_log))
            _stop(provider)
    logs = {name: path.read_text(errors="replace") for name, path in
            (("provider", provider_log), ("lab", lab_log)) if path.is_file()}
    return LabRun(settings, _read_jsonl(records), _read_jsonl(server_events), host.summary(), failure, interrupted, logs)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------
# records -> the events table, merged with the server's own log


def _reason(detail: str | None) -> str:
    """A refused refresh's outcome (METRICS.md) from the server's own reason."""
    detail = (detail or "").lower()
    if "already used" in detail:
        return "reuse_detected"
    if "expired" in detail:
        return "expired"
    return "revoked"  # not found: the token's grant was revoked (or the token destroyed)


@dataclass
class Merged:
    """One lab run's tables: ``events`` (EVENT_COLUMNS), ``calls`` (every token-endpoint call,
    both views side by side), ``tabs`` (per tab), ``browser`` (the lab's own counts) and
    ``agreement`` (the lab's counts against the server's log)."""

    events: pd.DataFrame
    calls: pd.DataFrame
    tabs: pd.DataFrame
    browser: dict
    agreement: dict
    t0: float
    start_s: float
    end_s: float


def merge(run: LabRun, strategy: str) -> Merged:
    """Build the events table of a lab run from both views (see the module's docstring)."""
    recs, server = run.records, run.server
    t_all = [r["t"] for r in recs] + [e["t"] for e in server]
    t0 = min(t_all) if t_all else 0.0
    start = next((r["t"] for r in recs if r.get("kind") == "start"), None)
    end = next((r["t"] for r in recs if r.get("kind") == "end"), None)
    # the server's view: which grant each refresh token belongs to, and every token-endpoint answer
    grant_of: dict = {}
    for e in server:
        if e["event"] == "refresh_token.saved":
            grant_of[e["jti"]] = e["grant"]
    # (grant type, presented digest, success?) -> the server's answers in its order: a lab call is
    # matched to the next answer of its kind (the server may log a refusal before the success of
    # a call that reached it first)
    answers = defaultdict(list)
    for e in server:
        if e["event"] in ("grant.success", "grant.error"):
            answers[(e.get("grant_type"), e.get("presented"), e["event"] == "grant.success")].append(e)
    revoked_at = {e["grant"]: e["t"] for e in server if e["event"] == "grant.revoked"}
    access_grant = {e["jti"]: e["grant"] for e in server if e["event"] == "access_token.saved"}
    access_minted = {e["jti"]: e["t"] for e in server if e["event"] == "access_token.saved"}

    rows: list[dict] = []

    def row(t, event, user=None, tab=None, session=None, token=None, basis=None, outcome="", latency_ms=math.nan):
        rows.append({"t_s": t - t0, "user": user, "tab": tab, "session": session, "event": event, "token": token,
                     "basis": basis, "outcome": outcome, "latency_ms": latency_ms})

    calls = []
    used = Counter()
    presented_ok: set = set()
    expires_in = {}
    for r in sorted((r for r in recs if r.get("kind") == "token_call"), key=lambda r: r["t"]):
        key = (r.get("grant_type"), r.get("presented"), r.get("status") == 200)
        i = used[key]
        used[key] += 1
        mine = answers[key][i] if i < len(answers[key]) else None
        session = grant_of.get(r.get("received")) or grant_of.get(r.get("presented")) or f"user-{r['user']}"
        call = {"t_s": r["t"] - t0, "t_end_s": r.get("t_end", r["t"]) - t0, "user": r["user"], "tab": r["tab"],
                "session": session, "grant_type": r.get("grant_type"), "presented": r.get("presented"),
                "status": r.get("status"), "error": r.get("error"), "server_event": mine["event"] if mine else None,
                "server_detail": mine.get("detail") if mine else None, "received": r.get("received")}
        calls.append(call)
        if r.get("access") and r.get("expires_in") is not None:
            expires_in[r["access"]] = float(r["expires_in"])
        if r.get("grant_type") == "authorization_code":
            row(r["t"], "login", r["user"], r["tab"], session, outcome="visit")
            if r.get("status") == 200:
                row(r["t_end"], "mint", r["user"], r["tab"], session, r.get("access"), None, "access_login")
                row(r["t_end"], "mint", r["user"], r["tab"], session, r.get("received"), None, "refresh_login")
            continue
        if r.get("grant_type") != "refresh_token":
            continue
        presented = r.get("presented")
        row(r["t"], "refresh_start", r["user"], r["tab"], session, presented, presented)
        status = r.get("status")
        if status == 200:
            outcome = "ok"
        elif status == 0:
            outcome = "lost"
        else:
            outcome = _reason(mine.get("detail") if mine else None)
        row(r.get("t_end", r["t"]), "refresh_end", r["user"], r["tab"], session, presented, presented, outcome,
            (r.get("t_end", r["t"]) - r["t"]) * 1000.0)
        if status == 200:
            duplicate = "_duplicate" if presented in presented_ok else ""
            presented_ok.add(presented)
            row(r["t_end"], "mint", r["user"], r["tab"], session, r.get("access"), presented, f"access_refresh{duplicate}")
            row(r["t_end"], "mint", r["user"], r["tab"], session, r.get("received"), presented, "refresh_refresh")
    # the server's reuse detections and revocations
    users_of_grant = {c["session"]: c["user"] for c in calls}
    for e in server:
        if e["event"] == "grant.error" and _reason(e.get("detail")) == "reuse_detected":
            session = grant_of.get(e.get("presented"))
            row(e["t"], "reuse_detected", users_of_grant.get(session), None, session, e.get("presented"))
        elif e["event"] == "grant.revoked":
            row(e["t"], "revoke", users_of_grant.get(e["grant"]), None, e["grant"])
    # page views: one request per API call of the burst (the page does not retry)
    for r in recs:
        if r.get("kind") != "page_view":
            continue
        session = access_grant.get(r.get("access")) or f"user-{r['user']}"
        attempts = r.get("attempts") or []
        token_ms = float(r.get("tokenMs") or 0.0)
        if not attempts:
            for _ in range(int(r.get("burst") or 1)):
                row(r["t"], "request", r["user"], r["tab"], session, r.get("access"), outcome="failed")
            continue
        for a in attempts:
            status = a.get("status")
            if status == 200:
                verdict = "ok"
            elif status == 0:
                verdict = "lost"
            else:
                grant = access_grant.get(r.get("access"))
                minted = access_minted.get(r.get("access"))
                life = expires_in.get(r.get("access"))
                if grant in revoked_at and revoked_at[grant] <= a["t"]:
                    verdict = "invalid"
                elif minted is not None and life is not None and a["t"] >= minted + life:
                    verdict = "expired"
                else:
                    verdict = "invalid"
            row(a["t"], "attempt", r["user"], r["tab"], session, r.get("access"), outcome=verdict)
            row(r["t"], "request", r["user"], r["tab"], session, r.get("access"), outcome="ok" if status == 200 else "failed",
                latency_ms=token_ms if status == 200 else math.nan)
    # a tab the SDK logged out (invalid_grant): the user meets the login page there
    logged_out = {}
    for r in recs:
        if r.get("kind") == "sdk" and r.get("what") == "logged_out" and (r["user"], r["tab"]) not in logged_out:
            logged_out[(r["user"], r["tab"])] = r["t"]
            session = next((c["session"] for c in calls if c["user"] == r["user"]), f"user-{r['user']}")
            row(r["t"], "login", r["user"], r["tab"], session, outcome="forced")
    events = pd.DataFrame(rows, columns=[c for c in EVENT_COLUMNS if c not in ("strategy", "replication")])
    events.insert(1, "strategy", strategy)
    events.insert(2, "replication", 0)
    for col in ("user", "tab"):
        events[col] = pd.array([None if v is None or pd.isna(v) else int(v) for v in events[col]], dtype="Int64")
    for col in ("session", "token", "basis"):
        events[col] = events[col].astype("string")
    events["latency_ms"] = events["latency_ms"].astype(float)
    events = events.sort_values("t_s", kind="stable").reset_index(drop=True)[EVENT_COLUMNS]
    calls_df = pd.DataFrame(calls, columns=["t_s", "t_end_s", "user", "tab", "session", "grant_type", "presented",
                                            "status", "error", "server_event", "server_detail", "received"])
    tabs = _tabs(run, calls_df, logged_out, t0)
    browser = _browser_counts(calls_df, tabs, run)
    agreement = _agreement(calls_df, server)
    return Merged(events, calls_df, tabs, browser, agreement, t0,
                  (start - t0) if start else 0.0, (end - t0) if end else (max(t_all) - t0 if t_all else 0.0))


def same_token_races(calls: pd.DataFrame) -> pd.DataFrame:
    """Refresh calls presenting a refresh token an earlier call already presented, with the gap
    in milliseconds to the first presentation."""
    refresh = calls[calls["grant_type"] == "refresh_token"].sort_values("t_s")
    first = refresh.groupby("presented")["t_s"].transform("min")
    later = refresh[refresh.duplicated("presented", keep="first")].copy()
    later["gap_ms"] = (later["t_s"] - first[later.index]) * 1000.0
    return later


def _tabs(run: LabRun, calls: pd.DataFrame, logged_out: dict, t0: float) -> pd.DataFrame:
    # what each tab was once every tab had opened (the last one opened is in front)
    start = next((r for r in run.records if r.get("kind") == "start"), {})
    shown = iter(start.get("visibility") or [])
    views = Counter((r["user"], r["tab"]) for r in run.records if r.get("kind") == "page_view")
    refresh = calls[calls["grant_type"] == "refresh_token"]
    out = []
    for user in range(run.settings.users):
        for tab in range(run.settings.tabs):
            mine = refresh[(refresh["user"] == user) & (refresh["tab"] == tab)]
            out.append({
                "user": user, "tab": tab, "visibility": next(shown, None),
                "page_views": views[(user, tab)], "refresh_calls": len(mine),
                "refresh_ok": int((mine["status"] == 200).sum()), "invalid_grant": int((mine["error"] == "invalid_grant").sum()),
                "logged_out_s": (logged_out[(user, tab)] - t0) if (user, tab) in logged_out else math.nan,
            })
    return pd.DataFrame(out)


def _browser_counts(calls: pd.DataFrame, tabs: pd.DataFrame, run: LabRun) -> dict:
    refresh = calls[calls["grant_type"] == "refresh_token"]
    races = same_token_races(calls)
    return {
        "sdk": run.settings.sdk, "users": run.settings.users, "tabs": run.settings.tabs,
        "throttling": run.settings.throttling, "tab_opening": run.settings.tab_opening, "cross_tab_lock": run.settings.lock,
        "duration_s": run.settings.duration_s, "access_ttl_s": run.settings.access_ttl_s,
        "refresh_calls": len(refresh), "refresh_ok": int((refresh["status"] == 200).sum()),
        "invalid_grant": int((refresh["error"] == "invalid_grant").sum()),
        "same_token_races": len(races), "race_gap_ms_max": float(races["gap_ms"].max()) if len(races) else math.nan,
        "tabs_logged_out": int(tabs["logged_out_s"].notna().sum()),
        "refresh_calls_per_tab_max": int(tabs["refresh_calls"].max()) if len(tabs) else 0,
        "page_views": int(tabs["page_views"].sum()),
    }


def _agreement(calls: pd.DataFrame, server: list[dict]) -> dict:
    """The lab's token calls against the server's own log: counts per grant type and outcome,
    and the refresh tokens presented (as a multiset). ``exact`` when every one is equal."""
    answered = calls[calls["status"] != 0]
    lab = {
        "refresh_calls": int((answered["grant_type"] == "refresh_token").sum()),
        "refresh_ok": int(((answered["grant_type"] == "refresh_token") & (answered["status"] == 200)).sum()),
        "refresh_refused": int(((answered["grant_type"] == "refresh_token") & (answered["status"] != 200)).sum()),
        "code_exchanges": int((answered["grant_type"] == "authorization_code").sum()),
    }
    grants = [e for e in server if e["event"] in ("grant.success", "grant.error")]
    srv = {
        "refresh_calls": sum(e.get("grant_type") == "refresh_token" for e in grants),
        "refresh_ok": sum(e.get("grant_type") == "refresh_token" and e["event"] == "grant.success" for e in grants),
        "refresh_refused": sum(e.get("grant_type") == "refresh_token" and e["event"] == "grant.error" for e in grants),
        "code_exchanges": sum(e.get("grant_type") == "authorization_code" for e in grants),
    }
    lab_presented = Counter(answered.loc[answered["grant_type"] == "refresh_token", "presented"])
    srv_presented = Counter(e.get("presented") for e in grants if e.get("grant_type") == "refresh_token")
    exact = lab == srv and lab_presented == srv_presented
    return {"exact": bool(exact), "lab": lab, "server": srv, "presented_equal": lab_presented == srv_presented,
            "reuse_detections": sum(e["event"] == "grant.error" and _reason(e.get("detail")) == "reuse_detected" for e in grants),
            "revocations": sum(e["event"] == "grant.revoked" for e in server)}


def lab_result(run: LabRun, scenario: Scenario, strategy: str) -> tuple[RunResult, Merged, str | None]:
    """The measured :class:`RunResult` of a lab run (``kind="measured"``) and its merged tables;
    the third item says why the run does not count (None when it does)."""
    merged = merge(run, strategy)
    failure = run.failure
    if failure is None and merged.browser["page_views"] == 0:
        failure = "no page view was measured"
    unsettled = [r for r in run.records if r.get("kind") == "unsettled"]
    if failure is None and unsettled:
        bound = next((r.get("bound_s") for r in run.records if r.get("kind") == "drained"), None)
        failure = (f"token calls of {len(unsettled)} tab(s) still not answered and recorded {bound or '?'} s after "
                   "the end of the run: the lab's records and the server's log may not cover the same calls")
    if failure is None and not merged.agreement["exact"]:
        failure = (f"the lab's token calls differ from the server's own log: lab {merged.agreement['lab']}, "
                   f"server {merged.agreement['server']}")
    window = max(merged.end_s - merged.start_s, 1.0)
    # the run's window is what the lab measured (from the login to the end), and its variant
    # what it ran, so a report of several lab runs tells them apart by their settings
    measured = scenario.replace(run={"warmup_s": merged.start_s, "duration_s": window},
                                strategies=[lab_variant(scenario, run.settings, strategy)])
    tally = Tally.from_events(merged.events)
    for t in merged.events.loc[(merged.events["event"] == "login") & (merged.events["outcome"] == "visit"), "t_s"]:
        tally.active_users_delta[int(t)] += 1
    row, series, latency = summarize(tally, strategy=strategy, replication=0, users=run.settings.users,
                                     warmup_s=merged.start_s, duration_s=window, workers=1)
    result = RunResult(
        scenario=measured, summary=summary_table(pd.DataFrame([row])), timeseries=series, latency=latency,
        events=merged.events, kind="measured",
        partial=failure is not None or window < run.settings.duration_s * 0.95,
        meta={"strategies": [strategy], "mints_from": "server", "time_scale": 1.0, "t0_unix_s": merged.t0,
              "browser": merged.browser, "server_agreement": merged.agreement, "host": run.host,
              "window_measured": True,
              **({"failure": failure} if failure else {})},
    )
    return result, merged, failure


def write_lab(result: RunResult, merged: Merged, run: LabRun, folder: Path) -> None:
    """The run folder's files: the usual tables plus the lab's own."""
    result.write_into(folder)
    merged.calls.to_parquet(folder / "token_calls.parquet", index=False)
    merged.tabs.to_csv(folder / "browser_tabs.csv", index=False)
    pd.DataFrame([merged.browser]).to_csv(folder / "browser.csv", index=False)
    with open(folder / "server_events.jsonl", "w") as out:
        for e in run.server:
            out.write(json.dumps(e) + "\n")
    with open(folder / "browser_records.jsonl", "w") as out:
        for r in run.records:
            out.write(json.dumps(r) + "\n")
    for name, text in run.logs.items():
        (folder / f"{name}.log").write_text(text)


def measure_into(lab: Scenario, settings: LabSettings, strategy: str, folder: Path, work: Path):
    """Run the lab in the scratch folder ``work`` (removed afterwards, whatever happens) and write
    its run folder ``folder`` atomically: (run, merged, failure). :class:`LabError` (status 1, or
    130 when interrupted) when nothing was measured: then no folder is written."""
    try:
        run, result, merged, failure = measure(lab, settings, strategy, work)
        if result is None:
            raise LabError(f"{failure}: nothing was measured, no run folder was written "
                           f"(lab: {_tail(run.logs.get('lab', ''))})", code=130 if run.interrupted else 1)
        with atomic_dir(folder) as tmp:
            write_lab(result, merged, run, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return run, merged, failure


def load_lab_run(folder: Path) -> LabRun:
    """A lab run as its run folder keeps it (``browser.csv``, ``browser_records.jsonl``,
    ``server_events.jsonl``, ``run.json``): to compare it again without running Chromium."""
    folder = Path(folder)
    if not (folder / "browser.csv").is_file():
        raise LabError(f"{folder}: not a browser lab run folder (no browser.csv)", code=2)
    b = pd.read_csv(folder / "browser.csv").iloc[0]
    settings = LabSettings(sdk=str(b["sdk"]), users=int(b["users"]), tabs=int(b["tabs"]),
                           throttling=str(b["throttling"]), tab_opening=str(b["tab_opening"]),
                           duration_s=float(b["duration_s"]), access_ttl_s=int(b["access_ttl_s"]),
                           lock=bool(b.get("cross_tab_lock", False)))
    meta = json.loads((folder / "run.json").read_text())
    return LabRun(settings, _read_jsonl(folder / "browser_records.jsonl"), _read_jsonl(folder / "server_events.jsonl"),
                  meta.get("host") or {}, meta.get("failure"))


def measure(scenario: Scenario, settings: LabSettings, strategy: str, work: Path, quiet: bool = False):
    """Run the lab and build its result: ``(run, result, merged, failure)``; ``result`` is None
    when nothing at all was recorded."""
    run = run_lab(settings, scenario, work, quiet=quiet)
    if not any(r.get("kind") == "start" for r in run.records):
        return run, None, None, run.failure or "the lab never started its page views"
    result, merged, failure = lab_result(run, scenario, strategy)
    return run, result, merged, failure


def browser(
    scenario_path: ScenarioArg,
    sdk: Annotated[Sdk, typer.Option("--sdk", help="The client SDK the tabs run.", show_default=False)],
    users: Annotated[Optional[int], typer.Option("--users", help="Users, one browser context each [default: the scenario's].")] = None,
    tabs: Annotated[Optional[int], typer.Option("--tabs", help="Tabs per user [default: the scenario's population.tabs].")] = None,
    throttling: Annotated[Throttling, typer.Option(
        "--throttling", help="'chrome': Chrome's own background-tab throttling (hidden tabs' timers aligned to "
        "a 1-second wake-up); 'off': puppeteer's default, throttling disabled.")] = Throttling.off,
    tab_opening: Annotated[TabOpening, typer.Option(
        "--tab-opening", help="Open a user's tabs one after the other as each loads, all at once, or spaced evenly "
        "over one renewal period.")] = TabOpening.sequential,
    duration: Annotated[Optional[str], typer.Option("--duration", help="Wall time of page views, e.g. '150s' "
                                                    "[default: the scenario's run.duration].")] = None,
    target_profile: Annotated[Optional[str], typer.Option(
        "--target-profile", help="The server to start: a target profile with a browser login the lab can script "
        "(oidc-provider).")] = None,
    cross_tab_lock: Annotated[bool, typer.Option(
        "--cross-tab-lock", help="(oidc-client-ts) the app's fix for the hidden-tab collapse: it renews under a Web "
        "Locks lock and first reads the store again, adopting a sibling's fresh token.")] = False,
    out: OutOpt = None,
):
    """Measure a real client SDK in real Chromium tabs against a real token server (oidc-provider)."""
    scenario = read_scenario(scenario_path)
    if cross_tab_lock and sdk is not Sdk.oidc_client_ts:
        raise fail("--cross-tab-lock: only for --sdk oidc-client-ts (auth0-spa-js renews under its own lock)")
    if target_profile is not None and target_profile not in BROWSER_PROFILES:
        raise fail(f"--target-profile: the browser lab can log in through a browser only to "
                   f"{', '.join(BROWSER_PROFILES)}; got {target_profile!r}")
    try:
        lab, settings = lab_scenario(scenario, sdk.value, users, tabs, duration, str(scenario_path))
    except LabError as exc:
        raise fail(str(exc), code=exc.code) from None
    settings.throttling, settings.tab_opening, settings.lock = throttling.value, tab_opening.value, cross_tab_lock
    out = out or default_out(scenario_path, f"browser-{sdk.value}")
    strategy = lab.strategies[0].name
    work = out.parent / f".{out.name}.lab-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    err_console.print(f"browser lab: {sdk.value}, {settings.users} user(s) × {settings.tabs} tab(s), throttling "
                      f"{settings.throttling}, {settings.duration_s:g} s; {_uptime()}", highlight=False)
    try:
        run, merged, failure = measure_into(lab, settings, strategy, out, work)
    except LabError as exc:
        raise fail(str(exc), code=exc.code) from None
    b, host = merged.browser, run.host
    out_console.print(
        f"{strategy}: {b['refresh_calls']} refresh calls ({b['refresh_ok']} ok, {b['invalid_grant']} invalid_grant), "
        f"{b['same_token_races']} same-token races, {b['tabs_logged_out']} of {settings.users * settings.tabs} tabs "
        f"logged out, {b['page_views']} page views; per tab {merged.tabs['refresh_calls'].tolist()}")
    agree = merged.agreement
    out_console.print(f"server log: {agree['server']['refresh_calls']} refresh calls, {agree['reuse_detections']} reuse "
                      f"detections, {agree['revocations']} revocations; lab and server "
                      f"{'agree exactly' if agree['exact'] else 'DIFFER'}")
    load = f"load {host['load1_mean']:.2f} mean / {host['load1_max']:.2f} max on {host['cores']} cores" \
        if host.get("load1_mean") is not None else "load not sampled"
    out_console.print(f"host: {load}; {host.get('uptime_end')}")
    if host.get("busy"):
        err_console.print(f"[bold yellow]warning:[/] the host was busy during the run ({host['busy_reason']}): "
                          "timings, and so races, may reflect the machine rather than the SDK", highlight=False)
    if failure:
        err_console.print(f"[bold red]failed:[/] {failure}", highlight=False)
        err_console.print(f"wrote {out} (marked partial, with the failure, in run.json)")
        raise typer.Exit(130 if run.interrupted else 1)
    out_console.print(f"wrote {out}")


def _tail(text: str, n: int = 5) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


def register(app: typer.Typer) -> None:
    """Add ``browser`` to the console script's Typer ``app`` (entry point)."""
    app.command()(browser)


# ---------------------------------------------------------------------------------------------
# validate --browser: the simulator's presets against what the lab measures

#: the share by which simulated and measured refresh calls may differ
REFRESH_TOLERANCE = 0.10
#: a lab run's outcome (a race, a logout, or none) disagrees with the simulator when fewer than
#: this share of simulated replications had it: a test at that level, so a right simulator is
#: called wrong at most that often
RARE_OUTCOME_SHARE = 0.10


def tab_gap_s(run: LabRun) -> float:
    """The mean gap between the openings of a user's consecutive tabs in a lab run (0 for one tab)."""
    gaps = []
    for user in range(run.settings.users):
        opened = sorted(r["t"] for r in run.records if r.get("kind") == "tab_open" and r["user"] == user)
        gaps += list(np.diff(opened))
    return float(np.mean(gaps)) if gaps else 0.0


def tab_offsets_s(run: LabRun) -> list[float]:
    """When each tab of a user opened after the user's first, averaged over the users of a lab
    run (tabs 1, 2, …): a burst opens several at one instant, which one mean gap would hide."""
    offsets = []
    for user in range(run.settings.users):
        opened = {r["tab"]: r["t"] for r in run.records if r.get("kind") == "tab_open" and r["user"] == user}
        if 0 in opened:
            offsets.append([opened[tab] - opened[0] for tab in range(1, run.settings.tabs) if tab in opened])
    return [float(np.mean([o[i] for o in offsets if i < len(o)])) for i in range(max(map(len, offsets), default=0))]


def lab_login_t(run: LabRun) -> float:
    """The first code exchange's answer (epoch seconds): the lab's counterpart of the simulated login."""
    return min(r.get("t_end", r["t"]) for r in run.records
               if r.get("kind") == "token_call" and r.get("grant_type") == "authorization_code")


def lab_variant(scenario: Scenario, settings: LabSettings, strategy: str) -> dict:
    """The variant ``strategy`` as the lab runs it (file spelling): the SDK's client preset (or
    the variant's own client when it already names that preset) with the lab's cross-tab lock
    and throttling, against oidc-provider's model."""
    variant = scenario.variant(strategy).to_file_dict()
    client = variant["client"] if variant["client"].get("preset") == LAB_PRESETS[settings.sdk] else {
        "preset": LAB_PRESETS[settings.sdk]}
    if settings.lock:
        # the fix: one renewal at a time across tabs, and a tab that waited uses the store's token
        client = {**client, "storage": "shared", "single_flight": True, "cross_tab_lock": True}
    if settings.throttling == "chrome":
        client = {**client, "wake_up": "1s"}
    return {**variant, "client": client, "server": {"preset": "oidc-provider"}}


def simulated_scenario(scenario: Scenario, run: LabRun, strategy: str) -> Scenario:
    """The scenario the simulator predicts a lab run with: the variant's client preset for the
    SDK as the lab runs it (or the variant's own client when it already names that preset),
    oidc-provider's model, the lab's users and tabs, when it opened each tab, Chrome's
    1-second wake-up for hidden tabs when the lab throttled, and the lab's length from the login
    to the end of its page views."""
    settings = run.settings
    end = next(r["t"] for r in run.records if r.get("kind") == "end")
    length = end - lab_login_t(run)
    logins = [r.get("t_end", r["t"]) for r in run.records
              if r.get("kind") == "token_call" and r.get("grant_type") == "authorization_code"]
    return scenario.replace(
        strategies=[lab_variant(scenario, settings, strategy)],
        # users arrive at random over the lab's logins (one after the other), at least one
        # second: the instant's fraction of a second is random, as the lab's login is against
        # whole-second expiries and the browser's wake-up grid
        population={"users": settings.users, "tabs": settings.tabs, "tab_opening_gap": tab_gap_s(run),
                    "tab_opening_offsets": tab_offsets_s(run),
                    "arrival": {"pattern": "ramp", "over": f"{max(max(logins) - min(logins), 1.0):.3f}s"}},
        run={"warmup_s": 0.0, "duration_s": length})


def _sim_counts(events: pd.DataFrame) -> dict:
    """Refresh calls, same-token races, refused refreshes and tabs with a refused refresh, per
    replication, from simulated events (the lab's definitions)."""
    out = []
    for rep, ev in events.groupby("replication"):
        starts = ev[ev["event"] == "refresh_start"].sort_values("t_s")
        races = int(starts.duplicated(["user", "session", "token"]).sum())
        ends = ev[ev["event"] == "refresh_end"]
        refused = ends[ends["outcome"].isin(["reuse_detected", "revoked", "expired"])]
        out.append({"replication": rep, "refresh_calls": len(starts), "same_token_races": races,
                    "refused_refreshes": len(refused),
                    "tabs_logged_out": int(refused.drop_duplicates(["user", "tab"]).shape[0]),
                    "users_logged_out": int(refused["user"].nunique())})
    return pd.DataFrame(out).set_index("replication")


def _lab_counts(run: LabRun, merged: Merged) -> dict:
    login = lab_login_t(run) - merged.t0
    # calls the SDKs started between the end and the lab's stopping new ones are the server's
    # too (so they count in the agreement) but outside the simulated length
    calls = merged.calls[(merged.calls["grant_type"] == "refresh_token") & (merged.calls["t_s"] >= login)
                         & (merged.calls["t_s"] <= merged.end_s)]
    return {"refresh_calls": len(calls), "same_token_races": len(same_token_races(merged.calls)),
            "refused_refreshes": int((calls["status"] != 200).sum()),
            "tabs_logged_out": merged.browser["tabs_logged_out"],
            "users_logged_out": int(merged.tabs.loc[merged.tabs["logged_out_s"].notna(), "user"].nunique()),
            "users": run.settings.users}


def compare_browser(simulated: pd.DataFrame, lab: dict) -> pd.DataFrame:
    """Rows per metric: simulated replication 0 (the lab's page-view draws), the mean and 95% CI
    over replications, the share of replications where it occurs, the lab's measurement, and
    whether they agree: refresh calls within 10% of replication 0 (whose page views are the
    lab's own draws, which decide when auth0-spa-js renews) or of the simulated mean (or inside
    the 95% prediction interval for one more run about it) over the replications whose race
    outcome (a same-token race or none) is the lab's and, among those, whose number of users
    logged out is the lab's when any is (all when none is);
    same-token races and logged-out tabs on whether they occur: the lab's outcome must not be
    rare among the simulated replications (at least ``RARE_OUTCOME_SHARE`` of them had it; a
    race depends on sub-second phases — of the login against whole-second expiries, of the
    browser's wake-up grid — that the lab does not choose, so one lab run is one draw of them)."""
    from scipy import stats

    from loadtests.cli import one_more_run

    rows = []
    # refresh calls differ by whether a race collapsed the session (retries of dead tokens, or
    # none): they are compared among the replications whose race outcome is the lab's and, with
    # several users, as many users logged out as in the lab (a collapsed user renews no more)
    alike = simulated[(simulated["same_token_races"] > 0) == (lab["same_token_races"] > 0)]
    if "users_logged_out" in simulated and "users_logged_out" in lab:
        same_users = alike[alike["users_logged_out"] == lab["users_logged_out"]]
        alike = same_users if len(same_users) else alike
    for metric, kind in (("refresh_calls", "within 10%"), ("same_token_races", "occurs"),
                         ("tabs_logged_out", "occurs"), ("refused_refreshes", "info")):
        values = (alike if metric == "refresh_calls" and len(alike) else simulated)[metric].astype(float)
        n = len(values)
        mean = float(values.mean())
        ci = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        rep0, measured = float(simulated[metric].iloc[0]), float(lab[metric])
        share = float((values > 0).mean())
        if kind == "within 10%":
            # replication 0 clicks like the lab (the same page-view draws); the others show the
            # spread of the phases the lab does not choose, and the lab's phases are one draw of
            # them; one lab run is one more draw, so inside the 95% prediction interval for one
            # more run agrees (a renewal due at the run's last second is in or out by chance)
            rel = min(abs(mean - measured), abs(rep0 - measured)) / max(measured, 1.0)
            agree = rel <= REFRESH_TOLERANCE or abs(mean - measured) <= one_more_run(ci, n)
        elif kind == "occurs":
            # one lab run is one draw: it disagrees when the simulator makes its outcome rare
            rel, agree = math.nan, (share if measured > 0 else 1.0 - share) >= RARE_OUTCOME_SHARE
        else:
            rel, agree = math.nan, None
        rows.append({"metric": metric, "check": kind, "replications": n, "simulated_rep0": rep0, "simulated_mean": mean,
                     "simulated_ci95": ci, "simulated_share": share, "measured": measured,
                     "relative_difference": rel, "agrees": agree})
    rows.append(users_logged_out_check(simulated, lab))
    return pd.DataFrame(rows)


def users_logged_out_check(simulated: pd.DataFrame, lab: dict) -> dict:
    """Each user of a lab run is an independent draw of whether the session collapses (users log
    in seconds apart, so the sub-second phases differ): the share of users logged out, ``k`` of
    ``n`` measured, against the simulated probability ``p`` (users logged out over all simulated
    users). They agree when ``p`` lies inside the exact (Clopper–Pearson) 95% interval of k/n."""
    from scipy import stats

    n, k = int(lab["users"]), int(lab["users_logged_out"])
    p = float(simulated["users_logged_out"].sum() / (n * len(simulated)))
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"metric": "users_logged_out", "check": "binomial 95%", "replications": len(simulated),
            "simulated_rep0": float(simulated["users_logged_out"].iloc[0]), "simulated_mean": p * n,
            "simulated_ci95": math.nan, "simulated_share": p, "measured": float(k),
            "relative_difference": math.nan, "agrees": bool(interval.low <= p <= interval.high),
            "measured_share_low": float(interval.low), "measured_share_high": float(interval.high)}


def validate_browser(scenario_path: Path, scenario: Scenario, strategies: list[str], tabs: int | None,
                     throttling: str, tab_opening: str, out: Path, replications: int = 20, lock: bool = False,
                     lab_run: Path | None = None, users: int | None = None) -> bool:
    """For each variant: run the lab with its SDK, simulate the lab's set-up with the SDK's
    preset, compare; write ``measured-<variant>/``, ``simulated-<variant>/`` and
    ``validation-browser.csv`` / ``.md`` into ``out``. With ``lab_run`` (one variant), the lab
    run already in that folder is compared instead of a new one. Returns whether every check agreed;
    :class:`LabError` when a variant names no SDK or the lab fails."""
    tables, lines = [], []
    out.mkdir(parents=True, exist_ok=True)
    for name in strategies:
        variant = scenario.variant(name)
        sdk = name if name in LAB_PRESETS else next(
            (s for s in LAB_PRESETS if variant.client.preset in (SDK_PRESETS[s], LAB_PRESETS[s])), None)
        if sdk is None:
            raise LabError(f"{scenario_path}: strategy {name!r}: validate --browser needs a variant named after an SDK "
                           f"({', '.join(LAB_PRESETS)}) or using one of their presets", code=2)
        lab, settings = lab_scenario(scenario, sdk, users, tabs, None, str(scenario_path))
        settings.throttling, settings.tab_opening, settings.lock = throttling, tab_opening, lock and sdk == "oidc-client-ts"
        strategy = lab.strategies[0].name
        work = out / f".lab-{name}-{os.getpid()}"
        if lab_run is not None:
            run = load_lab_run(lab_run)
            if run.settings.sdk != sdk:
                raise LabError(f"{lab_run}: a run of {run.settings.sdk}, not of {sdk}", code=2)
            settings = run.settings
            _, merged, failure = lab_result(run, lab, strategy)
        else:
            try:
                run, merged, failure = measure_into(lab, settings, strategy, out / f"measured-{name}", work)
            except LabError as exc:
                raise LabError(f"{name}: {exc}", code=exc.code) from None
        if failure:
            raise LabError(f"{name}: the lab run failed ({failure}); its folder is marked partial")
        predicted = simulated_scenario(scenario.replace(strategies=[variant]), run, variant.name).replace(
            run={"replications": replications})
        sim_run = simulate(predicted, events=True)
        sim_run.save(out / f"simulated-{name}")
        table = compare_browser(_sim_counts(sim_run.events), _lab_counts(run, merged))
        table.insert(0, "strategy", name)
        table.insert(1, "throttling", throttling)
        table.insert(2, "tabs", settings.tabs)
        table.insert(3, "users", settings.users)
        table.insert(4, "cross_tab_lock", settings.lock)
        tables.append(table)
        host = run.host
        lines.append(f"- `{name}`{' with the cross-tab lock' if settings.lock else ''}: {settings.users} user(s) × "
                     f"{settings.tabs} tabs, throttling {settings.throttling}, "
                     f"{settings.duration_s:g} s, tab-opening gap {tab_gap_s(run):.2f} s; host load "
                     f"{host.get('load1_mean') or float('nan'):.2f} mean on {host.get('cores')} cores"
                     + (f" (busy: {host['busy_reason']})" if host.get("busy") else ""))
    rows = pd.concat(tables, ignore_index=True)
    rows.to_csv(out / "validation-browser.csv", index=False)
    md = ["# The simulator's SDK presets against the browser lab", "", *lines, "",
          "| strategy | metric | check | simulated (rep 0) | simulated mean ± 95% CI | share of replications where it occurs | measured | agrees |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        ci = "" if math.isnan(r.simulated_ci95) else f" ± {r.simulated_ci95:.2f}"
        agrees = "" if r.agrees is None else ("yes" if r.agrees else "**no**")
        measured = f"{r.measured:g}"
        if r.metric == "users_logged_out":
            measured += f" of {r.users} (95% CI {100 * r.measured_share_low:.0f}–{100 * r.measured_share_high:.0f}%)"
        md.append(f"| {r.strategy} | {r.metric} | {r.check} | {r.simulated_rep0:g} | {r.simulated_mean:.2f}{ci} | "
                  f"{100 * r.simulated_share:.0f}% | {measured} | {agrees} |")
    (out / "validation-browser.md").write_text("\n".join(md) + "\n")
    out_console.print("\n".join(md))
    return bool(rows["agrees"].dropna().astype(bool).all())
