"""Assemble the report: every chart as PNG and SVG, a self-contained ``report.html`` (charts
embedded as base64 PNG, no JavaScript, opens offline) and ``report.md``."""

from __future__ import annotations

import base64
import html
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
              "users × window.",
              headline.figure, headline.table),
    ChartSpec("auth_tier", "Auth tier",
              "Busy workers as a share of the auth tier's workers, and calls waiting for a worker, per second, "
              "mean over replications, {smooth} s centred rolling mean.",
              auth_tier.figure, auth_tier.table),
    ChartSpec("latency_cdf", "Added latency",
              "Share of requests whose added latency (time lost to expired tokens, refreshes and retries) is at "
              "most x; all replications pooled, read off the latency histogram. Failed requests are not counted.",
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


def display_table(table: pd.DataFrame) -> tuple[list[str], list[bool], list[list[str]]]:
    """Header, which columns hold numbers, and formatted cells of a chart's table: the index
    becomes the first column, and a ``<col> ci95`` column is folded into ``<col>`` as
    ``mean ± half-width``."""
    frame = table.reset_index() if table.index.name else table
    header, numeric, columns = [], [], []
    for col in frame.columns:
        if str(col).endswith(" ci95") and str(col)[:-5] in frame.columns:
            continue
        ci = frame.get(f"{col} ci95")
        cells = [style.fmt(v) if not isinstance(v, str) else v for v in frame[col]]
        if ci is not None:
            cells = [c if pd.isna(e) else f"{c} ± {style.fmt(e)}" for c, e in zip(cells, ci)]
        header.append(str(col))
        numeric.append(pd.api.types.is_numeric_dtype(frame[col]))
        columns.append(cells)
    return header, numeric, [list(row) for row in zip(*columns)]


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(page: Page) -> str:
    lines = [f"# {page.title}", ""]
    if page.tag:
        lines += [f"**{page.tag}**", ""]
    if page.description:
        lines += [f"*{page.description}*", ""]
    lines += [page.summary, ""]
    for heading, sections in page.groups:
        lines += [f"## {heading}", ""]
        for s in sections:
            lines += [f"### {s.heading}", "", f"![{s.heading}]({s.path}.png)", "", s.caption, ""]
            header, numeric, rows = display_table(s.table)
            lines.append("| " + " | ".join(_markdown_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
            lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
    lines += ["## Resolved scenario", ""]
    for label, toml in page.scenarios:
        if len(page.scenarios) > 1:
            lines += [f"### {label}", ""]
        lines += ["```toml", toml.rstrip(), "```", ""]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       max-width: 72rem; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { margin-top: 2rem; }
.meta { color: #666; margin-top: 0; }
.tag { display: inline-block; background: #fff3cd; border: 1px solid #e0c36a; border-radius: 4px;
       padding: .1rem .5rem; font-weight: 600; }
.summary { font-size: 1.05rem; background: #f5f8fb; border-left: 4px solid #0072B2; padding: .8rem 1rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .95rem; }
figcaption a { color: #0072B2; }
table { border-collapse: collapse; margin: .8rem 0 1.5rem; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; }
th { background: #f2f2f2; text-align: left; vertical-align: bottom; }
td { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.description { color: #444; }
tbody tr:nth-child(even) { background: #fafafa; }
.scroll { overflow-x: auto; }
pre { background: #f6f6f6; border: 1px solid #e2e2e2; padding: 1rem; overflow-x: auto; font-size: .85rem; }
"""


def _html_table(table: pd.DataFrame) -> str:
    header, numeric, rows = display_table(table)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if n else f"<td>{esc(c)}</td>" for c, n in zip(row, numeric))
        + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html(page: Page) -> str:
    esc = html.escape
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(page.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{esc(page.title)}</h1>",
        f'<p class="meta">Generated {stamp}' + (f' · <span class="tag">{esc(page.tag)}</span>' if page.tag else "")
        + "</p>",
    ]
    if page.description:
        parts.append(f'<p class="description">{esc(page.description)}</p>')
    parts.append(f'<p class="summary">{esc(page.summary)}</p>')
    for heading, sections in page.groups:
        parts.append(f"<h2>{esc(heading)}</h2>")
        for s in sections:
            data = base64.b64encode(s.png).decode("ascii")
            parts += [
                f"<h3>{esc(s.heading)}</h3>",
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(s.heading)}" '
                f'style="width: {s.width_pct:.0f}%">',
                f'<figcaption>{esc(s.caption)} Files: <a href="{s.path}.png">PNG</a>, '
                f'<a href="{s.path}.svg">SVG</a>.</figcaption></figure>',
                _html_table(s.table),
            ]
    parts.append("<h2>Resolved scenario</h2>")
    for label, toml in page.scenarios:
        if len(page.scenarios) > 1:
            parts.append(f"<h3>{esc(label)}</h3>")
        parts.append(f"<pre>{esc(toml)}</pre>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
