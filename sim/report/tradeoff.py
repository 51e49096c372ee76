"""Chart 5, the trade-off: how long a stolen token outlives its user (security) against how
many tokens the auth tier signs (cost), one labelled point per variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sim.report import style
from sim.report.measures import EXPOSURE, REFRESH_RATE, measure_table
from sim.results import RunResult


def figure(result: RunResult) -> Figure:
    """Scatter of mean exposure window (y) against refresh rate (x) with 95% CI whiskers;
    lower left is better on both. Receives a run, returns a Figure."""
    values = measure_table(result, [REFRESH_RATE, EXPOSURE])
    variants = style.VariantStyle.of(result)
    x, xci = values[REFRESH_RATE.title], values[f"{REFRESH_RATE.title} ci95"].fillna(0)
    exposure = values[EXPOSURE.title]
    divisor, unit = style.time_unit(np.nanmax(exposure.to_numpy(float)) if exposure.notna().any() else 0.0)
    y, yci = exposure / divisor, values[f"{EXPOSURE.title} ci95"].fillna(0) / divisor
    shown = x.notna() & y.notna()
    with style.styled():
        fig = style.new_figure(9.0, 6.5)
        ax = fig.add_subplot()
        if not shown.any():
            style.no_data(ax, "no exposure window in this run:\nno session ended inside the measurement window"
                          if x.notna().any() else "no refresh rate in this run")
        for name in values.index[shown]:
            ax.errorbar(x[name], y[name], xerr=xci[name], yerr=yci[name], fmt=variants.marker(name),
                        color=variants.color(name), markersize=10, capsize=4, elinewidth=1.2)
        if shown.any():
            ax.set_xlim(0, float((x + xci)[shown].max()) * 1.3 or 1.0)
            ax.set_ylim(0, float((y + yci)[shown].max()) * 1.2 or 1.0)
            ax.text(0.01, 0.01, "better: lower left", transform=ax.transAxes, color=style.MUTED,
                    fontsize=11, ha="left", va="bottom")
            ax.set_xlabel("refresh load: renewal mints per second (cost)")
            ax.set_ylabel(f"exposure window: token life left at logout ({unit})")
        style.title(fig, "Security vs cost: exposure window against refresh load", result)
        if shown.any():
            label_points(ax, [(n, x[n], y[n]) for n in values.index[shown]])
    return fig


def label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Write each name beside its point, moving a label down when it would cover one already
    placed (labels are placed from the top)."""
    fig = ax.get_figure()
    fig.canvas.draw()  # positions in pixels need the final layout
    renderer = fig.canvas.get_renderer()
    placed = []
    for name, px, py in sorted(points, key=lambda p: -p[2]):
        text = ax.annotate(name, (px, py), xytext=(10, 8), textcoords="offset points", fontsize=12)
        box = text.get_window_extent(renderer)
        for _ in range(len(points) * 2):
            if not any(box.overlaps(other) for other in placed):
                break
            offset = text.get_position()
            text.set_position((offset[0], offset[1] - box.height * 72 / fig.dpi - 2))
            box = text.get_window_extent(renderer)
        placed.append(box)


def table(result: RunResult) -> pd.DataFrame:
    """Per variant: refresh rate and exposure window (means, CI half-widths) beside the access
    token lifetime that bounds the exposure."""
    values = measure_table(result, [REFRESH_RATE, EXPOSURE])
    values["access token lifetime (s)"] = [result.scenario.variant(n).server.access_ttl_s for n in values.index]
    return values
