"""A load test's records -> the same tables as a simulated run (METRICS.md).

Inputs: the folder the Locust processes wrote (``client-*.parquet``, ``locust-*.parquet``,
``meta-*.json``, ``counters.json``, see :mod:`loadtests.locustfile`) and, when the target is the
reference server, its ``/ledger?records=1`` answer. Everything is put on one clock: scenario
seconds since the load test's ``t0``.
"""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from loadtests.client import DIRECT_COLUMNS, LOCUST_COLUMNS, RECORD_COLUMNS
from loadtests.server import protocol as p
from sim.engine.recorder import max_valid_per_session
from sim.metrics import EVENT_COLUMNS, Tally, summarize, summary_table
from sim.results import RunResult
from sim.scenario import Scenario


def fetch_json(url: str, timeout_s: float = 30.0) -> dict:
    """GET ``url`` and decode its JSON body (loopback only in this project)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.load(answer)


def reference_server_info(base_url: str) -> dict | None:
    """``/healthz`` of the reference server at ``base_url``, or None when the target is some
    other server (no such endpoint, or not our JSON)."""
    try:
        info = fetch_json(base_url + p.HEALTH_PATH, timeout_s=5.0)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "t0_unix_s" in info and "strategy" in info else None


def fetch_ledger(base_url: str) -> dict | None:
    """The reference server's ``/ledger?records=1`` (None when it does not answer)."""
    try:
        return fetch_json(f"{base_url}{p.LEDGER_PATH}?records=1")
    except (OSError, ValueError):
        return None


class Records:
    """What the Locust processes of one load test wrote into ``folder``.

    ``client``: the client records (:data:`loadtests.client.RECORD_COLUMNS`) with ``t_s`` moved to
    the common clock; ``locust``: Locust's raw request rows; ``t0_unix_s``: the common t0 (the
    earliest process's); ``time_scale``; ``counters``: the custom counters as the master (or the
    only process) summed them, or None."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        metas = {m["pid"]: m for m in (json.loads(f.read_text()) for f in sorted(folder.glob("meta-*.json")))}
        with_users = [m for m in metas.values() if m.get("role") != "master" and m.get("t0_unix_s")]
        if not with_users:
            raise FileNotFoundError(f"{folder}: no records of a load test (meta-*.json)")
        self.t0_unix_s = min(m["t0_unix_s"] for m in with_users)
        self.time_scale = float(with_users[0]["time_scale"])
        self.metas = list(metas.values())
        self.client = self._read(folder, "client", RECORD_COLUMNS, metas)
        self.locust = self._read(folder, "locust", LOCUST_COLUMNS, metas)
        #: the control: added latency of requests that made one attempt and waited for nothing
        self.direct = self._read(folder, "direct", DIRECT_COLUMNS, metas)
        counters_file = folder / "counters.json"
        self.counters = json.loads(counters_file.read_text()) if counters_file.is_file() else None

    def _read(self, folder: Path, prefix: str, columns: list[str], metas: dict) -> pd.DataFrame:
        frames = []
        for f in sorted(folder.glob(f"{prefix}-*.parquet")):
            frame = pd.read_parquet(f)
            meta = metas.get(int(f.stem.split("-")[1]))
            if meta and meta.get("t0_unix_s"):
                frame["t_s"] += (meta["t0_unix_s"] - self.t0_unix_s) * self.time_scale
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def to_common(self, t0_unix_s: float) -> float:
        """Seconds to add to a scenario time whose zero is at epoch ``t0_unix_s``."""
        return (t0_unix_s - self.t0_unix_s) * self.time_scale


def build_events(records: Records, ledger: dict | None, strategy: str,
                 revokes_session_on_reuse: bool = False) -> tuple[pd.DataFrame, str]:
    """The ``events`` table (EVENT_COLUMNS) of a load test, sorted by time, and where its mints
    come from: ``"server"`` (the ledger's mint / reuse / revoke records replace the client's
    view) or ``"client"`` (mints inferred from answers the client received, duplicates from the
    bases it sent, reuse detections from refresh answers, and a ``revoke`` row at a session's
    first refresh refused as revoked or, when the target's server model revokes the session on a
    reuse (``revokes_session_on_reuse``), as reuse)."""
    client = records.client.drop(columns=["expires_s"])
    if ledger is not None and "records" in ledger:
        server = pd.DataFrame(ledger["records"], columns=list(p.RECORD_COLUMNS))
        server["t_s"] = server["t_s"].astype(float) + records.to_common(ledger["t0_unix_s"])
        # the server's own records of mints and re-sent pairs replace what the client inferred
        events = pd.concat([client[~client["event"].isin(["mint", "resent_pair"])], server], ignore_index=True)
        source = "server"
    else:
        if revokes_session_on_reuse:
            client = one_reuse_per_rotated_token(client, records.time_scale)
        rejected = client[(client["event"] == "refresh_end") & (client["outcome"] == "reuse_detected")]
        derived = [rejected.assign(event="reuse_detected", outcome="")]
        # the server revoked a session that refused a refresh as revoked, or (a server model that
        # revokes the family) as reuse: a revoke row at the first such refusal
        gone = ("revoked", "reuse_detected") if revokes_session_on_reuse else ("revoked",)
        refusals = client[(client["event"] == "refresh_end") & client["outcome"].isin(gone)]
        first = refusals.sort_values("t_s", kind="stable").drop_duplicates("session")
        derived.append(first.assign(event="revoke", outcome=""))
        # at one instant, as the server records them: the reuse, the revocation, then the client's rows
        events = pd.concat([*derived, client], ignore_index=True)
        source = "client"
    events.insert(1, "strategy", strategy)
    events.insert(2, "replication", 0)
    events["outcome"] = events["outcome"].fillna("")
    for col in ("user", "tab", "session", "token", "basis"):
        events[col] = _ids(events[col])
    events["latency_ms"] = events["latency_ms"].astype(float)
    return events.sort_values("t_s", kind="stable").reset_index(drop=True)[EVENT_COLUMNS], source


def one_reuse_per_rotated_token(client: pd.DataFrame, time_scale: float) -> pd.DataFrame:
    """The client's refresh answers as a server that revokes the family on a reuse gave them:
    of the refused presentations of a refresh token the client saw rotated, the earliest sent
    was the reuse (it revoked the family) and the others found the family revoked. Needed where
    the server's words do not say (oidc-provider answers every refusal "grant request is
    invalid"): classified as they arrived, a refusal that came back before the rotation's
    answer counted as revoked and every one after it as reuse."""
    ends = client["event"] == "refresh_end"
    rotated = set(client.loc[ends & (client["outcome"] == "ok"), "token"])
    refused = client[ends & client["outcome"].isin(["reuse_detected", "revoked"]) & client["token"].isin(rotated)]
    if refused.empty:
        return client
    sent_s = refused["t_s"] - refused["latency_ms"].fillna(0.0) / 1000.0 * time_scale
    first = refused.assign(sent_s=sent_s).sort_values("sent_s", kind="stable").drop_duplicates("token").index
    client = client.copy()
    client.loc[refused.index, "outcome"] = "revoked"
    client.loc[first, "outcome"] = "reuse_detected"
    return client


def _ids(values: pd.Series) -> pd.Series:
    """Integer ids where every id is a whole number (the reference server's), text otherwise."""
    text = values.astype("string")
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().sum() == text.notna().sum() and (numbers.dropna() % 1 == 0).all():
        return numbers.astype("Int64")
    return text


def build_tally(records: Records, events: pd.DataFrame, ledger: dict | None) -> Tally:
    """A :class:`~sim.metrics.Tally` of the load test: counts and request latencies from
    ``events``; exposure and active users from the client's logins and logouts; most valid tokens
    per session from the access tokens the client received; auth-tier busy and queued time per
    second and every call's wait for a worker from the ledger when there is one."""
    tally = Tally.from_events(events)
    client = records.client
    logouts = client[client["event"] == "logout"]
    tally.exposure_t_s.extend(logouts["t_s"].to_numpy(float))
    tally.exposure_s.extend(np.maximum(0.0, (logouts["expires_s"] - logouts["t_s"]).fillna(0.0)).to_numpy(float))
    visits = client[(client["event"] == "login") & (client["outcome"] == "visit")]
    for t in visits["t_s"].to_numpy(float):
        tally.active_users_delta[int(t)] += 1
    for t in logouts["t_s"].to_numpy(float):
        tally.active_users_delta[int(t)] -= 1
    minted = client[(client["event"] == "mint") & client["outcome"].str.startswith("access")]
    tokens = [SimpleNamespace(kind="access", session=s, issued_at_s=t, expires_at_s=e)
              for s, t, e in zip(pd.factorize(minted["session"])[0], minted["t_s"], minted["expires_s"].fillna(math.inf))]
    end = float(client["t_s"].max()) if len(client) else 0.0
    tally.valid_tokens_per_session_max = float(max_valid_per_session(tokens, end)) if tokens else math.nan
    auth = (ledger or {}).get("auth")
    if auth:
        shift = int(round(records.to_common(ledger["t0_unix_s"])))
        tally.auth_busy_s = _shift(auth.get("busy_worker_s", []), shift)
        tally.auth_queue_s = _shift(auth.get("queued_s", []), shift)
        waits = np.asarray(auth.get("queue_waits") or [], float).reshape(-1, 2)
        tally.queue_wait_t_s.extend(waits[:, 0] + records.to_common(ledger["t0_unix_s"]))
        tally.queue_wait_ms.extend(waits[:, 1])
    return tally


def _shift(bins: list[float], by: int) -> np.ndarray:
    values = np.asarray(bins, float)
    if by >= 0:
        return np.concatenate([np.zeros(by), values])
    return values[-by:]


def measured_result(
    scenario: Scenario,
    strategy: str,
    records: Records,
    ledger: dict | None,
    *,
    measured_s: float | None = None,
    partial: bool = False,
    meta: dict | None = None,
    revokes_session_on_reuse: bool = False,
) -> RunResult:
    """The :class:`~sim.results.RunResult` (``kind="measured"``) of one load test of variant
    ``strategy``. ``measured_s``: scenario seconds the test actually ran (a test cut short
    measures a shorter window, and is marked ``partial``); ``revokes_session_on_reuse``: see
    :func:`build_events`."""
    events, source = build_events(records, ledger, strategy, revokes_session_on_reuse)
    tally = build_tally(records, events, ledger)
    run = scenario.run
    window = run.duration_s if measured_s is None else min(run.duration_s, max(measured_s - run.warmup_s, 1.0))
    # the server says how many auth workers all its processes have together (the scenario's
    # per process times its uvicorn workers)
    workers = ((ledger or {}).get("auth") or {}).get("workers") or scenario.auth.workers
    row, series, latency = summarize(
        tally, strategy=strategy, replication=0, users=scenario.population.users,
        warmup_s=run.warmup_s, duration_s=window, workers=workers,
    )
    return RunResult(
        scenario=scenario,
        summary=summary_table(pd.DataFrame([row])),
        timeseries=series,
        latency=latency,
        events=events,
        kind="measured",
        partial=partial or window < run.duration_s,
        meta={"strategies": [strategy], "mints_from": source, "time_scale": records.time_scale,
              "t0_unix_s": records.t0_unix_s, "client_counters": records.counters, **(meta or {})},
    )
