"""The committed baseline report agrees with its own ``summary.csv`` number for number: the
summary paragraph, the headline and latency tables, and the values drawn in the charts."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import sim
from sim.report import charts
from sim.report.measures import HEADLINE
from sim.units import format_number as fmt
from tests.conftest import ROOT

BASELINE = ROOT / "reports" / "baseline"


@pytest.fixture(scope="module")
def aggregate() -> pd.DataFrame:
    summary = pd.read_csv(BASELINE / "summary.csv", dtype={"replication": str})
    return summary[summary["replication"] == "mean"].set_index("strategy")


@pytest.fixture(scope="module")
def markdown() -> str:
    return (BASELINE / "report.md").read_text(encoding="utf-8")


def shown(row: pd.Series, column: str) -> str:
    """A value as the report prints it: mean, and ± the CI half-width when there is one."""
    mean, ci = row[column], row.get(f"{column}_ci95", np.nan)
    return fmt(mean) + (f" ±{fmt(ci)}" if ci == ci and ci > 1e-9 * max(1.0, abs(mean)) else "")


def table(markdown: str, heading: str) -> pd.DataFrame:
    """The pipe table under ``### heading``, as text cells indexed by variant."""
    section = markdown[markdown.index(f"### {heading}\n"):]
    lines = [ln for ln in section.splitlines()[1:] if ln.startswith("|")]
    end = next((i for i, ln in enumerate(lines) if i and not lines[i - 1].startswith("|")), len(lines))
    rows = []
    for ln in lines[:end]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if set("".join(cells)) <= set(":-"):
            continue
        rows.append(cells)
        if len(rows) > 1 and not section.split(ln, 1)[1].lstrip("\n").startswith("|"):
            break
    return pd.DataFrame(rows[1:], columns=rows[0]).set_index(rows[0][0])


def summary_paragraph(markdown: str) -> str:
    return next(p for p in markdown.split("\n\n") if p.startswith(("Simulated", "Measured")))


def test_summary_names_what_users_experience_with_the_numbers(markdown, aggregate):
    text = summary_paragraph(markdown)
    single, sliding = aggregate.loc["dual_token_single_flight"], aggregate.loc["sliding"]
    assert single["failed_requests"] == 0 and single["forced_logins"] == 0
    first = re.search(r"1\. ([^;]*)", text).group(1)
    assert "dual_token_single_flight" in first and "0 failed requests, 0 forced logins" in first
    assert (f"sliding: {shown(sliding, 'failed_requests')} failed requests, "
            f"{shown(sliding, 'forced_logins')} forced logins") in text
    assert "fewest failures" not in text  # recovered 401s are not added to failures
    # the costs, each with its numbers
    for name in aggregate.index:
        assert f"{name} {shown(aggregate.loc[name], 'refresh_rate_per_s')}/s" in text
        assert f"{name} {shown(aggregate.loc[name], 'expiry_failures')}" in text
        assert f"{name} {shown(aggregate.loc[name], 'added_latency_ms_p99')} ms" in text


def test_headline_table_is_the_summary(markdown, aggregate):
    cells = table(markdown, "Headline measures")
    for m in HEADLINE:
        for name, row in aggregate.iterrows():
            mean, ci = m.of(row)
            expected = fmt(mean) + ("" if ci != ci else f" ± {fmt(ci)}")
            assert cells.at[name, m.title] == expected, (name, m.title)


def test_latency_table_is_the_summary(markdown, aggregate):
    cells = table(markdown, "Added latency")
    for name, row in aggregate.iterrows():
        assert cells.at[name, "requests"] == f"{fmt(row['requests'])} ± {fmt(row['requests_ci95'])}"
        for q in (50, 95, 99):
            mean, ci = row[f"added_latency_ms_p{q}"], row[f"added_latency_ms_p{q}_ci95"]
            assert cells.at[name, f"p{q} (ms)"] == fmt(mean) + ("" if ci != ci else f" ± {fmt(ci)}")
    # the headline's request count and the latency table's are the same per-replication mean
    assert "dual_token_single_flight" in cells.index


def test_charts_draw_the_summary_values(aggregate):
    result = sim.load_run(BASELINE)
    fig = charts.headline(result)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    for m in HEADLINE:
        for _, row in aggregate.iterrows():
            assert fmt(m.of(row)[0]) in texts
    fig = charts.latency_cdf(result)
    marks = [line for line in fig.axes[0].lines if line.get_linestyle() == "None"]
    drawn = sorted(float(x) for line in marks for x in line.get_xdata())
    expected = sorted(float(aggregate.at[n, f"added_latency_ms_p{q}"]) for n in aggregate.index
                      for q in (50, 95, 99) if aggregate.at[n, f"added_latency_ms_p{q}"] > 0)
    assert drawn == pytest.approx(expected)


def test_auth_tier_panel_with_an_empty_queue_says_so(aggregate):
    result = sim.load_run(BASELINE)
    assert (aggregate["auth_queue_wait_ms_p99"] == 0).all()
    fig = charts.auth_tier(result)
    queue = fig.axes[1]
    assert queue.get_ylim()[1] >= 1.0  # not an axis scaled up from rounding noise
    assert any("no call waited" in t.get_text() for t in queue.texts)


def test_coinciding_lines_stay_distinguishable():
    """In the baseline, dual_token's refresh load runs under sliding's: each variant's own colour
    must still show on the rendered chart."""
    import io

    import matplotlib.image

    from sim.report import style

    result = sim.load_run(BASELINE)
    buffer = io.BytesIO()
    charts.refresh_load(result).savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    pixels = matplotlib.image.imread(buffer, format="png")[..., :3]
    legend_free = pixels[: int(pixels.shape[0] * 0.85)]  # the legend, under the axes, would always show
    variants = style.VariantStyle.of(result)
    for name in result.scenario.names:
        rgb = np.array([int(variants.color(name)[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        shown = (np.abs(legend_free - rgb).max(axis=-1) < 0.02).sum()
        assert shown > 150, (name, shown)
    # and a second cue beside colour: a marker of its own on every line
    lines = [ln for ln in charts.refresh_load(result).axes[0].lines if ln.get_label() in result.scenario.names]
    assert len({ln.get_marker() for ln in lines}) == len(lines) == len(result.scenario.names)
    assert all(ln.get_markevery() is not None for ln in lines)
