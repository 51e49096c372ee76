"""Sweeps: one run per combination of scenario settings, every simulation of every point in
parallel, each point's run folder written atomically as soon as it is complete, and a sweep
that stopped half-way resumed without recomputing or duplicating a point.

A sweep folder holds ``sweep.json`` (the sweep's settings, its points and whether it is
complete), one run folder per point and, once every point is there, the sweep report. A point
folder is reused only when its ``scenario.resolved.toml`` is exactly the point's scenario.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sim.results import RunResult, atomic_dir, load_run
from sim.scenario import Scenario, spell

MANIFEST = "sweep.json"


class SweepFolderError(ValueError):
    """The output folder holds something this sweep must not overwrite."""


@dataclass
class Point:
    """One setting of a sweep: its dotted settings, its scenario and its folder name."""

    settings: dict[str, Any]
    scenario: Scenario

    @property
    def label(self) -> str:
        return ",".join(f"{k.split('.')[-1]}={spell(v)}" for k, v in self.settings.items())

    @property
    def folder(self) -> str:
        return "".join(c if c.isalnum() or c in "=,._-" else "_" for c in self.label)


def _manifest(points: list[Point], source: str) -> dict:
    return {
        "kind": "sweep",
        "scenario": source,
        "settings": [{k: v for k, v in p.settings.items()} for p in points],
        "points": [p.folder for p in points],
        "complete": False,
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare(out: Path, points: list[Point], source: str) -> dict[int, RunResult]:
    """Make ``out`` this sweep's folder and return the points already in it (index -> run).

    A new or empty folder becomes a sweep folder; a folder of the same sweep is resumed (its
    left-over partial folders removed); anything else raises :class:`SweepFolderError`."""
    if len({p.folder for p in points}) < len(points):
        raise SweepFolderError("two settings of the sweep give the same folder name")
    manifest = _manifest(points, source)
    out.mkdir(parents=True, exist_ok=True)
    existing = out / MANIFEST
    if existing.is_file():
        try:
            earlier = json.loads(existing.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SweepFolderError(f"{out}: {MANIFEST} is unreadable; choose another --out") from None
        if earlier.get("points") != manifest["points"]:
            raise SweepFolderError(f"{out} holds a different sweep ({', '.join(earlier.get('points', []))}); "
                                   f"choose another --out or remove it")
    elif any(not p.name.startswith(".") for p in out.iterdir()):
        raise SweepFolderError(f"{out} exists and is not a sweep folder; choose another --out")
    for leftover in out.glob(".*.partial-*"):  # a point that was being written when the sweep stopped
        shutil.rmtree(leftover, ignore_errors=True)
    done = {}
    for i, point in enumerate(points):
        folder = out / point.folder
        if (folder / "run.json").is_file():
            earlier = (folder / "scenario.resolved.toml").read_text(encoding="utf-8")
            if earlier != point.scenario.to_toml():
                raise SweepFolderError(f"{folder} holds a run of a different scenario than this sweep's "
                                       f"point {point.label}; choose another --out or remove it")
            done[i] = load_run(folder)
    _write_json(existing, manifest)
    return done


def run_sweep(
    points: list[Point],
    out: Path,
    *,
    source: str = "",
    processes: int | None = None,
    cluster: Any = None,
    on_point: Callable[[Point, RunResult, bool, int, int], None] | None = None,
    engine: str | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> list[RunResult]:
    """Run every point not already in ``out`` (all their simulations in parallel, the biggest
    points first: :func:`~sim.engine.dispatch.longest_first`) and write each point's run folder
    as soon as it is complete. ``on_point(point, result, reused, done, total)`` is called for
    every point, reused ones first; ``progress(done, total)`` as the simulations to run advance
    (as :func:`sim.engine.run` calls it). Returns the runs in point order."""
    from sim.engine import DEFAULT_ENGINE, assemble, jobs_of
    from sim.engine.dispatch import JobsDone, runner_for

    done = prepare(out, points, source)
    report = on_point or (lambda *a: None)
    for k, i in enumerate(sorted(done), 1):
        report(points[i], done[i], True, k, len(points))
    todo = [i for i in range(len(points)) if i not in done]
    jobs = [job for i in todo for job in jobs_of(points[i].scenario, points[i].scenario.names, tag=i, engine=engine)]
    missing = {i: 0 for i in todo}
    for job in jobs:
        missing[job.tag] += 1
    outputs: dict[int, dict] = {i: {} for i in todo}
    if jobs:
        tally = JobsDone(progress, len(jobs)) if progress is not None else None
        with runner_for(jobs, processes=processes, cluster=cluster, progress=tally and tally.moved) as runner:
            runner.submit_all(jobs, group=lambda job: job.tag)
            while runner.pending:
                job, output = runner.next_done()
                if tally is not None:
                    tally.finished(job)
                i = job.tag
                outputs[i][job.key] = output
                missing[i] -= 1
                if missing[i]:
                    continue
                point = points[i]
                result = assemble(point.scenario, point.scenario.names, outputs.pop(i))
                result.meta["sweep_point"] = point.settings
                result.meta["engine"] = engine or DEFAULT_ENGINE
                result.save(out / point.folder)
                done[i] = result
                report(point, result, False, len(done), len(points))
    return [done[i] for i in range(len(points))]


def finish(out: Path, points: list[Point], results: list[RunResult], source: str, report: bool = True) -> None:
    """Write the sweep report into ``out`` (if ``report``) and mark the sweep complete."""
    if report:
        from sim.report import build_report

        with atomic_dir(out / ".report") as tmp:
            build_report(results, tmp)
        staged = out / ".report"
        for item in sorted(staged.iterdir(), key=lambda p: p.name == "report.html"):  # the page last
            target = out / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        staged.rmdir()
    manifest = _manifest(points, source)
    manifest["complete"] = True
    _write_json(out / MANIFEST, manifest)
