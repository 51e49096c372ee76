"""Chart 1, refresh load over time: access tokens minted per second by each variant, smoothed,
mean over replications, with the warm-up marked."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sim.report import style
from sim.results import RunResult

SMOOTH_S = 60


def mean_series(result: RunResult, column: str, smooth_s: float = SMOOTH_S) -> pd.DataFrame:
    """Per second (index ``t_s``) and variant (columns, scenario order): ``column`` of the
    ``timeseries`` table averaged over replications, then as a centred rolling mean over
    ``smooth_s`` seconds (1 = unsmoothed). Missing values stay missing."""
    ts = result.timeseries
    names = result.scenario.names
    if ts.empty or column not in ts:
        return pd.DataFrame(columns=names, index=pd.Index([], name="t_s"), dtype=float)
    wide = ts.pivot_table(index="t_s", columns="strategy", values=column, aggfunc="mean", dropna=False)
    wide = wide.reindex(columns=[n for n in names if n in wide.columns]).sort_index()
    window = max(int(round(smooth_s)), 1)
    return wide.rolling(window, center=True, min_periods=max(window // 2, 1)).mean()


def draw_over_time(ax, wide: pd.DataFrame, variants: style.VariantStyle, result: RunResult,
                   ylabel: str) -> None:
    """Draw one line per variant of a per-second table, time in readable units, warm-up shaded."""
    divisor, unit = style.time_unit(result.scenario.run.end_s)
    warmup = result.scenario.run.warmup_s
    if warmup > 0:
        ax.axvspan(0, warmup / divisor, color=style.WARMUP_SHADE, zorder=0, lw=0)
        ax.text(warmup / divisor / 2, 0.98, "warm-up", transform=ax.get_xaxis_transform(), ha="center",
                va="top", color=style.MUTED, fontsize=10)
    for name in wide.columns:
        ax.plot(wide.index / divisor, wide[name], **variants.line(name))
    ax.set_xlim(0, result.scenario.run.end_s / divisor)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"time since start ({unit})")
    ax.set_ylabel(ylabel)


def figure(result: RunResult, smooth_s: float = SMOOTH_S) -> Figure:
    """Line chart of access tokens minted per second (logins included, so the login wave shows)
    per variant over the run; receives a run, returns a Figure."""
    wide = mean_series(result, "access_mints", smooth_s)
    variants = style.VariantStyle.of(result)
    with style.styled():
        fig = style.new_figure()
        ax = fig.add_subplot()
        if wide.dropna(how="all").empty:
            style.no_data(ax, "no per-second series in this run")
        else:
            draw_over_time(ax, wide, variants, result, f"access tokens minted (per s, {smooth_s:g} s mean)")
            style.legend(fig, [ax])
        style.title(fig, "Refresh load over time: access-token mints per second", result)
    return fig


def table(result: RunResult, smooth_s: float = SMOOTH_S) -> pd.DataFrame:
    """Per variant: the smoothed mint rate's mean in the measurement window (after warm-up), its
    peak over the whole run and when that was, and the summary's busiest second of renewals."""
    wide = mean_series(result, "access_mints", smooth_s)
    agg = result.aggregate
    divisor, unit = style.time_unit(result.scenario.run.end_s)
    rows = {}
    for name in result.scenario.names:
        series = wide[name].dropna() if name in wide else pd.Series(dtype=float)
        window = series[series.index >= result.scenario.run.warmup_s]
        rows[name] = {
            "mean in window (mints/s)": window.mean() if len(window) else np.nan,
            f"peak, {smooth_s:g} s mean (mints/s)": series.max() if len(series) else np.nan,
            f"peak at ({unit})": series.idxmax() / divisor if len(series) else np.nan,
            "busiest second, renewals only (mints/s)": agg["refresh_rate_peak_per_s"].get(name, np.nan),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")
