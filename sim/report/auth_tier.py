"""Chart 3, the auth tier over time: how busy its workers are and how many calls queue for them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from sim.report import style
from sim.report.refresh_load import SMOOTH_S, draw_over_time, mean_series
from sim.results import RunResult

#: smallest top of the utilisation axis (%) and of the queue axis (calls)
MIN_UTILISATION_PCT = 10.0
MIN_QUEUE_CALLS = 1.0
#: a panel whose peak stays under this share of its axis floor has nothing to show, and says so
EMPTY_SHARE = 0.01


def figure(result: RunResult, smooth_s: float = SMOOTH_S) -> Figure:
    """Two stacked panels sharing the time axis: utilisation (busy workers / workers, %) and
    mean queue length, smoothed, per variant; receives a run, returns a Figure."""
    workers = result.scenario.auth.workers
    busy = mean_series(result, "auth_busy_workers", smooth_s) * (100 / workers)
    queue = mean_series(result, "auth_queue_len", smooth_s)
    variants = style.VariantStyle.of(result)
    with style.styled():
        fig = style.new_figure(11.0, 7.0)
        top, bottom = fig.subplots(2, 1, sharex=True)
        panels = ((top, busy, f"utilisation of {workers} auth workers", "no worker was busy", MIN_UTILISATION_PCT, "%"),
                  (bottom, queue, "calls waiting (mean queue length)", "no call waited for a worker", MIN_QUEUE_CALLS,
                   " calls"))
        for ax, wide, label, nothing, floor, unit in panels:
            if wide.dropna(how="all").empty:
                style.no_data(ax, "not measured in this run")
                continue
            draw_over_time(ax, wide, variants, result, label)
            peak = float(np.nanmax(wide.to_numpy(float)))
            # a floor on the axis: rounding noise must not be scaled up into a spike
            ax.set_ylim(0, max(peak * 1.15, floor))
            if peak < floor * EMPTY_SHARE:
                ax.text(0.5, 0.55, nothing + (f" (peak {style.fmt(peak)}{unit})" if peak > 0 else ""),
                        transform=ax.transAxes, ha="center", color=style.MUTED, fontsize=12)
        if not busy.dropna(how="all").empty:
            top.yaxis.set_major_formatter(PercentFormatter(decimals=None))
            if float(np.nanmax(busy.to_numpy(float))) > 50:
                top.axhline(100, color=style.MUTED, linestyle="--", linewidth=1)
        top.set_xlabel("")
        style.legend(fig, [top, bottom])
        style.title(fig, f"Auth tier load: worker utilisation and queue ({smooth_s:g} s mean)", result)
    return fig


def table(result: RunResult, smooth_s: float = SMOOTH_S) -> pd.DataFrame:
    """Per variant: utilisation and p99 queue wait from the summary, and the peaks of the
    smoothed utilisation and queue length."""
    workers = result.scenario.auth.workers
    busy = mean_series(result, "auth_busy_workers", smooth_s) * (100 / workers)
    queue = mean_series(result, "auth_queue_len", smooth_s)
    agg = result.aggregate
    return pd.DataFrame({
        "utilisation in window (%)": agg["auth_utilization"] * 100,
        f"peak utilisation, {smooth_s:g} s mean (%)": busy.max(),
        f"peak queue length, {smooth_s:g} s mean (calls)": queue.max(),
        "p99 queue wait (ms)": agg["auth_queue_wait_ms_p99"],
    }).reindex(result.scenario.names).rename_axis("variant")
