"""Chart 6, a sweep: several runs that differ in some scenario fields, the headline measures
plotted against what was varied, one line per variant; runs that also differ in other fields
go to separate panels (facets), so that no line joins unrelated combinations."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    with its value per run (None where a run lacks the field); descriptions are ignored, and so
    is the window of runs that measured it (``meta["window_measured"]``: a browser lab's window
    runs from its login to its end, an outcome of the run, not a setting)."""
    flat = [flatten(r.scenario.to_file_dict()) for r in results]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    measured_windows = all(r.meta.get("window_measured") for r in results)
    varied = {}
    for key in keys:
        if key.split(".")[-1] == "description" or (measured_windows and key in ("run.warmup", "run.duration")):
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


def distinct_fields(results: list[RunResult]) -> dict[str, list[Any]]:
    """The varied fields less those that only echo another (``tokens.access_ttl`` and the
    ``strategies[i].server.access_ttl`` it resolves into split the runs the same way)."""
    kept, seen = {}, set()
    for key, values in varied_fields(results).items():
        first: dict[str, int] = {}
        signature = tuple(first.setdefault(repr(v), len(first)) for v in values)
        if signature not in seen:
            seen.add(signature)
            kept[key] = values
    return kept


@dataclass
class Layout:
    """Where each run goes: its x position, and its facet (panel column) when the runs vary in
    more than the x axis's field, so that a line only joins runs that differ in x alone."""

    positions: list[float]
    xlabel: str
    ticks: list[float]
    ticklabels: list[str] | None  # None: a numeric axis
    facets: list[str]  # per run; "" when there is one facet
    facet_order: list[str]
    facet_fields: list[str]


def layout(results: list[RunResult]) -> Layout:
    """The x axis is the numeric varied field with the most values (else the first varied
    field, as categories); every other varied field makes facets."""
    varied = distinct_fields(results)
    if not varied:
        labels = run_labels(results)
        return Layout(list(range(len(results))), "run", list(range(len(results))), labels,
                      [""] * len(results), [""], [])
    numeric_fields = {k: numeric(v) for k, v in varied.items()}
    candidates = [k for k, n in numeric_fields.items() if n is not None]
    if candidates:
        key = max(candidates, key=lambda k: len(set(numeric_fields[k][0])))
        positions, unit = numeric_fields[key]
        xlabel, ticks, ticklabels = (f"{key} ({unit})" if unit else key), sorted(set(positions)), None
    else:
        key = next(iter(varied))
        names = list(dict.fromkeys(spell_value(v) for v in varied[key]))
        positions = [float(names.index(spell_value(v))) for v in varied[key]]
        xlabel, ticks, ticklabels = key, list(range(len(names))), names
    rest = [k for k in varied if k != key]
    facets = [", ".join(f"{k.split('.')[-1]} = {spell_value(varied[k][i])}" for k in rest)
              for i in range(len(results))]
    return Layout(positions, xlabel, ticks, ticklabels, facets, list(dict.fromkeys(facets)), rest)


def spell_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def axis(results: list[RunResult]) -> tuple[list[float], str, list[str] | None]:
    """Where each run sits on the x axis: (positions, axis label, tick labels or None)."""
    lay = layout(results)
    return lay.positions, lay.xlabel, lay.ticklabels


def dodge(x, index: int, count: int, positions: list[float], log_x: bool):
    """Shift variant ``index`` of ``count`` sideways by a sliver of the axis, so that whiskers
    at the same x do not hide each other."""
    shift = (index - (count - 1) / 2) * 0.012
    if log_x:
        return x * (max(positions) / min(positions)) ** shift
    return x + shift * ((max(positions) - min(positions)) or 1.0)


def table(results: list[RunResult], measures: list[Measure | str] = SWEEP) -> pd.DataFrame:
    """One row per run and variant: the run's label, its facet (when the runs vary in more
    than one field), its x position (the varied field's value when the axis is numeric), and
    every measure's mean and CI half-width."""
    lay = layout(results)
    frames = []
    for i, (label, r) in enumerate(zip(run_labels(results), results)):
        values = measure_table(r, measures).reset_index()
        values.insert(0, "x" if lay.ticklabels is not None else lay.xlabel, lay.positions[i])
        if len(lay.facet_order) > 1:
            values.insert(0, "facet", lay.facets[i])
        values.insert(0, "run", label)
        frames.append(values)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure(results: list[RunResult], measures: list[Measure | str] = SWEEP) -> Figure:
    """Small multiples: one row per measure, one column per facet (a combination of the varied
    fields other than the x axis's); in each panel the measure's mean (whiskers: 95% CI)
    against the x field, one line per variant. Receives the runs, returns a Figure."""
    measures = resolve(measures)
    lay = layout(results)
    frames = []
    for i, r in enumerate(results):
        values = measure_table(r, measures).reset_index()
        values["x"], values["facet"] = lay.positions[i], lay.facets[i]
        frames.append(values)
    data = pd.concat(frames, ignore_index=True)
    variants = style.VariantStyle.of(results)
    positions = lay.positions
    log_x = lay.ticklabels is None and min(positions) > 0 and max(positions) / min(positions) >= 20
    with style.styled():
        facets = lay.facet_order
        if len(facets) == 1:  # one facet: the measures wrap over three columns
            cols = min(len(measures), 3)
            rows = math.ceil(len(measures) / cols)
            panels = [(m, "") for m in measures]
        else:
            cols, rows = len(facets), len(measures)
            panels = [(m, f) for m in measures for f in facets]
        fig = style.new_figure(max(13.0, 3.6 * cols) if len(facets) > 1 else 13.0, 1.4 + (3.4 if len(facets) == 1 else 2.8) * rows)
        axes = fig.subplots(rows, cols, sharex=True, sharey="row" if len(facets) > 1 else False, squeeze=False)
        flat = axes.ravel()
        for ax, (m, facet) in zip(flat, panels):
            here = data[data["facet"] == facet]
            for i, name in enumerate(variants.order):
                line = here[here["variant"] == name].sort_values("x")
                if line.empty:
                    continue
                x = dodge(line["x"].to_numpy(float), i, len(variants.order), positions, log_x)
                ax.errorbar(x, line[m.title], yerr=line[f"{m.title} ci95"].fillna(0),
                            capsize=3, **{**variants.line(name), "markevery": None})
            if len(facets) == 1:
                ax.set_title(m.label, loc="left", fontweight="bold")
                ax.set_ylabel(m.unit)
            else:
                if m is measures[0]:
                    ax.set_title(facet, loc="left", fontweight="bold")
                if facet == facets[0]:
                    ax.set_ylabel(f"{m.label}\n({m.unit})")
            if not here[m.title].notna().any():
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color=style.MUTED)
            else:
                ax.set_ylim(bottom=0)
        if log_x:
            flat[0].set_xscale("log")  # shared by every panel
            flat[0].minorticks_off()
        if lay.ticklabels is None:
            flat[0].set_xticks(lay.ticks, [style.fmt(p) for p in lay.ticks])
        else:
            flat[0].set_xticks(lay.ticks, [label.replace(", ", "\n") for label in lay.ticklabels])
        for i, ax in enumerate(flat):
            if i >= len(panels):
                ax.set_visible(False)
            elif i + cols >= len(panels):  # the lowest panel of its column carries the axis
                ax.xaxis.set_tick_params(labelbottom=True)
                ax.set_xlabel(lay.xlabel)
        style.legend(fig, flat[: len(panels)])
        subject = "Headline and capacity measures" if measures == SWEEP else ", ".join(m.label for m in measures)
        by = f" against {lay.xlabel}" if lay.ticklabels is None or lay.xlabel != "run" else " by run"
        per = f", one column per value of {' and '.join(k.split('.')[-1] for k in lay.facet_fields)}" if len(facets) > 1 else ""
        style.title(fig, f"{subject}{by}{per}", results)
    return fig
