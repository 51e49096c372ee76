"""Chart 6, a sweep: several runs that differ in some scenario fields, the headline measures
plotted against what was varied, one line per variant."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from sim.report import style
from sim.report.measures import SWEEP, Measure, measure_table, resolve
from sim.results import RunResult
from sim.units import parse_duration


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested scenario dict as ``{"population.users": 100, "strategies[0].name": …}``."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def varied_fields(results: list[RunResult]) -> dict[str, list[Any]]:
    """Scenario fields (file spelling, dotted paths) whose values differ between the runs, each
    with its value per run (None where a run lacks the field); descriptions are ignored."""
    flat = [flatten(r.scenario.to_file_dict()) for r in results]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    varied = {}
    for key in keys:
        if key.split(".")[-1] == "description":
            continue
        values = [f.get(key) for f in flat]
        if any(v != values[0] for v in values[1:]):
            varied[key] = values
    return varied


def numeric(values: list[Any]) -> tuple[list[float], str] | None:
    """The values as numbers with their unit (durations become seconds), or None when any is
    not a number."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], ""
    try:
        return [parse_duration(v) for v in values], "s"
    except (TypeError, ValueError):
        return None


def run_labels(results: list[RunResult]) -> list[str]:
    """A short name per run: the varied fields and their values, else the run's kind and folder."""
    varied = varied_fields(results)
    labels = []
    for i, r in enumerate(results):
        parts = [f"{key.split('.')[-1]} = {values[i]}" for key, values in varied.items()]
        if not parts:
            parts = [r.kind + (f" ({r.path.name})" if r.path is not None else f" #{i + 1}")]
        labels.append(", ".join(parts))
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return labels


def axis(results: list[RunResult]) -> tuple[list[float], str, list[str] | None]:
    """Where each run sits on the x axis: (positions, axis label, tick labels or None). One
    varied numeric field gives a numeric axis; otherwise the runs are categories."""
    varied = varied_fields(results)
    if len(varied) == 1:
        key, values = next(iter(varied.items()))
        as_numbers = numeric(values)
        if as_numbers is not None:
            positions, unit = as_numbers
            return positions, f"{key} ({unit})" if unit else key, None
    return list(range(len(results))), "run", run_labels(results)


def dodge(x, index: int, count: int, positions: list[float], log_x: bool):
    """Shift variant ``index`` of ``count`` sideways by a sliver of the axis, so that whiskers
    at the same x do not hide each other."""
    shift = (index - (count - 1) / 2) * 0.012
    if log_x:
        return x * (max(positions) / min(positions)) ** shift
    return x + shift * ((max(positions) - min(positions)) or 1.0)


def table(results: list[RunResult], measures: list[Measure | str] = SWEEP) -> pd.DataFrame:
    """One row per run and variant: the run's label, the varied field's value when the axis is
    numeric, and every measure's mean and CI half-width."""
    positions, xlabel, ticklabels = axis(results)
    frames = []
    for x, label, r in zip(positions, run_labels(results), results):
        values = measure_table(r, measures).reset_index()
        if ticklabels is None:
            values.insert(0, xlabel, x)
        values.insert(0, "run", label)
        frames.append(values)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure(results: list[RunResult], measures: list[Measure | str] = SWEEP) -> Figure:
    """Small multiples, one per measure: its mean (whiskers: 95% CI) against the varied
    scenario field, one line per variant. Receives the runs, returns a Figure."""
    measures = resolve(measures)
    data = table(results, measures)
    positions, xlabel, ticklabels = axis(results)
    data["x"] = data["run"].map(dict(zip(run_labels(results), positions)))
    variants = style.VariantStyle.of(results)
    with style.styled():
        cols = min(len(measures), 3)
        rows = math.ceil(len(measures) / cols)
        fig = style.new_figure(13.0, 1.4 + 3.4 * rows)
        axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
        log_x = ticklabels is None and min(positions) > 0 and max(positions) / min(positions) >= 20
        for ax, m in zip(axes, measures):
            for i, name in enumerate(variants.order):
                line = data[data["variant"] == name].sort_values("x")
                if line.empty:
                    continue
                x = dodge(line["x"].to_numpy(float), i, len(variants.order), positions, log_x)
                ax.errorbar(x, line[m.title], yerr=line[f"{m.title} ci95"].fillna(0),
                            capsize=3, **{**variants.line(name), "markevery": None})
            ax.set_title(m.label, loc="left", fontweight="bold")
            ax.set_ylabel(m.unit)
            if not data[m.title].notna().any():
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color=style.MUTED)
            else:
                ax.set_ylim(bottom=0)
        if log_x:
            axes[0].set_xscale("log")  # shared by every panel
            axes[0].minorticks_off()
        if ticklabels is None:
            axes[0].set_xticks(positions, [style.fmt(p) for p in positions])
        else:
            axes[0].set_xticks(positions, [label.replace(", ", "\n") for label in ticklabels])
        for i, ax in enumerate(axes):
            if i >= len(measures):
                ax.set_visible(False)
            elif i + cols >= len(measures):  # the lowest panel of its column carries the axis
                ax.xaxis.set_tick_params(labelbottom=True)
                ax.set_xlabel(xlabel)
        style.legend(fig, axes[: len(measures)])
        subject = "Headline and capacity measures" if measures == SWEEP else ", ".join(m.label for m in measures)
        style.title(fig, f"{subject} against {xlabel}" if ticklabels is None else f"{subject} by run", results)
    return fig

