"""A run folder (METRICS.md layout) in memory and on disk.

``summary.csv``, ``timeseries.parquet``, ``latency.parquet`` (the added-latency histogram behind
the percentiles, for CDF charts), optionally ``events.parquet``, ``scenario.resolved.toml`` and
``run.json`` (what produced the folder: simulated or measured, complete or partial).
Folders are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import pandas as pd

from sim.metrics import LATENCY_COLUMNS
from sim.scenario import Scenario, parse_scenario, unresolved


@dataclass
class RunResult:
    """Everything one run produced, one tidy table each.

    ``summary`` holds per-replication rows (``replication`` "0", "1", …) followed by one
    aggregated row per strategy (``replication`` "mean", with ``<metric>_ci95`` columns).
    """

    scenario: Scenario
    summary: pd.DataFrame
    timeseries: pd.DataFrame
    latency: pd.DataFrame
    events: pd.DataFrame | None = None
    kind: Literal["simulated", "measured"] = "simulated"
    partial: bool = False
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def aggregate(self) -> pd.DataFrame:
        """The aggregated rows, indexed by strategy (scenario order)."""
        agg = self.summary[self.summary["replication"] == "mean"].set_index("strategy")
        return agg.reindex([s for s in self.scenario.names if s in agg.index])

    @property
    def replications(self) -> pd.DataFrame:
        """The per-replication rows, ``replication`` as an integer."""
        per = self.summary[self.summary["replication"] != "mean"].copy()
        per["replication"] = per["replication"].astype(int)
        return per.dropna(axis=1, how="all")

    def save(self, out_dir: str | Path) -> Path:
        """Write the run folder atomically; returns its path."""
        with atomic_dir(out_dir) as tmp:
            self.write_into(tmp)
        self.path = Path(out_dir)
        return self.path

    def write_into(self, folder: Path) -> None:
        """Write the files into an existing folder (used inside :func:`atomic_dir`)."""
        self.summary.to_csv(folder / "summary.csv", index=False)
        self.timeseries.to_parquet(folder / "timeseries.parquet", index=False)
        self.latency.to_parquet(folder / "latency.parquet", index=False)
        if self.events is not None:
            self.events.to_parquet(folder / "events.parquet", index=False)
        (folder / "scenario.resolved.toml").write_text(self.scenario.to_toml(), encoding="utf-8")
        meta = {"kind": self.kind, "partial": self.partial, **self.meta}
        (folder / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")


def load_run(path: str | Path) -> RunResult:
    """Read a run folder written by :meth:`RunResult.save` (or by ``refreshlab loadtest``)."""
    path = Path(path)
    if not (path / "summary.csv").is_file():
        raise FileNotFoundError(f"{path}: not a run folder (no summary.csv)")
    scenario_file = path / "scenario.resolved.toml"
    scenario = parse_scenario(tomllib.loads(scenario_file.read_text(encoding="utf-8")), str(scenario_file))
    # the resolved file spells out every server's lifetimes; those equal to [tokens] count as
    # inherited, so that scenario.replace(tokens=...) reaches them as it would from the original
    scenario._written = unresolved(scenario)
    summary = pd.read_csv(path / "summary.csv", dtype={"replication": str})
    meta_file = path / "run.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    events_file = path / "events.parquet"
    latency_file = path / "latency.parquet"
    return RunResult(
        scenario=scenario,
        summary=summary,
        timeseries=pd.read_parquet(path / "timeseries.parquet"),
        latency=pd.read_parquet(latency_file) if latency_file.is_file() else pd.DataFrame(columns=LATENCY_COLUMNS),
        events=pd.read_parquet(events_file) if events_file.is_file() else None,
        kind=meta.pop("kind", "simulated"),
        partial=meta.pop("partial", False),
        meta=meta,
        path=path,
    )


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it replaces ``out_dir``
    in one rename, on failure or interruption it is removed and ``out_dir`` is untouched."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)

