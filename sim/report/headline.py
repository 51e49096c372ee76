"""Chart 2, the headline measures side by side: one small panel per measure, one bar per
variant, 95% confidence whiskers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sim.report import style
from sim.report.measures import Measure, headline_of, measure_table, resolve
from sim.results import RunResult


def figure(result: RunResult, measures: list[Measure | str] | None = None) -> Figure:
    """Small multiples of horizontal bars (mean over replications, whiskers = 95% CI), one
    panel per measure (objects or keys of ``MEASURES``; default the run's headline measures,
    :func:`~sim.report.measures.headline_of`); receives a run, returns a Figure."""
    measures = resolve(headline_of(result) if measures is None else measures)
    values = measure_table(result, measures)
    names = list(values.index)
    variants = style.VariantStyle.of(result)
    with style.styled():
        cols = min(len(measures), 3)
        rows = math.ceil(len(measures) / cols)
        fig = style.new_figure(13.0, 1.2 + rows * (0.9 + 0.45 * max(len(names), 1)))
        axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
        y = np.arange(len(names))
        for ax, m in zip(axes, measures):
            bars(ax, y, values[m.title], values[f"{m.title} ci95"], [variants.color(n) for n in names])
            ax.set_title(m.label, loc="left", fontweight="bold")
            ax.set_xlabel(m.unit)
        for ax in axes[len(measures):]:
            ax.set_visible(False)
        axes[0].set_yticks(y, names)
        axes[0].invert_yaxis()
        style.title(fig, "Headline measures per variant (mean, whiskers: 95% CI)", result)
    return fig


def bars(ax, y: np.ndarray, means: pd.Series, cis: pd.Series, colors: list[str]) -> None:
    """Horizontal bars with CI whiskers and the value written beside each; a missing value is
    written as n/a instead of drawn."""
    means = means.to_numpy(float)
    cis = np.nan_to_num(cis.to_numpy(float), nan=0.0)
    shown = np.nan_to_num(means, nan=0.0)
    ax.barh(y, shown, color=colors, height=0.65)
    whiskers = cis > 0
    if whiskers.any():
        ax.errorbar(shown[whiskers], y[whiskers], xerr=cis[whiskers], fmt="none", ecolor="#333333",
                    elinewidth=1.2, capsize=4)
    ends = shown + cis
    span = float(np.max(np.abs(ends))) if len(ends) else 0.0
    for yi, mean, end in zip(y, means, ends):
        label = "n/a" if np.isnan(mean) else style.fmt(mean)
        ax.text(end + (span or 1.0) * 0.03, yi, label, va="center", ha="left", fontsize=11)
    if span > 0:
        ax.set_xlim(0, span * 1.35)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    else:  # all zero or missing: a unit axis instead of one scaled to rounding noise
        ax.set_xlim(0, 1)
        ax.set_xticks([0])
    ax.grid(axis="y", visible=False)


def table(result: RunResult, measures: list[Measure | str] | None = None) -> pd.DataFrame:
    """The numbers behind the chart: per variant, each measure's mean and CI half-width."""
    return measure_table(result, headline_of(result) if measures is None else measures)
