"""Assemble the report: every chart as PNG and SVG, a self-contained ``report.html`` (charts
embedded as base64 PNG, no JavaScript, opens offline) and ``report.md``."""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from sim.report import auth_tier, headline, latency, refresh_load, style, sweep, tradeoff
from sim.report.summary import summary
from sim.results import RunResult


@dataclass(frozen=True)
class ChartSpec:
    """A chart of one run: file name, section heading, what the reader sees, and the family
    module's ``figure`` and ``table``."""

    name: str
    heading: str
    caption: str
    figure: Callable[[RunResult], Figure]
    table: Callable[[RunResult], pd.DataFrame]


PER_RUN = [
    ChartSpec("refresh_load", "Refresh load over time",
              "Access tokens minted per second (logins included, so the login wave shows), mean over "
              "replications, {smooth} s centred rolling mean. Shaded: the warm-up, left out of every other number.",
              refresh_load.figure, refresh_load.table),
    ChartSpec("headline", "Headline measures",
              "Means over replications; whiskers and ± give the 95% confidence interval (none with one "
              "replication). Rates per 1k requests and per 1k user-hours divide by the window's mean requests and "
              "users × window; lapse-forced logins (shown when devices remember their tokens) per user and day.",
              headline.figure, headline.table),
    ChartSpec("auth_tier", "Auth tier",
              "Busy workers as a share of the auth tier's workers, and calls waiting for a worker, per second, "
              "mean over replications, {smooth} s centred rolling mean.",
              auth_tier.figure, auth_tier.table),
    ChartSpec("latency_cdf", "Added latency",
              "Share of requests whose added latency (time lost to expired tokens, refreshes and retries) is at "
              "most x; all replications pooled, read off the latency histogram. Failed requests are not counted. "
              "Markers and the table: p50, p95 and p99 as summary.csv gives them (means over replications; a "
              "percentile of 0 has no marker on the logarithmic axis).",
              latency.figure, latency.table),
    ChartSpec("tradeoff", "Security against cost",
              "Exposure window: remaining life of a session's newest access token when its user leaves. Refresh "
              "load: access tokens minted other than by a login, per second. Whiskers: 95% CI.",
              tradeoff.figure, tradeoff.table),
]
SWEEP = ChartSpec("sweep", "Sweep", "Headline and capacity measures of each run against what the runs vary; whiskers: 95% CI.",
                  sweep.figure, sweep.table)


WIDEST_IN = 13.0


@dataclass
class Page:
    """Everything the HTML and Markdown renderings share."""

    title: str
    description: str
    summary: str
    tag: str
    groups: list[tuple[str, list["Section"]]]
    scenarios: list[tuple[str, str]]


@dataclass
class Section:
    """One rendered chart: where its files are, the PNG bytes to embed, and its table."""

    heading: str
    caption: str
    path: str
    png: bytes
    table: pd.DataFrame
    #: the figure's width against the widest chart, so that fonts look the same size on the page
    width_pct: float = 100.0


def build_report(results: list[RunResult], out_dir: Path) -> Path:
    """Write ``report.html``, ``report.md`` and ``charts/<name>.png|svg`` for one run or several
    (a sweep) into the existing folder ``out_dir``; returns the path of ``report.html``."""
    if not results:
        raise ValueError("build_report needs at least one run")
    out_dir = Path(out_dir)
    (out_dir / "charts").mkdir(parents=True, exist_ok=True)
    labels = sweep.run_labels(results) if len(results) > 1 else [""]
    groups: list[tuple[str, list[Section]]] = []
    if len(results) > 1:
        groups.append(("Across runs", [_render(SWEEP, results, out_dir, "sweep")]))
    for i, (result, label) in enumerate(zip(results, labels)):
        prefix = f"run{i + 1}-" if len(results) > 1 else ""
        sections = [_render(spec, result, out_dir, prefix + spec.name) for spec in PER_RUN]
        groups.append((_run_heading(result, label), sections))
    description = " ".join(results[0].scenario.description.split())
    page = Page(_title(description, len(results)), description, summary(results), style.run_tag(results), groups,
                [(label or "Scenario", r.scenario.to_toml()) for r, label in zip(results, labels)])
    (out_dir / "report.md").write_text(_markdown(page), encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(page), encoding="utf-8")
    return html_path


def _render(spec: ChartSpec, data, out_dir: Path, name: str) -> Section:
    fig = spec.figure(data)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=style.DPI)
    png = buffer.getvalue()
    (out_dir / "charts" / f"{name}.png").write_bytes(png)
    # the layout was just computed for the PNG; the SVG keeps it instead of computing it again
    fig.set_layout_engine("none")
    fig.savefig(out_dir / "charts" / f"{name}.svg", format="svg", metadata={"Date": None})
    caption = spec.caption.format(smooth=f"{refresh_load.SMOOTH_S:g}")
    width_pct = min(100.0, 100 * fig.get_figwidth() / WIDEST_IN)
    return Section(spec.heading, caption, f"charts/{name}", png, spec.table(data), width_pct)


def _title(description: str, runs: int) -> str:
    # the first sentence names the scenario; the whole description follows under the title
    subject = re.split(r"(?<=[.:;])\s", description, maxsplit=1)[0].rstrip(".:;")
    if len(subject) > 90:
        subject = subject[:89].rsplit(" ", 1)[0] + "…"
    if runs > 1:
        return f"refreshlab report: sweep of {runs} runs" + (f" — {subject}" if subject else "")
    return f"refreshlab report: {subject}" if subject else "refreshlab report"


def _run_heading(result: RunResult, label: str) -> str:
    tag = style.run_tag(result)
    heading = label or "Results"
    return f"{heading} ({tag})" if tag else heading


def display_table(table: pd.DataFrame) -> tuple[pd.DataFrame, list[bool]]:
    """A chart's table as text cells, and which columns hold numbers: the index becomes the
    first column, and a ``<col> ci95`` column is folded into ``<col>`` as ``mean ± half-width``."""
    frame = table.reset_index() if table.index.name else table
    shown, numeric = {}, []
    for col in frame.columns:
        if str(col).endswith(" ci95") and str(col)[:-5] in frame.columns:
            continue
        ci = frame.get(f"{col} ci95")
        cells = [style.fmt(v) if not isinstance(v, str) else v for v in frame[col]]
        if ci is not None:
            cells = [c if pd.isna(e) else f"{c} ± {style.fmt(e)}" for c, e in zip(cells, ci)]
        shown[str(col)] = cells
        numeric.append(pd.api.types.is_numeric_dtype(frame[col]))
    return pd.DataFrame(shown), numeric


def markdown_table(table: pd.DataFrame) -> str:
    """pandas' Markdown writer (a pipe table), numbers right-aligned."""
    cells, numeric = display_table(table)
    return cells.to_markdown(index=False, colalign=["right" if n else "left" for n in numeric],
                             disable_numparse=True)


def html_table(table: pd.DataFrame, uuid: str = "t") -> str:
    """pandas' HTML writer (a ``Styler``), numeric cells classed ``num`` for right alignment."""
    cells, numeric = display_table(table)
    classes = pd.DataFrame([["num" if n else "" for n in numeric]] * len(cells), index=cells.index,
                           columns=cells.columns)
    styler = cells.style.hide(axis="index").set_td_classes(classes)
    html = styler.to_html(table_uuid=uuid, doctype_html=False)
    return re.sub(r'^<style type="text/css">\s*</style>\s*', "", html)  # no styles set: no empty block


def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("sim.report", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    env.filters["html_table"] = html_table
    env.filters["markdown_table"] = markdown_table
    return env


def _markdown(page: Page) -> str:
    return _environment().get_template("report.md.j2").render(page=page)


def _html(page: Page) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template("report.html.j2").render(page=page, stamp=stamp)
